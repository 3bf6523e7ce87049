"""Instance slots: the cluster's ledger of instances, against a real store."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from modelbay.core.clock import utcnow
from modelbay.core.instance_slots import InstanceSlots, LocalSlots
from modelbay.core.nodes import NODES, Nodes
from modelbay.store.db import Database


def node(db: Database, root: Path, name: str) -> Nodes:
    (root / name).mkdir()
    made = Nodes(db, root / name, lease_s=5, address=f"http://{name}:8000")
    made.register()
    return made


def test_a_pool_takes_slots_up_to_its_limit_and_the_floor_keeps_the_last_ones(db: Database, tmp_path: Path) -> None:
    async def scenario() -> None:
        slots = InstanceSlots(db, node(db, tmp_path, "a"))
        first, second = await slots.take("v", 2), await slots.take("v", 2)
        assert first and second and first != second
        assert await slots.take("v", 2) is None  # the limit
        assert await slots.take("other", 2)  # each pool counts its own
        assert not await slots.give_if_above(first, "v", 2)  # two is not above two
        assert await slots.give_if_above(first, "v", 1)
        assert await slots.count("v") == 0  # loaded instances only
        await slots.loaded(second)
        assert await slots.count("v") == 1
        await slots.give(second)
        assert await slots.count("v") == 0 and await slots.take("v", 2)

    asyncio.run(scenario())


@pytest.mark.postgresql_only("on SQLite one server holds the store: there are no other nodes")
def test_slots_count_across_nodes_holders_name_the_others_and_a_dead_nodes_slots_go_with_it(
        db: Database, tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b = node(db, tmp_path, "a"), node(db, tmp_path, "b")
        on_a, on_b = InstanceSlots(db, a), InstanceSlots(db, b)
        first = await on_a.take("v", 2)
        assert first and await on_a.take("v", 2)
        await on_a.loaded(first)
        assert await on_b.take("v", 2) is None  # node A runs the cluster's maximum
        assert await on_b.count("v") == 1  # one has loaded, the other is starting
        assert [(h.node_id, h.address, h.slots) for h in await on_b.holders("v")] == [(a.id, "http://a:8000", 2)]
        assert await on_a.holders("v") == []  # the others only

        with db.write() as session:  # node A stops beating
            session.execute(update(NODES).where(NODES.c.id == a.id)
                            .values(heartbeat_at=utcnow() - timedelta(seconds=6)))
        assert b.recover_lapsed() == 1
        assert await on_b.count("v") == 0 and await on_b.holders("v") == []
        assert await on_b.take("v", 2)

    asyncio.run(scenario())


@pytest.mark.postgresql_only("nodes deciding at once on one PostgreSQL")
def test_nodes_taking_slots_at_once_never_pass_the_limit(db: Database, tmp_path: Path) -> None:
    async def scenario() -> None:
        ledgers = [InstanceSlots(db, node(db, tmp_path, name)) for name in ("a", "b", "c", "d")]
        taken = await asyncio.gather(*(ledger.take("v", 3) for ledger in ledgers for _ in range(5)))
        assert sum(slot is not None for slot in taken) == 3

    asyncio.run(scenario())


def test_one_server_alone_counts_its_own_slots() -> None:
    async def scenario() -> None:
        slots = LocalSlots()
        first = await slots.take("v", 1)
        assert first and await slots.take("v", 1) is None
        assert not await slots.give_if_above(first, "v", 1)
        await slots.loaded(first)
        assert await slots.count("v") == 1
        await slots.give(first)
        assert await slots.count("v") == 0 and await slots.holders("v") == []

    asyncio.run(scenario())
