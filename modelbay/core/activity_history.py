"""Each version's recent past on this server, sampled every few seconds for the console's live charts.

A sample says what happened to a version during one interval: requests and failures per second (the
deltas of `Activity`'s counts over the interval's length), the p50/p95/p99 latency of the requests
that ended in it (of the first `RECENT_SECONDS_KEPT` of them, kept by `Activity`), and what it held
at the interval's end: calls waiting (for an instance, or claimed from the batch queue) and instances
by state. Nothing is added to the request path but the durations `Activity` keeps; the sampling runs
on the event loop, as the counting does, so it needs no lock.

Each version keeps a ring of the last `WINDOW_S`: it starts with the first sample in which something
happened and is dropped once nothing has for a whole window, or when the version no longer exists.
Like the metrics, a server samples what it did itself: on a cluster each server shows its own part.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields

from sqlalchemy import select

from modelbay.core.activity import Activity
from modelbay.core.background import Background
from modelbay.core.queue import BatchQueue
from modelbay.core.scheduler import Scheduler
from modelbay.store.db import Database
from modelbay.store.tables import VersionRow

#: How often a sample is taken.
PERIOD_S = 5.0

#: How far back the samples go.
WINDOW_S = 3600.0

#: How often the versions sampled are checked to still exist.
EXISTENCE_CHECK_PERIOD_S = 60.0

#: The latency percentiles sampled.
PERCENTILES = (50, 95, 99)


@dataclass(frozen=True, slots=True)
class Sample:
    """One version's interval: what happened in it, and what it held at its end."""

    time: float  # the interval's end, in seconds since the epoch
    requests_per_s: float
    failures_per_s: float
    latency_p50_s: float | None  # None: no request ended in the interval
    latency_p95_s: float | None
    latency_p99_s: float | None
    queue_depth: int
    instances_starting: int
    instances_idle: int
    instances_busy: int

    def quiet(self) -> bool:
        """Whether nothing happened and nothing was held."""
        return not (self.requests_per_s or self.failures_per_s or self.queue_depth or self.instances_starting
                    or self.instances_idle or self.instances_busy)


#: The names of a series' columns, in a sample's order.
COLUMNS = tuple(f.name for f in fields(Sample))


@dataclass
class Observed:
    """What the sampler reads at one moment, per version id."""

    totals: dict[str, tuple[int, int]] = field(default_factory=dict)  # requests ended so far, and failed
    durations: dict[str, list[float]] = field(default_factory=dict)  # of requests ended since the last reading
    queue_depth: dict[str, int] = field(default_factory=dict)
    instances: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # starting, idle, busy

    def version_ids(self) -> set[str]:
        return set(self.totals) | set(self.durations) | set(self.queue_depth) | set(self.instances)


def observe(activity: Activity, scheduler: Scheduler, queue: BatchQueue) -> Observed:
    """Read the counts, take the durations kept since the last call, and read the scheduler's pools
    (a version's own pool and its services' pools, summed) and the batch queue. Event loop only."""
    observed = Observed(durations=activity.take_recent_seconds(), queue_depth=queue.depths())
    totals = observed.totals
    for (version_id, _origin, status), n in activity.requests.items():
        ended, failed = totals.get(version_id, (0, 0))
        totals[version_id] = (ended + n, failed + n if status == "failed" else failed)
    for load in scheduler.loads():
        version_id = load.target.version_id
        starting, idle, busy = observed.instances.get(version_id, (0, 0, 0))
        observed.instances[version_id] = (starting + load.starting, idle + load.idle, busy + load.busy)
        if load.waiting:
            observed.queue_depth[version_id] = observed.queue_depth.get(version_id, 0) + load.waiting
    return observed


def percentile(ordered: list[float], p: float) -> float:
    """The nearest-rank `p`th percentile of values in ascending order (not empty)."""
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def existing_versions(db: Database, version_ids: set[str]) -> set[str]:
    """Which of `version_ids` still exist (blocking: call it on a worker thread)."""
    if not version_ids:
        return set()
    with db.read() as session:
        return set(session.scalars(select(VersionRow.id).where(VersionRow.id.in_(version_ids))))


