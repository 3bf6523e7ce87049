"""Stored requests: the lifecycle deployment requests and pipeline requests share once recorded.

Both are rows of one version that move through the same statuses (`states.RequestStatus`), each
move a compare-and-set, so a cancel racing a completion is decided exactly once. This module
reads and lists them, cancels and deletes them, writes their end, sweeps them past their
retention time and settles what a stopped server left running. What runs them differs (a call on
an instance, a walk of a pipeline's graph): `Requests` and `PipelineRequests` say how to stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any, ClassVar, Protocol

from sqlalchemy import Connection, Select, Table, delete, select, update

from modelbay.core import bus as topics
from modelbay.core.bus import Bus, Message
from modelbay.core.clock import utcnow
from modelbay.core.errors import InvalidInput, NotFound, StatusChanged
from modelbay.core.nodes import NODES, owned_by
from modelbay.core.payloads import Payloads, named_keys
from modelbay.core.states import REQUEST_TERMINAL as TERMINAL
from modelbay.core.states import Machine, Move, move
from modelbay.core.states import RequestStatus as Status
from modelbay.store.db import Database, Write

#: Most requests one batch call may create, collect, cancel or delete.
MAX_BATCH = 250

#: Statuses a list may filter on; `pending` and `processing` only alone.
LISTABLE = {"completed", "failed", "cancelled", "cancelled_pending", "pending", "processing"}
LIST_LIMIT_MAX = 1000

#: Most ids bound in one `IN (…)`: a sweep or the delete of a pipeline may name hundreds of
#: thousands of requests, past SQLite's 250,000 and PostgreSQL's 65,535 parameters per statement.
IDS_PER_STATEMENT = 500


class Scope(Protocol):
    """What a request belongs to: a deployment version's `Target` or a pipeline version's `Plan`."""

    @property
    def version_id(self) -> str: ...


def check_timeout(timeout: Any, default: int, maximum: int) -> int:
    """The timeout a caller asked for, defaulted and bounded; raises `InvalidInput` when out of range."""
    if timeout is None:
        return default
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= maximum:
        raise InvalidInput(f"timeout must be an integer from 1 to {maximum} seconds")
    return timeout


def check_ids(ids: Any, what: str = "request ids") -> list[str]:
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise InvalidInput(f"The body must be a list of {what}")
    if len(ids) > MAX_BATCH:
        raise InvalidInput(f"At most {MAX_BATCH} {what} are allowed in one call, not {len(ids)}")
    return list(dict.fromkeys(ids))


def check_batch(items: list[Any], check_item: Callable[[Any], None]) -> None:
    """Check a batch's size and each of its items; raises `InvalidInput` naming the first faulty one."""
    if not items:
        raise InvalidInput("A batch needs at least one request")
    if len(items) > MAX_BATCH:
        raise InvalidInput(f"At most {MAX_BATCH} requests are allowed in one batch, not {len(items)}")
    for index, item in enumerate(items):
        try:
            check_item(item)
        except InvalidInput as exc:
            raise InvalidInput(f"Request {index} of the batch: {exc.message}") from None


def every_page(page: Callable[[int], list[Any]]) -> list[Any]:
    """All rows of a list read `LIST_LIMIT_MAX` at a time; `page(offset)` reads one page."""
    rows: list[Any] = []
    while True:
        more = page(len(rows))
        rows += more
        if len(more) < LIST_LIMIT_MAX:
            return rows


def chunks(ids: list[str]) -> Iterator[list[str]]:
    """`ids` in slices of at most `IDS_PER_STATEMENT`."""
    for start in range(0, len(ids), IDS_PER_STATEMENT):
        yield ids[start:start + IDS_PER_STATEMENT]


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
    """The rows of `row`'s table for one version, newest first, filtered as the UbiOps lists do;
    raises `InvalidInput` for a filter out of range."""
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


