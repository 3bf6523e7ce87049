"""The bus: small messages between the nodes (servers) that share one database.

A change committed on one node is told to every node, this one included, so caches drop what
changed, a request being cancelled stops where it runs, and queues look for new work. A message
is a topic and a short text payload, with the id of the node that sent it (`Message.from_here`
says whether that is this node: a sender that already did the work locally skips its own).
Receivers are idempotent: a message may come twice, and none is ever the only way to learn of a
change (the store is the truth). Messages can be missed while a node's listener reconnects; then
`subscribe_resync` callbacks run, and each user refreshes fully (a cache drops everything, a
queue polls).

On PostgreSQL a message is a `NOTIFY` on one channel (sent after the caller's commit, in a commit
of the group committer; a change of settings is out before its handler answers: `AWAITED`), and
each node `LISTEN`s on a dedicated psycopg connection, reconnecting with backoff. On SQLite one server holds the data: messages go to this process's subscribers only.
Callbacks run on the server's event loop; one that fails is logged.

The topics, and what their payloads say, are the constants below. Payloads stay small:
PostgreSQL refuses a notification of 8000 bytes or more.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from modelbay.core.background import Background
from modelbay.store.db import Database

log = logging.getLogger(__name__)

#: "<version id>": new work for that version is committed; its queue looks for it.
WORK = "work"
#: "<table> <request id>" (table "requests" or "pipeline_requests"): stop that request where it runs.
CANCEL = "cancel"
#: "": a deployment or version changed (not its code or settings); cached targets go.
DEPLOYMENTS = "deployments"
#: "<version id>": that version's code or settings changed, or it is gone; cached targets go and its
#: instances are retired.
VERSION = "version"
#: "": a pipeline or pipeline version changed; cached plans go.
PIPELINES = "pipelines"
#: "<service id>": that service changed or is gone; its cached row goes and services reconcile.
SERVICES = "services"
#: "<project id>": that project changed (its token, say); cached callers and project rows go.
PROJECTS = "projects"

#: The topics of changes a client's next call may meet on another node (settings, tokens, plans):
#: published off the event loop (by a request's handler), they are out before the handler returns.
AWAITED = frozenset({DEPLOYMENTS, VERSION, PIPELINES, SERVICES, PROJECTS})

#: How long a handler waits for an `AWAITED` message to go out before answering all the same.
SEND_WAIT_S = 5.0

#: The PostgreSQL channel every message goes on.
CHANNEL = "modelbay"

#: PostgreSQL's limit on a notification's payload, in bytes.
MAX_MESSAGE_BYTES = 7999

#: Between reconnects of the listener: doubling from the first to the last, in seconds.
RECONNECT_FIRST_S = 0.1
RECONNECT_LAST_S = 5.0

#: A listener with no message for this long checks its connection (a silent network loss).
PING_AFTER_S = 30.0
PING_TIMEOUT_S = 10.0

#: How long `start` waits for the listener's first connection before going on without it.
FIRST_CONNECT_WAIT_S = 10.0


@dataclass(frozen=True)
class Message:
    topic: str
    payload: str
    sender: str  # the id of the node that published it
    from_here: bool  # whether that is this node


Subscriber = Callable[[Message], Awaitable[None] | None]
Resync = Callable[[], Awaitable[None] | None]


class Bus:
    """Publish after a commit, subscribe to a topic, and learn when messages may have been missed.

    Between the nodes on a PostgreSQL `db`; in this process only on a SQLite one, or without one
    (a process that holds all there is: a command, a test). `node_id` gives this node's id (it may
    change: see `core.nodes`)."""

    def __init__(self, db: Database | None = None, node_id: Callable[[], str] | None = None) -> None:
        self._postgres = db if db is not None and not db.is_sqlite else None
        own_id = str(uuid.uuid4())
        self._node_id = node_id or (lambda: own_id)
        self._subscribers: dict[str, list[Subscriber]] = {}
        self._resyncs: list[Resync] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._background = Background("bus")
        self._listener: asyncio.Task[None] | None = None

    @property
    def node_id(self) -> str:
        return self._node_id()

    # --- the API ---------------------------------------------------------------------------

    def publish(self, topic: str, payload: str = "") -> None:
        """Tell every node (this one included); call it once the change is committed. Thread-safe.
        It waits for the message to go out only for an `AWAITED` topic off the event loop: the
        client that made the change may call another node next, and that node must know of it."""
        sender = self.node_id
        wire = f"{sender} {topic} {payload}"
        if " " in topic or " " in sender or len(wire.encode()) > MAX_MESSAGE_BYTES:
            raise ValueError(f"not a bus message: topic {topic!r}, {len(wire)} characters")
        if self._postgres is None:
            loop = self._loop
            if loop is not None:
                try:
                    loop.call_soon_threadsafe(self._received, wire)
                except RuntimeError:  # the loop has closed: nobody listens any more
                    pass
            return

        def notify(conn: Connection) -> None:
            conn.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": wire})

        # The committer sends it in a commit of its own, after the caller's.
        sent = self._postgres.committer.submit(notify)
        sent.add_done_callback(_log_failure)
        if topic in AWAITED and not _on_an_event_loop():
            try:
                sent.result(SEND_WAIT_S)
            except concurrent.futures.TimeoutError:
                log.warning("bus: a %s message is not out after %.0fs; other nodes learn of it late", topic, SEND_WAIT_S)
            except Exception:  # logged by _log_failure
                pass

    def subscribe(self, topic: str, callback: Subscriber) -> None:
        """Call `callback(message)` on the event loop for every message of `topic`."""
        self._subscribers.setdefault(topic, []).append(callback)

    def subscribe_resync(self, callback: Resync) -> None:
        """Call `callback()` on the event loop when messages may have been missed (the listener
        reconnected): refresh fully."""
        self._resyncs.append(callback)

    # --- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Deliver from now on; on PostgreSQL, once listening (or after a while, going on trying)."""
        self._loop = asyncio.get_running_loop()
        if self._postgres is None:
            return
        listening = asyncio.Event()
        self._listener = self._background.spawn(self._listen(listening), name="bus listener")
        try:
            await asyncio.wait_for(listening.wait(), FIRST_CONNECT_WAIT_S)
        except TimeoutError:
            log.error("the bus is not listening yet; this node learns of other nodes' changes once it is")

    async def close(self) -> None:
        self._loop = None
        await self._background.close()

    # --- delivery --------------------------------------------------------------------------

    def _received(self, wire: str) -> None:
        sender, topic, payload = (wire.split(" ", 2) + ["", ""])[:3]
        message = Message(topic, payload, sender, sender == self.node_id)
        for callback in list(self._subscribers.get(topic, ())):
            self._run(callback, message)

    def _resync(self) -> None:
        for callback in list(self._resyncs):
            self._run(callback)

    def _run(self, callback: Callable[..., Awaitable[None] | None], *args: Any) -> None:
        try:
            result = callback(*args)
            if inspect.iscoroutine(result):
                self._background.spawn(result, name=f"bus: {getattr(callback, '__qualname__', callback)}")
        except Exception:
            log.exception("bus: %s failed", getattr(callback, "__qualname__", callback))

    # --- PostgreSQL ------------------------------------------------------------------------

    async def _listen(self, listening: asyncio.Event) -> None:
        """LISTEN on a connection of its own, for the bus's life; reconnect with backoff, and resync
        after any connection but a first one that came at once."""
        import psycopg  # the `postgres` extra: only needed here

        assert self._postgres is not None
        url = self._postgres.engine.url.set(drivername="postgresql")
        conninfo = url.render_as_string(hide_password=False)
        delay = RECONNECT_FIRST_S
        missed = False  # whether messages may have been missed: not before the first connection
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    conninfo, autocommit=True, connect_timeout=10,
                    application_name=f"modelbay bus {self.node_id}"[:63])
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    delay = RECONNECT_FIRST_S
                    listening.set()
                    if missed:
                        log.info("the bus listens again; every cache refreshes")
                        self._resync()
                    missed = True
                    while True:
                        async for notify in conn.notifies(timeout=PING_AFTER_S):
                            self._received(notify.payload)
                        async with asyncio.timeout(PING_TIMEOUT_S):  # quiet: is the connection alive?
                            await conn.execute("SELECT 1")
            except Exception as exc:  # psycopg.Error, a timeout, a lost socket
                missed = True
                log.warning("the bus lost its database connection (%s); reconnecting in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_LAST_S)


def _on_an_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _log_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("a bus message could not be sent", exc_info=future.exception())
