"""The core keeps to its boundary: it is given its store, runtime and settings by the composition
root (`modelbay.engine`) and never reaches up for them, nor into the HTTP layers above it."""

from __future__ import annotations

import ast
from pathlib import Path

import modelbay.core

CORE_DIR = Path(modelbay.core.__file__).parent

#: What only the layers above the core may import: the settings, the runtime it picks, the app.
ABOVE_THE_CORE = (
    "modelbay.settings",
    "modelbay.engine",
    "modelbay.app",
    "modelbay.cli",
    "modelbay.dialects",
    "modelbay.runtime.local",
    "fastapi",
    "starlette",
)


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def test_no_core_module_imports_what_lies_above_the_core() -> None:
    reaching_up = {
        f"{path.name}: {module}"
        for path in CORE_DIR.glob("*.py")
        for module in imported_modules(path)
        if any(module == above or module.startswith(above + ".") for above in ABOVE_THE_CORE)
    }
    assert not reaching_up


def test_the_engine_is_built_above_the_core() -> None:
    assert not (CORE_DIR / "engine.py").exists()
    from modelbay.engine import Engine

    assert Engine.__module__ == "modelbay.engine"
