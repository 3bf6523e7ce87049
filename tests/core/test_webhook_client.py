"""The webhook client against receivers on loopback that answer as told: kept connections, answers
with and without a length, too long, too late or never, and https."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trustme

from modelbay.core.webhook_client import MAX_ANSWER_BYTES, ServerDisconnected, WebhookClient
from modelbay.core.webhooks import post_signed

pytestmark = pytest.mark.timeout(60)

SECRET = "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Receiver:
    """A raw HTTP receiver: `handler(reader, writer, n)` answers the n-th request (from 0) as it likes;
    `requests` holds each request's head and body, `connections` counts the connections made."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self.port = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                self.requests.append((head, await reader.readexactly(length)))
                await self.handler(reader, writer, len(self.requests) - 1)
                if writer.is_closing():
                    return
        finally:
            writer.close()


@asynccontextmanager
async def receiving(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[Receiver]:
    receiver = Receiver(handler)
    server = await asyncio.start_server(receiver.serve, "127.0.0.1", 0, ssl=tls)
    receiver.port = server.sockets[0].getsockname()[1]
    async with server:
        yield receiver


def answering(status: int = 200, body: bytes = b"ok") -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))
        await writer.drain()
    return handle


def posted_in_turn(handler: Handler, count: int) -> tuple[Receiver, list[int]]:
    """`count` POSTs one after another to a receiver answering with `handler`: it, and their statuses."""
    async def run() -> tuple[Receiver, list[int]]:
        async with receiving(handler) as receiver, WebhookClient(allow_private=True) as client:
            url = f"http://127.0.0.1:{receiver.port}/"
            return receiver, [await client.post(url, b"{}", {}, 5) for _ in range(count)]

    return asyncio.run(run())


def test_posts_to_one_receiver_share_a_kept_connection_and_send_what_was_given() -> None:
    async def run() -> tuple[Receiver, list[int]]:
        async with receiving(answering(201)) as receiver, WebhookClient(allow_private=True) as client:
            url = f"http://127.0.0.1:{receiver.port}/hook?x=1"
            statuses = [await client.post(url, b'{"n":%d}' % i, {"X-A": "b"}, 5) for i in range(3)]
            return receiver, statuses

    receiver, statuses = asyncio.run(run())
    assert statuses == [201, 201, 201]
    assert receiver.connections == 1
    head, body = receiver.requests[2]
    assert head.startswith(b"POST /hook?x=1 HTTP/1.1\r\n") and b"\r\nX-A: b\r\n" in head
    assert f"\r\nHost: 127.0.0.1:{receiver.port}\r\n".encode() in head
    assert body == b'{"n":2}'


def test_posts_at_once_each_get_their_own_connection() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await asyncio.sleep(0.05)
        await answering()(reader, writer, n)

    async def run() -> tuple[Receiver, list[int]]:
        async with receiving(slow) as receiver, WebhookClient(allow_private=True) as client:
            url = f"http://127.0.0.1:{receiver.port}/"
            statuses = await asyncio.gather(*(client.post(url, b"{}", {}, 5) for _ in range(4)))
            statuses.append(await client.post(url, b"{}", {}, 5))  # on one of the four, kept
            return receiver, statuses

    receiver, statuses = asyncio.run(run())
    assert statuses == [200] * 5 and receiver.connections == 4


def test_a_kept_connection_the_receiver_closed_is_replaced_without_a_failure() -> None:
    """The receiver closes its side after the first answer, and under the third POST before answering
    it: neither is a failed POST; the third is made again on a new connection."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 2:
            writer.transport.abort()
            return
        await answering()(reader, writer, n)
        if n == 0:
            writer.transport.abort()  # closes without saying so in the answer: the client still holds it

    receiver, statuses = posted_in_turn(handle, 3)
    assert statuses == [200, 200, 200]
    assert (len(receiver.requests), receiver.connections) == (4, 3)


def test_answers_without_a_length_chunked_or_too_long_give_their_status() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 0:  # chunked
            writer.write(b"HTTP/1.1 202 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        elif n == 1:  # longer than the client reads
            writer.write(b"HTTP/1.1 200 X\r\nContent-Length: %d\r\n\r\n" % (4 * MAX_ANSWER_BYTES))
            writer.write(b"x" * (2 * MAX_ANSWER_BYTES))
        else:  # no length: read until the connection closes
            writer.write(b"HTTP/1.1 201 X\r\nConnection: close\r\n\r\nall of it")
            writer.close()
        await writer.drain()

    receiver, statuses = posted_in_turn(handle, 3)
    assert statuses == [202, 200, 201]
    assert receiver.connections == 2  # the too long answer's connection was not kept


def test_no_answer_in_time_or_at_all_is_a_failed_attempt_that_says_so() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 0:
            await asyncio.sleep(2)  # past the timeout
        else:
            writer.transport.abort()

    async def run() -> list[str | None]:
        async with receiving(handle) as receiver, WebhookClient(allow_private=True) as client:
            url = f"http://127.0.0.1:{receiver.port}/"
            with pytest.raises(TimeoutError):
                await client.post(url, b"{}", {}, 0.2)
            with pytest.raises(ServerDisconnected):
                await client.post(url, b"{}", {}, 5)
            attempt = await post_signed(client, url, SECRET, b"{}")
            return [attempt.error]

    assert asyncio.run(run()) == ["ServerDisconnected: the endpoint closed the connection without an answer"]


def test_a_receiver_that_is_not_listening_is_a_connect_error() -> None:
    async def run() -> str | None:
        async with receiving(answering()) as receiver:
            port = receiver.port
        async with WebhookClient(allow_private=True) as client:
            return (await post_signed(client, f"http://127.0.0.1:{port}/", SECRET, b"{}")).error

    assert asyncio.run(run()) == "ConnectError: Connection refused"


def test_https_receivers_are_verified() -> None:
    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_tls)
    trusting = ssl.create_default_context()
    authority.configure_trust(trusting)

    async def run() -> tuple[int, str | None]:
        async with receiving(answering(200), tls=server_tls) as receiver:
            url = f"https://localhost:{receiver.port}/hook"
            async with WebhookClient(allow_private=True, tls=trusting) as client:
                status = await client.post(url, b"{}", {}, 5)
            async with WebhookClient(allow_private=True) as client:  # the system's authorities do not know it
                refused = await post_signed(client, url, SECRET, b"{}")
            return status, refused.error

    status, error = asyncio.run(run())
    assert status == 200
    assert error is not None and "CERTIFICATE_VERIFY_FAILED" in error
