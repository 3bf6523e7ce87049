"""Several calls sent to one instance at once (`LocalRuntime(depth=N)`): the worker runs them one at a
time in the order sent, and a call that waits in it can be withdrawn without ending the instance."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from modelbay.runtime.base import Call, CallNotStarted, CallTimedOut, InstanceLost, InstanceState, RuntimeError_
from modelbay.runtime import worker_process
from modelbay.runtime.local import LocalRuntime
from modelbay.runtime.worker_process import LocalInstance, PendingCall
from tests.runtime.test_local import package, spec_for, with_runtime

#: Counts the calls it ran; a call may wait until a file exists (in its package directory, which the
#: sandbox shows), print, stream an update, or end the worker.
COUNTING = """
import os
import time


class Deployment:
    def __init__(self):
        self.ran = 0

    def request(self, data, context):
        self.ran += 1
        print("running", data["name"])
        if data.get("update"):
            context["streaming_update"](data["name"])
        if data.get("gate"):
            while not os.path.exists(data["gate"]):
                time.sleep(0.005)
        if data.get("exit"):
            os._exit(3)
        return {"name": data["name"], "ran": self.ran}
"""


def call(name: str, **data: Any) -> Call:
    return Call(name, {"name": name, **data}, {"id": name})


async def sent(runtime: LocalRuntime, instance: Any, *calls: tuple[Call, float]) -> list[asyncio.Task[Any]]:
    """Send calls one after the other (each written to the worker before the next)."""
    tasks = []
    for one, timeout in calls:
        tasks.append(asyncio.create_task(runtime.call(instance, one, timeout)))
        await asyncio.sleep(0)  # the task writes its frame
    return tasks


def test_calls_sent_ahead_run_one_at_a_time_in_the_order_sent_each_with_its_own_logs(tmp_path: Path) -> None:
    directory = package(tmp_path, COUNTING)
    gate = directory / "open"

    async def scenario(runtime: LocalRuntime) -> None:
        instance = await runtime.start(spec_for(directory))
        tasks = await sent(runtime, instance, (call("a", gate=str(gate)), 30), (call("b"), 30), (call("c"), 30))
        with pytest.raises(RuntimeError_):  # three sent: the instance takes no more
            await runtime.call(instance, call("d"), 30)
        assert instance.state is InstanceState.BUSY
        gate.touch()
        outcomes = await asyncio.gather(*tasks)
        assert [o.result for o in outcomes] == [{"name": n, "ran": i} for i, n in enumerate("abc", 1)]
        assert [o.logs for o in outcomes] == [f"running {n}\n" for n in "abc"]
        assert instance.state is InstanceState.IDLE

    with_runtime(tmp_path, scenario, depth=3)


def test_a_call_waiting_past_its_timeout_is_withdrawn_and_the_instance_goes_on(tmp_path: Path) -> None:
    directory = package(tmp_path, COUNTING)
    gate = directory / "open"

    async def scenario(runtime: LocalRuntime) -> None:
        instance = await runtime.start(spec_for(directory))
        running, waiting = await sent(runtime, instance, (call("a", gate=str(gate)), 30), (call("b"), 0.2))
        with pytest.raises(CallTimedOut):
            await waiting
        assert not running.done()  # the call ahead runs on
        gate.touch()
        assert (await running).result == {"name": "a", "ran": 1}
        after = await runtime.call(instance, call("c"), 30)
        assert after.result == {"name": "c", "ran": 2}  # the withdrawn call never ran

    with_runtime(tmp_path, scenario, depth=2)


def test_a_waiting_call_whose_caller_goes_away_is_withdrawn_and_frees_its_place_in_the_instance_at_once(
        tmp_path: Path) -> None:
    directory = package(tmp_path, COUNTING)
    gate = directory / "open"

    async def scenario(runtime: LocalRuntime) -> None:
        instance = await runtime.start(spec_for(directory))
        running, waiting = await sent(runtime, instance, (call("a", gate=str(gate)), 30), (call("b"), 30))
        waiting.cancel()  # its caller went away: the scheduler gives its place to another call
        with pytest.raises(asyncio.CancelledError):
            await waiting
        # The worker learns of the withdrawal only after the call that runs; the next call goes in meanwhile
        after = asyncio.create_task(runtime.call(instance, call("c"), 30))
        await asyncio.sleep(0)
        gate.touch()
        assert (await running).result == {"name": "a", "ran": 1}
        assert (await after).result == {"name": "c", "ran": 2}

    with_runtime(tmp_path, scenario, depth=2)


def test_when_the_running_call_times_out_the_calls_waiting_behind_it_did_not_start(tmp_path: Path) -> None:
    directory = package(tmp_path, COUNTING)

    async def scenario(runtime: LocalRuntime) -> None:
        instance = await runtime.start(spec_for(directory))
        never = str(directory / "never")
        running, waiting = await sent(runtime, instance, (call("a", gate=never), 0.5), (call("b"), 30))
        with pytest.raises(CallTimedOut) as timed_out:
            await running
        assert "running a" in timed_out.value.logs
        with pytest.raises(CallNotStarted):  # not failed: it may be sent again
            await waiting
        assert instance.state is InstanceState.STOPPED

    with_runtime(tmp_path, scenario, depth=2)


def test_when_the_running_call_ends_the_worker_the_calls_waiting_behind_it_did_not_start(tmp_path: Path) -> None:
    directory = package(tmp_path, COUNTING)

    async def scenario(runtime: LocalRuntime) -> None:
        instance = await runtime.start(spec_for(directory))
        gate = directory / "open"
        running, waiting = await sent(runtime, instance, (call("a", gate=str(gate), exit=True), 30), (call("b"), 30))
        gate.touch()
        with pytest.raises(InstanceLost):
            await running
        with pytest.raises(CallNotStarted):
            await waiting

    with_runtime(tmp_path, scenario, depth=2)


def test_updates_go_to_the_listener_of_the_call_that_streams_them(tmp_path: Path) -> None:
    directory = package(tmp_path, COUNTING)
    gate = directory / "open"

    async def scenario(runtime: LocalRuntime) -> None:
        instance = await runtime.start(spec_for(directory))
        heard: dict[str, list[str]] = {"a": [], "b": []}
        running = asyncio.create_task(runtime.call(instance, call("a", gate=str(gate), update=True), 30,
                                                   heard["a"].append))
        await asyncio.sleep(0)
        waiting = asyncio.create_task(runtime.call(instance, call("b", update=True), 30, heard["b"].append))
        await asyncio.sleep(0)
        gate.touch()
        await asyncio.gather(running, waiting)
        assert heard == {"a": ["a"], "b": ["b"]}

    with_runtime(tmp_path, scenario, depth=2)


@pytest.mark.parametrize("withdrawn_in_time", [True, False])
def test_a_withdrawn_call_that_the_worker_had_already_started_ends_the_instance_after_a_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, withdrawn_in_time: bool,
) -> None:
    """The worker's answers alone (no process): the call ahead is answered, so the withdrawn one is
    the first; the worker says it withdrew it, or says nothing because it runs it."""
    monkeypatch.setattr(worker_process, "WITHDRAW_GRACE_S", 0.05)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        instance = LocalInstance("i", tmp_path / "log", tmp_path / "scratch", 1 << 20)
        instance._state = InstanceState.BUSY
        ahead, given_up = (PendingCall(name, loop.create_future(), None) for name in "ab")
        given_up.given_up = True
        instance._calls.extend([ahead, given_up])
        instance._on_message({"type": "result", "id": "a", "ok": True, "result": 1})
        assert ahead.reply.result()["result"] == 1
        if withdrawn_in_time:
            instance._on_message({"type": "withdrawn", "id": "b"})
        await asyncio.sleep(0.2)
        expected = InstanceState.IDLE if withdrawn_in_time else InstanceState.STOPPED
        assert instance.state is expected

    asyncio.run(scenario())


def test_a_call_sent_to_an_instance_that_already_ended_did_not_start(tmp_path: Path) -> None:
    """E.g. given a seat behind a call whose caller then went away, which ended the instance."""
    directory = package(tmp_path, COUNTING)

    async def scenario(runtime: LocalRuntime) -> None:
        instance = await runtime.start(spec_for(directory))
        await runtime.stop(instance)
        with pytest.raises(CallNotStarted):  # it may be sent to another instance
            await runtime.call(instance, call("late"), 30)

    with_runtime(tmp_path, scenario, depth=2)
