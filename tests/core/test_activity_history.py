"""The samples behind the console's live charts: rates from count deltas over the real interval,
latency percentiles of the requests that ended in it, what a version holds at its end, and rings
that stay bounded and go with their version."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any


from modelbay.core.activity import RECENT_SECONDS_KEPT, Activity
from modelbay.core.activity_history import COLUMNS, ActivityHistory, Observed, observe, percentile


class Clocks:
    """A wall clock and a monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        self.mono = 100.0

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds


def history_of(read: Any, clocks: Clocks, *, period_s: float = 5.0, window_s: float = 60.0,
               existing: Any = lambda ids: ids) -> ActivityHistory:
    return ActivityHistory(read, existing, period_s=period_s, window_s=window_s,
                           clock=lambda: clocks.now, monotonic=lambda: clocks.mono)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert [percentile(values, p) for p in (50, 95, 99, 100)] == [50.0, 95.0, 99.0, 100.0]
    assert [percentile([0.25], p) for p in (50, 95, 99)] == [0.25, 0.25, 0.25]
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0


def test_activity_keeps_the_first_durations_of_each_interval() -> None:
    activity = Activity()
    for n in range(RECENT_SECONDS_KEPT + 10):
        activity.request_finished("v1", "direct", "completed", n / 1000)
    activity.request_finished("v2", "batch", "failed", 2.0)
    taken = activity.take_recent_seconds()
    assert len(taken["v1"]) == RECENT_SECONDS_KEPT and taken["v1"][:2] == [0.0, 0.001]  # the first ones
    assert taken["v2"] == [2.0]
    assert activity.take_recent_seconds() == {"v1": [], "v2": []}  # the next interval starts empty
    activity.request_finished("v1", "direct", "completed", 0.5)
    assert activity.take_recent_seconds()["v1"] == [0.5]
    activity.forget(["v1"])
    assert set(activity.recent_seconds) == {"v2"}


def test_an_interval_gives_rates_percentiles_queue_and_instances() -> None:
    activity, clocks = Activity(), Clocks()
    activity.request_finished("v1", "direct", "completed", 9.0)  # before the first reading: not sampled
    readings = iter([Observed(totals={"v1": (1, 0)}, durations={"v1": [9.0]}),
                     Observed(totals={"v1": (21, 1)}, durations={"v1": [n / 100 for n in range(20, 0, -1)]},
                              queue_depth={"v1": 3}, instances={"v1": (1, 0, 2)}),
                     Observed(totals={"v1": (21, 1)}, instances={"v1": (0, 1, 0)})])
    history = history_of(lambda: next(readings), clocks)
    history.sample()  # the first reading starts the first interval
    assert history.series("v1") == {name: [] for name in COLUMNS}
    clocks.advance(4.0)  # late or early passes: the rate is over the interval's real length
    history.sample()
    clocks.advance(5.0)
    history.sample()
    series = history.series("v1")
    assert series["time"] == [clocks.now - 5.0, clocks.now]
    assert series["requests_per_s"] == [5.0, 0.0]
    assert series["failures_per_s"] == [0.25, 0.0]
    assert series["latency_p50_s"] == [0.1, None]  # none ended in the second interval
    assert series["latency_p95_s"] == [0.19, None]
    assert series["latency_p99_s"] == [0.2, None]
    assert series["queue_depth"] == [3, 0]
    assert [series[f"instances_{state}"] for state in ("starting", "idle", "busy")] == [[1, 0], [0, 1], [2, 0]]


def test_a_ring_is_bounded_starts_with_activity_and_ends_after_a_quiet_window() -> None:
    clocks = Clocks()
    current = Observed()
    history = history_of(lambda: current, clocks, period_s=5.0, window_s=60.0)
    history.sample()
    for _ in range(3):  # nothing happens: no ring
        clocks.advance(5.0)
        history.sample()
    assert history.version_ids() == set()
    current = Observed(instances={"v1": (0, 1, 0)})  # an idle instance is something to show
    for _ in range(30):
        clocks.advance(5.0)
        history.sample()
    assert len(history.series("v1")["time"]) == 12  # the last 60 s
    current = Observed()
    for _ in range(11):  # quiet samples are kept while the window still shows something
        clocks.advance(5.0)
        history.sample()
    assert history.series("v1")["instances_idle"] == [1] + [0] * 11
    clocks.advance(5.0)
    history.sample()
    assert history.version_ids() == set()


def test_totals_that_go_down_count_as_nothing() -> None:
    """A version's counts forgotten by a metrics scrape (the version was deleted) read as zero, never negative."""
    clocks = Clocks()
    readings = iter([Observed(totals={"v1": (10, 2)}), Observed(totals={}, instances={"v1": (0, 1, 0)})])
    history = history_of(lambda: next(readings), clocks)
    history.sample()
    clocks.advance(5.0)
    history.sample()
    assert history.series("v1")["requests_per_s"] == [0.0]
    assert history.series("v1")["failures_per_s"] == [0.0]


def test_versions_that_no_longer_exist_are_dropped() -> None:
    clocks = Clocks()
    current = Observed(instances={"v1": (0, 1, 0), "v2": (1, 0, 0)})
    asked: list[set[str]] = []

    def existing(version_ids: set[str]) -> set[str]:
        asked.append(set(version_ids))
        return version_ids - {"v2"}

    history = history_of(lambda: current, clocks, existing=existing)
    history.sample()
    clocks.advance(5.0)
    history.sample()
    asyncio.run(history.forget_gone())  # asks on a worker thread
    assert asked == [{"v1", "v2"}]
    assert history.version_ids() == {"v1"}
    current = Observed(instances={"v1": (0, 1, 0)}, totals={"v2": (0, 0)})  # its counts may linger
    clocks.advance(5.0)
    history.sample()
    assert history.version_ids() == {"v1"}


def test_observe_sums_a_versions_pools_and_adds_claimed_items_to_the_calls_waiting() -> None:
    activity = Activity()
    activity.request_finished("v1", "direct", "completed", 0.1)
    activity.request_finished("v1", "batch", "failed", 0.2)
    activity.request_finished("v1", "direct", "cancelled", 0.3)

    def load(version_id: str, starting: int, idle: int, busy: int, waiting: int) -> SimpleNamespace:
        return SimpleNamespace(target=SimpleNamespace(version_id=version_id), starting=starting, idle=idle,
                               busy=busy, waiting=waiting)

    scheduler = SimpleNamespace(loads=lambda: [load("v1", 1, 0, 2, 4), load("v1", 0, 1, 1, 0), load("v2", 0, 1, 0, 0)])
    queue = SimpleNamespace(depths=lambda: {"v1": 5, "v3": 2})
    observed = observe(activity, scheduler, queue)  # type: ignore[arg-type]
    assert observed.totals == {"v1": (3, 1)}
    assert observed.durations == {"v1": [0.1, 0.2, 0.3]}
    assert observed.queue_depth == {"v1": 9, "v3": 2}
    assert observed.instances == {"v1": (1, 1, 3), "v2": (0, 1, 0)}
    assert activity.take_recent_seconds() == {"v1": []}  # taken by the reading

