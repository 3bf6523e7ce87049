"""The journal: log lines of runs and services, appended as they happen and read in pages."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, delete, select

from modelbay.core.clock import as_utc, utcnow
from modelbay.store.db import Database, insert_at_commit
from modelbay.store.tables import LogLineRow, RunRow, ServiceRow

LOG_LINES: Table = LogLineRow.__table__  # type: ignore[assignment]

#: Longest line kept; user code may print anything.
MAX_LINE_CHARS = 8192
#: Most lines kept of what one call printed (its last ones). The runtime caps a call's output at
#: 1 MiB, but that is half a million one-character lines: one row each, in one commit.
MAX_LINES_PER_CALL = 1000


@dataclass(frozen=True)
class Line:
    id: int
    time: datetime
    message: str


def split_lines(text: str) -> list[str]:
    """What user code printed, as non-empty lines of bounded length; at most the last
    `MAX_LINES_PER_CALL` of them, after a line saying how many were left out."""
    lines = [line[:MAX_LINE_CHARS] for line in text.splitlines() if line.strip()]
    if len(lines) <= MAX_LINES_PER_CALL:
        return lines
    left_out = len(lines) - MAX_LINES_PER_CALL
    return [f"({left_out} earlier lines left out)", *lines[-MAX_LINES_PER_CALL:]]


class Journal:
    """Appends go through the group committer; reads are plain queries, keyed by the line id."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def append(self, owner_id: str, messages: Iterable[str]) -> None:
        """Add lines to an owner's log, durably, in order."""
        rows = self.rows(owner_id, messages)
        if rows:
            await self._db.committer.submit_async(lambda conn: self.write(conn, rows))

    @staticmethod
    def rows(owner_id: str, messages: Iterable[str]) -> list[dict[str, Any]]:
        """Lines as rows for `write`, stamped now."""
        now = utcnow()
        return [{"owner_id": owner_id, "time": now, "message": m[:MAX_LINE_CHARS]} for m in messages]

    @staticmethod
    def write(conn: Connection, rows: list[dict[str, Any]]) -> None:
        """Insert rows from `rows` inside the caller's transaction (to share a commit with a status
        change); in a batch of the committer, with the batch's other lines at its end."""
        insert_at_commit(conn, LOG_LINES, rows)

    def page(
        self,
        owner_id: str,
        *,
        after: int | None = None,
        before: int | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        newest_first: bool = False,
        limit: int = 100,
    ) -> list[Line]:
        """Up to `limit` lines with `after < id < before` and `start <= time <= end`.

        Oldest first, or newest first; with `after` and `newest_first` the page holds the
        lines just after `after` (the next newer ones), still newest first.
        """
        query = select(LogLineRow.id, LogLineRow.time, LogLineRow.message).where(LogLineRow.owner_id == owner_id)
        if after is not None:
            query = query.where(LogLineRow.id > after)
        if before is not None:
            query = query.where(LogLineRow.id < before)
        if start is not None:
            query = query.where(LogLineRow.time >= start)
        if end is not None:
            query = query.where(LogLineRow.time <= end)
        from_newest = newest_first and after is None
        query = query.order_by(LogLineRow.id.desc() if from_newest else LogLineRow.id).limit(limit)
        with self._db.read() as session:
            lines = [Line(i, as_utc(t), m) for i, t, m in session.execute(query)]
        if newest_first and not from_newest:
            lines.reverse()
        return lines

    def sweep_orphans(self) -> int:
        """Delete the lines of runs and services that no longer exist (gone with their deployment or
        version); returns how many."""
        with self._db.write() as session:
            done = session.execute(
                delete(LOG_LINES).where(
                    LOG_LINES.c.owner_id.not_in(select(RunRow.id)),
                    LOG_LINES.c.owner_id.not_in(select(ServiceRow.id)),
                )
            )
            return int(done.rowcount or 0)
