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
from modelbay.store.tables import DeploymentRow, ProjectRow

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


def find_deployment(engine: Engine, project: ProjectRow, deployment_id: str) -> DeploymentRow:
    """The deployment with this 13-digit id in the project; raises `NotFound`."""
    if ids.DEPLOYMENT_ID.fullmatch(deployment_id):
        for row in engine.deployments.list_deployments(project):
            if ids.deployment_id(row.id) == deployment_id:
                return row
    raise NotFound("deployment", deployment_id)


async def deployment_of(deployment_id: str, request: Request, organization: OrganizationDep) -> DeploymentRow:
    return find_deployment(_engine(request), organization, deployment_id)


async def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object; an empty body is an empty object (the SDK sends none for `payload=None`)."""
    raw = await read_body(request, _engine(request).settings.max_request_bytes)
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
