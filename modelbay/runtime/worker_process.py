"""One worker process as the server sees it: its handle (`LocalInstance`), the protocol that reads
its control channel, and the one that copies its fd 1 and 2 into the instance's log file.

`LocalRuntime` (`local.py`) starts, calls and stops these; everything here runs on the server's
event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from modelbay.runtime import wire
from modelbay.runtime.base import InstanceState

logger = logging.getLogger(__name__)

#: An instance's log file is emptied when it reaches this size: what it keeps is the recent output.
INSTANCE_LOG_MAX_BYTES = 8 << 20


class Closed:
    """Why a reply will never come (resolves the waiting future instead of a message)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


TIMED_OUT = Closed("timed out")
CHANNEL_LOST = Closed("channel lost")
STOPPED = Closed("stopped")
LOG_LIMIT = Closed("printed too much")
NOT_STARTED = Closed("ended before it started")  # a call waiting in the worker when the instance ended

#: How long a call given up while it waited in the worker may take to be withdrawn once the calls
#: ahead of it are done; past it, it runs, and nobody waits for it: the worker is ended.
WITHDRAW_GRACE_S = 1.0


@dataclass(eq=False)
class PendingCall:
    """A call sent to the worker and not yet answered. The worker runs them in the order sent: the
    first is running (or about to), the others wait in the worker."""

    id: str
    reply: asyncio.Future[Any]  # its result message, or a `Closed`
    on_update: Callable[[str], None] | None
    on_start: Callable[[], None] | None = None
    given_up: bool = False  # its caller timed out or went away while it waited: withdrawn

    def started(self) -> None:
        """It became the call the worker runs."""
        if self.on_start is not None:
            try:
                self.on_start()
            except Exception:  # a broken listener must not break the channel
                logger.exception("on_start failed for call %s", self.id)


