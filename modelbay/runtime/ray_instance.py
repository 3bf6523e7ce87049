"""One instance of the `ray` runtime as it lives on a Ray node: an actor that prepares the version's
code on its machine and supervises one worker process there through the local runtime. Per-request
logs, timeouts, crash isolation and the sandbox are thus the local runtime's own; `RayRuntime`
(`ray_runtime.py`) creates and calls the actor from the server.

Answers are plain dicts (`kind`: outcome, timed_out, lost, failed) rather than exceptions, which
would reach the server wrapped in Ray's own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import ray

from modelbay.runtime.base import Call, CallTimedOut, Code, Instance, InstanceLost, InstanceSpec, InstanceStartFailed
from modelbay.runtime.local import LocalRuntime
from modelbay.runtime.sandbox import from_settings as sandbox_from_settings


class CodePreparer(Protocol):
    """Prepares code on the actor's machine (`core.node_packages.NodePackages`)."""

    def ready(self, code: Code) -> bool: ...

    def prepare(self, code: Code, handler: str | None, archive: Callable[[], bytes]) -> tuple[Path, Path]: ...


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

    def node(self) -> str:
        """Which node the actor was placed on, its address and id (it answers once it is placed)."""
        return f"{ray.util.get_node_ip_address()} ({ray.get_runtime_context().get_node_id()[:12]})"

    async def start(self, spec: InstanceSpec, archive: list[ray.ObjectRef]) -> dict[str, Any]:
        """Prepare the code here and start the worker. `archive` holds the archive's object, fetched
        only when this machine has not unpacked that code before."""
        assert spec.code is not None
        try:
            data = None if self._preparer.ready(spec.code) else await archive[0]
            package_dir, python = await asyncio.to_thread(
                self._preparer.prepare, spec.code, spec.handler, lambda: data or b"")
            prepared = dataclasses.replace(spec, package_dir=package_dir, python=python)
            self._instance = await self._runtime.start(prepared)
        except InstanceStartFailed as exc:
            return {"kind": "failed", "message": exc.message, "logs": exc.logs}
        return {"kind": "started"}

    async def call(self, call: Call, timeout: float,
                   on_update: Callable[[str], None] | None = None) -> dict[str, Any]:
        assert self._instance is not None
        try:
            outcome = await self._runtime.call(self._instance, call, timeout, on_update)
        except CallTimedOut as exc:
            return {"kind": "timed_out", "logs": exc.logs}
        except InstanceLost as exc:
            return {"kind": "lost", "message": exc.message, "logs": exc.logs}
        return {"kind": "outcome", "outcome": outcome}

    async def stream(self, call: Call, timeout: float) -> AsyncIterator[dict[str, Any]]:
        """`call`, with each partial result the code streams sent ahead as {"kind": "update"}."""
        updates: asyncio.Queue[str] = asyncio.Queue()
        answer = asyncio.ensure_future(self.call(call, timeout, updates.put_nowait))
        try:
            while not answer.done():
                update = asyncio.ensure_future(updates.get())
                await asyncio.wait({update, answer}, return_when=asyncio.FIRST_COMPLETED)
                if update.done():
                    yield {"kind": "update", "text": update.result()}
                else:
                    update.cancel()
            while not updates.empty():
                yield {"kind": "update", "text": updates.get_nowait()}
            yield answer.result()
        finally:
            answer.cancel()  # the server went away (a cancel): the local runtime then ends the worker

    async def healthy(self) -> bool:
        return self._instance is not None and await self._runtime.healthy(self._instance)

    async def stop(self) -> None:
        await self._runtime.close()
        await asyncio.to_thread(shutil.rmtree, self._dir, True)


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
