from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, select

from modelbay.core.clock import as_utc
from modelbay.core.errors import StatusChanged
from modelbay.core.job_items import _committed_statement
from modelbay.core.requests import _claim_statement
from modelbay.core.runs import _joined_claim_reads
from modelbay.core.states import JOB_ITEM, REQUEST, REQUESTS, ItemStatus, Move, move
from modelbay.core.states import RequestStatus as Status
from modelbay.store.db import Database, Insert
from modelbay.store.driver import driver_cursor, insert_rows, insert_statement
from modelbay.store.tables import LogLineRow, RequestRow


CREATED = datetime(2026, 11, 22, 10, 30, 15, 123456, tzinfo=UTC)


def _row(request_id: str, **values: object) -> dict[str, object]:
    return {
        "id": request_id, "project_id": "p", "deployment_id": "d", "version_id": "v", "mode": "batch",
        "status": "pending", "timeout": 10, "origin": {"created_by": "tester"}, "created_at": CREATED,
        "data": b'{"x": 1}', **values,
    }


def test_a_row_written_on_the_driver_reads_back_as_one_written_by_sqlalchemy(db: Database) -> None:
    # Given the same row, once through SQLAlchemy and once through a driver statement
    with db.write() as session:
        session.execute(insert(REQUESTS), [_row("through-sqlalchemy")])
    with db.writer_connection() as conn, conn.begin():
        statement = insert_statement(REQUESTS, frozenset(_row("x")), conn.dialect)
        statement.executemany(driver_cursor(conn), [_row("through-driver")])

    with db.read() as session:
        a, b = (session.get(RequestRow, i) for i in ("through-sqlalchemy", "through-driver"))
    # Then every column reads back the same: types converted, column defaults applied
    assert a is not None and b is not None
    columns = [c.key for c in REQUESTS.columns if c.key != "id"]
    assert {c: getattr(b, c) for c in columns} == {c: getattr(a, c) for c in columns}
    assert as_utc(b.created_at) == CREATED
    assert b.origin == {"created_by": "tester"} and b.data == b'{"x": 1}'
    assert b.priority == 1 and b.input_size == 0 and b.output_size == 0  # the columns' defaults


@pytest.mark.postgresql_only("an INSERT runs as statements of many rows on PostgreSQL, of one row on SQLite")
def test_rows_inserted_with_one_statement_read_back_as_ones_written_by_sqlalchemy(db: Database) -> None:
    # Given the same rows, once through SQLAlchemy and once as one INSERT of many rows on the driver
    rows = [_row(f"{n}", priority=n % 3, started_at=datetime(2026, 1, 2, 3, 4, n, tzinfo=UTC)) for n in range(7)]
    with db.write() as session:
        session.execute(insert(REQUESTS), [{**row, "id": f"sqlalchemy-{row['id']}"} for row in rows])
    with db.writer_connection() as conn, conn.begin():
        statement = insert_statement(REQUESTS, frozenset(rows[0]), conn.dialect)
        statement.executemany(driver_cursor(conn), [{**row, "id": f"driver-{row['id']}"} for row in rows])

    # Then each reads back the same, column by column, defaults applied
    columns = [c.key for c in REQUESTS.columns if c.key != "id"]
    with db.read() as session:
        for n in range(7):
            a, b = session.get(RequestRow, f"sqlalchemy-{n}"), session.get(RequestRow, f"driver-{n}")
            assert a is not None and b is not None
            assert {c: getattr(b, c) for c in columns} == {c: getattr(a, c) for c in columns}
            assert b.priority == n % 3 and b.input_size == 0 and b.data == b'{"x": 1}'


def test_rows_into_a_table_with_an_autoincrement_key_land_in_order_over_several_statements(db: Database) -> None:
    # Given more log lines than one statement holds (the key is the database's: no RETURNING read)
    with db.writer_connection() as conn:
        per_statement = insert_statement(LogLineRow.__table__, frozenset({"owner_id", "time", "message"}),
                                         conn.dialect).rows_per_statement
    count = 2 * per_statement + 1 if per_statement > 1 else 3
    lines = [{"owner_id": "run", "time": CREATED, "message": f"line {n}"} for n in range(count)]
    with db.writer_connection() as conn, conn.begin():
        insert_rows(conn, LogLineRow.__table__, lines)

    # Then every line is there, its key in the order written
    with db.read() as session:
        messages = session.scalars(select(LogLineRow.message).order_by(LogLineRow.id)).all()
    assert messages == [f"line {n}" for n in range(count)]


