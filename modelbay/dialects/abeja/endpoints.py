"""ABEJA endpoints: a deployment's named pointers at its services (`default` serves the
deployment's own URL, `http://<organization_id>.<host>/deployments/<deployment_id>`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from modelbay.core.errors import InvalidInput, NotFound
from modelbay.dialects.abeja import ids
from modelbay.dialects.abeja.deployments import ok
from modelbay.dialects.abeja.deps import DeploymentDep, EngineDep, JsonObject
from modelbay.dialects.abeja.errors import AbejaRoute
from modelbay.engine import Engine
from modelbay.store.tables import DeploymentRow, EndpointRow

router = APIRouter(route_class=AbejaRoute, tags=["ABEJA · endpoints"])

E = "/organizations/{organization_id}/deployments/{deployment_id}/endpoints"


def endpoint(row: EndpointRow) -> dict[str, Any]:
    return {"endpoint_id": ids.endpoint_id(row.id), "custom_alias": row.alias,
            "service_id": ids.service_id(row.service_id)}


def core_service_id(body: dict[str, Any]) -> object:
    """The core id of the body's `ser-…` service_id (the core refuses a missing one)."""
    value = body.get("service_id")
    if not isinstance(value, str):
        return value
    try:
        return ids.core_service_id(value)
    except NotFound:
        raise InvalidInput(f"service_id '{value}' names no service of this deployment") from None


def find_endpoint(engine: Engine, deployment: DeploymentRow, value: str) -> EndpointRow:
    """The endpoint named by its `pnt-…` id or its alias (the SDK takes either); raises `NotFound`."""
    for row in engine.endpoints.list(deployment.id):
        if value in (ids.endpoint_id(row.id), row.alias):
            return row
    raise NotFound("endpoint", value)


@router.post(E)
async def create_endpoint(engine: EngineDep, deployment: DeploymentDep, body: JsonObject) -> Response:
    row = engine.endpoints.create(deployment.id, core_service_id(body), body.get("custom_alias", "default"))
    return ok(endpoint(row))


@router.get(E)
async def list_endpoints(engine: EngineDep, deployment: DeploymentDep) -> Response:
    return ok({"entries": [endpoint(row) for row in engine.endpoints.list(deployment.id)]})


@router.get(E + "/{endpoint_id}")
async def get_endpoint(engine: EngineDep, deployment: DeploymentDep, endpoint_id: str) -> Response:
    return ok(endpoint(find_endpoint(engine, deployment, endpoint_id)))


@router.patch(E + "/{endpoint_id}")
async def update_endpoint(engine: EngineDep, deployment: DeploymentDep, endpoint_id: str,
                          body: JsonObject) -> Response:
    row = find_endpoint(engine, deployment, endpoint_id)
    engine.endpoints.update(deployment.id, row.id, core_service_id(body))
    return ok({"message": f"{ids.endpoint_id(row.id)} updated"})


@router.delete(E + "/{endpoint_id}")
async def delete_endpoint(engine: EngineDep, deployment: DeploymentDep, endpoint_id: str) -> Response:
    row = find_endpoint(engine, deployment, endpoint_id)
    engine.endpoints.delete(deployment.id, row.id)
    return ok({"message": f"{ids.endpoint_id(row.id)} deleted"})
