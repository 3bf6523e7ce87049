"""The rules of runs: statuses, retry counts, environments and how input reaches code."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from modelbay.core.builds import BuildResult
from modelbay.core.bus import Bus
from modelbay.core.clock import utcnow
from modelbay.core.deployments import Deployments, Target
from modelbay.core.errors import InvalidInput
from modelbay.core.journal import MAX_LINE_CHARS, MAX_LINES_PER_CALL, Journal, split_lines
from modelbay.core.nodes import NODES
from modelbay.core.projects import Caller, Projects
from modelbay.core import runs as runs_module
from modelbay.core.runs import Claim, NewRun, call_input, check_environment, check_retry_count
from modelbay.core.states import REVISION, RUN, VERSION, RevisionStatus, RunStatus, VersionStatus, move
from modelbay.engine import Engine, open_database
from modelbay.runtime import wire
from modelbay.runtime.base import Call, CallOutcome
from modelbay.settings import Settings
from modelbay.store.tables import RUNS_CLAIMED, RevisionRow, RunRow, VersionRow
from tests.core.test_scheduler import FakeRuntime
from tests.runtime.test_local import wait_for_async

ALLOWED, TERMINAL = RUN.allowed, RUN.terminal

BASE = Target(
    project_id="p", project_name="p", deployment_id="d", deployment_name="d", version_id="v", version_name="1",
    input_type="plain", output_type="plain", input_fields=(), output_fields=(), status="available",
    retention_mode="full", minimum_instances=0, maximum_instances=2, maximum_idle_time=300,
    environment_variables={}, handler="main:handler", revision_id="r", archive_key="k", has_requests_method=False,
)


def test_terminal_statuses_go_nowhere_and_every_other_can_fail() -> None:
    for status in RunStatus:
        if status in TERMINAL:
            assert ALLOWED[status] == frozenset()
        else:
            assert RunStatus.FAILED in ALLOWED[status]


def test_a_retry_goes_back_to_runnable_and_a_restart_back_to_pending() -> None:
    assert RunStatus.RUNNABLE in ALLOWED[RunStatus.RUNNING]
    assert RunStatus.PENDING in ALLOWED[RunStatus.RUNNING]
    assert RunStatus.RUNNING not in ALLOWED[RunStatus.PENDING]  # a run starts an instance first


@pytest.mark.parametrize("value", [-1, 10, 2.5, "3", True])
def test_retry_count_outside_0_to_9_is_refused(value: object) -> None:
    with pytest.raises(InvalidInput):
        check_retry_count(value)


def test_retry_count_defaults_to_5() -> None:
    assert check_retry_count(None) == 5 and check_retry_count(0) == 0 and check_retry_count(9) == 9


def test_environment_values_become_strings_and_bad_ones_are_refused() -> None:
    assert check_environment({"A": 1, "B": True, "C": "x"}) == {"A": "1", "B": "true", "C": "x"}
    for bad in ([], {"": "x"}, {"A=B": "x"}, {"A": None}, {"A": {"b": 1}}, {"A": "nul\0"}):
        with pytest.raises(InvalidInput):
            check_environment(bad)


def test_handler_code_gets_the_input_as_a_json_body_with_its_environment() -> None:
    data, context = call_input(BASE, {"a": 1}, {"E": "1"})
    assert data == '{"a":1}'
    assert context == {wire.ENVIRONMENT_KEY: {"E": "1"},
                       wire.HTTP_KEY: {"content_type": "application/json", "encoding": "text"}}


def test_deployment_class_code_gets_the_input_as_its_own_input_type() -> None:
    structured = dataclasses.replace(BASE, handler=None, input_type="structured")
    assert call_input(structured, {"x": 1}, {}) == ({"x": 1}, {})
    plain = dataclasses.replace(BASE, handler=None)
    assert call_input(plain, {"x": 1}, {}) == ('{"x":1}', {})
    assert call_input(plain, "text", {}) == ("text", {})


# --- a run driven through the engine, on a fake runtime ------------------------------------


class ScriptedRuntime(FakeRuntime):
    """Answers each call with the next outcome of a script (ok or not), handler-style."""

    def __init__(self, script: list[bool]) -> None:
        super().__init__()
        self.script = list(script)
        self.calls: list[Call] = []

    async def call(self, instance: Any, call: Call, timeout: float, on_update: Any = None,
                   on_start: Any = None) -> CallOutcome:
        self.calls.append(call)
        ok = self.script.pop(0)
        if not ok:
            return CallOutcome(ok=False, error="deliberate", logs="it went wrong\n")
        envelope = {"status_code": 200, "content_type": "text/plain", "body": "", "encoding": "text"}
        return CallOutcome(ok=True, result=json.dumps(envelope), logs="all good\n")


def handler_version(engine: Engine, tmp_path: Path, maximum_instances: int | None = None,
                    others: tuple[Engine, ...] = ()) -> Target:
    """A project "runs" with a handler deployment "d" whose version "1" has code "built" without a
    builder (on `engine`, and ready on the `others` too); the version's target."""
    _, revision_id = building_version(engine)
    engine.revisions._finish(revision_id, build_result(tmp_path, True))
    for other in others:  # what another node would unpack from the archive
        other.revisions._local[revision_id] = (tmp_path, Path(sys.executable))
    project = engine.projects.get(Caller(None), "runs")
    if maximum_instances is not None:
        engine.deployments.update_version(project, "d", "1", {"maximum_instances": maximum_instances})
    return engine.deployments.target(project, "d", "1")


