"""The state machines and `move()`: every status write of the store goes through it, compare-and-set."""

from __future__ import annotations

import ast
import asyncio
import base64
import io
import re
import sys
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import crc32c
import orjson
import pytest
from sqlalchemy import event, insert, select
from sqlalchemy.engine import Engine as SqlEngine

import modelbay
from modelbay.core import states
from modelbay.core.builds import BuildResult
from modelbay.core.clock import as_utc, utcnow
from modelbay.core.errors import IllegalMove, StatusChanged
from modelbay.core.pipelines import Pipelines
from modelbay.core.projects import Caller
from modelbay.core.runs import NewRun
from modelbay.core.states import (
    JOB_ITEM,
    REQUEST,
    REQUESTS,
    RUN,
    ItemStatus,
    JobStatus,
    Machine,
    RequestStatus,
    RunStatus,
    ServiceStatus,
    VersionStatus,
    move,
)
from modelbay.engine import Engine
from modelbay.runtime.base import Call, CallOutcome
from modelbay.settings import Settings
from modelbay.store import driver
from modelbay.store.db import Database
from modelbay.store.tables import JobLogRow, JobRow, RequestRow, RunRow, ServiceRow
from tests.compat.datature.receiver import running_receiver
from tests.core.test_pipeline_requests import TO_X, X
from tests.core.test_scheduler import FakeRuntime

pytestmark = pytest.mark.timeout(120)

STATES = Path(modelbay.__file__).parent / "core" / "states.py"
MACHINES = [value for value in vars(states).values() if isinstance(value, Machine)]


# --- the machines as data --------------------------------------------------------------------

@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_every_machine_names_each_status_once_and_moves_only_between_its_own(machine: Machine) -> None:
    statuses = set(machine.allowed)
    assert statuses == set(type(next(iter(statuses))))  # every status of its enum, and no other
    for moves in machine.allowed.values():
        assert moves <= statuses
    assert "status" in machine.table.c and all(name in machine.table.c for name in machine.key)


def test_stored_status_strings_stay_as_they_were() -> None:
    assert [s.value for s in RequestStatus] == ["pending", "processing", "completed", "failed", "cancelled_pending",
                                               "cancelled"]
    assert [s.value for s in RunStatus] == ["submitted", "pending", "runnable", "starting", "running", "succeeded",
                                           "failed"]
    assert [s.value for s in JobStatus] == ["scheduled", "running", "finished", "stopped", "failed"]
    assert [s.value for s in ItemStatus] == ["failed_process", "predicted", "failed_predict", "delivered",
                                            "failed_deliver"]
    assert [s.value for s in ServiceStatus] == ["in_progress", "ready", "stopped"]
    assert [s.value for s in VersionStatus] == ["unavailable", "building", "available", "failed"]
    assert REQUEST.terminal == {RequestStatus.COMPLETED, RequestStatus.FAILED, RequestStatus.CANCELLED}
    assert RUN.terminal == {RunStatus.SUCCEEDED, RunStatus.FAILED}


# --- move() ----------------------------------------------------------------------------------

@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'test.db'}")
    database.migrate()
    yield database
    database.close()


def _requests(db: Database, *statuses: str) -> list[str]:
    now = utcnow()
    ids = [f"r{i}" for i in range(len(statuses))]
    with db.write() as session:
        session.execute(insert(REQUESTS), [
            {"id": request_id, "project_id": "p", "deployment_id": "d", "version_id": "v", "mode": "batch",
             "status": status, "timeout": 60,
             "priority": 0, "created_at": now} for request_id, status in zip(ids, statuses, strict=True)])
    return ids


def _status_of(db: Database, request_id: str) -> str | None:
    with db.read() as session:
        return session.scalar(select(RequestRow.status).where(RequestRow.id == request_id))


def test_an_allowed_move_writes_the_status_with_its_values(db: Database) -> None:
    [request_id] = _requests(db, "pending")
    started = utcnow()
    with db.write() as session:
        assert move(session, REQUEST, request_id, RequestStatus.PENDING, RequestStatus.PROCESSING,
                    started_at=started) == 1
    with db.read() as session:
        row = session.get(RequestRow, request_id)
    assert row is not None and row.status == "processing" and as_utc(row.started_at) == started


