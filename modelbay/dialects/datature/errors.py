"""Core errors as Datature answers them: a status code and `{"message": "<text>"}`.

The SDK shows 401 as `BadRequestError`, 403 as `ForbiddenError` and 404 as `NotFoundError`
(SDK-CONTRACTS 3.2); it retries 5xx, POST included, so nothing here answers 5xx on purpose.
"""

from __future__ import annotations

import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from modelbay.core.errors import ModelbayError, NotFound
from modelbay.dialects.ubiops.errors import describe_validation_error, status_of

#: Where the dialect lives (SDK-CONTRACTS 3.1: the SDK drops any path prefix).
PREFIXES = ("/projects",)


def error_response(status: int, message: str) -> Response:
    return Response(orjson.dumps({"message": message}), status_code=status, media_type="application/json")


#: The id prefix of each kind the core names in a `NotFound`, so the message shows the caller's id.
ID_PREFIXES = {"webhook": "webhook", "dataset": "dataset", "job": "batchjob", "deployment": "deploy"}


def render(exc: Exception) -> Response:
    """The Datature answer to any error raised while serving one of its routes."""
    if isinstance(exc, NotFound) and exc.kind in ID_PREFIXES and len(exc.name) == 36 and "_" not in exc.name:
        return error_response(404, f"{exc.kind.capitalize()} '{ID_PREFIXES[exc.kind]}_{exc.name}' was not found")
    if isinstance(exc, ModelbayError):
        return error_response(status_of(exc), exc.message)
    if isinstance(exc, RequestValidationError):
        return error_response(400, describe_validation_error(exc))
    if isinstance(exc, HTTPException):
        return error_response(exc.status_code, str(exc.detail))
    return error_response(500, "Internal server error")
