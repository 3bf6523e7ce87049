"""The batch queue's claims: how many rows it asks for at once, and that it runs each claimed item once, in order;
the items a node alone holds without a claim."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from modelbay.core import queue as batch_queue
from modelbay.core.queue import CLAIM_PER_DRAINER, CLAIM_PER_DRAINER_POSTGRESQL, HOLD_MAX_BYTES, BatchQueue, QueuedItem
from modelbay.core.requests import MAX_UNCOMMITTED_RESULTS, MAX_UNCOMMITTED_RESULTS_POSTGRESQL
from modelbay.core.states import REQUESTS
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


def test_held_items_run_without_a_claim_in_order_and_a_higher_priority_held_later_goes_first() -> None:
    started: list[str] = []
    claimed_when: list[int] = []  # how many items had started at each claim
    gate = asyncio.Event()

    async def claim(_version_id: str, _limit: int) -> list[QueuedItem]:
        claimed_when.append(len(started))
        return []

    async def run(item: QueuedItem) -> None:
        started.append(item.request_id)
        if item.request_id == "blocker":
            await gate.wait()

    def held(request_id: str, priority: int) -> QueuedItem:
        return QueuedItem(request_id, "v", None, 60, priority, "node", held_bytes=100)

    async def scenario() -> None:
        queue = BatchQueue(claim, run, lambda _version_id: 2, claim_per_drainer=3)
        assert queue.may_hold("v", 100)
        queue.hold("v", [held("blocker", 1)])
        await wait_for_async(lambda: started == ["blocker"])
        queue.hold("v", [held(f"standard{n}", 1) for n in range(4)])
        queue.hold("v", [held(f"high{n}", 0) for n in range(4)])
        gate.set()
        await wait_for_async(lambda: len(started) == 9 and not queue.draining())

    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert started == ["blocker", *(f"high{n}" for n in range(4)), *(f"standard{n}" for n in range(4))]
    assert claimed_when and set(claimed_when) == {9}  # only once all had started: the store may hold more


def test_held_items_run_on_as_many_drainers_as_the_version_takes() -> None:
    started: list[str] = []
    gate = asyncio.Event()

    async def claim(_version_id: str, _limit: int) -> list[QueuedItem]:
        return []

    async def run(item: QueuedItem) -> None:
        started.append(item.request_id)
        await gate.wait()

    async def scenario() -> None:
        queue = BatchQueue(claim, run, lambda _version_id: 2, claim_per_drainer=3)
        queue.hold("v", [QueuedItem(f"r{n}", "v", None, 60, 1, "node", held_bytes=100) for n in range(2)])
        await wait_for_async(lambda: len(started) == 2)  # at once, not one after the other
        queue.hold("v", [QueuedItem("r2", "v", None, 60, 1, "node", held_bytes=100)])
        assert queue.depth("v") == 1  # it waits for one of them
        gate.set()
        await wait_for_async(lambda: len(started) == 3 and not queue.draining())

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_version_is_held_only_while_its_store_holds_no_unclaimed_rows_and_memory_allows() -> None:
    backlog = [QueuedItem(f"r{n}", "v", n, 60, 1, "node") for n in range(4)]

    async def claim(_version_id: str, limit: int) -> list[QueuedItem]:
        taken, backlog[:limit] = backlog[:limit], []
        return taken

    async def run(_item: QueuedItem) -> None:
        await asyncio.sleep(0)

    async def scenario() -> None:
        queue = BatchQueue(claim, run, lambda _version_id: 1, claim_per_drainer=2)
        assert not queue.may_hold("v", HOLD_MAX_BYTES + 1)
        queue.wake("v")  # rows in the store nobody claimed: they come first
        assert not queue.may_hold("v", 100)
        assert queue.may_hold("w", 100)
        await wait_for_async(lambda: not backlog and not queue.draining())
        assert queue.may_hold("v", 100)  # a claim found fewer than it asked for: the store has none left

    asyncio.run(asyncio.wait_for(scenario(), 10))


@pytest.mark.parametrize("why", ["alone", "others live", "too large to hold"])
def test_a_batch_a_node_alone_creates_is_stored_claimed_by_it(
        tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch, why: str) -> None:
    if why == "too large to hold":
        monkeypatch.setattr(batch_queue, "HOLD_MAX_BYTES", 0)
    runtime = FakeRuntime()
    runtime.gate = asyncio.Event()

    async def scenario() -> tuple[set[str | None], str, bool]:
        engine = Engine(Settings(data_dir=tmp_path / "data", database_url=database_url), runtime=runtime)
        await engine.start()
        try:
            engine.nodes.others_live = why == "others live"
            target = handler_version(engine, tmp_path)
            records = await engine.requests.create_batch(target, ["a", "b", "c"], timeout=60, priority=1, origin={})
            ids = [record.id for record in records]
            with engine.db.read() as session:  # at once: before any claim could run
                owners = set(session.scalars(select(REQUESTS.c.owner).where(REQUESTS.c.id.in_(ids))))
            runtime.gate.set()

            def statuses() -> list[str] | None:
                with engine.db.read() as session:
                    found = list(session.scalars(select(REQUESTS.c.status).where(REQUESTS.c.id.in_(ids))))
                return None if {"pending", "processing"} & set(found) else found

            await wait_for_async(statuses)
            return owners, engine.nodes.id, sorted(runtime.order) == sorted(ids)
        finally:
            await engine.close()

    owners, node, each_ran_once = asyncio.run(scenario())
    assert owners == ({node} if why == "alone" else {None})
    assert each_ran_once
