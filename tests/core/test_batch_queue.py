"""The batch queue's claims: how many rows it asks for at once, and that it runs each claimed item once, in order."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from modelbay.core.queue import CLAIM_PER_DRAINER, CLAIM_PER_DRAINER_POSTGRESQL, BatchQueue, QueuedItem
from modelbay.core.requests import MAX_UNCOMMITTED_RESULTS, MAX_UNCOMMITTED_RESULTS_POSTGRESQL
from modelbay.engine import Engine
from modelbay.runtime.base import Call, CallOutcome, RuntimeError_
from modelbay.settings import Settings
from modelbay.store.tables import RequestRow
from tests.core.test_runs import handler_version
from tests.core.test_scheduler import FakeRuntime
from tests.runtime.test_local import wait_for_async


def test_a_drain_claims_its_drainers_times_the_rows_per_drainer_and_runs_each_once_in_claim_order() -> None:
    backlog = [QueuedItem(f"r{n}", "v", n, 60, 1, "node") for n in range(20)]
    asked: list[int] = []
    ran: list[str] = []

    async def claim(_version_id: str, limit: int) -> list[QueuedItem]:
        asked.append(limit)
        taken, backlog[:limit] = backlog[:limit], []
        return taken

    async def run(item: QueuedItem) -> None:
        ran.append(item.request_id)
        await asyncio.sleep(0)

    async def scenario() -> None:
        queue = BatchQueue(claim, run, lambda _version_id: 2, claim_per_drainer=3)
        queue.wake("v")
        while len(ran) < 20 or queue.draining():
            await asyncio.sleep(0.001)

    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert asked[:3] == [6, 6, 6]  # 2 drainers x 3 rows each time, until the backlog is empty
    assert sorted(ran, key=lambda r: int(r[1:])) == ran == [f"r{n}" for n in range(20)]


def test_on_postgresql_a_drainer_claims_more_rows_and_more_results_wait_for_a_commit(
        tmp_path: Path, database_url: str) -> None:
    # A claim, and a commit, are round trips on PostgreSQL: fewer and larger ones there
    engine = Engine(Settings(data_dir=tmp_path, database_url=database_url), runtime=FakeRuntime())
    try:
        requests = engine.requests
        expected = ((CLAIM_PER_DRAINER, MAX_UNCOMMITTED_RESULTS) if engine.db.is_sqlite
                    else (CLAIM_PER_DRAINER_POSTGRESQL, MAX_UNCOMMITTED_RESULTS_POSTGRESQL))
        assert (requests.queue._claim_per_drainer, requests.max_uncommitted) == expected
    finally:
        engine.db.close()


class FaultyRuntime(FakeRuntime):
    """A runtime that refuses every call: a fault of the server's own, not of the code."""

    async def call(self, instance: Any, call: Call, timeout: float, on_update: Any = None,
                   on_start: Any = None) -> CallOutcome:
        raise RuntimeError_("the runtime lost count of its calls")


def test_a_queued_request_the_runtime_cannot_run_fails_rather_than_stay_claimed(tmp_path: Path) -> None:
    async def scenario() -> tuple[str, str | None]:
        engine = Engine(Settings(data_dir=tmp_path / "data"), runtime=FaultyRuntime())
        await engine.start()
        try:
            target = handler_version(engine, tmp_path)
            [record] = await engine.requests.create_batch(target, ["x"], timeout=60, priority=0, origin={})

            def ended() -> tuple[str, str | None] | None:
                with engine.db.read() as session:
                    row = session.get(RequestRow, record.id)
                assert row is not None
                return None if row.status == "pending" else (row.status, row.error_message)

            return await wait_for_async(ended)
        finally:
            await engine.close()

    assert asyncio.run(scenario()) == ("failed", "The request could not be run: the runtime lost count of its calls")
