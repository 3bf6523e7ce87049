"""The database: engine, migrations, sessions, and the group committer for the hot path."""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from sqlalchemy import Connection, Engine, Select, Table, create_engine, event, inspect, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from modelbay.core.activity import COMMIT_SECONDS_BUCKETS, Histogram
from modelbay.core.errors import Conflict
from modelbay.store.driver import DriverStatement, driver_cursor, insert_rows, insert_statement

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

#: The newest migration (tests/store/test_migrations.py holds it to alembic's head).
HEAD_REVISION = "0015"

_MIGRATE_URL_ON_STDIN = "import sys; from modelbay.store.db import Database; Database(sys.stdin.read()).migrate()"

#: Most writes one group commit carries; bounds the latency of the last writer in a batch.
GROUP_COMMIT_MAX = 512

#: How long a write nobody waits on may wait for others to share its commit, in seconds.
LINGER_S = 0.01

#: How often the log of what the event loop committed is copied into the database file, in seconds.
CHECKPOINT_PERIOD_S = 1.0

#: Pages in the log past which a checkpoint has the next writer start the log again from its start
#: (256 MiB at SQLite's 4 KiB pages). Under steady writes a passive checkpoint never finds every page
#: copied when a writer begins, so without a restart the log file would grow for as long as they
#: last. A restart holds writers off while it copies the last pages and syncs (2-7 ms here): rare
#: restarts of a large log cost the tail less than frequent ones of a small log.
RESTART_LOG_PAGES = 65_536

#: How many times a checkpoint tries to restart the log, a moment apart, while a writer or reader is in its way.
RESTART_TRIES = 20

#: Most writes of a batch (an insert counting one per row) the event loop commits itself. A few
#: writes share a commit there; more (a job's outcomes of many items, a batch request's rows) would
#: stall the loop, and go to the committer's thread, which commits them while the loop goes on.
LOOP_COMMIT_MAX_WRITES = 8

#: Longest the event loop puts off a commit of its writes while each of its turns brings more, in
#: seconds. Under load the results of several requests come in over a few turns: one commit for them
#: all costs the loop about what one commit costs (SQLite writes each page an insert touches, once per
#: commit), and leaves it time for the requests themselves.
LOOP_COMMIT_GATHER_S = 0.0005

#: How soon the event loop tries its commit again when another writer holds SQLite's lock, in seconds.
LOCKED_RETRY_S = 0.001

#: How long a writer waits for SQLite's write lock before giving up, in milliseconds.
SQLITE_BUSY_TIMEOUT_MS = 30_000

#: The PostgreSQL advisory lock that servers starting together on one database take to
#: migrate one after the other (any fixed number: this one is "modelb" in ASCII).
MIGRATION_LOCK_KEY = 0x6D6F_6465_6C62


#: deadlock_detected and serialization_failure: a transaction PostgreSQL chose to abort for another.
TRANSIENT_SQLSTATES = ("40P01", "40001")

#: How often the committer runs a write that met one of them before it gives up.
TRANSIENT_ATTEMPTS = 3

#: The first key of the advisory locks `lock_until_commit` takes ("mb").
LOCK_CLASS = 0x6D62

def as_conflict(exc: BaseException) -> Conflict | None:
    """The `Conflict` a unique violation means (two writers made the same name at once), else None;
    `exc` is SQLAlchemy's error or the driver's (the committer's inserts run on the driver).

    Call sites check for a duplicate before they insert; this catches the one that raced past
    that check, on either database, so it answers 409 like the check does."""
    orig = exc.orig if isinstance(exc, IntegrityError) else exc
    table: str | None
    if getattr(orig, "sqlstate", None) == "23505":  # psycopg: unique_violation
        table = orig.diag.table_name  # type: ignore[union-attr]
    elif str(orig).startswith("UNIQUE constraint failed: "):  # sqlite3: "...: table.column, ..."
        table = str(orig).removeprefix("UNIQUE constraint failed: ").split(".")[0]
    else:
        return None
    kind = (table or "thing").removesuffix("s").replace("_", " ")
    return Conflict(f"A {kind} with that name already exists")


