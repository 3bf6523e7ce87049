"""The rules of runs: statuses, retry counts, environments and how input reaches code."""

from __future__ import annotations

import dataclasses

import pytest

from modelbay.core.deployments import Target
from modelbay.core.errors import InvalidInput
from modelbay.core.runs import (
    ALLOWED,
    TERMINAL,
    RunStatus,
    call_input,
    check_environment,
    check_retry_count,
)
from modelbay.runtime import wire

BASE = Target(
    project_id="p", project_name="p", deployment_id="d", deployment_name="d", version_id="v", version_name="1",
    input_type="plain", output_type="plain", input_fields=(), output_fields=(), status="available",
    retention_mode="full", minimum_instances=0, maximum_instances=2, maximum_idle_time=300,
    environment_variables={}, handler="main:handler", package_dir="/x", python="/x/python", has_requests_method=False,
)


def test_terminal_statuses_go_nowhere_and_every_other_can_fail() -> None:
    for status in RunStatus:
        if status in TERMINAL:
            assert ALLOWED[status] == frozenset()
        else:
            assert RunStatus.FAILED in ALLOWED[status]


def test_a_retry_goes_back_to_runnable_and_a_restart_back_to_pending() -> None:
    assert RunStatus.RUNNABLE in ALLOWED[RunStatus.RUNNING]
    assert RunStatus.PENDING in ALLOWED[RunStatus.RUNNING]
    assert RunStatus.RUNNING not in ALLOWED[RunStatus.PENDING]  # a run starts an instance first


@pytest.mark.parametrize("value", [-1, 10, 2.5, "3", True])
def test_retry_count_outside_0_to_9_is_refused(value: object) -> None:
    with pytest.raises(InvalidInput):
        check_retry_count(value)


def test_retry_count_defaults_to_5() -> None:
    assert check_retry_count(None) == 5 and check_retry_count(0) == 0 and check_retry_count(9) == 9


def test_environment_values_become_strings_and_bad_ones_are_refused() -> None:
    assert check_environment({"A": 1, "B": True, "C": "x"}) == {"A": "1", "B": "true", "C": "x"}
    for bad in ([], {"": "x"}, {"A=B": "x"}, {"A": None}, {"A": {"b": 1}}, {"A": "nul\0"}):
        with pytest.raises(InvalidInput):
            check_environment(bad)


def test_handler_code_gets_the_input_as_a_json_body_with_its_environment() -> None:
    data, context = call_input(BASE, {"a": 1}, {"E": "1"})
    assert data == '{"a":1}'
    assert context == {wire.ENVIRONMENT_KEY: {"E": "1"},
                       wire.HTTP_KEY: {"content_type": "application/json", "encoding": "text"}}


def test_deployment_class_code_gets_the_input_as_its_own_input_type() -> None:
    structured = dataclasses.replace(BASE, handler=None, input_type="structured")
    assert call_input(structured, {"x": 1}, {}) == ({"x": 1}, {})
    plain = dataclasses.replace(BASE, handler=None)
    assert call_input(plain, {"x": 1}, {}) == ('{"x":1}', {})
    assert call_input(plain, "text", {}) == ("text", {})
