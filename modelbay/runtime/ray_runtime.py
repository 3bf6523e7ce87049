"""`RayRuntime`: each instance is a Ray actor (`ray_instance.InstanceActor`) placed by Ray on a node
of the cluster with the resources of its instance type; the actor prepares the version's code on
its node and supervises the same worker process the local runtime starts.

The server is the actors' owner (a Ray driver): they end with it, and so does a local Ray instance
it started (Ray's own exit handler). Calls go to the actor over a TCP connection of their own
(`ray_instance.py` says why); the timeout is the worker's own, with an outer deadline and
`ray.kill` as the backstop. Ray needs the `ray` extra on the server and the same modelbay
installed on every node.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import pickle
import secrets
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelbay.runtime.base import (
    Call,
    CallOutcome,
    CallTimedOut,
    Code,
    Instance,
    InstanceLost,
    InstanceSpec,
    InstanceStartFailed,
    InstanceState,
    RuntimeError_,
)
from modelbay.runtime.ray_instance import CodePreparer, InstanceActor, NodeSetup, frame, no_delay, read_frame

log = logging.getLogger(__name__)

#: What the worker's own timeout may take beyond the request's (handing over its logs, exiting)
#: before the actor is killed from here.
CALL_GRACE_S = 5.0
#: How long a stopping actor may take to end its worker before it is killed.
STOP_GRACE_S = 5.0
#: How long a health check may take.
HEALTH_TIMEOUT_S = 5.0
#: After this long without a node for an instance, the server says it waits for capacity.
CAPACITY_NOTICE_S = 5.0
#: How long the head of the Ray cluster may take to accept a connection.
CONNECT_TIMEOUT_S = 10.0
#: Archives kept in Ray's object store for instances still to start (the newest).
ARCHIVES_KEPT = 16


class RuntimeUnavailable(Exception):
    """The Ray cluster cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class Placement:
    """The Ray resources one instance asks for."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_bytes: int | None = None
    resources: Mapping[str, float] = field(default_factory=dict)

    def demand(self) -> dict[str, float]:
        """The resources as Ray names them on a node (CPU, GPU, memory, custom ones)."""
        wanted = {"CPU": self.num_cpus, "GPU": self.num_gpus, "memory": float(self.memory_bytes or 0),
                  **self.resources}
        return {name: amount for name, amount in wanted.items() if amount}

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory_bytes:
            options["memory"] = self.memory_bytes
        if self.resources:
            options["resources"] = dict(self.resources)
        return options


def connect(address: str | None, namespace: str) -> None:
    """Join the Ray cluster at `address` as a driver (none: start a local Ray instance); raises
    `RuntimeUnavailable` saying why it cannot."""
    try:
        import ray
    except ImportError:
        raise RuntimeUnavailable("the ray runtime needs Ray: install modelbay with its `ray` extra "
                                 "(pip install 'modelbay[ray]')") from None
    if ray.is_initialized():
        return
    if address:
        _check_reachable(address)
    try:
        ray.init(address=address or "local", namespace=namespace, log_to_driver=False,
                 logging_level=logging.WARNING, include_dashboard=False if not address else None)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError... for a bad cluster
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise RuntimeUnavailable(f"could not use {where}: {exc}") from exc


def _check_reachable(address: str) -> None:
    """Ray waits without end for a head that does not answer: find out first whether one listens."""
    host, _, port = address.rpartition(":")
    if "://" in address or not port.isdigit():
        return  # a Ray Client address (ray://) or "auto": left to Ray
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise RuntimeUnavailable(f"could not reach the Ray cluster at {address}: {exc.strerror or exc}") from None


class RayInstance:
    """Handle of one actor. Only `id` and `state` are public."""

    def __init__(self, instance_id: str, actor: Any) -> None:
        self._id = instance_id
        self._state = InstanceState.STARTING
        self._actor = actor
        self._node = "(not placed yet)"  # the node's address once the actor answered
        self._stopping: asyncio.Future[None] | None = None
        self._writer: asyncio.StreamWriter | None = None  # the connection calls go over
        self._reading: asyncio.Task[None] | None = None
        self._answer: asyncio.Future[dict[str, Any] | None] | None = None  # None: the connection closed
        self._on_update: Callable[[str], None] | None = None

    async def _read(self, reader: asyncio.StreamReader) -> None:
        """Hand updates to the call's listener and its answer to its future, until the connection ends."""
        try:
            while True:
                message = pickle.loads(await read_frame(reader))
                if message["kind"] == "update":
                    if self._on_update is not None:
                        try:
                            self._on_update(message["text"])
                        except Exception:  # a broken listener must not break the channel
                            log.exception("on_update failed for instance %s", self._id)
                elif self._answer is not None and not self._answer.done():
                    self._answer.set_result(message)
        except (asyncio.IncompleteReadError, ConnectionError, pickle.UnpicklingError):
            pass
        finally:
            if self._answer is not None and not self._answer.done():
                self._answer.set_result(None)
            if self._writer is not None:
                self._writer.close()

    @property
    def id(self) -> str:
        return self._id

    @property
    def state(self) -> InstanceState:
        return self._state

    def __repr__(self) -> str:
        return f"<RayInstance {self._id} {self._state.value} on {self._node}>"


