"""Whole numbers written as text by a caller: a short run of ASCII digits, nothing else.

`int()` and `str.isdigit()` both take any Unicode digit (`int("１２")` is 12, and '²' passes
`isdigit()` and then fails `int()`), and `int()` refuses more than 4,300 digits: so text is a number
here only when every character is one of 0-9 and there are few enough of them for a 64-bit column.
"""

from __future__ import annotations

#: Digits of the largest numbers a signed 64-bit column always holds.
MAX_DIGITS = 18


def is_decimal(text: str, max_digits: int = MAX_DIGITS) -> bool:
    """Whether `text` is 1 to `max_digits` ASCII digits (no sign, no space, no underscore)."""
    return 0 < len(text) <= max_digits and text.isascii() and text.isdigit()
