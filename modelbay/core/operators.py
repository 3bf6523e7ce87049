"""Pipeline operators: small steps the engine runs itself, with no user process.

Every operator declares its input and output fields from its configuration (`io`), so a
pipeline version can be validated before it runs. At run time data flows as a list of items:
most operators map one item to at most one item; `create-subrequests` turns one item into
one per element of a list (a fan-out) and `collect-subrequests` / `count-subrequests` turn
all the items that reach them back into one (a fan-in).

Expressions (`function`, `if-condition`) are evaluated with `simpleeval`, never `eval`: only
the input fields are in scope, with a short list of pure built-in functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from simpleeval import EvalWithCompoundTypes, InvalidExpression

from modelbay.core.errors import InvalidInput
from modelbay.core.fields import DATA_TYPES, check_data, check_definitions

FUNCTION = "function"
IF_CONDITION = "if-condition"
RAISE_ERROR = "raise-error"
PIPELINE_VARIABLE = "pipeline-variable"
CREATE_SUBREQUESTS = "create-subrequests"
COLLECT_SUBREQUESTS = "collect-subrequests"
COUNT_SUBREQUESTS = "count-subrequests"

OPERATORS = (
    FUNCTION,
    IF_CONDITION,
    RAISE_ERROR,
    PIPELINE_VARIABLE,
    CREATE_SUBREQUESTS,
    COLLECT_SUBREQUESTS,
    COUNT_SUBREQUESTS,
)

#: Operators that receive every item reaching them at once and answer with one item.
FAN_IN = frozenset({COLLECT_SUBREQUESTS, COUNT_SUBREQUESTS})

#: `on_error` values that drop a failing item instead of failing the pipeline request.
ON_ERROR_SKIP = frozenset({"skip", "ignore", "continue"})

#: `on_error` values that fail the pipeline request when an item fails (the default).
ON_ERROR_STOP = frozenset({"stop", "fail", "raise"})

#: Most items one object of a pipeline request may give (a fan-out, or all the items reaching it).
#: Every item is a step kept in memory and listed in the response: a 64 MB list must not become
#: millions of them.
MAX_ITEMS = 10_000

#: Most characters an expression may have; longer ones are refused at validation.
MAX_EXPRESSION = 2000

#: Functions an expression may call: pure, bounded, no I/O.
SAFE_FUNCTIONS: dict[str, Any] = {
    "abs": abs, "all": all, "any": any, "bool": bool, "float": float, "int": int, "len": len, "list": list,
    "max": max, "min": min, "round": round, "sorted": sorted, "str": str, "sum": sum, "dict": dict,
    "sqrt": math.sqrt, "floor": math.floor, "ceil": math.ceil,
}
SAFE_NAMES = {"True": True, "False": False, "None": None}


@dataclass(frozen=True)
class Io:
    """What an object takes and gives: a type (`structured` or `plain`) and typed fields."""

    input_type: str
    input_fields: tuple[dict[str, Any], ...]
    output_type: str
    output_fields: tuple[dict[str, Any], ...]


class OperatorFailed(Exception):
    """Raised when an operator fails one item; the message says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _fields(configuration: dict[str, Any], key: str, where: str) -> tuple[dict[str, Any], ...]:
    return tuple(check_definitions(configuration.get(key), f"{where}: {key}"))


def _expression(configuration: dict[str, Any], where: str) -> str:
    expression = configuration.get("expression")
    if not isinstance(expression, str) or not expression.strip():
        raise InvalidInput(f"{where} needs an 'expression'")
    if len(expression) > MAX_EXPRESSION:
        raise InvalidInput(f"{where}: the expression is longer than {MAX_EXPRESSION} characters")
    try:
        EvalWithCompoundTypes().parse(expression)
    except SyntaxError as exc:
        raise InvalidInput(f"{where}: the expression is not valid: {exc.msg}") from None
    return expression


