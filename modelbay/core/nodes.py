"""Nodes: the servers sharing one database, each alive while its heartbeat is recent.

Work a node runs is claimed first: the row gets the node's id as its `owner`, and the writes
that end it are fenced by that owner (`states.move(…, fence=node.id)`). A node whose heartbeat
is older than the lease is dead: one live node (the recovery is serialised by a lock) marks it
so and, in the same transaction, every kind of work gives back what the dead node had claimed
(`recovered`), to run again or to fail as that kind's rules say. A dead node that wakes up
learns it from its next heartbeat and goes on under a new id; what it still finishes under the
old one is refused by the fences.

Start-up recovers the node that last ran on this data dir at once (the data dir's lock says it
is gone); on SQLite one server holds the data, so every node that did not stop cleanly is.
Clocks of the servers are assumed to agree within a small part of the lease (NTP).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Dialect, bindparam, or_, select, text, update
from sqlalchemy.sql import ColumnElement

from modelbay.core.background import Background
from modelbay.core.clock import as_utc, utcnow
from modelbay.core.hooks import Hook
from modelbay.store.db import Database
from modelbay.store.driver import DriverStatement, driver_cursor
from modelbay.store.tables import NodeRow

log = logging.getLogger(__name__)

NODES = NodeRow.__table__

#: The PostgreSQL advisory lock the recovery runs under, so one node recovers a dead one ("nodes").
RECOVERY_LOCK_KEY = 0x6E6F_6465_73

#: Where a node leaves its id in its data dir, for the next server on that data dir to recover.
NODE_FILE = "node"

#: How a node ended.
STOPPED = "stopped"
DEAD = "dead"

#: Gives back a dead node's work: (connection, dead node ids) -> rows given back. It writes in the
#: recovery's transaction, so the node is marked dead exactly when its work is given back. The
#: ids may include None: rows claimed before nodes existed (no owner), given back once no node lives.
Recoverer = Callable[[Connection, list[str | None]], int]


def owned_by(owner: ColumnElement[Any], node_ids: list[str | None]) -> ColumnElement[bool]:
    """Rows whose `owner` column names one of `node_ids` (None: rows without an owner)."""
    named = [node_id for node_id in node_ids if node_id is not None]
    condition = owner.in_(named)
    return or_(condition, owner.is_(None)) if None in node_ids else condition


class Nodes:
    """This server as a node: registers, beats, recovers dead nodes, and gives its own work back on stop."""

    def __init__(self, db: Database, data_dir: Path, *, lease_s: float, address: str | None = None) -> None:
        self._db = db
        self._data_dir = data_dir
        self.lease_s = lease_s
        self.address = address  # where the other nodes reach this one
        self.id = str(uuid.uuid4())
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._recoverers: list[tuple[Recoverer, str]] = []  # each with what it gives back, for the log
        #: Told (after the commit, on the event loop) that work was given back, so queues look for it at once.
        self.recovered = Hook[[]]("nodes.recovered")
        #: Told (on the event loop) that another node declared this one dead: its claims and instance
        #: slots were given back, and it goes on under a new id.
        self.declared_dead = Hook[[]]("nodes.declared_dead")
        self._background = Background("nodes")  # the recovery passes
        self._beater: threading.Thread | None = None
        self._stop_beats = threading.Event()
        self._stopping = False
        #: Whether another node lives, as of registering or the last recovery pass since.
        self.others_live = False

    @property
    def alone(self) -> bool:
        """Whether no other node lives (at start: what the others run goes on meanwhile)."""
        return not self.others_live

    def add_recoverer(self, recoverer: Recoverer, what: str = "items") -> None:
        """Have `recoverer` give back the work of dead nodes; `what` names it in the log ("requests")."""
        self._recoverers.append((recoverer, what))

    # --- life ------------------------------------------------------------------------------

    def register(self) -> None:
        """Join the cluster, and recover the node that ran on this data dir before (if it did not stop)."""
        now = utcnow()
        file = self._data_dir / NODE_FILE
        previous = file.read_text().strip() if file.is_file() else None
        self._insert(now)
        file.write_text(self.id)
        gone: list[str | None] = [previous] if previous else []
        cutoff = now - timedelta(seconds=self.lease_s)
        with self._db.read() as session:
            others = session.execute(select(NODES.c.id, NODES.c.heartbeat_at)
                                     .where(NODES.c.end.is_(None), NODES.c.id != self.id)).all()
        if self._db.is_sqlite:  # one server holds a SQLite store: every node that did not stop is gone
            gone = [node_id for node_id, _ in others]
        self.others_live = any(as_utc(beat) >= cutoff for node_id, beat in others if node_id not in gone)
        if self.alone:
            gone.append(None)  # no node lives: rows without an owner (claimed before nodes existed) are free
        if self._recover(gone, at_start=True):
            self.recovered()

    def start(self) -> None:
        """Beat every fifth of the lease, on a thread and a connection of its own: a busy event loop,
        thread pool or connection pool must not make a live node look dead. Recover nodes whose
        heartbeat lapsed as often, from the loop."""
        period = self.lease_s / 5
        loop = asyncio.get_running_loop()
        self._beater = threading.Thread(target=self._beat_every, args=(period, loop), name="node heartbeat",
                                        daemon=True)
        self._beater.start()
        self._background.every(period, self._recover_pass, "recovery")

    async def stop_beating(self) -> None:
        """Stop the heartbeat and the recovery passes (the node then looks dead after a lease)."""
        self._stop_beats.set()
        await self._background.stop_loops()
        if self._beater is not None:
            await asyncio.to_thread(self._beater.join)

    async def close(self) -> None:
        """Stop beating and give back what this node still holds (run by the queues' close first)."""
        self._stopping = True  # a beat still under way in its thread must not take the stop for a death
        await self.stop_beating()
        with self._db.write() as session:
            conn = session.connection()
            self._give_back(conn, [self.id])
            conn.execute(update(NODES).where(NODES.c.id == self.id, NODES.c.end.is_(None))
                         .values(end=STOPPED, ended_at=utcnow()))
        self.recovered()

    # --- heartbeats and recovery -----------------------------------------------------------

    def _beat_every(self, period: float, loop: asyncio.AbstractEventLoop) -> None:
        conn: Connection | None = None
        while not self._stop_beats.wait(period):
            try:
                conn = conn or self._db.writer_connection()
                known_as = self.id
                given_back = self._beat(conn)
            except Exception:
                log.exception("the heartbeat of node %s failed; it tries again", self.id)
                if conn is not None:
                    conn.close()  # it may be broken: the next beat opens another
                conn = None
                continue
            if self.id != known_as:
                loop.call_soon_threadsafe(self.declared_dead)
            if given_back:
                loop.call_soon_threadsafe(self.recovered)  # on the loop, where the reactions wake their queues
        if conn is not None:
            conn.close()

    async def _recover_pass(self) -> None:
        # Off the event loop: a slow database must not hold up the requests being served.
        if await asyncio.to_thread(self.recover_lapsed):
            self.recovered()

    def _beat(self, conn: Connection | None = None) -> int:
        """Beat (on `conn`, else a connection of the pool); returns how many rows it gave back (when it
        learns that it was declared dead)."""
        if conn is None:
            with self._db.writer_connection() as own:
                return self._beat(own)
        beat, values = _beat_statement(conn.dialect), {"id": self.id, "now": utcnow()}
        if conn.dialect.name == "sqlite":
            # One statement outside a transaction: SQLite holds the write lock only while it runs it,
            # with no Python in between (a thread holding it waits for the GIL, while a busy event
            # loop's commits are refused).
            beaten = beat.execute(conn.connection.dbapi_connection.cursor(), values)
        else:
            with conn.begin():
                beaten = beat.execute(driver_cursor(conn), values)
        if beaten == 0 and not self._stopping:
            # Declared dead (a pause longer than the lease): our work went to others. Go on as a
            # new node; what we still finish under the old id is refused by the fences.
            old, self.id = self.id, str(uuid.uuid4())
            log.error("node %s was declared dead by another node; it goes on as node %s", old, self.id)
            self._insert(utcnow())
            # What we claimed under the old id since the recovery (we did not know yet) no
            # recovery will give back: give it back now, as the recovery gave back the rest.
            with self._db.write() as session:
                given_back = self._give_back(session.connection(), [old])
            (self._data_dir / NODE_FILE).write_text(self.id)
            return given_back
        return 0

    def _insert(self, now: datetime) -> None:
        with self._db.write() as session:
            session.execute(NODES.insert().values(id=self.id, name=self.name[:200], address=self.address,
                                                  started_at=now, heartbeat_at=now))

    def recover_lapsed(self) -> int:
        """Recover the nodes whose heartbeat is older than the lease; returns how many."""
        cutoff = utcnow() - timedelta(seconds=self.lease_s)
        with self._db.read() as session:
            live = session.execute(select(NODES.c.id, NODES.c.heartbeat_at).where(NODES.c.end.is_(None))).all()
        lapsed = [node_id for node_id, beat in live if as_utc(beat) < cutoff]
        self.others_live = any(node_id != self.id and node_id not in lapsed for node_id, _ in live)
        return self._recover(lapsed, cutoff) if lapsed else 0

    def _recover(self, node_ids: list[str | None], cutoff: datetime | None = None, *, at_start: bool = False) -> int:
        """Declare `node_ids` dead and give back their work; logged (`at_start`: this server recovers
        what the server before it left, a crash, at INFO; a node that died meanwhile, at WARNING)."""
        if not node_ids:
            return 0
        given_back: dict[str, int] = {}
        dead: list[str | None] = []
        with self._db.write() as session:
            conn = session.connection()
            if conn.dialect.name == "postgresql" and not conn.execute(
                    text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": RECOVERY_LOCK_KEY}).scalar():
                return 0  # another node is recovering; what is left, the next pass sees
            where = [NODES.c.id.in_([n for n in node_ids if n is not None]), NODES.c.end.is_(None)]
            if cutoff is not None:  # still lapsed: its heartbeat may have come meanwhile
                where.append(NODES.c.heartbeat_at < cutoff)
            dead = list(conn.execute(update(NODES).where(*where)
                                     .values(end=DEAD, ended_at=utcnow())
                                     .returning(NODES.c.id)).scalars())
            if None in node_ids:
                dead.append(None)
            if dead:
                given_back = self._give_back_each(conn, dead)
        nodes = [node for node in dead if node is not None]
        if any(given_back.values()) or (at_start and nodes):
            counts = ", ".join(f"{n} {what}" for what, n in given_back.items() if n) or "nothing"
            names = ", ".join(nodes) or "(none)"
            fields = {"event": "recovery", "nodes": nodes, "given_back": given_back}
            if at_start:
                log.info("recovered what the server before this one left running (node %s): gave back %s", names,
                         counts, extra=fields)
            else:
                log.warning("node(s) %s stopped beating: gave back %s", names, counts, extra=fields)
        return len(dead)

    def _give_back(self, conn: Connection, node_ids: list[str | None]) -> int:
        return sum(self._give_back_each(conn, node_ids).values())

    def _give_back_each(self, conn: Connection, node_ids: list[str | None]) -> dict[str, int]:
        """What each recoverer gave back, by what it names. All kinds or none: a node is marked dead
        only with all its work given back."""
        given: dict[str, int] = {}
        for recoverer, what in self._recoverers:
            given[what] = given.get(what, 0) + recoverer(conn, node_ids)
        return given


@functools.cache
def _beat_statement(dialect: Dialect) -> DriverStatement:
    """A live node's heartbeat, compiled once."""
    return DriverStatement(update(NODES).where(NODES.c.id == bindparam("id"), NODES.c.end.is_(None))
                           .values(heartbeat_at=bindparam("now")), dialect)