def lock_until_commit(conn: Connection, scope: str) -> None:
    """Take the lock named `scope` until the transaction ends, so writers deciding on the same thing
    (a count, then an insert) take turns across nodes. PostgreSQL: an advisory lock; SQLite's one
    writer already takes turns."""
    if conn.dialect.name == "postgresql":
        key = zlib.crc32(scope.encode()) - (1 << 31)  # signed 32 bits, as the two-key lock wants
        conn.execute(text("SELECT pg_advisory_xact_lock(:kind, :key)"), {"kind": LOCK_CLASS, "key": key})


def is_transient(exc: BaseException) -> bool:
    """A PostgreSQL error that running the same transaction again may not meet: a deadlock with
    another node's transaction, or a serialization failure."""
    return isinstance(exc, OperationalError) and getattr(exc.orig, "sqlstate", None) in TRANSIENT_SQLSTATES


#: Flushes a file's data to disk (macOS has no fdatasync; its fsync does the same there).
_sync_data = getattr(os, "fdatasync", os.fsync)


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the driver, decide when transactions begin (the begin hook below).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # WAL + NORMAL: a commit survives a process crash without an fsync per commit.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    # No commit copies the log into the database file itself (that would sync both within it): the
    # server's committer has a thread for it (`GroupCommitter._checkpoint_every`), and the last
    # connection to close does it for any other process.
    cur.execute("PRAGMA wal_autocheckpoint=0")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    # Writers take the lock up front (BEGIN IMMEDIATE) so a read-then-write never deadlocks.
    # On the driver: SQLAlchemy's path for a statement costs more than the BEGIN (a commit begins one).
    # A transaction the loop's committer began on the driver is joined (see `_commit_pending`).
    raw = conn.connection.driver_connection
    if not raw.in_transaction:  # type: ignore[union-attr]
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        raw.execute(f"BEGIN {mode}")  # type: ignore[union-attr]


