import asyncio
import subprocess
import sys
import threading
from concurrent.futures import wait
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, insert, inspect, select, text, update

from modelbay.core import states
from modelbay.core.errors import Conflict, StatusChanged
from modelbay.core.states import REQUEST, REQUESTS, move
from modelbay.core.states import RequestStatus as Status
from modelbay.settings import Settings
from modelbay.store import db as store_db
from modelbay.store.db import Database, Insert
from modelbay.store.tables import RequestRow, ServerSecretRow
from tests.fixtures.server import wait_until


def _request(request_id: str, status: str = "pending") -> RequestRow:
    return RequestRow(
        id=request_id,
        project_id="p",
        deployment_id="d",
        version_id="v",
        mode="batch",
        status=status,
        timeout=10,
        origin={},
        created_at=datetime.now(UTC),
    )


def _row(request_id: str) -> dict[str, object]:
    row = _request(request_id)
    return {c.name: getattr(row, c.name) for c in REQUESTS.columns if getattr(row, c.name) is not None}


def test_group_commit_resolves_loop_futures_on_their_loop(db: Database) -> None:
    async def scenario() -> list[object]:
        writes = [db.committer.submit_async(lambda c, i=i: c.execute(insert(REQUESTS), _row(f"a{i}")).rowcount) for i in range(50)]
        return list(await asyncio.gather(*writes))

    assert asyncio.run(scenario()) == [1] * 50


def test_a_lingering_write_is_committed_at_once_when_the_committer_is_flushed(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_db, "LINGER_S", 60.0)  # without the flush, it would wait that long for company

    async def scenario() -> None:
        lingering = db.committer.submit_async(lambda c: c.execute(insert(REQUESTS), _row("late")), linger=True)
        await asyncio.sleep(0.05)  # in the committer's hands, lingering
        assert not lingering.done()
        db.committer.flush()
        await asyncio.wait_for(lingering, timeout=10)

    asyncio.run(scenario())
    with db.read() as session:
        assert session.get(RequestRow, "late") is not None


def test_migrations_create_every_table(db: Database) -> None:
    names = set(inspect(db.engine).get_table_names())
    assert {"projects", "deployments", "versions", "revisions", "requests", "alembic_version"} <= names


@pytest.mark.sqlite_only("WAL is SQLite's journal mode")
def test_sqlite_runs_in_wal_mode(db: Database) -> None:
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_group_commit_makes_every_write_durable_and_isolates_a_failing_one(db: Database) -> None:
    futures = [db.committer.submit(lambda c, i=i: c.execute(insert(REQUESTS), _row(f"r{i}"))) for i in range(200)]
    duplicate = db.committer.submit(lambda c: c.execute(insert(REQUESTS), _row("r0")))
    wait(futures + [duplicate], timeout=30)
    assert all(f.exception() is None for f in futures)
    assert duplicate.exception() is not None
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(RequestRow)) == 200


def test_an_insert_of_a_row_that_exists_fails_with_a_conflict_alone_or_among_others(db: Database) -> None:
    # Alone (on PostgreSQL, a row inserted alone is a transaction of its own, in one round trip).
    db.committer.submit(Insert(REQUESTS, [_row("first")])).result(timeout=30)
    assert isinstance(db.committer.submit(Insert(REQUESTS, [_row("first")])).exception(timeout=30), Conflict)
    # Lingering, they wait for each other and share a commit: the others are committed.
    inserts = [db.committer.submit(Insert(REQUESTS, [_row(f"i{i}")]), linger=True) for i in range(50)]
    duplicate = db.committer.submit(Insert(REQUESTS, [_row("first")]), linger=True)
    wait(inserts + [duplicate], timeout=30)
    assert all(f.exception() is None for f in inserts)
    assert isinstance(duplicate.exception(), Conflict)
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(RequestRow)) == 51


@pytest.mark.postgresql_only("the plans of PostgreSQL's planner")
def test_a_move_by_key_looks_the_key_up_in_a_table_not_analysed_since_it_grew(db: Database) -> None:
    # Given a backlog of pending requests inserted since the table was last analysed (the tests' server
    # runs no autovacuum)
    db.committer.submit(Insert(REQUESTS, [_row(f"r{i}") for i in range(3000)])).result(timeout=30)
    # When the statement that moves one of them by its key is planned
    statement = states._statement(REQUEST, frozenset({"started_at"}), 1, False, db.engine.dialect)
    params = statement.parameters({"_key0": "r7", "_old0": "pending", "status": "processing",
                                   "started_at": datetime.now(UTC)})
    with db.writer_connection() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        plan = "\n".join(row[0] for row in raw.execute("EXPLAIN " + statement.sql, params))
    # Then it looks the key up, rather than walk every pending row of an index on the status
    assert "Index Scan using requests_pkey" in plan, plan


