"""Request statuses and the one function that changes them, compare-and-set."""

from __future__ import annotations

import enum
import functools
from typing import Any

from sqlalchemy import Connection, Dialect, Table, bindparam, update
from sqlalchemy.orm import Session

from modelbay.core.errors import StatusChanged
from modelbay.store.driver import DriverStatement, driver_cursor
from modelbay.store.tables import RequestRow

REQUESTS: Table = RequestRow.__table__  # type: ignore[assignment]


class Status(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED_PENDING = "cancelled_pending"
    CANCELLED = "cancelled"


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})

#: Every move a request may make.
ALLOWED: dict[Status, frozenset[Status]] = {
    # pending -> completed: a queued request that ran too briefly to be claimed (written once).
    Status.PENDING: frozenset({Status.PROCESSING, Status.COMPLETED, Status.FAILED, Status.CANCELLED}),
    Status.PROCESSING: frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED_PENDING, Status.PENDING}),
    Status.CANCELLED_PENDING: frozenset({Status.CANCELLED}),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELLED: frozenset(),
}


@functools.cache
def _statement(table: Table, columns: frozenset[str], dialect: Dialect) -> DriverStatement:
    """The compare-and-set UPDATE writing `columns`, compiled once: the hot path runs it per request."""
    return DriverStatement(
        update(table)
        .where(table.c.id == bindparam("_id"), table.c.status == bindparam("_old"))
        .values(status=bindparam("status"), **{name: bindparam(name) for name in sorted(columns)}),
        dialect,
    )


def transition(conn: Connection | Session, table: Table, request_id: str, old: Status, new: Status,
               **values: Any) -> None:
    """Move a request of `table` (deployment or pipeline requests) from `old` to `new`, writing `values` with it.

    Raises `ValueError` for a move that is not allowed, and `StatusChanged` when the request
    is no longer `old` (a racing cancel or completion decided first).
    """
    if new not in ALLOWED[old]:
        raise ValueError(f"a request may not go from {old.value} to {new.value}")
    params = {"_id": request_id, "_old": old.value, "status": new.value, **values}
    connection = conn.connection() if isinstance(conn, Session) else conn
    if _statement(table, frozenset(values), connection.dialect).execute(driver_cursor(connection), params) == 0:
        raise StatusChanged(request_id, old.value)
