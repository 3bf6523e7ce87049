"""The scheduler's logic against a fake runtime: no processes, only the decisions."""

from __future__ import annotations

import asyncio
import logging
import dataclasses
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelbay.core.deployments import Target
from modelbay.core.instance_slots import Holder, LocalSlots, NoCapacity
from modelbay.core import scheduler
from modelbay.core.scheduler import PRIORITY_BATCH, PRIORITY_DIRECT, Scheduler
from modelbay.runtime.base import (
    Call,
    CallNotStarted,
    CallOutcome,
    CallTimedOut,
    InstanceLost,
    InstanceSpec,
    InstanceStartFailed,
    InstanceState,
)

_ids = itertools.count()


@dataclasses.dataclass(eq=False)
class FakeInstance:
    id: str
    state: InstanceState = InstanceState.IDLE


class FakeRuntime:
    prepares_code = False

    def __init__(self, depth: int = 1) -> None:
        self.depth = depth
        self.started: list[FakeInstance] = []
        self.stopped: list[FakeInstance] = []
        self.gate: asyncio.Event | None = None  # when set, calls wait for it
        self.fail_start = False
        self.lose_next = False
        self.order: list[str] = []

    async def start(self, spec: InstanceSpec) -> FakeInstance:
        await asyncio.sleep(0)
        if self.fail_start:
            raise InstanceStartFailed("ImportError: no module named nothing")
        instance = FakeInstance(f"i{next(_ids)}")
        self.started.append(instance)
        return instance

    async def call(self, instance: Any, call: Call, timeout: float, on_update: Callable[[str], None] | None = None,
                   on_start: Callable[[], None] | None = None) -> CallOutcome:
        if self.lose_next:
            self.lose_next = False
            raise InstanceLost("The instance stopped unexpectedly (exit code 1)")
        if self.gate is not None:
            try:
                await asyncio.wait_for(self.gate.wait(), timeout)
            except TimeoutError:
                instance.state = InstanceState.STOPPED  # as a runtime kills an instance whose call ran too long
                raise CallTimedOut(timeout) from None
            except asyncio.CancelledError:
                instance.state = InstanceState.STOPPED  # and one whose running call was abandoned
                raise
        self.order.append(call.request_id)
        return CallOutcome(ok=True, result={"by": instance.id})

    async def stop(self, instance: Any) -> None:
        self.stopped.append(instance)

    async def healthy(self, instance: Any) -> bool:
        return instance not in self.stopped

    async def close(self) -> None:
        pass


def target(**changes: Any) -> Target:
    base = Target(
        project_id="p", project_name="p", deployment_id="d", deployment_name="d", version_id="v",
        version_name="v1", input_type="plain", output_type="plain", input_fields=(), output_fields=(),
        status="available", retention_mode="full", minimum_instances=0, maximum_instances=2,
        maximum_idle_time=300, environment_variables={}, handler=None, revision_id="r", archive_key="k",
        has_requests_method=False,
    )
    return dataclasses.replace(base, **changes)


async def spec(t: Target) -> InstanceSpec:
    return InstanceSpec(t.version_id, Path("/x"), Path("/x/python"), {})  # type: ignore[arg-type]


def make(runtime: FakeRuntime) -> Scheduler:
    return Scheduler(runtime, spec)


async def settle() -> None:
    """Let the tasks the scheduler spawned (stops, starts) run."""
    for _ in range(5):
        await asyncio.sleep(0)


def call(n: int | str) -> Call:
    return Call(request_id=str(n), data="x")


def test_an_idle_instance_is_reused_instead_of_starting_another() -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        sched = make(runtime)
        first = await sched.run(target(), call(1), 5)
        second = await sched.run(target(), call(2), 5)
        assert first.result == second.result
        assert len(runtime.started) == 1

    asyncio.run(scenario())


def test_concurrent_requests_start_instances_up_to_the_maximum_only() -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.gate = asyncio.Event()
        sched = make(runtime)
        tasks = [asyncio.create_task(sched.run(target(maximum_instances=2), call(i), 5)) for i in range(6)]
        await asyncio.sleep(0.05)
        assert len(runtime.started) == 2
        runtime.gate.set()
        results = await asyncio.gather(*tasks)
        assert len(results) == 6 and len(runtime.started) == 2

    asyncio.run(scenario())


