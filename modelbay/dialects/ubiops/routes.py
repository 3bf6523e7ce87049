"""The UbiOps v2.1 API: translation between its HTTP shapes and core calls, nothing more."""

from __future__ import annotations

import asyncio
import zipfile
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response

from modelbay.core import environments
from modelbay.core.errors import Forbidden, InvalidInput, NotFound
from modelbay.dialects.common.body import multipart_file
from modelbay.dialects.ubiops import environment_variables, schemas
from modelbay.dialects.ubiops.deps import CallerDep, EngineDep, JsonObject, ProjectDep
from modelbay.dialects.ubiops.errors import UbiopsRoute

PREFIXES = ("/v2.1", "/v2")

#: How long an upload answer waits for its build: a quick build is then done before the
#: client's first poll (`wait_for_deployment_version` polls every 4 s).
UPLOAD_WAITS_FOR_BUILD_S = 2.0

router = APIRouter(route_class=UbiopsRoute, tags=["UbiOps · projects and deployments"])
router.include_router(environment_variables.router)


# --- status and projects ---------------------------------------------------------------------


@router.get("/status")
async def service_status() -> Response:
    return schemas.respond({"status": "ok"})


@router.get("/user")
def user_get(engine: EngineDep, caller: CallerDep) -> Response:
    """Who the token is (the CLI's `signin` and `status` show its email): a project's token is that
    project's user; the admin token is the admin."""
    projects = [] if caller.is_admin else engine.projects.list(caller)
    return schemas.respond(schemas.user(projects[0] if projects else None))


@router.get("/projects")
def projects_list(engine: EngineDep, caller: CallerDep) -> Response:
    return schemas.respond([schemas.project(row) for row in engine.projects.list(caller)])


@router.post("/projects", status_code=201)
def projects_create(engine: EngineDep, caller: CallerDep, body: JsonObject) -> Response:
    if not caller.is_admin:
        raise Forbidden("Only the admin token may create projects")
    name = body.get("name")
    if not isinstance(name, str):
        raise InvalidInput("name is required")
    engine.projects.create(name)
    return schemas.respond(schemas.project(engine.projects.get(caller, name)), 201)


@router.get("/projects/{project_name}")
def projects_get(project: ProjectDep) -> Response:
    return schemas.respond(schemas.project(project))


# --- environments (built in) -----------------------------------------------------------------


def _environment(name: str) -> str:
    if name not in environments.BUILT_IN:
        raise NotFound("environment", name)
    return name


@router.get("/projects/{project_name}/environments")
def environments_list(project: ProjectDep) -> Response:
    return schemas.respond([schemas.environment(name) for name in environments.BUILT_IN])


@router.get("/projects/{project_name}/environments/{environment_name}")
def environments_get(project: ProjectDep, environment_name: str) -> Response:
    return schemas.respond(schemas.environment(_environment(environment_name)))


@router.get("/projects/{project_name}/environments/{environment_name}/tags")
def environment_tags_list(project: ProjectDep, environment_name: str) -> Response:
    return schemas.respond([schemas.environment_tag(_environment(environment_name))])


@router.get("/projects/{project_name}/environments/{environment_name}/tags/{tag}")
def environment_tags_get(project: ProjectDep, environment_name: str, tag: str) -> Response:
    if tag != "latest":
        raise NotFound("environment tag", tag)
    return schemas.respond(schemas.environment_tag(_environment(environment_name), tag))


# --- deployments -----------------------------------------------------------------------------


@router.post("/projects/{project_name}/deployments", status_code=201)
def deployments_create(engine: EngineDep, project: ProjectDep, body: JsonObject) -> Response:
    row = engine.deployments.create(project, body)
    return schemas.respond(schemas.deployment(row, project.name), 201)


@router.get("/projects/{project_name}/deployments")
def deployments_list(engine: EngineDep, project: ProjectDep) -> Response:
    return schemas.respond([schemas.deployment(row, project.name) for row in engine.deployments.list_deployments(project)])


@router.get("/projects/{project_name}/deployments/{deployment_name}")
def deployments_get(engine: EngineDep, project: ProjectDep, deployment_name: str) -> Response:
    row = engine.deployments.get(project, deployment_name)
    return schemas.respond(schemas.deployment(row, project.name, engine.deployments.default_version_name(row)))


@router.patch("/projects/{project_name}/deployments/{deployment_name}")
def deployments_update(engine: EngineDep, project: ProjectDep, deployment_name: str, body: JsonObject) -> Response:
    row = engine.deployments.update(project, deployment_name, body)
    return schemas.respond(schemas.deployment(row, project.name, engine.deployments.default_version_name(row)))


@router.delete("/projects/{project_name}/deployments/{deployment_name}", status_code=204)
def deployments_delete(engine: EngineDep, project: ProjectDep, deployment_name: str) -> Response:
    engine.deployments.delete(project, deployment_name)
    return Response(status_code=204)


# --- versions --------------------------------------------------------------------------------

