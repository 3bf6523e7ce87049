"""A response's head waits for its body, so both go out in one write; a head alone goes out at the
loop's next turn."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from modelbay.http_protocol import JoinedWrites
from tests.fixtures.server import Server


class Recorded:
    """A transport that records its writes (the pure logic of `JoinedWrites`, on a real loop)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def get_extra_info(self, name: str) -> str:
        return f"the transport's {name}"


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


def joined(scenario: Any) -> Recorded:
    """Run `scenario(writes, transport)` on a loop; the transport, with what was written to it."""
    transport = Recorded()

    async def run() -> None:
        await scenario(JoinedWrites(transport, asyncio.get_running_loop()), transport)  # type: ignore[arg-type]

    asyncio.run(run())
    return transport


def test_a_head_and_its_body_go_out_in_one_write() -> None:
    async def scenario(writes: JoinedWrites, _: Recorded) -> None:
        writes.write(HEAD)
        writes.write(memoryview(b"{}"))
        await asyncio.sleep(0)

    assert joined(scenario).writes == [HEAD + b"{}"]


def test_a_head_alone_goes_out_at_the_next_turn_and_other_writes_at_once() -> None:
    seen: list[list[bytes]] = []

    async def scenario(writes: JoinedWrites, transport: Recorded) -> None:
        writes.write(b"a piece of a streamed body")
        writes.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        seen.append(list(transport.writes))
        await asyncio.sleep(0)
        seen.append(list(transport.writes))

    joined(scenario)
    assert seen == [[b"a piece of a streamed body"],
                    [b"a piece of a streamed body", b"HTTP/1.1 100 Continue\r\n\r\n"]]


def test_a_held_head_goes_out_before_a_close_and_not_after_an_abort() -> None:
    async def closed(writes: JoinedWrites, _: Recorded) -> None:
        writes.write(HEAD)
        writes.close()
        await asyncio.sleep(0)

    async def aborted(writes: JoinedWrites, _: Recorded) -> None:
        writes.write(HEAD)
        writes.abort()
        await asyncio.sleep(0)

    transport = joined(closed)
    assert transport.writes == [HEAD] and transport.closed
    transport = joined(aborted)
    assert transport.writes == [] and transport.aborted


def test_the_rest_of_the_transport_is_the_transports() -> None:
    async def scenario(writes: JoinedWrites, _: Recorded) -> None:
        assert writes.get_extra_info("peername") == "the transport's peername"
        assert not writes.is_closing()

    joined(scenario)


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    received = b""
    while marker not in received:
        piece = sock.recv(65536)
        assert piece, f"the server closed the connection after {received!r}"
        received += piece
    return received


def test_a_client_that_expects_100_continue_gets_it_before_it_sends_the_body(
    server: Server, project: dict[str, str]
) -> None:
    body = b"{}"
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            f"POST /v2.1/projects/{project['name']}/deployments HTTP/1.1\r\nHost: modelbay\r\n"
            f"Authorization: Token {project['token']}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        assert _read_until(sock, b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        answer = _read_until(sock, b"\r\n\r\n")
    status = answer.split(b"\r\n", 1)[0]
    assert status.startswith(b"HTTP/1.1 4"), answer  # the body names no deployment: refused, nothing made
