"""Errors answered in each dialect's own shape.

Which status an error gets is decided here, once, for every dialect; a dialect gives only the body
its SDK reads (`ErrorShape.body`). Its routes are `DialectRoute`s that answer what they raise in
that shape, so an error never needs the path to know which dialect it belongs to. Only a path that
no route serves is answered by the dialect mounted at its prefix (`unrouted_handler`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

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

log = logging.getLogger(__name__)

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

#: What a route may raise that its dialect answers; anything else is a server fault (500).
HANDLED = (ModelbayError, RequestValidationError, HTTPException)


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


class ErrorShape:
    """How one dialect answers errors: a subclass gives `body`, names the inputs the core names in
    `field_names`, and may reword core errors in `message`."""

    #: The dialect's name of each input the core names in an `InvalidInput` (`max_retries`: `maxRetries`).
    field_names: ClassVar[Mapping[str, str]] = {}

    def body(self, status: int, message: str) -> dict[str, Any]:
        raise NotImplementedError

    def message(self, exc: ModelbayError) -> str:
        if isinstance(exc, InvalidInput):
            return exc.worded(self.field_names)
        return exc.message

    def response(self, status: int, message: str) -> Response:
        return Response(orjson.dumps(self.body(status, message)), status_code=status, media_type="application/json")

    def render(self, exc: Exception) -> Response:
        """The answer to an error raised while serving one of the dialect's routes."""
        if isinstance(exc, ModelbayError):
            return self.response(status_of(exc), self.message(exc))
        if isinstance(exc, RequestValidationError):
            return self.response(400, describe_validation_error(exc))
        if isinstance(exc, HTTPException):
            # bad input is a 400 in every dialect, never the framework's 422
            return self.response(400 if exc.status_code == 422 else exc.status_code, str(exc.detail))
        log.error("unexpected error", exc_info=exc)
        return self.response(500, "Internal server error")


class DialectRoute(APIRoute):
    """A route that answers what it raises in its dialect's shape; each dialect subclasses it with
    its `errors` and passes the subclass as its routers' `route_class`."""

    errors: ClassVar[ErrorShape]

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()
        errors = self.errors

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except HANDLED as exc:  # raised by the route, its dependencies or the checks of its parameters
                return errors.render(exc)

        return answer

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().handle(scope, receive, send)
        except HTTPException as exc:  # the router's 405: the path is this route's, the method is not
            await self.errors.render(exc)(scope, receive, send)


def unrouted_handler(
    mounts: Sequence[tuple[tuple[str, ...], ErrorShape]], default: ErrorShape
) -> Callable[[Request, Exception], Awaitable[Response]]:
    """The app's handler of what no route answered (a path no route serves is a 404): in the shape
    of the dialect mounted at the path's prefix, else in `default`'s."""

    async def handle(request: Request, exc: Exception) -> Response:
        path = request.url.path
        shape = next((errors for prefixes, errors in mounts if path.startswith(prefixes)), default)
        return shape.render(exc)

    return handle
