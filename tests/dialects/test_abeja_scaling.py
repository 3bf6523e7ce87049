"""Scaling settings as the ABEJA SDK sends them: numbers as strings, and booleans as "true"/"false"."""

from __future__ import annotations

import pytest

from modelbay.core.errors import InvalidInput
from modelbay.core.services import Scaling, check_scaling
from modelbay.dialects.abeja.errors import ERRORS
from modelbay.dialects.abeja.services import scaling_fields


def test_autoscale_takes_a_bool_or_the_strings_true_and_false() -> None:
    body = {"enable_autoscale": "true", "min_instance_number": 1, "max_instance_number": 4}
    assert check_scaling(scaling_fields(body)) == Scaling(1, 1, 4, True)
    assert check_scaling(scaling_fields({"enable_autoscale": "False"})).enable_autoscale is False
    assert check_scaling(scaling_fields({"enable_autoscale": True})).enable_autoscale is True


def test_an_update_changes_only_what_it_names() -> None:
    current = Scaling(2, 1, 4, True)
    assert check_scaling(scaling_fields({"instance_number": "3"}), current) == Scaling(3, 1, 4, True)


@pytest.mark.parametrize(
    "body",
    [
        {"instance_number": "0"},
        {"instance_number": "21"},
        {"instance_number": "\u00b2"},  # isdigit() says yes, int() says no
        {"instance_number": "9" * 5000},  # more digits than int() converts
        {"min_instance_number": "3", "max_instance_number": "2"},
        {"enable_autoscale": "yes"},
    ],
)
def test_bad_scaling_is_refused(body: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        check_scaling(scaling_fields(body))


def test_a_refused_setting_is_named_as_the_sdk_names_it() -> None:
    with pytest.raises(InvalidInput) as raised:
        check_scaling(scaling_fields({"instance_number": "yes"}))
    assert ERRORS.message(raised.value) == "instance_number must be an integer from 1 to 20"
