import pytest

from modelbay.core.errors import InvalidInput
from modelbay.core.fields import check_data, check_definitions

FIELDS = [
    {"name": "n", "data_type": "int"},
    {"name": "x", "data_type": "double"},
    {"name": "s", "data_type": "string"},
    {"name": "b", "data_type": "bool"},
    {"name": "d", "data_type": "dict"},
    {"name": "f", "data_type": "file"},
    {"name": "ai", "data_type": "array_int"},
    {"name": "ad", "data_type": "array_double"},
    {"name": "as", "data_type": "array_string"},
]
GOOD = {"n": 1, "x": 1.5, "s": "a", "b": True, "d": {}, "f": "ubiops-file://b/f", "ai": [1], "ad": [1, 2.5], "as": ["a"]}


def test_data_matching_every_type_passes() -> None:
    check_data("structured", FIELDS, GOOD)


def test_an_int_accepts_no_bool_and_a_double_accepts_an_int() -> None:
    with pytest.raises(InvalidInput, match="'n' must be of type int, not bool"):
        check_data("structured", FIELDS, {**GOOD, "n": True})
    check_data("structured", FIELDS, {**GOOD, "x": 3})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({k: v for k, v in GOOD.items() if k != "s"}, "Missing input field: s"),
        ({**GOOD, "extra": 1}, "Unexpected input field: extra"),
        ({**GOOD, "ai": [1, "2"]}, "'ai' must be of type array_int"),
        ({**GOOD, "s": 5}, "'s' must be of type string, not int"),
        ([GOOD], "must be an object keyed by field name, not array"),
    ],
)
def test_bad_structured_data_is_rejected_naming_the_field(data: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        check_data("structured", FIELDS, data)


def test_plain_data_must_be_a_string() -> None:
    check_data("plain", [], "hello")
    with pytest.raises(InvalidInput, match="Plain input must be a string"):
        check_data("plain", [], {"a": 1})


def test_field_definitions_reject_unknown_types_and_duplicates() -> None:
    assert check_definitions([{"name": "a", "data_type": "int", "x": 1}], "input_fields") == [
        {"name": "a", "data_type": "int"}
    ]
    with pytest.raises(InvalidInput, match="data_type 'float'"):
        check_definitions([{"name": "a", "data_type": "float"}], "input_fields")
    with pytest.raises(InvalidInput, match="defined twice"):
        check_definitions([{"name": "a", "data_type": "int"}] * 2, "input_fields")
