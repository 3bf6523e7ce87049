"""Held tasks, periodic loops, the graceful close and shared commits, on a real event loop."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

import pytest

from modelbay.core.background import Background, Coalescer

pytestmark = pytest.mark.timeout(30)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.005)


def test_a_spawned_task_is_held_until_it_ends_then_forgotten() -> None:
    async def scenario() -> None:
        background = Background("test")
        release = asyncio.Event()
        ran: list[str] = []

        async def work() -> None:
            await release.wait()
            ran.append("done")

        background.spawn(work(), name="work")  # nobody else keeps a reference
        gc.collect()
        assert [t.get_name() for t in background.tasks] == ["work"]
        release.set()
        await until(lambda: not background.tasks)
        assert ran == ["done"]

    asyncio.run(scenario())


def test_a_failing_spawned_task_is_logged_with_its_owner_and_name(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        background = Background("owner")

        async def broken() -> None:
            raise RuntimeError("boom")

        background.spawn(broken(), name="broken-task")
        await until(lambda: not background.tasks)

    with caplog.at_level(logging.ERROR, logger="modelbay.core.background"):
        asyncio.run(scenario())
    [record] = caplog.records
    assert "owner" in record.getMessage() and "broken-task" in record.getMessage()
    assert record.exc_info is not None and str(record.exc_info[1]) == "boom"


def test_a_failing_pass_is_logged_and_the_next_pass_runs(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        background = Background("owner")
        passes: list[int] = []

        def run_pass() -> None:  # a sync pass, as the scheduler's
            passes.append(len(passes))
            if len(passes) == 1:
                raise RuntimeError("first pass fails")

        background.every(0.01, run_pass, "sweep")
        await until(lambda: len(passes) >= 3)
        await background.close()

    with caplog.at_level(logging.ERROR, logger="modelbay.core.background"):
        asyncio.run(scenario())
    [record] = caplog.records
    assert record.getMessage() == "owner: sweep failed"


def test_a_wake_starts_the_next_pass_at_once_and_a_pass_may_set_its_own_delay() -> None:
    async def scenario() -> None:
        background = Background("test")
        wake = asyncio.Event()
        passes: list[float] = []

        async def run_pass() -> float | None:
            passes.append(time.monotonic())
            return 0.0 if len(passes) == 1 else None  # the second pass follows the first at once

        background.every(3600, run_pass, "slow", wake=wake)
        await until(lambda: len(passes) == 2)
        wake.set()
        await until(lambda: len(passes) == 3, timeout=2)
        await background.close()
        assert len(passes) == 3

    asyncio.run(scenario())


def test_close_lets_tasks_finish_within_the_grace_and_cancels_the_rest() -> None:
    async def scenario() -> None:
        background = Background("test")
        ended: dict[str, str] = {}

        async def work(name: str, seconds: float) -> None:
            try:
                await asyncio.sleep(seconds)
                ended[name] = "finished"
            except asyncio.CancelledError:
                ended[name] = "cancelled"
                raise

        background.spawn(work("quick", 0.01))
        background.spawn(work("slow", 3600))
        await background.close(grace_s=0.5)
        # Both have ended by the time close returns: nothing is left running.
        assert ended == {"quick": "finished", "slow": "cancelled"}
        assert not background.tasks

    asyncio.run(scenario())


def test_close_stops_loops_at_once_whatever_the_grace() -> None:
    async def scenario() -> None:
        background = Background("test")
        background.every(3600, lambda: None, "idle loop")
        started = time.monotonic()
        await background.close(grace_s=60)
        assert time.monotonic() - started < 5

    asyncio.run(scenario())


def test_stop_loops_leaves_spawned_tasks_running() -> None:
    async def scenario() -> None:
        background = Background("test")
        passes: list[int] = []
        release = asyncio.Event()
        background.every(0.01, lambda: passes.append(1), "loop")
        task = background.spawn(release.wait())
        await until(lambda: len(passes) >= 1)
        await background.stop_loops()
        count = len(passes)
        await asyncio.sleep(0.05)
        assert len(passes) == count and not task.done()
        release.set()
        await task

    asyncio.run(scenario())


def test_items_added_during_a_write_share_the_next_write() -> None:
    async def scenario() -> None:
        writes: list[list[int]] = []
        first_write_may_end = asyncio.Event()

        async def write(batch: list[int]) -> list[int]:
            writes.append(batch)
            if len(writes) == 1:
                await first_write_may_end.wait()
            return [item * 10 for item in batch]

        coalescer: Coalescer[int, int] = Coalescer(write)
        first = asyncio.ensure_future(coalescer.add(1))
        await until(lambda: len(writes) == 1)
        later = [asyncio.ensure_future(coalescer.add(n)) for n in (2, 3, 4)]
        await asyncio.sleep(0)
        first_write_may_end.set()
        assert await first == 10
        assert [await f for f in later] == [20, 30, 40]
        assert writes == [[1], [2, 3, 4]]

    asyncio.run(scenario())


def test_a_failed_write_fails_only_the_items_of_its_batch() -> None:
    async def scenario() -> None:
        calls = 0

        async def write(batch: list[str]) -> list[str]:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("the commit failed")
            return batch

        coalescer: Coalescer[str, str] = Coalescer(write)
        with pytest.raises(RuntimeError, match="the commit failed"):
            await coalescer.add("a")
        assert await coalescer.add("b") == "b"

    asyncio.run(scenario())
