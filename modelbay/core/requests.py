"""Requests: one execution of a version's code, recorded in the store.

Direct requests run at once and answer with their outcome. Batch requests are committed
first (all or nothing), then drained from the queue. Every status change is a
compare-and-set through `states.move`, so a cancel racing a completion is
decided exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, Select, delete, select

from modelbay.core.clock import utcnow
from modelbay.core.deployments import Deployments, Target
from modelbay.core.errors import InvalidInput, NotFound, StatusChanged
from modelbay.core.fields import check_data
from modelbay.core.payloads import Payloads, named_keys
from modelbay.core.queue import BatchQueue, QueuedItem
from modelbay.core.scheduler import PRIORITY_BATCH, PRIORITY_DIRECT, Scheduler
from modelbay.core.states import REQUEST, REQUESTS, move
from modelbay.core.states import REQUEST_TERMINAL as TERMINAL
from modelbay.core.states import RequestStatus as Status
from modelbay.runtime.base import Call, CallTimedOut, InstanceLost, InstanceStartFailed
from modelbay.store.db import Database, Insert
from modelbay.store.tables import RequestRow, VersionRow

log = logging.getLogger(__name__)

DIRECT_TIMEOUT_DEFAULT_S = 300
DIRECT_TIMEOUT_MAX_S = 3600
BATCH_TIMEOUT_DEFAULT_S = 14400
BATCH_TIMEOUT_MAX_S = 172800

#: Most requests one batch call may create, collect, cancel or delete.
MAX_BATCH = 250

#: A direct request still running after this long is recorded as `processing` before it ends.
RECORD_PROCESSING_AFTER_S = 0.05

#: Most batch results that may wait for their commit at any time: the queue runs no further
#: ahead of the store, so a crash re-runs at most these (and the items running then).
MAX_UNCOMMITTED_RESULTS = 32

#: Most log text kept with one request; the worker already caps what it collects.
MAX_STORED_LOG_CHARS = 1 << 20

#: Statuses a list may filter on; `pending` and `processing` only alone.
LISTABLE = {"completed", "failed", "cancelled", "cancelled_pending", "pending", "processing"}
LIST_LIMIT_MAX = 1000


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


def check_timeout(timeout: Any, default: int, maximum: int) -> int:
    """The timeout a caller asked for, defaulted and bounded; raises `InvalidInput` when out of range."""
    if timeout is None:
        return default
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= maximum:
        raise InvalidInput(f"timeout must be an integer from 1 to {maximum} seconds")
    return timeout


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


def check_ids(ids: Any, what: str = "request ids") -> list[str]:
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise InvalidInput(f"The body must be a list of {what}")
    if len(ids) > MAX_BATCH:
        raise InvalidInput(f"At most {MAX_BATCH} {what} are allowed in one call, not {len(ids)}")
    return list(dict.fromkeys(ids))


def cancel_selection(
    ids: list[str] | None,
    status: str | None,
    collect: Callable[[list[str]], list[Any]],
    page: Callable[[int], list[Any]],
) -> list[Any]:
    """The rows a batch cancel acts on: those named by `ids`, or with `ids` empty every one with
    `status` (pending or processing), read with `collect(ids)` or page by page with `page(offset)`."""
    if status is not None and status not in ("pending", "processing"):
        raise InvalidInput("status must be 'pending' or 'processing'")
    if ids:
        return collect(ids)
    if status is None:
        raise InvalidInput("Give a list of request ids, or an empty list with status=pending|processing")
    return every_page(page)


def every_page(page: Callable[[int], list[Any]]) -> list[Any]:
    """All rows of a list read `LIST_LIMIT_MAX` at a time; `page(offset)` reads one page."""
    rows: list[Any] = []
    while True:
        more = page(len(rows))
        rows += more
        if len(more) < LIST_LIMIT_MAX:
            return rows


def list_query(
    row: Any,
    version_id: str,
    *,
    status: str | None,
    limit: int | None,
    offset: int | None,
    start_date: datetime | None,
    end_date: datetime | None,
    search_id: str | None,
) -> Select[Any]:
    """The rows of `row`'s table (deployment or pipeline requests) for one version, newest first,
    filtered as the UbiOps lists do; raises `InvalidInput` for a filter out of range."""
    statuses = [s.strip() for s in (status or "completed").split(",") if s.strip()]
    unknown = [s for s in statuses if s not in LISTABLE]
    if unknown or not statuses:
        raise InvalidInput(f"status must be one or more of {', '.join(sorted(LISTABLE))}")
    if len(statuses) > 1 and {"pending", "processing"} & set(statuses):
        raise InvalidInput("'pending' and 'processing' cannot be combined with other statuses")
    limit = 50 if limit is None else limit
    offset = 0 if offset is None else offset
    if not 1 <= limit <= LIST_LIMIT_MAX:
        raise InvalidInput(f"limit must be from 1 to {LIST_LIMIT_MAX}")
    if not 0 <= offset <= 2**63 - 1:
        raise InvalidInput("offset must be from 0 to 2**63 - 1")
    query = select(row).where(row.version_id == version_id, row.status.in_(statuses))
    if start_date is not None:
        query = query.where(row.created_at >= start_date)
    if end_date is not None:
        query = query.where(row.created_at <= end_date)
    if search_id:
        query = query.where(row.id.contains(search_id, autoescape=True))
    return query.order_by(row.created_at.desc(), row.id).limit(limit).offset(offset)


class Requests:
    """Runs requests and answers questions about them."""

    def __init__(self, db: Database, scheduler: Scheduler, deployments: Deployments, payloads: Payloads) -> None:
        self._db = db
        self._payloads = payloads
        self._scheduler = scheduler
        self._deployments = deployments
        self.queue = BatchQueue(self._run_queued, self._drainers_for)
        self._running: dict[str, asyncio.Task[Any]] = {}  # request id -> its call, for cancels
        self._cancelling: set[str] = set()
        self._uncommitted: deque[asyncio.Future[Any]] = deque()  # batch results being written, oldest first

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
    ) -> RequestRecord:
        """Run `data` on `target` now and return the finished request.

        `request_id`: the id to give it, for a caller that may cancel it while it runs (a
        pipeline step, see `cancel_running`); `priority`: its place among waiting work (a step
        of a batch pipeline request waits as batch work does); `context`: keys added to the
        call's context (per-call environment, HTTP bodies: see `runtime/wire.py`). Raises
        `InvalidInput` (nothing recorded) when `data` does not match the input definition.
        """
        as_list = check_input(target, data)
        request_id = request_id or str(uuid.uuid4())
        encoded = orjson.dumps(data)
        created_at = utcnow()
        started = {
            **await self._new_row(target, request_id, "direct", priority, timeout, encoded, origin, created_at),
            "status": Status.PROCESSING.value,
            "started_at": created_at,
        }
        committer = self._db.committer
        call = Call(request_id, data, {**(context or {}), "id": request_id, "request_mode": "direct",
                                       "batch_list": as_list})
        if target.retention_mode == "none":  # nothing of it is kept: run it and answer
            outcome = await self._execute(target, call, timeout, priority, on_update)
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
        timer = asyncio.get_running_loop().call_later(RECORD_PROCESSING_AFTER_S, record_processing)
        try:
            outcome = await self._execute(target, call, timeout, priority, on_update)
        finally:
            timer.cancel()
        finished = await self._finished_values(request_id, target, outcome)
        if recorded:
            status = await committer.submit_async(self._finish(request_id, outcome.status, finished))
        else:
            status = outcome.status
            await committer.submit_async(Insert(REQUESTS, [{**started, **finished, "status": status.value}]))
        return RequestRecord(
            id=request_id,
            deployment_name=target.deployment_name,
            version_name=target.version_name,
            mode="direct",
            status=(status or Status.CANCELLED).value,
            timeout=timeout,
            result=outcome.result if status is Status.COMPLETED else None,
            error_message=outcome.error if status is Status.FAILED else None,
            created_at=created_at,
            logs=outcome.logs,
        )

    # --- batch -----------------------------------------------------------------------------

    async def create_batch(
        self, target: Target, items: list[Any], *, timeout: int, priority: int, origin: dict[str, str]
    ) -> list[RequestRecord]:
        """Validate every item, then commit them all in one transaction and queue them.

        Raises `InvalidInput` naming the first faulty item; then nothing is stored.
        """
        if not items:
            raise InvalidInput("A batch needs at least one request")
        if len(items) > MAX_BATCH:
            raise InvalidInput(f"At most {MAX_BATCH} requests are allowed in one batch, not {len(items)}")
        for index, item in enumerate(items):
            try:
                check_data(target.input_type, target.input_fields, item)
            except InvalidInput as exc:
                raise InvalidInput(f"Request {index} of the batch: {exc.message}") from None
        created_at = utcnow()
        rows = []
        for item in items:
            row = await self._new_row(
                target, str(uuid.uuid4()), "batch", priority, timeout, orjson.dumps(item), origin, created_at
            )
            rows.append({**row, "status": Status.PENDING.value})
        await self._db.committer.submit_async(Insert(REQUESTS, rows))
        self.queue.push(
            [
                QueuedItem(row["id"], target.version_id, item, timeout, priority)
                for row, item in zip(rows, items, strict=True)
            ]
        )
        return [
            RequestRecord(row["id"], target.deployment_name, target.version_name, "batch", "pending", timeout,
                          None, None, created_at)
            for row in rows
        ]

    def _drainers_for(self, version_id: str) -> int:
        return self._deployments.target_of_version(version_id).maximum_instances

    async def _run_queued(self, item: QueuedItem) -> None:
        committer = self._db.committer
        await self._limit_uncommitted()
        started_at = utcnow()
        try:
            target = self._deployments.target_of_version(item.version_id)
        except NotFound:
            values = {"error_message": "The version of this request no longer exists", "finished_at": started_at}
            committer.submit(self._finish(item.request_id, Status.FAILED, values, Status.PENDING))
            return
        # As for direct requests: an item that ends within a moment is written once, from
        # `pending` to its end; one still running then is claimed (`processing`), so it can be
        # seen and, after a crash, is failed rather than run again. A cancel or delete of an
        # item that runs unclaimed stops its call (see `_cancel`); its finish then finds it gone.
        running_from = Status.PENDING

        def claim() -> None:
            nonlocal running_from
            running_from = Status.PROCESSING
            committer.submit(self._claim(item.request_id, started_at)).add_done_callback(_log_failure)

        call = Call(item.request_id, item.data, {"id": item.request_id, "request_mode": "batch"})
        timer = asyncio.get_running_loop().call_later(RECORD_PROCESSING_AFTER_S, claim)
        try:
            outcome = await self._execute(target, call, item.timeout, PRIORITY_BATCH + item.priority)
        finally:
            timer.cancel()
        values = await self._finished_values(item.request_id, target, outcome)
        if running_from is Status.PENDING:
            values["started_at"] = started_at
        # Nobody waits on a batch result: the write goes on while the next item runs, and may
        # share its commit with the next few (until then, a crash leaves the item to run again).
        written = committer.submit_async(self._finish(item.request_id, outcome.status, values, running_from),
                                         linger=True)
        written.add_done_callback(_log_failure)
        self._uncommitted.append(written)

    async def _limit_uncommitted(self) -> None:
        """Wait while `MAX_UNCOMMITTED_RESULTS` batch results wait for their commit. Without it a
        busy event loop starves the committer's thread and results pile up uncommitted (~190 ms
        of them under load), every one of which a crash would run again."""
        waiting = self._uncommitted
        while waiting:
            if waiting[0].done():
                waiting.popleft()
            elif len(waiting) >= MAX_UNCOMMITTED_RESULTS:
                self._db.committer.flush()  # they linger for company: they have enough
                await asyncio.wait([waiting[0]])
            else:
                return

    @staticmethod
    def _claim(request_id: str, started_at: datetime) -> Callable[[Connection], bool]:
        def claim(conn: Connection) -> bool:
            try:
                move(conn, REQUEST, request_id, Status.PENDING, Status.PROCESSING, started_at=started_at)
            except StatusChanged:
                return False  # cancelled or deleted meanwhile: its call was stopped
            return True

        return claim

    # --- execution -------------------------------------------------------------------------

    async def _execute(
        self,
        target: Target,
        call: Call,
        timeout: int,
        priority: int,
        on_update: Callable[[str], None] | None = None,
    ) -> Outcome:
        """Run a call and turn every way it can end into an outcome."""
        me = asyncio.current_task()
        assert me is not None
        self._running[call.request_id] = me  # a cancel cancels this task while it awaits the call
        try:
            outcome = await self._scheduler.run(target, call, timeout, priority, on_update)
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

    @staticmethod
    def _finish(
        request_id: str, status: Status, values: dict[str, Any], running: Status = Status.PROCESSING
    ) -> Callable[[Connection], Status | None]:
        """The write that ends a request that was `running`; a cancel that came first wins."""

        def finish(conn: Connection) -> Status | None:
            if status is not Status.CANCELLED:
                try:
                    move(conn, REQUEST, request_id, running, status, **values)
                    return status
                except StatusChanged:
                    pass
            else:  # cancelled before its cancel could be recorded (it was recorded running meanwhile)
                try:
                    move(conn, REQUEST, request_id, running, Status.CANCELLED_PENDING)
                except (StatusChanged, ValueError):
                    pass
            try:
                move(conn, REQUEST, request_id, Status.CANCELLED_PENDING, Status.CANCELLED, finished_at=utcnow())
                return Status.CANCELLED
            except StatusChanged:
                return None  # deleted meanwhile

        return finish

    # --- reading ---------------------------------------------------------------------------

    def get(self, target: Target, request_id: str) -> RequestRow:
        """The request with its input and result; raises `NotFound` unless it exists for this version."""
        return self._payloads.fill(self._row(target, request_id))

    def _row(self, target: Target, request_id: str) -> RequestRow:
        """The request as stored (large payloads not read); raises `NotFound` as `get` does."""
        with self._db.read() as session:
            row = session.get(RequestRow, request_id)
        if row is None or row.version_id != target.version_id:
            raise NotFound("request", request_id)
        return row

    def collect(self, target: Target, ids: list[str]) -> list[RequestRow]:
        """All the requests named, with their inputs and results, or `NotFound` for the first unknown one."""
        return [self._payloads.fill(row) for row in self._rows(target, ids)]

    def _rows(self, target: Target, ids: list[str]) -> list[RequestRow]:
        """Like `collect`, the rows as stored."""
        with self._db.read() as session:
            rows = {
                row.id: row
                for row in session.scalars(
                    select(RequestRow).where(RequestRow.id.in_(ids), RequestRow.version_id == target.version_id)
                )
            }
        for request_id in ids:
            if request_id not in rows:
                raise NotFound("request", request_id)
        return [rows[i] for i in ids]

    def list(
        self,
        target: Target,
        *,
        status: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
        search_id: str | None = None,
    ) -> list[RequestRow]:
        """The version's requests, newest first, filtered as the UbiOps list does (large payloads not read)."""
        query = list_query(RequestRow, target.version_id, status=status, limit=limit, offset=offset,
                           start_date=start_date, end_date=end_date, search_id=search_id)
        with self._db.read() as session:
            return list(session.scalars(query))

    # --- cancel and delete -----------------------------------------------------------------

    async def cancel(self, target: Target, request_id: str) -> Status:
        """Cancel one request: a pending one at once, a processing one once its instance stops.

        Returns the status it has now; a finished request stays as it is.
        """
        row = self._row(target, request_id)
        return await self._cancel(row.id, Status(row.status))

    async def cancel_many(self, target: Target, ids: list[str] | None, status: str | None) -> int:
        """Cancel the requests named, or with `ids` empty every `status` (pending or processing) one."""
        rows = cancel_selection(ids, status, lambda named: self._rows(target, named),
                                lambda offset: self.list(target, status=status, limit=LIST_LIMIT_MAX, offset=offset))
        for row in rows:
            if status is None or row.status == status:
                await self._cancel(row.id, Status(row.status))
        return len(rows)

    async def _cancel(self, request_id: str, current: Status) -> Status:
        committer = self._db.committer
        for _ in range(3):  # the status may move under us once or twice (pending -> processing)
            if current in TERMINAL or current is Status.CANCELLED_PENDING:
                return current
            new = Status.CANCELLED if current is Status.PENDING else Status.CANCELLED_PENDING
            values = {"finished_at": utcnow()} if new is Status.CANCELLED else {}
            try:
                await committer.submit_async(
                    lambda conn, old=current, new=new, values=values: move(conn, REQUEST, request_id, old, new,
                                                                         **values)
                )
            except StatusChanged:
                current = self._status(request_id)
                continue
            task = self._running.get(request_id)
            if task is not None:  # processing, or a queued item that began running unclaimed
                self._cancelling.add(request_id)
                task.cancel()  # the runtime stops the instance; the request's own write ends it
            elif new is Status.CANCELLED_PENDING:  # nothing of ours runs it (its server died): end it here
                await committer.submit_async(self._finish(request_id, Status.CANCELLED, {}))
                return Status.CANCELLED
            return new
        return current

    async def cancel_running(self, request_id: str) -> None:
        """Cancel a direct request this server is running, whether or not it is recorded yet."""
        try:
            await self._cancel(request_id, Status.PROCESSING)
        except NotFound:  # not recorded yet: stop its call; it is then written once, cancelled
            task = self._running.get(request_id)
            if task is not None:
                self._cancelling.add(request_id)
                task.cancel()

    def _status(self, request_id: str) -> Status:
        with self._db.read() as session:
            status = session.scalar(select(RequestRow.status).where(RequestRow.id == request_id))
        if status is None:
            raise NotFound("request", request_id)
        return Status(status)

    async def delete(self, target: Target, ids: list[str]) -> None:
        """Delete requests (all or nothing: an unknown id deletes none); running ones are stopped."""
        rows = self._rows(target, ids)
        for row in rows:
            task = self._running.get(row.id)
            if task is not None:
                self._cancelling.add(row.id)
                task.cancel()

        def remove(conn: Connection) -> list[str]:
            chosen = REQUESTS.c.id.in_([r.id for r in rows])
            keys = named_keys(conn, REQUESTS, chosen)
            conn.execute(delete(REQUESTS).where(chosen))
            return keys

        keys = await self._db.committer.submit_async(remove)
        await asyncio.to_thread(self._payloads.discard, keys)

    # --- retention -------------------------------------------------------------------------

    def sweep_expired(self) -> int:
        """Delete finished requests older than their version's retention time; returns how many."""
        now = utcnow()
        removed = 0
        keys: list[str] = []
        with self._db.write() as session:
            versions = session.execute(select(VersionRow.id, VersionRow.request_retention_time)).all()
            for version_id, retention_s in versions:
                expired = (
                    REQUESTS.c.version_id == version_id,
                    REQUESTS.c.status.in_([s.value for s in TERMINAL]),
                    REQUESTS.c.finished_at < now - timedelta(seconds=retention_s),
                )
                keys += named_keys(session.connection(), REQUESTS, *expired)
                done = session.execute(delete(REQUESTS).where(*expired))
                removed += done.rowcount or 0
        self._payloads.discard(keys)  # once the rows are gone for good
        return removed

    # --- recovery --------------------------------------------------------------------------

    def recover(self) -> tuple[int, int]:
        """After a restart: settle what was running (its instance is gone) and queue what waits.

        Returns (settled, queued).
        """
        now = utcnow()
        with self._db.write() as session:
            stuck = session.execute(
                select(REQUESTS.c.id, REQUESTS.c.status).where(
                    REQUESTS.c.status.in_([Status.PROCESSING.value, Status.CANCELLED_PENDING.value])
                )
            ).all()
            for request_id, status in stuck:
                old = Status(status)
                if old is Status.CANCELLED_PENDING:
                    move(session, REQUEST, request_id, old, Status.CANCELLED, finished_at=now)
                else:
                    move(session, REQUEST, request_id, old, Status.FAILED, finished_at=now,
                               error_message="The server stopped while this request was running")
            waiting = session.execute(
                select(REQUESTS.c.id, REQUESTS.c.version_id, REQUESTS.c.data, REQUESTS.c.timeout, REQUESTS.c.priority,
                       REQUESTS.c.data_key)
                .where(REQUESTS.c.status == Status.PENDING.value)
                .order_by(REQUESTS.c.created_at, REQUESTS.c.id)
            ).all()
        self.queue.push(
            [
                QueuedItem(request_id, version_id, self._payloads.value(data, key), timeout, priority)
                for request_id, version_id, data, timeout, priority, key in waiting
            ]
        )
        return len(stuck), len(waiting)

    async def close(self, grace_s: float = 30.0) -> None:
        """Let running batch requests finish, for up to `grace_s`; what waits stays pending."""
        await self.queue.close(grace_s)


def _log_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("recording a request outcome failed", exc_info=future.exception())
