"""Rows inserted at the end of the committer's batch (`store.db.insert_at_commit`): the log lines of
many writes in one statement, and those of a move only when its row moved (`states.Move.inserts`)."""

import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection, insert, select

from modelbay.core.errors import StatusChanged
from modelbay.core.journal import LOG_LINES
from modelbay.core.states import REQUEST, REQUESTS, Move
from modelbay.core.states import RequestStatus as Status
from modelbay.store import driver
from modelbay.store.db import Database, Insert, insert_at_commit

CREATED = datetime(2026, 12, 2, 8, 30, 15, tzinfo=UTC)


def _requests(db: Database, statuses: dict[str, str]) -> None:
    with db.write() as session:
        session.execute(insert(REQUESTS), [
            {"id": request_id, "project_id": "p", "deployment_id": "d", "version_id": "v", "mode": "batch",
             "status": status, "owner": "here", "timeout": 60, "created_at": CREATED}
            for request_id, status in statuses.items()])


def _lines(db: Database) -> list[tuple[str, str]]:
    """(owner, message) of every log line, in the order of their ids."""
    with db.read() as session:
        return [tuple(row) for row in session.execute(
            select(LOG_LINES.c.owner_id, LOG_LINES.c.message).order_by(LOG_LINES.c.id))]


def _line(owner: str, message: str) -> dict[str, Any]:
    return {"owner_id": owner, "time": CREATED, "message": message}


class LogInserts:
    """Counts the statements that insert log lines (`executemany` calls of their insert)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        executemany = driver.DriverStatement.executemany

        def counted(statement: driver.DriverStatement, cursor: Any, rows: Any) -> None:
            if statement.sql.startswith("INSERT INTO log_lines"):
                self.calls += 1
            executemany(statement, cursor, rows)

        monkeypatch.setattr(driver.DriverStatement, "executemany", counted)


def _queued_together(db: Database, writes: list[Any]) -> list[Any]:
    """Submit `writes` while the committer is busy, so that they share one batch; their futures."""
    committer = db.committer
    holding, release = threading.Event(), threading.Event()

    def hold(_conn: Any) -> bool:
        holding.set()
        return release.wait(10)

    busy = committer.submit(hold)
    # Inside its batch before the others are queued: a thread that took them with it (a busy
    # machine can queue them before it starts) would commit them in two batches.
    assert holding.wait(10)
    futures = [committer.submit(write, linger=True) for write in writes]
    committer.flush()
    release.set()
    assert busy.result(timeout=10) is True
    return futures


def test_the_lines_of_a_batchs_writes_are_inserted_at_its_end_in_one_statement_in_order(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    counted = LogInserts(monkeypatch)

    def writing(owner: str, count: int) -> Any:
        def write(conn: Connection) -> str:
            insert_at_commit(conn, LOG_LINES, [_line(owner, f"{owner} {n}") for n in range(count)])
            return owner
        return write

    futures = _queued_together(db, [writing("a", 2), writing("b", 1), writing("a", 1)])

    assert [future.result(timeout=10) for future in futures] == ["a", "b", "a"]
    assert _lines(db) == [("a", "a 0"), ("a", "a 1"), ("b", "b 0"), ("a", "a 0")]
    assert counted.calls == 1


def test_a_write_that_fails_leaves_none_of_its_lines_and_its_neighbours_keep_theirs(db: Database) -> None:
    def write(owner: str, fails: bool) -> Any:
        def run(conn: Connection) -> None:
            insert_at_commit(conn, LOG_LINES, [_line(owner, "told")])
            if fails:
                raise ValueError("this write fails")
        return run

    futures = _queued_together(db, [write("a", False), write("bad", True), write("c", False)])

    assert futures[0].result(timeout=10) is None and futures[2].result(timeout=10) is None
    with pytest.raises(ValueError, match="this write fails"):
        futures[1].result(timeout=10)
    assert _lines(db) == [("a", "told"), ("c", "told")]


def test_outside_the_committer_the_rows_are_inserted_at_once(db: Database) -> None:
    with db.write() as session:
        insert_at_commit(session.connection(), LOG_LINES, [_line("a", "now")])
        assert session.scalar(select(LOG_LINES.c.message)) == "now"  # inside the same transaction
    assert _lines(db) == [("a", "now")]


def _finish(request_id: str) -> Move:
    """pending -> processing -> completed, telling of it in a log line."""
    return Move(REQUEST, request_id, Status.PENDING, Status.COMPLETED, {"error_message": None},
                via=(Status.PROCESSING,), inserts=Insert(LOG_LINES, [_line(request_id, "completed")]))


def test_moves_write_their_lines_only_for_the_rows_that_moved(db: Database) -> None:
    # Given pending requests, one of them cancelled meanwhile
    _requests(db, {"a": "pending", "cancelled": "cancelled", "b": "pending"})

    futures = _queued_together(db, [_finish("a"), _finish("cancelled"), _finish("b")])

    # Then the moved rows passed through `processing` to their end and told of it; the other changed nothing
    assert futures[0].result(timeout=10) == Status.COMPLETED
    assert futures[2].result(timeout=10) == Status.COMPLETED
    with pytest.raises(StatusChanged):
        futures[1].result(timeout=10)
    with db.read() as session:
        statuses = dict(session.execute(select(REQUESTS.c.id, REQUESTS.c.status)).all())
    assert statuses == {"a": "completed", "cancelled": "cancelled", "b": "completed"}
    assert _lines(db) == [("a", "completed"), ("b", "completed")]


def test_joined_moves_through_a_status_write_the_lines_of_the_rows_that_moved(db: Database) -> None:
    _requests(db, {"a": "pending", "b": "processing", "c": "pending"})
    with db.writer_connection() as conn, conn.begin():
        results = Move.run_joined(conn, [
            _finish("a"), Move(REQUEST, "b", Status.PENDING, Status.COMPLETED, {"error_message": None},
                               via=(Status.PROCESSING,), otherwise=lambda _conn: "not moved: b",
                               inserts=Insert(LOG_LINES, [_line("b", "completed")])), _finish("c")])
    assert results == [Status.COMPLETED, "not moved: b", Status.COMPLETED]
    assert _lines(db) == [("a", "completed"), ("c", "completed")]
