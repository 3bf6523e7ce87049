"""Every status machine of the store, and `move()`: the one way a `status` column changes.

A machine is data: the statuses of one kind of row (a str-Enum: its values are what the store
holds), the moves each status may make, and the table and key columns its rows live in.
`move()` writes compare-and-set (`… WHERE key = … AND status = old`), so a writer that lost a
race (a cancel against a completion, a stop against a settle) learns it and changes nothing.
"""

from __future__ import annotations

import enum
import functools
import itertools
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Dialect, Table, bindparam, cast, column, or_, true, update, values
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement, ColumnElement

from modelbay.core.clock import utcnow
from modelbay.core.errors import IllegalMove, StatusChanged
from modelbay.store.db import Insert, insert_at_commit
from modelbay.store.driver import DriverStatement, driver_cursor
from modelbay.store.tables import (
    DatasetRow,
    DeliveryRow,
    JobLogRow,
    JobRow,
    PipelineRequestRow,
    RequestRow,
    RevisionRow,
    RunRow,
    ServiceRow,
    VersionRow,
)

REQUESTS: Table = RequestRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class Machine:
    """The statuses of one kind of row and the moves between them."""

    name: str  # what its errors call a row ("a run may not go from …")
    table: Table
    key: tuple[str, ...]  # the columns naming one row
    allowed: Mapping[Any, frozenset[Any]]  # every status -> the statuses it may move to
    stamp: str | None = None  # a column every move sets to now (unless the move gives it)

    @property
    def terminal(self) -> frozenset[Any]:
        """The statuses a row never leaves."""
        return frozenset(status for status, moves in self.allowed.items() if not moves)


# --- requests and pipeline requests ----------------------------------------------------------

class RequestStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED_PENDING = "cancelled_pending"
    CANCELLED = "cancelled"


_REQUEST_MOVES: dict[RequestStatus, frozenset[RequestStatus]] = {
    # pending -> completed: a queued request that ran too briefly to be claimed (written once).
    RequestStatus.PENDING: frozenset({RequestStatus.PROCESSING, RequestStatus.COMPLETED, RequestStatus.FAILED,
                                      RequestStatus.CANCELLED}),
    RequestStatus.PROCESSING: frozenset({RequestStatus.COMPLETED, RequestStatus.FAILED,
                                         RequestStatus.CANCELLED_PENDING, RequestStatus.PENDING}),
    RequestStatus.CANCELLED_PENDING: frozenset({RequestStatus.CANCELLED}),
    RequestStatus.COMPLETED: frozenset(),
    RequestStatus.FAILED: frozenset(),
    RequestStatus.CANCELLED: frozenset(),
}

REQUEST = Machine("request", REQUESTS, ("id",), _REQUEST_MOVES)
REQUEST_TERMINAL = REQUEST.terminal
PIPELINE_REQUEST = Machine("pipeline request", PipelineRequestRow.__table__,  # type: ignore[arg-type]
                           ("id",), _REQUEST_MOVES)


# --- runs ------------------------------------------------------------------------------------

class RunStatus(enum.StrEnum):
    SUBMITTED = "submitted"
    PENDING = "pending"
    RUNNABLE = "runnable"
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


#: Back to `runnable`: a retry; back to `pending`: a restart of the server.
RUN = Machine("run", RunRow.__table__, ("id",), {  # type: ignore[arg-type]
    RunStatus.SUBMITTED: frozenset({RunStatus.PENDING, RunStatus.FAILED}),
    RunStatus.PENDING: frozenset({RunStatus.RUNNABLE, RunStatus.FAILED}),
    RunStatus.RUNNABLE: frozenset({RunStatus.STARTING, RunStatus.FAILED, RunStatus.PENDING}),
    RunStatus.STARTING: frozenset({RunStatus.RUNNING, RunStatus.RUNNABLE, RunStatus.FAILED, RunStatus.PENDING}),
    RunStatus.RUNNING: frozenset({RunStatus.SUCCEEDED, RunStatus.RUNNABLE, RunStatus.FAILED, RunStatus.PENDING}),
    RunStatus.SUCCEEDED: frozenset(),
    RunStatus.FAILED: frozenset(),
}, stamp="modified_at")


# --- batch jobs, their items and deliveries --------------------------------------------------

