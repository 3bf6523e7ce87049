"""One instance of the `ray` runtime as it lives on a Ray node: an actor that prepares the version's
code on its machine and supervises one worker process there through the local runtime. Per-request
logs, timeouts, crash isolation and the sandbox are thus the local runtime's own; `RayRuntime`
(`ray_runtime.py`) creates, places and stops the actor through Ray.

Calls do not go through Ray: a Ray actor call costs over a millisecond on each side, several
times the whole local path. The actor listens on its node's address, and the server sends each
call over one TCP connection of its own (framed as between a server and its workers), which must
first show a key the server gave the actor. Answers are plain dicts (`kind`: outcome, update,
timed_out, lost, failed), not exceptions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import os
import pickle
import shutil
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import ray

from modelbay.runtime import wire
from modelbay.runtime.base import (
    Call,
    CallNotStarted,
    CallTimedOut,
    Code,
    Instance,
    InstanceLost,
    InstanceSpec,
    InstanceStartFailed,
)
from modelbay.runtime.local import LocalRuntime
from modelbay.runtime.sandbox import from_settings as sandbox_from_settings


class CodePreparer(Protocol):
    """Prepares code on the actor's machine (`core.node_packages.NodePackages`)."""

    def ready(self, code: Code) -> bool: ...

    def prepare(self, code: Code, handler: str | None, deployment_file: str | None,
                archive: Callable[[], bytes]) -> tuple[Path, Path]: ...


@dataclass(frozen=True)
class NodeSetup:
    """How instances run on a Ray node: what a server's local runtime is given from its settings."""

    root: Path  # the instances' logs and scratch directories, under one folder per actor
    sandbox: str = "bwrap"
    network: bool = True
    shared_dirs: list[Path] = field(default_factory=list)
    start_timeout: float = 120.0


class InstanceActor:
    """The actor of one instance (made remote by `RayRuntime`)."""

    def __init__(self, node: NodeSetup, preparer: CodePreparer) -> None:
        self._preparer = preparer
        actors = Path(node.root) / "actors"
        _remove_dead_actors_dirs(actors)
        self._dir = actors / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._runtime = LocalRuntime(
            log_dir=self._dir / "logs",
            scratch_dir=self._dir / "scratch",
            start_timeout=node.start_timeout,
            sandbox=sandbox_from_settings(node.sandbox, check=False),
            network=node.network,
            shared_dirs=node.shared_dirs,
        )
        self._instance: Instance | None = None
        self._key = b""
        self._listener: asyncio.Server | None = None

    def node(self) -> str:
        """Which node the actor was placed on, its address and id (it answers once it is placed)."""
        return f"{ray.util.get_node_ip_address()} ({ray.get_runtime_context().get_node_id()[:12]})"

    async def start(self, spec: InstanceSpec, archive: list[ray.ObjectRef], key: bytes) -> dict[str, Any]:
        """Prepare the code here, start the worker, and listen for the server's calls, which must
        begin with `key`. `archive` holds the archive's object, fetched only when this machine has
        not unpacked that code before."""
        assert spec.code is not None
        try:
            data = None if self._preparer.ready(spec.code) else await archive[0]
            package_dir, python = await asyncio.to_thread(
                self._preparer.prepare, spec.code, spec.handler, spec.deployment_file, lambda: data or b"")
            prepared = dataclasses.replace(spec, package_dir=package_dir, python=python)
            self._instance = await self._runtime.start(prepared)
        except InstanceStartFailed as exc:
            return {"kind": "failed", "message": exc.message, "logs": exc.logs}
        self._key = key
        host = ray.util.get_node_ip_address()
        self._listener = await asyncio.start_server(self._serve, host, 0)
        return {"kind": "started", "address": (host, self._listener.sockets[0].getsockname()[1])}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection from the server: its calls, one at a time, answered with their updates.
        The server closing it (a cancel, or its end) ends the call under way."""
        no_delay(writer)
        answering: asyncio.Future[None] | None = None
        try:
            if not hmac.compare_digest(await reader.readexactly(len(self._key)), self._key):
                return
            while True:
                request = pickle.loads(await read_frame(reader))
                answering = asyncio.ensure_future(self._answer(writer, request["call"], request["timeout"]))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if answering is not None:
                answering.cancel()  # the local runtime then ends the worker
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, call: Call, timeout: float) -> None:
        def update(text: str) -> None:
            writer.write(frame({"kind": "update", "text": text}))

        assert self._instance is not None
        try:
            outcome = await self._runtime.call(self._instance, call, timeout, update)
            reply: dict[str, Any] = {"kind": "outcome", "outcome": outcome}
        except CallTimedOut as exc:
            reply = {"kind": "timed_out", "logs": exc.logs}
        except InstanceLost as exc:
            reply = {"kind": "lost", "message": exc.message, "logs": exc.logs}
        except CallNotStarted:  # the worker had ended before the call: the actor's instance is lost
            reply = {"kind": "lost", "message": "The instance is not running.", "logs": ""}
        writer.write(frame(reply))
        await writer.drain()

    async def healthy(self) -> bool:
        return self._instance is not None and await self._runtime.healthy(self._instance)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        await self._runtime.close()
        await asyncio.to_thread(shutil.rmtree, self._dir, True)


def frame(message: dict[str, Any]) -> bytes:
    """One message on the channel between a server and an actor: its length, then its pickle (both
    ends are modelbay's own, and a connection is only read once it showed the instance's key)."""
    return wire.frame(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    size = int.from_bytes(await reader.readexactly(wire.HEADER_SIZE), "big")
    if size > wire.MAX_FRAME:
        raise ConnectionError(f"a message of {size} bytes is larger than the limit")
    return await reader.readexactly(size)


def no_delay(writer: asyncio.StreamWriter) -> None:
    """No Nagle: a small answer must not wait for the other end's delayed ACK."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _remove_dead_actors_dirs(actors: Path) -> None:
    """What the actors of this machine that were killed left (named by their process id)."""
    for path in actors.iterdir() if actors.is_dir() else []:
        pid = path.name.partition("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
