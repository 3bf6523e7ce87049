"""Reading ABEJA request bodies, without a server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import Request

from modelbay.core.errors import TooLarge
from modelbay.dialects.abeja.deps import read_body


def _request(chunks: list[bytes]) -> tuple[Request, list[bytes]]:
    """A request whose body arrives in `chunks`; the list left holds those never read."""
    left = list(chunks)

    async def receive() -> dict[str, Any]:
        chunk = left.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(left)}

    return Request({"type": "http", "method": "POST", "headers": []}, receive), left


def test_a_body_within_the_limit_is_read_whole() -> None:
    request, _ = _request([b"ab", b"cd"])
    assert asyncio.run(read_body(request, 4)) == b"abcd"


def test_a_body_past_the_limit_is_refused_before_it_is_all_read() -> None:
    request, left = _request([b"x" * 10] * 5)
    with pytest.raises(TooLarge):
        asyncio.run(read_body(request, 15))
    assert len(left) == 3  # the third chunk was never asked for
