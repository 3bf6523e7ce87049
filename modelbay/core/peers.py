"""Peers: a call run on an instance another node of the cluster holds, over HTTP.

A node that may not start an instance of a pool (the cluster runs the pool's maximum) sends the
call to a node that holds one: `POST /_node/calls` there (`modelbay.node_calls`), which runs it
on its own instances as its own calls, and streams back a line when the call starts running, the
call's updates and then its outcome, one JSON line each. The request stays recorded by the node
that accepted it. When the caller goes away (a cancel), the connection closes and the other node
stops the call. When the other node goes away, a call that had not started there is sent again.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import orjson

from modelbay.core.deployments import Target
from modelbay.core.instance_slots import NoCapacity
from modelbay.runtime.base import Call, CallNotStarted, CallOutcome, CallTimedOut, InstanceLost, InstanceStartFailed

if TYPE_CHECKING:
    import aiohttp

#: The header a node proves itself with to another.
TOKEN_HEADER = "x-modelbay-node"

#: The path of the calls a node runs for others.
CALLS_PATH = "/_node/calls"


def node_token(signing_key: bytes) -> str:
    """What nodes of one cluster show each other: derived from the key they share in the store."""
    return hmac.new(signing_key, b"modelbay node calls", hashlib.sha256).hexdigest()


def encode_call(target: Target, call: Call, timeout: float, priority: int, updates: bool) -> bytes:
    return orjson.dumps({
        "version_id": target.version_id, "pool": target.pool, "request_id": call.request_id, "data": call.data,
        "context": call.context, "timeout": timeout, "priority": priority, "updates": updates,
    })


#: The line that says the call started running on an instance.
STARTED_LINE = b'{"started":true}\n'


def encode_update(update: str) -> bytes:
    return orjson.dumps({"update": update}) + b"\n"


def encode_outcome(outcome: CallOutcome) -> bytes:
    return orjson.dumps({"outcome": {"ok": outcome.ok, "result": outcome.result, "error": outcome.error,
                                     "logs": outcome.logs}}) + b"\n"


def encode_error(exc: Exception) -> bytes:
    """The line that ends a call that raised (one of what `Scheduler.run` raises)."""
    if isinstance(exc, NoCapacity):
        message: dict[str, Any] = {"error": "no_capacity"}
    elif isinstance(exc, CallTimedOut):
        message = {"error": "timed_out", "timeout": exc.timeout, "logs": exc.logs}
    elif isinstance(exc, InstanceStartFailed):
        message = {"error": "start_failed", "message": exc.message, "logs": exc.logs}
    else:
        assert isinstance(exc, InstanceLost)
        message = {"error": "lost", "message": exc.message, "logs": exc.logs}
    return orjson.dumps(message) + b"\n"


def decode_end(message: dict[str, Any]) -> CallOutcome:
    """The outcome a call's last line holds; raises what the call raised on the other node."""
    if "outcome" in message:
        return CallOutcome(**message["outcome"])
    error = message.get("error")
    if error == "no_capacity":
        raise NoCapacity
    if error == "timed_out":
        raise CallTimedOut(message["timeout"], message.get("logs", ""))
    if error == "start_failed":
        raise InstanceStartFailed(message["message"], message.get("logs", ""))
    raise InstanceLost(message.get("message") or "The node running this request could not run it",
                       message.get("logs", ""))


class Peers:
    """Sends calls to other nodes (see the module's docstring).

    aiohttp: an httpx request cost ~1 ms of the event loop's CPU, an aiohttp one ~0.1 ms. Its
    connections are TCP_NODELAY (a call's headers and body go in two writes, and the second would
    otherwise wait for the other node's delayed ACK). aiohttp is loaded and the session made on
    first use, on the loop that uses it: a server alone never sends calls (and the first call pays
    the import, ~0.1 s, once).
    """

    def __init__(self, token: str) -> None:
        self._token = token
        self._session: aiohttp.ClientSession | None = None

    async def run(self, address: str, target: Target, call: Call, timeout: float, priority: int,
                  on_update: Callable[[str], None] | None,
                  on_start: Callable[[], None] | None = None) -> CallOutcome:
        """Run a call on an instance the node at `address` holds; `on_start` is told when it starts
        running there. Raises what `Scheduler.run` raises, `NoCapacity` when that node has no
        instance of the pool (or is gone), and `CallNotStarted` when it went away before the call
        started."""
        import aiohttp  # only a node of a cluster sends calls: a server alone never loads it (~9.5 MiB)

        body = encode_call(target, call, timeout, priority, on_update is not None)
        started = False
        try:
            async with self._connected().post(address.rstrip("/") + CALLS_PATH, data=body,
                                              headers={TOKEN_HEADER: self._token}) as response:
                if response.status != 200:
                    raise InstanceLost(f"The node at {address} refused the call (HTTP {response.status})")
                async for line in _lines(response.content):
                    message = orjson.loads(line)
                    if "started" in message:
                        started = True
                        if on_start is not None:
                            on_start()
                        continue
                    if "update" in message:
                        if on_update is not None:
                            on_update(message["update"])
                        continue
                    return decode_end(message)
        except aiohttp.ClientConnectorError:
            raise NoCapacity from None  # that node is gone: try another
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if not started:
                raise CallNotStarted() from None
            raise InstanceLost(f"The node running this request stopped ({exc.__class__.__name__})") from None
        if not started:
            raise CallNotStarted()
        raise InstanceLost("The node running this request stopped")

    def _connected(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp

            # No limit on connections (each call holds one for as long as it runs) and no read
            # timeout: a call takes as long as its own timeout, which the other node enforces.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), trust_env=False,
                                                  timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _lines(stream: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The stream's non-empty lines, however long (aiohttp's own line reader refuses one longer
    than its buffer, and an outcome line holds the call's whole result)."""
    buffer = bytearray()
    async for chunk in stream.iter_any():
        searched = len(buffer)  # the buffer before the chunk has no line end: search only the new part
        buffer += chunk
        while (end := buffer.find(b"\n", searched)) >= 0:
            if end:
                yield bytes(buffer[:end])
            del buffer[:end + 1]
            searched = 0