class Database:
    """Owns the engine. `read()` and `write()` open sessions whose transaction the caller owns."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False}
        else:
            # Callers read how many rows an INSERT made; SQLAlchemy keeps that for psycopg only when asked.
            kwargs["execution_options"] = {"preserve_rowcount": True}
        # orjson for JSON columns: the stdlib encoder is the slowest part of writing a row.
        kwargs["json_serializer"] = _json_text
        kwargs["json_deserializer"] = orjson.loads
        self.engine: Engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
            writer_engine: Engine = self.engine.execution_options(sqlite_begin="IMMEDIATE")
        else:
            writer_engine = self.engine
        self._writer_engine = writer_engine
        #: Reads on PostgreSQL run outside a transaction: at its default isolation (read committed)
        #: each statement takes its own snapshot anyway, and a transaction of reads costs two more
        #: round trips to the database server (BEGIN, and the ROLLBACK or COMMIT at its end).
        self.reader_engine: Engine = self.engine if self.is_sqlite \
            else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._reader = sessionmaker(self.reader_engine, expire_on_commit=False)
        self._writer = sessionmaker(writer_engine, expire_on_commit=False)
        self._committer: GroupCommitter | None = None
        self._insert_committer: GroupCommitter | None = None

    def revision(self) -> str | None:
        """The migration the schema is at; None for an empty store."""
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one_or_none()

    def migrate(self, *, in_child: bool = False) -> None:
        """Bring the schema to the newest migration. Alembic is loaded only when there is one to
        run, and with `in_child` in a child process: a server would keep it loaded (11 MiB) for
        its whole life. Raises `subprocess.CalledProcessError` when the child fails (it has said why
        on standard error)."""
        if self.revision() == HEAD_REVISION:
            return
        if in_child:  # the URL on standard input: a password in the arguments would show in `ps`
            subprocess.run([sys.executable, "-c", _MIGRATE_URL_ON_STDIN], input=self.url, text=True, check=True)
            return
        from alembic import command

        self.run_migrations(command.upgrade, "head")

    def run_migrations(self, step: Callable[[Config, str], None], revision: str) -> None:
        """Run an alembic command (`command.upgrade`, `command.downgrade`) to `revision`."""
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self.engine.connect() as conn:
            # SQLite alters a table by copying it and dropping the old one: with foreign keys on,
            # that drop would delete every row referencing it (ON DELETE CASCADE). The pragma is
            # ignored inside a transaction, so it is set on the bare connection, before the begin.
            raw = conn.connection.dbapi_connection if self.is_sqlite else None
            if raw is not None:
                raw.execute("PRAGMA foreign_keys=OFF")
            try:
                with conn.begin():
                    if self.engine.dialect.name == "postgresql":
                        # Servers starting together on an empty database migrate one after the other
                        # (on SQLite the data dir's lock lets only one server start at all).
                        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
                    cfg.attributes["connection"] = conn
                    step(cfg, revision)
            finally:
                if raw is not None:
                    raw.execute("PRAGMA foreign_keys=ON")

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads: each statement sees what was committed when it began."""
        with self._reader() as session, session.begin():
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction, committed when the block ends without an exception.

        A unique violation becomes `Conflict`."""
        try:
            with self._writer() as session, session.begin():
                yield session
        except IntegrityError as exc:
            if (conflict := as_conflict(exc)) is not None:
                raise conflict from exc
            raise

    def has_rows(self, query: Select[Any]) -> bool:
        """Whether `query` finds a row, read without taking the write lock. Periodic claims look
        first: on SQLite one writer holds the whole store, and a thread holding it waits for the GIL
        between its statements while a busy event loop's commits are refused."""
        with self.read() as session:
            return session.execute(query.limit(1)).first() is not None

    def writer_connection(self) -> Connection:
        """A Core connection whose transactions take the write lock up front (no ORM)."""
        return self._writer_engine.connect()

    @property
    def committer(self) -> GroupCommitter:
        if self._committer is None:
            self._committer = GroupCommitter(self)
        return self._committer

    @property
    def insert_committer(self) -> GroupCommitter:
        """The committer of new rows that no write in flight refers to (a new run). On PostgreSQL a
        second one, with a connection of its own: they commit while a round of the first is under
        way, rather than after it. SQLite writes one transaction at a time: the same committer."""
        if self.is_sqlite:
            return self.committer
        if self._insert_committer is None:
            self._insert_committer = GroupCommitter(self, shares_metrics_with=self.committer)
        return self._insert_committer

    def close(self) -> None:
        if self._insert_committer is not None:
            self._insert_committer.close()
        if self._committer is not None:
            self._committer.close()
        self.engine.dispose()


Write = Callable[[Connection], Any]


@dataclass(frozen=True)
class Insert:
    """Rows to insert: the committer sends all rows of a commit with the same table and
    columns as one executemany."""

    table: Table
    rows: list[dict[str, Any]]


class Joinable(Protocol):
    """A write of one row the committer runs together with the others of the same `joins` (not None)
    among the joinable writes next to it in a batch: at once (on PostgreSQL one statement for all,
    where each alone would be one: `core.states.Move`). Those writes run in groups, in the order
    each group's first write has. A row written twice ends the run of writes taken together."""

    joins: Hashable | None
    row: Hashable  # the row it writes

    def __call__(self, conn: Connection) -> Any: ...

    @staticmethod
    def run_joined(conn: Connection, writes: list[Any]) -> list[Any]:
        """Run `writes` (of one `joins`) in `conn`'s transaction; their results, in order."""


Op = Write | Insert | Joinable

#: Where `insert_at_commit` keeps the rows of a batch the committer is writing (in `Connection.info`).
_AT_COMMIT = "modelbay.rows_at_commit"


