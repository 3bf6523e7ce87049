"""Moves of many rows run together (`states.Move.run_joined`): on PostgreSQL one statement for all,
where it saves a round trip per row; on SQLite one call to the driver, the rows undone and each
moved alone when some did not move. The committer joins the moves next to each other in a batch."""

import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import insert, select

from modelbay.core.clock import as_utc
from modelbay.core.errors import IllegalMove
from modelbay.core.states import JOB_ITEM, REQUEST, REQUESTS, ItemStatus, Move
from modelbay.core.states import RequestStatus as Status
from modelbay.store import driver
from modelbay.store.db import Database, run_writes
from modelbay.store.tables import JobLogRow, RequestRow

JOB_LOGS = JobLogRow.__table__

FINISHED = datetime(2026, 12, 2, 8, 30, 15, 123456, tzinfo=UTC)


def _requests(db: Database, rows: dict[str, tuple[str, str]]) -> None:
    """Requests by id: (status, owner)."""
    with db.write() as session:
        session.execute(insert(REQUESTS), [
            {"id": request_id, "project_id": "p", "deployment_id": "d", "version_id": "v", "mode": "batch",
             "status": status, "owner": owner, "timeout": 60, "created_at": FINISHED}
            for request_id, (status, owner) in rows.items()])


def _read(db: Database) -> dict[str, RequestRow]:
    with db.read() as session:
        return {row.id: row for row in session.scalars(select(RequestRow))}


