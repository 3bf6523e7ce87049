"""A loopback webhook receiver for tests: checks every signature, fails on demand, counts deliveries."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from modelbay.core.webhooks import SIGNATURE_HEADER, verify


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]
    signature_ok: bool
    answered: int
    at: float = field(default_factory=time.time)  # when it arrived

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    """Answers 200 to signed POSTs. `fail_next` makes the next N answer 500; `fail_always` all of them;
    `redirect_to` makes every answer a 307 there. `answer` is the body of every answer."""

    secret: str = field(default_factory=lambda: base64.b64encode(b"k" * 32).decode())
    port: int = 0
    received: list[Received] = field(default_factory=list)
    fail_next: int = 0
    fail_always: bool = False
    redirect_to: str | None = None
    answer: bytes = b"ok"
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def handle(self, body: bytes, headers: dict[str, str]) -> int:
        key = base64.b64decode(self.secret)
        ok = verify(key, body, headers.get(SIGNATURE_HEADER.lower(), ""))
        with self._lock:
            if not ok:
                code = 401
            elif self.redirect_to is not None:
                code = 307
            elif self.fail_always or self.fail_next > 0:
                self.fail_next = max(0, self.fail_next - 1)
                code = 500
            else:
                code = 200
            self.received.append(Received(body, headers, ok, code))
        return code

    def delivered(self) -> list[Received]:
        """What was accepted (answered 200), in arrival order."""
        with self._lock:
            return [r for r in self.received if r.answered == 200]


@contextmanager
def running_receiver(**kwargs: Any) -> Iterator[Receiver]:
    receiver = Receiver(**kwargs)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            code = receiver.handle(body, {k.lower(): v for k, v in self.headers.items()})
            self.send_response(code)
            if receiver.redirect_to is not None:
                self.send_header("Location", receiver.redirect_to)
            self.send_header("Content-Length", str(len(receiver.answer)))
            self.end_headers()
            self.wfile.write(receiver.answer)

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 256  # the default backlog of 5 resets connections under a burst
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
