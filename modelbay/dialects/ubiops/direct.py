"""UbiOps direct requests, the hot path, answered in front of the framework.

A direct request is the call clients make most, and the engine serves it in a fraction of
what FastAPI's middleware, routing and response layers would add to it. So `DirectRequests`
wraps the app: it answers `POST …/deployments/{d}[/versions/{v}]/requests` itself, with the
same credentials, checks, errors and answer as every UbiOps route, and hands every other
request to the app. (Being outside the framework, these routes are listed in /docs by `api_reference`.)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from urllib.parse import parse_qsl

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from modelbay.core.deployments import Deployments
from modelbay.core.errors import ModelbayError
from modelbay.core.requests import DIRECT_TIMEOUT_DEFAULT_S, DIRECT_TIMEOUT_MAX_S
from modelbay.core.stored_requests import check_timeout
from modelbay.dialects.common.body import check_declared_size, too_large
from modelbay.dialects.common.query import int_param
from modelbay.dialects.ubiops import request_schemas
from modelbay.dialects.ubiops.deps import caller_from
from modelbay.dialects.ubiops.errors import ERRORS
from modelbay.dialects.ubiops.inputs import decode_input
from modelbay.engine import Engine

log = logging.getLogger(__name__)

#: The routes answered here (POST), under `/v2.1` and `/v2`.
PATHS = (
    "/projects/{project_name}/deployments/{deployment_name}/requests",
    "/projects/{project_name}/deployments/{deployment_name}/versions/{version}/requests",
)
_PATTERNS = [re.compile(r"/v2(?:\.1)?" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path)) for path in PATHS]

JSON_HEADERS = [(b"content-type", b"application/json")]


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class DirectRequests:
    """ASGI middleware serving direct requests; `app` serves everything else."""

    def __init__(self, app: ASGIApp, engine_of: Callable[[], Engine]) -> None:
        self.app = app
        self._engine_of = engine_of  # the engine exists only once the app's lifespan has started

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            for pattern in _PATTERNS:
                if match := pattern.fullmatch(scope["path"]):
                    await self._direct(scope, receive, send, **match.groupdict())
                    return
        await self.app(scope, receive, send)

    async def _direct(
        self, scope: Scope, receive: Receive, send: Send,
        project_name: str, deployment_name: str, version: str | None = None,
    ) -> None:
        try:
            body = await self._run(scope, receive, self._engine_of(), project_name, deployment_name, version)
        except ClientGone:
            return
        except ModelbayError as exc:
            await ERRORS.render(exc)(scope, receive, send)
            return
        except Exception:
            log.exception("direct request failed")
            await ERRORS.response(500, "Internal server error")(scope, receive, send)
            return
        headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _run(
        scope: Scope, receive: Receive, engine: Engine, project_name: str, deployment: str, version: str | None
    ) -> bytes:
        authorization = content_type = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value.decode("latin-1")
        project = engine.projects.get(caller_from(engine, authorization), project_name)
        target = engine.deployments.target(project, deployment, version)
        Deployments.serving_target_check(target)
        raw_query = scope["query_string"]
        # blank values kept, as the framework's routes keep them: `?timeout=` is no integer there either
        query = dict(parse_qsl(raw_query.decode("latin-1"), keep_blank_values=True)) if raw_query else {}
        timeout = check_timeout(int_param(query.get("timeout"), "timeout"), DIRECT_TIMEOUT_DEFAULT_S,
                                DIRECT_TIMEOUT_MAX_S)
        int_param(query.get("priority"), "priority")  # checked; a direct request goes ahead of batch work anyway
        data = decode_input(await _body(scope, receive, engine.settings.max_request_bytes), content_type or "",
                            target.input_type)
        record = await engine.requests.direct(target, data, timeout=timeout, origin={"created_by": "ubiops"})
        return orjson.dumps(request_schemas.deployment_direct(record))


async def _body(scope: Scope, receive: Receive, limit: int) -> bytes:
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
            check_declared_size(_content_length(scope), limit)


def _content_length(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return str(value.decode("latin-1"))
    return None