class LocalInstance:
    """Handle of one worker process. Only `id` and `state` are public."""

    def __init__(self, instance_id: str, log_path: Path, scratch: Path, max_log_bytes: int) -> None:
        self._id = instance_id
        self._state = InstanceState.STARTING
        self._log_path = log_path
        self._scratch = scratch  # its private writable directory
        self._max_log_bytes = max_log_bytes
        self._proc: asyncio.subprocess.Process | None = None
        self._interrupt_fd: int | None = None  # a byte written here asks the worker for its logs
        self._output: OutputProtocol | None = None  # the worker's fd 1 and 2
        self._output_transport: asyncio.ReadTransport | None = None
        self._call_output = 0  # bytes the running call wrote to fd 1/2
        self._reader: asyncio.ReadTransport | None = None
        self._writer: asyncio.WriteTransport | None = None
        self._waiter: asyncio.Future[Any] | None = None  # the answer to the init message
        self._calls: deque[PendingCall] = deque()  # sent, not yet answered, in the order sent
        self._grace: asyncio.TimerHandle | None = None  # for a call given up that became the first
        self._logs_waiter: asyncio.Future[str] | None = None  # logs of a timed-out call
        self._channel_lost = False  # the worker's end of the channel is gone
        self._broken: str | None = None  # why the channel was declared unusable, if we did
        self._stopping: asyncio.Future[None] | None = None

    @property
    def id(self) -> str:
        return self._id

    @property
    def state(self) -> InstanceState:
        return self._state

    def __repr__(self) -> str:
        return f"<LocalInstance {self._id} {self._state.value}>"

    # --- called from the channel protocol ---

    @property
    def _running(self) -> PendingCall | None:
        """The call the worker runs (or is about to): the first sent of those not answered."""
        return self._calls[0] if self._calls else None

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "update":
            running = self._running
            if running is not None and message.get("id") == running.id and running.on_update is not None:
                try:
                    running.on_update(message["text"])
                except Exception:  # a broken listener must not break the channel
                    logger.exception("on_update failed for instance %s", self._id)
        elif kind == "logs" or (kind == "result" and self._logs_waiter is not None):
            if self._logs_waiter is not None and not self._logs_waiter.done():
                self._logs_waiter.set_result(str(message.get("logs") or ""))
        elif kind in ("result", "withdrawn"):
            running = self._running
            if running is not None and message.get("id") == running.id:
                self._calls.popleft()
                if not running.reply.done():
                    running.reply.set_result(message)
                self._next_runs()
        elif kind in ("ready", "start_failed"):
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(message)

    def _next_runs(self) -> None:
        """The call that ran was answered: the next one runs, with a log budget of its own."""
        self._call_output = 0
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        running = self._running
        if running is None:
            if self._state is InstanceState.BUSY:
                self._state = InstanceState.IDLE
        elif running.given_up:  # withdrawn: the worker says so at once, unless it had started it
            self._grace = asyncio.get_running_loop().call_later(WITHDRAW_GRACE_S, self._end_given_up, running)
        else:
            running.started()

    def _end_given_up(self, call: PendingCall) -> None:
        if self._running is call:  # it runs, and nobody waits for its answer
            self._kill()

    def _on_channel_lost(self, why: str | None = None) -> None:
        if why is not None and self._broken is None:
            self._broken = why
        self._channel_lost = True
        self._state = InstanceState.STOPPED
        self._resolve(CHANNEL_LOST)
        if self._logs_waiter is not None and not self._logs_waiter.done():
            self._logs_waiter.set_result("")

    def _resolve(self, closed: Closed) -> None:
        """No answer will come: the running call ends with `closed`, the waiting ones never started."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(closed)
        for i, call in enumerate(self._calls):
            if not call.reply.done():
                call.reply.set_result(closed if i == 0 else NOT_STARTED)

    def _on_call_output(self, size: int) -> None:
        """Raw writes to fd 1/2 during a call count against its log budget, as prints do."""
        self._call_output += size
        if self._call_output > self._max_log_bytes and self._state is InstanceState.BUSY:
            self._kill()  # it may go on writing: the only way to stop it
            self._resolve(LOG_LIMIT)

    # --- process control ---

    def _kill(self) -> None:
        """SIGKILL the worker and whatever it started (its own session), synchronously."""
        self._state = InstanceState.STOPPED
        proc = self._proc
        # Only while unreaped: then the process group id cannot have been reused.
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)


class ChannelProtocol(asyncio.Protocol):
    """Reads frames from the worker and hands each message to its instance."""

    def __init__(self, instance: LocalInstance) -> None:
        self._instance = instance
        self._frames = wire.FrameBuffer()
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            bodies = self._frames.feed(data)
        except wire.FrameTooLarge as exc:
            self._broken(f"The instance sent an oversized message: {exc}")
            return
        for body in bodies:
            try:
                message = orjson.loads(body)
            except orjson.JSONDecodeError:
                try:  # what orjson refuses but the stdlib wrote (e.g. deep nesting)
                    message = json.loads(body)
                except (ValueError, RecursionError) as exc:
                    self._broken(f"The instance sent a malformed message: {exc}")
                    return
            if isinstance(message, dict):
                self._instance._on_message(message)

    def _broken(self, why: str) -> None:
        # The stream is out of step and cannot be trusted again: end the instance.
        self._instance._kill()
        self._instance._on_channel_lost(why)
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._instance._on_channel_lost()


class OutputProtocol(asyncio.Protocol):
    """Copies the worker's fd 1 and 2 into its log file, which never grows past `INSTANCE_LOG_MAX_BYTES`."""

    def __init__(self, instance: LocalInstance, log: Any) -> None:
        self._instance = instance
        self._log = log
        self._size = log.tell()
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if self._instance._calls:
            self._instance._on_call_output(len(data))
        if self._size + len(data) > INSTANCE_LOG_MAX_BYTES:
            self._log.seek(0)
            self._log.truncate()
            note = f"[earlier output dropped: the instance log keeps its last {INSTANCE_LOG_MAX_BYTES >> 20} MiB]\n"
            self._size = self._log.write(note.encode())
            data = data[-(INSTANCE_LOG_MAX_BYTES // 2) :]
        self._size += self._log.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._log.close()
        if not self.closed.done():
            self.closed.set_result(None)