def drive(tmp_path: Path, script: list[bool], retry_count: int) -> tuple[list[RunStatus], RunRow, ScriptedRuntime,
                                                                         list[str]]:
    """Create a run of a handler version on an engine whose runtime follows `script`; wait for its end."""
    runtime = ScriptedRuntime(script)

    async def scenario() -> tuple[list[RunStatus], RunRow, list[str]]:
        engine = Engine(Settings(data_dir=tmp_path / "data"), runtime=runtime)
        await engine.start()
        try:
            target = handler_version(engine, tmp_path)
            statuses: list[RunStatus] = []
            done = asyncio.Event()

            def seen(_run_id: str, status: RunStatus) -> None:
                statuses.append(status)
                if status in TERMINAL:
                    done.set()

            engine.runs.status_changed.add(seen)
            new = NewRun({"a": 1}, None, retry_count, None, {"E": "x"}, None)
            row = await engine.runs.create(target, new)
            await asyncio.wait_for(done.wait(), 10)
            lines = [line.message for line in engine.journal.page(row.id)]
            return statuses, engine.runs.get(row.deployment_id, row.id), lines
        finally:
            await engine.close()

    statuses, row, lines = asyncio.run(scenario())
    return statuses, row, runtime, lines


def test_printed_lines_are_kept_bounded_in_length_and_number_with_the_last_ones_kept() -> None:
    assert split_lines("a\n\n  \nb\n") == ["a", "b"]
    assert split_lines("x" * (MAX_LINE_CHARS + 5)) == ["x" * MAX_LINE_CHARS]
    lines = split_lines("".join(f"{i}\n" for i in range(MAX_LINES_PER_CALL + 7)))
    assert lines[0] == "(7 earlier lines left out)" and lines[1] == "7"
    assert len(lines) == MAX_LINES_PER_CALL + 1 and lines[-1] == str(MAX_LINES_PER_CALL + 6)


def test_a_run_walks_every_status_in_order(tmp_path: Path) -> None:
    statuses, row, runtime, lines = drive(tmp_path, [True], retry_count=5)
    assert statuses == [RunStatus.PENDING, RunStatus.RUNNABLE, RunStatus.STARTING, RunStatus.RUNNING,
                        RunStatus.SUCCEEDED]
    assert row.status == "succeeded" and row.attempts == 1
    [call] = runtime.calls
    assert call.data == '{"a":1}' and call.context[wire.ENVIRONMENT_KEY] == {"E": "x"}
    assert lines == ["Attempt 1 of 6 is starting", "all good", "Attempt 1 of 6 succeeded"]


