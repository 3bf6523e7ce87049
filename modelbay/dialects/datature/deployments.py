"""Deployments as Datature lists them: every deployment of the project, made through any dialect.

A Datature deployment id is `deploy_<core id>`; a job using it runs on the default version.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from modelbay.core.errors import ModelbayError, NotFound
from modelbay.dialects.datature import ids, schemas
from modelbay.dialects.datature.deps import EngineDep, ProjectDep
from modelbay.dialects.datature.errors import DatatureRoute
from modelbay.engine import Engine
from modelbay.store.tables import DeploymentRow, ProjectRow

PREFIX = "deploy"

router = APIRouter(route_class=DatatureRoute, prefix="/projects/{project_id}/deployments",
                   tags=["Datature · deployments"])


def deployment(engine: Engine, row: DeploymentRow, project: ProjectRow) -> dict[str, Any]:
    served: dict[str, Any] = {}
    try:
        target = engine.deployments.serving_target(project, row.name, None)
        overview, message = "Available", f"Serving version {target.version_name}"
        # Its code, which a job may run on instances of its own (`artifacts.py`).
        served = {"artifactId": schemas.external("artifact", target.version_id), "versionTag": target.version_name}
    except ModelbayError as exc:
        overview, message = "Unavailable", exc.message
    return {
        **served,
        "id": schemas.external(PREFIX, row.id),
        "name": row.name,
        "projectId": ids.project_id(project.handle),
        "status": {"overview": overview, "message": message, "updateDate": schemas.ms(row.updated_at)},
        "createDate": schemas.ms(row.created_at),
        "updateDate": schemas.ms(row.updated_at),
    }


@router.get("")
def list_(engine: EngineDep, project: ProjectDep) -> Response:
    """A bare array, as the SDK expects."""
    return schemas.respond([deployment(engine, r, project) for r in engine.deployments.list_deployments(project)])


@router.get("/{deployment_id}")
def get(engine: EngineDep, project: ProjectDep, deployment_id: str) -> Response:
    core_id = schemas.internal(PREFIX, "deployment", deployment_id)
    for row in engine.deployments.list_deployments(project):
        if row.id == core_id:
            return schemas.respond(deployment(engine, row, project))
    raise NotFound("deployment", deployment_id)
