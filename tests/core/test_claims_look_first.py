"""The periodic claims look for work before they take the write lock.

On SQLite one writer holds the whole store: a claim pass that took the lock every two seconds
with nothing to claim made the event loop's own commits fail over to the commit thread, which a
busy loop then kept waiting for the GIL (a c=8 p99 of 8–34 ms). With nothing to claim, a pass
reads and leaves the lock alone; with something to claim, it still claims.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from modelbay.core.clock import utcnow
from modelbay.engine import Engine
from modelbay.settings import Settings
from modelbay.store.tables import PipelineRequestRow
from tests.core.test_scheduler import FakeRuntime

pytestmark = pytest.mark.sqlite_only("one writer holds a SQLite store")


def test_a_claim_pass_with_nothing_to_claim_never_waits_for_the_write_lock(tmp_path: Path) -> None:
    engine = Engine(Settings(data_dir=tmp_path), runtime=FakeRuntime())
    holder = sqlite3.connect(tmp_path / "modelbay.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the store (the busy timeout is 30 s)
    try:
        started = time.monotonic()
        assert engine.jobs._claim(engine.nodes.id, set()) == []
        assert engine.pipeline_requests._claim(engine.nodes.id, 4) == []
        engine.revisions._claim()
        assert time.monotonic() - started < 5
    finally:
        holder.rollback()
        holder.close()
        engine.db.close()


def test_a_claim_pass_with_work_to_claim_claims_it(tmp_path: Path) -> None:
    engine = Engine(Settings(data_dir=tmp_path), runtime=FakeRuntime())
    try:
        with engine.db.write() as session:
            session.execute(insert(PipelineRequestRow).values(
                id="r1", project_id="p", pipeline_id="pl", version_id="v", mode="batch", status="pending",
                timeout=60, created_at=utcnow()))
        claimed = engine.pipeline_requests._claim(engine.nodes.id, 4)
        assert [row[0] for row in claimed] == ["r1"]
        with engine.db.read() as session:
            assert session.scalar(select(PipelineRequestRow.owner)) == engine.nodes.id
    finally:
        engine.db.close()
