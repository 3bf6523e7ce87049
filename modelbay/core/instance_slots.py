"""Instance slots: a version's instance limits count across every node of the cluster.

A node takes a slot of a pool (a version's own, or a service's) before it starts an instance,
and gives it back when the instance stops. A slot is taken only while the pool's live slots are
below the limit asked for (`maximum_instances`, or `minimum_instances` to keep the minimum warm),
and an idle instance past its idle time is stopped only while the pool has more than its
minimum: both under a lock per pool, so nodes deciding at once count each other's decisions.
Slots of a dead node go with it (a recoverer). A node without a slot runs a call on an instance
another node holds (`holders` says where).

On SQLite one server holds the data: the same code counts that server's own instances.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from sqlalchemy import Connection, delete, func, select, update

from modelbay.core.clock import utcnow
from modelbay.core.nodes import NODES, Nodes, owned_by
from modelbay.store.db import Database, lock_until_commit
from modelbay.store.tables import InstanceSlotRow

SLOTS = InstanceSlotRow.__table__


@dataclass(frozen=True)
class Holder:
    """A live node that holds instances of a pool, and where it is reached."""

    node_id: str
    address: str | None
    slots: int


class InstanceSlots:
    """The cluster's ledger of instances, one row per instance. Its coroutines wait for the store
    in a thread, off the event loop."""

    def __init__(self, db: Database, nodes: Nodes) -> None:
        self._db = db
        self._nodes = nodes
        nodes.add_recoverer(self._give_back, "instance slots")

    async def take(self, pool: str, limit: int) -> str | None:
        """A new slot of `pool` for this node, or None when the pool's live slots reach `limit`."""
        return await asyncio.to_thread(self._take, pool, limit)

    async def give(self, slot_id: str) -> None:
        await asyncio.to_thread(self._give, slot_id)

    async def give_if_above(self, slot_id: str, pool: str, floor: int) -> bool:
        """Give a slot back only while its pool holds more than `floor` live slots; returns whether it did."""
        return await asyncio.to_thread(self._give_if_above, slot_id, pool, floor)

    async def holders(self, pool: str) -> list[Holder]:
        """The other live nodes holding slots of `pool`, most slots first."""
        return await asyncio.to_thread(self._holders, pool)

    async def loaded(self, slot_id: str) -> None:
        """The slot's instance has loaded its code."""
        await asyncio.to_thread(self._loaded, slot_id)

    async def count(self, pool: str) -> int:
        """The pool's loaded instances on live nodes."""
        return await asyncio.to_thread(self._count_now, pool)

    def _loaded(self, slot_id: str) -> None:
        with self._db.write() as session:
            session.execute(update(SLOTS).where(SLOTS.c.id == slot_id).values(loaded_at=utcnow()))

    def _count_now(self, pool: str) -> int:
        with self._db.read() as session:
            return self._count(session.connection(), pool, loaded=True)

    def _take(self, pool: str, limit: int) -> str | None:
        with self._db.write() as session:
            conn = session.connection()
            lock_until_commit(conn, f"slots:{pool}")
            if self._count(conn, pool) >= limit:
                return None
            slot_id = str(uuid.uuid4())
            conn.execute(SLOTS.insert().values(id=slot_id, pool=pool, node_id=self._nodes.id, taken_at=utcnow()))
            return slot_id

    def _give(self, slot_id: str) -> None:
        with self._db.write() as session:
            session.execute(delete(SLOTS).where(SLOTS.c.id == slot_id))

    def _give_if_above(self, slot_id: str, pool: str, floor: int) -> bool:
        with self._db.write() as session:
            conn = session.connection()
            lock_until_commit(conn, f"slots:{pool}")
            if self._count(conn, pool) <= floor:
                return False
            conn.execute(delete(SLOTS).where(SLOTS.c.id == slot_id))
            return True

    def _holders(self, pool: str) -> list[Holder]:
        slots = func.count(SLOTS.c.id)
        with self._db.read() as session:
            rows = session.execute(
                select(NODES.c.id, NODES.c.address, slots)
                .join(NODES, NODES.c.id == SLOTS.c.node_id)
                .where(SLOTS.c.pool == pool, NODES.c.end.is_(None), NODES.c.id != self._nodes.id)
                .group_by(NODES.c.id, NODES.c.address)
                .order_by(slots.desc())
            ).all()
        return [Holder(node_id, address, count) for node_id, address, count in rows]

    @staticmethod
    def _count(conn: Connection, pool: str, loaded: bool = False) -> int:
        """The pool's slots on live nodes (with `loaded`: of instances that have loaded)."""
        live = select(NODES.c.id).where(NODES.c.end.is_(None))
        where = [SLOTS.c.pool == pool, SLOTS.c.node_id.in_(live)]
        if loaded:
            where.append(SLOTS.c.loaded_at.is_not(None))
        return conn.scalar(select(func.count()).select_from(SLOTS).where(*where)) or 0

    @staticmethod
    def _give_back(conn: Connection, node_ids: list[str | None]) -> int:
        # Not counted as work given back: a dead node's instances are gone, nothing runs again.
        conn.execute(delete(SLOTS).where(owned_by(SLOTS.c.node_id, node_ids)))
        return 0


class NoCapacity(Exception):
    """No instance of the pool may start on this node (the cluster runs its maximum elsewhere), and
    none runs here."""


class LocalSlots:
    """The slots of one server alone (SQLite, or tests): it counts its own instances."""

    def __init__(self) -> None:
        self._taken: dict[str, set[str]] = {}
        self._pool_of: dict[str, str] = {}
        self._loaded: set[str] = set()

    async def take(self, pool: str, limit: int) -> str | None:
        taken = self._taken.setdefault(pool, set())
        if len(taken) >= limit:
            return None
        slot_id = str(uuid.uuid4())
        taken.add(slot_id)
        self._pool_of[slot_id] = pool
        return slot_id

    async def give(self, slot_id: str) -> None:
        self._loaded.discard(slot_id)
        pool = self._pool_of.pop(slot_id, None)
        if pool is not None:
            self._taken[pool].discard(slot_id)

    async def give_if_above(self, slot_id: str, pool: str, floor: int) -> bool:
        if len(self._taken.get(pool, ())) <= floor:
            return False
        await self.give(slot_id)
        return True

    async def holders(self, pool: str) -> list[Holder]:
        return []

    async def loaded(self, slot_id: str) -> None:
        if slot_id in self._pool_of:  # not given back meanwhile
            self._loaded.add(slot_id)

    async def count(self, pool: str) -> int:
        return len(self._taken.get(pool, set()) & self._loaded)
