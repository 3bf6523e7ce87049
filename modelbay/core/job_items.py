"""A batch job's items: run with a bounded window in flight, each outcome committed exactly once.

The runner streams the dataset's items, runs each as a direct request, renders the body its
webhooks receive, and commits the item's log entry, deliveries and the job's counters together
(`Coalescer`: outcomes that finish during a commit share the next one). A log entry is the record
that an item is done: a resumed runner skips every item that has one. Each commit is fenced by the
node that owns the job (`core.nodes`): once it lost the job, nothing more of its is recorded, and
the runner halts.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Dialect, Table, bindparam, case, func, insert, select, update

from modelbay.core.activity import Activity
from modelbay.core.background import Coalescer
from modelbay.core.clock import utcnow
from modelbay.core.deliveries import DELIVERIES, Deliveries, Due, claimed_dues, new_delivery
from modelbay.core.deployments import Target
from modelbay.core.errors import InvalidInput, ModelbayError, StatusChanged
from modelbay.core.requests import Requests
from modelbay.core.states import JOB, ItemStatus, JobStatus, move
from modelbay.store.db import Database
from modelbay.store.driver import DriverStatement, driver_cursor, insert_rows
from modelbay.store.tables import JobLogRow, JobRow

JOBS: Table = JobRow.__table__  # type: ignore[assignment]
LOGS: Table = JobLogRow.__table__  # type: ignore[assignment]

#: How long one item may run on the deployment, in seconds.
ITEM_TIMEOUT_S = 300

#: Items in flight per instance the deployment may have, their outcomes' commit included: many, so
#: instances take next items while earlier outcomes are committed, and one commit carries many
#: outcomes (on the bench, end to end: 4 gave 175 items/s, 32 ~300; later, on PostgreSQL, 32 gave
#: ~2,800 and 64 ~3,100, ~3,400 once a delivered POST gave its place up before its commit).
ITEMS_IN_FLIGHT_PER_INSTANCE = 64

#: Most items in flight per job, whatever the deployment allows.
MAX_ITEMS_IN_FLIGHT = 256

#: Most characters of an item kept in its log entry.
MAX_ITEM_LABEL = 300


@dataclass(frozen=True)
class ItemOutcome:
    """What one item came to, handed to the renderer of the delivered body."""

    job_id: str
    dataset_id: str
    index: int
    item: Any
    status: str
    result: Any
    error: str | None


def default_body(outcome: ItemOutcome) -> bytes:
    return orjson.dumps({"job_id": outcome.job_id, "item_index": outcome.index, "item": outcome.item,
                         "status": outcome.status, "result": outcome.result, "error": outcome.error})


#: Turns an item's outcome into the body its webhooks receive (each dialect has its own).
RenderBody = Callable[[ItemOutcome], bytes]


#: An item's outcome to commit: its log entry, its deliveries and its status.
_Outcome = tuple[dict[str, Any], list[dict[str, Any]], str]

#: The counters an item's outcome adds to.
COUNTERS = {
    ItemStatus.FAILED_PROCESS: ("gathered", "failed_process"),
    ItemStatus.PREDICTED: ("gathered", "preprocessed", "predicted"),
    ItemStatus.FAILED_PREDICT: ("gathered", "preprocessed", "failed_predict"),
}


class JobRunner:
    """Runs one job's items: a bounded window in flight, each outcome committed once."""

    def __init__(self, db: Database, requests: Requests, deliveries: Deliveries, render_body: RenderBody,
                 job: JobRow, owner: str, dataset_id: str, target: Target, activity: Activity) -> None:
        self._db = db
        self._activity = activity  # where the items that end here are counted
        self._requests = requests
        self._deliveries = deliveries
        self._render_body = render_body
        self._job = job
        self._owner = owner  # the node running the job: every write of it is fenced by it
        self._dataset_id = dataset_id
        self._target = target
        self._cursor = job.next_item  # every item before it is committed
        self._done_above: set[int] = set()
        self._last_ms = 0
        self.stopping = False
        # Outcomes that finish while a commit is under way go together in the next one.
        self._outbox: Coalescer[_Outcome, bool] = Coalescer(self._write)

    def mark_running(self, conn: Connection) -> bool:
        """Move the job to running; False when it was stopped (the stop has settled it) or taken over."""
        try:
            move(conn, JOB, self._job.id, JobStatus.SCHEDULED, JobStatus.RUNNING, fence=self._owner,
                 message="Running", updated_at=utcnow())
        except StatusChanged:
            return False
        conn.execute(insert(LOGS).values(job_id=self._job.id, item_index=None, created_ms=self._next_ms(),
                                         kind="job_started", level="Info", item="", status=JobStatus.RUNNING,
                                         time_ms=0.0, reason=""))
        return True

    def _next_ms(self) -> int:
        """A log time unique within the job, so paging by time never splits one millisecond."""
        self._last_ms = max(int(time.time() * 1000), self._last_ms + 1)
        return self._last_ms

    async def run(self, items: Any) -> None:
        job = self._job
        with self._db.read() as session:
            # Committed out of order above the cursor before a restart: skip them.
            committed = set(session.scalars(select(JobLogRow.item_index).where(
                JobLogRow.job_id == job.id, JobLogRow.item_index >= self._cursor)))
            self._last_ms = session.scalar(select(func.max(JobLogRow.created_ms))
                                           .where(JobLogRow.job_id == job.id)) or 0
        window = asyncio.Semaphore(
            max(1, min(self._target.maximum_instances * ITEMS_IN_FLIGHT_PER_INSTANCE, MAX_ITEMS_IN_FLIGHT)))
        in_flight: set[asyncio.Task[None]] = set()
        try:
            for index, line in items:
                if self.stopping:
                    break
                if index in committed:
                    self._mark_done(index)
                    continue
                await window.acquire()
                if self.stopping:
                    window.release()
                    break
                task = asyncio.create_task(self._item(index, line))
                in_flight.add(task)
                task.add_done_callback(lambda t: (in_flight.discard(t), window.release()))
            await asyncio.gather(*in_flight)
        finally:
            for task in in_flight:
                task.cancel()

    def _mark_done(self, index: int) -> None:
        self._done_above.add(index)
        while self._cursor in self._done_above:
            self._done_above.discard(self._cursor)
            self._cursor += 1

    async def _item(self, index: int, line: bytes) -> None:
        job, target = self._job, self._target
        started = time.monotonic()
        data: Any = orjson.loads(line)
        result, error = None, None
        try:
            # Not waiting for the request's record: the outcome's commit, submitted after it, commits with it or later.
            record = await self._requests.direct(
                target, data, timeout=ITEM_TIMEOUT_S, origin={"created_by": f"batch job {job.id}"}, wait_recorded=False)
        except InvalidInput as exc:
            status, error = ItemStatus.FAILED_PROCESS, exc.message
        except ModelbayError as exc:
            status, error = ItemStatus.FAILED_PREDICT, exc.message
        else:
            if record.status == "completed":
                status, result = ItemStatus.PREDICTED, record.result
            else:
                status, error = ItemStatus.FAILED_PREDICT, record.error_message or f"The request {record.status}"
        elapsed_ms = (time.monotonic() - started) * 1000
        body = self._render_body(ItemOutcome(job.id, self._dataset_id, index, data, status, result, error))
        label = data.get("url") if isinstance(data, dict) and isinstance(data.get("url"), str) else line.decode()
        entry = {"job_id": job.id, "item_index": index, "created_ms": self._next_ms(), "kind": "item",
                 "level": "Info" if status == ItemStatus.PREDICTED else "Error", "item": label[:MAX_ITEM_LABEL],
                 "status": status, "time_ms": round(elapsed_ms, 3), "reason": error or ""}
        deliveries = [new_delivery(webhook_id, body, job_id=job.id, item_index=index)
                      for webhook_id in job.webhook_ids]
        if await self._record(entry, deliveries, status):
            self._activity.count("job_items", target.version_id, status)
        self._mark_done(index)

    async def _record(self, entry: dict[str, Any], deliveries: list[dict[str, Any]], status: str) -> bool:
        """Commit an item's outcome; True once committed, False when the job stopped first.

        Outcomes that finish while a commit is under way go together in the next one: one
        transaction of a few statements for many items, not a few statements for each.
        """
        return await self._outbox.add((entry, deliveries, status))

    async def _write(self, batch: list[_Outcome]) -> list[bool]:
        # The deliveries this node's worker takes at once are inserted claimed, and handed to it
        # once committed: no claim of their own. The others wait in the store for a claim.
        rows = [delivery for _, deliveries, _ in batch for delivery in deliveries]
        reserved = self._deliveries.reserve(len(rows))
        for delivery in rows[:reserved]:
            delivery["owner"] = self._deliveries.node_id
        try:
            written = await self._db.committer.submit_async(self._commit(batch, self._cursor))
        except BaseException:
            self._deliveries.take([], reserved)  # not committed: nothing to make
            raise
        committed, dues = written or (set(), [])
        self._deliveries.take(dues, reserved)
        if committed and len(rows) > reserved:
            self._deliveries.wake()  # some went in unclaimed
        if written is None:
            self.stopping = True  # hand out no more items: they could not be recorded
        return [entry["item_index"] in committed for entry, _, _ in batch]

    def _commit(self, batch: list[_Outcome],
                cursor: int) -> Callable[[Connection], tuple[set[int], list[Due]] | None]:
        """The write of a batch of item outcomes: the item indexes it committed and the deliveries
        it inserted claimed, or None when the job is no longer running on this node (stopped,
        deleted, or taken over by another)."""
        job_id, owner = self._job.id, self._owner

        def commit(conn: Connection) -> tuple[set[int], list[Due]] | None:
            indexes = [entry["item_index"] for entry, *_ in batch]
            # Committed before (a resumed runner): never twice. The unique (job, item) backs this.
            # (A range, not a list: one statement, compiled once; a batch spans at most the window.)
            seen = {index for index, in _committed_statement(conn.dialect).rows(
                driver_cursor(conn), {"job_id": job_id, "low": min(indexes), "high": max(indexes)})}
            fresh = [outcome for outcome in batch if outcome[0]["item_index"] not in seen]
            if not fresh:
                return set(), []
            counts = {"_job_id": job_id, "_owner": owner, "_cursor": cursor, "_now": utcnow(),
                      **dict.fromkeys(_COUNTED, 0)}
            for _, _, status in fresh:
                for name in COUNTERS[status]:
                    counts[f"_{name}"] += 1
            if not _count_items_statement(conn.dialect).execute(driver_cursor(conn), counts):
                return None  # stopped meanwhile (the stop counted these items already), or not ours
            insert_rows(conn, LOGS, [entry for entry, _, _ in fresh])
            rows = [d for _, deliveries, _ in fresh for d in deliveries]
            insert_rows(conn, DELIVERIES, rows)
            dues = claimed_dues(conn, [row for row in rows if row["owner"] is not None])
            return {entry["item_index"] for entry, _, _ in fresh}, dues

        return commit


