"""`LocalRuntime`: each instance is one OS process running `worker.py`.

The worker speaks the framed JSON protocol of `wire.py` over two pipes passed to it with
`pass_fds`; its stdout/stderr go to a per-instance log file. Everything here runs on the
server's event loop and never blocks it: the pipes are asyncio transports, a reply is a
future resolved from `data_received`, and a timeout is a loop timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from modelbay.runtime import wire
from modelbay.runtime.base import (
    Call,
    CallOutcome,
    CallTimedOut,
    Instance,
    InstanceLost,
    InstanceSpec,
    InstanceStartFailed,
    InstanceState,
    RuntimeError_,
)

logger = logging.getLogger(__name__)

_WORKER = str(Path(__file__).with_name("worker.py"))
_LOG_TAIL_BYTES = 64 << 10
_LOGS_GRACE_S = 0.5  # how long a timed-out worker gets to hand over its logs before SIGKILL
_PIPE_SIZE = 1 << 20  # larger pipes mean fewer wake-ups for MB-sized results

# What user code inherits from the server's environment: enough to run, no server secrets.
_INHERITED_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "LD_LIBRARY_PATH",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
)


class _Closed:
    """Why a reply will never come (resolves the waiting future instead of a message)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


_TIMED_OUT = _Closed("timed out")
_CHANNEL_LOST = _Closed("channel lost")
_STOPPED = _Closed("stopped")


class LocalInstance:
    """Handle of one worker process. Only `id` and `state` are public."""

    def __init__(self, instance_id: str, log_path: Path) -> None:
        self._id = instance_id
        self._state = InstanceState.STARTING
        self._log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.ReadTransport | None = None
        self._writer: asyncio.WriteTransport | None = None
        self._waiter: asyncio.Future[Any] | None = None  # the reply being waited for
        self._call_id: str | None = None
        self._on_update: Callable[[str], None] | None = None
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

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "update":
            if message.get("id") == self._call_id and self._on_update is not None:
                try:
                    self._on_update(message["text"])
                except Exception:  # a broken listener must not break the channel
                    logger.exception("on_update failed for instance %s", self._id)
        elif kind == "logs" or (kind == "result" and self._logs_waiter is not None):
            if self._logs_waiter is not None and not self._logs_waiter.done():
                self._logs_waiter.set_result(str(message.get("logs") or ""))
        elif kind in ("result", "ready", "start_failed"):
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                if kind != "result" or message.get("id") == self._call_id:
                    waiter.set_result(message)

    def _on_channel_lost(self, why: str | None = None) -> None:
        if why is not None and self._broken is None:
            self._broken = why
        self._channel_lost = True
        self._state = InstanceState.STOPPED
        self._resolve(_CHANNEL_LOST)
        if self._logs_waiter is not None and not self._logs_waiter.done():
            self._logs_waiter.set_result("")

    def _resolve(self, closed: _Closed) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(closed)

    # --- process control ---

    def _kill(self) -> None:
        """SIGKILL the worker and whatever it started (its own session), synchronously."""
        self._state = InstanceState.STOPPED
        proc = self._proc
        # Only while unreaped: then the process group id cannot have been reused.
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)


class _ChannelProtocol(asyncio.Protocol):
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


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(_TIMED_OUT)


def _exit_description(returncode: int | None) -> str:
    if returncode is None:
        return "exit code unknown"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def _read_tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - _LOG_TAIL_BYTES))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _grow_pipe(fd: int) -> None:
    with contextlib.suppress(AttributeError, OSError):  # Linux only; best effort
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)  # type: ignore[attr-defined]


