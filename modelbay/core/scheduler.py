"""The scheduler: hands each request an idle instance of its version, scaling instances up and down.

It runs on the server's event loop and talks to instances only through `Runtime`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from modelbay.core.background import Background
from modelbay.core.deployments import Target
from modelbay.runtime.base import (
    Call,
    CallOutcome,
    CallTimedOut,
    Instance,
    InstanceLost,
    InstanceSpec,
    InstanceStartFailed,
    InstanceState,
    Runtime,
)

log = logging.getLogger(__name__)

#: How often idle instances are checked against their version's `maximum_idle_time`.
RECONCILE_PERIOD_S = 1.0

#: Priorities: direct requests are served ahead of queued batch work (batch priority 0, then 1).
PRIORITY_DIRECT = 0
PRIORITY_BATCH = 1  # + the batch request's own priority


#: How long a pool whose instance failed to start waits before it starts its minimum again.
START_RETRY_S = 5.0

#: Target fields a pool may change without restarting its instances.
SCALING_FIELDS = ("minimum_instances", "maximum_instances", "maximum_idle_time")


def pool_key(target: Target) -> str:
    """The pool serving a target: the version's own, or a named one (a service's)."""
    return target.pool or target.version_id


class _Retired(Exception):
    """The pool a waiter queued on was retired (new code or settings); wait on the new one."""


@dataclass
class _Pool:
    target: Target
    idle: list[tuple[Instance, float]] = field(default_factory=list)  # (instance, idle since), LIFO
    busy: set[Instance] = field(default_factory=set)
    starting: int = 0
    #: One queue of waiters per priority level: direct, batch high, batch standard.
    waiters: tuple[deque[asyncio.Future[Instance]], ...] = field(default_factory=lambda: (deque(), deque(), deque()))
    retired: bool = False
    start_error: InstanceStartFailed | None = None
    failed_at: float | None = None  # when an instance last failed to start (monotonic)

    @property
    def size(self) -> int:
        return len(self.idle) + len(self.busy) + self.starting

    def waiting(self) -> int:
        return sum(1 for queue in self.waiters for fut in queue if not fut.done())

    def next_waiter(self) -> asyncio.Future[Instance] | None:
        for queue in self.waiters:
            while queue:
                fut = queue.popleft()
                if not fut.done():
                    return fut
        return None


class Scheduler:
    """Routes calls to instances. `make_spec` turns a target into what the runtime starts (making
    its code ready on this node first)."""

    def __init__(
        self,
        runtime: Runtime,
        make_spec: Callable[[Target], Awaitable[InstanceSpec]],
        serving_target: Callable[[str], Target | None] = lambda _version_id: None,
    ) -> None:
        self._runtime = runtime
        self._make_spec = make_spec
        self._serving_target = serving_target  # a version's current target, None unless it has code
        self._pools: dict[str, _Pool] = {}
        # Instance starts and stops, and the reconcile loop. Closing stops the loop only: a start
        # cut short could leave a process nobody stops, and `runtime.close` stops the rest.
        self._background = Background("scheduler")
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._background.every(RECONCILE_PERIOD_S, self._reconcile, "reconcile")

    async def close(self) -> None:
        await self._background.stop_loops()
        for pool in list(self._pools.values()):
            self._retire(pool)
        await self._runtime.close()

    async def run(
        self,
        target: Target,
        call: Call,
        timeout: float,
        priority: int = PRIORITY_DIRECT,
        on_update: Callable[[str], None] | None = None,
    ) -> CallOutcome:
        """Run one call on an instance of `target` within `timeout` seconds (waiting included).

        Raises `CallTimedOut`, `InstanceLost` or `InstanceStartFailed`.
        """
        deadline = time.monotonic() + timeout
        while True:
            pool = self._pool(target)
            instance = self._take_idle(pool)
            if instance is not None:  # the common case: no wait, so no timer to set
                break
            try:
                async with asyncio.timeout_at(asyncio.get_running_loop().time() + timeout):
                    instance = await self._acquire(pool, priority)
            except TimeoutError:
                raise CallTimedOut(timeout) from None
            except _Retired:
                continue
            break
        try:
            outcome = await self._runtime.call(instance, call, max(deadline - time.monotonic(), 0.001), on_update)
        except (CallTimedOut, InstanceLost):
            pool.busy.discard(instance)
            self._background.spawn(self._runtime.stop(instance))
            self._fill(pool)
            raise
        except BaseException:
            # Our caller went away mid-call (cancelled): the instance's state is unknown, replace it.
            pool.busy.discard(instance)
            self._background.spawn(self._runtime.stop(instance))
            self._fill(pool)  # a waiter may have queued behind the instance just lost
            raise
        self._release(pool, instance)
        return outcome

    def warm(self, target: Target) -> None:
        """Start the version's `minimum_instances` now, rather than at its first request."""
        if target.minimum_instances > 0:
            self._keep_minimum(self._pool(target))

    def version_changed(self, version_id: str) -> None:
        """Retire the instances of a version whose code or settings changed, and start its
        minimum of the new ones. Thread-safe."""
        if self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._retire_version, version_id)

    def instance_count(self, version_id: str) -> int:
        """Running instances of a pool (by default the version's own), starting ones not counted."""
        pool = self._pools.get(version_id)
        return 0 if pool is None else len(pool.idle) + len(pool.busy)

    def instances(self, key: str) -> list[Instance]:
        """The loaded instances of a pool, idle and busy."""
        pool = self._pools.get(key)
        return [] if pool is None else [i for i, _ in pool.idle] + list(pool.busy)

    def start_error(self, key: str) -> str | None:
        """Why the last instance of a pool failed to start, until one starts."""
        pool = self._pools.get(key)
        return None if pool is None or pool.start_error is None else pool.start_error.message

    def ensure(self, target: Target) -> None:
        """Make the pool of `target` exist with its settings now, starting instances up to its minimum
        and stopping idle ones above its maximum (a scaling change keeps the instances it has)."""
        pool = self._pool(target)
        self._scale(pool, time.monotonic())

    def drop(self, key: str) -> None:
        """Retire a pool: idle instances stop now, busy ones once their call ends."""
        pool = self._pools.get(key)
        if pool is not None:
            self._retire(pool)

    async def make_ready(self, target: Target, timeout: float) -> None:
        """Wait until an instance of `target` is loaded and idle, starting one if needed.

        Raises `CallTimedOut` or `InstanceStartFailed`.
        """
        while True:
            pool = self._pool(target)
            try:
                async with asyncio.timeout(timeout):
                    instance = await self._acquire(pool, PRIORITY_BATCH)
            except TimeoutError:
                raise CallTimedOut(timeout) from None
            except _Retired:
                continue
            self._release(pool, instance)
            return

    # --- internals -------------------------------------------------------------------------

    def _pool(self, target: Target) -> _Pool:
        key = pool_key(target)
        pool = self._pools.get(key)
        if pool is None or pool.target is not target and pool.target != target:
            if pool is not None:
                scaled = dataclasses.replace(pool.target, **{f: getattr(target, f) for f in SCALING_FIELDS})
                if scaled == target:  # only the scaling changed: keep the instances
                    pool.target = target
                    self._fill(pool)
                    return pool
                self._retire(pool)
            pool = self._pools[key] = _Pool(target)
        return pool

    @staticmethod
    def _take_idle(pool: _Pool) -> Instance | None:
        """An idle instance, unless there is none or others wait ahead of us."""
        if pool.idle and not pool.waiting():
            instance, _ = pool.idle.pop()
            pool.busy.add(instance)
            return instance
        return None

    async def _acquire(self, pool: _Pool, priority: int) -> Instance:
        instance = self._take_idle(pool)
        if instance is not None:
            return instance
        fut: asyncio.Future[Instance] = asyncio.get_running_loop().create_future()
        pool.waiters[min(priority, len(pool.waiters) - 1)].append(fut)
        self._fill(pool)
        try:
            return await fut
        except asyncio.CancelledError:
            # Timed out or abandoned just as an instance was handed over: give it back.
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release(pool, fut.result())
            raise

    def _release(self, pool: _Pool, instance: Instance) -> None:
        pool.busy.discard(instance)
        if pool.retired or instance.state is InstanceState.STOPPED:  # retired, or ended by its last call
            self._background.spawn(self._runtime.stop(instance))
            self._fill(pool)
            return
        waiter = pool.next_waiter()
        if waiter is not None:
            pool.busy.add(instance)
            waiter.set_result(instance)
        else:
            pool.idle.append((instance, time.monotonic()))

    def _fill(self, pool: _Pool) -> None:
        """Start instances for waiters nobody will serve soon, up to the version's maximum."""
        while not pool.retired and pool.waiting() > pool.starting and pool.size < pool.target.maximum_instances:
            pool.starting += 1
            self._background.spawn(self._start_instance(pool))

    async def _start_instance(self, pool: _Pool) -> None:
        try:
            instance = await self._runtime.start(await self._make_spec(pool.target))
        except InstanceStartFailed as exc:
            pool.starting -= 1
            pool.start_error, pool.failed_at = exc, time.monotonic()
            log.warning("instance of version %s failed to start: %s", pool.target.version_id, exc.message)
            if not pool.idle and not pool.busy and not pool.starting:
                # The code cannot load: fail the waiters rather than retry forever.
                while (waiter := pool.next_waiter()) is not None:
                    waiter.set_exception(exc)
            return
        except Exception:
            pool.starting -= 1
            log.exception("starting an instance of version %s crashed", pool.target.version_id)
            return
        pool.starting -= 1
        pool.start_error = pool.failed_at = None
        if pool.retired:
            await self._runtime.stop(instance)
            return
        self._release(pool, instance)

    def _retire_version(self, version_id: str) -> None:
        for pool in [p for p in self._pools.values() if p.target.version_id == version_id]:
            self._retire(pool)
        target = self._serving_target(version_id)
        if target is not None:
            self.warm(target)

    def _retire(self, pool: _Pool) -> None:
        pool.retired = True
        key = pool_key(pool.target)
        if self._pools.get(key) is pool:
            del self._pools[key]
        for instance, _ in pool.idle:
            self._background.spawn(self._runtime.stop(instance))
        pool.idle.clear()
        while (waiter := pool.next_waiter()) is not None:
            waiter.set_exception(_Retired())

    def _reconcile(self) -> None:
        now = time.monotonic()
        for pool in list(self._pools.values()):
            self._scale(pool, now)

    def _scale(self, pool: _Pool, now: float) -> None:
        target = pool.target
        keep = max(target.minimum_instances - len(pool.busy), 0)
        pool.idle.sort(key=lambda item: item[1])
        while pool.idle and (
            len(pool.idle) > keep and now - pool.idle[0][1] >= target.maximum_idle_time
            or len(pool.idle) + len(pool.busy) > target.maximum_instances  # scaled down
        ):
            instance, _ = pool.idle.pop(0)
            self._background.spawn(self._runtime.stop(instance))
        self._keep_minimum(pool)

    def _keep_minimum(self, pool: _Pool) -> None:
        if pool.failed_at is not None and time.monotonic() - pool.failed_at < START_RETRY_S:
            return  # code that cannot load is not restarted in a tight loop
        for _ in range(max(pool.target.minimum_instances - pool.size, 0)):
            pool.starting += 1
            self._background.spawn(self._start_instance(pool))