def test_a_move_that_lost_the_race_raises_status_changed_and_writes_nothing(db: Database) -> None:
    [request_id] = _requests(db, "pending")
    with db.write() as session:  # the other writer: a cancel
        move(session, REQUEST, request_id, RequestStatus.PENDING, RequestStatus.CANCELLED)
    with pytest.raises(StatusChanged) as raised, db.write() as session:
        move(session, REQUEST, request_id, RequestStatus.PENDING, RequestStatus.PROCESSING, started_at=utcnow())
    assert raised.value.entity_id == request_id and raised.value.expected == "pending"
    assert _status_of(db, request_id) == "cancelled"


def test_a_move_the_machine_does_not_allow_raises_illegal_move_and_writes_nothing(db: Database) -> None:
    [request_id] = _requests(db, "completed")
    with pytest.raises(IllegalMove, match="a request may not go from completed to processing"), \
            db.write() as session:
        move(session, REQUEST, request_id, RequestStatus.COMPLETED, RequestStatus.PROCESSING)
    with pytest.raises(IllegalMove, match="a run may not go from pending to running"), db.write() as session:
        move(session, RUN, "x", {RunStatus.STARTING, RunStatus.PENDING}, RunStatus.RUNNING)
    assert _status_of(db, request_id) == "completed"


def test_a_move_from_several_statuses_moves_whichever_rows_are_still_in_one(db: Database) -> None:
    ids = _requests(db, "pending", "processing", "completed", "pending")
    with db.write() as session:
        moved = move(session, REQUEST, {"id": ids[:3]}, {RequestStatus.PENDING, RequestStatus.PROCESSING},
                     RequestStatus.FAILED, error_message="gone")
        assert move(session, REQUEST, {"id": ids[2]}, {RequestStatus.PENDING}, RequestStatus.FAILED) == 0
    assert moved == 2
    assert [_status_of(db, request_id) for request_id in ids] == ["failed", "failed", "completed", "pending"]


def test_a_move_via_statuses_checks_each_step_and_writes_once(db: Database) -> None:
    [request_id] = _requests(db, "pending")
    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    with pytest.raises(IllegalMove, match="a request may not go from completed to failed"), db.write() as session:
        move(session, REQUEST, request_id, RequestStatus.PENDING, RequestStatus.FAILED,
             via=[RequestStatus.PROCESSING, RequestStatus.COMPLETED])
    assert _status_of(db, request_id) == "pending" and not [s for s in statements if s.startswith("UPDATE")]
    with db.write() as session:
        conn = session.connection()
        before = conn.connection.dbapi_connection.total_changes  # type: ignore[union-attr]
        assert move(session, REQUEST, request_id, RequestStatus.PENDING, RequestStatus.COMPLETED,
                    via=[RequestStatus.PROCESSING], started_at=utcnow()) == 1
        assert conn.connection.dbapi_connection.total_changes - before == 1  # type: ignore[union-attr]  # one UPDATE
    assert _status_of(db, request_id) == "completed"


def test_a_move_by_a_key_of_two_columns(db: Database) -> None:
    with db.write() as session:
        session.add_all([JobLogRow(job_id="j", item_index=i, created_ms=i, kind="item", level="Info",
                                   status=ItemStatus.PREDICTED.value) for i in range(2)])
    with db.write() as session:
        move(session, JOB_ITEM, ("j", 1), ItemStatus.PREDICTED, ItemStatus.DELIVERED)
    with db.read() as session:
        assert list(session.scalars(select(JobLogRow.status).order_by(JobLogRow.item_index))) == [
            "predicted", "delivered"]


# --- nothing writes a status any other way ---------------------------------------------------

_UPDATE = re.compile(r"^\s*UPDATE\s+(\w+)\s+SET\s+(.*?)(?:\s+WHERE\s+(.*))?$", re.IGNORECASE | re.DOTALL)


class StatusWrites:
    """Every UPDATE setting a `status` column, through SQLAlchemy or a driver statement, and
    whether it came from `move()` comparing the status it expects."""

    def __init__(self) -> None:
        self.tables: list[str] = []
        self.stray: list[str] = []

    def seen(self, sql: str) -> None:
        match = _UPDATE.match(sql)
        if match is None or not re.search(r"(^|,)\s*status\s*=", match[2]):
            return
        table, where = match[1], match[3] or ""
        self.tables.append(table)
        from_move = any(frame.filename == str(STATES) and frame.name in ("move", "run_joined")
                        for frame in traceback.extract_stack())
        compares = re.search(rf"\b{table}\.status\s*(=|IN\b)", where, re.IGNORECASE)
        if not (from_move and compares):
            self.stray.append(sql)


