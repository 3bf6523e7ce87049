"""UbiOps deployment requests. The direct request is the hot path: its routes read the HTTP
request themselves rather than through FastAPI's dependency solver, and are matched first."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from modelbay.core.engine import Engine
from modelbay.core.errors import InvalidInput, TooLarge
from modelbay.core.requests import DIRECT_TIMEOUT_DEFAULT_S, DIRECT_TIMEOUT_MAX_S, check_timeout
from modelbay.dialects.ubiops import schemas
from modelbay.dialects.ubiops.deps import caller_of

router = APIRouter()


def _int_query(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(f"{name} must be an integer, not {value!r}") from None


async def _request_data(request: Request, input_type: str, limit: int) -> Any:
    """The request body as deployment input: JSON, or raw text for `text/plain` (how the SDK sends a str)."""
    raw = await request.body()
    if len(raw) > limit:
        raise TooLarge(f"The request body is larger than the limit of {limit} bytes")
    if request.headers.get("content-type", "").startswith("text/plain"):
        if input_type == "plain":
            return raw.decode("utf-8", errors="replace")
        raw = raw or b"null"
    try:
        return orjson.loads(raw) if raw else ""
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"The request body is not valid JSON: {exc}") from exc


async def _direct(request: Request, version: str | None) -> Response:
    engine: Engine = request.app.state.engine
    path = request.path_params
    project = engine.projects.get(await caller_of(request), path["project_name"])
    target = engine.deployments.serving_target(project, path["deployment_name"], version)
    timeout = check_timeout(_int_query(request, "timeout"), DIRECT_TIMEOUT_DEFAULT_S, DIRECT_TIMEOUT_MAX_S)
    _int_query(request, "priority")
    data = await _request_data(request, target.input_type, engine.settings.max_request_bytes)
    record = await engine.requests.direct(target, data, timeout=timeout, origin={"created_by": "ubiops"})
    return Response(orjson.dumps(schemas.direct_request(record)), media_type="application/json")


@router.post("/projects/{project_name}/deployments/{deployment_name}/requests")
async def deployment_requests_create(request: Request) -> Response:
    """Run a direct request on the deployment's default version. Query: `timeout`, `priority`."""
    return await _direct(request, None)


@router.post("/projects/{project_name}/deployments/{deployment_name}/versions/{version}/requests")
async def deployment_version_requests_create(request: Request, version: str) -> Response:
    """Run a direct request on one version. Query: `timeout`, `priority`."""
    return await _direct(request, version)