class ActivityHistory:
    """The rings of samples of one server's versions."""

    def __init__(self, read: Callable[[], Observed], existing: Callable[[set[str]], set[str]], *,
                 period_s: float = PERIOD_S, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        """`read` observes the server now (on the event loop); `existing` tells which of some version
        ids still exist (blocking: it is called on a worker thread)."""
        self.period_s = period_s
        self.window_s = window_s
        self._read = read
        self._existing = existing
        self._clock = clock
        self._monotonic = monotonic
        self._rings: dict[str, deque[Sample]] = {}
        self._last_busy: dict[str, float] = {}  # version id -> time of its last sample that was not quiet
        self._totals: dict[str, tuple[int, int]] = {}  # as read at the last sample
        self._last_read: float | None = None  # monotonic time of the last reading

    def start(self, background: Background) -> None:
        """Sample every `period_s`, and check now and then that the versions sampled still exist, in
        loops of `background` (they stop when it closes)."""
        background.every(self.period_s, self.sample, "activity sampling")
        background.every(EXISTENCE_CHECK_PERIOD_S, self.forget_gone, "activity of deleted versions")

    def sample(self) -> None:
        """Read now and record the interval since the last reading (the first reading only starts one).
        A pass of the engine's sampling loop, on the event loop."""
        observed, now = self._read(), self._monotonic()
        if self._last_read is not None:
            self.record(observed, self._clock(), now - self._last_read)
        else:
            self._totals = dict(observed.totals)
        self._last_read = now

    def record(self, observed: Observed, at: float, elapsed_s: float) -> None:
        """Record an interval of `elapsed_s` that ended at `at` (epoch seconds) with `observed`."""
        elapsed_s = max(elapsed_s, 1e-3)
        kept = max(1, round(self.window_s / self.period_s))
        for version_id in observed.version_ids() | set(self._rings):
            sample = self._sample_of(version_id, observed, at, elapsed_s)
            ring = self._rings.get(version_id)
            if not sample.quiet():
                self._last_busy[version_id] = at
            elif ring is None or at - self._last_busy[version_id] >= self.window_s:
                self._drop(version_id)  # nothing to show: no ring, or a window of nothing
                continue
            if ring is None:
                ring = self._rings[version_id] = deque(maxlen=kept)
            ring.append(sample)
        self._totals = dict(observed.totals)

    def _sample_of(self, version_id: str, observed: Observed, at: float, elapsed_s: float) -> Sample:
        ended, failed = observed.totals.get(version_id, (0, 0))
        ended_before, failed_before = self._totals.get(version_id, (0, 0))
        durations = sorted(observed.durations.get(version_id, ()))
        latencies = [percentile(durations, p) if durations else None for p in PERCENTILES]
        # Rounded: a rate to a thousandth of a request per second, a latency to a microsecond.
        return Sample(round(at, 3), round(max(0, ended - ended_before) / elapsed_s, 3),
                      round(max(0, failed - failed_before) / elapsed_s, 3),
                      *(None if value is None else round(value, 6) for value in latencies),
                      observed.queue_depth.get(version_id, 0), *observed.instances.get(version_id, (0, 0, 0)))

    def series(self, version_id: str) -> dict[str, list[float | int | None]]:
        """A version's samples, oldest first, as columns named as `Sample`'s fields (empty when it has none)."""
        ring = self._rings.get(version_id, ())
        return {name: [getattr(sample, name) for sample in ring] for name in COLUMNS}

    def version_ids(self) -> set[str]:
        """The versions with a ring."""
        return set(self._rings)

    async def forget_gone(self) -> None:
        """Drop the samples of the versions that no longer exist (a pass of the engine's loop)."""
        sampled = self.version_ids()
        if sampled:
            existing = await asyncio.to_thread(self._existing, sampled)
            self.forget(sampled - existing)

    def forget(self, version_ids: Iterable[str]) -> None:
        """Drop the samples of versions that no longer exist."""
        for version_id in version_ids:
            self._drop(version_id)

    def _drop(self, version_id: str) -> None:
        self._rings.pop(version_id, None)
        self._last_busy.pop(version_id, None)