def io(operator: str, configuration: dict[str, Any] | None, object_name: str) -> Io:
    """The fields of an operator object; raises `InvalidInput` naming the object when misconfigured."""
    where = f"Object '{object_name}'"
    if operator not in OPERATORS:
        raise InvalidInput(f"{where} refers to operator '{operator}', which does not exist; "
                           f"choose one of {', '.join(OPERATORS)}")
    config = configuration or {}
    if not isinstance(config, dict):
        raise InvalidInput(f"{where}: configuration must be an object")
    inputs = _fields(config, "input_fields", where)
    outputs = _fields(config, "output_fields", where)
    if operator == FUNCTION:
        _expression(config, where)
        if not outputs:
            raise InvalidInput(f"{where}: a function needs at least one output field")
    elif operator == IF_CONDITION:
        _expression(config, where)
        outputs = inputs  # the data passes through unchanged
    elif operator == RAISE_ERROR:
        if not isinstance(config.get("error_message", ""), str):
            raise InvalidInput(f"{where}: error_message must be a string")
        outputs = ()
    elif operator == PIPELINE_VARIABLE:
        values = _output_values(config, where)
        for field in outputs:
            if field["name"] not in values:
                raise InvalidInput(f"{where}: output field '{field['name']}' has no value in output_values")
            if not DATA_TYPES[field["data_type"]](values[field["name"]]):
                raise InvalidInput(f"{where}: the value of '{field['name']}' is not of type {field['data_type']}")
    elif operator == CREATE_SUBREQUESTS:
        if len(inputs) != 1 or not inputs[0]["data_type"].startswith("array_"):
            raise InvalidInput(f"{where}: create-subrequests needs exactly one input field of an array type")
        if len(outputs) != 1:
            raise InvalidInput(f"{where}: create-subrequests needs exactly one output field")
        if outputs[0]["data_type"] != inputs[0]["data_type"].removeprefix("array_"):
            raise InvalidInput(f"{where}: the output field '{outputs[0]['name']}' must be of type "
                               f"{inputs[0]['data_type'].removeprefix('array_')}, an element of "
                               f"'{inputs[0]['name']}'")
    elif operator == COLLECT_SUBREQUESTS:
        if len(inputs) != len(outputs) or not inputs:
            raise InvalidInput(f"{where}: collect-subrequests needs one output field per input field")
        for source, target in zip(inputs, outputs, strict=True):
            if target["data_type"] != "array_" + source["data_type"]:
                raise InvalidInput(f"{where}: output field '{target['name']}' must be of type "
                                   f"array_{source['data_type']} to collect '{source['name']}'")
    elif operator == COUNT_SUBREQUESTS:
        outputs = outputs or ({"name": "count", "data_type": "int"},)
        if len(outputs) != 1 or outputs[0]["data_type"] != "int":
            raise InvalidInput(f"{where}: count-subrequests has one output field of type int")
    on_error = config.get("on_error")
    if on_error is not None and (not isinstance(on_error, str) or on_error not in ON_ERROR_SKIP | ON_ERROR_STOP):
        raise InvalidInput(f"{where}: on_error must be 'stop' or 'skip'")
    return Io("structured", inputs, "structured", outputs)


def _output_values(config: dict[str, Any], where: str) -> dict[str, Any]:
    values = config.get("output_values") or []
    if not isinstance(values, list) or not all(isinstance(v, dict) and isinstance(v.get("name"), str)
                                               for v in values):
        raise InvalidInput(f"{where}: output_values must be a list of {{name, value}}")
    return {v["name"]: v.get("value") for v in values}


def evaluate(expression: str, names: dict[str, Any]) -> Any:
    """The value of `expression` with `names` in scope; raises `OperatorFailed` with the reason."""
    evaluator = EvalWithCompoundTypes(names={**SAFE_NAMES, **names}, functions=SAFE_FUNCTIONS)
    try:
        return evaluator.eval(expression)
    except InvalidExpression as exc:
        raise OperatorFailed(f"The expression could not be evaluated: {exc}") from None
    except Exception as exc:  # an error of the expression itself (a division by zero, a bad index)
        raise OperatorFailed(f"The expression raised {type(exc).__name__}: {exc}") from None


def run_item(operator: str, configuration: dict[str, Any], spec: Io, item: Any) -> list[Any]:
    """Run a one-item operator; returns the items it gives (none: the branch stops here)."""
    config = configuration or {}
    names = item if isinstance(item, dict) else {}
    if operator == FUNCTION:
        value = evaluate(config["expression"], names)
        if len(spec.output_fields) == 1 and not (
            isinstance(value, dict) and spec.output_fields[0]["name"] in value and spec.output_fields[0]["data_type"]
            != "dict"
        ):
            value = {spec.output_fields[0]["name"]: value}
        if not isinstance(value, dict):
            raise OperatorFailed("The expression must give an object keyed by the output fields")
        return [_checked(spec, {f["name"]: value.get(f["name"]) for f in spec.output_fields})]
    if operator == IF_CONDITION:
        return [item] if evaluate(config["expression"], names) else []
    if operator == RAISE_ERROR:
        raise OperatorFailed(config.get("error_message") or "The pipeline raised an error")
    if operator == PIPELINE_VARIABLE:
        values = _output_values(config, "pipeline-variable")
        return [{f["name"]: values[f["name"]] for f in spec.output_fields}]
    if operator == CREATE_SUBREQUESTS:
        source, target = spec.input_fields[0]["name"], spec.output_fields[0]["name"]
        elements = names.get(source)
        if not isinstance(elements, list):
            raise OperatorFailed(f"Input field '{source}' must be a list")
        if len(elements) > MAX_ITEMS:
            raise OperatorFailed(f"Input field '{source}' has {len(elements)} elements; at most {MAX_ITEMS} "
                                 "subrequests are made")
        return [{target: element} for element in elements]
    raise AssertionError(f"{operator} is not a one-item operator")


def run_group(operator: str, spec: Io, items: list[Any]) -> Any:
    """Run a fan-in operator over every item that reached it; returns its one item."""
    if operator == COUNT_SUBREQUESTS:
        return {spec.output_fields[0]["name"]: len(items)}
    if operator == COLLECT_SUBREQUESTS:
        return {
            target["name"]: [item.get(source["name"]) if isinstance(item, dict) else None for item in items]
            for source, target in zip(spec.input_fields, spec.output_fields, strict=True)
        }
    raise AssertionError(f"{operator} is not a fan-in operator")


def _checked(spec: Io, value: dict[str, Any]) -> dict[str, Any]:
    try:
        check_data(spec.output_type, list(spec.output_fields), value, "output")
    except InvalidInput as exc:
        raise OperatorFailed(exc.message) from None
    return value