#: Every job counter an item's outcome may add to, as `_count_items_statement` takes them.
_COUNTED = tuple(dict.fromkeys(f"_{name}" for names in COUNTERS.values() for name in names))


@functools.cache
def _count_items_statement(dialect: Dialect) -> DriverStatement:
    """The counters of committed items added to the job, and its cursor moved up, if it still runs
    on this node; compiled once."""
    counters = {name.removeprefix("_"): JOBS.c[name.removeprefix("_")] + bindparam(name) for name in _COUNTED}
    return DriverStatement(
        update(JOBS).where(JOBS.c.id == bindparam("_job_id"), JOBS.c.status == JobStatus.RUNNING.value,
                           JOBS.c.owner == bindparam("_owner"))
        .values(**counters, updated_at=bindparam("_now"),
                next_item=case((JOBS.c.next_item < bindparam("_cursor"), bindparam("_cursor")),
                               else_=JOBS.c.next_item)), dialect)


@functools.cache
def _committed_statement(dialect: Dialect) -> DriverStatement:
    """The indexes of a job's items from `low` to `high` that have a log entry (are committed).
    Planned at each run, as a move by (job, item) is (`states._statement`)."""
    return DriverStatement(select(LOGS.c.item_index).where(
        LOGS.c.job_id == bindparam("job_id"), LOGS.c.item_index.between(bindparam("low"), bindparam("high"))), dialect,
        planned_each_run=True)