@pytest.fixture
def status_writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[StatusWrites]:
    writes = StatusWrites()

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        writes.seen(statement)

    execute, executemany = driver.DriverStatement.execute, driver.DriverStatement.executemany

    def driver_execute(self: driver.DriverStatement, cursor: Any, row: Any) -> int:
        writes.seen(self.sql)
        return execute(self, cursor, row)

    def driver_executemany(self: driver.DriverStatement, cursor: Any, rows: Any) -> None:
        writes.seen(self.sql)
        executemany(self, cursor, rows)

    fetch_many = driver.DriverStatement.fetch_many

    def driver_fetch_many(self: driver.DriverStatement, cursor: Any, rows: Any) -> list[Any]:
        writes.seen(self.sql)
        return fetch_many(self, cursor, rows)

    monkeypatch.setattr(driver.DriverStatement, "execute", driver_execute)
    monkeypatch.setattr(driver.DriverStatement, "executemany", driver_executemany)
    monkeypatch.setattr(driver.DriverStatement, "fetch_many", driver_fetch_many)
    event.listen(SqlEngine, "before_cursor_execute", on_execute)
    try:
        yield writes
    finally:
        event.remove(SqlEngine, "before_cursor_execute", on_execute)


def test_the_recorder_catches_a_status_written_around_move(db: Database, status_writes: StatusWrites) -> None:
    [request_id] = _requests(db, "pending")
    with db.write() as session:
        row = session.get(RequestRow, request_id)
        assert row is not None
        row.status = "processing"  # the ORM's own UPDATE: no compare, not from move()
    assert status_writes.stray and status_writes.tables == ["requests"]


class HandlerRuntime(FakeRuntime):
    """Answers every call as a handler does (gated like `FakeRuntime`)."""

    async def call(self, instance: Any, call: Call, timeout: float, on_update: Any = None,
                   on_start: Any = None) -> CallOutcome:
        await super().call(instance, call, timeout, on_update)
        envelope = {"status_code": 200, "content_type": "text/plain", "body": "ok", "encoding": "text"}
        return CallOutcome(ok=True, result=orjson.dumps(envelope).decode())


class FakeBuilder:
    """Builds every archive at once into a directory of nothing (the fake runtime runs no code)."""

    def __init__(self, package_dir: Path) -> None:
        self.package_dir = package_dir

    def build(self, archive: Path, revision_id: str, *, handler: str | None, deployment_file: str | None,
              cache_key: str) -> BuildResult:
        return BuildResult(ok=True, log="built", package_dir=self.package_dir, python=Path(sys.executable))


