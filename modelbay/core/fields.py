"""Typed fields of structured input and output, and the checks of data against them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from modelbay.core.errors import InvalidInput


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _array_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and all(item is None or check(item) for item in v)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


#: Each data type and the check a value of it must pass. `file` values are references (strings).
DATA_TYPES: dict[str, Callable[[Any], bool]] = {
    "int": _is_int,
    "double": _is_number,
    "string": _is_str,
    "bool": lambda v: isinstance(v, bool),
    "dict": lambda v: isinstance(v, dict),
    "file": _is_str,
    "array_int": _array_of(_is_int),
    "array_double": _array_of(_is_number),
    "array_string": _array_of(_is_str),
    "array_file": _array_of(_is_str),
}

IO_TYPES = ("structured", "plain")

#: The longest field name, as UbiOps has it (its SDK's field models refuse longer ones).
MAX_NAME_LENGTH = 64


def check_definitions(fields: Any, what: str) -> list[dict[str, Any]]:
    """Validate field definitions `[{name, data_type}]`; returns them normalised."""
    if fields is None:
        return []
    if not isinstance(fields, list):
        raise InvalidInput(f"{what} must be a list of fields")
    seen: set[str] = set()
    result = []
    for i, field in enumerate(fields):
        if not isinstance(field, dict):
            raise InvalidInput(f"{what}[{i}] must be an object with 'name' and 'data_type'")
        name, data_type = field.get("name"), field.get("data_type")
        if not isinstance(name, str) or not name.strip():
            raise InvalidInput(f"{what}[{i}] needs a non-empty 'name'")
        if len(name) > MAX_NAME_LENGTH:
            raise InvalidInput(f"{what}[{i}] has a name of {len(name)} characters; the most is {MAX_NAME_LENGTH}")
        if data_type not in DATA_TYPES:
            raise InvalidInput(
                f"{what} field '{name}' has data_type {data_type!r}; choose one of {', '.join(DATA_TYPES)}"
            )
        if name in seen:
            raise InvalidInput(f"{what} field '{name}' is defined twice")
        seen.add(name)
        result.append({"name": name, "data_type": data_type})
    return result


def check_io(fields: dict[str, Any]) -> dict[str, Any]:
    """The input and output definition of a new deployment or pipeline: each side's type (structured
    unless said) and, when structured, its fields. Raises `InvalidInput`."""
    input_type = fields.get("input_type") or "structured"
    output_type = fields.get("output_type") or "structured"
    for key, value in (("input_type", input_type), ("output_type", output_type)):
        if value not in IO_TYPES:
            raise InvalidInput(f"{key} must be 'structured' or 'plain', not {value!r}")
    return {
        "input_type": input_type,
        "output_type": output_type,
        "input_fields": check_definitions(fields.get("input_fields"), "input_fields")
        if input_type == "structured" else [],
        "output_fields": check_definitions(fields.get("output_fields"), "output_fields")
        if output_type == "structured" else [],
    }


def check_data(io_type: str, fields: Sequence[dict[str, Any]], data: Any, what: str = "input") -> None:
    """Check data against a deployment's input or output definition.

    Raises `InvalidInput` naming the missing, unexpected or mistyped field.
    """
    if io_type == "plain":
        if not isinstance(data, str):
            raise InvalidInput(f"Plain {what} must be a string, not {_type_name(data)}")
        return
    if not isinstance(data, dict):
        raise InvalidInput(f"Structured {what} must be an object keyed by field name, not {_type_name(data)}")
    expected = {f["name"]: f["data_type"] for f in fields}
    missing = [name for name in expected if name not in data]
    if missing:
        raise InvalidInput(f"Missing {what} field{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
    extra = [name for name in data if name not in expected]
    if extra:
        raise InvalidInput(f"Unexpected {what} field{'s' if len(extra) > 1 else ''}: {', '.join(extra)}")
    for name, data_type in expected.items():
        value = data[name]
        if value is not None and not DATA_TYPES[data_type](value):
            raise InvalidInput(f"{what.capitalize()} field '{name}' must be of type {data_type}, not {_type_name(value)}")


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "bool", int: "int", float: "double"}.get(
        type(value), type(value).__name__
    )