VERSION_KEYS = {
    "version": "name",
    "description": "description",
    "labels": "labels",
    "environment": "environment",
    "instance_type": "instance_type",
    "instance_type_group_name": "instance_type",
    "minimum_instances": "minimum_instances",
    "maximum_instances": "maximum_instances",
    "maximum_idle_time": "maximum_idle_time",
    "request_retention_mode": "request_retention_mode",
    "request_retention_time": "request_retention_time",
    "maximum_queue_size": "maximum_queue_size_batch",
    "maximum_queue_size_express": "maximum_queue_size_express",
    "maximum_queue_size_batch": "maximum_queue_size_batch",
    "instance_processes": "instance_processes",
}


def _version_fields(body: dict[str, Any]) -> dict[str, Any]:
    fields = {core: body[key] for key, core in VERSION_KEYS.items() if body.get(key) is not None}
    if body.get("environment_name") is not None:  # the newer name of `environment`
        fields.setdefault("environment", body["environment_name"])
    return fields


def _version_response(engine: EngineDep, project: ProjectDep, deployment_name: str, version: str) -> Response:
    deployment = engine.deployments.get(project, deployment_name)
    row = engine.deployments.get_version(project, deployment_name, version)
    active = (
        engine.revisions.get(project, deployment_name, version, row.active_revision_id)
        if row.active_revision_id
        else None
    )
    return schemas.respond(schemas.version(row, deployment, active))


@router.post("/projects/{project_name}/deployments/{deployment_name}/versions", status_code=201)
def deployment_versions_create(
    engine: EngineDep, project: ProjectDep, deployment_name: str, body: JsonObject
) -> Response:
    if not body.get("version"):
        raise InvalidInput("version is required")
    row = engine.deployments.create_version(project, deployment_name, _version_fields(body))
    deployment = engine.deployments.get(project, deployment_name)
    return schemas.respond(schemas.version(row, deployment), 201)


@router.get("/projects/{project_name}/deployments/{deployment_name}/versions")
def deployment_versions_list(engine: EngineDep, project: ProjectDep, deployment_name: str) -> Response:
    deployment = engine.deployments.get(project, deployment_name)
    rows = engine.deployments.list_versions(project, deployment_name)
    return schemas.respond([schemas.version(row, deployment) for row in rows])


@router.get("/projects/{project_name}/deployments/{deployment_name}/versions/{version}")
def deployment_versions_get(engine: EngineDep, project: ProjectDep, deployment_name: str, version: str) -> Response:
    return _version_response(engine, project, deployment_name, version)


@router.patch("/projects/{project_name}/deployments/{deployment_name}/versions/{version}")
def deployment_versions_update(
    engine: EngineDep, project: ProjectDep, deployment_name: str, version: str, body: JsonObject
) -> Response:
    row = engine.deployments.update_version(project, deployment_name, version, _version_fields(body))
    return _version_response(engine, project, deployment_name, row.name)


@router.delete("/projects/{project_name}/deployments/{deployment_name}/versions/{version}", status_code=204)
def deployment_versions_delete(engine: EngineDep, project: ProjectDep, deployment_name: str, version: str) -> Response:
    engine.deployments.delete_version(project, deployment_name, version)
    return Response(status_code=204)


# --- revisions -------------------------------------------------------------------------------

REVISIONS = "/projects/{project_name}/deployments/{deployment_name}/versions/{version}/revisions"

#: The body /docs shows for an upload: the route reads it itself, under the size limit.
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {"file": {"type": "string", "format": "binary"}},
}}}}}


@router.post(REVISIONS, openapi_extra=UPLOAD_BODY)
async def revisions_file_upload(
    engine: EngineDep,
    caller: CallerDep,
    project: ProjectDep,
    deployment_name: str,
    version: str,
    request: Request,
) -> Response:
    async with multipart_file(request, engine.settings.max_request_bytes, "file") as file:
        revision, build = await run_in_threadpool(
            engine.revisions.upload, caller, project, deployment_name, version, file.file
        )
    try:
        await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(build)), UPLOAD_WAITS_FOR_BUILD_S)
    except TimeoutError:
        pass  # a slow build goes on in the background
    return schemas.respond({"success": True, "revision": revision.id, "build": revision.id})


@router.get(REVISIONS)
def revisions_list(engine: EngineDep, project: ProjectDep, deployment_name: str, version: str) -> Response:
    rows = engine.revisions.list(project, deployment_name, version)
    return schemas.respond([schemas.revision(row, version) for row in rows])


@router.get(REVISIONS + "/{revision_id}/download")
def revisions_file_download(
    engine: EngineDep, project: ProjectDep, deployment_name: str, version: str, revision_id: str
) -> Response:
    """The archive as uploaded (`ubiops deployments download`, `ubiops revisions download`)."""
    path = engine.revisions.archive(project, deployment_name, version, revision_id)
    suffix = "zip" if zipfile.is_zipfile(path) else "tar.gz"
    return FileResponse(path, media_type="application/octet-stream",
                        filename=f"{deployment_name}-{version}-{revision_id}.{suffix}")


@router.get(REVISIONS + "/{revision_id}")
def revisions_get(
    engine: EngineDep, project: ProjectDep, deployment_name: str, version: str, revision_id: str
) -> Response:
    return schemas.respond(schemas.revision(engine.revisions.get(project, deployment_name, version, revision_id), version))
