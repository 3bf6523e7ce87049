"""Requests: one execution of a version's code, recorded in the store.

Direct requests run at once and answer with their outcome. Batch requests are committed
first (all or nothing), then drained from the queue. Once stored, a request lives as every
stored request does (`stored_requests.StoredRequests`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, Dialect, bindparam, literal_column, select, update

from modelbay.core.activity import Activity, origin_of
from modelbay.core.clock import utcnow
from modelbay.core.delayed_calls import DelayedCalls
from modelbay.core.deployments import Deployments, Target
from modelbay.core.errors import InvalidInput, NotFound, StatusChanged, last_line
from modelbay.core.fields import check_data
from modelbay.core.nodes import Nodes
from modelbay.core.payloads import Payloads
from modelbay.core import bus as topics
from modelbay.core.background import Background
from modelbay.core.bus import Bus, Message
from modelbay.core.queue import (
    CLAIM_PER_DRAINER,
    CLAIM_PER_DRAINER_POSTGRESQL,
    HELD_ITEM_OVERHEAD,
    BatchQueue,
    QueuedItem,
)
from modelbay.core.row_ids import time_ordered_id
from modelbay.core.scheduler import PRIORITY_BATCH, PRIORITY_DIRECT, Scheduler
from modelbay.core.stored_requests import StoredRequests, check_batch
from modelbay.core.states import REQUEST, REQUESTS, move
from modelbay.core.states import RequestStatus as Status
from modelbay.runtime.base import Call, CallTimedOut, InstanceLost, InstanceStartFailed
from modelbay.store.db import Database, Insert
from modelbay.store.driver import DriverStatement, driver_cursor
from modelbay.store.tables import RequestRow, VersionRow

log = logging.getLogger(__name__)

DIRECT_TIMEOUT_DEFAULT_S = 300
DIRECT_TIMEOUT_MAX_S = 3600
BATCH_TIMEOUT_DEFAULT_S = 14400
BATCH_TIMEOUT_MAX_S = 172800

#: A direct request still running after this long is recorded as `processing` before it ends.
RECORD_PROCESSING_AFTER_S = 0.05

#: Most batch results that may wait for their commit at any time: the queue runs no further
#: ahead of the store, so a crash re-runs at most these (and the items running then).
MAX_UNCOMMITTED_RESULTS = 32

#: The same on PostgreSQL, where a commit is several round trips to the database server: more
#: results share each (512 against 128: a drain a tenth faster, once it no longer claims), and a
#: crash re-runs at most these, some 60 ms of a drain.
MAX_UNCOMMITTED_RESULTS_POSTGRESQL = 512

#: Most log text kept with one request; the worker already caps what it collects.
MAX_STORED_LOG_CHARS = 1 << 20

#: A pending request, with the status as a literal, as the partial index of pending rows says it:
#: with a parameter neither database can tell that index covers the query.
IS_PENDING = REQUESTS.c.status == literal_column("'pending'")

#: How often a node looks for pending requests nobody drains (accepted by another node whose
#: message it missed, or given back by a node that stopped).
POLL_S = 5.0


@dataclass(frozen=True)
class RequestRecord:
    """A request as the dialects see it."""

    id: str
    deployment_name: str
    version_name: str
    mode: str
    status: str
    timeout: int
    result: Any
    error_message: str | None
    created_at: datetime
    logs: str = ""  # what the code printed (direct requests only)


@dataclass(frozen=True)
class Outcome:
    status: Status
    result: Any = None
    error: str | None = None
    logs: str = ""


def check_input(target: Target, data: Any) -> bool:
    """Check direct-request input; returns whether it is a list for the code's `requests()`.

    Raises `InvalidInput` naming the field.
    """
    as_list = isinstance(data, list) and target.input_type == "structured"
    for item in data if as_list else [data]:
        check_data(target.input_type, target.input_fields, item)
    return as_list


def check_priority(priority: Any) -> int:
    if priority is None:
        return 1
    if priority not in (0, 1) or isinstance(priority, bool):
        raise InvalidInput("priority must be 0 (high) or 1 (standard)")
    return int(priority)


class Requests(StoredRequests):
    """Runs requests of deployment versions and answers questions about them."""

    machine = REQUEST
    row_type = RequestRow
    version_row_type = VersionRow

    def __init__(self, db: Database, scheduler: Scheduler, deployments: Deployments, payloads: Payloads,
                 nodes: Nodes, activity: Activity | None = None) -> None:
        super().__init__(db, payloads)
        #: Where the requests that end here are counted (for the metrics).
        self.activity = activity or Activity()
        self._scheduler = scheduler
        self._deployments = deployments
        self._nodes = nodes
        self.queue = BatchQueue(self._claim_pending, self._run_queued, self._drainers_for,
                                CLAIM_PER_DRAINER if db.is_sqlite else CLAIM_PER_DRAINER_POSTGRESQL)
        #: Most batch results that wait for their commit at once (`_limit_uncommitted`).
        self.max_uncommitted = MAX_UNCOMMITTED_RESULTS if db.is_sqlite else MAX_UNCOMMITTED_RESULTS_POSTGRESQL
        self._poll_now = asyncio.Event()
        self._background = Background("requests")
        nodes.add_recoverer(self.give_back, "requests")
        nodes.recovered.add(self._poll_now.set)
        self._running: dict[str, asyncio.Task[Any]] = {}  # request id -> its call, for cancels
        self._cancelling: set[str] = set()
        self._uncommitted: deque[asyncio.Future[Any]] = deque()  # batch results being written, oldest first
        #: What is done for work still running after `RECORD_PROCESSING_AFTER_S` (record it as running).
        self.after_a_moment = DelayedCalls(RECORD_PROCESSING_AFTER_S)

    # --- direct ----------------------------------------------------------------------------

    async def direct(
        self,
        target: Target,
        data: Any,
        *,
        timeout: int,
        origin: dict[str, str],
        on_update: Callable[[str], None] | None = None,
        request_id: str | None = None,
        priority: int = PRIORITY_DIRECT,
        context: dict[str, Any] | None = None,
        wait_recorded: bool = True,
    ) -> RequestRecord:
        """Run `data` on `target` now and return the finished request.

        `request_id`: the id to give it, for a caller that may cancel it while it runs (a
        pipeline step, see `cancel_running`); `priority`: its place among waiting work (a step
        of a batch pipeline request waits as batch work does); `context`: keys added to the
        call's context (per-call environment, HTTP bodies: see `runtime/wire.py`); `wait_recorded`
        False: a quick request returns once its record is submitted, not committed (what the caller
        submits next commits with it or later). Raises `InvalidInput` (nothing recorded) when `data`
        does not match the input definition.
        """
        as_list = check_input(target, data)
        began = time.monotonic()
        request_id = request_id or time_ordered_id()
        encoded = orjson.dumps(data)
        created_at = utcnow()
        node = self._nodes.id
        started = {
            **await self._new_row(target, request_id, "direct", priority, timeout, encoded, origin, created_at),
            "status": Status.PROCESSING.value,
            "started_at": created_at,
            "owner": node,
        }
        committer = self._db.committer
        call = Call(request_id, data, {**(context or {}), "id": request_id, "request_mode": "direct",
                                       "batch_list": as_list})
        if target.retention_mode == "none":  # nothing of it is kept: run it and answer
            outcome = await self._execute(target, call, timeout, priority, on_update)
            self._ended(target, request_id, origin_of("direct", origin), outcome, outcome.status, outcome.error,
                        began)
            return RequestRecord(request_id, target.deployment_name, target.version_name, "direct",
                                 outcome.status.value, timeout, outcome.result, outcome.error, created_at,
                                 outcome.logs)
        recorded = False

        def record_processing() -> None:
            nonlocal recorded
            recorded = True
            committer.submit(Insert(REQUESTS, [started]))

        # Most direct requests finish within milliseconds: they are written once, finished.
        # One still running after a moment is recorded as processing, so it can be seen.
        delayed = self.after_a_moment.add(record_processing)
        try:
            outcome = await self._execute(target, call, timeout, priority, on_update)
        finally:
            self.after_a_moment.cancel(delayed)
        finished = await self._finished_values(request_id, target, outcome)
        error = outcome.error
        if recorded:
            status = await committer.submit_async(self._finish(request_id, Status.PROCESSING, outcome.status, finished,
                                                               node))
            if status is None:  # deleted meanwhile, or ended by a node that took this one for dead: say what it is
                status, error = await asyncio.to_thread(self._stored_end, request_id)
        else:
            status = outcome.status
            written = committer.submit_async(Insert(REQUESTS, [{**started, **finished, "status": status.value}]))
            if wait_recorded:
                await written
            else:
                written.add_done_callback(_log_failure)
        self._ended(target, request_id, origin_of("direct", origin), outcome, status, error, began)
        return RequestRecord(
            id=request_id,
            deployment_name=target.deployment_name,
            version_name=target.version_name,
            mode="direct",
            status=status.value,
            timeout=timeout,
            result=outcome.result if status is Status.COMPLETED else None,
            error_message=error if status is Status.FAILED else None,
            created_at=created_at,
            logs=outcome.logs,
        )

    def _stored_end(self, request_id: str) -> tuple[Status, str | None]:
        """The status and error of a request as the store has it; cancelled if it is gone."""
        with self._db.read() as session:
            row = session.execute(select(REQUESTS.c.status, REQUESTS.c.error_message)
                                  .where(REQUESTS.c.id == request_id)).first()
        return (Status.CANCELLED, None) if row is None else (Status(row.status), row.error_message)

    # --- batch -----------------------------------------------------------------------------

    async def create_batch(
        self, target: Target, items: list[Any], *, timeout: int, priority: int, origin: dict[str, str]
    ) -> list[RequestRecord]:
        """Validate every item, then commit them all in one transaction and queue them.

        Raises `InvalidInput` naming the first faulty item; then nothing is stored.
        """
        check_batch(items, lambda item: check_data(target.input_type, target.input_fields, item))
        now = utcnow()
        rows = []
        held_bytes = []
        for index, item in enumerate(items):
            # A microsecond apart: the queue runs a version's requests in order of creation.
            created_at = now + timedelta(microseconds=index)
            encoded = orjson.dumps(item)
            row = await self._new_row(target, time_ordered_id(), "batch", priority, timeout, encoded, origin,
                                      created_at)
            rows.append({**row, "status": Status.PENDING.value})
            held_bytes.append(len(encoded) + HELD_ITEM_OVERHEAD)
        # On a node alone the items are claimed as they are stored (see `queue.py`).
        owner = self._nodes.id
        held = self._nodes.alone and self.queue.may_hold(target.version_id, sum(held_bytes))
        if held:
            for row in rows:
                row["owner"] = owner
        # Not behind the results and claims of the committer: the inserts of batches do not wait for them.
        await self._db.insert_committer.submit_async(Insert(REQUESTS, rows))
        if held:
            self.queue.hold(target.version_id, [
                QueuedItem(row["id"], target.version_id, item, timeout, priority, owner, size)
                for row, item, size in zip(rows, items, held_bytes, strict=True)])
        else:
            self.queue.wake(target.version_id)
            if self._bus is not None:  # the other nodes drain it too
                self._bus.publish(topics.WORK, target.version_id)
        return [
            RequestRecord(row["id"], target.deployment_name, target.version_name, "batch", "pending", timeout,
                          None, None, row["created_at"])
            for row in rows
        ]

    def _drainers_for(self, version_id: str) -> int:
        return self._scheduler.capacity(self._deployments.target_of_version(version_id))

    async def _claim_pending(self, version_id: str, limit: int) -> list[QueuedItem]:
        """Claim up to `limit` of the version's unclaimed pending requests for this node, in queue order."""
        owner = self._nodes.id
        params = {"owner": owner, "version_id": version_id, "limit": limit, "offset": 0}

        def write(conn: Connection) -> list[Any]:
            return _claim_statement(conn.dialect).rows(driver_cursor(conn), params)

        rows = await self._db.committer.submit_async(write)
        rows.sort(key=lambda row: (row[4], row[5], row[0]))  # priority, created_at, id: the queue order
        items = []
        for request_id, data, data_key, timeout, priority, _ in rows:
            data = (self._payloads.value(data, None) if data_key is None
                    else await asyncio.to_thread(self._payloads.value, None, data_key))
            items.append(QueuedItem(request_id, version_id, data, timeout, priority, owner))
        return items

    async def _run_queued(self, item: QueuedItem) -> None:
        committer = self._db.committer
        node = item.owner
        if node != self._nodes.id:
            return  # claimed under an id this node lost (declared dead): given back, another node runs it
        await self._limit_uncommitted()
        began = time.monotonic()
        started_at = utcnow()
        try:
            target = self._deployments.target_of_version(item.version_id)
        except NotFound:
            values = {"error_message": "The version of this request no longer exists", "finished_at": started_at}
            committer.submit(self._finish(item.request_id, Status.PENDING, Status.FAILED, values, node))
            return
        # As for direct requests: an item that ends within a moment of starting to run is written
        # once, from `pending` to its end; one still running then is claimed (`processing`), so it
        # can be seen and, after a crash, is failed rather than run again (one that waited for an
        # instance, or in one, runs again). A cancel or delete of an item that runs unclaimed stops
        # its call (see `_cancel`); its finish then finds it gone.
        running_from = Status.PENDING
        delayed: int | None = None

        def claim() -> None:
            nonlocal running_from
            running_from = Status.PROCESSING
            committer.submit(self._mark_processing(item.request_id, started_at, node)).add_done_callback(_log_failure)

        def started() -> None:
            nonlocal delayed
            if delayed is None:  # once: a call that waited in an instance that ended starts again elsewhere
                delayed = self.after_a_moment.add(claim)

        call = Call(item.request_id, item.data, {"id": item.request_id, "request_mode": "batch"})
        try:
            outcome = await self._execute(target, call, item.timeout, PRIORITY_BATCH + item.priority,
                                          on_start=started)
        except Exception as exc:  # a fault of this server's: the item fails, rather than stay claimed here
            log.exception("running queued request %s failed", item.request_id)
            outcome = Outcome(Status.FAILED, error=f"The request could not be run: {exc}")
        finally:
            if delayed is not None:
                self.after_a_moment.cancel(delayed)
        values = await self._finished_values(item.request_id, target, outcome)
        if running_from is Status.PENDING:
            values["started_at"] = started_at
        # Nobody waits on a batch result: the write goes on while the next item runs, and may
        # share its commit with the next few (until then, a crash leaves the item to run again).
        written = committer.submit_async(self._finish(item.request_id, running_from, outcome.status, values, node),
                                         linger=True)
        written.add_done_callback(_log_failure)
        self._uncommitted.append(written)
        self._ended(target, item.request_id, "batch", outcome, outcome.status, outcome.error, began)

    def _ended(self, target: Target, request_id: str, origin: str, outcome: Outcome, status: Status,
               error: str | None, began: float) -> None:
        """Count a request that ended (`status`, `error`: as written), and log why when it failed:
        its error, and the last line the code printed (of a traceback: the exception)."""
        self.activity.request_finished(target.version_id, origin, status.value, time.monotonic() - began)
        if status is Status.FAILED:
            printed = last_line(outcome.logs) if outcome.logs else None
            log.warning("request %s of %s/%s failed: %s%s", request_id, target.deployment_name,
                        target.version_name, last_line(error), f" (its output ends: {printed})" if printed else "",
                        extra={"request_id": request_id, "project": target.project_name,
                               "deployment": target.deployment_name, "version": target.version_name,
                               "origin": origin, "event": "request failed"})

    async def _limit_uncommitted(self) -> None:
        """Wait while `max_uncommitted` batch results wait for their commit. Without it a
        busy event loop starves the committer's thread and results pile up uncommitted (~190 ms
        of them under load), every one of which a crash would run again."""
        waiting = self._uncommitted
        while waiting:
            if waiting[0].done():
                waiting.popleft()
            elif len(waiting) >= self.max_uncommitted:
                self._db.committer.flush()  # they linger for company: they have enough
                await asyncio.wait([waiting[0]])
            else:
                return

    def _mark_processing(self, request_id: str, started_at: datetime, node: str) -> Callable[[Connection], bool]:
        def mark(conn: Connection) -> bool:
            try:
                move(conn, self.machine, request_id, Status.PENDING, Status.PROCESSING, fence=node,
                     started_at=started_at)
            except StatusChanged:
                return False  # cancelled, deleted or given back meanwhile
            return True

        return mark

    # --- execution -------------------------------------------------------------------------

    async def _execute(
        self,
        target: Target,
        call: Call,
        timeout: int,
        priority: int,
        on_update: Callable[[str], None] | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> Outcome:
        """Run a call and turn every way it can end into an outcome."""
        me = asyncio.current_task()
        assert me is not None
        self._running[call.request_id] = me  # a cancel cancels this task while it awaits the call
        try:
            outcome = await self._scheduler.run(target, call, timeout, priority, on_update, on_start=on_start)
        except CallTimedOut as exc:
            return Outcome(Status.FAILED, error=f"Request timed out after {timeout} seconds", logs=exc.logs)
        except InstanceLost as exc:
            return Outcome(Status.FAILED, error=exc.message, logs=exc.logs)
        except InstanceStartFailed as exc:
            return Outcome(Status.FAILED, error=f"The deployment could not start: {exc.message}", logs=exc.logs)
        except asyncio.CancelledError:
            if call.request_id in self._cancelling and me.cancelling() == 1:
                me.uncancel()  # cancelled by a user's cancel, not by our caller going away
                return Outcome(Status.CANCELLED)
            raise
        finally:
            self._running.pop(call.request_id, None)
            self._cancelling.discard(call.request_id)
        if not outcome.ok:
            return Outcome(Status.FAILED, error=outcome.error or "The request failed", logs=outcome.logs)
        try:
            for item in outcome.result if call.context.get("batch_list") else [outcome.result]:
                check_data(target.output_type, target.output_fields, item, "output")
        except InvalidInput as exc:
            return Outcome(Status.FAILED, error=f"The deployment returned invalid output: {exc.message}",
                           logs=outcome.logs)
        return Outcome(Status.COMPLETED, outcome.result, logs=outcome.logs)

    async def _new_row(
        self, target: Target, request_id: str, mode: str, priority: int, timeout: int, encoded: bytes,
        origin: dict[str, str], created_at: datetime,
    ) -> dict[str, Any]:
        # A batch request keeps its input until it has run, whatever the retention.
        kept = encoded if mode == "batch" or target.retention_mode == "full" else None
        return {
            "id": request_id,
            "project_id": target.project_id,
            "deployment_id": target.deployment_id,
            "version_id": target.version_id,
            "mode": mode,
            "priority": priority,
            "timeout": timeout,
            **await self._payloads.values(request_id, "data", kept),
            "input_size": len(encoded),
            "origin": origin,
            "created_at": created_at,
        }

    async def _finished_values(self, request_id: str, target: Target, outcome: Outcome) -> dict[str, Any]:
        keep = target.retention_mode == "full"
        encoded = orjson.dumps(outcome.result) if outcome.status is Status.COMPLETED else b""
        kept = encoded if keep and outcome.status is Status.COMPLETED else None
        values: dict[str, Any] = {
            **await self._payloads.values(request_id, "result", kept),
            "error_message": outcome.error,
            "logs": outcome.logs[-MAX_STORED_LOG_CHARS:] if outcome.logs else None,
            "output_size": len(encoded),
            "finished_at": utcnow(),
        }
        if not keep:  # a batch input kept until now (its blob, if any, goes with the orphan sweep)
            values["data"] = values["data_key"] = None
        return values

    # --- what the stored lifecycle asks -----------------------------------------------------

    def _running_here(self) -> list[str]:
        return list(self._running)

    async def _stop_running(self, request_id: str) -> bool:
        task = self._running.get(request_id)
        if task is None:
            return False
        self._cancelling.add(request_id)
        task.cancel()  # the runtime stops the instance; the request's own write ends it
        return True

    async def cancel_running(self, request_id: str) -> None:
        """Cancel a direct request this server is running, whether or not it is recorded yet."""
        try:
            await self._cancel(request_id, Status.PROCESSING)
        except NotFound:  # not recorded yet: stop its call; it is then written once, cancelled
            await self._stop_running(request_id)

    # --- the queue across nodes ----------------------------------------------------------

    def use_bus(self, bus: Bus) -> None:
        super().use_bus(bus)
        bus.subscribe(topics.WORK, self._work_told)
        bus.subscribe_resync(self._poll_now.set)  # messages may have been missed: look in the store

    def _work_told(self, message: Message) -> None:
        if not message.from_here:
            self.queue.wake(message.payload)

    def start(self) -> None:
        """Drain what waits in the store, and look for it again now and then (and when told to)."""
        self._background.every(POLL_S, self._poll, "batch poll", wake=self._poll_now)

    async def _poll(self) -> None:
        table = REQUESTS

        def versions() -> list[str]:
            with self._db.read() as session:
                return list(session.scalars(select(table.c.version_id).distinct().where(
                    IS_PENDING, table.c.owner.is_(None))))

        draining = self.queue.draining()
        for version_id in await asyncio.to_thread(versions):
            if version_id not in draining:
                self.queue.wake(version_id)

    async def close(self, grace_s: float = 30.0) -> None:
        """Let running batch requests finish, for up to `grace_s`; what waits stays pending (what this
        node claimed of it is given back when the node stops)."""
        await self._background.close()
        await self.queue.close(grace_s)
        self._db.committer.flush()  # the results still lingering for company are written before the node stops
        await asyncio.gather(*self._uncommitted, return_exceptions=True)


@functools.cache
def _claim_statement(dialect: Dialect) -> DriverStatement:
    """The claim of a version's oldest unclaimed pending requests, compiled once (it runs for every
    few items of a drain). PostgreSQL skips the
    rows another node is claiming at the same moment (SQLite has one writer)."""
    table = REQUESTS
    oldest = (select(table.c.id)
              .where(table.c.version_id == bindparam("version_id"), IS_PENDING, table.c.owner.is_(None))
              .order_by(table.c.priority, table.c.created_at, table.c.id)
              .limit(bindparam("limit"))
              .offset(bindparam("offset"))  # SQLite writes an OFFSET with every LIMIT
              .with_for_update(skip_locked=True))
    claim = (update(table).where(table.c.id.in_(oldest.scalar_subquery())).values(owner=bindparam("owner"))
             .returning(table.c.id, table.c.data, table.c.data_key, table.c.timeout, table.c.priority,
                        table.c.created_at))
    # Planned at each run: a plan kept from the first claims, on a table then nearly empty, sorted
    # every pending row by a walk of the index on the status (~17 ms a claim at a 20,000 backlog).
    return DriverStatement(claim, dialect, planned_each_run=True)


def _log_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("recording a request outcome failed", exc_info=future.exception())
