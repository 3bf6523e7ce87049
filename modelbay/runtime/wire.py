"""The wire format between the server and a worker process.

Stdlib only, and importable by file path: the worker loads this file into the version's
own interpreter, which may have nothing but the standard library (and no modelbay).

Channel: two pipes, one per direction, never stdout/stderr (those belong to user code),
and a third the server writes one byte to for `LOGS_SIGNAL` (a signal cannot reach into the
worker's sandbox). The worker learns their fds from its argv:
`worker.py <read_fd> <write_fd> <interrupt_fd>`.

Framing: each message is a 4-byte big-endian length followed by that many bytes of
UTF-8 JSON holding one object with a "type" key. Frames above `MAX_FRAME` are refused.

Server -> worker:
    {"type": "init", "package_dir": str, "handler": str | null,
     "init_context": {...}, "max_log_bytes": int,
     "memory_limit_mib": int | null}                         first message, exactly once
    {"type": "call", "id": str, "data": any, "context": {...}}
    {"type": "stop"}                                         exit politely

Worker -> server:
    {"type": "ready"}                                        package loaded
    {"type": "start_failed", "error": str}                   package did not load; exits
    {"type": "update", "id": str, "text": str}               a `streaming_update` partial
    {"type": "result", "id": str, "ok": bool, "result": any, "error": str | null, "logs": str,
     "retire": bool}                                         retire: the worker exits after it
    {"type": "logs", "id": str, "logs": str}                 answer to `LOGS_SIGNAL`

Conventions:
    Batches: a call whose `data` is a list AND whose context has `"batch_list": true`
    (`BATCH_KEY`) is a batch. The worker then calls `Deployment.requests(list)` if it
    exists, else `request(item)` once per item, and answers with the list of results.
    A list without the flag is passed to `request` as one ordinary input.
    Per-call environment: a call whose context has `"environment": {name: value}`
    (`ENVIRONMENT_KEY`) runs with those variables set, and restored afterwards.
    HTTP calls: a call whose context has `"http": {"content_type", "encoding", "headers"}`
    (`HTTP_KEY`) carries an HTTP body in `data` (text, or base64 text when `encoding` is
    "base64"). Handler-style code then gets it as the request body, and the result is the
    JSON text of `{"status_code", "content_type", "body", "encoding"}`; Deployment-class
    code is called as usual. Both keys are removed from the context user code sees.
    Logs of a timed-out call: the server writes a byte to the interrupt pipe, on which the
    worker raises `LOGS_SIGNAL` (SIGUSR1) in itself and answers with a "logs" message holding
    what the request printed so far, if it can (it cannot while stuck in C code); the server
    then kills it.
    Out of memory: a call that ran out of memory (`MemoryError`) fails with
    "out of memory (limit N MiB)" and `retire`: the worker exits, the server replaces it.
"""

from __future__ import annotations

import json
import signal
from typing import Any, BinaryIO

HEADER_SIZE = 4
MAX_FRAME = 256 << 20  # 256 MiB: results of several MB are normal, a runaway is not
BATCH_KEY = "batch_list"
ENVIRONMENT_KEY = "environment"
HTTP_KEY = "http"
LOGS_SIGNAL = signal.SIGUSR1


class FrameTooLarge(Exception):
    """Raised when a frame is (or announces itself) larger than `MAX_FRAME`."""

    def __init__(self, size: int) -> None:
        super().__init__(f"a message of {size} bytes is larger than the limit of {MAX_FRAME} bytes")
        self.size = size


def frame(body: bytes) -> bytes:
    """Prefix one encoded message with its length."""
    if len(body) > MAX_FRAME:
        raise FrameTooLarge(len(body))
    return len(body).to_bytes(HEADER_SIZE, "big") + body


def encode(message: dict[str, Any]) -> bytes:
    """Encode a message with the stdlib (the server may use a faster encoder).

    Raises TypeError / ValueError / UnicodeEncodeError for values JSON cannot carry
    (objects, NaN, lone surrogates), so callers can report them.
    """
    text = json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.encode("utf-8")


def read_message(stream: BinaryIO) -> dict[str, Any] | None:
    """Blocking read of one message; None at end of stream (the other side is gone)."""
    header = stream.read(HEADER_SIZE)
    if len(header) < HEADER_SIZE:
        return None
    size = int.from_bytes(header, "big")
    if size > MAX_FRAME:
        raise FrameTooLarge(size)
    body = stream.read(size)
    if len(body) < size:
        return None
    message = json.loads(body)
    if not isinstance(message, dict):
        raise ValueError("a message must be a JSON object")
    return message


class FrameBuffer:
    """Incremental frame splitter for a non-blocking reader: feed bytes, get message bodies."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Return the complete bodies now available; keeps any partial frame for later.

        Raises FrameTooLarge as soon as a header announces an oversized frame.
        """
        buffer = self._buffer
        if not buffer and len(data) >= HEADER_SIZE:
            # Fast path (the common small message): one whole frame in one chunk, no copy.
            size = int.from_bytes(data[:HEADER_SIZE], "big")
            if size > MAX_FRAME:
                raise FrameTooLarge(size)
            if len(data) == HEADER_SIZE + size:
                return [data[HEADER_SIZE:]]
        buffer += data
        bodies: list[bytes] = []
        start = 0
        while len(buffer) - start >= HEADER_SIZE:
            size = int.from_bytes(buffer[start : start + HEADER_SIZE], "big")
            if size > MAX_FRAME:
                raise FrameTooLarge(size)
            end = start + HEADER_SIZE + size
            if len(buffer) < end:
                break
            bodies.append(buffer[start + HEADER_SIZE : end])  # a bytearray copy; JSON parsers take it
            start = end
        if start:
            del buffer[:start]
        return bodies
