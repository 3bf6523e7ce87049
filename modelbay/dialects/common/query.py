"""Query parameters as numbers, the same way in every dialect."""

from __future__ import annotations

from modelbay.core.decimals import is_decimal
from modelbay.core.errors import InvalidInput


def int_param(value: str | None, name: str) -> int | None:
    """An integer query parameter: `None` when absent, else ASCII digits with an optional '-'.

    A minus sign is read so that the caller's range check can say what is wrong with '-1'; '１２',
    '1_000', ' 12' and '+12' are refused (`int()` would take them all)."""
    if value is None:
        return None
    if not is_decimal(value.removeprefix("-")):
        raise InvalidInput(f"{name} must be an integer, not {value[:40]!r}")
    return int(value)
