"""UbiOps streaming requests: a direct request whose partials reach the caller as server-sent events.

The framing and the disconnect rules below serve the pipeline stream too (`pipeline_requests.stream`,
through `Partials` and `event_stream`); only what starts the request and shapes its result differs.

What `ubiops.utils.stream_deployment_request` reads (SDK-CONTRACTS 1.7), one line at a time:
- each partial the code sends with `context["streaming_update"](text)` becomes
  `event: update\\ndata:<text>\\n\\n`. There is no space after `data:` (the SDK yields the rest of the line
  verbatim), and a partial with line breaks is sent as several `data:` lines, which the SDK yields as
  separate chunks;
- the end is `event: result\\n<one-line JSON of the DeploymentRequestCreateResponse>\\n\\n`. A failed request
  carries `status: failed` and its `error_message`, which makes the SDK raise;
- the SDK never looks at the HTTP status, so anything refused before the stream starts (auth, unknown
  deployment, bad input or timeout) is a 4xx whose body is one JSON line with `error_message` (and `error`).

Disconnects: the request belongs to the HTTP handler, not to the connection, exactly as a direct request
does. When the client goes away, partials made afterwards are dropped and the request runs on to its end
(bounded by its timeout); it is then recorded like any direct request, and only then does the handler
return, so a graceful shutdown waits for it as it waits for a direct request. It is not cancelled: a
direct request's call cannot be cancelled from outside without killing its instance and leaving a row
already recorded as `processing` in that state until the next restart.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from modelbay.core.deployments import Deployments
from modelbay.core.errors import InvalidInput, ModelbayError
from modelbay.core.requests import DIRECT_TIMEOUT_DEFAULT_S, DIRECT_TIMEOUT_MAX_S, check_input
from modelbay.core.stored_requests import check_timeout
from modelbay.dialects.common.errors import status_of
from modelbay.dialects.common.query import int_param
from modelbay.dialects.ubiops import request_schemas
from modelbay.dialects.ubiops.errors import UbiopsRoute
from modelbay.dialects.ubiops.inputs import int_query, request_data
from modelbay.dialects.ubiops.requests import target_of

log = logging.getLogger(__name__)

router = APIRouter(route_class=UbiopsRoute, tags=["UbiOps · requests"])

_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # what both SSE and the SDK's `iter_lines` split on
_END = object()
_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

#: Requests whose stream is being written or whose client has gone: a strong reference until they end.
_running: set[asyncio.Task[Any]] = set()

#: Shapes a finished request into the JSON of the stream's `result` event.
Shape = Callable[[Any], dict[str, Any]]


def error_response(status: int, message: str) -> Response:
    """A refusal before the stream starts: one JSON line with `error_message`, the only error the SDK reads."""
    body = orjson.dumps({"error_message": message, "error": message}) + b"\n"
    return Response(body, status_code=status, media_type="application/json")


def _timeout(request: Request) -> int:
    """The last valid `timeout` of the query (the SDK sends it twice); the error of the last one if none is."""
    error: InvalidInput | None = None
    for value in reversed(request.query_params.getlist("timeout")):
        try:
            return check_timeout(int_param(value, "timeout"), DIRECT_TIMEOUT_DEFAULT_S, DIRECT_TIMEOUT_MAX_S)
        except InvalidInput as exc:
            error = error or exc
    if error is not None:
        raise error
    return DIRECT_TIMEOUT_DEFAULT_S


def _update(text: str) -> bytes:
    lines = "".join(f"data:{line}\n" for line in _LINE_BREAK.split(text))
    return f"event: update\n{lines}\n".encode()


def _result(run: asyncio.Task[Any], shape: Shape) -> bytes:
    if run.cancelled():
        body = {"status": "cancelled", "error_message": "The request was stopped before it finished"}
    elif (exc := run.exception()) is not None:
        message = exc.message if isinstance(exc, ModelbayError) else "Internal server error"
        body = {"status": "failed", "success": False, "error_message": message, "error": message}
    else:
        body = shape(run.result())
    return b"event: result\n" + orjson.dumps(body) + b"\n\n"


class Partials:
    """The partials of one request, from the instance to the stream, for as long as someone listens."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.listening = True

    def put(self, text: str) -> None:  # called on the event loop by the runtime
        if self.listening:
            self.queue.put_nowait(text)

    def end(self, _run: object) -> None:
        self.queue.put_nowait(_END)

    async def events(self, run: asyncio.Task[Any], shape: Shape) -> AsyncIterator[bytes]:
        try:
            while (item := await self.queue.get()) is not _END:
                assert isinstance(item, str)
                yield _update(item)
            yield _result(run, shape)
        finally:
            self.listening = False


class _EventStream(StreamingResponse):
    """The stream of one request; the handler returns only once the request has ended."""

    media_type = "text/event-stream"

    def __init__(self, partials: Partials, run: asyncio.Task[Any], shape: Shape) -> None:
        super().__init__(partials.events(run, shape), headers=_HEADERS)
        self._partials = partials
        self._run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._partials.listening = False  # the client may have gone: drop what comes next
            await _settle(self._run)


async def _settle(run: asyncio.Task[Any]) -> None:
    """Wait for the request to end. Only if this handler is itself cancelled (a forced shutdown) is the
    request cancelled with it, as a direct request's would be."""
    if not run.done():
        try:
            await asyncio.wait([run])
        except asyncio.CancelledError:
            run.cancel()
            raise
    if not run.cancelled() and (exc := run.exception()) is not None and not isinstance(exc, ModelbayError):
        log.error("a streaming request failed", exc_info=exc)


async def _stream(request: Request) -> Response:
    try:
        engine, target = await target_of(request)
        Deployments.serving_target_check(target)
        timeout = _timeout(request)
        int_query(request, "priority")
        data = await request_data(request, target.input_type, engine.settings.max_request_bytes)
        check_input(target, data)
    except ModelbayError as exc:
        return error_response(status_of(exc), exc.message)
    partials = Partials()
    return event_stream(
        engine.requests.direct(target, data, timeout=timeout, origin={"created_by": "ubiops"}, on_update=partials.put),
        partials, request_schemas.deployment_direct,
    )


def event_stream(request: Coroutine[Any, Any, Any], partials: Partials, shape: Shape) -> Response:
    """Run `request` (which sends its partials to `partials.put`) in a task of its own, and stream its
    partials, then its result shaped by `shape`."""
    run = asyncio.create_task(request)
    _running.add(run)
    run.add_done_callback(_running.discard)
    run.add_done_callback(partials.end)  # after every partial: updates arrive before the call's reply
    return _EventStream(partials, run, shape)


@router.post("/projects/{project_name}/deployments/{deployment_name}/requests/stream")
async def deployment_requests_stream(request: Request) -> Response:
    """Run a direct request on the deployment's default version, streaming its partials. Query: `timeout`."""
    return await _stream(request)


@router.post("/projects/{project_name}/deployments/{deployment_name}/versions/{version}/requests/stream")
async def deployment_version_requests_stream(request: Request, version: str) -> Response:
    """Run a direct request on one version, streaming its partials. Query: `timeout`."""
    return await _stream(request)