def insert_at_commit(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert `rows` in `conn`'s transaction, for rows no other write of the transaction reads or
    changes (log lines). In a batch of the committer they are inserted at its end, with the batch's
    other such rows of the same table and columns: one statement for all on PostgreSQL, where each
    write's own would be a round trip. Elsewhere, now."""
    pending = conn.info.get(_AT_COMMIT)
    if pending is None:
        insert_rows(conn, table, rows)
        return
    for row in rows:
        pending.setdefault((table, frozenset(row)), []).append(row)


class GroupCommitter:
    """Runs small writes from many callers in shared transactions.

    The hot path submits its writes here: one commit carries every write queued meanwhile,
    so many concurrent requests cost one commit, and each caller learns of its write only
    once it is durable. Writes get a Core connection, not an ORM session: the ORM's unit of
    work costs more than SQLite itself on this path.

    A thread of its own commits them, while the event loop goes on. On SQLite, the few writes the
    server's event loop has queued when their commit is due (`commit_on_loop`) are committed by the
    loop itself: with WAL and synchronous=NORMAL such a commit costs tens of microseconds, less than
    handing it to the thread and back, where each statement (the driver lets go of the GIL around
    it) waits for the busy loop to hand the GIL back. The loop puts its commit off turn by turn while
    each turn brings more writes, up to `LOOP_COMMIT_MAX_WRITES` or `LOOP_COMMIT_GATHER_S`: a turn
    without new writes commits them. Writes that would make the loop wait go to the
    thread: many at once (`LOOP_COMMIT_MAX_WRITES`). The loop's next writes follow those to the
    thread until they are committed, so the loop's writes commit in the order it submitted them.
    While another writer holds SQLite's lock (a checkpoint restarting the log, the thread), the loop
    goes on and tries again a moment later, with what was submitted meanwhile.
    """

    def __init__(self, db: Database, *, shares_metrics_with: GroupCommitter | None = None) -> None:
        self._db = db
        self._queue: queue.SimpleQueue[tuple[Op, _Waiter, bool] | None] = queue.SimpleQueue()
        #: How long each commit took (for the metrics; one histogram for the committers of a store).
        self.commit_seconds = Histogram(COMMIT_SECONDS_BUCKETS) if shares_metrics_with is None \
            else shares_metrics_with.commit_seconds
        # The loop and the threads all observe.
        self._observing = threading.Lock() if shares_metrics_with is None else shares_metrics_with._observing
        # The loop's own commits (SQLite): its connection, its writes not yet committed, when it
        # commits them next (`_due_now`: as soon as it can), and how many of its batches wait in
        # the thread's queue.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._loop_conn: Connection | None = None
        self._loop_raw: Any = None  # its driver connection
        self._pending: list[tuple[Op, _Waiter, bool]] = []
        self._due: asyncio.Handle | None = None
        self._due_now = False
        self._gathered = 0  # how many of them the loop had seen at its last turn (0: none yet)
        self._gathering_since = 0.0
        self._handed_over = 0
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    def commit_on_loop(self) -> None:
        """Commit the writes submitted on the running loop on it from now on, until `close` (SQLite
        only: on PostgreSQL a commit is a round trip to the database server)."""
        if not self._db.is_sqlite or self._loop is not None:
            return
        self._loop_conn = self._db.writer_connection()
        raw = self._loop_raw = self._loop_conn.connection.dbapi_connection
        assert raw is not None
        # Never wait for the lock on the loop: with the store busy it tries again a moment later. Nor for
        # the disk: checkpoints (which copy the log into the database file and sync both) have a
        # thread of their own.
        raw.execute("PRAGMA busy_timeout=0")
        self._checkpoints = threading.Thread(target=self._checkpoint_every, args=(CHECKPOINT_PERIOD_S,),
                                             name="wal-checkpoint", daemon=True)
        self._checkpoints.start()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    def _checkpoint_every(self, period: float) -> None:
        """Copy what was committed into the database file, every `period` seconds until closed; once
        the log holds `RESTART_LOG_PAGES`, have it start again from its start."""
        with self._db.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            # SQLite syncs the database file only after a checkpoint that copied the whole log, which
            # under steady writes only a restart does: everything copied since would be synced then,
            # under the restart's lock, and the disk busy with it made commits to the log wait. So
            # what each checkpoint copied is synced at once, by the thread.
            database_file = os.open(raw.execute("PRAGMA database_list").fetchone()[2], os.O_RDONLY)
            # A restart holds writers off from when it has the write lock until no reader uses the log:
            # it waits for neither (SQLite's busy handler would sleep in between), and is tried again.
            raw.execute("PRAGMA busy_timeout=0")
            try:
                while not self._closed.wait(period):
                    _, pages, _ = raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    _sync_data(database_file)
                    for _ in range(RESTART_TRIES if pages >= RESTART_LOG_PAGES else 0):
                        busy, _, _ = raw.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                        if not busy or self._closed.wait(0.001):
                            break
            finally:
                raw.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
                os.close(database_file)

    def submit(self, write: Op, *, linger: bool = False) -> Future[Any]:
        """Queue a write; the returned future resolves once it is committed.

        `linger`: nobody waits on this write, so its commit may wait up to `LINGER_S` for
        more writes to share it (a commit costs far more than a row).
        """
        future: Future[Any] = Future()
        self._put((write, future, linger))
        return future

    def submit_async(self, write: Op, *, linger: bool = False) -> asyncio.Future[Any]:
        """Like `submit`, for a caller on an event loop: resolved on that loop."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if loop is self._loop:
            self._put((write, future, linger))
        else:
            self._queue.put((write, future, linger))
        return future

    def flush(self) -> None:
        """Commit what is queued now, without waiting for lingering writes to find company."""
        if self._on_loop():
            self._schedule(now=True)
        self._queue.put((nothing, Future(), False))

    def close(self) -> None:
        self._closed.set()
        if self._loop is not None:
            pending, self._pending = self._pending, []
            if self._due is not None:
                self._due.cancel()
            for item in pending:  # the thread commits them, waiting for the lock if it must
                self._queue.put(item)
            if self._loop_conn is not None:
                raw = self._loop_conn.connection.dbapi_connection
                assert raw is not None
                raw.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
                self._loop_conn.close()
            self._checkpoints.join(timeout=30)
            self._loop = self._loop_conn = None
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _on_loop(self) -> bool:
        """Whether the caller runs on the loop that commits its own writes."""
        return self._loop is not None and threading.get_ident() == self._loop_thread and self._loop.is_running()

    def _put(self, item: tuple[Op, _Waiter, bool]) -> None:
        if self._on_loop():
            self._pending.append(item)
            self._schedule(now=not item[2] or len(self._pending) >= GROUP_COMMIT_MAX)
        else:
            self._queue.put(item)

    def _schedule(self, now: bool) -> None:
        """Have the loop commit its writes as soon as it can (`now`), or once `LINGER_S` passed."""
        assert self._loop is not None
        if now and not self._due_now:
            if self._due is not None:
                self._due.cancel()
            self._due, self._due_now = self._loop.call_soon(self._commit_pending), True
        elif self._due is None:
            self._due = self._loop.call_later(LINGER_S, self._commit_pending)

    def _commit_pending(self) -> None:
        self._due, self._due_now = None, False
        if not self._pending:
            return
        size = len(self._pending)
        large = self._handed_over or size > LOOP_COMMIT_MAX_WRITES or sum(
            len(op.rows) if isinstance(op, Insert) else 1 for op, _, _ in self._pending) > LOOP_COMMIT_MAX_WRITES
        if not large and self._gather(size):
            return
        self._gathered = 0
        batch, self._pending = self._pending, []
        if large:
            self._hand_over(batch)
            return
        conn = self._loop_conn
        assert conn is not None
        began = time.monotonic()
        # The transaction is begun and ended on the driver: SQLAlchemy's begin and commit cost more
        # than SQLite's. A write that uses `conn` joins it (`_sqlite_begin`), and is then ended by
        # SQLAlchemy, which commits or rolls back the driver's transaction.
        raw = self._loop_raw
        try:
            raw.execute("BEGIN IMMEDIATE")  # fails at once while another writer holds the lock
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                self._hand_over(batch)  # the thread meets the error too, and fails the writes
                return
            self._pending[:0] = batch
            if self._due is None:
                assert self._loop is not None
                self._due = self._loop.call_later(LOCKED_RETRY_S, self._commit_pending)
            return
        try:
            results = self._write(conn, batch, raw.cursor())
            (conn if conn.in_transaction() else raw).commit()
        except Exception:
            (conn if conn.in_transaction() else raw).rollback()
            self._hand_over(batch)  # the thread finds the write that failed, and commits the others
            return
        self._observe(time.monotonic() - began)
        for (_, waiter, _), result in zip(batch, results, strict=True):
            if not waiter.done():  # an asyncio waiter may have given up (cancelled)
                waiter.set_result(result)

    def _gather(self, size: int) -> bool:
        """Whether to put the commit of the loop's `size` writes off to its next turn: yes while each
        turn brings more of them, for up to `LOOP_COMMIT_GATHER_S`."""
        assert self._loop is not None
        now = time.monotonic()
        if not self._gathered:
            self._gathering_since = now
        more = self._gathered < size < LOOP_COMMIT_MAX_WRITES
        if more and now - self._gathering_since < LOOP_COMMIT_GATHER_S:
            self._gathered = size
            self._due, self._due_now = self._loop.call_soon(self._commit_pending), True
            return True
        return False

    def _hand_over(self, batch: list[tuple[Op, _Waiter, bool]]) -> None:
        """Give a batch of the loop's writes to the thread; the loop's next writes follow it there
        until it is committed."""
        assert self._loop is not None
        self._handed_over += 1
        committed = self._loop.create_future()
        committed.add_done_callback(self._handed_back)
        for item in batch:
            self._queue.put(item)
        self._queue.put((nothing, committed, False))  # committed with or after the batch: the queue is FIFO

    def _handed_back(self, _: asyncio.Future[Any]) -> None:
        self._handed_over -= 1

    def _observe(self, seconds: float) -> None:
        with self._observing:
            self.commit_seconds.observe(seconds)

    def _run(self) -> None:
        # One connection for the thread's life: no pool checkout and reset per commit.
        with self._db.writer_connection() as conn:
            self._conn = conn
            self._loop_forever()

    def _loop_forever(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            # Commit what is queued at once when someone waits on it; writes that all linger
            # wait a moment for company.
            deadline = time.monotonic() + LINGER_S if first[2] else 0.0
            while len(batch) < GROUP_COMMIT_MAX:
                try:
                    wait = deadline - time.monotonic()
                    item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
                if not item[2]:
                    deadline = 0.0
            began = time.monotonic()
            outcomes = self._commit(batch)
            self._observe(time.monotonic() - began)
            _settle(outcomes)
            if stop:
                return

    @staticmethod
    def _write(conn: Connection, batch: list[tuple[Op, _Waiter, bool]], cursor: Any = None) -> list[Any]:
        """Run a batch's writes in `conn`'s transaction (the inserts on `cursor` when given: the
        driver's, in a transaction begun on it); their results, in order."""
        conn.info[_AT_COMMIT] = at_commit = {}
        try:
            # Inserts first (they create what later writes in the batch may update).
            _insert(conn, _rows_by_insert(batch), cursor)
            results = run_writes(conn, [op for op, _, _ in batch])
            _insert(conn, at_commit, cursor)
            return results
        finally:
            del conn.info[_AT_COMMIT]

    def _commit(self, batch: list[tuple[Op, _Waiter, bool]],
                attempt: int = 1) -> list[tuple[_Waiter, Any, BaseException | None]]:
        if attempt == 1 and (insert := self._one_statement(batch)) is not None:
            try:
                self._insert_on_its_own(*insert)
                return [(waiter, None, None) for _, waiter, _ in batch]
            except Exception:  # noqa: BLE001 - nothing written; SQLAlchemy's way below says what failed, and how
                pass
        try:
            with self._conn.begin():
                results = self._write(self._conn, batch)
        except Exception as exc:
            # The whole transaction rolled back; one bad write must not fail its neighbours.
            if len(batch) > 1:
                return [outcome for item in batch for outcome in self._commit([item])]
            if is_transient(exc) and attempt < TRANSIENT_ATTEMPTS:
                return self._commit(batch, attempt + 1)  # another node's transaction won: once more
            if (conflict := as_conflict(exc)) is not None:
                conflict.__cause__ = exc
                return [(batch[0][1], None, conflict)]
            return [(batch[0][1], None, exc)]
        return [(waiter, result, None) for (_, waiter, _), result in zip(batch, results, strict=True)]

    def _one_statement(self, batch: list[tuple[Op, _Waiter, bool]]
                       ) -> tuple[DriverStatement, list[dict[str, Any]]] | None:
        """The insert and its rows when the batch is inserts that PostgreSQL takes as one statement
        (rows of the same columns into one table, no more than a statement holds); else None."""
        if self._db.is_sqlite or not all(isinstance(op, Insert) for op, _, _ in batch):
            return None
        inserts = _rows_by_insert(batch)
        if len(inserts) != 1:
            return None
        [((table, columns), rows)] = inserts.items()
        statement = insert_statement(table, columns, self._conn.dialect)
        return (statement, rows) if len(rows) <= statement.rows_per_statement else None

    def _insert_on_its_own(self, statement: DriverStatement, rows: list[dict[str, Any]]) -> None:
        """Run one INSERT statement as a transaction of its own: one round trip, where a transaction
        begun and ended by SQLAlchemy waits for the server at its BEGIN, its statement and its
        COMMIT. Errors are the driver's."""
        raw = self._conn.connection.driver_connection
        assert raw is not None
        raw.autocommit = True
        try:
            statement.executemany(raw.cursor(), rows)
        finally:
            raw.autocommit = False


_Waiter = Future[Any] | asyncio.Future[Any]


def _insert(conn: Connection, rows_by_insert: dict[tuple[Table, frozenset[str]], list[dict[str, Any]]],
            cursor: Any = None) -> None:
    for (table, columns), rows in rows_by_insert.items():
        insert_statement(table, columns, conn.dialect).executemany(cursor or driver_cursor(conn), rows)


def _rows_by_insert(batch: list[tuple[Op, _Waiter, bool]]) -> dict[tuple[Table, frozenset[str]], list[dict[str, Any]]]:
    """The rows a batch inserts, by table and columns: all rows of one statement."""
    rows: dict[tuple[Table, frozenset[str]], list[dict[str, Any]]] = {}
    for op, _, _ in batch:
        if isinstance(op, Insert):
            for row in op.rows:
                rows.setdefault((op.table, frozenset(row)), []).append(row)
    return rows


def run_writes(conn: Connection, writes: list[Op]) -> list[Any]:
    """Run writes in `conn`'s transaction; their results, in order (an `Insert`'s is None: the
    committer inserts those rows first). Joinable writes next to each other (inserts in between) run
    in groups of the same `joins`, each group at once (see `Joinable`)."""
    results: list[Any] = [None] * len(writes)
    groups: dict[Hashable, list[int]] = {}  # joins -> the indices of its writes
    rows: set[Hashable] = set()

    def run_groups() -> None:
        for indices in groups.values():
            first: Any = writes[indices[0]]
            outcomes = first.run_joined(conn, [writes[i] for i in indices]) if len(indices) > 1 else [first(conn)]
            for i, outcome in zip(indices, outcomes, strict=True):
                results[i] = outcome
        groups.clear()
        rows.clear()

    for i, write in enumerate(writes):
        if isinstance(write, Insert):
            continue
        if (joins := getattr(write, "joins", None)) is None:
            run_groups()
            results[i] = write(conn)
            continue
        if write.row in rows:  # type: ignore[union-attr]
            run_groups()
        rows.add(write.row)  # type: ignore[union-attr]
        groups.setdefault(joins, []).append(i)
    run_groups()
    return results


def nothing(_conn: Connection) -> None:
    """A write that writes nothing: the write of `flush` (it only ends the linger of those queued
    before it), and the `otherwise` of a move whose row, moved on meanwhile, is left as it is."""


def _settle(outcomes: list[tuple[_Waiter, Any, BaseException | None]]) -> None:
    """Resolve the waiters of a commit: thread futures at once, loop futures in one hop per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]] = {}
    for waiter, result, exc in outcomes:
        if isinstance(waiter, asyncio.Future):
            by_loop.setdefault(waiter.get_loop(), []).append((waiter, result, exc))
        elif exc is not None:
            waiter.set_exception(exc)
        else:
            waiter.set_result(result)
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve_on_loop, items)
        except RuntimeError:  # the loop has closed; nobody waits any more
            pass


def _resolve_on_loop(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, exc in items:
        if future.done():  # the waiter gave up (cancelled)
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
