"""Stored requests over HTTP: one route table for deployment requests and pipeline requests.

Creating a batch, collecting, getting, listing, updating (cancelling), cancelling many, deleting one
or many, and downloading a request's input or output are the same routes under
`/projects/{project_name}/deployments/{deployment_name}[/versions/{version}]/requests` and
`/projects/{project_name}/pipelines/{pipeline_name}[/versions/{version}]/requests`. A subclass of
`StoredRequestRoutes` says what differs for its noun: what a path names and the core service that
serves it, how a batch is created, and the fields the noun adds to a request's detail.

These routes read the HTTP request themselves (`inputs`) rather than through FastAPI's dependency solver."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from modelbay.core.deployments import Target
from modelbay.core.errors import InvalidInput, NotFound
from modelbay.core.pipeline_requests import PipelineRecord, PipelineRequests
from modelbay.core.pipelines import Plan
from modelbay.core.requests import RequestRecord, Requests
from modelbay.core.stored_requests import check_ids
from modelbay.dialects.ubiops import request_schemas
from modelbay.dialects.ubiops.deps import caller_of
from modelbay.dialects.ubiops.inputs import bool_query, json_or_none, list_filters, request_data
from modelbay.dialects.ubiops.request_schemas import StoredRow
from modelbay.dialects.ubiops.schemas import respond
from modelbay.engine import Engine
from modelbay.store.tables import ProjectRow

#: The origin every request made through this dialect records.
ORIGIN = {"created_by": "ubiops"}

#: A path under a deployment or a pipeline that names one of its versions rather than the default one.
VERSION = "/versions/{version}"


@dataclass(frozen=True, slots=True)
class Named:
    """What the path of a stored-request route names: a version of a deployment or of a pipeline."""

    engine: Engine
    project: ProjectRow
    requests: Requests | PipelineRequests  # the core service of the noun's requests
    version: Target | Plan  # what every call of `requests` takes first
    name: str  # the deployment's or the pipeline's
    version_name: str
    input_type: str


class StoredRequestRoutes(ABC):
    """The stored-request routes of one noun."""

    #: `deployment` or `pipeline`: the path's segment, the key of the name in every answer, the routes' names.
    noun: str

    @property
    def path(self) -> str:
        """The path of the noun, e.g. `/projects/{project_name}/deployments/{deployment_name}`."""
        return f"/projects/{{project_name}}/{self.noun}s/{{{self.noun}_name}}"

    async def named(self, request: Request) -> Named:
        """What the request's path names (the default version when the path names none)."""
        engine: Engine = request.app.state.engine
        path = request.path_params
        project = engine.projects.get(await caller_of(request), path["project_name"])
        return self.resolve(engine, project, path[f"{self.noun}_name"], path.get("version"))

    @abstractmethod
    def resolve(self, engine: Engine, project: ProjectRow, name: str, version: str | None) -> Named:
        """The version `version` (the default one when `None`) of the noun's `name` in `project`."""

    @abstractmethod
    async def create_batch(self, request: Request, named: Named) -> list[RequestRecord] | list[PipelineRecord]:
        """Read the query and the body (`batch_items`) and store them as batch requests."""

    @abstractmethod
    def extras(self, named: Named, row: Any) -> dict[str, Any]:
        """The fields the noun adds to the detail of a stored request."""

    # --- the routes ----------------------------------------------------------------------------

    def add_routes(self, router: APIRouter) -> None:
        """The routes under the noun (its default version) and under one of its versions, in that order."""
        for base, scope in ((self.path, self.noun), (self.path + VERSION, f"{self.noun}_version")):
            self.add_routes_at(router, base + "/requests", scope)

    def add_routes_at(self, router: APIRouter, requests: str, scope: str) -> None:
        """The routes under `requests` (a path ending in `/requests`), named after `scope`."""
        router.add_api_route(requests + "/batch", self.batch_create, methods=["POST"], status_code=201,
                             name=f"batch_{scope}_requests_create")
        router.add_api_route(requests + "/collect", self.collect, methods=["POST"], name=f"{scope}_requests_batch_get")
        router.add_api_route(requests + "/cancel", self.batch_cancel, methods=["POST"],
                             name=f"{scope}_requests_batch_cancel")
        router.add_api_route(requests + "/delete", self.batch_delete, methods=["POST"],
                             name=f"{scope}_requests_batch_delete")
        router.add_api_route(requests, self.list_requests, methods=["GET"], name=f"{scope}_requests_list")
        router.add_api_route(requests + "/{request_id}", self.get, methods=["GET"], name=f"{scope}_requests_get")
        router.add_api_route(requests + "/{request_id}", self.update, methods=["PATCH"],
                             name=f"{scope}_requests_update")
        router.add_api_route(requests + "/{request_id}", self.delete_one, methods=["DELETE"], status_code=204,
                             name=f"{scope}_requests_delete")
        router.add_api_route(requests + "/{request_id}/input", self.input_get, methods=["GET"],
                             name=f"{scope}_requests_input_get")
        router.add_api_route(requests + "/{request_id}/output", self.output_get, methods=["GET"],
                             name=f"{scope}_requests_output_get")

    def detail(self, named: Named, row: StoredRow, metadata_only: bool = False) -> dict[str, Any]:
        return request_schemas.detail(self.noun, named.name, named.version_name, row, self.extras(named, row),
                                      metadata_only)

    async def batch_create(self, request: Request) -> Response:
        named = await self.named(request)
        records = await self.create_batch(request, named)
        return respond([request_schemas.batch_created(self.noun, named.name, record) for record in records], 201)

    async def collect(self, request: Request) -> Response:
        named = await self.named(request)
        rows = named.requests.collect(named.version, check_ids(await json_or_none(request)))
        return respond([self.detail(named, row) for row in rows])

    async def batch_cancel(self, request: Request) -> Response:
        named = await self.named(request)
        body = await json_or_none(request)
        ids = check_ids([] if body is None else body)
        count = await named.requests.cancel_many(named.version, ids, request.query_params.get("status"))
        return respond({"success": True, "cancelled": count})

    async def batch_delete(self, request: Request) -> Response:
        named = await self.named(request)
        ids = check_ids(await json_or_none(request))
        if not ids:
            raise InvalidInput("Give at least one request id to delete")
        await named.requests.delete(named.version, ids)
        return respond({"success": True})

    async def get(self, request: Request) -> Response:
        named = await self.named(request)
        row = named.requests.get(named.version, request.path_params["request_id"])
        return respond(self.detail(named, row, metadata_only=bool_query(request, "metadata_only")))

    async def list_requests(self, request: Request) -> Response:
        named = await self.named(request)
        rows = named.requests.list(named.version, **list_filters(request))
        return respond([request_schemas.list_item(self.noun, named.name, named.version_name, row) for row in rows])

    async def update(self, request: Request) -> Response:
        named = await self.named(request)
        body = await json_or_none(request)
        if not isinstance(body, dict) or body.get("status") != "cancelled":
            raise InvalidInput("The only update allowed is {\"status\": \"cancelled\"}")
        request_id = request.path_params["request_id"]
        await named.requests.cancel(named.version, request_id)
        row = named.requests.get(named.version, request_id)
        return respond(self.detail(named, row, metadata_only=True))

    async def delete_one(self, request: Request) -> Response:
        named = await self.named(request)
        await named.requests.delete(named.version, [request.path_params["request_id"]])
        return Response(status_code=204)

    async def input_get(self, request: Request) -> Response:
        named = await self.named(request)
        row = named.requests.get(named.version, request.path_params["request_id"])
        return payload_file(row.data, "input", row.id)

    async def output_get(self, request: Request) -> Response:
        named = await self.named(request)
        row = named.requests.get(named.version, request.path_params["request_id"])
        return payload_file(row.result, "output", row.id)


async def batch_items(request: Request, named: Named) -> list[Any]:
    """The body of a batch create as its items: a JSON list, or a single item."""
    body = await request_data(request, named.input_type, named.engine.settings.max_request_bytes)
    return body if isinstance(body, list) else [body]


def payload_file(content: bytes | None, which: str, request_id: str) -> Response:
    """A request's stored input or output (`which`) as a download: text as text, anything else as JSON."""
    if content is None:
        raise NotFound(f"{which} of request", request_id)
    value = orjson.loads(content)
    if isinstance(value, str):
        body, kind, ext = value.encode(), "text/plain", "txt"
    else:
        body, kind, ext = content, "application/json", "json"
    headers = {"Content-Disposition": f'attachment; filename="{request_id}-{which}.{ext}"'}
    return Response(body, media_type=kind, headers=headers)
