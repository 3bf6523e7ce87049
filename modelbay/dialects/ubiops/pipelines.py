"""UbiOps pipelines and pipeline versions (the v4 shape: objects and attachments in one call)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from modelbay.dialects.ubiops import pipeline_schemas as shapes
from modelbay.dialects.ubiops.deps import EngineDep, JsonObject, ProjectDep
from modelbay.dialects.ubiops.errors import UbiopsRoute
from modelbay.dialects.ubiops.schemas import respond

router = APIRouter(route_class=UbiopsRoute, tags=["UbiOps · pipelines"])

PIPELINES = "/projects/{project_name}/pipelines"
PIPELINE = PIPELINES + "/{pipeline_name}"


@router.post(PIPELINES, status_code=201)
def pipelines_create(engine: EngineDep, project: ProjectDep, body: JsonObject) -> Response:
    row = engine.pipelines.create(project, body)
    return respond(shapes.pipeline(row, project.name), 201)


@router.get(PIPELINES)
def pipelines_list(engine: EngineDep, project: ProjectDep) -> Response:
    rows = engine.pipelines.list_pipelines(project)
    return respond([shapes.pipeline(row, project.name, engine.pipelines.default_version_name(row)) for row in rows])


@router.get(PIPELINE)
def pipelines_get(engine: EngineDep, project: ProjectDep, pipeline_name: str) -> Response:
    row = engine.pipelines.get(project, pipeline_name)
    return respond(shapes.pipeline(row, project.name, engine.pipelines.default_version_name(row)))


@router.patch(PIPELINE)
def pipelines_update(engine: EngineDep, project: ProjectDep, pipeline_name: str, body: JsonObject) -> Response:
    row = engine.pipelines.update(project, pipeline_name, body)
    return respond(shapes.pipeline(row, project.name, engine.pipelines.default_version_name(row)))


@router.delete(PIPELINE, status_code=204)
async def pipelines_delete(engine: EngineDep, project: ProjectDep, pipeline_name: str) -> Response:
    request_ids = engine.pipelines.delete(project, pipeline_name)
    await engine.pipeline_requests.delete_by_id(request_ids)
    return Response(status_code=204)


# --- versions --------------------------------------------------------------------------------

VERSION_KEYS = ("version", "description", "labels", "request_retention_mode", "request_retention_time", "objects",
                "attachments")


def _fields(body: dict[str, Any]) -> dict[str, Any]:
    return {key: body[key] for key in VERSION_KEYS if key in body}


@router.post(PIPELINE + "/versions", status_code=201)
def pipeline_versions_create(engine: EngineDep, project: ProjectDep, pipeline_name: str, body: JsonObject) -> Response:
    row = engine.pipelines.create_version(project, pipeline_name, _fields(body))
    pipeline = engine.pipelines.get(project, pipeline_name)
    return respond(shapes.pipeline_version(row, pipeline), 201)


@router.get(PIPELINE + "/versions")
def pipeline_versions_list(engine: EngineDep, project: ProjectDep, pipeline_name: str) -> Response:
    pipeline, rows = engine.pipelines.list_versions(project, pipeline_name)
    return respond([shapes.pipeline_version(row, pipeline) for row in rows])


@router.get(PIPELINE + "/versions/{version}")
def pipeline_versions_get(engine: EngineDep, project: ProjectDep, pipeline_name: str, version: str) -> Response:
    pipeline, row = engine.pipelines.get_version(project, pipeline_name, version)
    return respond(shapes.pipeline_version(row, pipeline))


@router.patch(PIPELINE + "/versions/{version}")
def pipeline_versions_update(engine: EngineDep, project: ProjectDep, pipeline_name: str, version: str,
                             body: JsonObject) -> Response:
    row = engine.pipelines.update_version(project, pipeline_name, version, _fields(body))
    pipeline = engine.pipelines.get(project, pipeline_name)
    return respond(shapes.pipeline_version(row, pipeline))


@router.delete(PIPELINE + "/versions/{version}", status_code=204)
async def pipeline_versions_delete(engine: EngineDep, project: ProjectDep, pipeline_name: str,
                                   version: str) -> Response:
    request_ids = engine.pipelines.delete_version(project, pipeline_name, version)
    await engine.pipeline_requests.delete_by_id(request_ids)
    return Response(status_code=204)
