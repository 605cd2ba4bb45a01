"""The import layers: core <- tenancy <- billing <- cases <- goldleaves.

Each app may import itself and any app below it, never one above it, so no two apps
import each other in a circle. Checked by parsing (``ast``) every module of every app
except tests (``tests/`` folders, ``test_*.py``, ``tests.py``, ``conftest.py``) and
migrations, imports inside functions included (a lazy import is still an arrow).
``bench/`` is not an app and may import anything. Imports by dotted string (settings,
``import_string``) are not seen here: settings live in ``goldleaves``, the top layer.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: bottom first: an app may import the apps before it in this list
LAYERS = ["core", "tenancy", "billing", "cases", "goldleaves"]
RANK = {app: rank for rank, app in enumerate(LAYERS)}
NOT_APPS = {"bench"}


def _is_checked(path: Path) -> bool:
    parts = path.relative_to(ROOT).parts
    return not (
        "tests" in parts
        or "migrations" in parts
        or path.name.startswith("test_")
        or path.name in ("tests.py", "conftest.py")
    )


def _modules(app: str) -> list[Path]:
    return sorted(p for p in (ROOT / app).rglob("*.py") if _is_checked(p))


def _imported_modules(source: str, package: list[str]) -> list[tuple[int, str]]:
    """``(line, absolute dotted module)`` for every import statement in ``source``, a
    module of ``package`` (its folder's parts, e.g. ``["billing", "management"]``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's own package
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.append((node.lineno, module))
    return sorted(found)


def _app_imports() -> dict[str, list[tuple[str, int, str]]]:
    """For each app: ``(file, line, imported app)`` for every import of another app."""
    edges: dict[str, list[tuple[str, int, str]]] = {app: [] for app in LAYERS}
    for app in LAYERS:
        for path in _modules(app):
            package = list(path.relative_to(ROOT).parts[:-1])
            for line, module in _imported_modules(path.read_text(), package):
                target = module.split(".")[0]
                if target in RANK and target != app:
                    edges[app].append((str(path.relative_to(ROOT)), line, target))
    return edges


def test_every_top_level_package_is_a_known_layer():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages - NOT_APPS == set(LAYERS), (
        "place every app in LAYERS (bottom first), or list it in NOT_APPS"
    )


def test_no_app_imports_an_app_above_it():
    upward = [
        f"{file}:{line}: {app} imports {target}"
        for app, imports in _app_imports().items()
        for file, line, target in imports
        if RANK[target] > RANK[app]
    ]
    assert upward == [], "imports run core <- tenancy <- billing <- cases <- goldleaves:\n" + (
        "\n".join(upward)
    )


def test_no_cycle_between_apps():
    graph = {app: {target for _, _, target in imports} for app, imports in _app_imports().items()}
    cycles = []

    def visit(app: str, path: list[str]) -> None:
        for target in sorted(graph[app]):
            if target == path[0]:
                cycles.append(" -> ".join([*path, target]))
            elif target not in path and RANK[target] > RANK[path[0]]:
                visit(target, [*path, target])

    for app in LAYERS:  # each cycle once, from its lowest app
        visit(app, [app])
    assert cycles == [], "import cycles between apps:\n" + "\n".join(cycles)


def test_the_parser_sees_lazy_and_relative_imports():
    source = "def f():\n    from billing.selectors import x\n\nfrom ..errors import handler\n"
    assert _imported_modules(source, ["core", "sub"]) == [
        (2, "billing.selectors"),
        (4, "core.errors"),
    ]
