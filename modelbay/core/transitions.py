"""Request statuses and the one function that changes them, compare-and-set."""

from __future__ import annotations

import enum
import functools
from typing import Any

from sqlalchemy import Connection, Table, Update, bindparam, update
from sqlalchemy.orm import Session

from modelbay.core.errors import StatusChanged
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
    Status.PENDING: frozenset({Status.PROCESSING, Status.CANCELLED, Status.FAILED}),
    Status.PROCESSING: frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED_PENDING, Status.PENDING}),
    Status.CANCELLED_PENDING: frozenset({Status.CANCELLED}),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELLED: frozenset(),
}


@functools.cache
def _statement(columns: frozenset[str]) -> Update:
    """The compare-and-set UPDATE writing `columns`, built once: building it costs more than running it."""
    return (
        update(REQUESTS)
        .where(REQUESTS.c.id == bindparam("_id"), REQUESTS.c.status == bindparam("_old"))
        .values(status=bindparam("status"), **{name: bindparam(name) for name in columns})
    )


def transition(conn: Connection | Session, request_id: str, old: Status, new: Status, **values: Any) -> None:
    """Move a request from `old` to `new`, writing `values` with it.

    Raises `ValueError` for a move that is not allowed, and `StatusChanged` when the request
    is no longer `old` (a racing cancel or completion decided first).
    """
    if new not in ALLOWED[old]:
        raise ValueError(f"a request may not go from {old.value} to {new.value}")
    params = {"_id": request_id, "_old": old.value, "status": new.value, **values}
    done = conn.execute(_statement(frozenset(values)), params)
    if done.rowcount == 0:  # type: ignore[attr-defined]
        raise StatusChanged(request_id, old.value)
