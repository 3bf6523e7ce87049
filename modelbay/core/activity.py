"""What this server did since it started, counted in plain structures that the metrics read.

The request path counts here with a dict operation or two per request: no lock, no labels, no
metrics library (`modelbay.metrics` turns the counts into series when they are scraped, naming
the versions then). Each server counts what it did; a cluster's totals are the sum over its servers.
Counts are keyed by version id, so a version that stops existing takes its counts with it (`forget`).
The durations of the requests that ended since the console's sampler last took them are kept too,
the first `RECENT_SECONDS_KEPT` of each version (`core.activity_history` reads their percentiles).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Any

#: Request latency buckets, in seconds: a direct request takes milliseconds, a model seconds to minutes.
REQUEST_SECONDS_BUCKETS = (0.005, 0.025, 0.1, 0.5, 2.5, 10.0, 60.0)

#: The store's commit latency buckets, in seconds.
COMMIT_SECONDS_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 2.5)

#: Most durations kept per version between two samples: the first ones of the interval (cheaper than
#: a reservoir, which would draw a random number per request past the cap).
RECENT_SECONDS_KEPT = 2000

#: The origins whose name is what made the request (`created_by`); the others are named by their mode.
_NAMED_ORIGINS = frozenset({"pipeline", "run", "service"})


def origin_of(mode: str, origin: Mapping[str, Any]) -> str:
    """Where a request came from: `direct` or `batch` (made by a user, named by its mode), `pipeline`
    (a step of a pipeline request), `run` (an ABEJA run's attempt), `service` (a call to an ABEJA
    service) or `job` (an item of a Datature batch job)."""
    created_by = origin.get("created_by", "")
    if created_by in _NAMED_ORIGINS:
        return str(created_by)
    if created_by.startswith("batch job"):
        return "job"
    return mode


class Histogram:
    """Observations counted in fixed buckets (as Prometheus counts them: a value in the first bucket
    at least as large, the last one unbounded), and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def copy(self) -> Histogram:
        copied = Histogram(self.bounds)
        copied.counts, copied.sum = list(self.counts), self.sum
        return copied

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at most that large), the last bound `+Inf`: Prometheus' buckets."""
        buckets, total = [], 0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            total += count
            buckets.append((bound, total))
        return buckets


Counts = dict[tuple[str, ...], int]


class Activity:
    """The counts of one server. Requests are counted on the event loop, so without a lock; the rest
    (builds end on worker threads) under one."""

    def __init__(self) -> None:
        self.requests: Counts = {}  # (version id, origin, status) -> requests that ended so
        self.request_seconds: dict[str, Histogram] = {}  # version id -> how long its requests took
        self.recent_seconds: dict[str, list[float]] = {}  # version id -> durations since `take_recent_seconds`
        self.builds: Counts = {}  # (version id, result: succeeded or failed) -> builds
        self.runs: Counts = {}  # (version id, status: succeeded or failed) -> runs that ended so
        self.job_items: Counts = {}  # (version id, outcome) -> job items
        self.deliveries: Counts = {}  # (project id, outcome: delivered, failed or retried) -> webhook POSTs
        self._lock = threading.Lock()

    def request_finished(self, version_id: str, origin: str, status: str, seconds: float) -> None:
        """A request ended with `status`, `seconds` after it started running here. Event loop only."""
        key = (version_id, origin, status)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        histogram = self.request_seconds.get(version_id)
        if histogram is None:
            histogram = self.request_seconds[version_id] = Histogram(REQUEST_SECONDS_BUCKETS)
            self.recent_seconds[version_id] = []
        histogram.observe(seconds)
        recent = self.recent_seconds[version_id]  # made with the histogram, and forgotten with it
        if len(recent) < RECENT_SECONDS_KEPT:
            recent.append(seconds)

    def take_recent_seconds(self) -> dict[str, list[float]]:
        """The durations kept since the last call, per version (a version without any: an empty list);
        the next ones are kept afresh. Event loop only."""
        taken = self.recent_seconds
        self.recent_seconds = {version_id: [] for version_id in taken}
        return taken

    def count(self, what: str, *key: str) -> None:
        """One more of `key` in the counts named `what` (`builds`, `runs`, `job_items`, `deliveries`),
        from any thread."""
        with self._lock:
            counts: Counts = getattr(self, what)
            counts[key] = counts.get(key, 0) + 1

    def snapshot(self) -> Activity:
        """A copy to read while the counting goes on. Call it on the event loop."""
        copied = Activity()
        copied.requests = dict(self.requests)
        copied.request_seconds = {key: h.copy() for key, h in self.request_seconds.items()}
        with self._lock:
            copied.builds, copied.runs = dict(self.builds), dict(self.runs)
            copied.job_items, copied.deliveries = dict(self.job_items), dict(self.deliveries)
        return copied

    def version_ids(self) -> set[str]:
        """The versions something was counted for."""
        keyed = [self.requests, self.builds, self.runs, self.job_items]
        return {key[0] for counts in keyed for key in counts} | set(self.request_seconds)

    def forget(self, version_ids: Iterable[str]) -> None:
        """Drop the counts of versions that no longer exist. Call it on the event loop."""
        gone = set(version_ids)
        if not gone:
            return
        self.requests = {key: n for key, n in self.requests.items() if key[0] not in gone}
        self.request_seconds = {key: h for key, h in self.request_seconds.items() if key not in gone}
        self.recent_seconds = {key: s for key, s in self.recent_seconds.items() if key not in gone}
        with self._lock:
            for name in ("builds", "runs", "job_items"):
                setattr(self, name, {key: n for key, n in getattr(self, name).items() if key[0] not in gone})
