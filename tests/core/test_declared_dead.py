"""A node declared dead while it lives (it paused for longer than the lease): what it claimed under
the id it lost, before its next heartbeat told it, is not left held by a dead node for ever."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from modelbay.core.nodes import Nodes
from modelbay.engine import Engine
from modelbay.settings import Settings
from modelbay.store.tables import RequestRow
from tests.core.test_nodes import lapse
from tests.core.test_runs import handler_version
from tests.core.test_scheduler import FakeRuntime

pytestmark = pytest.mark.postgresql_only("another node declares this one dead only on PostgreSQL")

LEASE_S = 2.0


async def until(condition: Callable[[], Any], state: Callable[[], Any], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, f"not met in time: {state()}"
        await asyncio.sleep(0.05)


def test_batch_items_a_node_claimed_under_the_id_it_lost_all_end(tmp_path: Path, database_url: str) -> None:
    runtime = FakeRuntime()
    engine = Engine(Settings(data_dir=tmp_path / "a", database_url=database_url, node_lease_s=LEASE_S),
                    runtime=runtime)
    (tmp_path / "b").mkdir()
    other = Nodes(engine.db, tmp_path / "b", lease_s=LEASE_S)

    def requests(ids: list[str]) -> dict[str, tuple[str, str | None]]:
        with engine.db.read() as session:
            return {row.id: (row.status, row.owner)
                    for row in session.execute(select(RequestRow).where(RequestRow.id.in_(ids))).scalars()}

    async def scenario() -> None:
        await engine.start()
        try:
            target = handler_version(engine, tmp_path, maximum_instances=1)
            runtime.gate = asyncio.Event()  # calls wait
            # Given a node that paused for longer than its lease: another node declared it dead, and it
            # has not beaten since, so it does not know
            await engine.nodes.stop_beating()
            lost = engine.nodes.id
            other.register()
            lapse(engine.db, lost, LEASE_S + 1)
            assert other.recover_lapsed() == 1
            # When it claims batch items under the id it lost, then learns of its death on its next beat
            ids = [record.id for record in await engine.requests.create_batch(
                target, ["a", "b", "c", "d"], timeout=60, priority=1, origin={"created_by": "test"})]
            await until(lambda: sum(owner == lost for _, owner in requests(ids).values()) >= 2, lambda: requests(ids))
            assert await asyncio.to_thread(engine.nodes._beat)  # gives back what it claimed under the lost id
            engine.nodes.recovered()
            assert engine.nodes.id != lost
            runtime.gate.set()
            # Then every item ends, and none is held by the id it lost
            await until(lambda: all(status in ("completed", "failed") for status, _ in requests(ids).values()),
                        lambda: (requests(ids), lost, engine.nodes.id))
        finally:
            await engine.close()

    asyncio.run(scenario())
