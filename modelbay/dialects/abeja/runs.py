"""ABEJA runs: create (answered at once, after the commit, in front of the framework), get, list in pages,
and logs."""

from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.responses import Response
from starlette.types import Receive, Scope

from modelbay.core.deployments import Target
from modelbay.core.errors import InvalidInput, NotFound
from modelbay.core.runs import NewRun, check_environment, check_retry_count
from modelbay.dialects.abeja import ids, schemas
from modelbay.dialects.abeja.deployments import ok, version_target
from modelbay.dialects.abeja.deps import DeploymentDep, EngineDep, caller_from_header, parse_json_object
from modelbay.dialects.abeja.errors import ERRORS, AbejaRoute
from modelbay.dialects.abeja.logs import log_page, recent_log_page
from modelbay.dialects.common.front import FrontRoute, header, path_pattern, read_body
from modelbay.engine import Engine
from modelbay.store.tables import RunRow

router = APIRouter(route_class=AbejaRoute, tags=["ABEJA · runs"])

R = "/organizations/{organization_id}/deployments/{deployment_id}/runs"

#: The largest `distribution` (an id whose remainder picks a queue) the store's 32-bit column holds.
MAX_DISTRIBUTION = 2**31 - 1


def target_or_none(engine: Any, version_id: str) -> Target | None:
    try:
        return engine.deployments.target_of_version(version_id)  # type: ignore[no-any-return]
    except NotFound:
        return None


def run_body(engine: Any, row: RunRow) -> dict[str, Any]:
    return schemas.run(row, target_or_none(engine, row.version_id))


def model_alias(body: dict[str, Any]) -> str | None:
    models = body.get("models")
    if models is None:
        return None
    alias = models.get("alias") if isinstance(models, dict) else None
    if not isinstance(alias, str) or not alias or len(alias) > 64:
        raise InvalidInput("models must be an object with a string 'alias'")
    return alias


async def create_run(scope: Scope, receive: Receive, engine: Engine, organization_id: str, deployment_id: str) -> bytes:
    """`POST …/runs`: answered in front of the framework (`common.front`), once the run is committed."""
    caller = caller_from_header(engine, header(scope, b"authorization"))
    organization = ids.find_organization(engine.projects, caller, organization_id)
    body = parse_json_object(await read_body(scope, receive, engine.settings.max_request_bytes))
    target = version_target(engine, organization, deployment_id, body)
    distribution = body.get("distribution")
    if distribution is not None and (isinstance(distribution, bool) or not isinstance(distribution, int)
                                     or not 0 <= distribution <= MAX_DISTRIBUTION):
        raise InvalidInput(f"distribution must be an integer from 0 to {MAX_DISTRIBUTION}")
    new = NewRun(
        input_data=body.get("input_data"),
        output_template=body.get("output_template"),
        retry_count=check_retry_count(body.get("retry_count")),
        distribution=distribution,
        environment=check_environment(body.get("environment")),
        model_alias=model_alias(body),
    )
    row = await engine.runs.create(target, new)
    return orjson.dumps(schemas.run(row, target))


FRONT_ROUTES = [FrontRoute(re.compile(path_pattern(R)), create_run, ERRORS)]


@router.get(R)
@router.get(R + "/")  # the spec's spelling; the SDK sends none. Served as well, without a redirect
async def list_runs(
    engine: EngineDep, deployment: DeploymentDep, next_page_token: str | None = None, scan_forward: str | None = None
) -> Response:
    oldest_first = bool(schemas.query_bool(scan_forward, "scan_forward"))
    after = schemas.read_page_token(next_page_token)
    rows, more = engine.runs.page(deployment.id, after=after, oldest_first=oldest_first)
    answer: dict[str, Any] = {"entries": [run_body(engine, row) for row in rows]}
    if more and rows:
        answer["next_page_token"] = schemas.page_token(rows[-1].created_at, rows[-1].id)
    return ok(answer)


@router.get(R + "/{run_id}")
async def get_run(engine: EngineDep, deployment: DeploymentDep, run_id: str) -> Response:
    return ok(run_body(engine, engine.runs.get(deployment.id, ids.core_run_id(run_id))))


@router.get(R + "/{run_id}/logs")
async def get_run_logs(
    engine: EngineDep, deployment: DeploymentDep, run_id: str, next_token: str | None = None,
    start_time: str | None = None, end_time: str | None = None,
) -> Response:
    row = engine.runs.get(deployment.id, ids.core_run_id(run_id))
    return ok(log_page(engine, row.id, next_token, start_time, end_time))


@router.get(R + "/{run_id}/recentlogs")
async def get_run_recent_logs(
    engine: EngineDep, deployment: DeploymentDep, run_id: str, next_forward_token: str | None = None,
    next_backward_token: str | None = None, start_time: str | None = None, end_time: str | None = None,
) -> Response:
    row = engine.runs.get(deployment.id, ids.core_run_id(run_id))
    return ok(recent_log_page(engine, row.id, next_forward_token, next_backward_token, start_time, end_time))