def test_a_failed_attempt_goes_back_to_runnable_until_the_retries_are_used_up(tmp_path: Path) -> None:
    statuses, row, runtime, lines = drive(tmp_path, [False, False, False], retry_count=2)
    attempt = [RunStatus.STARTING, RunStatus.RUNNING]
    assert statuses == [RunStatus.PENDING, RunStatus.RUNNABLE, *attempt, RunStatus.RUNNABLE, *attempt,
                        RunStatus.RUNNABLE, *attempt, RunStatus.FAILED]
    assert row.status == "failed" and row.attempts == 3 and row.error_message == "deliberate"
    assert len(runtime.calls) == 3
    assert lines.count("it went wrong") == 3 and lines[-1] == "Attempt 3 of 3 failed: deliberate"


def test_log_lines_of_runs_that_are_gone_are_swept_and_the_others_kept(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    db = open_database(settings)  # no engine: its own sweeper would race this one
    journal = Journal(db)
    projects = Projects(db, "admin", Bus())
    deployments = Deployments(db, Bus())

    async def scenario() -> tuple[int, int, int]:
        project = projects.get(Caller(None), projects.create("sweep").name)
        deployments.create(project, {"name": "d", "input_type": "plain", "output_type": "plain"})
        version = deployments.create_version(project, "d", {"name": "1", "handler": "main:handler"})
        now = utcnow()
        with db.write() as session:
            session.add(RunRow(id="kept", project_id=project.id, deployment_id=version.deployment_id,
                               version_id=version.id, status="succeeded", retry_count=0, attempts=1,
                               environment={}, created_at=now, modified_at=now))
        await journal.append("kept", ["a", "b"])
        await journal.append("gone", ["c"])
        removed = journal.sweep_orphans()
        return removed, len(journal.page("kept")), len(journal.page("gone"))

    try:
        assert asyncio.run(scenario()) == (1, 2, 0)
    finally:
        db.close()


def test_a_run_left_claimed_by_a_server_from_before_nodes_is_queued_again_at_start(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")

    async def scenario() -> tuple[RunRow, list[str]]:
        engine = Engine(settings, runtime=ScriptedRuntime([]))
        await engine.start()
        try:
            target = handler_version(engine, tmp_path)
            now = utcnow()
            with engine.db.write() as session:  # running when that server died: no owner
                session.add(RunRow(id="old", project_id=target.project_id, deployment_id=target.deployment_id,
                                   version_id=target.version_id, status="running", retry_count=1, attempts=1,
                                   environment={}, created_at=now, modified_at=now))
        finally:
            await engine.close()
        engine = Engine(settings, runtime=ScriptedRuntime([True]))
        engine.revisions._local["r"] = (tmp_path, Path(sys.executable))  # as unpacked before the restart
        await engine.start()
        try:
            done = asyncio.Event()
            engine.runs.status_changed.add(lambda _run_id, status: done.set() if status in TERMINAL else None)
            await asyncio.wait_for(done.wait(), 10)
            return engine.runs.get(target.deployment_id, "old"), [line.message for line in engine.journal.page("old")]
        finally:
            await engine.close()

    row, lines = asyncio.run(scenario())
    assert (row.status, row.attempts) == ("succeeded", 2)
    assert lines[0] == "The server restarted; the run is queued again"



class GatedRuntime(ScriptedRuntime):
    """Succeeds every call once `gate` is set; counts the calls under way at once."""

    def __init__(self) -> None:
        super().__init__([])
        self.gate = asyncio.Event()
        self.under_way = self.most_at_once = 0

    async def call(self, instance: Any, call: Call, timeout: float, on_update: Any = None,
                   on_start: Any = None) -> CallOutcome:
        self.under_way += 1
        self.most_at_once = max(self.most_at_once, self.under_way)
        try:
            await self.gate.wait()
            self.script.append(True)
            return await super().call(instance, call, timeout)
        finally:
            self.under_way -= 1


@pytest.mark.parametrize("another_node", [False, True])
def test_runs_waiting_for_a_place_on_a_node_alone_are_held_there_and_each_starts_as_the_one_before_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, another_node: bool) -> None:
    runtime = GatedRuntime()
    locks: list[str] = []
    monkeypatch.setattr(runs_module, "lock_until_commit", lambda _conn, scope: locks.append(scope))

    async def scenario() -> tuple[list[tuple[str, str | None]], dict[str, list[str]], list[Any], str]:
        engine = Engine(Settings(data_dir=tmp_path / "data"), runtime=runtime)
        await engine.start()
        try:
            # Given a version that runs one run at a time (with or without another node alive beside
            # this one), and four runs of it, the first one running
            target = handler_version(engine, tmp_path, maximum_instances=1)
            if another_node:
                with engine.db.write() as session:
                    session.execute(NODES.insert().values(id="other", name="other", started_at=utcnow(),
                                                          heartbeat_at=utcnow()))
                engine.nodes.recover_lapsed()  # a recovery pass: it sees the other node live
            ended: list[str] = []
            all_ended = asyncio.Event()

            def seen(run_id: str, status: RunStatus) -> None:
                if status in TERMINAL:
                    ended.append(run_id)
                    if len(ended) == 4:
                        all_ended.set()

            engine.runs.status_changed.add(seen)
            ids = [(await engine.runs.create(target, NewRun({"n": n}, None, 0, None, {}, None))).id for n in range(4)]
            waiting = f"SELECT status, owner FROM runs WHERE id IN ({', '.join(repr(i) for i in ids[1:])})"

            def all_waiting() -> list[tuple[str, str | None]] | None:
                with engine.db.read() as session:
                    held = [tuple(row) for row in session.execute(text(waiting))]
                return held if runtime.under_way == 1 and [status for status, _ in held] == ["pending"] * 3 else None

            held = await wait_for_async(all_waiting)
            # When the first one's call ends
            runtime.gate.set()
            await asyncio.wait_for(all_ended.wait(), 10)
            lines = {run_id: [line.message for line in engine.journal.page(run_id)] for run_id in ids}
            rows = [engine.runs.get(target.deployment_id, run_id) for run_id in ids]
            return held, lines, [(row.status, row.attempts) for row in rows], engine.nodes.id
        finally:
            await engine.close()

    held, lines, rows, node_id = asyncio.run(scenario())
    # Then the other three ran one after another, in the order they came: on a node alone, each held
    # there while it waited, then started in the place of the one before; beside another node, each
    # claimed a place (a node handing places on would keep them while it has runs waiting)
    assert held == [("pending", None if another_node else node_id)] * 3
    assert runtime.most_at_once == 1
    assert [json.loads(call.data)["n"] for call in runtime.calls] == [0, 1, 2, 3]
    assert rows == [("succeeded", 1)] * 4
    assert all(log == ["Attempt 1 of 1 is starting", "all good", "Attempt 1 of 1 succeeded"] for log in lines.values())
    assert len(locks) == (4 if another_node else 1)


def test_a_run_another_node_holds_pending_is_left_to_it_until_that_node_is_dead(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], int, list[str], tuple[str, str | None]]:
        engine = Engine(Settings(data_dir=tmp_path / "data"), runtime=ScriptedRuntime([]))
        await engine.start()
        try:
            target = handler_version(engine, tmp_path)
            now = utcnow()
            with engine.db.write() as session:
                session.add(RunRow(id="theirs", project_id=target.project_id, deployment_id=target.deployment_id,
                                   version_id=target.version_id, status="pending", owner="other", retry_count=0,
                                   attempts=0, environment={}, created_at=now, modified_at=now))
            before = engine.runs._queued()  # what this node's pass picks up
            with engine.db.write() as session:
                given_back = engine.runs._give_back(session.connection(), ["other"])
            after = engine.runs._queued()
            row = engine.runs.get(target.deployment_id, "theirs")
            return before, given_back, after, (row.status, row.owner)
        finally:
            await engine.close()

    before, given_back, after, theirs = asyncio.run(scenario())
    assert before == []
    assert given_back == 1 and theirs == ("pending", None)
    assert after == ["theirs"]

