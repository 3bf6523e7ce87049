"""UbiOps deployment requests: batch create, and everything read, cancelled or deleted.

The direct request, the hot path, is served in front of the framework (`direct.py`); the stream in
`streaming.py`. The other routes are the stored-request routes (`stored_requests`) of a deployment."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from modelbay.core.deployments import Deployments, Target
from modelbay.core.requests import BATCH_TIMEOUT_DEFAULT_S, BATCH_TIMEOUT_MAX_S, RequestRecord, check_priority
from modelbay.core.stored_requests import check_timeout
from modelbay.dialects.ubiops import request_schemas
from modelbay.dialects.ubiops.errors import UbiopsRoute
from modelbay.dialects.ubiops.inputs import int_query
from modelbay.dialects.ubiops.stored_requests import ORIGIN, Named, StoredRequestRoutes, batch_items
from modelbay.engine import Engine
from modelbay.store.tables import ProjectRow, RequestRow


class DeploymentRequestRoutes(StoredRequestRoutes):
    noun = "deployment"

    def resolve(self, engine: Engine, project: ProjectRow, name: str, version: str | None) -> Named:
        target = engine.deployments.target(project, name, version)
        return Named(engine, project, engine.requests, target, target.deployment_name, target.version_name,
                     target.input_type)

    async def create_batch(self, request: Request, named: Named) -> list[RequestRecord]:
        target = Deployments.serving_target_check(named.version)
        timeout = check_timeout(int_query(request, "timeout"), BATCH_TIMEOUT_DEFAULT_S, BATCH_TIMEOUT_MAX_S)
        priority = check_priority(int_query(request, "priority"))
        items = await batch_items(request, named)
        return await named.engine.requests.create_batch(target, items, timeout=timeout, priority=priority,
                                                        origin=ORIGIN)

    def extras(self, named: Named, row: RequestRow) -> dict[str, Any]:
        return request_schemas.deployment_extras(row)


ROUTES = DeploymentRequestRoutes()
router = APIRouter(route_class=UbiopsRoute, tags=["UbiOps · requests"])
ROUTES.add_routes(router)


async def target_of(request: Request) -> tuple[Engine, Target]:
    """The engine and the version a request route names (the default one without `version`)."""
    named = await ROUTES.named(request)
    return named.engine, named.version
