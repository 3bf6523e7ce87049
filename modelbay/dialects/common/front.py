"""The hot routes, answered in front of the framework.

The calls clients make most (a UbiOps direct request, an ABEJA run's create, a call to an ABEJA
service) are served by the engine in a fraction of what FastAPI's middleware, routing, dependencies
and response layers would add to them. So `Front` wraps the app: it answers the POSTs its
`FrontRoute`s match itself, with the same credentials, checks, errors and answer as the dialect's
other routes, and hands every other request to the app. (Being outside the framework, these routes
are listed in /docs by `api_reference`.)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from starlette.types import ASGIApp, Receive, Scope, Send

from modelbay.core.errors import ModelbayError
from modelbay.dialects.common.body import check_declared_size, too_large
from modelbay.dialects.common.errors import ErrorShape
from modelbay.engine import Engine

log = logging.getLogger(__name__)

JSON_HEADERS = [(b"content-type", b"application/json")]


class Answer(NamedTuple):
    """An answer other than JSON with a 200."""

    status: int
    body: bytes
    content_type: str  # as sent


#: Serves one request: (scope, receive, engine, **the path's parameters) -> the JSON body of a 200,
#: or another answer.
Serve = Callable[..., Awaitable[bytes | Answer]]


def path_pattern(path: str) -> str:
    """The regular expression of a route path: each `{name}` matches one path segment."""
    return re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path)


@dataclass(frozen=True)
class FrontRoute:
    """A POST route `Front` answers: paths `pattern` matches whole, served by `serve`, its errors
    answered in the dialect's shape. `sole`: the app serves no other method on these paths (they
    are answered 405 here)."""

    pattern: re.Pattern[str]
    serve: Serve
    errors: ErrorShape
    sole: bool = False


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class Front:
    """ASGI middleware serving `routes`; `app` serves everything else."""

    def __init__(self, app: ASGIApp, engine_of: Callable[[], Engine], routes: Sequence[FrontRoute]) -> None:
        self.app = app
        self._engine_of = engine_of  # the engine exists only once the app's lifespan has started
        self._routes = tuple(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            for route in self._routes:
                if match := route.pattern.fullmatch(path):
                    if scope["method"] == "POST":
                        await self._answer(route, scope, receive, send, match.groupdict())
                        return
                    if route.sole:
                        refused = route.errors.response(405, "Method Not Allowed")
                        refused.headers["allow"] = "POST"
                        await refused(scope, receive, send)
                        return
                    break
        await self.app(scope, receive, send)

    async def _answer(self, route: FrontRoute, scope: Scope, receive: Receive, send: Send,
                      params: dict[str, str]) -> None:
        try:
            answer = await route.serve(scope, receive, self._engine_of(), **params)
        except ClientGone:
            return
        except ModelbayError as exc:
            await route.errors.render(exc)(scope, receive, send)
            return
        except Exception:
            log.exception("request to %s failed", scope["path"])
            await route.errors.response(500, "Internal server error")(scope, receive, send)
            return
        if isinstance(answer, bytes):
            status, body, headers = 200, answer, [*JSON_HEADERS]
        else:
            status, body = answer.status, answer.body
            headers = [(b"content-type", answer.content_type.encode("latin-1"))]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def header(scope: Scope, name: bytes) -> str | None:
    """The value of the request's header `name` (lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, refused as soon as it passes `limit` bytes: the rule of `common.body` on raw
    ASGI messages. Its `Content-Length` is checked once a second piece is due, so a body announced
    too large is refused after its first piece; a body that arrives whole, as small ones do, costs
    no more than before."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)
        if len(chunks) == 1:
            check_declared_size(header(scope, b"content-length"), limit)
