"""Create .env from .env.example for local development (used by `make run`).

Usage: ``python scripts/make_env.py [TARGET]`` (default: ``.env`` beside ``manage.py``).

Copies ``.env.example`` line by line, with ``SECRET_KEY`` set to a fresh random value
(``secrets.token_urlsafe(50)``: 50 random bytes, about 67 characters) and ``DEBUG=true``.
Never overwrites an existing TARGET: it exits 0 and leaves it as it is.
"""

import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_env(target: Path, example: Path = ROOT / ".env.example") -> bool:
    """Write ``target`` from ``example`` with a generated ``SECRET_KEY`` and ``DEBUG=true``.

    Returns:
        True if the file was written, False if ``target`` already existed (untouched).
    Raises:
        FileNotFoundError: ``example`` is missing.
    """
    if target.exists():
        return False
    lines = []
    for line in example.read_text().splitlines():
        if line.startswith("SECRET_KEY="):
            line = "SECRET_KEY=" + secrets.token_urlsafe(50)
        elif line.startswith("DEBUG="):
            line = "DEBUG=true"
        lines.append(line)
    target.write_text("\n".join(lines) + "\n")
    return True


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print(f"usage: {Path(__file__).name} [TARGET]", file=sys.stderr)
        return 2
    target = Path(argv[0]) if argv else ROOT / ".env"
    if make_env(target):
        print(f"Created {target} with a development SECRET_KEY and DEBUG=true.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
