"""ABEJA services: CRUD, start/stop, scaling, logs, and the host-routed request proxy."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.types import Receive, Scope

from modelbay.core.decimals import is_decimal
from modelbay.core.errors import InvalidInput, NotFound
from modelbay.core.runs import check_environment
from modelbay.dialects.abeja import ids, schemas
from modelbay.dialects.abeja.deployments import ok, version_target
from modelbay.dialects.abeja.deps import (
    DeploymentDep,
    EngineDep,
    JsonObject,
    OrganizationDep,
    caller_from_header,
    core_deployment_id,
)
from modelbay.dialects.abeja.errors import ERRORS, AbejaRoute
from modelbay.dialects.abeja.logs import log_page, recent_log_page
from modelbay.dialects.abeja.runs import model_alias, target_or_none
from modelbay.dialects.common.front import Answer, FrontRoute, header, read_body
from modelbay.engine import Engine
from modelbay.runtime import wire
from modelbay.store.tables import ServiceRow

router = APIRouter(route_class=AbejaRoute, tags=["ABEJA · services"])

S = "/organizations/{organization_id}/deployments/{deployment_id}/services"

#: Where the server's web console lives: a service's `metrics_url` is its deployment's page there.
CONSOLE_ROOT = "/ui"

#: `Host: <organization_id>.<host>[:port]`: the organization id and the host after it.
ORGANIZATION_HOST = re.compile(r"^([0-9]{1,13})\.([^:]+)(:[0-9]+)?$")

SCALING_NUMBERS = ("instance_number", "min_instance_number", "max_instance_number")

#: Request headers handed to handler code.
FORWARDED_HEADERS = ("content-type", "accept", "user-agent")


def scaling_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The scaling settings of a body as the core takes them: the SDK documents the numbers as
    strings, and may send `enable_autoscale` as "true" or "false". Anything else is left for the
    core to refuse."""
    fields: dict[str, Any] = {}
    for key in SCALING_NUMBERS:
        value = body.get(key)
        if isinstance(value, str) and is_decimal(value.strip(), 9):
            value = int(value)
        fields[key] = value
    autoscale = body.get("enable_autoscale")
    if isinstance(autoscale, str) and autoscale.lower() in ("true", "false"):
        autoscale = autoscale.lower() == "true"
    fields["enable_autoscale"] = autoscale
    return fields


async def service_body(engine: Any, row: ServiceRow, console: str) -> dict[str, Any]:
    """The service as ABEJA shows it; `console`: its deployment's page in the web console."""
    instances = await engine.services.instance_count(row.id)
    return schemas.service(row, target_or_none(engine, row.version_id), instances, engine.services.start_error(row),
                           metrics_url=f"{console}#service-{row.id}")


def console_page(request: Request, organization: OrganizationDep, deployment: DeploymentDep) -> str:
    """Where the web console shows a deployment's services (`metrics_url`)."""
    return (f"{str(request.base_url).rstrip('/')}{CONSOLE_ROOT}/projects/{quote(organization.name, safe='')}"
            f"/deployments/{quote(deployment.name, safe='')}")


ConsolePage = Annotated[str, Depends(console_page)]


@router.post(S)
async def create_service(
    engine: EngineDep, organization: OrganizationDep, deployment: DeploymentDep, body: JsonObject, console: ConsolePage
) -> Response:
    target = version_target(engine, organization, ids.deployment_id(deployment.id), body)
    fields = {
        **scaling_fields(body),
        "instance_type": body.get("instance_type"),
        "environment": check_environment(body.get("environment")),
        "model_alias": model_alias(body),
    }
    row = await engine.services.create(target, fields)
    return ok(await service_body(engine, row, console))


@router.get(S)
async def list_services(engine: EngineDep, deployment: DeploymentDep, console: ConsolePage) -> Response:
    return ok({"entries": [await service_body(engine, row, console) for row in engine.services.list(deployment.id)]})


@router.get(S + "/{service_id}")
async def get_service(engine: EngineDep, deployment: DeploymentDep, service_id: str, console: ConsolePage) -> Response:
    return ok(await service_body(engine, engine.services.get(deployment.id, ids.core_service_id(service_id)), console))


@router.patch(S + "/{service_id}")
async def update_service(engine: EngineDep, deployment: DeploymentDep, service_id: str, body: JsonObject,
                         console: ConsolePage) -> Response:
    row = await engine.services.update(deployment.id, ids.core_service_id(service_id), scaling_fields(body))
    return ok(await service_body(engine, row, console))


@router.delete(S + "/{service_id}")
async def delete_service(engine: EngineDep, deployment: DeploymentDep, service_id: str) -> Response:
    await engine.services.delete(deployment.id, ids.core_service_id(service_id))
    return ok({"message": f"{service_id} deleted"})


@router.post(S + "/{service_id}/start")
async def start_service(engine: EngineDep, deployment: DeploymentDep, service_id: str) -> Response:
    await engine.services.set_running(deployment.id, ids.core_service_id(service_id), True)
    return ok({"message": f"{service_id} started"})


@router.post(S + "/{service_id}/stop")
async def stop_service(engine: EngineDep, deployment: DeploymentDep, service_id: str) -> Response:
    await engine.services.set_running(deployment.id, ids.core_service_id(service_id), False)
    return ok({"message": f"{service_id} stopped"})


@router.get(S + "/{service_id}/logs")
async def get_service_logs(
    engine: EngineDep, deployment: DeploymentDep, service_id: str, next_token: str | None = None,
    start_time: str | None = None, end_time: str | None = None,
) -> Response:
    """Oldest first, as a run's logs (what `abeja model describe-service-logs` reads)."""
    row = engine.services.get(deployment.id, ids.core_service_id(service_id))
    return ok(log_page(engine, row.id, next_token, start_time, end_time))


