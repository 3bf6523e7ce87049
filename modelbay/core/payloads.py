"""Request payloads (inputs and results): inline in their row when small, in the blob store when large.

A payload column (`data`, `result`) of the request tables holds JSON bytes up to `INLINE_MAX_BYTES`.
A larger payload is a blob instead: the column is NULL and `<column>_key` (`data_key`,
`result_key`) names the blob, `payloads/<row id>/<column>`: a key chosen here, never user text.

Lifecycle: a blob is written before the row values naming it are submitted, so a committed row
never names a missing blob; a delete reads the keys of its rows in its transaction (`named_keys`)
and removes the blobs once it has committed (`discard`). What falls between (a crash after a
write, a result whose finish lost to a cancel or delete, an input dropped after its batch request
ran, the requests of a deleted deployment) is a blob no row names: `sweep_orphans` removes those
once they are older than `ORPHAN_GRACE_S` (and what the store keeps of them, such as emptied
folders, once left as long), so a blob whose row is still being written is kept.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterable
from typing import Any, Protocol, TypeVar

import orjson
from sqlalchemy import Connection, Table, or_, select

from modelbay.core.errors import NotFound
from modelbay.store.blobs import BlobStore
from modelbay.store.db import Database
from modelbay.store.tables import OperatorRequestRow, PipelineRequestRow, RequestRow

#: The largest payload kept in its row; a larger one goes to the blob store.
INLINE_MAX_BYTES = 64 * 1024

#: A blob no row names is removed once it is this old: far longer than any write takes to commit.
ORPHAN_GRACE_S = 600.0

#: Where payload blobs live in the blob store: `payloads/<row id>/<column>`.
ROOT = "payloads"

#: The tables whose rows keep payloads; their ids are uuids, so one key space serves them all.
TABLES: tuple[Table, ...] = (RequestRow.__table__, PipelineRequestRow.__table__,  # type: ignore[assignment]
                             OperatorRequestRow.__table__)

#: Most ids bound in one `IN (…)` while sweeping.
IDS_PER_STATEMENT = 500


class PayloadRow(Protocol):
    id: str
    data: bytes | None
    result: bytes | None
    data_key: str | None
    result_key: str | None


Row = TypeVar("Row", bound=PayloadRow)


def named_keys(conn: Connection, table: Table, *where: Any) -> list[str]:
    """The blob keys named by the rows of `table` that match `where` (read before deleting them)."""
    rows = conn.execute(select(table.c.data_key, table.c.result_key).where(
        *where, or_(table.c.data_key.is_not(None), table.c.result_key.is_not(None))))
    return [key for pair in rows for key in pair if key]


class Payloads:
    """Encodes payloads for their rows and reads them back."""

    def __init__(self, db: Database, blobs: BlobStore, inline_max: int = INLINE_MAX_BYTES) -> None:
        self._db = db
        self._blobs = blobs
        self.inline_max = inline_max

    async def values(self, row_id: str, column: str, encoded: bytes | None) -> dict[str, Any]:
        """The row values that keep `encoded` (JSON bytes, or None for nothing) in `column` of row
        `row_id`: the bytes themselves when small, else NULL and the key of a blob written (on a
        thread) before this returns."""
        if encoded is None or len(encoded) <= self.inline_max:
            return {column: encoded}  # the hot path: no thread, no extra column
        key = f"{ROOT}/{row_id}/{column}"
        await asyncio.to_thread(self._blobs.put, key, io.BytesIO(encoded))
        return {column: None, f"{column}_key": key}

    def load(self, inline: bytes | None, key: str | None) -> bytes | None:
        """A payload as its row keeps it: the inline bytes, or those of the blob `key` names."""
        return inline if key is None else self._blobs.read_bytes(key)

    def value(self, inline: bytes | None, key: str | None) -> Any:
        """A payload as the value it encodes (None when nothing is kept)."""
        raw = self.load(inline, key)
        return orjson.loads(raw) if raw else None

    def fill(self, row: Row, kind: str = "request") -> Row:
        """`row` (a detached read, never written back) with its payloads in `data` and `result`;
        raises `NotFound(kind)` when its blobs went with a delete that ran meanwhile."""
        try:
            if row.data_key is not None:
                row.data = self.load(None, row.data_key)
            if row.result_key is not None:
                row.result = self.load(None, row.result_key)
        except FileNotFoundError:
            raise NotFound(kind, row.id) from None
        return row

    def discard(self, keys: Iterable[str]) -> None:
        """Remove blobs (of rows deleted in a committed transaction). Blocking: run it on a thread
        from the event loop."""
        for key in keys:
            self._blobs.delete(key)

    def sweep_orphans(self, grace_s: float = ORPHAN_GRACE_S) -> int:
        """Remove payload blobs that no row names and that are older than `grace_s`; returns how many."""
        before = time.time() - grace_s
        keys = self._blobs.keys(ROOT, before)
        removed = 0
        for start in range(0, len(keys), IDS_PER_STATEMENT):
            part = keys[start:start + IDS_PER_STATEMENT]
            ids = sorted({key.split("/")[1] for key in part})  # payloads/<row id>/<column>
            with self._db.read() as session:
                conn = session.connection()
                named = {key for table in TABLES for key in named_keys(conn, table, table.c.id.in_(ids))}
            for key in part:
                if key not in named:
                    self._blobs.delete(key)
                    removed += 1
        self._blobs.tidy(ROOT, before)
        return removed