class StoredRequests:
    """The shared lifecycle of one kind of request row; `Requests` and `PipelineRequests` extend it."""

    #: Their statuses and moves, and their table; its name is how errors name one of these.
    machine: ClassVar[Machine]
    #: The row class of the requests and of their versions (which say how long requests are kept).
    row_type: ClassVar[Any]
    version_row_type: ClassVar[Any]

    def __init__(self, db: Database, payloads: Payloads) -> None:
        self._db = db
        self._payloads = payloads
        self._table: Table = self.machine.table
        self.noun = self.machine.name
        self._bus: Bus | None = None  # set by `use_bus`: until then cancels stop what runs here only

    def use_bus(self, bus: Bus) -> None:
        """Talk to the other nodes over `bus`: cancel and delete requests running on other nodes too
        (they are told), and stop those of this node it is told of."""
        self._bus = bus
        bus.subscribe(topics.CANCEL, self._cancel_told)
        bus.subscribe_resync(self._stop_cancelled_meanwhile)

    async def _cancel_told(self, message: Message) -> None:
        table, _, request_id = message.payload.partition(" ")
        if table == self._table.name and not message.from_here:
            await self._stop_running(request_id)  # what runs it records its end

    async def _stop_cancelled_meanwhile(self) -> None:
        """Messages may have been missed (the bus reconnected): stop what runs here and was cancelled
        through another node meanwhile."""
        running = self._running_here()
        if not running:
            return
        table = self._table

        def cancelled() -> list[str]:
            with self._db.read() as session:
                return list(session.scalars(select(table.c.id).where(
                    table.c.id.in_(running), table.c.status == Status.CANCELLED_PENDING.value)))

        for request_id in await asyncio.to_thread(cancelled):
            await self._stop_running(request_id)

    def _tell_cancel(self, request_id: str) -> None:
        """Tell the other nodes to stop the request if they run it (once its new status is committed)."""
        if self._bus is not None:
            self._bus.publish(topics.CANCEL, f"{self._table.name} {request_id}")

    def _run_by_another_node(self, request_id: str) -> bool:
        """Whether a live node other than this one has claimed the request (it then records its end)."""
        if self._bus is None:
            return False
        with self._db.read() as session:
            owner = session.scalar(select(self._table.c.owner).where(self._table.c.id == request_id))
            alive = owner is not None and session.scalar(
                select(NODES.c.id).where(NODES.c.id == owner, NODES.c.end.is_(None))) is not None
        return alive and owner != self._bus.node_id

    # --- what the kinds say ----------------------------------------------------------------

    async def _stop_running(self, request_id: str) -> bool:
        """Stop whatever runs the request on this server; False when nothing does."""
        raise NotImplementedError

    def _running_here(self) -> list[str]:
        """The requests this server runs now."""
        raise NotImplementedError

    def _remove(self, conn: Connection, ids: list[str]) -> list[str]:
        """Delete the requests (and what belongs to them); returns the payload blob keys they named,
        to discard once this has committed."""
        keys: list[str] = []
        for part in chunks(ids):
            keys += named_keys(conn, self._table, self._table.c.id.in_(part))
            conn.execute(delete(self._table).where(self._table.c.id.in_(part)))
        return keys

    def _expired(self) -> tuple[Any, ...]:
        """Conditions beyond status and age that an expired request meets."""
        return ()

    # --- status ----------------------------------------------------------------------------

    def _finish(self, request_id: str, running: Status, status: Status, values: dict[str, Any],
                fence: str | None = None) -> Write:
        """The write that ends a request that was `running` with `status` and `values`; a cancel that
        came first wins (then its times and logs are written, not its result). Returns the status
        written, or None when the request is gone (deleted meanwhile, or given back: `fence` is
        the node that must still own it)."""

        def cancelled(conn: Connection) -> Status | None:
            if status is Status.CANCELLED and running is Status.PROCESSING:  # stopped before its cancel was recorded
                with contextlib.suppress(StatusChanged):
                    move(conn, self.machine, request_id, running, Status.CANCELLED_PENDING, fence=fence)
            written = {"finished_at": utcnow(), **values, "error_message": None}
            written.pop("result", None)
            written.pop("result_key", None)
            try:
                move(conn, self.machine, request_id, Status.CANCELLED_PENDING, Status.CANCELLED, fence=fence,
                     **written)
                return Status.CANCELLED
            except StatusChanged:
                return None  # deleted meanwhile, or cancelled while still pending

        if status is Status.CANCELLED:
            return cancelled
        # A finish of many requests at once is one statement (the committer joins their moves).
        return Move(self.machine, request_id, running, status, values, fence=fence, otherwise=cancelled)

    # --- reading ---------------------------------------------------------------------------

    def get(self, scope: Scope, request_id: str) -> Any:
        """The request with its input and result; raises `NotFound` unless it exists in `scope`."""
        return self._payloads.fill(self._row(scope, request_id), self.noun)

    def _row(self, scope: Scope, request_id: str) -> Any:
        """The request as stored (large payloads not read); raises `NotFound` as `get` does."""
        with self._db.read() as session:
            row = session.get(self.row_type, request_id)
        if row is None or row.version_id != scope.version_id:
            raise NotFound(self.noun, request_id)
        return row

    def collect(self, scope: Scope, ids: list[str]) -> list[Any]:
        """All the requests named, with their inputs and results, or `NotFound` for the first unknown one."""
        return [self._payloads.fill(row, self.noun) for row in self._rows(scope, ids)]

    def _rows(self, scope: Scope, ids: list[str]) -> list[Any]:
        """Like `collect`, the rows as stored."""
        row_type = self.row_type
        with self._db.read() as session:
            rows = {row.id: row for row in session.scalars(
                select(row_type).where(row_type.id.in_(ids), row_type.version_id == scope.version_id))}
        for request_id in ids:
            if request_id not in rows:
                raise NotFound(self.noun, request_id)
        return [rows[i] for i in ids]

    def list(self, scope: Scope, *, status: str | None = None, limit: int | None = None,
             offset: int | None = None, start_date: datetime | None = None, end_date: datetime | None = None,
             search_id: str | None = None) -> list[Any]:
        """The requests of `scope`, newest first, filtered as the UbiOps lists do (large payloads not read)."""
        query = list_query(self.row_type, scope.version_id, status=status, limit=limit, offset=offset,
                           start_date=start_date, end_date=end_date, search_id=search_id)
        with self._db.read() as session:
            return list(session.scalars(query))

    def _status(self, request_id: str) -> Status:
        with self._db.read() as session:
            status = session.scalar(select(self._table.c.status).where(self._table.c.id == request_id))
        if status is None:
            raise NotFound(self.noun, request_id)
        return Status(status)

    # --- cancel and delete -----------------------------------------------------------------

    async def cancel(self, scope: Scope, request_id: str) -> Status:
        """Cancel one request: a pending one at once, a running one once what runs it has stopped.

        Returns the status it has now; a finished request stays as it is.
        """
        row = self._row(scope, request_id)
        return await self._cancel(row.id, Status(row.status))

    async def cancel_many(self, scope: Scope, ids: list[str] | None, status: str | None) -> int:
        """Cancel the requests named, or with `ids` empty every `status` (pending or processing) one;
        returns how many were chosen."""
        if status is not None and status not in ("pending", "processing"):
            raise InvalidInput("status must be 'pending' or 'processing'")
        if ids:
            rows = self._rows(scope, ids)
        elif status is None:
            raise InvalidInput("Give a list of request ids, or an empty list with status=pending|processing")
        else:
            rows = every_page(lambda offset: self.list(scope, status=status, limit=LIST_LIMIT_MAX, offset=offset))
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
                    lambda conn, old=current, new=new, values=values: move(
                        conn, self.machine, request_id, old, new, **values))
            except StatusChanged:
                current = self._status(request_id)
                continue
            if await self._stop_running(request_id):  # what ran it records its end
                return new
            self._tell_cancel(request_id)
            if new is Status.CANCELLED_PENDING and not self._run_by_another_node(request_id):
                # Nothing here runs it, and no live node has claimed it (what ran it died, or runs it
                # unclaimed and stops on being told): end it now.
                await committer.submit_async(self._finish(request_id, Status.CANCELLED_PENDING, Status.CANCELLED, {}))
                return Status.CANCELLED
            return new
        return current

    async def delete(self, scope: Scope, ids: list[str]) -> None:
        """Delete requests (all or nothing: an unknown id deletes none); running ones are stopped."""
        await self.delete_by_id([row.id for row in self._rows(scope, ids)])

    async def delete_by_id(self, ids: list[str]) -> None:
        """Delete the requests with these ids; running ones are stopped first."""
        if not ids:
            return
        await self._halt(ids)
        for request_id in ids:  # those running on other nodes stop there; their end finds them gone
            self._tell_cancel(request_id)
        keys = await self._db.committer.submit_async(lambda conn: self._remove(conn, ids))
        await asyncio.to_thread(self._payloads.discard, keys)

    async def _halt(self, ids: list[str]) -> None:
        """Stop the requests that run here before they are deleted (and wait, if need be, until
        they have written their end, so the delete removes that too)."""
        for request_id in ids:
            await self._stop_running(request_id)

    # --- retention -------------------------------------------------------------------------

    def sweep_expired(self) -> int:
        """Delete finished requests older than their version's retention time; returns how many."""
        now = utcnow()
        table, versions = self._table, self.version_row_type
        with self._db.write() as session:
            conn = session.connection()
            expired: list[str] = []
            for version_id, retention_s in conn.execute(select(versions.id, versions.request_retention_time)):
                expired += conn.scalars(select(table.c.id).where(
                    table.c.version_id == version_id,
                    table.c.status.in_([s.value for s in TERMINAL]),
                    table.c.finished_at < now - timedelta(seconds=retention_s),
                    *self._expired(),
                ))
            keys = self._remove(conn, expired)
        self._payloads.discard(keys)  # once the rows are gone for good
        return len(expired)

    # --- recovery --------------------------------------------------------------------------

    def give_back(self, conn: Connection, node_ids: list[str | None]) -> int:
        """What stopped nodes held (a `core.nodes` recoverer): fail what was running (what ran it is
        gone, and a walk cannot go on halfway), cancel what was being cancelled, and free what was
        claimed and not started for any node to claim. Returns how many requests."""
        now = utcnow()
        table = self._table
        held = conn.execute(select(table.c.id, table.c.status).where(
            owned_by(table.c.owner, node_ids),
            table.c.status.in_([Status.PENDING.value, Status.PROCESSING.value, Status.CANCELLED_PENDING.value]),
        )).all()
        of = {status: [request_id for request_id, s in held if s == status.value] for status in Status}
        for part in chunks(of[Status.PROCESSING]):
            move(conn, self.machine, {"id": part}, {Status.PROCESSING}, Status.FAILED, finished_at=now,
                 error_message=f"The server stopped while this {self.noun} was running")
        for part in chunks(of[Status.CANCELLED_PENDING]):
            move(conn, self.machine, {"id": part}, {Status.CANCELLED_PENDING}, Status.CANCELLED, finished_at=now)
        for part in chunks(of[Status.PENDING]):
            conn.execute(update(table).where(table.c.id.in_(part), table.c.status == Status.PENDING.value)
                         .values(owner=None))
        return len(held)
