"""UbiOps pipeline requests: the deployment request operations, under a pipeline or one of its versions,
plus the operator requests of a version (`object-requests`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from modelbay.core.errors import InvalidInput, ModelbayError
from modelbay.core.fields import check_data
from modelbay.core.pipeline_requests import (
    BATCH_TIMEOUT_DEFAULT_S,
    BATCH_TIMEOUT_MAX_S,
    DIRECT_TIMEOUT_DEFAULT_S,
    DIRECT_TIMEOUT_MAX_S,
)
from modelbay.core.pipelines import Plan
from modelbay.core.stored_requests import check_ids, check_timeout
from modelbay.dialects.common.errors import status_of
from modelbay.dialects.ubiops import pipeline_schemas as shapes
from modelbay.dialects.ubiops import streaming
from modelbay.dialects.ubiops.deps import caller_of
from modelbay.dialects.ubiops.errors import UbiopsRoute
from modelbay.dialects.ubiops.requests import (
    _bool_query,
    _file,
    _int_query,
    _json,
    _ok,
    _request_data,
    list_filters,
)
from modelbay.dialects.ubiops.schemas import respond
from modelbay.engine import Engine
from modelbay.store.tables import ProjectRow

router = APIRouter(route_class=UbiopsRoute)

PIPELINE = "/projects/{project_name}/pipelines/{pipeline_name}"
VERSION = PIPELINE + "/versions/{version}"

ORIGIN = {"created_by": "ubiops"}


async def plan_of(request: Request) -> tuple[Engine, ProjectRow, Plan]:
    """The engine, project and pipeline version a route names (the default version without `version`)."""
    engine: Engine = request.app.state.engine
    path = request.path_params
    project = engine.projects.get(await caller_of(request), path["project_name"])
    return engine, project, engine.pipelines.plan(project, path["pipeline_name"], path.get("version"))


def _timeout(request: Request, default: int, maximum: int) -> int:
    value = _int_query(request, "timeout")
    if value is None:
        value = _int_query(request, "pipeline_timeout")  # the deprecated name
    return check_timeout(value, default, maximum)


async def create(request: Request) -> Response:
    engine, project, plan = await plan_of(request)
    timeout = _timeout(request, DIRECT_TIMEOUT_DEFAULT_S, DIRECT_TIMEOUT_MAX_S)
    data = await _request_data(request, plan.io.input_type, engine.settings.max_request_bytes)
    record = await engine.pipeline_requests.direct(project, plan, data, timeout=timeout, origin=ORIGIN)
    return _ok(shapes.direct_request(record))


async def stream(request: Request) -> Response:
    """The SDK's `stream_pipeline_request` (SDK-CONTRACTS 1.7): the partials its deployment steps send,
    each as `event: update`, then the pipeline request's response as `event: result`; framed, and
    ended on a disconnect, as a deployment's stream is (`streaming.py`)."""
    try:
        engine, project, plan = await plan_of(request)
        timeout = _timeout(request, DIRECT_TIMEOUT_DEFAULT_S, DIRECT_TIMEOUT_MAX_S)
        data = await _request_data(request, plan.io.input_type, engine.settings.max_request_bytes)
        check_data(plan.io.input_type, plan.io.input_fields, data)
    except ModelbayError as exc:
        return streaming.error_response(status_of(exc), exc.message)
    partials = streaming.Partials()
    return streaming.event_stream(
        engine.pipeline_requests.direct(project, plan, data, timeout=timeout, origin=ORIGIN, on_update=partials.put),
        partials, shapes.direct_request,
    )


async def batch_create(request: Request) -> Response:
    engine, project, plan = await plan_of(request)
    timeout = _timeout(request, BATCH_TIMEOUT_DEFAULT_S, BATCH_TIMEOUT_MAX_S)
    body = await _request_data(request, plan.io.input_type, engine.settings.max_request_bytes)
    items = body if isinstance(body, list) else [body]  # a single item is accepted too
    records = await engine.pipeline_requests.create_batch(project, plan, items, timeout=timeout, origin=ORIGIN)
    return respond([shapes.batch_created(r) for r in records], 201)


async def collect(request: Request) -> Response:
    engine, _, plan = await plan_of(request)
    rows = engine.pipeline_requests.collect(plan, check_ids(await _json(request)))
    return _ok([shapes.request_detail(r, plan.pipeline_name, plan.version_name, engine.pipeline_requests.steps_of(r))
                for r in rows])