def test_a_transition_is_decided_exactly_once(db: Database) -> None:
    with db.write() as session:
        session.add(_request("r1", "processing"))
    with db.write() as session:
        move(session, REQUEST, "r1", Status.PROCESSING, Status.COMPLETED)
    with pytest.raises(StatusChanged), db.write() as session:
        move(session, REQUEST, "r1", Status.PROCESSING, Status.CANCELLED_PENDING)
    with db.read() as session:
        assert session.get(RequestRow, "r1").status == "completed"


def test_a_transition_that_is_not_allowed_is_refused(db: Database) -> None:
    with pytest.raises(ValueError, match="from completed to processing"), db.write() as session:
        move(session, REQUEST, "r1", Status.COMPLETED, Status.PROCESSING)


@pytest.mark.postgresql_only("on SQLite the data dir's lock lets one server at a time open the store")
def test_servers_migrating_one_empty_database_at_once_all_succeed(database_url: str) -> None:
    migrate = "import sys; from modelbay.store.db import Database; Database(sys.argv[1]).migrate()"
    processes = [
        subprocess.Popen([sys.executable, "-c", migrate, database_url], stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outcomes = [(process.wait(timeout=120), process.stderr.read()) for process in processes]  # type: ignore[union-attr]
    assert [code for code, _ in outcomes] == [0, 0, 0], outcomes
    database = Database(database_url)
    try:
        assert "requests" in inspect(database.engine).get_table_names()
    finally:
        database.close()


def test_a_plain_postgresql_url_selects_psycopg_3() -> None:
    for given in ("postgresql://u:p@db:5432/modelbay", "postgres://u:p@db:5432/modelbay"):
        assert Settings(database_url=given).sqlalchemy_url == "postgresql+psycopg://u:p@db:5432/modelbay"
    assert Settings(database_url="postgresql+psycopg://u@db/m").sqlalchemy_url == "postgresql+psycopg://u@db/m"


@pytest.mark.postgresql_only("deadlocks between transactions of several connections")
def test_a_write_that_loses_a_deadlock_to_another_nodes_transaction_is_run_again(db: Database) -> None:
    with db.write() as session:
        session.execute(insert(ServerSecretRow), [{"name": n, "value": "0", "created_at": datetime.now(UTC)}
                                                  for n in ("a", "b")])

    def set_value(conn: Any, name: str) -> None:
        conn.execute(update(ServerSecretRow).where(ServerSecretRow.name == name).values(value="1"))

    runs: list[int] = []
    a_locked = threading.Event()

    def a_then_b(conn: Any) -> str:
        runs.append(1)
        set_value(conn, "a")
        a_locked.set()
        set_value(conn, "b")  # waits for the other transaction, which then waits for "a": a deadlock
        return "written"

    with db.engine.connect() as other, other.begin():
        # PostgreSQL aborts the transaction that first waits out its deadlock_timeout (1 s): this one
        # waits far longer, so on a loaded machine too it is the committer's that is aborted.
        other.execute(text("SET LOCAL deadlock_timeout = '60s'"))
        set_value(other, "b")
        written = db.committer.submit(a_then_b)
        assert a_locked.wait(10)
        with db.engine.connect() as watcher:  # the committer waits for "b" before this waits for "a"
            wait_until(lambda: watcher.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted")), timeout=10)
        set_value(other, "a")  # PostgreSQL aborts the committer's transaction, which began waiting first

    assert written.result(timeout=30) == "written"
    # Run again until it wins: twice, or more when the retry takes "a" again before the other
    # transaction (woken by the abort) does, which a loaded machine sometimes lets happen.
    assert len(runs) >= 2


@pytest.mark.postgresql_only("a transaction of reads costs round trips to the server")
def test_reads_on_postgresql_run_outside_a_transaction(db: Database) -> None:
    from psycopg.pq import TransactionStatus

    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(RequestRow)) == 0
        driver = session.connection().connection.driver_connection
        assert driver.info.transaction_status is TransactionStatus.IDLE  # no BEGIN was sent
    with db.write() as session:
        session.add(_request("written"))
    with db.read() as session:
        assert session.get(RequestRow, "written") is not None


@pytest.mark.postgresql_only("SQLite writes one transaction at a time: new rows go through the one committer")
def test_new_rows_on_postgresql_commit_while_a_round_of_the_committer_is_under_way(db: Database) -> None:
    # Given the committer in the middle of a round
    release = threading.Event()
    busy = db.committer.submit(lambda _conn: release.wait(10))
    # When a new row is submitted to the committer of new rows
    inserted = db.insert_committer.submit(Insert(REQUESTS, [_row("new")]))
    # Then it is committed before that round ends, and counted in the store's commit times
    try:
        inserted.result(timeout=10)
        assert not busy.done()
    finally:
        release.set()
    assert busy.result(timeout=10) is True
    with db.read() as session:
        assert session.get(RequestRow, "new") is not None
    assert sum(db.committer.commit_seconds.counts) == 2