class LocalRuntime:
    """Runs instances as local processes; implements `modelbay.runtime.base.Runtime`.

    `log_dir` holds one `<instance id>.log` per running instance: the worker's fd 1/2,
    i.e. whatever is printed outside a request (import time, background threads, crashes).
    Its tail is attached to start failures and lost instances; the file is deleted when
    the instance stops unless `keep_logs`.
    """

    def __init__(
        self,
        log_dir: Path,
        start_timeout: float = 120.0,
        stop_grace: float = 1.0,
        keep_logs: bool = False,
    ) -> None:
        self._log_dir = Path(log_dir)
        self._start_timeout = start_timeout
        self._stop_grace = stop_grace
        self._keep_logs = keep_logs
        self._instances: dict[str, LocalInstance] = {}

    # --- start ---

    async def start(self, spec: InstanceSpec) -> Instance:
        instance_id = uuid.uuid4().hex
        self._log_dir.mkdir(parents=True, exist_ok=True)
        inst = LocalInstance(instance_id, self._log_dir / f"{instance_id}.log")
        self._instances[instance_id] = inst
        try:
            await self._spawn(inst, spec)
            reply = await self._load(inst, spec)
        except BaseException:
            # Cancelled or failed before a verdict: no half-started process may remain.
            inst._kill()
            await asyncio.shield(self._stop_task(inst))
            raise
        if isinstance(reply, dict) and reply.get("type") == "ready":
            inst._state = InstanceState.IDLE
            return inst

        if isinstance(reply, dict):  # start_failed: the worker exits by itself
            message = str(reply.get("error") or "The deployment could not be loaded.")
        elif reply is _TIMED_OUT:
            inst._kill()
            message = f"The deployment did not finish loading within {self._start_timeout:g} s."
        elif reply is _STOPPED:
            message = "The instance was stopped while loading the deployment."
        else:
            returncode = await self._wait_exit(inst)
            message = inst._broken or (
                f"The instance exited while loading the deployment ({_exit_description(returncode)})."
            )
        await self._wait_exit(inst)
        logs = _read_tail(inst._log_path)
        await self.stop(inst)
        raise InstanceStartFailed(message, logs)

    async def _spawn(self, inst: LocalInstance, spec: InstanceSpec) -> None:
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        _grow_pipe(to_worker_w)
        _grow_pipe(from_worker_w)
        child_ends, our_ends = (to_worker_r, from_worker_w), (to_worker_w, from_worker_r)
        try:
            with open(inst._log_path, "ab") as log:
                inst._proc = await asyncio.create_subprocess_exec(
                    str(spec.python),
                    "-u",
                    _WORKER,
                    str(to_worker_r),
                    str(from_worker_w),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd=spec.package_dir,
                    env=_environment(spec),
                    pass_fds=(to_worker_r, from_worker_w),
                    start_new_session=True,  # own process group: killpg gets its children too
                )
        except BaseException as exc:
            for fd in our_ends:
                os.close(fd)
            if isinstance(exc, OSError):
                raise InstanceStartFailed(f"Could not start the interpreter {spec.python}: {exc}") from exc
            raise
        finally:
            # The child has its copies; ours must go, or we would never see EOF.
            for fd in child_ends:
                os.close(fd)

        loop = asyncio.get_running_loop()
        inst._reader, _ = await loop.connect_read_pipe(
            lambda: _ChannelProtocol(inst), open(from_worker_r, "rb", buffering=0)
        )
        inst._writer, _ = await loop.connect_write_pipe(asyncio.Protocol, open(to_worker_w, "wb", buffering=0))

    async def _load(self, inst: LocalInstance, spec: InstanceSpec) -> Any:
        """Send the init message; wait for "ready"/"start_failed", a timeout or the end."""
        init = {
            "type": "init",
            "package_dir": os.path.abspath(spec.package_dir),  # sys.path entries must not be relative
            "handler": spec.handler,
            "init_context": spec.init_context,
            "max_log_bytes": spec.max_log_bytes,
        }
        return await self._exchange(inst, orjson.dumps(init), self._start_timeout)

    async def _exchange(self, inst: LocalInstance, body: bytes, timeout: float) -> Any:
        """Write one frame and wait for the reply future (a message or a `_Closed`)."""
        if inst._channel_lost:  # it died before we got to ask
            return _CHANNEL_LOST
        loop = asyncio.get_running_loop()
        waiter = inst._waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            assert inst._writer is not None
            inst._writer.write(wire.frame(body))
            return await waiter
        finally:
            timer.cancel()
            inst._waiter = None

    # --- call ---

    async def call(
        self,
        instance: Instance,
        call: Call,
        timeout: float,
        on_update: Callable[[str], None] | None = None,
    ) -> CallOutcome:
        inst = self._own(instance)
        if inst._state is InstanceState.STOPPED:
            raise InstanceLost("The instance is not running.", _read_tail(inst._log_path))
        if inst._state is not InstanceState.IDLE:
            raise RuntimeError_(f"Instance {inst.id} is {inst._state.value}; calls need an idle instance.")
        message = {"type": "call", "id": call.request_id, "data": call.data, "context": call.context}
        try:
            body = orjson.dumps(message)
        except TypeError:  # e.g. integers beyond 64 bits, which the stdlib can write
            try:
                body = json.dumps(message, ensure_ascii=False).encode("utf-8", "surrogatepass")
            except (TypeError, ValueError) as exc:
                return CallOutcome(ok=False, error=f"The request data cannot be sent to the instance: {exc}")
        if len(body) > wire.MAX_FRAME:
            return CallOutcome(
                ok=False, error=f"The request is too large ({len(body)} bytes; the limit is {wire.MAX_FRAME})."
            )

        inst._state = InstanceState.BUSY
        inst._call_id, inst._on_update = call.request_id, on_update
        try:
            reply = await self._exchange(inst, body, timeout)
        except asyncio.CancelledError:
            # User code cannot be interrupted, so a cancelled call costs the instance.
            inst._kill()
            self._stop_task(inst)
            raise
        finally:
            inst._call_id, inst._on_update = None, None

        if isinstance(reply, dict):
            if inst._state is InstanceState.BUSY:
                inst._state = InstanceState.IDLE
            return CallOutcome(
                ok=bool(reply.get("ok")),
                result=reply.get("result"),
                error=reply.get("error"),
                logs=str(reply.get("logs") or ""),
            )
        if reply is _TIMED_OUT:
            logs = await self._logs_so_far(inst)
            inst._kill()
            await self._wait_exit(inst)
            raise CallTimedOut(timeout, logs)
        if reply is _STOPPED:
            raise InstanceLost("The instance was stopped during the request.")
        returncode = await self._wait_exit(inst)
        message_text = inst._broken or (
            f"The instance stopped unexpectedly ({_exit_description(returncode)}) during the request."
        )
        raise InstanceLost(message_text, _read_tail(inst._log_path))

    async def _logs_so_far(self, inst: LocalInstance) -> str:
        """Ask a timed-out worker for what its request printed; it may be unable to answer."""
        proc = inst._proc
        if proc is None or proc.returncode is not None:
            return ""
        inst._logs_waiter = asyncio.get_running_loop().create_future()
        try:
            os.kill(proc.pid, wire.LOGS_SIGNAL)
            return await asyncio.wait_for(inst._logs_waiter, _LOGS_GRACE_S)
        except (TimeoutError, ProcessLookupError):
            return ""
        finally:
            inst._logs_waiter = None

    # --- stop ---

    async def stop(self, instance: Instance) -> None:
        inst = self._own(instance)
        await asyncio.shield(self._stop_task(inst))

    def _stop_task(self, inst: LocalInstance) -> asyncio.Future[None]:
        """The one shutdown of this instance, started on first request (idempotent)."""
        if inst._stopping is None:
            inst._stopping = asyncio.ensure_future(self._shutdown(inst))
        return inst._stopping

    async def _shutdown(self, inst: LocalInstance) -> None:
        inst._state = InstanceState.STOPPED
        inst._resolve(_STOPPED)
        writer = inst._writer
        if writer is not None and not writer.is_closing():
            # Ask politely: a stop message, then EOF on its input.
            with contextlib.suppress(Exception):
                writer.write(wire.frame(orjson.dumps({"type": "stop"})))
            writer.close()
        await self._wait_exit(inst)
        if inst._reader is not None:
            inst._reader.close()
        self._instances.pop(inst.id, None)
        if not self._keep_logs:
            with contextlib.suppress(OSError):
                inst._log_path.unlink()

    async def _wait_exit(self, inst: LocalInstance) -> int | None:
        """Wait (bounded by the grace) for the process to exit, SIGKILL it if not; reap it."""
        proc = inst._proc
        if proc is None:
            return None
        if proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), self._stop_grace)
            except TimeoutError:
                inst._kill()
                await proc.wait()
        return proc.returncode

    # --- health and closing ---

    async def healthy(self, instance: Instance) -> bool:
        inst = self._own(instance)
        proc = inst._proc
        return inst._state is not InstanceState.STOPPED and proc is not None and proc.returncode is None

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(inst) for inst in list(self._instances.values())))

    def _own(self, instance: Instance) -> LocalInstance:
        if not isinstance(instance, LocalInstance):
            raise RuntimeError_(f"{instance!r} was not started by a LocalRuntime.")
        return instance


def _environment(spec: InstanceSpec) -> dict[str, str]:
    env = {name: os.environ[name] for name in _INHERITED_ENV if name in os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(spec.environment)
    return env
