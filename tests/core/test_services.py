"""Scaling settings of services, as the ABEJA SDK sends them (numbers, and booleans as strings)."""

from __future__ import annotations

import pytest

from modelbay.core.errors import InvalidInput
from modelbay.core.services import Scaling, check_scaling


def test_a_new_service_runs_one_instance_by_default() -> None:
    assert check_scaling({}) == Scaling(1, 1, 1, False)


def test_min_and_max_default_to_the_instance_number() -> None:
    assert check_scaling({"instance_number": 3}) == Scaling(3, 3, 3, False)


def test_autoscale_takes_a_bool_or_the_strings_true_and_false() -> None:
    assert check_scaling({"enable_autoscale": "true", "min_instance_number": 1, "max_instance_number": 4}) == \
        Scaling(1, 1, 4, True)
    assert check_scaling({"enable_autoscale": "False"}).enable_autoscale is False
    assert check_scaling({"enable_autoscale": True}).enable_autoscale is True


def test_an_update_changes_only_what_it_names() -> None:
    current = Scaling(2, 1, 4, True)
    assert check_scaling({"instance_number": "3"}, current) == Scaling(3, 1, 4, True)


@pytest.mark.parametrize(
    "fields",
    [
        {"instance_number": 0},
        {"instance_number": 21},
        {"instance_number": True},
        {"min_instance_number": 3, "max_instance_number": 2},
        {"enable_autoscale": "yes"},
        {"enable_autoscale": 1},
    ],
)
def test_bad_scaling_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        check_scaling(fields)