def test_direct_requests_are_served_before_waiting_batch_work() -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.gate = asyncio.Event()
        sched = make(runtime)
        t = target(maximum_instances=1)
        busy = asyncio.create_task(sched.run(t, call("first"), 5))
        await asyncio.sleep(0.01)
        batch = asyncio.create_task(sched.run(t, call("batch"), 5, PRIORITY_BATCH))
        await asyncio.sleep(0.01)
        direct = asyncio.create_task(sched.run(t, call("direct"), 5, PRIORITY_DIRECT))
        await asyncio.sleep(0.01)
        runtime.gate.set()
        await asyncio.gather(busy, batch, direct)
        assert runtime.order == ["first", "direct", "batch"]

    asyncio.run(scenario())


def test_a_lost_instance_is_stopped_and_the_next_request_gets_a_new_one() -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        sched = make(runtime)
        await sched.run(target(), call(1), 5)
        runtime.lose_next = True
        with pytest.raises(InstanceLost):
            await sched.run(target(), call(2), 5)
        await settle()
        assert runtime.stopped == [runtime.started[0]]
        await sched.run(target(), call(3), 5)
        assert len(runtime.started) == 2

    asyncio.run(scenario())


def test_code_that_cannot_start_fails_the_waiting_request() -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.fail_start = True
        sched = make(runtime)
        with pytest.raises(InstanceStartFailed, match="ImportError"):
            await sched.run(target(), call(1), 5)

    asyncio.run(scenario())


def test_waiting_longer_than_the_timeout_times_out() -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.gate = asyncio.Event()
        sched = make(runtime)
        t = target(maximum_instances=1)
        busy = asyncio.create_task(sched.run(t, call(1), 5))
        await asyncio.sleep(0.01)
        with pytest.raises(CallTimedOut):
            await sched.run(t, call(2), 0.05)
        runtime.gate.set()
        await busy

    asyncio.run(scenario())


