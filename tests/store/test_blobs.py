"""Blob stores: files in the data dir, or chunks in the database every node shares; one behaviour."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from modelbay.core.clock import utcnow
from modelbay.store.blobs import BLOBS, CHUNK_BYTES, CHUNKS, BlobStore, DatabaseBlobStore, LocalBlobStore
from modelbay.store.db import Database

BIG = os.urandom(CHUNK_BYTES) + b"tail" * 1000  # two chunks


@pytest.fixture(params=["local", "database"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    return DatabaseBlobStore(request.getfixturevalue("db"), tmp_path / "cache")


def test_a_blob_reads_back_whole_as_bytes_stream_and_file(store: BlobStore) -> None:
    assert store.put("revisions/a.archive", io.BytesIO(BIG)) == len(BIG)
    assert store.read_bytes("revisions/a.archive") == BIG
    with store.open("revisions/a.archive") as stream:
        assert stream.read(10) == BIG[:10]
        assert stream.read() == BIG[10:]
    path = store.local_path("revisions/a.archive")
    assert path.read_bytes() == BIG
    assert store.local_path("revisions/a.archive") == path  # copied once


def test_an_empty_blob_is_a_blob(store: BlobStore) -> None:
    assert store.put("payloads/r/data", io.BytesIO(b"")) == 0
    assert store.read_bytes("payloads/r/data") == b""
    with store.open("payloads/r/data") as stream:
        assert stream.read() == b""


def test_put_again_replaces_the_blob(store: BlobStore) -> None:
    store.put("payloads/r/result", io.BytesIO(BIG))
    store.put("payloads/r/result", io.BytesIO(b"short"))
    assert store.read_bytes("payloads/r/result") == b"short"


def test_a_missing_or_deleted_blob_is_not_found_and_deleting_twice_is_fine(store: BlobStore) -> None:
    store.put("datasets/d.ndjson", io.BytesIO(b"{}\n"))
    store.local_path("datasets/d.ndjson")
    store.delete("datasets/d.ndjson")
    store.delete("datasets/d.ndjson")
    for read in (store.read_bytes, store.open, store.local_path):
        with pytest.raises(FileNotFoundError):
            read("datasets/d.ndjson")


def test_put_file_takes_the_file_in(store: BlobStore, tmp_path: Path) -> None:
    upload = tmp_path / "upload.part"
    upload.write_bytes(BIG)
    assert store.put_file("datasets/d.ndjson", upload) == len(BIG)
    assert not upload.exists()
    assert store.read_bytes("datasets/d.ndjson") == BIG


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a//b", "a/../b", "a b", ""])
def test_keys_are_checked(store: BlobStore, key: str) -> None:
    with pytest.raises(ValueError, match="bad blob key"):
        store.put(key, io.BytesIO(b"x"))


def test_keys_lists_the_blobs_under_a_prefix_written_before_a_time(store: BlobStore, tmp_path: Path,
                                                                  request: pytest.FixtureRequest) -> None:
    for key in ("payloads/old/data", "payloads/new/data", "revisions/old.archive"):
        store.put(key, io.BytesIO(b"x"))
    long_ago = time.time() - 3600
    if isinstance(store, LocalBlobStore):
        for key in ("payloads/old/data", "revisions/old.archive"):
            os.utime(tmp_path / "blobs" / key, (long_ago, long_ago))
    else:
        db = request.getfixturevalue("db")
        with db.write() as session:
            session.execute(update(BLOBS).where(BLOBS.c.key.in_(["payloads/old/data", "revisions/old.archive"]))
                            .values(created_at=utcnow().replace(year=2000)))
    assert store.keys("payloads", time.time() - 60) == ["payloads/old/data"]
    assert sorted(store.keys("payloads", time.time() + 60)) == ["payloads/new/data", "payloads/old/data"]
    assert store.keys("nothing", time.time()) == []


def test_tidy_removes_folders_left_empty_long_enough(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    store.put("payloads/gone/data", io.BytesIO(b"x"))
    store.put("payloads/kept/data", io.BytesIO(b"x"))
    store.delete("payloads/gone/data")
    store.tidy("payloads", time.time() - 60)
    assert (tmp_path / "blobs" / "payloads" / "gone").is_dir()  # emptied just now: a write may be making it
    store.tidy("payloads", time.time() + 60)
    assert not (tmp_path / "blobs" / "payloads" / "gone").exists()
    assert (tmp_path / "blobs" / "payloads" / "kept" / "data").is_file()


def test_the_database_store_keeps_a_blob_in_chunks_of_its_own_rows(db: Database, tmp_path: Path) -> None:
    store = DatabaseBlobStore(db, tmp_path / "cache")
    store.put("revisions/a.archive", io.BytesIO(BIG))
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(CHUNKS)) == 2
        assert session.scalar(select(BLOBS.c.size)) == len(BIG)
    store.put("revisions/a.archive", io.BytesIO(b"x"))  # replaced: no chunk of the old one is left
    store.delete("revisions/a.archive")
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(CHUNKS)) == 0
    assert list((tmp_path / "cache").rglob("*.part")) == []


def test_a_node_that_did_not_write_a_blob_reads_it(db: Database, tmp_path: Path) -> None:
    writer = DatabaseBlobStore(db, tmp_path / "node-a")
    reader = DatabaseBlobStore(db, tmp_path / "node-b")
    writer.put("revisions/a.archive", io.BytesIO(BIG))
    assert reader.local_path("revisions/a.archive").read_bytes() == BIG
    assert reader.local_path("revisions/a.archive").is_relative_to(tmp_path / "node-b")


def test_a_nodes_copy_of_a_blob_another_node_deleted_goes_with_tidy(db: Database, tmp_path: Path) -> None:
    writer = DatabaseBlobStore(db, tmp_path / "node-a")
    reader = DatabaseBlobStore(db, tmp_path / "node-b")
    for key in ("revisions/gone.archive", "revisions/kept.archive"):
        writer.put(key, io.BytesIO(b"code"))
        reader.local_path(key)
    writer.delete("revisions/gone.archive")

    reader.tidy("revisions", time.time() + 1)

    assert sorted(p.name for p in (tmp_path / "node-b" / "revisions").iterdir()) == ["kept.archive"]
