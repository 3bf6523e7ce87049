"""The client every webhook POST goes through: HTTP/1.1 on kept-alive connections, to checked addresses.

A job POSTs once per item, so this is on a hot path: a POST through aiohttp cost the server three
to four times the CPU of one written here, with an asyncio protocol and httptools' response parser
(what uvicorn parses requests with; figures in bench/README.md). It does only what a webhook POST
needs: connections made to the addresses `webhook_targets` checked (a name is resolved and checked
for each new connection, so a name rebound since the last one is caught), TLS for https, no
redirects (a 3xx is the answer), no proxy, no cookies, and the answer's status; the answer's body
is read up to a bound and dropped.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from dataclasses import dataclass

import httptools
import yarl

from modelbay.core.webhook_targets import checked_addresses, parsed_endpoint

#: Most bytes of a receiver's answer read (and dropped: it is never shown), so the connection can be reused.
MAX_ANSWER_BYTES = 64 * 1024

#: How long a connection is kept unused before it is closed (aiohttp's default); checked when its
#: receiver is POSTed to again.
KEEP_ALIVE_S = 15.0

_DEFAULT_PORTS = {"http": 80, "https": 443}


class PostError(Exception):
    """A POST that got no answer; its class name and text are what the delivery records."""


class ConnectError(PostError):
    """No connection could be made; `os_error` is why (its `strerror` is what users know)."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(os_error.strerror or str(os_error))
        self.os_error = os_error


class TLSError(PostError):
    """The receiver's certificate did not verify, or TLS failed otherwise."""


class ServerDisconnected(PostError):
    """The receiver closed the connection before its answer was complete."""


class BadAnswer(PostError):
    """The receiver's answer is not HTTP."""


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> bytes:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}").encode("ascii")


class _Connection(asyncio.Protocol):
    """One connection, one POST at a time: `send` writes a request and returns a future of its
    answer's status."""

    def __init__(self, max_answer_bytes: int) -> None:
        self._max = max_answer_bytes
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[int] | None = None
        self._status = 0
        self._read = 0
        self._begun = False
        self.reusable = False
        self.closed = False
        self.idle_since = 0.0  # loop time it was last put back in its pool

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadAnswer(str(exc) or "the answer is not HTTP"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._status >= 200:  # an answer read until the connection closes (no length given)
            self._done()
        else:
            self._fail(ServerDisconnected("the endpoint closed the connection without an answer"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._begun = True

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._read += len(body)
        if self._read > self._max:
            self._done()  # the status is known; the rest of the answer is not read
            self.close()

    def on_message_complete(self) -> None:
        if self._status < 200:  # an interim answer (100 Continue): the real one follows
            self._status = 0
            return
        self.reusable = self._parser.should_keep_alive()
        self._done()

    # the POST
    @property
    def answered_anything(self) -> bool:
        return self._begun

    def send(self, request: bytes) -> asyncio.Future[int]:
        assert self._transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._status, self._read, self._begun, self.reusable = 0, 0, False, False
        self._transport.write(request)
        return self._waiter

    def time_out(self) -> None:
        self._fail(TimeoutError())
        self.close()

    def close(self) -> None:
        self.reusable = False
        if self._transport is not None:
            self._transport.close()

    def _done(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(self._status)

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)


class WebhookClient:
    """POSTs to webhook endpoints over kept connections (idle ones pooled per scheme, host and port)."""

    def __init__(self, *, allow_private: bool, max_answer_bytes: int = MAX_ANSWER_BYTES,
                 tls: ssl.SSLContext | None = None) -> None:
        """`tls` verifies https receivers: by default against the system's certificate authorities."""
        self._allow_private = allow_private
        self._max_answer_bytes = max_answer_bytes
        self._idle: dict[_Origin, list[_Connection]] = {}  # oldest first
        self._ssl = tls

    async def post(self, endpoint: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
        """POST `body` to `endpoint` and return the answer's status. Raises `RefusedTarget` for an
        address webhooks may not reach, `InvalidInput` for an endpoint that is not an http(s) URL,
        `PostError` when there is no answer, `TimeoutError` after `timeout_s`."""
        url, port = parsed_endpoint(endpoint)
        origin = _Origin(url.scheme, url.raw_host or "", port)
        request = _request_bytes(url, origin, body, headers)
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + timeout_s
        idle = self._idle.setdefault(origin, [])
        while idle and idle[0].idle_since < now - KEEP_ALIVE_S:
            idle.pop(0).close()  # unused too long: the receiver may be about to close it
        while idle:  # a kept connection the receiver may have closed since: try it, once
            connection = idle.pop()
            if connection.closed:
                continue
            try:
                return await self._exchange(idle, connection, request, deadline)
            except ServerDisconnected:
                if connection.answered_anything:
                    raise
        async with asyncio.timeout_at(deadline):
            connection = await self._connect(origin)
        return await self._exchange(idle, connection, request, deadline)

    @staticmethod
    async def _exchange(idle: list[_Connection], connection: _Connection, request: bytes, deadline: float) -> int:
        loop = asyncio.get_running_loop()
        waiter = connection.send(request)
        timer = loop.call_at(deadline, connection.time_out)  # cheaper than a timeout context
        try:
            status = await waiter
        except BaseException:
            connection.close()
            raise
        finally:
            timer.cancel()
        if connection.reusable and not connection.closed:
            connection.idle_since = loop.time()
            idle.append(connection)
        else:
            connection.close()
        return status

    async def _connect(self, origin: _Origin) -> _Connection:
        """A new connection to the first of the host's checked addresses that accepts one."""
        # In a thread: getaddrinfo blocks. Raises `RefusedTarget`; a name that does not resolve
        # is a failed connection (`socket.gaierror`, an OSError).
        try:
            addresses = await asyncio.to_thread(checked_addresses, origin.host, origin.port,
                                                allow_private=self._allow_private)
        except OSError as exc:
            raise ConnectError(exc) from exc
        loop = asyncio.get_running_loop()
        tls = self._tls() if origin.scheme == "https" else None
        failure: OSError | None = None
        for address in addresses:
            try:
                _, connection = await loop.create_connection(
                    lambda: _Connection(self._max_answer_bytes), address, origin.port, ssl=tls,
                    server_hostname=origin.host if tls else None)
                return connection
            except ssl.SSLError as exc:
                raise TLSError(str(exc)) from exc
            except OSError as exc:
                failure = exc
        raise ConnectError(failure or OSError(f"{origin.host} resolves to no address"))

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def aclose(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    async def __aenter__(self) -> WebhookClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


def _request_bytes(url: yarl.URL, origin: _Origin, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [b"POST ", (url.raw_path_qs or "/").encode("ascii"), b" HTTP/1.1\r\nHost: ", origin.host_header,
             b"\r\nContent-Length: ", str(len(body)).encode(), b"\r\n"]
    if url.raw_user is not None:  # credentials in the URL: basic authentication, as browsers send it
        credentials = f"{url.user or ''}:{url.password or ''}".encode()
        lines += [b"Authorization: Basic ", base64.b64encode(credentials), b"\r\n"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} holds a line break")
        lines += [name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n"]
    lines += [b"\r\n", body]
    return b"".join(lines)
