"""Batch jobs: a dataset's items run as requests on a deployment, each outcome POSTed to webhooks.

A job's runner streams the dataset file (never loading it whole), keeps a bounded number of items
in flight through `Requests.direct`, and commits each item's outcome together with its deliveries
and counters in one transaction. That row (a job log entry per item, unique per job and item) is
the record that the item is done: after a restart the runner resumes from the job's cursor and
skips every item already committed, so nothing committed is predicted or delivered twice.
A job runs on a deployment's serving version, or on instances of its own (`Ephemeral`): a pool
of a version's code started with the job and stopped once its items have run.
Deliveries settle items (`Deliveries.items_settled`), and the last settled item finishes the job.
A stop (a cancel, or the stop time passing) settles every item still open as failed to deliver,
so a waiting client always sees the counts add up.

One node runs a job at a time: the one that created it, or one that claimed it once its node
died (`core.nodes`: the recovery frees a dead node's jobs, a periodic pass claims free ones). The
writes that record items and end the job are fenced by that owner, so a node declared dead
cannot write into a job another has taken over; a runner re-reads its job every few seconds and
halts once it is stopped, deleted or no longer its own (a cancel may come through any node).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Dialect, bindparam, delete, select, update

from modelbay.core.activity import Activity
from modelbay.core.background import Background
from modelbay.core.clock import as_utc, utcnow
from modelbay.core.datasets import Datasets
from modelbay.core.deliveries import DELIVERIES, Deliveries
from modelbay.core.deployments import Deployments, Target
from modelbay.core.errors import InvalidInput, ModelbayError, NotFound
from modelbay.core.job_items import JOBS, LOGS, JobRunner, RenderBody, default_body
from modelbay.core.nodes import Nodes
from modelbay.core.requests import Requests
from modelbay.core.scheduler import Scheduler
from modelbay.core.states import (
    DELIVERY,
    JOB,
    JOB_ITEM,
    DatasetStatus,
    DeliveryStatus,
    ItemStatus,
    JobStatus,
    Move,
    move,
)
from modelbay.store.db import Database, nothing, run_writes
from modelbay.store.driver import DriverStatement, driver_cursor
from modelbay.store.tables import DeploymentRow, JobLogRow, JobRow, ProjectRow, WebhookRow

log = logging.getLogger(__name__)

#: Log page size when the caller gives none; the SDK's `get_all_log_entries` stops on a shorter page.
LOG_PAGE_DEFAULT = 1000
LOG_PAGE_MAX = 10000

LEVELS = ("Debug", "Info", "Warning", "Error")


ACTIVE = (JobStatus.SCHEDULED, JobStatus.RUNNING)

OPEN_ITEM = (ItemStatus.FAILED_PROCESS, ItemStatus.PREDICTED, ItemStatus.FAILED_PREDICT)  # awaiting delivery

#: How often a node looks for open jobs no node runs (their node died), unless woken sooner.
CLAIM_PERIOD_S = 2.0

#: Most jobs one pass claims: several nodes looking at once share the free jobs out.
CLAIM_BATCH = 4

#: How often a runner re-reads its job: a stop, a delete or a new stop time made through another
#: node, or the loss of the job to another node, is seen within this.
CHECK_PERIOD_S = 2.0


#: Most instances a job may start for itself.
MAX_OWN_INSTANCES = 16


@dataclass(frozen=True)
class Ephemeral:
    """A job's own instances: `replicas` of them, of `instance_type` (None: the version's), running
    the code of `version_id`. `template` is how the client described them, to be shown back."""

    version_id: str
    replicas: int
    instance_type: str | None
    template: dict[str, Any]


def ms(value: datetime | None) -> int | None:
    return None if value is None else int(as_utc(value).timestamp() * 1000)


class Jobs:
    """Creates jobs, runs them, stops them and reads their logs."""

    def __init__(self, db: Database, nodes: Nodes, datasets: Datasets, deployments: Deployments, requests: Requests,
                 deliveries: Deliveries, scheduler: Scheduler, render_body: RenderBody = default_body,
                 activity: Activity | None = None) -> None:
        self._db = db
        self._scheduler = scheduler
        self._activity = activity or Activity()  # where the items run here are counted
        self._nodes = nodes
        self._datasets = datasets
        self._deployments = deployments
        self._requests = requests
        self._deliveries = deliveries
        self._background = Background("jobs")  # one runner task per job
        self._stops: dict[str, asyncio.Event] = {}  # set when a job's stop time changes or it is stopped
        self._live: dict[str, JobRunner] = {}
        self._webhook_counts: dict[str, int] = {}  # job id -> how many webhooks it delivers to
        self._closing = False
        self._claimable = asyncio.Event()  # a node died: look for its jobs now
        #: Turns an item's outcome into the body its webhooks receive (the dialect's, given by the app).
        self.render_body = render_body
        deliveries.items_settled.add(self._items_settled)
        nodes.add_recoverer(self._give_back, "jobs")
        nodes.recovered.add(self._claimable.set)

    # --- create and read -------------------------------------------------------------------

    def create(self, project: ProjectRow, name: Any, dataset_id: str, deployment_id: str | None,
               webhook_ids: list[str], start_at: datetime | None, stop_at: datetime | None,
               ephemeral: Ephemeral | None = None) -> JobRow:
        """Check everything the job names, then store it and start its runner. The job runs on the
        serving version of `deployment_id`, or with `ephemeral`, on instances of its own.

        Raises `InvalidInput` or `NotFound` (nothing stored) for a bad name, a dataset that is not
        uploaded, a deployment, version or webhook not of this project, or code not built.
        """
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise InvalidInput("The job name must be 1-200 characters")
        if not webhook_ids:
            raise InvalidInput("A job needs at least one webhook to deliver its results to")
        if start_at and stop_at and stop_at <= start_at:
            raise InvalidInput("$stop_at must be after $start_at", field="stop_at")
        dataset = self._datasets.get(project.id, dataset_id)
        if dataset.status != DatasetStatus.UPLOADED:
            raise InvalidInput(f"The dataset's file has not been uploaded (its status is {dataset.status})")
        if self._datasets.is_expired(dataset):
            raise InvalidInput("The dataset has expired")
        if ephemeral is not None:
            if not 1 <= ephemeral.replicas <= MAX_OWN_INSTANCES:
                raise InvalidInput(f"A job may start 1 to {MAX_OWN_INSTANCES} instances of its own", field="replicas")
            own = self._deployments.target_of_version(ephemeral.version_id)  # raises NotFound
            if own.project_id != project.id:
                raise NotFound("version", ephemeral.version_id)
            deployment_id = own.deployment_id
        with self._db.read() as session:
            deployment = session.get(DeploymentRow, deployment_id) if deployment_id else None
            found = set(session.scalars(select(WebhookRow.id).where(WebhookRow.id.in_(webhook_ids),
                                                                     WebhookRow.project_id == project.id)))
        if deployment is None or deployment.project_id != project.id:
            raise NotFound("deployment", deployment_id or "")
        for webhook_id in webhook_ids:
            if webhook_id not in found:
                raise NotFound("webhook", webhook_id)
        if ephemeral is None:
            self._deployments.serving_target(project, deployment.name, None)  # raises unless it can serve
        else:
            Deployments.serving_target_check(own)
        now = utcnow()
        owner = self._nodes.id  # the node that accepts a job runs it
        row = JobRow(id=str(uuid.uuid4()), owner=owner, project_id=project.id, name=name, dataset_id=dataset.id,
                     deployment_id=deployment.id,
                     ephemeral=None if ephemeral is None else dataclasses.asdict(ephemeral), webhook_ids=list(dict.fromkeys(webhook_ids)), start_at=start_at,
                     stop_at=stop_at, cancelled_at=None, status=JobStatus.SCHEDULED, message="Waiting to start",
                     reason=None, item_count=dataset.item_count, next_item=0, gathered=0, failed_gather=0,
                     preprocessed=0, failed_process=0, predicted=0, failed_predict=0, delivered=0,
                     failed_deliver=0, created_at=now, updated_at=now)
        with self._db.write() as session:
            session.add(row)
        self._launch(row.id, owner)
        return row

    def pool_target(self, pool: str) -> Target:
        """The target of a job's own instances (`job:<id>`), for a call another node sent there."""
        job_id = pool.removeprefix("job:")
        with self._db.read() as session:
            job = session.get(JobRow, job_id)
        if job is None or job.ephemeral is None:
            raise NotFound("job", job_id)
        return self._own_target(job.id, Ephemeral(**job.ephemeral))

    def _own_target(self, job_id: str, own: Ephemeral) -> Target:
        """The job's own pool: its version's code, with exactly `replicas` instances, none idle-stopped."""
        base = Deployments.serving_target_check(self._deployments.target_of_version(own.version_id))
        return dataclasses.replace(base, pool=f"job:{job_id}", minimum_instances=own.replicas,
                                   maximum_instances=own.replicas, instance_type=own.instance_type or base.instance_type)

    def get(self, project_id: str, job_id: str) -> JobRow:
        """Raises `NotFound` unless the job exists in the project."""
        with self._db.read() as session:
            row = session.get(JobRow, job_id)
        if row is None or row.project_id != project_id:
            raise NotFound("job", job_id)
        return row

    def list(self, project_id: str, offset: int, limit: int) -> tuple[list[JobRow], bool]:
        with self._db.read() as session:
            rows = list(session.scalars(
                select(JobRow).where(JobRow.project_id == project_id)
                .order_by(JobRow.created_at, JobRow.id).offset(offset).limit(limit + 1)
            ))
        return rows[:limit], len(rows) > limit

    def logs(self, project_id: str, job_id: str, *, before_ms: int | None, after_ms: int | None,
             min_level: str | None, limit: int | None) -> list[JobLogRow]:
        """Log entries newest first; `before_ms` is exclusive, so paging by the last time is exact
        (times are unique within a job)."""
        self.get(project_id, job_id)
        limit = LOG_PAGE_DEFAULT if limit is None else limit
        if not 1 <= limit <= LOG_PAGE_MAX:
            raise InvalidInput(f"$limit must be from 1 to {LOG_PAGE_MAX}", field="limit")
        query = select(JobLogRow).where(JobLogRow.job_id == job_id)
        if before_ms is not None:
            query = query.where(JobLogRow.created_ms < before_ms)
        if after_ms is not None:
            query = query.where(JobLogRow.created_ms > after_ms)
        if min_level is not None:
            matching = [level for level in LEVELS if level.lower() == min_level.lower()]
            if not matching:
                raise InvalidInput(f"$min_level must be one of {', '.join(LEVELS)}", field="min_level")
            query = query.where(JobLogRow.level.in_(LEVELS[LEVELS.index(matching[0]):]))
        query = query.order_by(JobLogRow.created_ms.desc(), JobLogRow.seq.desc()).limit(limit)
        with self._db.read() as session:
            return list(session.scalars(query))

    # --- stop and delete -------------------------------------------------------------------

    async def set_stop_time(self, project_id: str, job_id: str, stop_at: datetime) -> JobRow:
        """Move the job's stop time; at or before now, that cancels it (and settles what is open)."""
        row = self.get(project_id, job_id)
        now = utcnow()
        cancelling = stop_at <= now
        values: dict[str, Any] = {"stop_at": stop_at, "updated_at": now}
        if cancelling and row.status in ACTIVE:
            values["cancelled_at"] = now
        await self._db.committer.submit_async(
            lambda conn: conn.execute(update(JOBS).where(JOBS.c.id == job_id).values(**values)))
        if cancelling and row.status in ACTIVE:
            await self._stop(job_id, "Cancelled", "The job was cancelled")
        elif job_id in self._stops:
            self._stops[job_id].set()  # the runner re-reads its stop time
        return self.get(project_id, job_id)

    async def delete(self, project_id: str, job_id: str) -> None:
        """Delete a job, its logs and what it had still to deliver; a running job is stopped first."""
        self.get(project_id, job_id)
        self._halt(job_id)

        def remove(conn: Connection) -> None:
            move(conn, DELIVERY, {"job_id": job_id}, {DeliveryStatus.PENDING}, DeliveryStatus.CANCELLED,
                 finished_at=utcnow(), last_error="The job was deleted")
            conn.execute(delete(LOGS).where(LOGS.c.job_id == job_id))
            conn.execute(delete(JOBS).where(JOBS.c.id == job_id))

        await self._db.committer.submit_async(remove)
        self._webhook_counts.pop(job_id, None)

    def _halt(self, job_id: str) -> None:
        """Hand out no more items. Items in flight run to their end (cutting a request short would
        leave it half-recorded); their commits are refused once the job is no longer running."""
        runner = self._live.get(job_id)
        if runner is not None:
            runner.stopping = True
        event = self._stops.get(job_id)
        if event is not None:
            event.set()

    async def _stop(self, job_id: str, reason: str, message: str) -> None:
        """Stop the runner and settle every open item as failed to deliver, in one transaction."""
        self._halt(job_id)
        await self._db.committer.submit_async(self._settle_open(job_id, JobStatus.STOPPED, reason, message))

    @staticmethod
    def _settle_open(job_id: str, status: JobStatus, reason: str, message: str,
                     fence: str | None = None) -> Callable[[Connection], None]:
        """The write ending a job; `fence`: the node whose runner ends it (a user's stop is not fenced)."""
        def settle(conn: Connection) -> None:
            # Locked in the order deliveries take them (their pending rows by id, then the job),
            # so a delivery settling items of this job on another node at the same moment waits
            # rather than deadlocks.
            conn.execute(select(DELIVERIES.c.id).where(DELIVERIES.c.job_id == job_id,
                                                       DELIVERIES.c.status == DeliveryStatus.PENDING)
                         .order_by(DELIVERIES.c.id).with_for_update())
            # The counts below must not change before the move (another node's runner may be
            # committing items of this job at the same moment).
            job = conn.execute(select(JOBS).where(JOBS.c.id == job_id).with_for_update()).first()
            if job is None or job.status not in ACTIVE:
                return  # finished, stopped or deleted meanwhile
            committed = job.failed_process + job.predicted + job.failed_predict
            never_run = max(0, job.item_count - committed)
            # The job first, compare-and-set: a settle that lost to another writer changes nothing.
            if not move(conn, JOB, job_id, ACTIVE, status, fence=fence, reason=reason, message=message,
                        updated_at=utcnow(), failed_deliver=JOBS.c.failed_deliver + never_run):
                return
            log.log(logging.WARNING if status is JobStatus.FAILED else logging.INFO, "job %s %s: %s", job_id, status,
                    message, extra={"job_id": job_id, "event": f"job {status}", "reason": reason})
            move(conn, DELIVERY, {"job_id": job_id}, {DeliveryStatus.PENDING}, DeliveryStatus.CANCELLED,
                 finished_at=utcnow(), last_error=reason)
            open_items = move(conn, JOB_ITEM, {"job_id": job_id}, OPEN_ITEM, ItemStatus.FAILED_DELIVER,
                              reason=reason)
            if open_items:
                conn.execute(update(JOBS).where(JOBS.c.id == job_id)
                             .values(failed_deliver=JOBS.c.failed_deliver + open_items))

        return settle

    # --- running ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start looking for open jobs no node runs: at once (those of the node that ran on this data
        dir before, given back by its recovery), then every few seconds and whenever a node died.

        Called on the event loop, which then runs every job (creates may come from threads).
        """
        self._loop = asyncio.get_running_loop()
        self._background.every(CLAIM_PERIOD_S, self._claim_pass, "claim", wake=self._claimable)

    def _give_back(self, conn: Connection, node_ids: list[str]) -> int:
        """A recoverer (`Nodes.add_recoverer`): the open jobs of dead nodes are free to claim again."""
        return int(conn.execute(update(JOBS).where(JOBS.c.owner.in_(node_ids), JOBS.c.status.in_(ACTIVE))
                                .values(owner=None)).rowcount)

    async def _claim_pass(self) -> None:
        if self._closing:
            return
        owner = self._nodes.id
        claimed = await asyncio.to_thread(self._claim, owner, set(self._stops))
        for job_id in claimed:
            self._start_runner(job_id, owner)
        if claimed:
            log.info("%d batch jobs no node ran are resumed here", len(claimed))

    def _claim(self, owner: str, running_here: set[str]) -> list[str]:
        """Make `owner` the owner of a few open jobs that have none. The status does not change (a
        job waiting for its start time stays scheduled), so the claim is a compare-and-set of the
        owner alone; SKIP LOCKED lets nodes claiming at once take different jobs (PostgreSQL).
        A job whose runner here has not ended yet (this node was declared dead) waits for it."""
        unowned = select(JOBS.c.id).where(JOBS.c.owner.is_(None), JOBS.c.status.in_(ACTIVE),
                                          JOBS.c.id.not_in(running_here))
        if not self._db.has_rows(unowned):
            return []
        with self._db.write() as session:
            conn = session.connection()
            free = list(conn.scalars(
                unowned.order_by(JOBS.c.created_at, JOBS.c.id).limit(CLAIM_BATCH).with_for_update(skip_locked=True)))
            if not free:
                return []
            return list(conn.scalars(update(JOBS).where(JOBS.c.id.in_(free), JOBS.c.owner.is_(None))
                                     .values(owner=owner).returning(JOBS.c.id)))

    def _launch(self, job_id: str, owner: str) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # a route running on a worker thread
            self._loop.call_soon_threadsafe(self._start_runner, job_id, owner)
        else:
            self._start_runner(job_id, owner)

    def _start_runner(self, job_id: str, owner: str) -> None:
        stop = self._stops[job_id] = asyncio.Event()
        task = self._background.spawn(self._run(job_id, owner), name=f"job-{job_id}")

        def forget(_: asyncio.Task[None]) -> None:
            if self._stops.get(job_id) is stop:
                self._stops.pop(job_id, None)

        task.add_done_callback(forget)

    async def close(self) -> None:
        # A flag as well as the cancel: on Python 3.11 `wait_for` can swallow a cancel that
        # arrives as its wait ends, and a waiting loop would go round again.
        self._closing = True
        for event in self._stops.values():
            event.set()
        for runner in self._live.values():
            runner.stopping = True
        await self._background.close()

    async def _run(self, job_id: str, owner: str) -> None:
        try:
            await self._run_job(job_id, owner)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._closing:
                return  # the job stays as it is; this node's stop gives it back for another to go on
            log.exception("job %s failed", job_id)
            await self._db.committer.submit_async(
                self._settle_open(job_id, JobStatus.FAILED, "Error", f"The job failed: {exc}", fence=owner))

    async def _run_job(self, job_id: str, owner: str) -> None:
        stop = self._stops[job_id]
        # Wait for the start time, waking early for a changed stop time, and re-reading the job
        # now and then for what other nodes did to it.
        while not self._closing:
            with self._db.read() as session:
                job = session.get(JobRow, job_id)
            if job is None or job.status not in ACTIVE or job.owner != owner:
                return
            now = utcnow()
            if job.stop_at is not None and as_utc(job.stop_at) <= now:
                reason = "Cancelled" if job.cancelled_at else "StopTimeReached"
                await self._db.committer.submit_async(self._settle_open(
                    job_id, JobStatus.STOPPED, reason, "The job's stop time was reached", fence=owner))
                return
            if job.start_at is None or as_utc(job.start_at) <= now:
                break
            stop.clear()
            try:
                await asyncio.wait_for(stop.wait(), min((as_utc(job.start_at) - now).total_seconds(), CHECK_PERIOD_S))
            except TimeoutError:
                pass
        if self._closing:
            return  # the job stays as it is; this node's stop gives it back for another to go on
        with self._db.read() as session:
            project = session.get(ProjectRow, job.project_id)
            deployment = session.get(DeploymentRow, job.deployment_id)
            dataset = self._datasets.get(job.project_id, job.dataset_id)
        try:
            if project is None or deployment is None:
                raise NotFound("deployment", job.deployment_id)
            if job.ephemeral is None:
                target = self._deployments.serving_target(project, deployment.name, None)
            else:
                target = self._own_target(job_id, Ephemeral(**job.ephemeral))
        except ModelbayError as exc:
            await self._db.committer.submit_async(self._settle_open(
                job_id, JobStatus.FAILED, "DeploymentUnavailable", f"The deployment cannot serve: {exc.message}",
                fence=owner))
            return
        runner = JobRunner(self._db, self._requests, self._deliveries, self.render_body, job, owner, dataset.id,
                           target, self._activity)
        if job.status == JobStatus.SCHEDULED and not await self._db.committer.submit_async(runner.mark_running):
            return  # stopped, or taken over, meanwhile
        self._live[job_id] = runner
        if target.pool is not None:
            self._scheduler.ensure(target)  # the job's own instances start now, all of them
        watchdog = asyncio.create_task(self._watch(job_id, owner, stop))
        try:
            await runner.run(self._datasets.items(dataset, job.next_item))
        finally:
            watchdog.cancel()
            self._live.pop(job_id, None)
            if target.pool is not None:
                self._scheduler.drop(target.pool)  # its items have run: its own instances go

    async def _watch(self, job_id: str, owner: str, stop: asyncio.Event) -> None:
        """Halt the runner once its job is stopped, deleted or taken over (whichever node did it),
        and stop the job when its stop time passes (re-read whenever it changes)."""
        while not self._closing:
            with self._db.read() as session:
                job = session.execute(select(JOBS.c.stop_at, JOBS.c.status, JOBS.c.owner)
                                      .where(JOBS.c.id == job_id)).first()
            if job is None or job.status not in ACTIVE or job.owner != owner:
                self._halt(job_id)
                return
            stop.clear()
            left = None if job.stop_at is None else max(0.0, (as_utc(job.stop_at) - utcnow()).total_seconds())
            if left is None or left > CHECK_PERIOD_S:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), CHECK_PERIOD_S)
                continue  # re-read: the stop time may have changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), left)
                continue  # the stop time changed
            runner = self._live.get(job_id)
            if runner is not None:
                runner.stopping = True
            await self._db.committer.submit_async(self._settle_open(
                job_id, JobStatus.STOPPED, "StopTimeReached", "The job's stop time was reached", fence=owner))
            return

    # --- settling items (called in a delivery's transaction) --------------------------------

    def _items_settled(self, conn: Connection, items: list[tuple[str, int]], delivered: bool) -> None:
        """Deliveries of these items ended (`delivered`: each of them was): count each item whose
        deliveries all have, and finish a job whose items are all counted."""
        by_job: dict[str, list[int]] = {}
        for job_id, index in items:
            by_job.setdefault(job_id, []).append(index)
        for job_id, indexes in by_job.items():
            if delivered and self._webhook_count(conn, job_id) == 1:
                # The item's one delivery was made (the common case): by the item's key, the moves
                # joined (`Move.run_joined`).
                moved = sum(status is not None for status in run_writes(conn, [
                    Move(JOB_ITEM, (job_id, index), OPEN_ITEM, ItemStatus.DELIVERED, {}, otherwise=nothing)
                    for index in indexes]))
                if moved:
                    self._count_settled(conn, job_id, {"delivered": moved})
                continue
            rows = conn.execute(
                select(DELIVERIES.c.item_index, DELIVERIES.c.status, DELIVERIES.c.attempts, DELIVERIES.c.last_error)
                .where(DELIVERIES.c.job_id == job_id, DELIVERIES.c.item_index.in_(indexes))
            ).all()
            open_items = {row.item_index for row in rows if row.status == DeliveryStatus.PENDING}
            failures: dict[int, list[str]] = {}  # item -> why each of its failed deliveries failed
            for row in rows:
                if row.status not in (DeliveryStatus.PENDING, DeliveryStatus.DELIVERED):
                    failures.setdefault(row.item_index, []).append(_delivery_failure(row.attempts, row.last_error))
            done = set(indexes) - open_items
            increments = {}
            delivered = done - failures.keys()
            if delivered:
                moved = move(conn, JOB_ITEM, {"job_id": job_id, "item_index": delivered}, OPEN_ITEM,
                             ItemStatus.DELIVERED)
                if moved:  # not when settled already (the job was stopped)
                    increments["delivered"] = moved
            failed = sorted(done & failures.keys())
            if failed:
                moved = self._fail_delivery(conn, job_id, {index: failures[index] for index in failed})
                if moved:
                    increments["failed_deliver"] = moved
            if increments:
                self._count_settled(conn, job_id, increments)

    def _webhook_count(self, conn: Connection, job_id: str) -> int:
        """How many webhooks each item of the job is delivered to (a job's webhooks never change)."""
        count = self._webhook_counts.get(job_id)
        if count is None:
            webhook_ids = conn.execute(select(JOBS.c.webhook_ids).where(JOBS.c.id == job_id)).scalar()
            count = self._webhook_counts[job_id] = len(webhook_ids or ())
        return count

    @staticmethod
    def _count_settled(conn: Connection, job_id: str, increments: dict[str, int]) -> None:
        """Add settled items to a running job's counters, and finish it once every item is settled."""
        now = utcnow()
        counts = {"_job_id": job_id, "_delivered": increments.get("delivered", 0),
                  "_failed_deliver": increments.get("failed_deliver", 0), "_now": now}
        found = _count_settled_statement(conn.dialect).rows(driver_cursor(conn), counts)
        if not found:
            return  # no longer running (stopped: the stop counted what was open)
        delivered, failed_deliver, item_count = found[0]
        if delivered + failed_deliver >= item_count and move(
                conn, JOB, job_id, JobStatus.RUNNING, JobStatus.FINISHED,
                message="Every item was delivered or failed to be", updated_at=now):
            log.info("job %s finished: %d items delivered, %d failed", job_id, delivered, failed_deliver,
                     extra={"job_id": job_id, "event": "job finished", "delivered": delivered,
                            "failed": failed_deliver})

    @staticmethod
    def _fail_delivery(conn: Connection, job_id: str, failures: dict[int, list[str]]) -> int:
        """Settle these items as failed to deliver, each with the reasons after what its log said
        (a failed prediction's error stays first) and at level Error (a prediction that worked was
        logged Info); returns how many were still open."""
        said = dict(conn.execute(select(LOGS.c.item_index, LOGS.c.reason).where(
            LOGS.c.job_id == job_id, LOGS.c.item_index.in_(list(failures)))).all())
        moved = 0
        for index, reasons in failures.items():
            reason = "; ".join(filter(None, [said.get(index), *reasons]))
            moved += move(conn, JOB_ITEM, {"job_id": job_id, "item_index": [index]}, OPEN_ITEM,
                          ItemStatus.FAILED_DELIVER, reason=reason, level="Error")
        return moved


@functools.cache
def _count_settled_statement(dialect: Dialect) -> DriverStatement:
    """The counters of settled items added to a running job, returning what they add up to; compiled once."""
    return DriverStatement(
        update(JOBS).where(JOBS.c.id == bindparam("_job_id"), JOBS.c.status == JobStatus.RUNNING.value)
        .values(delivered=JOBS.c.delivered + bindparam("_delivered"),
                failed_deliver=JOBS.c.failed_deliver + bindparam("_failed_deliver"), updated_at=bindparam("_now"))
        .returning(JOBS.c.delivered, JOBS.c.failed_deliver, JOBS.c.item_count), dialect)


def _delivery_failure(attempts: int, error: str | None) -> str:
    """Why a delivery failed, as a job's log tells it."""
    tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
    return f"Delivery failed after {tries}: {error or 'no answer'}"
