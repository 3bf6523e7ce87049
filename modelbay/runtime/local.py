"""`LocalRuntime`: each instance is one OS process running `worker.py`, in a sandbox.

The worker speaks the framed JSON protocol of `wire.py` over pipes passed to it with
`pass_fds`; its stdout/stderr are a pipe too, which the server copies into a per-instance log
file, counting what a request writes there against its log budget. Everything here runs on the
server's event loop and never blocks it: the pipes are asyncio transports, a reply is a
future resolved from `data_received`, and a timeout is a loop timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
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
    CallNotStarted,
    CallOutcome,
    CallTimedOut,
    Instance,
    InstanceLost,
    InstanceSpec,
    InstanceStartFailed,
    InstanceState,
    RuntimeError_,
)
from modelbay.runtime.sandbox import Bubblewrap, Jail, Sandbox, interpreter_paths
from modelbay.runtime.worker_process import (
    CHANNEL_LOST,
    LOG_LIMIT,
    NOT_STARTED,
    STOPPED,
    TIMED_OUT,
    ChannelProtocol,
    LocalInstance,
    OutputProtocol,
    PendingCall,
)

_WORKER = str(Path(__file__).with_name("worker.py"))
_LOG_TAIL_BYTES = 64 << 10
_LOGS_GRACE_S = 0.5  # how long a timed-out worker gets to hand over its logs before SIGKILL
_PIPE_SIZE = 1 << 20  # larger pipes mean fewer wake-ups for MB-sized results
_OUTPUT_WAIT_S = 0.5  # how long a dead worker's last output may take to arrive before its tail is read
_RUNTIME_DIR = Path(__file__).parent  # worker.py and the files it loads: all the sandbox needs of modelbay


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(TIMED_OUT)


def _exit_description(returncode: int | None, signals_as_exit_codes: bool = False) -> str:
    if returncode is None:
        return "exit code unknown"
    if signals_as_exit_codes and returncode > 128:
        returncode = 128 - returncode  # the sandbox's init reports a signal N as 128 + N
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
    the instance stops unless `keep_logs`. `scratch_dir` holds each instance's private
    writable directory (its /tmp), deleted when it stops. Every worker runs in `sandbox`
    (bubblewrap unless given), seeing only its package, its environment, its scratch and the
    operator's `shared_dirs`.
    """

    prepares_code = False  # it runs the code this server prepared

    def __init__(
        self,
        log_dir: Path,
        start_timeout: float = 120.0,
        stop_grace: float = 1.0,
        keep_logs: bool = False,
        sandbox: Sandbox | None = None,
        scratch_dir: Path | None = None,
        network: bool = True,
        shared_dirs: list[Path] | None = None,
        depth: int = 1,
    ) -> None:
        self.depth = depth  # calls sent to an instance at once: one runs, the others wait in it
        self._log_dir = Path(log_dir)
        self._scratch_dir = Path(scratch_dir) if scratch_dir is not None else self._log_dir.parent / "scratch"
        self._start_timeout = start_timeout
        self._stop_grace = stop_grace
        self._keep_logs = keep_logs
        shutil.rmtree(self._scratch_dir, ignore_errors=True)  # what instances of a killed server left
        self._sandbox = sandbox if sandbox is not None else Bubblewrap()
        self._network = network
        self._shared_dirs = list(shared_dirs or [])
        self._instances: dict[str, LocalInstance] = {}

    # --- start ---

    async def start(self, spec: InstanceSpec) -> Instance:
        if spec.package_dir is None or spec.python is None:
            raise RuntimeError_("The local runtime runs code prepared on this server; the spec names none.")
        instance_id = uuid.uuid4().hex
        self._log_dir.mkdir(parents=True, exist_ok=True)
        scratch = self._scratch_dir / instance_id
        inst = LocalInstance(instance_id, self._log_dir / f"{instance_id}.log", scratch, spec.max_log_bytes)
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
        elif reply is TIMED_OUT:
            inst._kill()
            message = f"The deployment did not finish loading within {self._start_timeout:g} s."
        elif reply is STOPPED:
            message = "The instance was stopped while loading the deployment."
        else:
            returncode = await self._wait_exit(inst)
            message = inst._broken or (
                f"The instance exited while loading the deployment ({self._exit_description(returncode)})."
            )
        await self._wait_exit(inst)
        logs = await self._log_tail(inst)
        await self.stop(inst)
        raise InstanceStartFailed(message, logs)

    def _jail(self, spec: InstanceSpec, scratch: Path) -> Jail:
        """The instance sees its interpreter, its package and the worker program, read-only."""
        return Jail(
            read_only=[*interpreter_paths(spec.python), Path(spec.package_dir).absolute(), _RUNTIME_DIR],
            writable=self._shared_dirs,
            scratch=scratch,
            network=self._network,
            memory_limit_bytes=spec.memory_limit_bytes,
        )

    async def _spawn(self, inst: LocalInstance, spec: InstanceSpec) -> None:
        if not os.access(spec.python, os.X_OK):  # inside the sandbox it would be a bare exit code
            raise InstanceStartFailed(f"Could not start the interpreter {spec.python}: it is not an executable file")
        inst._scratch.mkdir(parents=True, exist_ok=True)
        self._sandbox.prepare(inst._scratch)
        jail = self._jail(spec, inst._scratch)
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        interrupt_r, interrupt_w = os.pipe()
        output_r, output_w = os.pipe()
        for fd in (to_worker_w, from_worker_w, output_w):
            _grow_pipe(fd)
        child_ends = (to_worker_r, from_worker_w, interrupt_r, output_w)
        our_ends = (to_worker_w, from_worker_r, interrupt_w, output_r)
        argv = [str(spec.python), "-u", _WORKER, str(to_worker_r), str(from_worker_w), str(interrupt_r)]
        try:
            inst._proc = await asyncio.create_subprocess_exec(
                *self._sandbox.command(argv, jail),
                stdin=subprocess.DEVNULL,
                stdout=output_w,
                stderr=output_w,
                cwd=spec.package_dir,
                env=self._sandbox.environment(jail, {k: str(v) for k, v in spec.environment.items()}),
                pass_fds=(to_worker_r, from_worker_w, interrupt_r),
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

        inst._interrupt_fd = interrupt_w
        loop = asyncio.get_running_loop()
        log = open(inst._log_path, "ab", buffering=0)
        inst._output_transport, inst._output = await loop.connect_read_pipe(
            lambda: OutputProtocol(inst, log), open(output_r, "rb", buffering=0)
        )
        inst._reader, _ = await loop.connect_read_pipe(
            lambda: ChannelProtocol(inst), open(from_worker_r, "rb", buffering=0)
        )
        inst._writer, _ = await loop.connect_write_pipe(asyncio.Protocol, open(to_worker_w, "wb", buffering=0))

    async def _load(self, inst: LocalInstance, spec: InstanceSpec) -> Any:
        """Send the init message; wait for "ready"/"start_failed", a timeout or the end."""
        init = {
            "type": "init",
            "package_dir": os.path.abspath(spec.package_dir),  # sys.path entries must not be relative
            "handler": spec.handler,
            "deployment_file": spec.deployment_file,
            "init_context": spec.init_context,
            "max_log_bytes": spec.max_log_bytes,
            "memory_limit_mib": spec.memory_limit_bytes >> 20 if spec.memory_limit_bytes else None,
        }
        return await self._exchange(inst, orjson.dumps(init), self._start_timeout)

    async def _exchange(self, inst: LocalInstance, body: bytes, timeout: float) -> Any:
        """Write the init frame and wait for its answer (a message or a `Closed`)."""
        if inst._channel_lost:  # it died before we got to ask
            return CHANNEL_LOST
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
        on_start: Callable[[], None] | None = None,
    ) -> CallOutcome:
        inst = self._own(instance)
        if inst._state is InstanceState.STOPPED:  # it ended before this call got to it (one ahead of it ended it)
            raise CallNotStarted()
        sent = len(inst._calls)
        if sent >= self.depth:
            # A withdrawn call stays sent until the worker answers that it skipped it (after the call
            # that runs): its caller, and the scheduler's count of the instance's calls, let it go.
            sent = sum(not pending.given_up for pending in inst._calls)
        if inst._state is InstanceState.STARTING or sent >= self.depth:
            raise RuntimeError_(f"Instance {inst.id} is {inst._state.value} with {sent} calls sent; "
                                f"it takes {self.depth} at most.")
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

        loop = asyncio.get_running_loop()
        pending = PendingCall(call.request_id, loop.create_future(), on_update, on_start)
        inst._calls.append(pending)
        if len(inst._calls) == 1:  # it runs at once
            inst._state, inst._call_output = InstanceState.BUSY, 0
            pending.started()
        timer = loop.call_later(timeout, _expire, pending.reply)
        try:
            assert inst._writer is not None
            inst._writer.write(wire.frame(body))
            reply = await pending.reply
        except asyncio.CancelledError:
            if inst._running is pending:
                # User code cannot be interrupted, so a cancelled call costs the instance.
                inst._kill()
                self._stop_task(inst)
            else:
                self._withdraw(inst, pending)  # it has not started: the instance goes on
            raise
        finally:
            timer.cancel()

        if isinstance(reply, dict):
            if reply.get("retire"):  # the worker exits after this answer (out of memory)
                inst._state = InstanceState.STOPPED
                self._stop_task(inst)
            return CallOutcome(
                ok=bool(reply.get("ok")),
                result=reply.get("result"),
                error=reply.get("error"),
                logs=str(reply.get("logs") or ""),
            )
        if reply is NOT_STARTED:
            raise CallNotStarted()
        if reply is TIMED_OUT:
            if inst._running is not pending:  # it waited its whole time behind the calls ahead of it
                self._withdraw(inst, pending)
                raise CallTimedOut(timeout)
            logs = await self._logs_so_far(inst)
            inst._kill()
            await self._wait_exit(inst)
            raise CallTimedOut(timeout, logs)
        if reply is STOPPED:
            raise InstanceLost("The instance was stopped during the request.")
        if reply is LOG_LIMIT:
            self._stop_task(inst)
            message_text = f"The request printed more than {inst._max_log_bytes} bytes of logs; output was cut off."
            return CallOutcome(ok=False, error=message_text, logs=message_text + "\n")
        returncode = await self._wait_exit(inst)
        message_text = inst._broken or (
            f"The instance stopped unexpectedly ({self._exit_description(returncode)}) during the request."
        )
        raise InstanceLost(message_text, await self._log_tail(inst))

    @staticmethod
    def _withdraw(inst: LocalInstance, pending: PendingCall) -> None:
        """Withdraw a call that waits in the worker: it is skipped there, and answered as withdrawn."""
        pending.given_up = True
        writer = inst._writer
        if writer is not None and not writer.is_closing():
            writer.write(wire.frame(orjson.dumps({"type": "withdraw", "id": pending.id})))

    async def _logs_so_far(self, inst: LocalInstance) -> str:
        """Ask a timed-out worker for what its request printed; it may be unable to answer."""
        proc = inst._proc
        if proc is None or proc.returncode is not None or inst._interrupt_fd is None:
            return ""
        inst._logs_waiter = asyncio.get_running_loop().create_future()
        try:
            os.write(inst._interrupt_fd, b"!")
            return await asyncio.wait_for(inst._logs_waiter, _LOGS_GRACE_S)
        except (TimeoutError, BrokenPipeError):
            return ""
        finally:
            inst._logs_waiter = None

    async def _log_tail(self, inst: LocalInstance) -> str:
        """The end of the instance's log, once what it wrote before it died has arrived."""
        if inst._output is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(inst._output.closed), _OUTPUT_WAIT_S)
        return _read_tail(inst._log_path)

    def _exit_description(self, returncode: int | None) -> str:
        return _exit_description(returncode, self._sandbox.signals_as_exit_codes)

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
        inst._resolve(STOPPED)
        writer = inst._writer
        if writer is not None and not writer.is_closing():
            # Ask politely: a stop message, then EOF on its input.
            with contextlib.suppress(Exception):
                writer.write(wire.frame(orjson.dumps({"type": "stop"})))
            writer.close()
        await self._wait_exit(inst)
        if inst._reader is not None:
            inst._reader.close()
        if inst._interrupt_fd is not None:
            os.close(inst._interrupt_fd)
            inst._interrupt_fd = None
        if inst._output is not None:
            with contextlib.suppress(TimeoutError):  # a grandchild outside the sandbox may keep it open
                await asyncio.wait_for(asyncio.shield(inst._output.closed), _OUTPUT_WAIT_S)
            if inst._output_transport is not None:
                inst._output_transport.close()
        self._instances.pop(inst.id, None)
        await asyncio.to_thread(shutil.rmtree, inst._scratch, True)
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

