"""The pipe design: the ceiling of modelbay's architecture with nothing recorded, for bench/peers.py.

A bare ASGI front (as `bench/baseline_app.py`) that hands each request's parsed body to one worker
process over a pipe and answers with what comes back, in modelbay's UbiOps direct-response shape.
Several calls are in flight in the pipe at once; the worker runs them one at a time, in order, and
returns `{"x": x}` for each (the no-op model). No store, no scheduler, no logs, no timeouts: what is
left is HTTP, the two hops over the pipe and the model call.

Run: `uvicorn bench.pipe_app:app --port P --no-access-log --log-level warning`.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections import deque

import orjson

from bench.baseline_app import HEALTH, Receive, Scope, Send, read_body

#: The worker: one JSON line in, one JSON line out, in order.
WORKER = """
import sys, orjson
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    data = orjson.loads(line)
    out.write(orjson.dumps({"x": data["x"]}) + b"\\n")
    out.flush()
"""

HEADERS = [(b"content-type", b"application/json")]


class Worker:
    """One worker process and the replies it owes, oldest first."""

    def __init__(self) -> None:
        self.process: asyncio.subprocess.Process | None = None
        self.waiting: deque[asyncio.Future[bytes]] = deque()

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", WORKER, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.waiting.popleft().set_result(line)

    def call(self, body: bytes) -> asyncio.Future[bytes]:
        assert self.process is not None and self.process.stdin is not None
        reply = asyncio.get_running_loop().create_future()
        self.waiting.append(reply)
        self.process.stdin.write(body.replace(b"\n", b" ") + b"\n")
        return reply

    async def stop(self) -> None:
        if self.process is not None and self.process.stdin is not None:
            self.process.stdin.close()
            await self.process.wait()


worker = Worker()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await worker.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await worker.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["method"] != "POST":
        out = HEALTH
    else:
        result = orjson.loads(await worker.call(await read_body(receive)))
        out = orjson.dumps({"id": str(uuid.uuid4()), "deployment": "noop", "version": "v1", "status": "completed",
                            "success": True, "result": result, "error_message": None, "timeout": 300})
    await send({"type": "http.response.start", "status": 200,
                "headers": [*HEADERS, (b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})
