"""UbiOps pipeline requests: the direct and streamed request of a pipeline, its stored-request routes
(`stored_requests`, as a deployment has them), and the operator requests of a version (`object-requests`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from modelbay.core.errors import ModelbayError
from modelbay.core.pipeline_requests import (
    BATCH_TIMEOUT_DEFAULT_S,
    BATCH_TIMEOUT_MAX_S,
    DIRECT_TIMEOUT_DEFAULT_S,
    DIRECT_TIMEOUT_MAX_S,
    PipelineRecord,
    check_input,
)
from modelbay.core.stored_requests import check_timeout
from modelbay.dialects.common.errors import status_of
from modelbay.dialects.ubiops import pipeline_schemas as shapes
from modelbay.dialects.ubiops import request_schemas, streaming
from modelbay.dialects.ubiops.errors import UbiopsRoute
from modelbay.dialects.ubiops.inputs import bool_query, int_query, request_data
from modelbay.dialects.ubiops.schemas import respond
from modelbay.dialects.ubiops.stored_requests import (
    ORIGIN,
    VERSION,
    Named,
    StoredRequestRoutes,
    batch_items,
    payload_file,
)
from modelbay.engine import Engine
from modelbay.store.tables import PipelineRequestRow, ProjectRow


def _timeout(request: Request, default: int, maximum: int) -> int:
    value = int_query(request, "timeout")
    if value is None:
        value = int_query(request, "pipeline_timeout")  # the deprecated name
    return check_timeout(value, default, maximum)


class PipelineRequestRoutes(StoredRequestRoutes):
    noun = "pipeline"

    def resolve(self, engine: Engine, project: ProjectRow, name: str, version: str | None) -> Named:
        plan = engine.pipelines.plan(project, name, version)
        return Named(engine, project, engine.pipeline_requests, plan, plan.pipeline_name, plan.version_name,
                     plan.io.input_type)

    async def create_batch(self, request: Request, named: Named) -> list[PipelineRecord]:
        timeout = _timeout(request, BATCH_TIMEOUT_DEFAULT_S, BATCH_TIMEOUT_MAX_S)
        items = await batch_items(request, named)
        return await named.engine.pipeline_requests.create_batch(named.project, named.version, items,
                                                                 timeout=timeout, origin=ORIGIN)

    def extras(self, named: Named, row: PipelineRequestRow) -> dict[str, Any]:
        return request_schemas.pipeline_extras(row, named.engine.pipeline_requests.steps_of(row))

    def add_routes_at(self, router: APIRouter, requests: str, scope: str) -> None:
        """The direct and the streamed request first, then the stored-request routes."""
        router.add_api_route(requests, create, methods=["POST"], name=f"{scope}_requests_create")
        router.add_api_route(requests + "/stream", stream, methods=["POST"], name=f"{scope}_requests_stream")
        super().add_routes_at(router, requests, scope)


ROUTES = PipelineRequestRoutes()


async def create(request: Request) -> Response:
    named = await ROUTES.named(request)
    timeout = _timeout(request, DIRECT_TIMEOUT_DEFAULT_S, DIRECT_TIMEOUT_MAX_S)
    data = await request_data(request, named.input_type, named.engine.settings.max_request_bytes)
    record = await named.engine.pipeline_requests.direct(named.project, named.version, data, timeout=timeout,
                                                         origin=ORIGIN)
    return respond(request_schemas.pipeline_direct(record))


async def stream(request: Request) -> Response:
    """The SDK's `stream_pipeline_request` (SDK-CONTRACTS 1.7): the partials its deployment steps send,
    each as `event: update`, then the pipeline request's response as `event: result`; framed, and
    ended on a disconnect, as a deployment's stream is (`streaming.py`)."""
    try:
        named = await ROUTES.named(request)
        plan = named.version
        timeout = _timeout(request, DIRECT_TIMEOUT_DEFAULT_S, DIRECT_TIMEOUT_MAX_S)
        data = await request_data(request, named.input_type, named.engine.settings.max_request_bytes)
        check_input(plan, data)
    except ModelbayError as exc:
        return streaming.error_response(status_of(exc), exc.message)
    partials = streaming.Partials()
    return streaming.event_stream(
        named.engine.pipeline_requests.direct(named.project, plan, data, timeout=timeout, origin=ORIGIN,
                                              on_update=partials.put),
        partials, request_schemas.pipeline_direct,
    )


# --- operator requests -------------------------------------------------------------------------


async def object_request_get(request: Request) -> Response:
    named = await ROUTES.named(request)
    row, parent = named.engine.pipeline_requests.operator_request(named.version, request.path_params["request_id"])
    return respond(shapes.operator_request(row, parent, named.name, named.version_name,
                                           metadata_only=bool_query(request, "metadata_only")))


async def object_request_input_get(request: Request) -> Response:
    named = await ROUTES.named(request)
    row, _ = named.engine.pipeline_requests.operator_request(named.version, request.path_params["request_id"])
    return payload_file(row.data, "input", row.id)


async def object_request_output_get(request: Request) -> Response:
    named = await ROUTES.named(request)
    row, _ = named.engine.pipeline_requests.operator_request(named.version, request.path_params["request_id"])
    return payload_file(row.result, "output", row.id)


router = APIRouter(route_class=UbiopsRoute, tags=["UbiOps · pipeline requests"])
ROUTES.add_routes(router)
OBJECT_REQUESTS = ROUTES.path + VERSION + "/object-requests/{request_id}"
router.add_api_route(OBJECT_REQUESTS, object_request_get, methods=["GET"], name="pipeline_version_object_requests_get")
router.add_api_route(OBJECT_REQUESTS + "/input", object_request_input_get, methods=["GET"],
                     name="pipeline_version_object_requests_input_get")
router.add_api_route(OBJECT_REQUESTS + "/output", object_request_output_get, methods=["GET"],
                     name="pipeline_version_object_requests_output_get")
