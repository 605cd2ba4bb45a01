"""Create .env from .env.example for local development (used by `make run`).

Fills SECRET_KEY with a fresh random value and sets DEBUG=true. Never
overwrites an existing .env.
"""

import secrets
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
target = root / ".env"
if target.exists():
    sys.exit(0)
lines = []
for line in (root / ".env.example").read_text().splitlines():
    if line.startswith("SECRET_KEY="):
        line = "SECRET_KEY=" + secrets.token_urlsafe(50)
    elif line.startswith("DEBUG="):
        line = "DEBUG=true"
    lines.append(line)
target.write_text("\n".join(lines) + "\n")
print(f"Created {target} with a development SECRET_KEY and DEBUG=true.")
