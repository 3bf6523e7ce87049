"""What every Datature route needs: the engine, and the project named in the path, checked against
the `Secret-Key` header."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import Depends, Request

from modelbay.core.errors import InvalidInput
from modelbay.dialects.common.body import read_body
from modelbay.dialects.datature import ids
from modelbay.engine import Engine
from modelbay.store.tables import ProjectRow


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def engine_of(request: Request) -> Engine:
    return _engine(request)


async def project_of(project_id: str, request: Request) -> ProjectRow:
    """The project `proj_…` of the path. 401 for a bad key, 403 for another project's id."""
    engine = _engine(request)
    caller = engine.projects.authenticate(request.headers.get("secret-key"))
    return ids.find_project(engine.projects, caller, project_id)


async def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, with a clear 400 when it is not one (413 past the size limit)."""
    raw = await read_body(request, _engine(request).settings.max_request_bytes)
    if not raw:
        raise InvalidInput("The request body is empty; a JSON object was expected")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidInput("The request body must be a JSON object")
    return body


EngineDep = Annotated[Engine, Depends(engine_of)]
ProjectDep = Annotated[ProjectRow, Depends(project_of)]
JsonObject = Annotated[dict[str, Any], Depends(json_object)]
