import asyncio
import time

from modelbay.core.delayed_calls import DelayedCalls

DELAY = 0.05


def test_calls_come_after_the_delay_in_order_and_cancelled_ones_never() -> None:
    asyncio.run(_calls_come_after_the_delay_in_order_and_cancelled_ones_never())


async def _calls_come_after_the_delay_in_order_and_cancelled_ones_never() -> None:
    delayed = DelayedCalls(DELAY)
    made: list[tuple[str, float]] = []
    done = asyncio.Event()
    began = time.monotonic()

    def call(name: str) -> None:
        made.append((name, time.monotonic() - began))
        if name == "last":
            done.set()

    delayed.add(lambda: call("first"))
    cancelled = delayed.add(lambda: call("cancelled"))
    delayed.add(lambda: call("second"))
    delayed.cancel(cancelled)
    await asyncio.sleep(DELAY / 2)  # added later: due later
    delayed.add(lambda: call("last"))
    await asyncio.wait_for(done.wait(), timeout=5)

    assert [name for name, _ in made] == ["first", "second", "last"]
    assert all(at >= DELAY for _, at in made)
    assert made[-1][1] >= DELAY * 1.5  # the last one waited its own delay, not the first's


def test_a_failing_call_does_not_stop_the_others_and_the_timer_rearms() -> None:
    asyncio.run(_a_failing_call_does_not_stop_the_others_and_the_timer_rearms())


async def _a_failing_call_does_not_stop_the_others_and_the_timer_rearms() -> None:
    delayed = DelayedCalls(DELAY)
    done = asyncio.Event()

    def fail() -> None:
        raise RuntimeError("boom")

    delayed.add(fail)
    delayed.add(done.set)
    await asyncio.wait_for(done.wait(), timeout=5)
    # Once all were made, a new one still comes
    again = asyncio.Event()
    delayed.add(again.set)
    await asyncio.wait_for(again.wait(), timeout=5)


def test_a_call_cancelled_before_it_is_due_is_not_made() -> None:
    asyncio.run(_a_call_cancelled_before_it_is_due_is_not_made())


async def _a_call_cancelled_before_it_is_due_is_not_made() -> None:
    delayed = DelayedCalls(DELAY)
    made: list[str] = []
    done = asyncio.Event()
    key = delayed.add(lambda: made.append("cancelled"))
    delayed.add(done.set)
    delayed.cancel(key)
    await asyncio.wait_for(done.wait(), timeout=5)
    assert made == []
