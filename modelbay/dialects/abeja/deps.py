"""What every ABEJA route needs: the engine, the caller, the organization and the deployment in the path."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request

from modelbay.core.errors import InvalidInput, NotFound, Unauthorized
from modelbay.core.projects import Caller
from modelbay.dialects.common.body import read_body
from modelbay.dialects.abeja import ids
from modelbay.engine import Engine
from modelbay.store.tables import DeploymentRow, ProjectRow, VersionRow

#: Basic credentials: `user-<id>:<personal access token>` or `datasource-<id>:<secret>`.
BASIC_PREFIXES = ("user-", "datasource-")


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def engine_of(request: Request) -> Engine:
    return _engine(request)


def caller_from_header(engine: Engine, header: str | None) -> Caller:
    """`Bearer <token>`, or `Basic b64(user-<id>:<token>)`: the project token is the secret either way."""
    if not header:
        raise Unauthorized("Authentication credentials were not provided")
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return engine.projects.authenticate(value)
    if scheme.lower() == "basic" and value:
        try:
            user, sep, secret = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized("The Basic credential is not valid base64") from None
        if not sep or not user.startswith(BASIC_PREFIXES) or not secret:
            raise Unauthorized("The Basic credential must be 'user-<id>:<personal access token>'")
        return engine.projects.authenticate(secret)
    raise Unauthorized("Authorization header must be 'Bearer <token>' or 'Basic <credentials>'")


async def organization_of(organization_id: str, request: Request) -> ProjectRow:
    """The project behind the path's organization id; 401 without a credential, 403 for another's."""
    engine = _engine(request)
    caller = caller_from_header(engine, request.headers.get("authorization"))
    return ids.find_organization(engine.projects, caller, organization_id)


#: The core id of each deployment found, by (project's core id, 13-digit id). The 13-digit id is a
#: hash of the core id, so finding one scans the project's deployments (and remembers them all);
#: neither id ever changes, and project ids are UUIDs.
_core_deployment_ids: dict[tuple[str, str], str] = {}


def core_deployment_id(engine: Engine, project: ProjectRow, deployment_id: str) -> str:
    """The core id of the project's deployment with this 13-digit id, or of one it had (a deleted
    one's stays known: callers read its row); raises `NotFound`."""
    key = (project.id, deployment_id)
    if key not in _core_deployment_ids and ids.DEPLOYMENT_ID.fullmatch(deployment_id):
        for row in engine.deployments.list_deployments(project):
            _core_deployment_ids[(project.id, ids.deployment_id(row.id))] = row.id
    core_id = _core_deployment_ids.get(key)
    if core_id is None:
        raise NotFound("deployment", deployment_id)
    return core_id


#: The core id of each version found, by (its deployment's core id, `ver-` id): the `ver-` id is
#: how the core id begins, found in the store once; neither id ever changes.
_core_version_ids: dict[tuple[str, str], str] = {}


def version_row(engine: Engine, deployment_core_id: str, version_id: str) -> VersionRow | None:
    """The version with this `ver-` id of the deployment with this core id; None when it has none."""
    start = ids.version_core_prefix(version_id)
    return None if start is None else engine.deployments.version_by_id_start(deployment_core_id, start)


def core_version_id(engine: Engine, deployment_core_id: str, version_id: str) -> str | None:
    """The core id of the deployment's version with this `ver-` id, or of one it had; None when it
    has none."""
    key = (deployment_core_id, version_id)
    core_id = _core_version_ids.get(key)
    if core_id is None and (row := version_row(engine, deployment_core_id, version_id)) is not None:
        core_id = _core_version_ids[key] = row.id
    return core_id


def find_deployment(engine: Engine, project: ProjectRow, deployment_id: str) -> DeploymentRow:
    """The deployment with this 13-digit id in the project; raises `NotFound`."""
    row = engine.deployments.get_by_id(project, core_deployment_id(engine, project, deployment_id))
    if row is None:
        raise NotFound("deployment", deployment_id)
    return row


async def deployment_of(deployment_id: str, request: Request, organization: OrganizationDep) -> DeploymentRow:
    return find_deployment(_engine(request), organization, deployment_id)


async def json_object(request: Request) -> dict[str, Any]:
    return parse_json_object(await read_body(request, _engine(request).settings.max_request_bytes))


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; an empty body is an empty object (the SDK sends none for `payload=None`)."""
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"The request body is not valid JSON: {exc}") from exc
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise InvalidInput("The request body must be a JSON object")
    return body


EngineDep = Annotated[Engine, Depends(engine_of)]
OrganizationDep = Annotated[ProjectRow, Depends(organization_of)]
DeploymentDep = Annotated[DeploymentRow, Depends(deployment_of)]
JsonObject = Annotated[dict[str, Any], Depends(json_object)]
