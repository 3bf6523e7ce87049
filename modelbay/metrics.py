"""The `/metrics` page: modelbay's own series, in Prometheus' text format.

Nothing here runs per request. The engine counts in plain structures (`core.activity`); a scrape
copies them and reads the scheduler's pools and the batch queue on the event loop (`Reading`), then
names the versions and reads the store's batch backlog on a worker thread, where `EngineCollector`
turns it all into metric families. Versions are labelled by project, deployment and version name;
a version that no longer exists is left out, and its counts dropped. Every server reports what it
did and holds: sum them across a cluster's servers (`modelbay_batch_backlog`, read from the shared
store, is the same on each: take its max).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.metrics_core import Metric
from sqlalchemy import func, select

from modelbay.core.activity import Activity, Histogram
from modelbay.core.requests import IS_PENDING
from modelbay.core.states import REQUESTS
from modelbay.engine import Engine
from modelbay.store.db import Database
from modelbay.store.tables import DeploymentRow, ProjectRow, VersionRow

#: The labels naming a version.
VERSION_LABELS = ["project", "deployment", "version"]

#: An instance's states as the scheduler keeps them.
INSTANCE_STATES = ("starting", "idle", "busy")


@dataclass
class Reading:
    """What a scrape read on the event loop: copies, so the engine goes on while they are turned into series."""

    activity: Activity
    commit_seconds: Histogram
    instances: dict[str, dict[str, int]] = field(default_factory=dict)  # version id -> state -> instances
    waiting: dict[str, int] = field(default_factory=dict)  # version id -> calls waiting for an instance
    claimed: dict[str, int] = field(default_factory=dict)  # version id -> batch items claimed, not started

    @classmethod
    def of(cls, engine: Engine) -> Reading:
        reading = cls(engine.activity.snapshot(), engine.db.committer.commit_seconds.copy())
        # A version may have several pools (its own, and a service's each): summed.
        for load in engine.scheduler.loads():
            states = reading.instances.setdefault(load.target.version_id, dict.fromkeys(INSTANCE_STATES, 0))
            states["starting"] += load.starting
            states["idle"] += load.idle
            states["busy"] += load.busy
            version_id = load.target.version_id
            reading.waiting[version_id] = reading.waiting.get(version_id, 0) + load.waiting
        reading.claimed = engine.requests.queue.depths()
        return reading

    def version_ids(self) -> set[str]:
        return self.activity.version_ids() | set(self.instances) | set(self.claimed)


class EngineCollector(Collector):
    """Turns a `Reading` into metric families; reads the store for names and the backlog (blocking:
    collect it on a worker thread)."""

    def __init__(self, reading: Reading, db: Database) -> None:
        self._reading = reading
        self._db = db
        #: The versions read that no longer exist (their counts can go).
        self.gone: set[str] = set()

    def collect(self) -> Iterator[Metric]:
        reading, activity = self._reading, self._reading.activity
        wanted = reading.version_ids()
        with self._db.read() as session:
            names = {row[0]: list(row[1:]) for row in session.execute(
                select(VersionRow.id, ProjectRow.name, DeploymentRow.name, VersionRow.name)
                .join(DeploymentRow, DeploymentRow.id == VersionRow.deployment_id)
                .join(ProjectRow, ProjectRow.id == DeploymentRow.project_id)
                .where(VersionRow.id.in_(wanted))) if wanted}
            backlog = dict(session.execute(select(REQUESTS.c.version_id, func.count())
                                           .where(IS_PENDING).group_by(REQUESTS.c.version_id)).all())
            project_ids = {key[0] for key in activity.deliveries}
            projects = dict(session.execute(select(ProjectRow.id, ProjectRow.name)
                                            .where(ProjectRow.id.in_(project_ids))).all()) if project_ids else {}
        self.gone = wanted - names.keys()

        requests = CounterMetricFamily(
            "modelbay_requests", "Requests that ended on this server, by where they came from and their status.",
            labels=[*VERSION_LABELS, "origin", "status"])
        for (version_id, origin, status), n in sorted(activity.requests.items()):
            if version_id in names:
                requests.add_metric([*names[version_id], origin, status], n)
        yield requests

        seconds = HistogramMetricFamily(
            "modelbay_request_duration_seconds",
            "How long requests took on this server, from the start of their run (a batch request's wait in "
            "the queue not counted) to their end.", labels=VERSION_LABELS)
        for version_id, histogram in sorted(activity.request_seconds.items()):
            if version_id in names:
                seconds.add_metric(names[version_id], histogram.cumulative(), histogram.sum)
        yield seconds

        queued = GaugeMetricFamily(
            "modelbay_queue_depth", "Requests waiting on this server: calls waiting for an instance, and batch "
            "requests it claimed and has not started.", labels=VERSION_LABELS)
        running = GaugeMetricFamily("modelbay_requests_running", "Requests running on this server's instances.",
                                    labels=VERSION_LABELS)
        instances = GaugeMetricFamily("modelbay_instances", "This server's instances, by state.",
                                      labels=[*VERSION_LABELS, "state"])
        for version_id in sorted(names.keys() & (reading.instances.keys() | reading.claimed.keys())):
            waiting = reading.waiting.get(version_id, 0) + reading.claimed.get(version_id, 0)
            queued.add_metric(names[version_id], waiting)
            states = reading.instances.get(version_id, dict.fromkeys(INSTANCE_STATES, 0))
            running.add_metric(names[version_id], states["busy"])
            for state in INSTANCE_STATES:
                instances.add_metric([*names[version_id], state], states[state])
        yield queued
        yield running
        yield instances

        pending = GaugeMetricFamily(
            "modelbay_batch_backlog", "Batch requests pending in the store, across the cluster (the same on "
            "every server).", labels=VERSION_LABELS)
        for version_id, n in sorted(backlog.items()):
            if version_id in names:
                pending.add_metric(names[version_id], n)
        yield pending

        for name, what, label, counts in (
            ("modelbay_builds", "Builds that ended on this server, by result.", "result", activity.builds),
            ("modelbay_runs", "ABEJA runs that ended on this server, by status.", "status", activity.runs),
            ("modelbay_job_items", "Datature job items run on this server, by outcome.", "outcome",
             activity.job_items),
        ):
            family = CounterMetricFamily(name, what, labels=[*VERSION_LABELS, label])
            for (version_id, value), n in sorted(counts.items()):
                if version_id in names:
                    family.add_metric([*names[version_id], value], n)
            yield family

        attempts = CounterMetricFamily(
            "modelbay_webhook_attempts", "Webhook POSTs this server made, by outcome: delivered; retried (failed, "
            "to be tried again); failed (failed, given up).", labels=["project", "outcome"])
        for (project_id, outcome), n in sorted(activity.deliveries.items()):
            if project_id in projects:  # not of a deleted webhook or project
                attempts.add_metric([projects[project_id], outcome], n)
        yield attempts

        commits = HistogramMetricFamily(
            "modelbay_store_commit_seconds", "How long each group commit of this server's store writes took.")
        commits.add_metric([], reading.commit_seconds.cumulative(), reading.commit_seconds.sum)
        yield commits


async def render(engine: Engine) -> bytes:
    """The metrics page: the process's default series, then modelbay's."""
    reading = Reading.of(engine)
    collector = EngineCollector(reading, engine.db)
    own = await asyncio.to_thread(generate_latest, collector)  # type: ignore[arg-type]
    engine.activity.forget(collector.gone)
    return generate_latest(REGISTRY) + own
