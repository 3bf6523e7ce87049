"""The baseline for bench/direct_requests.py and bench/batch_requests.py: a bare ASGI callable,
no framework, no model, no store.

Answers a POST to a path ending in `/requests/batch` as modelbay's UbiOps batch create does: HTTP
201 and, for each item of the parsed JSON array (a non-array body is one item), one
`{"id", "deployment", "version", "status": "pending", "time_created"}`. Answers every other POST
with the JSON shape modelbay's UbiOps direct request answers
(`{"id", "deployment", "version", "status", "success", "result", "error_message", "timeout"}`),
echoing the parsed request body as `result`; any other method gets `{"status": "ok"}` (health).

Run: `uvicorn bench.baseline_app:app --port P --no-access-log --log-level warning`.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

try:
    import orjson

    dumps: Callable[[Any], bytes] = orjson.dumps
    loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - orjson comes with modelbay
    import json

    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    loads = json.loads

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HEALTH = b'{"status":"ok"}'


def _deployment_name(path: str) -> str:
    """`/v2.1/projects/p/deployments/d/requests` -> `d` (what modelbay echoes back)."""
    parts = path.split("/")
    try:
        return parts[parts.index("deployments") + 1]
    except (ValueError, IndexError):
        return ""


async def read_body(receive: Receive) -> bytes:
    """The whole body of an HTTP request, from its ASGI messages."""
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    body = await read_body(receive)
    status = 200
    if scope["method"] == "POST" and scope["path"].endswith("/requests/batch"):
        try:
            data = loads(body) if body else ""
            items = data if isinstance(data, list) else [data]
            deployment = _deployment_name(scope["path"])
            created = datetime.now(UTC).isoformat(timespec="milliseconds")
            out = dumps(
                [
                    {
                        "id": str(uuid.uuid4()),
                        "deployment": deployment,
                        "version": "v1",
                        "status": "pending",
                        "time_created": created,
                    }
                    for _ in items
                ]
            )
            status = 201
        except ValueError:
            status, out = 400, b'{"error":"The request body is not valid JSON"}'
    elif scope["method"] == "POST":
        try:
            data = loads(body) if body else ""
            out = dumps(
                {
                    "id": str(uuid.uuid4()),
                    "deployment": _deployment_name(scope["path"]),
                    "version": "v1",
                    "status": "completed",
                    "success": True,
                    "result": data,
                    "error_message": None,
                    "timeout": 300,
                }
            )
        except ValueError:
            status, out = 400, b'{"error":"The request body is not valid JSON"}'
    else:
        out = HEALTH
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": out})
