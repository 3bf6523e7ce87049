"""Operators: their field checks and what they do to items, evaluated safely."""

from __future__ import annotations

import pytest

from modelbay.core import operators
from modelbay.core.errors import InvalidInput
from modelbay.core.operators import OperatorFailed
from modelbay.core.pipeline_graph import Source
from modelbay.core.pipeline_walk import StepFailed, merge

X = [{"name": "x", "data_type": "int"}]
XS = [{"name": "xs", "data_type": "array_int"}]


def test_a_function_maps_its_input_fields_to_its_output_field() -> None:
    config = {"expression": "x * 2 + len(xs)", "input_fields": X + XS, "output_fields": [{"name": "y",
                                                                                            "data_type": "int"}]}
    spec = operators.io("function", config, "f")
    assert operators.run_item("function", config, spec, {"x": 3, "xs": [1, 2]}) == [{"y": 8}]


def test_a_function_whose_result_has_the_wrong_type_fails_naming_the_field() -> None:
    config = {"expression": "str(x)", "input_fields": X, "output_fields": X}
    spec = operators.io("function", config, "f")
    with pytest.raises(OperatorFailed, match="Output field 'x' must be of type int"):
        operators.run_item("function", config, spec, {"x": 3})


@pytest.mark.parametrize("expression", ["__import__('os').system('true')", "x.__class__", "open('/etc/passwd')"])
def test_an_expression_cannot_reach_beyond_its_input(expression: str) -> None:
    with pytest.raises(OperatorFailed):
        operators.evaluate(expression, {"x": 1})


def test_an_expression_error_is_an_operator_failure_not_a_crash() -> None:
    with pytest.raises(OperatorFailed, match="ZeroDivisionError"):
        operators.evaluate("x / 0", {"x": 1})


def test_a_syntax_error_in_an_expression_is_refused_when_the_version_is_made() -> None:
    with pytest.raises(InvalidInput, match="Object 'f': the expression is not valid"):
        operators.io("function", {"expression": "x +", "input_fields": X, "output_fields": X}, "f")


def test_an_if_condition_passes_or_stops_an_item() -> None:
    config = {"expression": "x > 1", "input_fields": X}
    spec = operators.io("if-condition", config, "if")
    assert spec.output_fields == spec.input_fields
    assert operators.run_item("if-condition", config, spec, {"x": 2}) == [{"x": 2}]
    assert operators.run_item("if-condition", config, spec, {"x": 1}) == []


def test_create_subrequests_fans_out_and_collect_and_count_fan_in() -> None:
    create = operators.io("create-subrequests", {"input_fields": XS, "output_fields": X}, "split")
    items = operators.run_item("create-subrequests", {}, create, {"xs": [4, 5, 6]})
    assert items == [{"x": 4}, {"x": 5}, {"x": 6}]
    collect = operators.io("collect-subrequests", {"input_fields": X, "output_fields": XS}, "join")
    assert operators.run_group("collect-subrequests", collect, items) == {"xs": [4, 5, 6]}
    count = operators.io("count-subrequests", {}, "n")
    assert operators.run_group("count-subrequests", count, items) == {"count": 3}


@pytest.mark.parametrize(("operator", "config", "message"), [
    ("no-such", {}, "operator 'no-such', which does not exist"),
    ("create-subrequests", {"input_fields": X, "output_fields": X}, "exactly one input field of an array type"),
    ("collect-subrequests", {"input_fields": X, "output_fields": X}, "must be of type array_int"),
    ("pipeline-variable", {"output_fields": X, "output_values": [{"name": "x", "value": "one"}]},
     "the value of 'x' is not of type int"),
    ("function", {"expression": "1", "input_fields": X}, "needs at least one output field"),
])
def test_a_misconfigured_operator_is_refused_naming_the_object(operator: str, config: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        operators.io(operator, config, "obj")


def test_items_from_several_sources_are_merged_by_position_and_a_single_one_is_shared() -> None:
    sources = (Source("fan", (("x", "x"),)), Source("const", (("c", "c"),)), Source("stopped", (("z", "z"),)))
    merged = merge("d", "structured", sources, [[{"x": 1}, {"x": 2}], [{"c": 9}], []])
    assert merged == [{"x": 1, "c": 9}, {"x": 2, "c": 9}]
    with pytest.raises(StepFailed, match="Object 'd' receives 2 items from 'b' but 3"):
        merge("d", "structured", (Source("a", ()), Source("b", ())), [[1, 2, 3], [1, 2]])


def test_create_subrequests_refuses_a_list_longer_than_the_fan_out_limit() -> None:
    create = operators.io("create-subrequests", {"input_fields": XS, "output_fields": X}, "split")
    assert len(operators.run_item("create-subrequests", {}, create, {"xs": [0] * operators.MAX_ITEMS})) == \
        operators.MAX_ITEMS
    with pytest.raises(operators.OperatorFailed, match="at most 10000 subrequests"):
        operators.run_item("create-subrequests", {}, create, {"xs": [0] * (operators.MAX_ITEMS + 1)})