@router.get(S + "/{service_id}/recentlogs")
async def get_service_recent_logs(
    engine: EngineDep, deployment: DeploymentDep, service_id: str, next_forward_token: str | None = None,
    next_backward_token: str | None = None, start_time: str | None = None, end_time: str | None = None,
) -> Response:
    row = engine.services.get(deployment.id, ids.core_service_id(service_id))
    return ok(recent_log_page(engine, row.id, next_forward_token, next_backward_token, start_time, end_time))


# --- the proxy: POST {scheme}://{organization_id}.{host}/deployments/{d}[/services/{s}] ---------------


def _body_as_input(target: Any, raw: bytes, content_type: str, headers: dict[str, str]) -> tuple[Any, dict[str, Any]]:
    """The data and call context that hand an HTTP body to the service's code."""
    if target.handler:
        try:
            data, encoding = raw.decode("utf-8"), "text"
        except UnicodeDecodeError:
            data, encoding = base64.b64encode(raw).decode("ascii"), "base64"
        return data, {wire.HTTP_KEY: {"content_type": content_type, "encoding": encoding, "headers": headers}}
    if target.input_type == "structured":
        try:
            return orjson.loads(raw), {}
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"This service takes a JSON object: {exc}") from exc
    try:
        return raw.decode("utf-8"), {}
    except UnicodeDecodeError:
        raise InvalidInput("This service takes text (UTF-8)") from None


def _http_answer(target: Any, record: Any) -> Answer:
    if record.status != "completed":
        return _failed(record.error_message or "The service's code failed")
    if not target.handler:
        return Answer(200, orjson.dumps(record.result), "application/json")
    envelope = orjson.loads(record.result)
    status, content_type = int(envelope["status_code"]), str(envelope["content_type"])
    if not 200 <= status <= 599:
        return _failed(f"The handler answered with status {status}, which is not an HTTP answer")
    if not content_type.isprintable():
        return _failed("The handler answered with a content_type that cannot be a header")
    body = envelope["body"]
    content = base64.b64decode(body) if envelope.get("encoding") == "base64" else body.encode("utf-8")
    if content_type.startswith("text/") and "charset=" not in content_type.lower():
        content_type += "; charset=utf-8"  # as the framework's answers add it
    return Answer(status, content, content_type)


def _failed(message: str) -> Answer:
    return Answer(500, orjson.dumps(ERRORS.body(500, message)), "application/json")


def organization_in_host(host: str, abeja_host: str) -> str | None:
    """The organization id of `Host: <organization_id>.<abeja_host>[:port]` (any host after the id
    when `abeja_host` is empty); None for another host."""
    match = ORGANIZATION_HOST.match(host.strip().lower())
    if match is None or (abeja_host and match.group(2).rstrip(".") != abeja_host.strip().lower().rstrip(".")):
        return None
    return match.group(1)


async def request_service(scope: Scope, receive: Receive, engine: Engine, deployment_id: str,
                          service_id: str) -> Answer:
    return await _serve(scope, receive, engine, deployment_id, lambda deployment: ids.core_service_id(service_id))


async def request_default_endpoint(scope: Scope, receive: Receive, engine: Engine, deployment_id: str) -> Answer:
    """The deployment's own URL: the service its `default` endpoint points at answers."""
    return await _serve(scope, receive, engine, deployment_id, engine.endpoints.service_of)


async def _serve(scope: Scope, receive: Receive, engine: Engine, deployment_id: str,
                 service_of: Callable[[str], str]) -> Answer:
    """Hand the request to the service `service_of(core deployment id)` names, and its answer back."""
    abeja_host = engine.settings.abeja_host
    organization_id = organization_in_host(header(scope, b"host") or "", abeja_host)
    if organization_id is None:
        where = f"<organization_id>.{abeja_host}" if abeja_host else "<organization_id>.<host>"
        raise NotFound("deployment", f"{deployment_id} (the Host header names no organization: requests go to "
                                     f"http://{where}/deployments/{deployment_id})")
    caller = caller_from_header(engine, header(scope, b"authorization"))
    project = ids.find_organization(engine.projects, caller, organization_id)
    deployment = core_deployment_id(engine, project, deployment_id)
    row = engine.services.serving(deployment, service_of(deployment))
    target = engine.services.target(row)
    content_type = header(scope, b"content-type") or "application/octet-stream"
    headers = {name: value for name in FORWARDED_HEADERS if (value := header(scope, name.encode())) is not None}
    headers.update({"x-abeja-deployment-id": deployment_id, "x-abeja-service-id": ids.service_id(row.id)})
    if row.model_alias:
        headers["x-abeja-model-id"] = row.model_alias
    raw = await read_body(scope, receive, engine.settings.max_request_bytes)
    data, context = _body_as_input(target, raw, content_type, headers)
    target, record = await engine.services.call(row, data, context)
    return _http_answer(target, record)


#: The calls to a service, answered in front of the framework (`common.front`): the deployment's
#: URL, and a service's own. The app serves no other method on these paths.
_PROXY = rf"/deployments/(?P<deployment_id>{ids.DEPLOYMENT_ID.pattern})"
PROXY_PATHS = ("/deployments/{deployment_id}/services/{service_id}", "/deployments/{deployment_id}")
FRONT_ROUTES = [
    FrontRoute(re.compile(_PROXY + "/services/(?P<service_id>[^/]+)"), request_service, ERRORS, sole=True),
    FrontRoute(re.compile(_PROXY), request_default_endpoint, ERRORS, sole=True),
]