def test_inserts_sharing_a_commit_all_land(db: Database) -> None:
    futures = [db.committer.submit(Insert(REQUESTS, [_row(f"r{n}"), _row(f"s{n}")]), linger=True) for n in range(40)]
    for future in futures:
        future.result(timeout=10)
    with db.read() as session:
        assert len(session.scalars(select(RequestRow.id)).all()) == 80


def test_inserts_of_one_commit_with_different_columns_all_land(db: Database) -> None:
    committer = db.committer
    futures = [committer.submit(Insert(REQUESTS, [_row("a")])), committer.submit(Insert(REQUESTS, [_row("b", priority=0)]))]
    for future in futures:
        future.result(timeout=10)
    with db.read() as session:
        priorities = dict(session.execute(select(RequestRow.id, RequestRow.priority)).all())
    assert priorities == {"a": 1, "b": 0}


@pytest.mark.sqlite_only("SQLite stores times as text, written by the driver's own processors")
def test_times_and_bytes_are_stored_as_the_same_text_as_sqlalchemy_writes(db: Database) -> None:
    # Given rows with times of every shape (no microseconds, a small year, no time zone), written once
    # through SQLAlchemy and once through a driver statement
    times = [CREATED, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), datetime(999, 12, 31, 23, 59, 59, 1),
             datetime(2026, 6, 1)]
    for n, when in enumerate(times):
        values = {"created_at": when, "started_at": when, "data": bytearray(b"[1]"), "result": b"2"}
        with db.write() as session:
            session.execute(insert(REQUESTS), [_row(f"sqlalchemy-{n}", **values)])
        with db.writer_connection() as conn, conn.begin():
            statement = insert_statement(REQUESTS, frozenset(_row("x", **values)), conn.dialect)
            statement.executemany(driver_cursor(conn), [_row(f"driver-{n}", **values)])

    # Then the store holds the same text and bytes for both, column by column
    with db.writer_connection() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        stored = {row[0]: row[1:] for row in raw.execute(
            "SELECT id, created_at, started_at, finished_at, typeof(data), data, result FROM requests")}
    for n in range(len(times)):
        assert stored[f"driver-{n}"] == stored[f"sqlalchemy-{n}"]
    assert stored["driver-1"][0] == "2026-01-02 03:04:05.000000"
    assert stored["driver-2"][0] == "0999-12-31 23:59:59.000001"
    assert stored["driver-0"][3] == "blob"


@pytest.mark.postgresql_only("psycopg prepares statements on PostgreSQL; SQLite plans each anyway")
def test_statements_whose_best_plan_changes_as_tables_grow_are_planned_at_each_run(db: Database) -> None:
    # Given a claim of pending requests, a move of a job's item, a read of a job's committed items,
    # moves of many requests joined, the reads of joined claims of runs, and a move of a request by
    # its key, each run more often than psycopg takes to prepare one
    with db.writer_connection() as conn, conn.begin():
        for _ in range(8):
            assert Move.run_joined(conn, [Move(REQUEST, key, Status.PENDING, Status.PROCESSING, {},
                                               otherwise=lambda _conn: None) for key in ("a", "b")]) == [None, None]
            _joined_claim_reads(conn.dialect).rows(driver_cursor(conn), {
                "version_id": "v", "node_id": "n", "run_ids": ["a", "b"]})
            _claim_statement(conn.dialect).rows(driver_cursor(conn), {"owner": "n", "version_id": "v", "limit": 8,
                                                                      "offset": 0})
            with pytest.raises(StatusChanged):
                move(conn, JOB_ITEM, ("job", 1), ItemStatus.PREDICTED, ItemStatus.DELIVERED)
            _committed_statement(conn.dialect).rows(driver_cursor(conn), {"job_id": "job", "low": 0, "high": 9})
            with pytest.raises(StatusChanged):
                move(conn, REQUEST, "none", Status.PENDING, Status.PROCESSING, fence="n")
        prepared = conn.exec_driver_sql("SELECT statement FROM pg_prepared_statements").scalars().all()

    # Then the request's move runs a plan PostgreSQL keeps; the others never do: a plan kept from
    # a nearly empty table walks the backlog, or the job's every item, once the table has grown
    assert any(statement.startswith("UPDATE requests SET status") for statement in prepared), prepared
    assert not any("SKIP LOCKED" in statement or "job_logs" in statement or "VALUES" in statement
                   or "FROM runs" in statement for statement in prepared), prepared