class JobStatus(enum.StrEnum):
    SCHEDULED = "scheduled"
    RUNNING = "running"
    FINISHED = "finished"  # every item delivered or failed to deliver
    STOPPED = "stopped"  # cancelled, or its stop time passed; what was open counts as failed
    FAILED = "failed"  # could not run at all (its deployment went away)


JOB = Machine("job", JobRow.__table__, ("id",), {  # type: ignore[arg-type]
    JobStatus.SCHEDULED: frozenset({JobStatus.RUNNING, JobStatus.STOPPED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset({JobStatus.FINISHED, JobStatus.STOPPED, JobStatus.FAILED}),
    JobStatus.FINISHED: frozenset(),
    JobStatus.STOPPED: frozenset(),
    JobStatus.FAILED: frozenset(),
})


class ItemStatus(enum.StrEnum):
    """The outcome of a job's item, in its log entry; the first three wait for their deliveries."""

    FAILED_PROCESS = "failed_process"
    PREDICTED = "predicted"
    FAILED_PREDICT = "failed_predict"
    DELIVERED = "delivered"
    FAILED_DELIVER = "failed_deliver"


_SETTLED = frozenset({ItemStatus.DELIVERED, ItemStatus.FAILED_DELIVER})
JOB_ITEM = Machine("job item", JobLogRow.__table__, ("job_id", "item_index"), {  # type: ignore[arg-type]
    ItemStatus.FAILED_PROCESS: _SETTLED,
    ItemStatus.PREDICTED: _SETTLED,
    ItemStatus.FAILED_PREDICT: _SETTLED,
    ItemStatus.DELIVERED: frozenset(),
    ItemStatus.FAILED_DELIVER: frozenset(),
})


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"  # given up with its job


DELIVERY = Machine("delivery", DeliveryRow.__table__, ("id",), {  # type: ignore[arg-type]
    DeliveryStatus.PENDING: frozenset({DeliveryStatus.DELIVERED, DeliveryStatus.FAILED, DeliveryStatus.CANCELLED}),
    DeliveryStatus.DELIVERED: frozenset(),
    DeliveryStatus.FAILED: frozenset(),
    DeliveryStatus.CANCELLED: frozenset(),
})


class DatasetStatus(enum.StrEnum):
    WAITING = "waiting"
    UPLOADED = "uploaded"
    FAILED_UPLOAD = "failed_upload"
    FAILED_PROCESSING = "failed_processing"


#: A rejected file may be followed by another upload; an uploaded one is final.
_UPLOAD_OUTCOMES = frozenset({DatasetStatus.UPLOADED, DatasetStatus.FAILED_UPLOAD, DatasetStatus.FAILED_PROCESSING})
DATASET = Machine("dataset", DatasetRow.__table__, ("id",), {  # type: ignore[arg-type]
    DatasetStatus.WAITING: _UPLOAD_OUTCOMES,
    DatasetStatus.FAILED_UPLOAD: _UPLOAD_OUTCOMES,
    DatasetStatus.FAILED_PROCESSING: _UPLOAD_OUTCOMES,
    DatasetStatus.UPLOADED: frozenset(),
})


# --- services, versions and their revisions -------------------------------------------------

class ServiceStatus(enum.StrEnum):
    IN_PROGRESS = "in_progress"
    READY = "ready"
    STOPPED = "stopped"


SERVICE = Machine("service", ServiceRow.__table__, ("id",), {  # type: ignore[arg-type]
    ServiceStatus.IN_PROGRESS: frozenset({ServiceStatus.READY, ServiceStatus.STOPPED}),
    # ready -> in_progress: its scaling changed, or the server restarted
    ServiceStatus.READY: frozenset({ServiceStatus.IN_PROGRESS, ServiceStatus.STOPPED}),
    ServiceStatus.STOPPED: frozenset({ServiceStatus.IN_PROGRESS}),
})


class VersionStatus(enum.StrEnum):
    UNAVAILABLE = "unavailable"  # no code uploaded yet
    BUILDING = "building"
    AVAILABLE = "available"
    FAILED = "failed"


VERSION = Machine("version", VersionRow.__table__, ("id",), {  # type: ignore[arg-type]
    VersionStatus.UNAVAILABLE: frozenset({VersionStatus.BUILDING}),
    # building -> available: after a failed build too, while earlier working code still serves it
    VersionStatus.BUILDING: frozenset({VersionStatus.AVAILABLE, VersionStatus.FAILED}),
    VersionStatus.AVAILABLE: frozenset({VersionStatus.BUILDING}),
    VersionStatus.FAILED: frozenset({VersionStatus.BUILDING}),
})


class RevisionStatus(enum.StrEnum):
    QUEUED = "queued"  # waiting for a node to claim its build
    BUILDING = "building"
    SUCCESS = "success"
    FAILED = "failed"


REVISION = Machine("revision", RevisionRow.__table__, ("id",), {  # type: ignore[arg-type]
    RevisionStatus.QUEUED: frozenset({RevisionStatus.BUILDING}),
    # building -> queued: the node building it died; another one builds it
    RevisionStatus.BUILDING: frozenset({RevisionStatus.SUCCESS, RevisionStatus.FAILED, RevisionStatus.QUEUED}),
    RevisionStatus.SUCCESS: frozenset(),
    # failed -> queued: the variable naming its deployment file changed; the same archive builds again
    RevisionStatus.FAILED: frozenset({RevisionStatus.QUEUED}),
})


# --- the one writer --------------------------------------------------------------------------

def move(conn: Connection | Session, machine: Machine, key: Any, old: Any, new: Any, *, fence: str | None = None,
         via: Sequence[Any] = (), **values: Any) -> int:
    """Move rows of `machine` from `old` to `new` compare-and-set, writing `values` with them.

    `key` names one row (a value, or a tuple of one per key column), or is a dict of columns to
    the value (or collection of values) each row must have. `old` is one status, and then a row
    that is no longer in it raises `StatusChanged`; or a collection of statuses, and then
    whichever rows are still in one of them move. `via`: statuses the rows pass through on the
    way, in order (each step must be allowed; the rows are written once, in `new`). Returns how
    many rows moved. Raises `IllegalMove` (and writes nothing) for a move the machine does not
    allow. `fence`: the node that must own the rows (`core.nodes`); a row another node recovered
    since is not moved.
    """
    single = isinstance(old, enum.Enum)
    olds = (old,) if single else tuple(old)
    _check_allowed(machine, olds, via, new)
    if machine.stamp is not None and machine.stamp not in values:
        values[machine.stamp] = utcnow()
    connection = conn.connection() if isinstance(conn, Session) else conn
    if type(key) is not dict and _plain(values):
        # One row, plain values: a statement compiled once, run on the driver (the hot path).
        params = {**values, "status": new.value, "_fence": fence}
        params.update(zip(_OLD_PARAMS, (status.value for status in olds), strict=False))
        if type(key) is tuple:
            params.update(zip(_KEY_PARAMS, key, strict=False))
        else:
            params["_key0"] = key
        statement = _statement(machine, frozenset(values), len(olds), fence is not None, connection.dialect)
        moved = statement.execute(driver_cursor(connection), params)
    else:
        moved = _update(connection, machine, key, olds, new, values, fence)
    if moved == 0 and single:
        raise StatusChanged(str(key), old.value)
    return moved


def _check_allowed(machine: Machine, olds: tuple[Any, ...], via: Sequence[Any], new: Any) -> None:
    for status in olds:
        for before, after in itertools.pairwise((status, *via, new)):
            if after not in machine.allowed[before]:
                raise IllegalMove(machine.name, before.value, after.value)


#: Fewest moves SQLite runs together (`Move.run_joined`): fewer cost no less alone.
SQLITE_JOINED_MOVES_MIN = 4


class Move:
    """One row's compare-and-set move from `old` to `new` (through the statuses of `via`), as a
    write for the committer (`store.db.GroupCommitter`).

    Alone it is `move()`; when the row is no longer in `old` its result is `otherwise`'s (run in
    the same transaction), or it raises `StatusChanged`. Its result is `new` when the row moved,
    and then the rows of `inserts` (log lines that tell of it) are inserted with it.
    Moves next to each other in a batch with the same `joins` (machine, statuses, columns written,
    fenced or not) run together (`run_joined`): on PostgreSQL as one statement for all their rows,
    one round trip where each alone is one; on SQLite as one call to the driver, which runs the
    statement of one row for each, where each alone costs more Python than SQLite spends on it."""

    __slots__ = ("machine", "key", "old", "new", "values", "via", "fence", "otherwise", "inserts", "joins", "row")

    def __init__(self, machine: Machine, key: Any, old: Any, new: Any, values: dict[str, Any], *,
                 via: tuple[Any, ...] = (), fence: str | None = None,
                 otherwise: Callable[[Connection], Any] | None = None, inserts: Insert | None = None) -> None:
        self.machine, self.key, self.old, self.new, self.values = machine, key, old, new, values
        self.via, self.fence, self.otherwise, self.inserts = via, fence, otherwise, inserts
        joinable = type(key) is not dict and _plain(values)
        self.joins = (machine, old, via, new, frozenset(values), fence is not None) if joinable else None
        self.row = (machine.name, key) if joinable else None

    def __call__(self, conn: Connection) -> Any:
        try:
            moved = move(conn, self.machine, self.key, self.old, self.new, via=self.via, fence=self.fence,
                         **self.values)
        except StatusChanged:
            return self._not_moved(conn)
        return self._moved(conn) if moved else self._not_moved(conn)

    def _moved(self, conn: Connection) -> Any:
        if self.inserts is not None:
            insert_at_commit(conn, self.inserts.table, self.inserts.rows)
        return self.new

    def _not_moved(self, conn: Connection) -> Any:
        if self.otherwise is None:
            olds = (self.old,) if isinstance(self.old, enum.Enum) else self.old
            raise StatusChanged(str(self.key), " or ".join(status.value for status in olds))
        return self.otherwise(conn)

    @staticmethod
    def run_joined(conn: Connection, moves: list[Move]) -> list[Any]:
        """Run moves of one `joins` together (see the class); each move's result, in order."""
        sqlite = conn.dialect.name == "sqlite"
        if len({m.key for m in moves}) < len(moves) or (sqlite and len(moves) < SQLITE_JOINED_MOVES_MIN):
            return [m(conn) for m in moves]  # a row moved twice (the second sees the first), or a few on SQLite
        machine, old, via, new, columns, fenced = moves[0].joins  # type: ignore[misc]
        olds = (old,) if isinstance(old, enum.Enum) else tuple(old)
        _check_allowed(machine, olds, via, new)
        stamp = {machine.stamp: utcnow()} if machine.stamp is not None and machine.stamp not in columns else {}
        common = {**stamp, **dict(zip(_OLD_PARAMS, (status.value for status in olds), strict=False)),
                  "status": new.value}
        single = len(machine.key) == 1
        rows = [{**common, **m.values, **dict(zip(_KEY_PARAMS, (m.key,) if single else m.key, strict=False)),
                 "_fence": m.fence} for m in moves]
        cursor = driver_cursor(conn)
        if sqlite:
            statement = _statement(machine, columns | frozenset(stamp), len(olds), fenced, conn.dialect)
            return Move._run_each(conn, cursor, statement, moves, rows)
        statement = _joined_statement(machine, columns | frozenset(stamp), len(olds), fenced, conn.dialect)
        moved: set[Any] = set()
        for start in range(0, len(rows), statement.rows_max):
            returned = statement.fetch_many(cursor, rows[start:start + statement.rows_max])
            moved.update(row[0] if single else tuple(row) for row in returned)
        return [m._moved(conn) if m.key in moved else m._not_moved(conn) for m in moves]

    @staticmethod
    def _run_each(conn: Connection, cursor: Any, statement: DriverStatement, moves: list[Move],
                  rows: list[dict[str, Any]]) -> list[Any]:
        """SQLite: the moves' one-row statement run for every row in one call to the driver. It tells
        only how many rows moved: when some did not, which ones is unknown, so the moves are undone
        and each runs alone."""
        cursor.execute("SAVEPOINT joined_moves")
        moved = statement.executemany(cursor, rows)
        if moved == len(moves):
            cursor.execute("RELEASE joined_moves")
            return [m._moved(conn) for m in moves]
        cursor.execute("ROLLBACK TO joined_moves")
        cursor.execute("RELEASE joined_moves")
        return [m(conn) for m in moves]


def _plain(values: dict[str, Any]) -> bool:
    """Whether every value is data (not an SQL expression such as `attempts + 1`)."""
    for value in values.values():
        if isinstance(value, ClauseElement):
            return False
    return True


def _update(connection: Connection, machine: Machine, key: Any, olds: tuple[Any, ...], new: Any,
            values: dict[str, Any], fence: str | None) -> int:
    """The compare-and-set UPDATE built for this call: many rows, or values that are expressions."""
    table = machine.table
    match = key if type(key) is dict else dict(zip(machine.key, key if type(key) is tuple else (key,), strict=True))
    where: list[ColumnElement[bool]] = [
        table.c[name].in_(list(value)) if _is_collection(value) else table.c[name] == value
        for name, value in match.items()
    ]
    where.append(table.c.status == olds[0].value if len(olds) == 1 else table.c.status.in_([s.value for s in olds]))
    if fence is not None:
        where.append(table.c.owner == fence)
    return int(connection.execute(update(table).where(*where).values(status=new.value, **values)).rowcount)


@functools.cache
def _joined_statement(machine: Machine, columns: frozenset[str], olds: int, fenced: bool,
                      dialect: Dialect) -> DriverStatement:
    """The compare-and-set UPDATE on PostgreSQL of many rows by their key, each from one of its
    `olds` statuses, writing `columns`: `UPDATE … FROM (VALUES (…)) AS v … RETURNING key`, with one
    row of VALUES (`DriverStatement.fetch_many` repeats it), compiled once."""
    table = machine.table
    keys = dict(zip(_KEY_PARAMS, machine.key, strict=False))
    old_names = list(_OLD_PARAMS[:olds])
    names = [*keys, *old_names, "status", *sorted(columns), *(["_fence"] if fenced else [])]
    types = {param: table.c[key].type for param, key in keys.items()}
    types |= {name: table.c.status.type for name in old_names}
    types |= {name: table.c["owner" if name == "_fence" else name].type for name in names if name not in types}
    # PostgreSQL types a VALUES column by its values (a NULL one as text): each is cast to its column's.
    row = [cast(bindparam(name, type_=types[name]), types[name]) for name in names]
    given = values(*(column(name, types[name]) for name in names), name="v").data([tuple(row)])
    where = [table.c[key] == given.c[param] for param, key in keys.items()]
    where.append(or_(*(table.c.status == given.c[name] for name in old_names)).is_(true()))
    if fenced:
        where.append(table.c.owner == given.c._fence)
    # Planned at each run: a plan kept from when the table was nearly empty joins by scanning it.
    return DriverStatement(
        update(table).where(*where)
        .values(status=given.c.status, **{name: given.c[name] for name in sorted(columns)})
        .returning(*(table.c[key] for key in machine.key)),
        dialect,
        planned_each_run=True,
    )


def _is_collection(value: Any) -> bool:
    return isinstance(value, Collection) and not isinstance(value, (str, bytes))


_KEY_PARAMS = ("_key0", "_key1", "_key2")  # one per key column: no machine has more
_OLD_PARAMS = tuple(f"_old{i}" for i in range(8))  # one per status moved from: no machine has more


@functools.cache
def _statement(machine: Machine, columns: frozenset[str], olds: int, fenced: bool, dialect: Dialect) -> DriverStatement:
    """The compare-and-set UPDATE of one row from one of `olds` statuses writing `columns`, compiled
    once per dialect."""
    table = machine.table
    where = [table.c[name] == bindparam(param) for name, param in zip(machine.key, _KEY_PARAMS, strict=False)]
    # The key finds the row, the status only checks it: `IS TRUE` keeps the status out of the
    # planner's choice of index. Without statistics (a table that grew since PostgreSQL last
    # analysed it) the planner took an index on the status and walked every row in that status, a
    # backlog of pending requests for each one moved.
    where.append(or_(*(table.c.status == bindparam(param) for param in _OLD_PARAMS[:olds])).is_(true()))
    if fenced:
        where.append(table.c.owner == bindparam("_fence"))
    # A key of several columns is planned at each run: in a plan kept from when the table was nearly
    # empty, an index on the key's first column alone looked as good as the key's own (a job's log
    # by time: each item's move walked the job's every item, 5 ms at 10,000).
    return DriverStatement(
        update(table)
        .where(*where)
        .values(status=bindparam("status"), **{name: bindparam(name) for name in sorted(columns)}),
        dialect,
        planned_each_run=len(machine.key) > 1,
    )
