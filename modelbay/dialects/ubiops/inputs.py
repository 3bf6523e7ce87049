"""What the UbiOps request routes read off the HTTP request themselves: query parameters, a JSON body
and a request's input (deployment or pipeline), without FastAPI's dependency solver."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import Request

from modelbay.core.errors import InvalidInput
from modelbay.dialects.common.body import read_body
from modelbay.dialects.common.query import int_param
from modelbay.engine import Engine


def int_query(request: Request, name: str) -> int | None:
    return int_param(request.query_params.get(name), name)


def bool_query(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise InvalidInput(f"{name} must be true or false, not {value!r}")
    return value in ("true", "1")


def date_query(request: Request, name: str) -> datetime | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{name} must be an ISO-8601 date, not {value!r}") from None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def list_filters(request: Request) -> dict[str, Any]:
    """The query of a request list (deployment or pipeline) as the keywords of the core's `list`."""
    return {
        "status": request.query_params.get("status"),
        "limit": int_query(request, "limit"),
        "offset": int_query(request, "offset"),
        "start_date": date_query(request, "start_date"),
        "end_date": date_query(request, "end_date"),
        "search_id": request.query_params.get("search_id"),
    }


async def json_or_none(request: Request) -> Any:
    """The body parsed as JSON; `None` when it is empty."""
    engine: Engine = request.app.state.engine
    raw = await read_body(request, engine.settings.max_request_bytes)
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"The request body is not valid JSON: {exc}") from exc


def decode_input(raw: bytes, content_type: str, input_type: str) -> Any:
    """A request body as deployment input: JSON, or raw text for `text/plain` (how the SDK sends a str)."""
    if content_type.startswith("text/plain"):
        if input_type == "plain":
            return raw.decode("utf-8", errors="replace")
        raw = raw or b"null"
    try:
        return orjson.loads(raw) if raw else ""
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"The request body is not valid JSON: {exc}") from exc


async def request_data(request: Request, input_type: str, limit: int) -> Any:
    """The body as the input of a deployment or pipeline request."""
    raw = await read_body(request, limit)
    return decode_input(raw, request.headers.get("content-type", ""), input_type)
