"""The core keeps to its boundary: it is given its store, runtime and settings by the composition
root (`modelbay.engine`) and never reaches up for them, nor into the HTTP layers above it; the
inputs it refuses it names in its own words, and each dialect names them its own way."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import modelbay.core
from modelbay.core.errors import InvalidInput
from modelbay.core.webhooks import MAX_BACKOFF_LIMIT_MS, check_retries
from modelbay.dialects.datature.errors import ERRORS as DATATURE_ERRORS
from modelbay.dialects.ubiops.errors import ERRORS as UBIOPS_ERRORS

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


#: A camelCase word: how Datature's API names its inputs, never how the core does.
CAMEL_CASE = re.compile(r"\b[a-z]+[A-Z]\w*")


def invalid_input_messages(path: Path) -> list[str]:
    """The literal text of every message `path` raises an `InvalidInput` with."""
    messages = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "InvalidInput" and node.args:
            parts = node.args[0].values if isinstance(node.args[0], ast.JoinedStr) else [node.args[0]]
            messages.append("".join(p.value for p in parts if isinstance(p, ast.Constant) and isinstance(p.value, str)))
    return messages


def test_the_core_names_the_inputs_it_refuses_in_its_own_words() -> None:
    vendor_named = [m for path in CORE_DIR.glob("*.py") for m in invalid_input_messages(path) if CAMEL_CASE.search(m)]
    assert vendor_named == []


def test_a_dialect_names_the_inputs_of_a_core_message_its_own_way() -> None:
    with pytest.raises(InvalidInput) as raised:
        check_retries(0, -1)
    assert raised.value.field == "max_backoff_ms"
    assert raised.value.message == f"max_backoff_ms must be an integer from 0 to {MAX_BACKOFF_LIMIT_MS}"
    assert DATATURE_ERRORS.message(raised.value) == f"maxBackoffMs must be an integer from 0 to {MAX_BACKOFF_LIMIT_MS}"
    assert UBIOPS_ERRORS.message(raised.value) == raised.value.message  # a dialect without a name for it

    both = InvalidInput("$stop_at must be after $start_at", field="stop_at")
    assert both.message == "stop_at must be after start_at"
    assert DATATURE_ERRORS.message(both) == "stopAtTime must be after startAtTime"
    # A message given without a field is taken as it is, `$` and all.
    assert InvalidInput("costs $5").worded({"5": "five"}) == "costs $5"
