"""Core errors as UbiOps answers them: a status code and `{"error": "<text>"}`."""

from __future__ import annotations

import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from modelbay.core.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    ModelbayError,
    NotFound,
    StatusChanged,
    TooLarge,
    Unauthorized,
    Unavailable,
)

STATUS_OF: dict[type[ModelbayError], int] = {
    NotFound: 404,
    InvalidInput: 400,
    TooLarge: 413,
    Conflict: 409,
    Unauthorized: 401,
    Forbidden: 403,
    Unavailable: 400,
    StatusChanged: 409,
}


def error_response(status: int, message: str) -> Response:
    return Response(orjson.dumps({"error": message}), status_code=status, media_type="application/json")


def status_of(exc: ModelbayError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return 400


def describe_validation_error(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts) or "Invalid request"


def render(exc: Exception) -> Response:
    """The UbiOps answer to any error raised while serving one of its routes."""
    if isinstance(exc, ModelbayError):
        return error_response(status_of(exc), exc.message)
    if isinstance(exc, RequestValidationError):
        return error_response(400, describe_validation_error(exc))
    if isinstance(exc, HTTPException):
        return error_response(exc.status_code, str(exc.detail))
    return error_response(500, "Internal server error")
