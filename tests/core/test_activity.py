"""The plain counts the metrics are made of: histograms as Prometheus counts them, origins, copies
that stay still while counting goes on, and versions forgotten with their counts."""

from __future__ import annotations

import threading

import pytest

from modelbay.core.activity import REQUEST_SECONDS_BUCKETS, Activity, Histogram, origin_of


def test_a_value_counts_in_the_first_bucket_at_least_as_large() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)
    assert histogram.counts == [2, 2, 1]
    assert histogram.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert histogram.sum == pytest.approx(8.65)


@pytest.mark.parametrize(("mode", "origin", "expected"), [
    ("direct", {"created_by": "ubiops"}, "direct"),
    ("batch", {"created_by": "ubiops"}, "batch"),
    ("direct", {"created_by": "pipeline", "pipeline": "p", "pipeline_request_id": "x"}, "pipeline"),
    ("direct", {"created_by": "run", "run_id": "r"}, "run"),
    ("direct", {"created_by": "service", "service_id": "s"}, "service"),
    ("direct", {"created_by": "batch job 1234"}, "job"),
    ("direct", {}, "direct"),
])
def test_the_origin_of_a_request(mode: str, origin: dict[str, str], expected: str) -> None:
    assert origin_of(mode, origin) == expected


def test_requests_are_counted_by_version_origin_and_status_with_their_latency() -> None:
    activity = Activity()
    activity.request_finished("v1", "direct", "completed", 0.002)
    activity.request_finished("v1", "direct", "completed", 0.3)
    activity.request_finished("v1", "batch", "failed", 100.0)
    activity.request_finished("v2", "job", "completed", 0.01)

    assert activity.requests == {("v1", "direct", "completed"): 2, ("v1", "batch", "failed"): 1,
                                 ("v2", "job", "completed"): 1}
    histogram = activity.request_seconds["v1"]
    assert histogram.bounds == REQUEST_SECONDS_BUCKETS
    assert histogram.cumulative()[-1] == ("+Inf", 3)
    assert histogram.counts[0] == 1 and histogram.counts[-1] == 1  # 2 ms in the first bucket, 100 s past the last
    assert histogram.sum == pytest.approx(100.302)


def test_a_snapshot_stays_as_it_was_taken() -> None:
    activity = Activity()
    activity.request_finished("v1", "direct", "completed", 0.01)
    activity.count("builds", "v1", "succeeded")
    copied = activity.snapshot()
    activity.request_finished("v1", "direct", "completed", 0.01)
    activity.count("builds", "v1", "succeeded")
    assert copied.requests == {("v1", "direct", "completed"): 1}
    assert copied.request_seconds["v1"].cumulative()[-1] == ("+Inf", 1)
    assert copied.builds == {("v1", "succeeded"): 1}
    assert activity.builds == {("v1", "succeeded"): 2}


def test_counts_from_many_threads_all_count() -> None:
    activity = Activity()

    def count() -> None:
        for _ in range(10_000):
            activity.count("job_items", "v1", "predicted")

    threads = [threading.Thread(target=count) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert activity.job_items == {("v1", "predicted"): 40_000}


def test_a_forgotten_version_takes_its_counts_with_it() -> None:
    activity = Activity()
    for version_id in ("kept", "gone"):
        activity.request_finished(version_id, "direct", "completed", 0.01)
        activity.count("builds", version_id, "failed")
        activity.count("runs", version_id, "succeeded")
        activity.count("job_items", version_id, "predicted")
    activity.count("deliveries", "project", "delivered")
    assert activity.version_ids() == {"kept", "gone"}

    activity.forget({"gone"})

    assert activity.version_ids() == {"kept"}
    assert set(activity.request_seconds) == {"kept"}
    assert activity.deliveries == {("project", "delivered"): 1}