# --- runs of a version whose code is still building ----------------------------------------


def building_version(engine: Engine) -> tuple[Target, str]:
    """A handler version whose one upload is building (no builder runs it); its target and revision id."""
    project = engine.projects.get(Caller(None), engine.projects.create("runs").name)
    engine.deployments.create(project, {"name": "d", "input_type": "plain", "output_type": "plain"})
    version = engine.deployments.create_version(project, "d", {"name": "1", "handler": "main:handler"})
    with engine.db.write() as session:
        session.add(RevisionRow(id="r", version_id=version.id, status="building", owner=engine.nodes.id,
                                archive_key="k", created_at=utcnow()))
        row = session.get(VersionRow, version.id)
        assert row is not None
        row.latest_revision_id = "r"
        move(session, VERSION, version.id, VersionStatus.UNAVAILABLE, VersionStatus.BUILDING)
    engine.deployments.forget_targets()
    return engine.deployments.target(project, "d", "1"), "r"


def build_result(tmp_path: Path, ok: bool) -> BuildResult:
    if ok:
        return BuildResult(ok=True, log="Build succeeded\n", package_dir=tmp_path, python=Path(sys.executable))
    return BuildResult(ok=False, log="Build failed: no wheel for torch\n", package_dir=None, python=None)


def run_while_building(tmp_path: Path, ok: bool) -> tuple[RunRow, list[RunStatus], list[str]]:
    """Create a run while its version builds, then end the build as `ok` says; wait for the run's end."""

    async def scenario() -> tuple[RunRow, list[RunStatus], list[str]]:
        engine = Engine(Settings(data_dir=tmp_path / "data"), runtime=ScriptedRuntime([True]))
        await engine.start()
        try:
            target, revision_id = building_version(engine)
            statuses: list[RunStatus] = []
            done = asyncio.Event()

            def seen(_run_id: str, status: RunStatus) -> None:
                statuses.append(status)
                if status in TERMINAL:
                    done.set()

            engine.runs.status_changed.add(seen)
            row = await engine.runs.create(target, NewRun(None, None, 0, None, {}, None))
            assert row.status == "submitted"
            await asyncio.sleep(0)  # its task runs, and finds the build still going
            assert statuses == [] and engine.runs.get(row.deployment_id, row.id).status == "submitted"
            # The build ends on a build thread, as it does in `Revisions`.
            await asyncio.to_thread(engine.revisions._finish, revision_id, build_result(tmp_path, ok))
            await asyncio.wait_for(done.wait(), 10)
            lines = [line.message for line in engine.journal.page(row.id)]
            return engine.runs.get(row.deployment_id, row.id), statuses, lines
        finally:
            await engine.close()

    return asyncio.run(scenario())