class Statements:
    """Counts the driver statements run: one joined for many rows, or one per row."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.alone = self.joined = 0
        execute, fetch_many = driver.DriverStatement.execute, driver.DriverStatement.fetch_many
        executemany = driver.DriverStatement.executemany

        def counted_execute(statement: driver.DriverStatement, cursor: Any, row: Any) -> int:
            self.alone += 1
            return execute(statement, cursor, row)

        def counted_fetch_many(statement: driver.DriverStatement, cursor: Any, rows: Any) -> list[Any]:
            self.joined += 1
            return fetch_many(statement, cursor, rows)

        def counted_executemany(statement: driver.DriverStatement, cursor: Any, rows: Any) -> int:
            self.joined += 1
            return executemany(statement, cursor, rows)

        monkeypatch.setattr(driver.DriverStatement, "execute", counted_execute)
        monkeypatch.setattr(driver.DriverStatement, "executemany", counted_executemany)
        monkeypatch.setattr(driver.DriverStatement, "fetch_many", counted_fetch_many)


def _finish(request_id: str, result: bytes | None, fence: str = "here") -> Move:
    return Move(REQUEST, request_id, Status.PROCESSING, Status.COMPLETED,
                {"result": result, "output_size": len(result or b""), "finished_at": FINISHED, "error_message": None},
                fence=fence, otherwise=lambda _conn: f"not moved: {request_id}")


def test_joined_moves_write_each_row_in_one_statement_and_the_rows_not_moved_take_their_other_way(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given requests this node runs, one cancelled meanwhile and one given back to another node
    _requests(db, {"a": ("processing", "here"), "b": ("processing", "here"), "c": ("processing", "here"),
                   "cancelled": ("cancelled_pending", "here"), "given-back": ("processing", "other")})
    statements = Statements(monkeypatch)
    moves = [_finish("a", b'{"y": 1}'), _finish("cancelled", b"2"), _finish("b", None), _finish("given-back", b"3"),
             _finish("c", b"")]

    with db.writer_connection() as conn, conn.begin():
        results = Move.run_joined(conn, moves)

    # Then the rows still running here moved, each with its own values: on PostgreSQL in one
    # statement; on SQLite the joined moves were undone, and each ran alone
    assert results == [Status.COMPLETED, "not moved: cancelled", Status.COMPLETED, "not moved: given-back",
                       Status.COMPLETED]
    assert (statements.joined, statements.alone) == ((1, 5) if db.is_sqlite else (1, 0))
    rows = _read(db)
    assert {request_id: row.status for request_id, row in rows.items()} == {
        "a": "completed", "b": "completed", "c": "completed", "cancelled": "cancelled_pending",
        "given-back": "processing"}
    assert (rows["a"].result, rows["b"].result, rows["c"].result) == (b'{"y": 1}', None, b"")
    assert (rows["a"].output_size, rows["b"].output_size) == (8, 0)
    assert as_utc(rows["a"].finished_at) == FINISHED and rows["given-back"].finished_at is None


def test_joined_moves_of_only_empty_values_write_them(db: Database) -> None:
    # Given finishes whose result is NULL in every row (PostgreSQL types such a VALUES column as text)
    _requests(db, {"a": ("processing", "here"), "b": ("processing", "here")})
    with db.writer_connection() as conn, conn.begin():
        assert Move.run_joined(conn, [_finish("a", None), _finish("b", None)]) == [Status.COMPLETED] * 2
    assert [(row.status, row.result) for row in _read(db).values()] == [("completed", None)] * 2


def test_a_row_moved_twice_among_joined_moves_moves_once_and_the_second_sees_the_first(db: Database) -> None:
    _requests(db, {"a": ("processing", "here"), "b": ("processing", "here")})
    with db.writer_connection() as conn, conn.begin():
        results = Move.run_joined(conn, [_finish("a", b"1"), _finish("b", b"2"), _finish("a", b"3")])
    assert results == [Status.COMPLETED, Status.COMPLETED, "not moved: a"]
    assert _read(db)["a"].result == b"1"


def test_joined_moves_the_machine_does_not_allow_write_nothing(db: Database) -> None:
    _requests(db, {"a": ("completed", "here"), "b": ("completed", "here")})
    moves = [Move(REQUEST, key, Status.COMPLETED, Status.PROCESSING, {}) for key in ("a", "b")]
    with pytest.raises(IllegalMove), db.writer_connection() as conn, conn.begin():
        Move.run_joined(conn, moves)
    assert {row.status for row in _read(db).values()} == {"completed"}


def test_the_committer_joins_the_moves_next_to_each_other_in_a_commit(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given 40 finishes queued at once, with a write of another kind among them
    _requests(db, {f"r{n}": ("processing", "here") for n in range(40)})
    statements = Statements(monkeypatch)
    committer = db.committer
    entered, release = threading.Event(), threading.Event()

    def hold(_conn: Any) -> bool:
        entered.set()
        return release.wait(10)

    busy = committer.submit(hold)  # the committer busy while the rest is queued
    assert entered.wait(10)  # (queued before, some would share its commit)
    finishes = [committer.submit(_finish(f"r{n}", f"{n}".encode()), linger=True) for n in range(20)]
    other = committer.submit(lambda _conn: "other", linger=True)
    finishes += [committer.submit(_finish(f"r{n}", f"{n}".encode()), linger=True) for n in range(20, 40)]
    committer.flush()
    release.set()

    # Then each learns its own result, and each row has its own values, written at once for each
    # run of moves
    assert busy.result(timeout=10) is True
    assert [future.result(timeout=10) for future in finishes] == [Status.COMPLETED] * 40
    assert other.result(timeout=10) == "other"
    rows = _read(db)
    assert all(rows[f"r{n}"].status == "completed" and rows[f"r{n}"].result == f"{n}".encode() for n in range(40))
    assert (statements.joined, statements.alone) == (2, 0)


class Recorded:
    """A joinable write that records how it ran: alone, or joined with others."""

    def __init__(self, runs: list[tuple[str, ...]], name: str, joins: str, row: int) -> None:
        self.runs, self.name, self.joins, self.row = runs, name, joins, row

    def __call__(self, _conn: Any) -> str:
        self.runs.append((self.name,))
        return self.name

    @staticmethod
    def run_joined(_conn: Any, writes: list[Any]) -> list[str]:
        writes[0].runs.append(tuple(write.name for write in writes))
        return [write.name for write in writes]


def test_the_committer_groups_joinable_writes_up_to_a_write_it_cannot_join_or_a_row_written_again(
        db: Database) -> None:
    runs: list[tuple[str, ...]] = []

    def opaque(_conn: Any) -> str:
        runs.append(("opaque",))
        return "opaque"

    batch = [Recorded(runs, "a1", "a", 1), Recorded(runs, "l1", "l", 2), Recorded(runs, "a2", "a", 3),
             opaque, Recorded(runs, "a3", "a", 4), Recorded(runs, "a4", "a", 4), Recorded(runs, "b1", "b", 5)]
    with db.writer_connection() as conn, conn.begin():
        results = run_writes(conn, batch)  # type: ignore[arg-type]

    # Then each group ran once, in the order of its first write; a write that cannot join, and a row
    # written again, end the writes taken together
    assert runs == [("a1", "a2"), ("l1",), ("opaque",), ("a3",), ("a4",), ("b1",)]
    assert results == ["a1", "l1", "a2", "opaque", "a3", "a4", "b1"]


def test_joined_moves_by_a_key_of_two_columns_from_any_of_several_statuses(db: Database) -> None:
    # Given a job's items awaiting delivery in different statuses, one delivered already
    statuses = {0: ItemStatus.PREDICTED, 1: ItemStatus.FAILED_PREDICT, 2: ItemStatus.DELIVERED, 3: ItemStatus.PREDICTED}
    with db.write() as session:
        session.execute(insert(JOB_LOGS), [
            {"job_id": "job", "item_index": index, "created_ms": index, "kind": "item", "level": "info",
             "status": status.value} for index, status in statuses.items()])
    open_item = (ItemStatus.FAILED_PROCESS, ItemStatus.PREDICTED, ItemStatus.FAILED_PREDICT)

    with db.writer_connection() as conn, conn.begin():
        results = Move.run_joined(conn, [Move(JOB_ITEM, ("job", index), open_item, ItemStatus.DELIVERED, {},
                                              otherwise=lambda _conn: "not moved") for index in (3, 2, 0, 1)])

    assert results == [ItemStatus.DELIVERED, "not moved", ItemStatus.DELIVERED, ItemStatus.DELIVERED]
    with db.read() as session:
        stored = dict(session.execute(select(JOB_LOGS.c.item_index, JOB_LOGS.c.status)).all())
    assert stored == {index: "delivered" for index in statuses}
