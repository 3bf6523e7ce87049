"""Core errors as the ABEJA Platform answers them: `{"error": "<code>", "error_description": "<text>"}`.

The SDK maps 400/401/403/404/405/409/500 to its exceptions and re-sends on 5xx, so nothing
here answers 5xx except a real server fault.
"""

from __future__ import annotations

import logging

import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from modelbay.core.errors import ModelbayError
from modelbay.dialects.ubiops.errors import describe_validation_error, status_of

log = logging.getLogger(__name__)

PREFIXES = ("/organizations/", "/deployments/")

CODE_OF = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "bad_request",
    500: "internal_server_error",
}


def error_response(status: int, description: str) -> Response:
    body = {"error": CODE_OF.get(status, "error"), "error_description": description}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def render(exc: Exception) -> Response:
    """The ABEJA answer to any error raised while serving one of its routes."""
    if isinstance(exc, ModelbayError):
        return error_response(status_of(exc), exc.message)
    if isinstance(exc, RequestValidationError):
        return error_response(400, describe_validation_error(exc))
    if isinstance(exc, HTTPException):
        status = 400 if exc.status_code == 422 else exc.status_code
        return error_response(status, str(exc.detail))
    log.error("unexpected error", exc_info=exc)
    return error_response(500, "Internal server error")
