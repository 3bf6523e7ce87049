"""Datasets: uploaded files of newline-delimited JSON items, one item a line, kept in the blob store.

A dataset is created first (with the size and CRC32C its file must have); the file arrives later
through a signed upload URL, is checked while it streams to the blob store, and its lines are counted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import crc32c
import orjson
from sqlalchemy import select

from modelbay.core.clock import as_utc, utcnow
from modelbay.core.errors import Conflict, IllegalMove, InvalidInput, ModelbayError, NotFound
from modelbay.core.states import DATASET, DatasetStatus, move
from modelbay.store.blobs import BlobStore
from modelbay.store.db import Database
from modelbay.store.tables import DatasetRow, JobRow

#: How long a dataset is kept, and how long its upload URL works.
DATASET_LIFETIME = timedelta(days=10)
UPLOAD_URL_LIFETIME = timedelta(hours=1)

#: The largest dataset file accepted, and the longest line (one item).
MAX_SIZE_BYTES = 10 << 30
MAX_LINE_BYTES = 16 << 20


class UploadRejected(Exception):
    """Raised inside `receive` when the file is wrong; its status says which way."""

    def __init__(self, status: DatasetStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_crc32c(value: Any) -> str:
    """A GCS-style CRC32C: base64 of the 4 big-endian bytes."""
    try:
        if isinstance(value, str) and len(base64.b64decode(value, validate=True)) == 4:
            return value
    except (binascii.Error, ValueError):
        pass
    raise InvalidInput("$crc32c must be the base64 of a 4-byte big-endian CRC32C, e.g. 'VYiezg=='", field="crc32c")


class Datasets:
    """Creates datasets, takes their uploads, and streams their items."""

    def __init__(self, db: Database, blobs: BlobStore, spool_dir: Path) -> None:
        self._db = db
        self._blobs = blobs
        self._spool_dir = spool_dir  # node-local: files being uploaded, checked, then put in the store
        spool_dir.mkdir(parents=True, exist_ok=True)

    def create(self, project_id: str, name: Any, size_bytes: Any, crc: Any) -> DatasetRow:
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise InvalidInput("The dataset name must be 1-200 characters")
        if isinstance(size_bytes, bool) or not isinstance(size_bytes, int) or not 0 < size_bytes <= MAX_SIZE_BYTES:
            raise InvalidInput(f"$size_bytes must be an integer from 1 to {MAX_SIZE_BYTES}", field="size_bytes")
        now = utcnow()
        row = DatasetRow(id=str(uuid.uuid4()), project_id=project_id, name=name, status=DatasetStatus.WAITING,
                         message="Waiting for the file to be uploaded", size_bytes=size_bytes,
                         crc32c=check_crc32c(crc), item_count=0, blob_key=None, expires_at=now + DATASET_LIFETIME,
                         upload_expires_at=now + UPLOAD_URL_LIFETIME, created_at=now, updated_at=now)
        with self._db.write() as session:
            session.add(row)
        return row

    def get(self, project_id: str, dataset_id: str) -> DatasetRow:
        """Raises `NotFound` unless the dataset exists in the project."""
        with self._db.read() as session:
            row = session.get(DatasetRow, dataset_id)
        if row is None or row.project_id != project_id:
            raise NotFound("dataset", dataset_id)
        return row

    def list(self, project_id: str, offset: int, limit: int) -> tuple[list[DatasetRow], bool]:
        with self._db.read() as session:
            rows = list(session.scalars(
                select(DatasetRow).where(DatasetRow.project_id == project_id)
                .order_by(DatasetRow.created_at, DatasetRow.id).offset(offset).limit(limit + 1)
            ))
        return rows[:limit], len(rows) > limit

    def delete(self, project_id: str, dataset_id: str) -> None:
        """Delete a dataset and its file. Raises `Conflict` while a job still works through it."""
        row = self.get(project_id, dataset_id)
        with self._db.write() as session:
            busy = session.scalar(select(JobRow.id).where(
                JobRow.dataset_id == dataset_id, JobRow.status.in_(("scheduled", "running"))).limit(1))
            if busy:
                raise Conflict("A job still works through this dataset; cancel or delete it first")
            session.execute(DatasetRow.__table__.delete().where(DatasetRow.id == dataset_id))
        if row.blob_key:
            self._blobs.delete(row.blob_key)

    async def receive(self, project_id: str, dataset_id: str, chunks: AsyncIterator[bytes]) -> DatasetRow:
        """Take the dataset's file from `chunks`: check size, CRC32C and every line, then store it.

        The dataset ends `uploaded` with its item count, or `failed_upload` / `failed_processing`
        with a message (and `InvalidInput` is raised with it). Raises `Conflict` once uploaded.
        """
        # The DB reads and writes run on a thread: this coroutine runs on the server's event loop.
        row = await asyncio.to_thread(self.get, project_id, dataset_id)
        if row.status == DatasetStatus.UPLOADED:
            raise Conflict("This dataset's file has already been uploaded")
        # A key of its own per upload: a blob is never written again with other content.
        key = f"datasets/{row.id}.{uuid.uuid4().hex[:8]}.ndjson"
        fd, tmp_name = tempfile.mkstemp(dir=self._spool_dir, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                count = await _copy_checked(chunks, out, row)
            await asyncio.to_thread(self._blobs.put_file, key, Path(tmp_name))
        except UploadRejected as exc:
            os.unlink(tmp_name)
            await asyncio.to_thread(self._set, row.id, exc.status, exc.message, 0, None)
            raise InvalidInput(exc.message) from None
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        try:
            return await asyncio.to_thread(self._set, row.id, DatasetStatus.UPLOADED, f"Uploaded {count} items",
                                           count, key)
        except (ModelbayError, IllegalMove):  # deleted, or another upload of it won: the blob is no one's
            await asyncio.to_thread(self._blobs.delete, key)
            raise

    def _set(self, dataset_id: str, status: DatasetStatus, message: str, count: int, key: str | None) -> DatasetRow:
        with self._db.write() as session:
            row = session.get(DatasetRow, dataset_id)
            if row is None:
                raise NotFound("dataset", dataset_id)
            move(session, DATASET, dataset_id, DatasetStatus(row.status), status)
            session.refresh(row, ["status"])
            row.message, row.item_count, row.blob_key = message, count, key
            row.updated_at = utcnow()
        return row

    def items(self, dataset: DatasetRow, start: int = 0) -> Iterator[tuple[int, bytes]]:
        """Stream `(index, line)` from item `start` on; the file is read, never loaded whole."""
        if dataset.blob_key is None:
            return
        with self._blobs.open(dataset.blob_key) as source:
            index = 0
            for line in source:
                line = line.strip()
                if not line:
                    continue
                if index >= start:
                    yield index, line
                index += 1

    @staticmethod
    def is_expired(row: DatasetRow) -> bool:
        return as_utc(row.expires_at) <= utcnow()


async def _copy_checked(chunks: AsyncIterator[bytes], out: Any, row: DatasetRow) -> int:
    """Copy the upload to `out` while checking it; returns its item count, raises `UploadRejected`."""
    size, crc, count, pending = 0, 0, 0, b""
    async for chunk in chunks:
        size += len(chunk)
        if size > row.size_bytes:
            raise UploadRejected(DatasetStatus.FAILED_UPLOAD,
                                 f"The file is larger than the {row.size_bytes} bytes declared")
        crc = crc32c.crc32c(chunk, crc)
        out.write(chunk)
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if len(pending) > MAX_LINE_BYTES:
            raise UploadRejected(DatasetStatus.FAILED_PROCESSING, f"Line {count + len(lines) + 1} is longer than "
                                 f"{MAX_LINE_BYTES} bytes")
        for line in lines:
            count = _check_line(line, count)
    count = _check_line(pending, count)
    if size != row.size_bytes:
        raise UploadRejected(DatasetStatus.FAILED_UPLOAD,
                             f"The file has {size} bytes, not the {row.size_bytes} declared")
    given = base64.b64encode(crc.to_bytes(4, "big")).decode()
    if given != row.crc32c:
        raise UploadRejected(DatasetStatus.FAILED_UPLOAD,
                             f"The file's CRC32C is {given}, not the {row.crc32c} declared")
    if count == 0:
        raise UploadRejected(DatasetStatus.FAILED_PROCESSING, "The file holds no items")
    return count


def _check_line(line: bytes, count: int) -> int:
    """One more item if `line` is a JSON object, the same count for a blank line."""
    if not line.strip():
        return count
    try:
        item = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise UploadRejected(DatasetStatus.FAILED_PROCESSING, f"Item {count + 1} is not valid JSON: {exc}") from None
    if not isinstance(item, dict):
        raise UploadRejected(DatasetStatus.FAILED_PROCESSING, f"Item {count + 1} is not a JSON object")
    return count + 1
