"""The scheduler: hands each request an idle instance of its version, scaling instances up and down.

It runs on the server's event loop and talks to instances only through `Runtime`. Every instance
holds a slot of its pool (`instance_slots`), so a version's limits count across the cluster;
a node that may not start one (the others run the maximum) runs the call on an instance another
node holds (`Peers`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from modelbay.core.background import Background
from modelbay.core.deployments import Target
from modelbay.core.instance_slots import Holder, LocalSlots, NoCapacity
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
    Runtime,
)

log = logging.getLogger(__name__)

#: How often idle instances are checked against their version's `maximum_idle_time`.
RECONCILE_PERIOD_S = 1.0

#: Priorities: direct requests are served ahead of queued batch work (batch priority 0, then 1).
PRIORITY_DIRECT = 0
PRIORITY_BATCH = 1  # + the batch request's own priority


#: Batch calls of a pool whose calls are quick (its last `QUICK_SAMPLE` batch calls each answered within
#: `QUICK_CALL_S` per call it was sent behind or with) may wait in an instance this many times its
#: depth: more calls in flight, one wake-up of the worker for several, and the wait behind them still
#: short. Direct calls never do: they keep the depth, and their wait behind slow calls bounded.
QUICK_BATCH_DEPTH_FACTOR = 4
QUICK_CALL_S = 0.001
QUICK_SAMPLE = 64

#: How long a pool whose instance failed to start waits before it starts its minimum again.
START_RETRY_S = 5.0

#: Target fields a pool may change without restarting its instances.
SCALING_FIELDS = ("minimum_instances", "maximum_instances", "maximum_idle_time")

#: How long a pool that found the cluster at its limit sends calls to the nodes holding its
#: instances before it tries to start one of its own again.
FULL_RECHECK_S = 2.0

#: How long a call waits before it looks for an instance again when every holder it knew was gone.
RETRY_ELSEWHERE_S = 0.05


class Slots(Protocol):
    """The ledger of instances that limits are counted in (`instance_slots`)."""

    async def take(self, pool: str, limit: int) -> str | None: ...

    async def give(self, slot_id: str) -> None: ...

    async def give_if_above(self, slot_id: str, pool: str, floor: int) -> bool: ...

    async def holders(self, pool: str) -> list[Holder]: ...

    async def loaded(self, slot_id: str) -> None: ...

    async def count(self, pool: str) -> int: ...


class Peers(Protocol):
    """Runs a call on an instance of `target` that the node at `address` holds. Raises what
    `Scheduler.run` raises, and `NoCapacity` when that node has no instance of it to run it."""

    async def run(self, address: str, target: Target, call: Call, timeout: float, priority: int,
                  on_update: Callable[[str], None] | None) -> CallOutcome: ...


def pool_key(target: Target) -> str:
    """The pool serving a target: the version's own, or a named one (a service's)."""
    return target.pool or target.version_id


@dataclass(frozen=True)
class PoolLoad:
    """What a pool of this node has at one moment (for the metrics)."""

    target: Target
    starting: int
    idle: int
    busy: int  # each runs a call (and may hold more, waiting in it)
    waiting: int  # calls waiting for an instance


class _Retired(Exception):
    """The pool a waiter queued on was retired (new code or settings); wait on the new one."""


@dataclass
class _Pool:
    target: Target
    idle: list[tuple[Instance, float]] = field(default_factory=list)  # (instance, idle since), LIFO
    busy: dict[Instance, int] = field(default_factory=dict)  # instance -> the calls sent to it, not yet answered
    starting: int = 0
    #: One queue of waiters per priority level: direct, batch high, batch standard.
    waiters: tuple[deque[asyncio.Future[Instance]], ...] = field(default_factory=lambda: (deque(), deque(), deque()))
    retired: bool = False
    start_error: InstanceStartFailed | None = None
    failed_at: float | None = None  # when an instance last failed to start (monotonic)
    slots: dict[Instance, str] = field(default_factory=dict)  # instance -> the slot it holds
    starting_slots: set[str] = field(default_factory=set)  # the slots of instances starting
    full_until: float = 0.0  # the cluster runs the maximum: no start tried before then (monotonic)
    minimum_met_until: float = 0.0  # the cluster runs the minimum: no start for it tried before then
    holders: list[Holder] = field(default_factory=list)  # where the others run, while full
    quick_answers: int = 0  # quick answers (`QUICK_CALL_S`) since the last slow one

    @property
    def size(self) -> int:
        return len(self.idle) + len(self.busy) + self.starting

    def waiting(self) -> int:
        return sum(1 for queue in self.waiters for fut in queue if not fut.done())

    def waits_beyond(self, n: int) -> bool:
        """Whether more than `n` callers wait (counted only as far as needed: many may wait)."""
        for queue in self.waiters:
            for fut in queue:
                if not fut.done():
                    n -= 1
                    if n < 0:
                        return True
        return False

    def next_waiter(self, calls: int = 0, depths: tuple[int, int] = (1, 1)) -> asyncio.Future[Instance] | None:
        """The first waiter, in priority order, if an instance with `calls` sent takes its call
        (`depths`: what it takes of direct calls, of batch calls); None if none waits or it does not."""
        for level, queue in enumerate(self.waiters):
            while queue:
                if queue[0].done():
                    queue.popleft()
                    continue
                return queue.popleft() if calls < depths[level > 0] else None
        return None

    @property
    def quick(self) -> bool:
        return self.quick_answers >= QUICK_SAMPLE

    def answered(self, seconds: float, calls: int) -> None:
        """A call sent to an instance that then had `calls` (its own included) was answered after `seconds`."""
        self.quick_answers = self.quick_answers + 1 if seconds < calls * QUICK_CALL_S else 0


class Scheduler:
    """Routes calls to instances. `make_spec` turns a target into what the runtime starts (making
    its code ready on this node first)."""

    def __init__(
        self,
        runtime: Runtime,
        make_spec: Callable[[Target], Awaitable[InstanceSpec]],
        serving_target: Callable[[str], Target | None] = lambda _version_id: None,
        slots: Slots | None = None,
        peers: Peers | None = None,
        depth: int | None = None,
    ) -> None:
        self._runtime = runtime
        # Calls an instance takes at once (one runs, the others wait in it): `depth` (or what the
        # runtime takes), and up to what the runtime takes for quick batch calls.
        self._depth = max(depth or runtime.depth, 1)
        self._quick_depth = max(min(runtime.depth, self._depth * QUICK_BATCH_DEPTH_FACTOR), self._depth)
        self._make_spec = make_spec
        self._serving_target = serving_target  # a version's current target, None unless it has code
        self._slots: Slots = slots or LocalSlots()
        self._peers = peers
        self._closing = False
        self._turns = itertools.count()  # spreads calls sent to other nodes over them
        self._pools: dict[str, _Pool] = {}
        # Instance starts and stops, and the reconcile loop. Closing stops the loop only: a start
        # cut short could leave a process nobody stops, and `runtime.close` stops the rest.
        self._background = Background("scheduler")
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._background.every(RECONCILE_PERIOD_S, self._reconcile, "reconcile")

    async def close(self) -> None:
        self._closing = True  # the node gives its slots back as it stops (`Nodes.close`)
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
        *,
        here_only: bool = False,
        on_start: Callable[[], None] | None = None,
    ) -> CallOutcome:
        """Run one call on an instance of `target` within `timeout` seconds (waiting included):
        one of this node's, or, when the cluster runs the maximum elsewhere, one another node holds.

        Raises `CallTimedOut`, `InstanceLost` or `InstanceStartFailed`; with `here_only` (a call
        another node sent), `NoCapacity` rather than sending it on. `on_start` is told when the call
        starts running (it may wait in an instance first, here or on another node).
        """
        deadline = time.monotonic() + timeout
        while True:
            pool = self._pool(target)
            instance = self._take_idle(pool, priority)
            if instance is None:  # the common case is an idle instance: no wait, so no timer to set
                try:
                    async with asyncio.timeout(deadline - time.monotonic()):
                        instance = await self._acquire(pool, priority)
                except TimeoutError:
                    raise CallTimedOut(timeout) from None
                except _Retired:
                    continue
                except NoCapacity:
                    if here_only:
                        raise
                    outcome = await self._run_elsewhere(pool, call, timeout, deadline, priority, on_update,
                                                        on_start)
                    if outcome is None:
                        continue  # the instances moved: look again
                    return outcome
            sent = time.monotonic() if priority != PRIORITY_DIRECT else 0.0  # batch calls are timed (`quick`)
            calls = pool.busy.get(instance, 1) if sent else 0
            try:
                outcome = await self._runtime.call(instance, call, max(deadline - time.monotonic(), 0.001),
                                                   on_update, on_start)
            except CallNotStarted:  # it waited in an instance that ended: send it again
                # It may learn of the end before the call that ended it: then it says so.
                self._lose(pool, instance, "it ended with calls waiting in it")
                continue
            except CallTimedOut:
                self._end_call(pool, instance, "its call ran past its timeout")
                raise
            except InstanceLost as exc:
                _log_instance(logging.WARNING, "lost", instance, pool.target, exc.message)
                self._lose(pool, instance, None)
                raise
            except BaseException:
                # Our caller went away mid-call (cancelled): a call that ran left the instance's state unknown.
                self._end_call(pool, instance, "its call was abandoned")
                raise
            if sent:
                pool.answered(time.monotonic() - sent, calls)
            self._release(pool, instance)
            return outcome

    def capacity(self, target: Target) -> int:
        """How many calls of `target` this node may have at once: what its maximum of instances take,
        or while the cluster runs the maximum, what this node's instances take (queued work is left to
        the others)."""
        pool = self._pools.get(pool_key(target))
        if pool is not None and pool.full_until > time.monotonic():
            return pool.size * self._batch_depth(pool)
        return target.maximum_instances * (self._depth if pool is None else self._batch_depth(pool))

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

    async def instances_elsewhere(self, key: str) -> int:
        """The loaded instances of a pool other nodes of the cluster run."""
        pool = self._pools.get(key)
        return max(await self._slots.count(key) - (len(pool.slots) if pool else 0), 0)

    def loads(self) -> list[PoolLoad]:
        """What each pool of this node has now: its instances by state and the calls waiting."""
        return [PoolLoad(pool.target, pool.starting, len(pool.idle), len(pool.busy), pool.waiting())
                for pool in self._pools.values()]

    def start_error(self, key: str) -> str | None:
        """Why the last instance of a pool failed to start, until one starts."""
        pool = self._pools.get(key)
        return None if pool is None or pool.start_error is None else pool.start_error.message

    def ensure(self, target: Target) -> None:
        """Make the pool of `target` exist with its settings now, starting instances up to its minimum
        and stopping idle ones above its maximum (a scaling change keeps the instances it has)."""
        pool = self._pool(target)
        self._scale(pool, time.monotonic())

    def retire_all(self) -> None:
        """Retire every pool (the node was declared dead: the cluster no longer counts its instances);
        instances start again, in new slots: the minimum at once, the rest as calls come."""
        for pool in list(self._pools.values()):
            self._retire(pool)
            self.warm(pool.target)

    def drop(self, key: str) -> None:
        """Retire a pool: idle instances stop now, busy ones once their call ends."""
        pool = self._pools.get(key)
        if pool is not None:
            self._retire(pool)

    async def make_ready(self, target: Target, timeout: float) -> None:
        """Wait until an instance of `target` is loaded and idle, starting one if needed (or until
        it is clear that the instances of other nodes run its calls).

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
            except NoCapacity:
                return
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
                    lowered = target.maximum_instances < pool.target.maximum_instances
                    pool.target = target
                    pool.full_until = pool.minimum_met_until = 0.0
                    if lowered:  # the cluster may now run more than the new maximum: idle ones go
                        for instance, _ in pool.idle[:]:
                            self._stop_if_above(pool, instance, target.maximum_instances)
                    self._fill(pool)
                    return pool
                self._retire(pool)
            pool = self._pools[key] = _Pool(target)
        return pool

    def _batch_depth(self, pool: _Pool) -> int:
        return self._quick_depth if pool.quick else self._depth

    def _take_idle(self, pool: _Pool, priority: int) -> Instance | None:
        """An idle instance, else a seat in a busy one when no more may start; none when there is
        neither or others wait ahead of us."""
        if pool.waits_beyond(0):
            return None
        while pool.idle:
            instance, _ = pool.idle.pop()
            if instance.state is InstanceState.STOPPED:  # it ended while idle (or a call withdrawn from it ran)
                _log_instance(logging.WARNING, "lost", instance, pool.target, "it ended while idle")
                self._stop(pool, instance, None)
                continue
            pool.busy[instance] = 1
            return instance
        instance = self._free_seat(pool, self._depth if priority == PRIORITY_DIRECT else self._batch_depth(pool))
        if instance is not None:
            pool.busy[instance] += 1
        return instance

    def _free_seat(self, pool: _Pool, depth: int) -> Instance | None:
        """For a call that finds no idle instance and no waiter ahead: the busy instance with the
        fewest calls, if it takes one more (of `depth`) and the call would otherwise wait."""
        if not self._shares_seats(pool, wanting=1):
            return None
        instance, calls = min(pool.busy.items(), key=lambda item: item[1], default=(None, depth))
        return instance if calls < depth and instance.state is not InstanceState.STOPPED else None

    def _shares_seats(self, pool: _Pool, wanting: int | None = None) -> bool:
        """Whether calls (`wanting` of them; None: those waiting in the pool) go to wait in busy
        instances: only when no instance may start for them and none is starting that will take them
        (one waiting in an instance may wait for a long call ahead of it; a new instance would serve
        it at once)."""
        if self._depth <= 1 or (pool.size < pool.target.maximum_instances and pool.full_until <= time.monotonic()):
            return False
        return pool.waits_beyond(pool.starting) if wanting is None else wanting > pool.starting

    async def _acquire(self, pool: _Pool, priority: int) -> Instance:
        instance = self._take_idle(pool, priority)
        if instance is not None:
            return instance
        if not pool.size and pool.full_until > time.monotonic():
            raise NoCapacity
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

    async def _run_elsewhere(self, pool: _Pool, call: Call, timeout: float, deadline: float, priority: int,
                             on_update: Callable[[str], None] | None,
                             on_start: Callable[[], None] | None) -> CallOutcome | None:
        """Run a call on an instance of a node that holds the pool's; None when none of them could
        take it (their instances stopped meanwhile, or a slot given back is on its way)."""
        key = pool_key(pool.target)
        if not pool.holders or pool.full_until <= time.monotonic():
            pool.holders = await self._slots.holders(key)
        holders = [holder for holder in pool.holders if holder.address and self._peers is not None]
        if holders:  # spread the calls over the holders, one after the other
            first = next(self._turns) % len(holders)
            holders = holders[first:] + holders[:first]
        for holder in holders:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CallTimedOut(timeout)
            try:
                assert self._peers is not None and holder.address is not None
                return await self._peers.run(holder.address, pool.target, call, remaining, priority, on_update,
                                             on_start)
            except (NoCapacity, CallNotStarted):  # no instance there, or that node went away first
                continue
        pool.holders, pool.full_until = [], 0.0  # the next look asks the store
        if time.monotonic() + RETRY_ELSEWHERE_S >= deadline:
            raise CallTimedOut(timeout)
        await asyncio.sleep(RETRY_ELSEWHERE_S)
        return None

    def _release(self, pool: _Pool, instance: Instance) -> None:
        """A call of `instance` was answered: its seat goes to the next waiter, or the instance idles."""
        left = pool.busy.pop(instance, 1) - 1
        if left:
            pool.busy[instance] = left
        self._hand_over(pool, instance)

    def _hand_over(self, pool: _Pool, instance: Instance) -> None:
        """Give `instance` (in `pool.busy` with its calls, if it has any) to waiters: the first, and
        more up to its depth while no instance may start; else it idles. A retired one stops once its
        calls are answered."""
        if pool.retired or instance.state is InstanceState.STOPPED:  # retired, or ended by its last call
            if instance in pool.busy:
                return  # the calls still in it end first (retired), or end with it (stopped)
            if pool.retired:
                self._stop(pool, instance, "its version changed")
            else:
                _log_instance(logging.WARNING, "lost", instance, pool.target, "it exited after its call")
                self._stop(pool, instance, None)
            self._fill(pool)
            return
        while True:
            calls = pool.busy.get(instance, 0)
            if calls and not self._shares_seats(pool):
                break
            waiter = pool.next_waiter(calls, (self._depth, self._batch_depth(pool)))
            if waiter is None:
                break
            pool.busy[instance] = calls + 1
            waiter.set_result(instance)
        if instance not in pool.busy:
            pool.idle.append((instance, time.monotonic()))

    def _end_call(self, pool: _Pool, instance: Instance, why: str) -> None:
        """A call failed or was abandoned: one that ran ended its instance; one withdrawn while it
        waited in it left the instance going, with a seat free."""
        if instance.state is InstanceState.STOPPED:
            self._lose(pool, instance, why)
        else:
            self._release(pool, instance)

    def _lose(self, pool: _Pool, instance: Instance, why: str | None) -> None:
        """An instance ended with calls in it: each call that learns it takes it out (once), and
        a waiter may have queued behind it."""
        if pool.busy.pop(instance, None) is not None or instance in pool.slots:
            self._stop(pool, instance, why)
        self._fill(pool)

    def _fill(self, pool: _Pool) -> None:
        """Start instances for waiters nobody will serve soon, up to the version's maximum; while the
        cluster runs the maximum elsewhere and this node has none left, send the waiters there."""
        full = pool.full_until > time.monotonic()
        while (not pool.retired and pool.waits_beyond(pool.starting) and pool.size < pool.target.maximum_instances
               and not full):
            pool.starting += 1
            self._background.spawn(self._start_instance(pool))
        if full:
            self._fail_waiters(pool, NoCapacity())

    async def _start_instance(self, pool: _Pool, for_minimum: bool = False) -> None:
        """Take a slot of the pool (below its maximum, or its minimum), then start an instance in it."""
        target = pool.target
        try:
            slot = await self._slots.take(pool_key(target),
                                          target.minimum_instances if for_minimum else target.maximum_instances)
        except Exception:
            pool.starting -= 1
            log.exception("counting the instances of version %s failed", target.version_id)
            self._fail_waiters(pool, InstanceStartFailed("The instances of the cluster could not be counted"))
            return
        if slot is None:
            pool.starting -= 1
            if for_minimum:  # the other nodes run it: look again later
                pool.minimum_met_until = time.monotonic() + FULL_RECHECK_S
                self._fill(pool)
            else:
                pool.full_until = time.monotonic() + FULL_RECHECK_S
                self._fail_waiters(pool, NoCapacity())  # unless this node has instances for them
            return
        pool.starting_slots.add(slot)
        try:
            instance = await self._runtime.start(await self._make_spec(target))
        except InstanceStartFailed as exc:
            pool.starting -= 1
            pool.starting_slots.discard(slot)
            self._give(slot)
            pool.start_error, pool.failed_at = exc, time.monotonic()
            log.warning("instance of version %s failed to start: %s", target.version_id, exc.message)
            self._fail_waiters(pool, exc)  # the code cannot load: fail them rather than retry forever
            return
        except Exception:
            pool.starting -= 1
            pool.starting_slots.discard(slot)
            self._give(slot)
            log.exception("starting an instance of version %s crashed", target.version_id)
            return
        pool.starting -= 1
        pool.starting_slots.discard(slot)
        pool.start_error = pool.failed_at = None
        pool.slots[instance] = slot
        _log_instance(logging.INFO, "started", instance, target)
        self._background.spawn(self._slots.loaded(slot))  # counted as loaded by the others' readiness
        self._release(pool, instance)

    @staticmethod
    def _fail_waiters(pool: _Pool, exc: Exception) -> None:
        """Fail the pool's waiters with `exc` when no instance of this node is left to serve them."""
        if not pool.idle and not pool.busy and not pool.starting:
            while (waiter := pool.next_waiter()) is not None:
                waiter.set_exception(exc)

    def _stop(self, pool: _Pool, instance: Instance, why: str | None) -> None:
        """Give an instance's slot back (first: its replacement may take it), and stop it; logged
        with `why` (None: the caller logged it)."""
        if why is not None:
            _log_instance(logging.INFO, "stopped", instance, pool.target, why)
        slot = pool.slots.pop(instance, None)
        if slot is not None:
            self._give(slot)
        self._background.spawn(self._runtime.stop(instance))

    def _give(self, slot: str) -> None:
        if not self._closing:  # a stopping node gives all its slots back at once
            self._background.spawn(self._slots.give(slot))

    def _stop_if_above(self, pool: _Pool, instance: Instance, floor: int) -> None:
        """Stop an idle instance if the cluster runs more than `floor` of the pool without it; else
        keep it (idle from now). It counts as busy while the cluster's ledger decides."""
        pool.idle = [item for item in pool.idle if item[0] is not instance]
        pool.busy[instance] = self._quick_depth  # no seat free meanwhile
        self._background.spawn(self._stop_if_above_now(pool, instance, floor))

    async def _stop_if_above_now(self, pool: _Pool, instance: Instance, floor: int) -> None:
        slot = pool.slots.get(instance)
        try:
            above = slot is None or await self._slots.give_if_above(slot, pool_key(pool.target), floor)
        except Exception:
            log.exception("counting the instances of version %s failed", pool.target.version_id)
            above = False
        if not above:
            pool.busy.pop(instance, None)
            self._hand_over(pool, instance)
            return
        pool.slots.pop(instance, None)
        pool.busy.pop(instance, None)
        _log_instance(logging.INFO, "stopped", instance, pool.target, "idle past its time, or above the maximum")
        await self._runtime.stop(instance)

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
        why = "the server stops" if self._closing else "its version changed, or its pool was dropped"
        for instance, _ in pool.idle:
            self._stop(pool, instance, why)
        pool.idle.clear()
        # Busy ones end their call without one: the pool of the new code or settings starts at once.
        for slot in [*pool.slots.values(), *pool.starting_slots]:
            self._give(slot)
        pool.slots.clear()
        pool.starting_slots.clear()
        while (waiter := pool.next_waiter()) is not None:
            waiter.set_exception(_Retired())

    def _reconcile(self) -> None:
        now = time.monotonic()
        for pool in list(self._pools.values()):
            self._scale(pool, now)

    def _scale(self, pool: _Pool, now: float) -> None:
        target = pool.target
        pool.idle.sort(key=lambda item: item[1])
        while pool.idle and len(pool.idle) + len(pool.busy) > target.maximum_instances:  # scaled down
            instance, _ = pool.idle.pop(0)
            self._stop(pool, instance, "above the maximum")
        # Idle past their time: each goes while the cluster runs more than the minimum without it.
        for instance, since in pool.idle[:]:
            if now - since >= target.maximum_idle_time:
                self._stop_if_above(pool, instance, target.minimum_instances)
        self._keep_minimum(pool)
        self._fill(pool)  # the cluster may have room again for waiters that found it full

    def _keep_minimum(self, pool: _Pool) -> None:
        now = time.monotonic()
        if pool.failed_at is not None and now - pool.failed_at < START_RETRY_S:
            return  # code that cannot load is not restarted in a tight loop
        if pool.minimum_met_until > now:
            return  # other nodes run the minimum
        for _ in range(max(pool.target.minimum_instances - pool.size, 0)):
            pool.starting += 1
            self._background.spawn(self._start_instance(pool, for_minimum=True))


def _log_instance(level: int, event: str, instance: Instance, target: Target, why: str | None = None) -> None:
    """One line for an instance that started, stopped or was lost."""
    log.log(level, "instance %s of %s/%s %s%s", instance.id, target.deployment_name, target.version_name, event,
            f": {why}" if why else "",
            extra={"instance": instance.id, "project": target.project_name, "deployment": target.deployment_name,
                   "version": target.version_name, "event": f"instance {event}"})
