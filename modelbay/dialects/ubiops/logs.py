"""UbiOps `logs_list`: `GET /projects/{p}/logs` with the label query the SDK's helpers send,
such as ``| deployment_name=`d` and deployment_version=`v` and deployment_request_id=`id` ``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from modelbay.core.decimals import is_decimal
from modelbay.core.errors import InvalidInput
from modelbay.core.logs import MAX_LINES, LogLine, request_log_lines
from modelbay.dialects.common.query import int_param
from modelbay.dialects.ubiops import schemas
from modelbay.dialects.ubiops.deps import caller_of
from modelbay.dialects.ubiops.errors import UbiopsRoute
from modelbay.engine import Engine

router = APIRouter(route_class=UbiopsRoute, tags=["UbiOps · logs"])

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Digits of a time in nanoseconds since the epoch, up to the year 2286.
NANOSECOND_DIGITS = 19

_CONDITION = re.compile(r"^\s*(\w+)\s*(=~|!~|!=|=)\s*(`[^`]*`|\"[^\"]*\")\s*$")

Condition = tuple[str, str, str]


def parse_query(query: str | None) -> list[list[Condition]]:
    """A query as alternatives (`or`) of conditions (`and`); raises `InvalidInput` when malformed."""
    if not query or not query.strip():
        return [[]]
    text = query.strip()
    if text.startswith("{") and text.endswith("}"):  # a LogQL stream selector
        text = text[1:-1].replace(",", " and ")
    text = text.lstrip("|")
    alternatives = []
    for alternative in re.split(r"\s+or\s+", text):
        conditions = []
        for part in re.split(r"\s+and\s+", alternative):
            match = _CONDITION.match(part)
            if match is None:
                raise InvalidInput(f"Cannot read the log query condition {part.strip()!r}")
            label, op, value = match.groups()
            conditions.append((label, op, value[1:-1]))
        alternatives.append(conditions)
    return alternatives


def _holds(condition: Condition, labels: dict[str, str]) -> bool:
    label, op, value = condition
    actual = labels.get(label, "")
    if op == "=":
        return actual == value
    if op == "!=":
        return actual != value
    try:
        matched = re.fullmatch(value, actual) is not None
    except re.error:
        raise InvalidInput(f"The log query has a bad regular expression: {value!r}") from None
    return matched if op == "=~" else not matched


def _time(value: str | None, name: str) -> datetime | None:
    """An ISO-8601 time, or an integer of nanoseconds since the epoch (the SDK sends both)."""
    if value is None:
        return None
    if is_decimal(value, NANOSECOND_DIGITS):  # rounded up to whole microseconds, the store's precision
        return EPOCH + timedelta(microseconds=-(-int(value) // 1000))
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{name} must be an ISO-8601 time or nanoseconds since the epoch") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _entry(line: LogLine) -> dict[str, Any]:
    nanoseconds = (line.time - EPOCH) // timedelta(microseconds=1) * 1000
    return {
        "timestamp": nanoseconds,
        "timestamp_str": line.time.isoformat(timespec="microseconds"),
        "log": line.text,
        "metadata": {**line.labels, "system": False, "level": "info"},
    }


@router.get("/projects/{project_name}/logs")
async def logs_list(request: Request, project_name: str) -> Response:
    """What deployments printed while serving requests. Query: `query`, `start`, `end`, `limit`."""
    engine: Engine = request.app.state.engine
    project = engine.projects.get(await caller_of(request), project_name)
    params = request.query_params
    alternatives = parse_query(params.get("query"))
    limit = int_param(params.get("limit", "1000"), "limit")
    if limit is None or not 1 <= limit <= MAX_LINES:
        raise InvalidInput(f"limit must be from 1 to {MAX_LINES}")
    lines = await run_in_threadpool(
        request_log_lines, engine.db, project.id, start=_time(params.get("start"), "start"),
        end=_time(params.get("end"), "end"),
    )
    chosen = [line for line in lines if any(all(_holds(c, line.labels) for c in alt) for alt in alternatives)]
    return schemas.respond([_entry(line) for line in chosen[:limit]])
