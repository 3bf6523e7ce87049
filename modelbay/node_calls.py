"""The calls a node runs for the other nodes of its cluster, on instances it holds (`core.peers`).

Not part of any dialect: only nodes that share the store's signing key may call it.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from modelbay.core.errors import NotFound, Unavailable
from modelbay.core.instance_slots import NoCapacity
from modelbay.core.peers import CALLS_PATH, STARTED_LINE, TOKEN_HEADER, encode_error, encode_outcome, encode_update
from modelbay.runtime.base import Call, CallTimedOut, InstanceLost, InstanceStartFailed

router = APIRouter(include_in_schema=False)


@router.post(CALLS_PATH)
async def run_call(request: Request) -> Response:
    engine = request.app.state.engine
    if not hmac.compare_digest(request.headers.get(TOKEN_HEADER, ""), engine.node_token):
        return Response(status_code=403)
    try:
        body = orjson.loads(await request.body())
        version_id, pool, call = body["version_id"], body["pool"], Call(body["request_id"], body["data"],
                                                                        body["context"])
        timeout, priority, updates = float(body["timeout"]), int(body["priority"]), bool(body["updates"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return Response(status_code=400)
    try:
        target = engine.pool_target(version_id, pool)
    except (NotFound, Unavailable):  # gone, or not served here (yet): the caller looks elsewhere
        return StreamingResponse(iter([encode_error(NoCapacity())]), media_type="application/x-ndjson")
    queued: asyncio.Queue[bytes] = asyncio.Queue()  # the start and the updates, until they are sent

    async def lines() -> AsyncIterator[bytes]:
        # When the caller goes away, the server cancels this generator, and with it the call.
        run = asyncio.ensure_future(engine.scheduler.run(
            target, call, timeout, priority, (lambda update: queued.put_nowait(encode_update(update))) if updates
            else None, here_only=True, on_start=lambda: queued.put_nowait(STARTED_LINE)))
        try:
            while not run.done():
                next_update = asyncio.ensure_future(queued.get())
                await asyncio.wait([run, next_update], return_when=asyncio.FIRST_COMPLETED)
                next_update.cancel()
                if next_update.done() and not next_update.cancelled():
                    yield next_update.result()
            while not queued.empty():
                yield queued.get_nowait()
            try:
                yield encode_outcome(run.result())
            except (NoCapacity, CallTimedOut, InstanceLost, InstanceStartFailed) as exc:
                yield encode_error(exc)
        finally:
            run.cancel()

    return StreamingResponse(lines(), media_type="application/x-ndjson")