async def _until(check: Any, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def _read(engine: Engine, query: Any) -> Any:
    with engine.db.read() as session:
        return session.scalar(query)


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


def test_every_flow_writes_statuses_only_through_move(tmp_path: Path, status_writes: StatusWrites) -> None:
    async def scenario() -> None:
        engine = Engine(Settings(data_dir=tmp_path / "data", webhook_allow_private_targets=True),
                        runtime=HandlerRuntime())
        engine.revisions._builder = FakeBuilder(tmp_path)  # type: ignore[assignment]
        await engine.start()
        try:
            credentials = engine.projects.create("states")
            project = engine.projects.get(Caller(None), credentials.name)
            # A build: the version goes building -> available, its revision building -> success.
            engine.deployments.create(project, {"name": "d", "input_type": "plain", "output_type": "plain"})
            engine.deployments.create_version(project, "d", {"name": "1", "handler": "main:handler"})
            _, build = engine.revisions.upload(Caller(None), project, "d", "1", io.BytesIO(b"code"))
            await asyncio.wrap_future(build)
            target = engine.deployments.target(project, "d", "1")
            assert target.status == "available"

            # Direct and batch requests, and a cancel of a queued one.
            direct = await engine.requests.direct(target, "x", timeout=60, origin={})
            assert direct.status == "completed", direct.error_message
            runtime = engine.runtime
            assert isinstance(runtime, FakeRuntime)
            runtime.gate = asyncio.Event()
            batch = await engine.requests.create_batch(target, ["a", "b", "c"], timeout=60, priority=0, origin={})
            await engine.requests.cancel(target, batch[-1].id)
            runtime.gate.set()
            await _until(lambda: all(_read(engine, select(RequestRow.status).where(RequestRow.id == r.id))
                                     in ("completed", "cancelled") for r in batch))

            # A pipeline request.
            pipelines = engine.pipelines
            assert isinstance(pipelines, Pipelines)
            pipelines.create(project, {"name": "p", "input_fields": X, "output_fields": X})
            pipelines.create_version(project, "p", {"version": "v1", "objects": [
                {"name": "plus", "reference_type": "operator", "reference_name": "function",
                 "configuration": {"expression": "x + 1", "input_fields": X, "output_fields": X}}], "attachments": [
                {"destination_name": "plus", "sources": [{"source_name": "pipeline_start", "mapping": TO_X}]},
                {"destination_name": "pipeline_end", "sources": [{"source_name": "plus", "mapping": TO_X}]}]})
            piped = await engine.pipeline_requests.direct(project, pipelines.plan(project, "p", None), {"x": 1},
                                                          timeout=60, origin={})
            assert piped.status == "completed"

            # A run.
            run = await engine.runs.create(target, NewRun({"a": 1}, None, 0, None, {}, None))
            await _until(lambda: _read(engine, select(RunRow.status).where(RunRow.id == run.id)) == "succeeded")

            # A service: up, rescaled, stopped and started again.
            service = await engine.services.create(target, {})
            ready = select(ServiceRow.status).where(ServiceRow.id == service.id)
            await _until(lambda: _read(engine, ready) == "ready")
            await engine.services.update(service.deployment_id, service.id, {"instance_number": 2})
            await engine.services.set_running(service.deployment_id, service.id, False)
            await engine.services.set_running(service.deployment_id, service.id, True)
            await _until(lambda: _read(engine, ready) == "ready")

            # A job: a dataset uploaded, its items predicted and delivered; and a job stopped before it began.
            lines = b'{"n": 1}\n{"n": 2}\n'
            crc = base64.b64encode(crc32c.crc32c(lines).to_bytes(4, "big")).decode()
            dataset = engine.datasets.create(project.id, "items", len(lines), crc)
            await engine.datasets.receive(project.id, dataset.id, _chunks(lines))
            with running_receiver() as receiver:
                hook = engine.webhooks.create(project.id, "h", receiver.url, receiver.secret, 0, 50)
                job = engine.jobs.create(project, "job", dataset.id, target.deployment_id, [hook.id], None, None)
                await _until(lambda: _read(engine, select(JobRow.status).where(JobRow.id == job.id)) == "finished")
                later = engine.jobs.create(project, "later", dataset.id, target.deployment_id, [hook.id],
                                           utcnow().replace(year=utcnow().year + 1), None)
                await engine.jobs.set_stop_time(project.id, later.id, utcnow())
                assert engine.jobs.get(project.id, later.id).status == "stopped"
        finally:
            await engine.close()

    asyncio.run(scenario())
    assert status_writes.stray == []
    assert set(status_writes.tables) >= {"requests", "pipeline_requests", "runs", "services", "versions", "revisions",
                                         "datasets", "jobs", "job_logs", "deliveries"}


def test_no_code_outside_states_assigns_a_status_column() -> None:
    """A static complement: no `<row>.status = …`, and no `update(…).values(status=…)`, outside states.py."""
    # A cached copy the serving path reads, changed after `move()` wrote the row: no write of the store.
    allowed = {("core/services.py", "_reconcile")}
    found = []
    root = Path(modelbay.__file__).parent
    for path in sorted(root.rglob("*.py")):
        if path == STATES:
            continue
        relative = str(path.relative_to(root))
        tree = ast.parse(path.read_text())
        for function in [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            for node in ast.walk(function):
                targets = node.targets if isinstance(node, ast.Assign) else \
                    [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
                for item in targets:
                    for target in item.elts if isinstance(item, ast.Tuple) else [item]:
                        if (isinstance(target, ast.Attribute) and target.attr == "status"
                                and not (isinstance(target.value, ast.Name) and target.value.id == "self")
                                and (relative, function.name) not in allowed):
                            found.append(f"{relative}:{node.lineno}")
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "values"
                        and any(keyword.arg == "status" for keyword in node.keywords)
                        and any(isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                                and call.func.id == "update" for call in ast.walk(node.func.value))):
                    found.append(f"{relative}:{node.lineno}")
    assert found == []