class RayRuntime:
    """Runs instances as Ray actors; implements `modelbay.runtime.base.Runtime`.

    `placements` maps instance types to Ray resources; another type asks for one CPU and its memory
    limit. `archive_path` gives the local file of a code archive (the blob store's), which is put
    into Ray's object store for the nodes that have not prepared that code yet.
    """

    prepares_code = True
    depth = 1  # an actor takes one call at a time

    def __init__(
        self,
        *,
        node: NodeSetup,
        preparer: CodePreparer,
        archive_path: Callable[[str], Path],
        placements: Mapping[str, Placement] | None = None,
        start_timeout: float = 120.0,
    ) -> None:
        import ray

        self._ray = ray
        self._exceptions = ray.exceptions
        self._actor_class = ray.remote(InstanceActor)
        self._node = node
        self._preparer = preparer
        self._archive_path = archive_path
        self._placements = dict(placements or {})
        self._start_timeout = start_timeout
        self._archives: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._instances: dict[str, RayInstance] = {}

    # --- start ---

    def placement(self, spec: InstanceSpec) -> Placement:
        if spec.instance_type in self._placements:
            return self._placements[spec.instance_type]
        return Placement(memory_bytes=spec.memory_limit_bytes)

    async def start(self, spec: InstanceSpec) -> Instance:
        if spec.code is None:
            raise RuntimeError_("The ray runtime prepares code on the instance's node; the spec names none.")
        placement = self.placement(spec)
        await self._check_fits(placement, spec)
        archive = await self._archive(spec.code)
        actor = self._actor_class.options(**placement.options(), max_restarts=0, max_task_retries=0).remote(
            self._node, self._preparer)
        inst = RayInstance(uuid.uuid4().hex, actor)
        self._instances[inst.id] = inst
        deadline = time.monotonic() + self._start_timeout
        key = secrets.token_bytes(32)
        try:
            inst._node = await self._placed(inst, spec, placement, deadline)
            reply = await asyncio.wait_for(actor.start.remote(spec, [archive], key),
                                           max(deadline - time.monotonic(), 0))
            if reply["kind"] != "started":
                raise InstanceStartFailed(reply["message"], reply["logs"])
            reader, inst._writer = await asyncio.wait_for(asyncio.open_connection(*reply["address"]),
                                                          max(deadline - time.monotonic(), 0))
        except BaseException as exc:
            await asyncio.shield(self._stop_task(inst))  # no actor may outlive a start that failed
            if isinstance(exc, TimeoutError):
                why = (f"The deployment did not finish loading within {self._start_timeout:g} s "
                       f"(on Ray node {inst._node}).")
            elif isinstance(exc, (self._exceptions.RayError, OSError)):
                why = f"The instance's Ray actor failed while starting: {_first_line(exc)}"
            else:
                raise
            raise InstanceStartFailed(why) from None
        no_delay(inst._writer)
        inst._writer.write(key)
        inst._reading = asyncio.ensure_future(inst._read(reader))
        inst._state = InstanceState.IDLE
        return inst

    async def _check_fits(self, placement: Placement, spec: InstanceSpec) -> None:
        """Fail at once when no node of the cluster could ever hold the instance."""
        demand = placement.demand()
        nodes = [n["Resources"] for n in await asyncio.to_thread(self._ray.nodes) if n.get("Alive")]
        if any(all(node.get(name, 0) >= amount for name, amount in demand.items()) for node in nodes):
            return
        largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
        offered = {name: largest.get(name, 0) for name in demand}
        raise InstanceStartFailed(
            f"No node of the Ray cluster can run an instance of type '{spec.instance_type or 'default'}': it "
            f"needs {_resources(demand)}; the largest node offers {_resources(offered)}.")

    async def _placed(self, inst: RayInstance, spec: InstanceSpec, placement: Placement, deadline: float) -> str:
        """The node the actor was placed on, once Ray found one with the resources free."""
        where = asyncio.ensure_future(inst._actor.node.remote())
        done, _ = await asyncio.wait({where}, timeout=min(CAPACITY_NOTICE_S, max(deadline - time.monotonic(), 0)))
        if not done:
            log.warning("an instance of version %s waits for a Ray node with %s free", spec.version_id,
                        _resources(placement.demand()))
        try:
            return await asyncio.wait_for(where, max(deadline - time.monotonic(), 0))
        except TimeoutError:
            raise InstanceStartFailed(
                f"No Ray node had {_resources(placement.demand())} free within {self._start_timeout:g} s: the "
                "instance waited for capacity that the cluster's other work holds.") from None

    async def _archive(self, code: Code) -> Any:
        """The archive in Ray's object store (put there once per archive while it is in use)."""
        if (ref := self._archives.get(code.archive_key)) is not None:
            self._archives.move_to_end(code.archive_key)
            return ref
        try:
            path = await asyncio.to_thread(self._archive_path, code.archive_key)
        except FileNotFoundError:
            raise InstanceStartFailed(f"The code archive of revision {code.revision_id} is gone") from None
        data = await asyncio.to_thread(path.read_bytes)
        self._archives[code.archive_key] = ref = await asyncio.to_thread(self._ray.put, data)
        while len(self._archives) > ARCHIVES_KEPT:
            self._archives.popitem(last=False)
        return ref

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
        if on_start is not None:  # an actor takes one call at a time: it starts as it is sent
            on_start()
        if inst._state is InstanceState.STOPPED:
            raise InstanceLost("The instance is not running.")
        if inst._state is not InstanceState.IDLE:
            raise RuntimeError_(f"Instance {inst.id} is {inst._state.value}; calls need an idle instance.")
        inst._state = InstanceState.BUSY
        assert inst._writer is not None
        inst._answer, inst._on_update = asyncio.get_running_loop().create_future(), on_update
        try:
            inst._writer.write(frame({"call": call, "timeout": timeout}))
            await inst._writer.drain()
            reply = await asyncio.wait_for(inst._answer, timeout + CALL_GRACE_S)
        except TimeoutError:
            self._kill(inst)
            raise CallTimedOut(timeout) from None
        except asyncio.CancelledError:
            # Closing the connection cancels the call in the actor, which ends its worker; the
            # instance goes with it, as a local one does.
            inst._writer.close()
            self._stop_task(inst)
            raise
        except ConnectionError:
            reply = None
        finally:
            inst._answer, inst._on_update = None, None
        if reply is None:
            self._stop_task(inst)
            raise InstanceLost(f"The instance's Ray actor on node {inst._node} ended during the request: "
                               f"{await self._why_gone(inst)}")
        kind = reply["kind"]
        if kind == "outcome":
            if inst._state is InstanceState.BUSY:
                inst._state = InstanceState.IDLE
            return reply["outcome"]
        self._stop_task(inst)
        if kind == "timed_out":
            raise CallTimedOut(timeout, reply["logs"])
        # Named with its node, as an actor lost with its worker is: when Ray kills an actor, the
        # worker inside it may be seen to die first, and the actor report that.
        raise InstanceLost(f"On Ray node {inst._node}: {reply['message']}", reply["logs"])

    async def _why_gone(self, inst: RayInstance) -> str:
        """What Ray says of an actor whose connection closed (it died, or its node was lost)."""
        try:
            await asyncio.wait_for(inst._actor.node.remote(), HEALTH_TIMEOUT_S)
        except self._exceptions.RayError as exc:
            return _first_line(exc)
        except TimeoutError:
            return "it does not answer"
        return "its connection closed"

    # --- stop ---

    async def stop(self, instance: Instance) -> None:
        await asyncio.shield(self._stop_task(self._own(instance)))

    def _stop_task(self, inst: RayInstance) -> asyncio.Future[None]:
        """The one shutdown of this instance, started on first request (idempotent)."""
        inst._state = InstanceState.STOPPED
        if inst._stopping is None:
            inst._stopping = asyncio.ensure_future(self._shutdown(inst))
        return inst._stopping

    async def _shutdown(self, inst: RayInstance) -> None:
        if inst._writer is not None:
            inst._writer.close()
        try:
            await asyncio.wait_for(inst._actor.stop.remote(), STOP_GRACE_S)
        except (TimeoutError, self._exceptions.RayError):
            pass  # dead already, or stuck: killed below either way
        self._kill(inst)
        self._instances.pop(inst.id, None)

    def _kill(self, inst: RayInstance) -> None:
        inst._state = InstanceState.STOPPED
        try:
            self._ray.kill(inst._actor, no_restart=True)
        except self._exceptions.RayError:
            pass

    # --- health and closing ---

    async def healthy(self, instance: Instance) -> bool:
        inst = self._own(instance)
        if inst._state is InstanceState.STOPPED:
            return False
        try:
            return bool(await asyncio.wait_for(inst._actor.healthy.remote(), HEALTH_TIMEOUT_S))
        except (TimeoutError, self._exceptions.RayError):
            return False

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(inst) for inst in list(self._instances.values())))
        self._archives.clear()

    def node_of(self, instance: Instance) -> str:
        """The Ray node an instance was placed on: its address and id."""
        return self._own(instance)._node

    def _own(self, instance: Instance) -> RayInstance:
        if not isinstance(instance, RayInstance):
            raise RuntimeError_(f"{instance!r} was not started by a RayRuntime.")
        return instance


def _resources(amounts: Mapping[str, float]) -> str:
    def amount(name: str, value: float) -> str:
        return f"{value / (1 << 20):.0f} MiB" if name == "memory" else f"{value:g}"

    return ", ".join(f"{name} {amount(name, value)}" for name, value in amounts.items()) or "nothing"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
