"""What every UbiOps route needs: the engine, the caller, and the project named in the path."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import Depends, Request

from modelbay.core.errors import InvalidInput, Unauthorized
from modelbay.core.projects import Caller
from modelbay.dialects.common.body import read_body
from modelbay.engine import Engine
from modelbay.store.tables import ProjectRow

TOKEN_SCHEMES = ("token", "bearer")


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def engine_of(request: Request) -> Engine:
    # async: FastAPI runs a plain `def` dependency on a thread, a hop the hot path can't afford
    return _engine(request)


def caller_from(engine: Engine, header: str | None) -> Caller:
    """The caller behind an `Authorization: Token <t>` header (`Bearer` accepted too)."""
    if not header:
        raise Unauthorized("Authentication credentials were not provided")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() not in TOKEN_SCHEMES or not token.strip():
        raise Unauthorized("Authorization header must be 'Token <token>'")
    return engine.projects.authenticate(token.strip())


async def caller_of(request: Request) -> Caller:
    return caller_from(_engine(request), request.headers.get("authorization"))


async def project_of(project_name: str, request: Request) -> ProjectRow:
    return _engine(request).projects.get(await caller_of(request), project_name)


async def json_body(request: Request) -> Any:
    """The body parsed as JSON, with a clear 400 when it is not (413 past the size limit)."""
    raw = await read_body(request, _engine(request).settings.max_request_bytes)
    if not raw:
        raise InvalidInput("The request body is empty; JSON was expected")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"The request body is not valid JSON: {exc}") from exc


async def json_object(request: Request) -> dict[str, Any]:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidInput("The request body must be a JSON object")
    return body


EngineDep = Annotated[Engine, Depends(engine_of)]
CallerDep = Annotated[Caller, Depends(caller_of)]
ProjectDep = Annotated[ProjectRow, Depends(project_of)]
JsonObject = Annotated[dict[str, Any], Depends(json_object)]