def test_idle_instances_above_the_minimum_are_stopped_after_the_idle_time(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.gate = asyncio.Event()
        sched = make(runtime)
        t = target(minimum_instances=1, maximum_instances=3, maximum_idle_time=0)
        tasks = [asyncio.create_task(sched.run(t, call(i), 5)) for i in range(3)]
        await asyncio.sleep(0.01)
        runtime.gate.set()
        await asyncio.gather(*tasks)
        assert sched.instance_count("v") == 3
        sched._reconcile()
        await settle()  # each waits for the count of the cluster's instances
        assert sched.instance_count("v") == 1
        assert len(runtime.stopped) == 2

    asyncio.run(scenario())


def test_a_changed_version_retires_its_idle_instances() -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        sched = make(runtime)
        sched.start()
        await sched.run(target(), call(1), 5)
        sched.version_changed("v")
        await asyncio.sleep(0.01)
        assert runtime.stopped == runtime.started
        await sched.run(target(), call(2), 5)
        assert len(runtime.started) == 2
        await sched.close()

    asyncio.run(scenario())


# --- named pools (services) -------------------------------------------------------------


def test_a_named_pool_is_kept_apart_from_its_versions_own_pool() -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        sched = make(runtime)
        sched.ensure(target(pool="service:a", minimum_instances=2, maximum_instances=2))
        await settle()
        assert len(sched.instances("service:a")) == 2 and sched.instance_count("v") == 0
        await sched.run(target(), call(1), 5)
        assert sched.instance_count("v") == 1 and len(runtime.started) == 3

    asyncio.run(scenario())


def test_a_scaling_change_keeps_the_instances_a_pool_has_and_scales_down_at_once() -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        sched = make(runtime)
        sched.ensure(target(pool="s", minimum_instances=1, maximum_instances=1))
        await settle()
        [first] = sched.instances("s")
        sched.ensure(target(pool="s", minimum_instances=3, maximum_instances=3))
        await settle()
        assert len(sched.instances("s")) == 3 and first in sched.instances("s")
        sched.ensure(target(pool="s", minimum_instances=1, maximum_instances=1))
        await settle()
        assert len(sched.instances("s")) == 1 and len(runtime.stopped) == 2

    asyncio.run(scenario())


def test_new_code_retires_every_pool_of_the_version_and_drop_retires_one() -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        sched = make(runtime)
        sched.start()
        sched.ensure(target(pool="a", minimum_instances=1))
        sched.ensure(target(pool="b", minimum_instances=1))
        await settle()
        sched.drop("a")
        await settle()
        assert sched.instances("a") == [] and len(sched.instances("b")) == 1
        sched.version_changed("v")
        await settle()
        assert sched.instances("b") == [] and len(runtime.stopped) == 2
        await sched.close()

    asyncio.run(scenario())


def test_make_ready_leaves_one_idle_instance_ready_for_the_next_call() -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        sched = make(runtime)
        await sched.make_ready(target(), 5)
        assert sched.instance_count("v") == 1
        await sched.run(target(), call(1), 5)
        assert len(runtime.started) == 1

    asyncio.run(scenario())


def test_a_pool_whose_code_cannot_start_is_not_restarted_in_a_tight_loop() -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.fail_start = True
        sched = make(runtime)
        t = target(pool="s", minimum_instances=1)
        attempts = 0
        original = runtime.start

        async def counting_start(spec: InstanceSpec) -> FakeInstance:
            nonlocal attempts
            attempts += 1
            return await original(spec)

        runtime.start = counting_start  # type: ignore[method-assign]
        for _ in range(10):
            sched.ensure(t)
            await settle()
        assert attempts == 1
        assert sched.start_error("s") == "ImportError: no module named nothing"

    asyncio.run(scenario())


# --- limits counted across the cluster -------------------------------------------------------


class OtherNodes(LocalSlots):
    """A ledger where other nodes already hold `held` slots of every pool, at `address`."""

    def __init__(self, held: int) -> None:
        super().__init__()
        self.held = held

    async def take(self, pool: str, limit: int) -> str | None:
        return None if self.held + len(self._taken.get(pool, ())) >= limit else await super().take(pool, limit)

    async def give_if_above(self, slot_id: str, pool: str, floor: int) -> bool:
        return await super().give_if_above(slot_id, pool, floor - self.held)

    async def count(self, pool: str) -> int:
        return self.held + await super().count(pool)

    async def holders(self, pool: str) -> list[Holder]:
        return [Holder("other", "http://other:8000", self.held)] if self.held else []


class RecordingPeers:
    """Runs every call at once; the first `gone_before_start` calls find their node gone before they start."""

    def __init__(self, gone_before_start: int = 0) -> None:
        self.sent: list[tuple[str, str]] = []
        self.gone_before_start = gone_before_start

    async def run(self, address: str, target: Target, call: Call, timeout: float, priority: int,
                  on_update: Callable[[str], None] | None,
                  on_start: Callable[[], None] | None = None) -> CallOutcome:
        self.sent.append((address, call.request_id))
        if self.gone_before_start:
            self.gone_before_start -= 1
            raise CallNotStarted()
        if on_start is not None:
            on_start()
        return CallOutcome(ok=True, result={"by": address})


def test_a_node_whose_cluster_runs_the_maximum_elsewhere_sends_its_calls_there_and_starts_nothing() -> None:
    async def scenario() -> None:
        runtime, peers = FakeRuntime(), RecordingPeers()
        sched = Scheduler(runtime, spec, slots=OtherNodes(held=2), peers=peers)
        t = target(maximum_instances=2)
        outcomes = [await sched.run(t, call(i), 5) for i in range(3)]
        assert [o.result for o in outcomes] == [{"by": "http://other:8000"}] * 3
        assert runtime.started == [] and len(peers.sent) == 3
        assert sched.capacity(t) == 0  # its batch queue leaves the work to the others
        with pytest.raises(NoCapacity):  # a call another node sent is never sent on
            await sched.run(t, call("sent"), 5, here_only=True)

    asyncio.run(scenario())


def test_a_call_sent_to_a_node_that_went_away_before_it_started_is_sent_again_and_started_once() -> None:
    async def scenario() -> None:
        peers = RecordingPeers(gone_before_start=1)
        sched = Scheduler(FakeRuntime(), spec, slots=OtherNodes(held=2), peers=peers)
        starts: list[str] = []
        outcome = await sched.run(target(maximum_instances=2), call("c"), 5, on_start=lambda: starts.append("c"))
        assert outcome.ok and peers.sent == [("http://other:8000", "c")] * 2 and starts == ["c"]

    asyncio.run(scenario())


def test_a_node_starts_instances_only_up_to_what_the_cluster_leaves_and_waits_for_its_own() -> None:
    async def scenario() -> None:
        runtime, peers = FakeRuntime(), RecordingPeers()
        runtime.gate = asyncio.Event()
        sched = Scheduler(runtime, spec, slots=OtherNodes(held=1), peers=peers)
        t = target(maximum_instances=2)
        tasks = [asyncio.create_task(sched.run(t, call(i), 5)) for i in range(4)]
        await asyncio.sleep(0.05)
        runtime.gate.set()
        await asyncio.gather(*tasks)
        assert len(runtime.started) == 1 and peers.sent == []  # its one instance ran all four

    asyncio.run(scenario())


def test_the_minimum_is_counted_across_the_cluster_when_starting_and_when_stopping_idle_instances() -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        met = Scheduler(runtime, spec, slots=OtherNodes(held=1), peers=RecordingPeers())
        met.warm(target(minimum_instances=1))
        await settle()
        assert runtime.started == []  # another node runs the minimum

        runtime = FakeRuntime()
        sched = Scheduler(runtime, spec, slots=OtherNodes(held=1), peers=RecordingPeers())
        t = target(minimum_instances=2, maximum_instances=3, maximum_idle_time=0)
        sched.warm(t)
        await settle()
        assert len(runtime.started) == 1  # one here and one elsewhere make the minimum
        sched._reconcile()
        await settle()
        assert runtime.stopped == []  # idle past its time, but the cluster would drop below the minimum

    asyncio.run(scenario())


def test_a_node_declared_dead_retires_its_instances_and_starts_its_minimum_again_in_new_slots() -> None:
    async def scenario() -> None:
        runtime, slots = FakeRuntime(), LocalSlots()
        sched = Scheduler(runtime, spec, slots=slots)
        sched.warm(target(minimum_instances=1))
        await settle()
        (first,) = runtime.started

        sched.retire_all()
        await settle()

        assert runtime.stopped == [first] and len(runtime.started) == 2
        assert await slots.count("v") == 1  # the new one, loaded

    asyncio.run(scenario())


def test_calls_waiting_for_an_instance_that_was_replaced_while_the_cluster_is_full_go_elsewhere() -> None:
    async def scenario() -> None:
        runtime, peers = FakeRuntime(), RecordingPeers()
        runtime.gate = asyncio.Event()  # calls hold their instance
        sched = Scheduler(runtime, spec, slots=OtherNodes(held=1), peers=peers)
        t = target(maximum_instances=2)
        abandoned = asyncio.create_task(sched.run(t, call("abandoned"), 30))
        await settle()
        assert len(runtime.started) == 1  # this node's one instance runs it
        waiting = asyncio.create_task(sched.run(t, call("waiting"), 30))
        await settle()  # it waits for that instance: the cluster runs its maximum
        abandoned.cancel()  # its caller went away: the instance is replaced, and no other may start
        outcome = await asyncio.wait_for(waiting, 5)
        assert outcome.result == {"by": "http://other:8000"} and peers.sent == [("http://other:8000", "waiting")]

    asyncio.run(scenario())


# --- several calls sent to one instance (a runtime of depth 2) ---------------------------------


class PipelinedRuntime(FakeRuntime):
    """Takes two calls per instance; counts the most each instance held at once. A call named in
    `not_started` ends as one that waited in an instance that ended; one in `withdrawn` times out
    while it waits (the instance goes on)."""

    def __init__(self) -> None:
        super().__init__(depth=2)
        self.held: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.behind: dict[str, int] = {}  # call -> the calls its instance held when it was sent
        self.not_started: set[str] = set()
        self.withdrawn: set[str] = set()

    async def call(self, instance: Any, call: Call, timeout: float, on_update: Callable[[str], None] | None = None,
                   on_start: Callable[[], None] | None = None) -> CallOutcome:
        held = self.held[instance.id] = self.held.get(instance.id, 0) + 1
        self.behind[call.request_id] = held - 1
        self.most[instance.id] = max(self.most.get(instance.id, 0), held)
        assert held <= self.depth, "more calls sent to an instance than it takes"
        try:
            await asyncio.sleep(0)
            if call.request_id in self.not_started:
                self.not_started.discard(call.request_id)
                instance.state = InstanceState.STOPPED
                raise CallNotStarted()
            if call.request_id in self.withdrawn:
                raise CallTimedOut(timeout)
            return await super().call(instance, call, timeout, on_update)
        finally:
            self.held[instance.id] -= 1


def test_at_its_maximum_a_pool_sends_a_call_to_wait_in_a_busy_instance_as_deep_as_it_takes() -> None:
    async def scenario() -> None:
        runtime = PipelinedRuntime()
        runtime.gate = asyncio.Event()
        sched = make(runtime)
        t = target(maximum_instances=1)
        tasks = [asyncio.create_task(sched.run(t, call(i), 5)) for i in range(5)]
        await settle()
        (instance,) = runtime.started
        assert runtime.held == {instance.id: 2}  # two sent at once; the other three wait here
        assert sched.capacity(t) == 2  # the batch queue keeps as many going
        runtime.gate.set()
        await asyncio.gather(*tasks)
        assert runtime.most == {instance.id: 2} and runtime.order == [str(i) for i in range(5)]

    asyncio.run(scenario())


def test_quick_batch_calls_wait_in_an_instance_deeper_than_direct_ones_until_one_is_slow(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        runtime = PipelinedRuntime()
        runtime.depth = 8  # what the runtime takes; the scheduler's own depth is 2
        sched = Scheduler(runtime, spec, depth=2)
        t = target(maximum_instances=1)
        assert sched.capacity(t) == 2
        monkeypatch.setattr(scheduler, "QUICK_CALL_S", 60.0)  # every answer is quick
        for i in range(scheduler.QUICK_SAMPLE):
            await sched.run(t, call(i), 5, PRIORITY_BATCH)
        assert sched.capacity(t) == 8  # min(what the runtime takes, 2 x QUICK_BATCH_DEPTH_FACTOR)
        runtime.gate = asyncio.Event()
        batch = [asyncio.create_task(sched.run(t, call(f"b{i}"), 5, PRIORITY_BATCH)) for i in range(10)]
        await settle()
        (instance,) = runtime.started
        assert runtime.held == {instance.id: 8}  # the other two wait here
        direct = asyncio.create_task(sched.run(t, call("d"), 5, PRIORITY_DIRECT))
        await settle()
        monkeypatch.setattr(scheduler, "QUICK_CALL_S", 0.0)  # every answer from now on is slow
        runtime.gate.set()
        await asyncio.gather(*batch, direct)
        # The direct call went ahead of the two batch calls still waiting, once the instance held
        # fewer than 2 (not 8) calls: it was sent behind one at most.
        assert runtime.behind["b7"] == 7 and runtime.behind["d"] <= 1
        assert runtime.order.index("d") < min(runtime.order.index("b8"), runtime.order.index("b9"))
        assert sched.capacity(t) == 2

    asyncio.run(scenario())


def test_below_its_maximum_a_pool_starts_an_instance_rather_than_send_a_call_to_a_busy_one() -> None:
    async def scenario() -> None:
        runtime = PipelinedRuntime()
        runtime.gate = asyncio.Event()
        sched = make(runtime)
        tasks = [asyncio.create_task(sched.run(target(maximum_instances=2), call(i), 5)) for i in range(2)]
        await settle()
        runtime.gate.set()
        await asyncio.gather(*tasks)
        assert len(runtime.started) == 2 and set(runtime.most.values()) == {1}

    asyncio.run(scenario())


def test_a_call_that_waited_in_an_instance_that_ended_is_sent_again(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        runtime = PipelinedRuntime()
        runtime.not_started = {"again"}
        sched = make(runtime)
        outcome = await sched.run(target(maximum_instances=1), call("again"), 5)
        first, second = runtime.started
        assert outcome.result == {"by": second.id} and runtime.stopped == [first]

    with caplog.at_level(logging.INFO, logger="modelbay.core.scheduler"):
        asyncio.run(scenario())
    assert [r.getMessage() for r in caplog.records if "ended with calls waiting" in r.getMessage()], caplog.text


def test_a_call_withdrawn_while_it_waited_leaves_its_instance_in_service() -> None:
    async def scenario() -> None:
        runtime = PipelinedRuntime()
        runtime.withdrawn = {"late"}
        sched = make(runtime)
        t = target(maximum_instances=1)
        with pytest.raises(CallTimedOut):
            await sched.run(t, call("late"), 5)
        assert (await sched.run(t, call("next"), 5)).ok
        assert len(runtime.started) == 1 and runtime.stopped == []

    asyncio.run(scenario())


def test_an_idle_instance_that_ended_is_replaced_before_a_call_is_sent_to_it() -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        sched = make(runtime)
        await sched.run(target(), call(1), 5)
        (first,) = runtime.started
        first.state = InstanceState.STOPPED  # e.g. its process exited while idle
        outcome = await sched.run(target(), call(2), 5)
        assert runtime.stopped == [first] and outcome.result == {"by": runtime.started[1].id}

    asyncio.run(scenario())