def test_a_run_created_while_its_code_builds_stays_submitted_and_starts_when_the_build_succeeds(
    tmp_path: Path,
) -> None:
    row, statuses, lines = run_while_building(tmp_path, ok=True)
    assert statuses == [RunStatus.PENDING, RunStatus.RUNNABLE, RunStatus.STARTING, RunStatus.RUNNING,
                        RunStatus.SUCCEEDED]
    assert row.status == "succeeded" and row.attempts == 1
    assert lines[0] == "The version's code is still building; the run starts when the build ends"


def test_a_run_created_while_its_code_builds_fails_with_the_builds_reason_when_it_fails(tmp_path: Path) -> None:
    row, statuses, lines = run_while_building(tmp_path, ok=False)
    assert statuses == [RunStatus.FAILED]
    assert row.attempts == 0
    assert row.error_message == "The build of version '1' (revision r) failed: Build failed: no wheel for torch"
    assert lines[-1] == row.error_message


@pytest.mark.parametrize("ok", [True, False])
def test_a_run_that_waited_for_a_build_that_ended_while_the_server_was_down_goes_on_at_start(
    tmp_path: Path, ok: bool
) -> None:
    settings = Settings(data_dir=tmp_path / "data")

    async def scenario() -> RunRow:
        engine = Engine(settings, runtime=ScriptedRuntime([]))
        await engine.start()
        try:
            target, revision_id = building_version(engine)
            row = await engine.runs.create(target, NewRun(None, None, 0, None, {}, None))
        finally:
            await engine.close()
        engine = Engine(settings, runtime=ScriptedRuntime([True]))
        # The build ended before this server started: no one is told of it but the store.
        with engine.db.write() as session:  # (the first server queued it again when it stopped)
            move(session, REVISION, revision_id, RevisionStatus.QUEUED, RevisionStatus.BUILDING,
                 owner=engine.nodes.id)
        engine.revisions._finish(revision_id, build_result(tmp_path, ok))
        await engine.start()
        try:
            done = asyncio.Event()
            engine.runs.status_changed.add(lambda _run_id, status: done.set() if status in TERMINAL else None)
            await asyncio.wait_for(done.wait(), 10)
            return engine.runs.get(row.deployment_id, row.id)
        finally:
            await engine.close()

    row = asyncio.run(scenario())
    assert row.status == ("succeeded" if ok else "failed")
    if not ok:
        assert row.error_message is not None and "no wheel for torch" in row.error_message