async def batch_cancel(request: Request) -> Response:
    engine, _, plan = await plan_of(request)
    body = await _json(request)
    ids = check_ids([] if body is None else body)
    count = await engine.pipeline_requests.cancel_many(plan, ids, request.query_params.get("status"))
    return _ok({"success": True, "cancelled": count})


async def batch_delete(request: Request) -> Response:
    engine, _, plan = await plan_of(request)
    ids = check_ids(await _json(request))
    if not ids:
        raise InvalidInput("Give at least one request id to delete")
    await engine.pipeline_requests.delete(plan, ids)
    return _ok()


async def get(request: Request) -> Response:
    engine, _, plan = await plan_of(request)
    row = engine.pipeline_requests.get(plan, request.path_params["request_id"])
    return _ok(shapes.request_detail(row, plan.pipeline_name, plan.version_name, engine.pipeline_requests.steps_of(row),
                                     metadata_only=_bool_query(request, "metadata_only")))


async def list_requests(request: Request) -> Response:
    engine, _, plan = await plan_of(request)
    rows = engine.pipeline_requests.list(plan, **list_filters(request))
    return _ok([shapes.request_list_item(r, plan.pipeline_name, plan.version_name) for r in rows])


async def update(request: Request) -> Response:
    engine, _, plan = await plan_of(request)
    body = await _json(request)
    if not isinstance(body, dict) or body.get("status") != "cancelled":
        raise InvalidInput("The only update allowed is {\"status\": \"cancelled\"}")
    request_id = request.path_params["request_id"]
    await engine.pipeline_requests.cancel(plan, request_id)
    row = engine.pipeline_requests.get(plan, request_id)
    return _ok(shapes.request_detail(row, plan.pipeline_name, plan.version_name, engine.pipeline_requests.steps_of(row),
                                     metadata_only=True))


async def delete_one(request: Request) -> Response:
    engine, _, plan = await plan_of(request)
    await engine.pipeline_requests.delete(plan, [request.path_params["request_id"]])
    return Response(status_code=204)


async def input_get(request: Request) -> Response:
    engine, _, plan = await plan_of(request)
    row = engine.pipeline_requests.get(plan, request.path_params["request_id"])
    return _file(request, row.data, "input", row.id)


async def output_get(request: Request) -> Response:
    engine, _, plan = await plan_of(request)
    row = engine.pipeline_requests.get(plan, request.path_params["request_id"])
    return _file(request, row.result, "output", row.id)


# --- operator requests -------------------------------------------------------------------------


async def object_request_get(request: Request) -> Response:
    engine, _, plan = await plan_of(request)
    row, parent = engine.pipeline_requests.operator_request(plan, request.path_params["request_id"])
    return _ok(shapes.operator_request(row, parent, plan.pipeline_name, plan.version_name,
                                       metadata_only=_bool_query(request, "metadata_only")))


async def object_request_input_get(request: Request) -> Response:
    engine, _, plan = await plan_of(request)
    row, _ = engine.pipeline_requests.operator_request(plan, request.path_params["request_id"])
    return _file(request, row.data, "input", row.id)


async def object_request_output_get(request: Request) -> Response:
    engine, _, plan = await plan_of(request)
    row, _ = engine.pipeline_requests.operator_request(plan, request.path_params["request_id"])
    return _file(request, row.result, "output", row.id)


for base, scope in ((PIPELINE, "pipeline"), (VERSION, "pipeline_version")):
    router.add_api_route(base + "/requests", create, methods=["POST"], name=f"{scope}_requests_create")
    router.add_api_route(base + "/requests/stream", stream, methods=["POST"], name=f"{scope}_requests_stream")
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
router.add_api_route(VERSION + "/object-requests/{request_id}", object_request_get, methods=["GET"],
                     name="pipeline_version_object_requests_get")
router.add_api_route(VERSION + "/object-requests/{request_id}/input", object_request_input_get, methods=["GET"],
                     name="pipeline_version_object_requests_input_get")
router.add_api_route(VERSION + "/object-requests/{request_id}/output", object_request_output_get, methods=["GET"],
                     name="pipeline_version_object_requests_output_get")
