"""Large objects (uploaded packages, datasets, large request payloads) kept outside the rows naming them.

Keys are relative paths we choose (`revisions/<id>.archive`, `payloads/<row id>/<column>`), never
user text. `LocalBlobStore` keeps blobs as files in the data dir (one server on SQLite);
`DatabaseBlobStore` keeps them in the database itself, so every node sharing it reaches them. A
missing blob raises `FileNotFoundError` from either.

`put` replaces a blob a key already names (a payload written again after its row was requeued),
atomically. `local_path` copies a blob to a node-local file once and reuses that copy from then
on, so a key read through it must be written once, never again with other content: revision
archives and dataset files have a fresh key per upload.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol

from sqlalchemy import Connection, Table, delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from modelbay.store.db import Database
from modelbay.store.tables import BlobChunkRow, BlobRow

_KEY = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")

#: The size of one chunk of a blob kept in the database (one row of `blob_chunks`).
CHUNK_BYTES = 1 << 20

#: Keys one statement asks about.
KEYS_PER_STATEMENT = 500

BLOBS: Table = BlobRow.__table__  # type: ignore[assignment]
CHUNKS: Table = BlobChunkRow.__table__  # type: ignore[assignment]


def check_key(key: str) -> str:
    if not _KEY.match(key) or ".." in key.split("/"):
        raise ValueError(f"bad blob key {key!r}")
    return key


class BlobStore(Protocol):
    def put(self, key: str, source: BinaryIO) -> int:
        """Store a stream under `key` (a reader never sees half of it); returns its size."""

    def put_file(self, key: str, path: Path) -> int:
        """Store a finished node-local file under `key`, moved in when it can be; the file is gone after."""

    def read_bytes(self, key: str) -> bytes: ...

    def open(self, key: str) -> BinaryIO:
        """The blob as a readable stream, read as it goes (for blobs too large to load whole)."""

    def local_path(self, key: str) -> Path:
        """A node-local file holding the blob, for callers that need a file (a package, a download)."""

    def delete(self, key: str) -> None:
        """Remove a blob; one already gone is fine."""

    def keys(self, prefix: str, before: float) -> list[str]:
        """The keys under `prefix/` of blobs written before `before` (seconds since the epoch)."""

    def tidy(self, prefix: str, before: float) -> None:
        """Remove what deleted blobs left under `prefix/` since before `before` (empty folders, and
        a node's copies of blobs another node deleted)."""


class LocalBlobStore:
    """Blobs as files under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, source: BinaryIO) -> int:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        with open(tmp, "wb") as out:
            shutil.copyfileobj(source, out, CHUNK_BYTES)
            size = out.tell()
        os.replace(tmp, target)
        return size

    def put_file(self, key: str, path: Path) -> int:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, target)  # the data dir's own file system: a rename
        except OSError:  # another file system: a copy
            with open(path, "rb") as source:
                self.put(key, source)
            path.unlink()
        return target.stat().st_size

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def local_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        return path

    def delete(self, key: str) -> None:
        # Its emptied folder goes with `tidy`, so a folder is never removed under a write that has just made it.
        self._path(key).unlink(missing_ok=True)

    def keys(self, prefix: str, before: float) -> list[str]:
        root = self._path(prefix)
        found = []
        for directory, _folders, files in os.walk(root):
            for name in files:
                path = Path(directory, name)
                try:
                    if path.stat().st_mtime < before:
                        found.append(path.relative_to(self.root).as_posix())
                except FileNotFoundError:  # deleted meanwhile
                    pass
        return found

    def tidy(self, prefix: str, before: float) -> None:
        root = self._path(prefix)
        for directory, _folders, _files in os.walk(root, topdown=False):
            path = Path(directory)
            if path == root:
                continue
            try:  # a folder's time is when an entry last came or went
                if path.stat().st_mtime < before:
                    path.rmdir()
            except OSError:  # not empty, or gone
                pass


class DatabaseBlobStore:
    """Blobs in the database's `blobs` and `blob_chunks` tables; `local_path` copies into `cache_dir`."""

    def __init__(self, db: Database, cache_dir: Path) -> None:
        self._db = db
        self.cache_dir = cache_dir
        cache_dir.mkdir(parents=True, exist_ok=True)

    def put(self, key: str, source: BinaryIO) -> int:
        check_key(key)
        size = 0
        # One transaction: readers see the whole blob or none of it. The `blobs` row comes first
        # (its chunks reference it) and locks the key, so writers of one key go one after the other.
        with self._db.write() as session:
            conn = session.connection()
            _claim_key(conn, key)
            conn.execute(delete(CHUNKS).where(CHUNKS.c.key == key))  # what a replaced blob held
            seq = 0
            while chunk := source.read(CHUNK_BYTES):
                conn.execute(insert(CHUNKS).values(key=key, seq=seq, data=chunk))
                size += len(chunk)
                seq += 1
            conn.execute(update(BLOBS).where(BLOBS.c.key == key).values(size=size))
        return size

    def put_file(self, key: str, path: Path) -> int:
        with open(path, "rb") as source:
            size = self.put(key, source)
        path.unlink()
        return size

    def read_bytes(self, key: str) -> bytes:
        with self._db.read() as session:
            # One statement: a blob replaced or deleted meanwhile is read whole or not at all.
            rows = session.execute(
                select(BLOBS.c.size, CHUNKS.c.data)
                .select_from(BLOBS.outerjoin(CHUNKS, CHUNKS.c.key == BLOBS.c.key))
                .where(BLOBS.c.key == check_key(key))
                .order_by(CHUNKS.c.seq)
            ).all()
        if not rows:
            raise FileNotFoundError(key)
        return b"".join(bytes(data) for _size, data in rows if data is not None)

    def open(self, key: str) -> BinaryIO:
        with self._db.read() as session:
            size = session.scalar(select(BLOBS.c.size).where(BLOBS.c.key == check_key(key)))
        if size is None:
            raise FileNotFoundError(key)
        return io.BufferedReader(_ChunkReader(self._db, key, size), CHUNK_BYTES)  # type: ignore[return-value]

    def local_path(self, key: str) -> Path:
        target = self.cache_dir / check_key(key)
        if target.is_file():  # copied before: a key is never written again with other content
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{uuid.uuid4().hex}.part")
        try:
            with self.open(key) as source, open(tmp, "wb") as out:
                shutil.copyfileobj(source, out, CHUNK_BYTES)
            os.replace(tmp, target)  # atomic: a half-copied blob never appears under its key
        finally:
            tmp.unlink(missing_ok=True)
        return target

    def delete(self, key: str) -> None:
        with self._db.write() as session:
            session.execute(delete(BLOBS).where(BLOBS.c.key == check_key(key)))  # its chunks go with it
        (self.cache_dir / key).unlink(missing_ok=True)

    def keys(self, prefix: str, before: float) -> list[str]:
        with self._db.read() as session:
            return list(session.scalars(select(BLOBS.c.key).where(
                BLOBS.c.key.startswith(check_key(prefix) + "/", autoescape=True),
                BLOBS.c.created_at < datetime.fromtimestamp(before, UTC))))

    def tidy(self, prefix: str, before: float) -> None:
        """Remove this node's copies of blobs under `prefix/` that are gone from the database (another
        node deleted them), copied before `before`. A deleted blob leaves nothing in the database."""
        root = self.cache_dir / check_key(prefix)
        copies = {}
        for directory, _folders, files in os.walk(root):
            for name in files:
                path = Path(directory, name)
                with contextlib.suppress(FileNotFoundError):
                    if not name.endswith(".part") and path.stat().st_mtime < before:
                        copies[path.relative_to(self.cache_dir).as_posix()] = path
        found = list(copies)
        for start in range(0, len(found), KEYS_PER_STATEMENT):
            part = found[start:start + KEYS_PER_STATEMENT]
            with self._db.read() as session:
                kept = set(session.scalars(select(BLOBS.c.key).where(BLOBS.c.key.in_(part))))
            for key in part:
                if key not in kept:
                    copies[key].unlink(missing_ok=True)


def _claim_key(conn: Connection, key: str) -> None:
    """Insert the `blobs` row of `key`, or take over the one there (waiting for its writer)."""
    values = {"key": key, "size": 0, "created_at": datetime.now(UTC)}
    upsert = postgresql_insert(BLOBS) if conn.dialect.name == "postgresql" else sqlite_insert(BLOBS)
    conn.execute(upsert.values(values).on_conflict_do_update(
        index_elements=[BLOBS.c.key], set_={"size": 0, "created_at": values["created_at"]}))


class _ChunkReader(io.RawIOBase):
    """A blob in the database read one chunk at a time."""

    def __init__(self, db: Database, key: str, size: int) -> None:
        self._db = db
        self._key = key
        self._left = size
        self._seq = 0
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if not self._buffer:
            if self._left <= 0:
                return 0
            self._buffer = self._next_chunk()
            self._left -= len(self._buffer)
        n = min(len(buffer), len(self._buffer))
        buffer[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def _next_chunk(self) -> bytes:
        with self._db.read() as session:
            data = session.scalar(select(CHUNKS.c.data).where(CHUNKS.c.key == self._key, CHUNKS.c.seq == self._seq))
        if not data:  # deleted while it was read
            raise FileNotFoundError(self._key)
        self._seq += 1
        return bytes(data)
