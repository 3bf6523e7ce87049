"""Datature datasets: `/projects/{pid}/batch/datasets`, and the signed URL their file is PUT to."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from modelbay.core.datasets import MAX_SIZE_BYTES
from modelbay.core.errors import InvalidInput
from modelbay.core.projects import Caller
from modelbay.dialects.common.body import body_chunks
from modelbay.dialects.datature import ids, schemas
from modelbay.dialects.datature.deps import EngineDep, JsonObject, ProjectDep
from modelbay.dialects.datature.errors import DatatureRoute
from modelbay.store.tables import DatasetRow, ProjectRow

PREFIX = "dataset"
SOURCE_KIND = "UploadedNewlineDelimitedJsonFile"
UPLOAD_METHOD = "PUT"

OVERVIEW = {
    "waiting": "Waiting",
    "uploaded": "Uploaded",
    "failed_upload": "FailedUpload",
    "failed_processing": "FailedProcessing",
}

router = APIRouter(route_class=DatatureRoute, prefix="/projects/{project_id}/batch/datasets",
                   tags=["Datature · datasets"])


def upload_path(project: ProjectRow, row: DatasetRow) -> str:
    return f"/projects/{ids.project_id(project.handle)}/batch/datasets/{schemas.external(PREFIX, row.id)}/upload"


def dataset(row: DatasetRow, project: ProjectRow, request: Request) -> dict[str, Any]:
    """The Dataset model; `uploadUrl` is on every answer (the SDK requires it)."""
    signer = request.app.state.engine.url_signer
    path = upload_path(project, row)
    expires = schemas.ms(row.upload_expires_at)
    assert expires is not None
    base = str(request.base_url).rstrip("/")
    return {
        "id": schemas.external(PREFIX, row.id),
        "object": "dataset",
        "name": row.name,
        "projectId": ids.project_id(project.handle),
        "expiryTime": schemas.ms(row.expires_at),
        "status": {
            "overview": OVERVIEW.get(row.status, row.status),
            "message": row.message,
            "updateTime": schemas.ms(row.updated_at),
            "itemCount": row.item_count,
            "source": {
                "kind": SOURCE_KIND,
                "uploadUrl": {
                    "method": UPLOAD_METHOD,
                    "url": f"{base}{path}?{signer.query(UPLOAD_METHOD, path, expires)}",
                    "headers": {"Content-Type": "application/x-ndjson"},
                    "expiresAtTime": expires,
                },
            },
        },
        "createDate": schemas.ms(row.created_at),
        "updateDate": schemas.ms(row.updated_at),
    }


@router.post("")
def create(engine: EngineDep, project: ProjectDep, body: JsonObject, request: Request) -> Response:
    source = schemas.obj(schemas.obj(body.get("spec"), "spec").get("source"), "spec.source")
    if source.get("kind") != SOURCE_KIND:
        raise InvalidInput(f"spec.source.kind must be '{SOURCE_KIND}'")
    row = engine.datasets.create(project.id, body.get("name"), source.get("sizeBytes"), source.get("crc32c"))
    return schemas.respond(dataset(row, project, request))


@router.get("")
def list_(engine: EngineDep, project: ProjectDep, request: Request, page: str | None = None,
          limit: str | None = None) -> Response:
    offset, size = schemas.page_offset(page), schemas.page_limit(limit)
    rows, more = engine.datasets.list(project.id, offset, size)
    return schemas.respond(schemas.paginated([dataset(r, project, request) for r in rows], offset, size, more))


@router.get("/{dataset_id}")
def get(engine: EngineDep, project: ProjectDep, dataset_id: str, request: Request) -> Response:
    row = engine.datasets.get(project.id, schemas.internal(PREFIX, "dataset", dataset_id))
    return schemas.respond(dataset(row, project, request))


@router.delete("/{dataset_id}")
def delete(engine: EngineDep, project: ProjectDep, dataset_id: str) -> Response:
    engine.datasets.delete(project.id, schemas.internal(PREFIX, "dataset", dataset_id))
    return schemas.respond(schemas.deleted(dataset_id))


# No Secret-Key here: the SDK PUTs the file on a session of its own, so the URL authenticates itself.
@router.put("/{dataset_id}/upload")
async def upload(project_id: str, dataset_id: str, request: Request, expires: str | None = None,
                 signature: str | None = None) -> Response:
    engine = request.app.state.engine
    engine.url_signer.check(UPLOAD_METHOD, request.url.path, expires, signature)
    project = await run_in_threadpool(ids.find_project, engine.projects, Caller(project_id=None), project_id)
    # The file streams to disk, checked against the size its dataset declared (a `FailedUpload`
    # past it); the hard maximum is refused before any of it is read.
    row = await engine.datasets.receive(project.id, schemas.internal(PREFIX, "dataset", dataset_id),
                                        body_chunks(request, MAX_SIZE_BYTES))
    return schemas.respond({"id": dataset_id, "itemCount": row.item_count})
