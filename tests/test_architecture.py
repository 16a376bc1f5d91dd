"""The layout's rules, read from the code: who may import whom, and how long things may be.

Layers: ``cli -> engine -> projections -> ledger``; nothing imports upward.
Inside ``engine/``, ``views`` never import ``run``, ``map`` or ``exec``; ``git``
(driven by the scheduler and the run) never imports ``run``, ``map`` or ``views``. No
module over 500 lines, no function over 80.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cli", "engine", "projections", "ledger")

FORBIDDEN: dict[str, tuple[str, ...]] = {
    "ledger": ("projections", "engine", "cli"),
    "projections": ("engine", "cli"),
    "engine": ("cli",),
    "engine.views": ("engine.run", "engine.map", "engine.exec"),
    "engine.git": ("engine.run", "engine.map", "engine.views"),
}
"""A package (or subpackage), and what nothing in it may import."""

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), path


MODULES = list(_modules())


def _imports(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """Every module imported anywhere in the file (in functions too), by absolute name."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            yield node.lineno, name
            for alias in node.names:  # `from engine import run` imports engine.run
                yield node.lineno, f"{name}.{alias.name}"


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_nothing_imports_upward_and_views_never_import_run_map_or_exec() -> None:
    bad = [
        f"{_rel(path)}:{line}: {name} ({owner} must not import {banned})"
        for module, path in MODULES
        for line, name in _imports(module, path)
        for owner, forbidden in FORBIDDEN.items()
        if _within(module, owner)
        for banned in forbidden
        if _within(name, banned)
    ]
    assert not bad, "\n".join(bad)


def test_views_do_not_load_run_map_or_exec_through_what_they_import() -> None:
    views = [m for m, _ in MODULES if _within(m, "engine.views")]
    code = (
        "import importlib, sys\n"
        f"for m in {views!r}: importlib.import_module(m)\n"
        "print('\\n'.join(m for m in sys.modules if m.split('.')[:2] in "
        "(['engine', 'run'], ['engine', 'map'], ['engine', 'exec']) or m.split('.')[0] == 'cli'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == []


def test_the_import_walk_sees_function_local_and_relative_imports(tmp_path: Path) -> None:
    path = tmp_path / "report.py"
    path.write_text(
        "def f():\n    from engine.run import runner\n"
        "from ..map import scheduler\nimport engine.exec.local\n"
    )
    names = {name for _, name in _imports("engine.views.report", path)}
    assert {"engine.run", "engine.map.scheduler", "engine.exec.local"} <= names


def _oversize(path: Path) -> list[str]:
    """What in the file breaks a size rule."""
    text = path.read_text()
    found = []
    lines = len(text.splitlines())
    if lines > MAX_MODULE_LINES:
        found.append(f"{lines} lines")
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{node.name} (line {node.lineno}) {length} lines")
    return found


def test_no_module_over_500_lines_and_no_function_over_80() -> None:
    bad = [f"{_rel(path)}: {', '.join(found)}" for _, path in MODULES if (found := _oversize(path))]
    assert not bad, "\n".join(bad)
