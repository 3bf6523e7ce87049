"""Where a worker's stdout and stderr go: while a request runs, into its capture (what it prints
becomes the request's `logs`, up to a limit); otherwise into the real streams, fd 1 and 2, which
are the instance's log file.

Loaded by `worker.py` by file path, as `wire.py` is: stdlib only, Python 3.8 compatible.
"""

from __future__ import annotations

import io
import sys
from typing import Any, TextIO

MAX_NOTE_CHARS = 64 << 10  # the most of a note (a traceback) a capture keeps


class LogLimitExceeded(Exception):
    """Raised from `write()` once a request has printed more than it may."""


class Capture:
    """What one request prints, up to `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.parts: list[bytes] = []
        self.overflowed = False  # stays set even if user code swallows the exception
        self.message = f"The request printed more than {limit} bytes of logs; output was cut off."

    def write(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8", "replace"))

    def write_bytes(self, data: bytes) -> None:
        if self.overflowed:
            raise LogLimitExceeded(self.message)
        room = self.limit - self.size
        if len(data) <= room:
            self.parts.append(data)
            self.size += len(data)
            return
        self.parts.append(bytes(data[:room]))
        self.size = self.limit
        self.overflowed = True
        raise LogLimitExceeded(self.message)

    def note(self, text: str) -> None:
        """Our own additions (tracebacks), outside the user's budget."""
        self.parts.append(text[:MAX_NOTE_CHARS].encode("utf-8", "replace"))

    def text(self) -> str:
        return b"".join(self.parts).decode("utf-8", "replace")


class Output:
    """The target of sys.stdout and sys.stderr: `capture` while a request runs, else the real streams."""

    def __init__(self) -> None:
        self.capture: Capture | None = None  # the running request's capture, if any

    def install(self) -> None:
        """Become sys.stdout/sys.stderr, once, so loggers bound at import time follow it too."""
        sys.stdout = _Router(sys.__stdout__, self)
        sys.stderr = _Router(sys.__stderr__, self)


class _Router(io.TextIOBase):
    """sys.stdout or sys.stderr: writes go to the running request's capture, or to the real stream."""

    def __init__(self, real: TextIO, output: Output) -> None:
        super().__init__()
        self._real = real
        self._output = output
        self._buffer = _BinaryRouter(self)

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "replace"

    @property
    def buffer(self) -> _BinaryRouter:
        return self._buffer

    def write(self, text: str) -> int:  # type: ignore[override]
        capture = self._output.capture
        if capture is None:
            return self._real.write(text)
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        capture.write(text)
        return len(text)

    def flush(self) -> None:
        if self._output.capture is None:
            self._real.flush()

    def fileno(self) -> int:
        return self._real.fileno()

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


class _BinaryRouter(io.RawIOBase):
    """`sys.stdout.buffer`, for code that writes bytes."""

    def __init__(self, text: _Router) -> None:
        super().__init__()
        self._text = text

    def write(self, data: Any) -> int:
        capture = self._text._output.capture
        if capture is None:
            real = self._text._real
            real.flush()
            return real.buffer.write(data)  # type: ignore[attr-defined, no-any-return]
        capture.write_bytes(bytes(data))
        return len(data)

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._text.fileno()