# --- claims queued together -------------------------------------------------------------------


def test_a_claim_counts_the_runs_other_nodes_claimed_and_the_places_its_own_node_holds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a version that runs at most 3 runs, one claimed by another node, one by this node (whose
    # end is not written yet), and three queued runs
    settings = Settings(data_dir=tmp_path / "data")

    async def version() -> Target:
        engine = Engine(settings, runtime=ScriptedRuntime([]))
        await engine.start()
        try:
            return handler_version(engine, tmp_path, maximum_instances=3)
        finally:
            await engine.close()

    target = asyncio.run(version())
    db = open_database(settings)
    now = utcnow()
    runs = {"theirs": ("starting", "there", 1), "mine": ("running", "here", 1), "a": ("pending", None, 0),
            "b": ("pending", None, 1), "c": ("submitted", None, 0)}
    with db.write() as session:
        session.add_all(RunRow(id=run_id, project_id=target.project_id, deployment_id=target.deployment_id,
                               version_id=target.version_id, status=status, owner=owner, retry_count=2,
                               attempts=attempts, environment={}, created_at=now, modified_at=now)
                        for run_id, (status, owner, attempts) in runs.items())
    locks: list[str] = []
    monkeypatch.setattr(runs_module, "lock_until_commit", lambda _conn, scope: locks.append(scope))

    # When this node claims three runs in one commit, holding one, two, then three places
    def claim(run_id: str, old: RunStatus, held: int) -> Claim:
        return Claim(run_id, old, target.version_id, 3, "here", 3, held)

    release = threading.Event()
    busy = db.committer.submit(lambda _conn: release.wait(10))
    futures = [db.committer.submit(write, linger=True) for write in (
        claim("a", RunStatus.PENDING, 1), claim("b", RunStatus.PENDING, 2), claim("c", RunStatus.SUBMITTED, 3))]
    db.committer.flush()
    release.set()
    assert busy.result(timeout=10) is True

    # Then a and b start their next attempts (the other node's run and this node's places make 3),
    # and c waits pending
    assert [future.result(timeout=10) for future in futures] == [1, 2, None]
    with db.read() as session:
        rows = {row.id: row for row in session.query(RunRow)}
    assert {run_id: (row.status, row.owner, row.attempts) for run_id, row in rows.items()} == {
        "theirs": ("starting", "there", 1), "mine": ("running", "here", 1), "a": ("starting", "here", 1),
        "b": ("starting", "here", 2), "c": ("pending", None, 0)}
    journal = Journal(db)
    assert [line.message for line in journal.page("a")] == ["Attempt 1 of 3 is starting"]
    assert [line.message for line in journal.page("b")] == ["Attempt 2 of 3 is starting"]
    assert journal.page("c") == []
    # On PostgreSQL the claims joined: one turn of the version's lock for all three
    assert len(locks) == (3 if db.is_sqlite else 1)
    db.close()


def test_the_statuses_of_the_claimed_runs_index_are_those_of_a_claimed_run() -> None:
    assert RUNS_CLAIMED == "status IN ({})".format(", ".join(f"'{status.value}'" for status in runs_module.CLAIMED))


def test_a_claim_counts_its_versions_claimed_runs_in_the_partial_index_of_them(db: Any) -> None:
    # The claims' reads of each database (PostgreSQL joins a batch's claims into one).
    reads = runs_module._claim_reads if db.is_sqlite else runs_module._joined_claim_reads
    statement = reads(db.engine.dialect)
    parameters = statement.parameters({"version_id": "v", "node_id": "n", "run_id": "a", "run_ids": ["a"]})
    with db.writer_connection() as conn, conn.begin():
        if not db.is_sqlite:
            conn.execute(text("SET LOCAL enable_seqscan = off"))  # an empty table: the planner's choice of index
        cursor = conn.connection.driver_connection.cursor()
        cursor.execute(("EXPLAIN QUERY PLAN " if db.is_sqlite else "EXPLAIN ") + statement.sql, parameters)
        plan = str(cursor.fetchall())
    assert "ix_runs_claimed" in plan
