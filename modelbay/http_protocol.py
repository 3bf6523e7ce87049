"""The server's HTTP/1.1 protocol: uvicorn's, with each response's head and body sent as one write.

uvicorn writes a response's status line and headers as soon as the app starts the response, and its
body as a second write. On loopback and on most networks each write is a segment of its own that
wakes the client: two system calls and two wake-ups a response, where one does. So the head is held
until the body follows (an app sends it in the same step, as `Front` and Starlette's responses do),
or until the loop's next turn (a streamed response whose first piece takes a while; a
`100 Continue`), whichever comes first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: How a response's head ends; a write that ends so is held for what follows it.
_HEAD_END = b"\r\n\r\n"


class JoinedWrites:
    """A transport whose writes ending a response's head wait for the next write (or the loop's
    next turn) to go out with it."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        # What uvicorn calls for every request, without a detour through `__getattr__`.
        self.is_closing = transport.is_closing
        self.pause_reading = transport.pause_reading
        self.resume_reading = transport.resume_reading

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is not None:
            data, self._held = self._held + data, None
        elif data[-4:] == _HEAD_END:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # the rest of the transport, as it is
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on `JoinedWrites`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(JoinedWrites(transport, self.loop))  # type: ignore[arg-type]
