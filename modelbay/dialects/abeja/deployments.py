"""ABEJA deployments and code versions, and the signed URLs that take and give a version's archive."""

from __future__ import annotations

import contextlib
import re
import tempfile
import time
from typing import Any, BinaryIO, cast

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from modelbay.core.deployments import Target
from modelbay.core.errors import InvalidInput, NotFound
from modelbay.core.projects import Caller
from modelbay.core.runs import check_environment
from modelbay.dialects.abeja import ids, schemas
from modelbay.dialects.abeja.deps import (
    DeploymentDep,
    EngineDep,
    JsonObject,
    OrganizationDep,
    core_deployment_id,
    core_version_id,
    find_deployment,
    version_row,
)
from modelbay.dialects.abeja.errors import AbejaRoute
from modelbay.dialects.common.body import body_chunks
from modelbay.store.tables import DeploymentRow, ProjectRow, VersionRow

router = APIRouter(route_class=AbejaRoute, tags=["ABEJA · deployments"])

D = "/organizations/{organization_id}/deployments"
V = D + "/{deployment_id}/versions"

HANDLER_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def ok(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


#: How long a signed upload or download URL stays valid.
URL_LIFETIME_MS = 3600 * 1000


def archive_url(engine: Any, request: Request, method: str, organization: ProjectRow, deployment: DeploymentRow,
                version_id: str) -> str:
    """The signed URL through which `method` (PUT or GET) takes or gives the version's archive."""
    path = f"/organizations/{ids.organization_id(organization.number)}/deployments/{ids.deployment_id(deployment.id)}" \
           f"/versions/{version_id}/archive"
    expires_ms = int(time.time() * 1000) + URL_LIFETIME_MS
    return f"{str(request.base_url).rstrip('/')}{path}?{engine.url_signer.query(method, path, expires_ms)}"


def find_version(engine: Any, project: ProjectRow, deployment: DeploymentRow, version_id: str) -> VersionRow:
    """The deployment's version with this `ver-…` id; raises `NotFound`."""
    row = version_row(engine, deployment.id, version_id)
    if row is None:
        raise NotFound("version", version_id)
    return row  # type: ignore[no-any-return]


def version_target(engine: Any, project: ProjectRow, deployment_id: str, body: dict[str, Any]) -> Target:
    """The target of the version a run or service body names by its `version_id`, in the
    deployment with this 13-digit id: from what is cached, the store read only for what is not
    (a run's create is the hot path). Raises `NotFound` for an unknown deployment or version,
    `InvalidInput` without a `version_id`."""
    core_id = core_deployment_id(engine, project, deployment_id)
    version_id = body.get("version_id")
    target: Target | None = None
    if isinstance(version_id, str) and (version_core_id := core_version_id(engine, core_id, version_id)):
        with contextlib.suppress(NotFound):
            target = engine.deployments.target_of_version(version_core_id)
    if target is None:
        find_deployment(engine, project, deployment_id)  # a deployment gone since its id was learnt: that one
        if not isinstance(version_id, str):
            raise InvalidInput("version_id is required")
        raise NotFound("version", version_id)
    return target


def build_error(engine: Any, project: ProjectRow, deployment: DeploymentRow, row: VersionRow) -> str | None:
    if row.status != "failed":
        return None
    revisions = engine.revisions.list(project, deployment.name, row.name)
    return revisions[0].error_message if revisions else None


# --- deployments ---------------------------------------------------------------------------


@router.post(D)
async def create_deployment(engine: EngineDep, organization: OrganizationDep, body: JsonObject) -> Response:
    if not isinstance(body.get("name"), str):
        raise InvalidInput("name is required")
    # ABEJA code takes raw bodies: the deployment's input and output are plain.
    row = engine.deployments.create(
        organization,
        {"name": body["name"], "description": body.get("description"), "input_type": "plain",
         "output_type": "plain"},
    )
    return ok(schemas.deployment(row))


@router.get(D)
async def list_deployments(engine: EngineDep, organization: OrganizationDep) -> Response:
    rows = engine.deployments.list_deployments(organization)
    return ok({"entries": [schemas.deployment(row) for row in rows]})


@router.get(D + "/{deployment_id}")
async def get_deployment(deployment: DeploymentDep) -> Response:
    return ok(schemas.deployment(deployment))


@router.patch(D + "/{deployment_id}")
async def patch_deployment(
    engine: EngineDep, organization: OrganizationDep, deployment: DeploymentDep, body: JsonObject
) -> Response:
    fields = {"name": body.get("name"), "description": body.get("description")}
    row = engine.deployments.update(organization, deployment.name, fields)
    return ok(schemas.deployment(row))


@router.delete(D + "/{deployment_id}")
async def delete_deployment(engine: EngineDep, organization: OrganizationDep, deployment: DeploymentDep) -> Response:
    engine.deployments.delete(organization, deployment.name)
    return ok({"message": f"{ids.deployment_id(deployment.id)} deleted"})


# --- code versions -------------------------------------------------------------------------


@router.post(V)
async def create_version(
    request: Request, engine: EngineDep, organization: OrganizationDep, deployment: DeploymentDep, body: JsonObject
) -> Response:
    handler = body.get("handler")
    if not isinstance(handler, str) or not HANDLER_PATTERN.match(handler):
        raise InvalidInput("handler must be of the form 'module:function', e.g. 'main:handler'")
    if deployment.input_type != "plain" or deployment.output_type != "plain":
        raise InvalidInput("handler code needs a deployment with plain input and output")
    image = body.get("image")
    if image is not None and not isinstance(image, str):
        raise InvalidInput("image must be a string")
    user_parameters = check_environment(body.get("user_parameters"), "user_parameters")
    row = engine.deployments.create_version(
        organization,
        deployment.name,
        {"name": body.get("version"), "handler": handler, "environment_variables": user_parameters,
         "labels": {"image": image} if image else {}},
    )
    answer = schemas.version(deployment, row)
    answer["upload_url"] = archive_url(engine, request, "PUT", organization, deployment, ids.version_id(row.id))
    return ok(answer)


@router.get(V)
async def list_versions(engine: EngineDep, organization: OrganizationDep, deployment: DeploymentDep) -> Response:
    rows = engine.deployments.list_versions(organization, deployment.name)
    return ok({"entries": [schemas.version(deployment, row) for row in rows]})


@router.get(V + "/{version_id}")
async def get_version(
    engine: EngineDep, organization: OrganizationDep, deployment: DeploymentDep, version_id: str
) -> Response:
    row = find_version(engine, organization, deployment, version_id)
    return ok(schemas.version(deployment, row, build_error(engine, organization, deployment, row)))


@router.delete(V + "/{version_id}")
async def delete_version(
    engine: EngineDep, organization: OrganizationDep, deployment: DeploymentDep, version_id: str
) -> Response:
    row = find_version(engine, organization, deployment, version_id)
    engine.deployments.delete_version(organization, deployment.name, row.name)
    return ok({"message": f"{version_id} deleted"})


@router.get(V + "/{version_id}/download")
async def download_version(
    request: Request, engine: EngineDep, organization: OrganizationDep, deployment: DeploymentDep, version_id: str
) -> Response:
    row = find_version(engine, organization, deployment, version_id)
    if row.latest_revision_id is None:
        raise NotFound("archive of version", version_id)
    return ok({"download_uri": archive_url(engine, request, "GET", organization, deployment, version_id)})


# --- the signed archive URL: no auth header, the signature is the credential -------------------


def _signed_target(
    engine: Any, method: str, request: Request, organization_id: str, deployment_id: str, version_id: str
) -> tuple[ProjectRow, DeploymentRow, VersionRow]:
    engine.url_signer.check(
        method, request.url.path, request.query_params.get("expires"), request.query_params.get("signature")
    )
    project = ids.find_organization(engine.projects, Caller(project_id=None), organization_id)
    deployment = find_deployment(engine, project, deployment_id)
    return project, deployment, find_version(engine, project, deployment, version_id)


@router.put(V + "/{version_id}/archive")
async def upload_archive(
    request: Request, engine: EngineDep, organization_id: str, deployment_id: str, version_id: str
) -> Response:
    project, deployment, row = _signed_target(engine, "PUT", request, organization_id, deployment_id, version_id)
    with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:
        async for chunk in body_chunks(request, engine.settings.max_request_bytes):
            spool.write(chunk)
        if spool.tell() == 0:
            raise InvalidInput("The archive is empty")
        spool.seek(0)
        caller = Caller(project_id=project.id)
        archive = cast(BinaryIO, spool)  # a spooled file is a binary file
        await run_in_threadpool(engine.revisions.upload, caller, project, deployment.name, row.name, archive)
    return ok({"message": f"{version_id} uploaded", "version_id": version_id, "status": "BUILDING"})


@router.get(V + "/{version_id}/archive")
async def download_archive(
    request: Request, engine: EngineDep, organization_id: str, deployment_id: str, version_id: str
) -> Response:
    project, deployment, row = _signed_target(engine, "GET", request, organization_id, deployment_id, version_id)
    revisions = engine.revisions.list(project, deployment.name, row.name)
    if not revisions:
        raise NotFound("archive of version", version_id)
    archive = await run_in_threadpool(engine.blobs.local_path, revisions[0].archive_key)
    return FileResponse(archive, media_type="application/gzip",
                        filename=f"{version_id}.tar.gz")
