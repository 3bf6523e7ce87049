"""UbiOps deployment requests: batch create, and everything read, cancelled or deleted.

The direct request, the hot path, is served in front of the framework (`direct.py`). These
routes read the HTTP request themselves rather than through FastAPI's dependency solver."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from modelbay.core.deployments import Deployments, Target
from modelbay.core.errors import InvalidInput, NotFound
from modelbay.core.requests import BATCH_TIMEOUT_DEFAULT_S, BATCH_TIMEOUT_MAX_S, check_priority
from modelbay.core.stored_requests import check_ids, check_timeout
from modelbay.dialects.common.body import read_body
from modelbay.dialects.common.query import int_param
from modelbay.dialects.ubiops import schemas
from modelbay.dialects.ubiops.deps import caller_of
from modelbay.dialects.ubiops.errors import UbiopsRoute
from modelbay.engine import Engine

router = APIRouter(route_class=UbiopsRoute)


def _int_query(request: Request, name: str) -> int | None:
    return int_param(request.query_params.get(name), name)


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


async def _request_data(request: Request, input_type: str, limit: int) -> Any:
    raw = await read_body(request, limit)
    return decode_input(raw, request.headers.get("content-type", ""), input_type)


async def target_of(request: Request) -> tuple[Engine, Target]:
    """The engine and the version a request route names (the default one without `version`)."""
    engine: Engine = request.app.state.engine
    path = request.path_params
    project = engine.projects.get(await caller_of(request), path["project_name"])
    return engine, engine.deployments.target(project, path["deployment_name"], path.get("version"))


# --- batch requests and everything read, cancelled or deleted -------------------------------
# Each route exists under the deployment (default version) and under one version.

DEPLOYMENT = "/projects/{project_name}/deployments/{deployment_name}"
VERSION = DEPLOYMENT + "/versions/{version}"


async def _json(request: Request) -> Any:
    engine: Engine = request.app.state.engine
    raw = await read_body(request, engine.settings.max_request_bytes)
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"The request body is not valid JSON: {exc}") from exc


def _bool_query(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise InvalidInput(f"{name} must be true or false, not {value!r}")
    return value in ("true", "1")


def _date_query(request: Request, name: str) -> datetime | None:
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
        "limit": _int_query(request, "limit"),
        "offset": _int_query(request, "offset"),
        "start_date": _date_query(request, "start_date"),
        "end_date": _date_query(request, "end_date"),
        "search_id": request.query_params.get("search_id"),
    }


def _ok(body: Any = None) -> Response:
    return schemas.respond(body if body is not None else {"success": True})


async def batch_create(request: Request) -> Response:
    engine, target = await target_of(request)
    Deployments.serving_target_check(target)
    timeout = check_timeout(_int_query(request, "timeout"), BATCH_TIMEOUT_DEFAULT_S, BATCH_TIMEOUT_MAX_S)
    priority = check_priority(_int_query(request, "priority"))
    body = await _request_data(request, target.input_type, engine.settings.max_request_bytes)
    items = body if isinstance(body, list) else [body]  # a single item is accepted too
    records = await engine.requests.create_batch(
        target, items, timeout=timeout, priority=priority, origin={"created_by": "ubiops"}
    )
    return schemas.respond([schemas.batch_created(r) for r in records], 201)


async def collect(request: Request) -> Response:
    engine, target = await target_of(request)
    rows = engine.requests.collect(target, check_ids(await _json(request)))
    return _ok([schemas.request_detail(r, target.deployment_name, target.version_name) for r in rows])


async def batch_cancel(request: Request) -> Response:
    engine, target = await target_of(request)
    body = await _json(request)
    ids = check_ids([] if body is None else body)
    count = await engine.requests.cancel_many(target, ids, request.query_params.get("status"))
    return _ok({"success": True, "cancelled": count})


async def batch_delete(request: Request) -> Response:
    engine, target = await target_of(request)
    ids = check_ids(await _json(request))
    if not ids:
        raise InvalidInput("Give at least one request id to delete")
    await engine.requests.delete(target, ids)
    return _ok()


async def get(request: Request) -> Response:
    engine, target = await target_of(request)
    row = engine.requests.get(target, request.path_params["request_id"])
    detail = schemas.request_detail(row, target.deployment_name, target.version_name,
                                    metadata_only=_bool_query(request, "metadata_only"))
    return _ok(detail)


async def list_requests(request: Request) -> Response:
    engine, target = await target_of(request)
    rows = engine.requests.list(target, **list_filters(request))
    return _ok([schemas.request_list_item(r, target.deployment_name, target.version_name) for r in rows])


async def update(request: Request) -> Response:
    engine, target = await target_of(request)
    body = await _json(request)
    if not isinstance(body, dict) or body.get("status") != "cancelled":
        raise InvalidInput("The only update allowed is {\"status\": \"cancelled\"}")
    request_id = request.path_params["request_id"]
    await engine.requests.cancel(target, request_id)
    row = engine.requests.get(target, request_id)
    return _ok(schemas.request_detail(row, target.deployment_name, target.version_name, metadata_only=True))


async def delete_one(request: Request) -> Response:
    engine, target = await target_of(request)
    await engine.requests.delete(target, [request.path_params["request_id"]])
    return Response(status_code=204)


def _file(request: Request, content: bytes | None, which: str, request_id: str) -> Response:
    if content is None:
        raise NotFound(f"{which} of request", request_id)
    value = orjson.loads(content)
    body, kind, ext = (value.encode(), "text/plain", "txt") if isinstance(value, str) else (content, "application/json", "json")
    headers = {"Content-Disposition": f'attachment; filename="{request_id}-{which}.{ext}"'}
    return Response(body, media_type=kind, headers=headers)


async def input_get(request: Request) -> Response:
    engine, target = await target_of(request)
    row = engine.requests.get(target, request.path_params["request_id"])
    return _file(request, row.data, "input", row.id)


async def output_get(request: Request) -> Response:
    engine, target = await target_of(request)
    row = engine.requests.get(target, request.path_params["request_id"])
    return _file(request, row.result, "output", row.id)


for base, scope in ((DEPLOYMENT, "deployment"), (VERSION, "deployment_version")):
    router.add_api_route(base + "/requests/batch", batch_create, methods=["POST"], status_code=201,
                         name=f"batch_{scope}_requests_create")
    router.add_api_route(base + "/requests/collect", collect, methods=["POST"], name=f"{scope}_requests_batch_get")
    router.add_api_route(base + "/requests/cancel", batch_cancel, methods=["POST"],
                         name=f"{scope}_requests_batch_cancel")
    router.add_api_route(base + "/requests/delete", batch_delete, methods=["POST"],
                         name=f"{scope}_requests_batch_delete")
    router.add_api_route(base + "/requests", list_requests, methods=["GET"], name=f"{scope}_requests_list")
    router.add_api_route(base + "/requests/{request_id}", get, methods=["GET"], name=f"{scope}_requests_get")
    router.add_api_route(base + "/requests/{request_id}", update, methods=["PATCH"], name=f"{scope}_requests_update")
    router.add_api_route(base + "/requests/{request_id}", delete_one, methods=["DELETE"], status_code=204,
                         name=f"{scope}_requests_delete")
    router.add_api_route(base + "/requests/{request_id}/input", input_get, methods=["GET"],
                         name=f"{scope}_requests_input_get")
    router.add_api_route(base + "/requests/{request_id}/output", output_get, methods=["GET"],
                         name=f"{scope}_requests_output_get")
