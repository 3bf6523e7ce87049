"""Two nodes on one PostgreSQL: a job or a batch pipeline request that one accepted goes on on the
other when the first dies, and a job stopped through one node stops on the node running it.

Each node is an engine on an event loop of its own thread. A node "dies" as a kill -9 would leave
it: its heartbeat and its job and pipeline tasks stop, nothing is written on its way out, and it
is not closed before the test has seen the other node take over.
"""

from __future__ import annotations

import asyncio
import base64
import re
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import crc32c
import orjson
import pytest
from sqlalchemy import select

from modelbay.core.clock import utcnow
from modelbay.core.projects import Caller
from modelbay.core.states import VERSION, VersionStatus, move
from modelbay.engine import Engine
from modelbay.runtime.base import Call, CallOutcome
from modelbay.settings import Settings
from modelbay.store.db import Database
from modelbay.store.tables import JobLogRow, JobRow, PipelineRequestRow, ProjectRow, RevisionRow, VersionRow
from tests.compat.datature.receiver import running_receiver
from tests.core.test_pipeline_requests import TO_X, X
from tests.core.test_scheduler import FakeRuntime

pytestmark = pytest.mark.postgresql_only("several nodes share one database only on PostgreSQL")

#: Short, so a dead node is noticed (and its work given back) within seconds; long enough for a
#: node on a busy machine never to miss a heartbeat by that much and be declared dead while alive.
LEASE_S = 4.0

ITEMS = 200

T = TypeVar("T")

#: What `Jobs.create` is given.
JobArgs = tuple[ProjectRow, str, str, str, list[str], None, None]


class SlowHandlerRuntime(FakeRuntime):
    """Answers each call as a handler does, after a pause. Notes which node predicted which item,
    and each item it predicted although the job's log had its outcome already."""

    def __init__(self, node: str, predicted: list[tuple[str, int]], again: list[tuple[str, int]]) -> None:
        super().__init__()
        self.node = node
        self.predicted = predicted
        self.again = again
        self.db: Database | None = None

    async def call(self, instance: Any, call: Call, timeout: float, on_update: Any = None,
                   on_start: Any = None) -> CallOutcome:
        await asyncio.sleep(0.05)
        if found := re.search(r"""['"]n['"]: (\d+)""", str(call.data)):  # the item, however the call wraps it
            item = int(found[1])
            self.predicted.append((self.node, item))
            assert self.db is not None
            with self.db.read() as session:
                if session.scalar(select(JobLogRow.item_index).where(JobLogRow.item_index == item)) is not None:
                    self.again.append((self.node, item))
        envelope = {"status_code": 200, "content_type": "text/plain", "body": "ok", "encoding": "text"}
        return CallOutcome(ok=True, result=orjson.dumps(envelope).decode())


class Node:
    """An engine on an event loop of its own thread, as a server's would be: one node's work never
    holds up the other's heartbeat."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the node's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=60)

    def call(self, fn: Callable[[], T]) -> T:
        """Run a function on the node's loop (where the engine's own calls run)."""
        async def call() -> T:
            return fn()
        return self.run(call())

    def kill(self) -> None:
        """Leave the node as a kill -9 would: no heartbeat, no job or pipeline request running on."""
        engine = self.engine

        async def kill() -> None:
            for task in engine.jobs._background.tasks | engine.pipeline_requests._batch_tasks.tasks:
                task.cancel()
            await engine.jobs._background.close()
            await engine.pipeline_requests._batch_tasks.close()
            await engine.nodes.stop_beating()
            await engine.deliveries.close()
            # What it had handed to its committer before it died is in the store (or would have
            # been lost with the process): wait for it, so the test knows what was committed.
            await engine.db.committer.submit_async(lambda conn: None)

        self.run(kill())

    def close(self) -> None:
        self.run(self.engine.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def _until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _read(engine: Engine, query: Any) -> Any:
    with engine.db.read() as session:
        return session.scalar(query)


def _logged_items(engine: Engine, job_id: str) -> list[int]:
    with engine.db.read() as session:
        return list(session.scalars(select(JobLogRow.item_index).where(
            JobLogRow.job_id == job_id, JobLogRow.item_index.is_not(None)).order_by(JobLogRow.item_index)))


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


@contextmanager
def _two_nodes(tmp_path: Path, database_url: str, predicted: list[tuple[str, int]],
               again: list[tuple[str, int]]) -> Iterator[tuple[Node, Node]]:
    """Nodes a and b: two engines with their own data dirs on one database, each on its own loop."""
    nodes = []
    for name in ("a", "b"):
        runtime = SlowHandlerRuntime(name, predicted, again)
        engine = Engine(Settings(data_dir=tmp_path / name, database_url=database_url, node_lease_s=LEASE_S,
                                 webhook_allow_private_targets=True), runtime=runtime)
        runtime.db = engine.db
        # Revision "r" (see `_job_setup`) as every node would unpack it: the fake runtime runs no code.
        engine.revisions._local["r"] = (tmp_path, Path(sys.executable))
        nodes.append(Node(engine))
    try:
        for node in nodes:
            node.run(node.engine.start())
        yield nodes[0], nodes[1]
    finally:
        for node in reversed(nodes):
            node.close()


def _job_setup(receiver: Any, package_dir: Path) -> Callable[[Engine], Awaitable[tuple[ProjectRow, JobArgs]]]:
    """A project with a handler deployment, a dataset of `ITEMS` items and a webhook: what a job needs."""
    async def prepare(engine: Engine) -> tuple[ProjectRow, JobArgs]:
        project = engine.projects.get(Caller(None), engine.projects.create("cluster").name)
        engine.deployments.create(project, {"name": "d", "input_type": "structured", "output_type": "plain",
                                            "input_fields": [{"name": "n", "data_type": "int"}]})
        version = engine.deployments.create_version(project, "d", {"name": "1", "handler": "main:handler",
                                                                   "maximum_instances": 1})
        with engine.db.write() as session:  # code "built" without a builder (the fake runtime runs none)
            session.add(RevisionRow(id="r", version_id=version.id, status="success", archive_key="k",
                                    package_dir=str(package_dir), python=sys.executable, created_at=utcnow()))
            move(session, VERSION, version.id, VersionStatus.UNAVAILABLE, VersionStatus.BUILDING)
            move(session, VERSION, version.id, VersionStatus.BUILDING, VersionStatus.AVAILABLE)
            session.get(VersionRow, version.id).active_revision_id = "r"  # type: ignore[union-attr]
        engine.deployments.forget_targets()
        target = engine.deployments.target(project, "d", "1")
        lines = b"".join(orjson.dumps({"n": i}) + b"\n" for i in range(ITEMS))
        crc = base64.b64encode(crc32c.crc32c(lines).to_bytes(4, "big")).decode()
        dataset = engine.datasets.create(project.id, "items", len(lines), crc)
        await engine.datasets.receive(project.id, dataset.id, _chunks(lines))
        hook = engine.webhooks.create(project.id, "h", receiver.url, receiver.secret, 0, 50)
        return project, (project, "job", dataset.id, target.deployment_id, [hook.id], None, None)

    return prepare


def test_a_job_whose_node_dies_is_finished_by_another_with_every_item_run_once(
        tmp_path: Path, database_url: str) -> None:
    predicted: list[tuple[str, int]] = []
    again: list[tuple[str, int]] = []
    with running_receiver() as receiver, _two_nodes(tmp_path, database_url, predicted, again) as (a, b):
        # Given a job running on node a, part-way
        _, job_args = a.run(_job_setup(receiver, tmp_path)(a.engine))
        job = a.call(lambda: a.engine.jobs.create(*job_args))
        _until(lambda: len(_logged_items(a.engine, job.id)) >= 10)
        assert _read(a.engine, select(JobRow.owner).where(JobRow.id == job.id)) == a.engine.nodes.id

        # When node a dies
        a.kill()
        committed_by_a = set(_logged_items(a.engine, job.id))
        assert 10 <= len(committed_by_a) < ITEMS

        # Then node b takes the job over once a's lease has lapsed, and finishes it
        _until(lambda: _read(b.engine, select(JobRow.status).where(JobRow.id == job.id)) == "finished")
        assert _read(b.engine, select(JobRow.owner).where(JobRow.id == job.id)) == b.engine.nodes.id
        # predicting what a left (a write a had already handed over may still have landed after
        # the kill: only what neither predicted would be lost),
        by_b = {n for node, n in predicted if node == "b"}
        assert by_b and not by_b & committed_by_a
        assert set(range(ITEMS)) <= by_b | {n for node, n in predicted if node == "a"}
        # with every item once in the job's log, and none predicted once its outcome was committed.
        assert _logged_items(b.engine, job.id) == list(range(ITEMS))
        assert again == []


def test_a_job_stopped_through_another_node_stops_on_the_node_running_it(
        tmp_path: Path, database_url: str) -> None:
    predicted: list[tuple[str, int]] = []
    with running_receiver() as receiver, _two_nodes(tmp_path, database_url, predicted, []) as (a, b):
        # Given a job running on node a
        project, job_args = a.run(_job_setup(receiver, tmp_path)(a.engine))
        job = a.call(lambda: a.engine.jobs.create(*job_args))
        _until(lambda: len(_logged_items(a.engine, job.id)) >= 5)

        # When it is cancelled through node b
        stopped = b.run(b.engine.jobs.set_stop_time(project.id, job.id, utcnow()))

        # Then it is stopped, and a's runner halts (within its re-read of the job)
        assert stopped.status == "stopped"
        _until(lambda: job.id not in a.engine.jobs._stops, timeout=10)
        halted_at = len(predicted)
        time.sleep(0.5)
        assert len(predicted) == halted_at
        row = a.engine.jobs.get(project.id, job.id)
        assert row.status == "stopped" and row.delivered + row.failed_deliver == ITEMS


def _pipeline_setup(engine: Engine) -> ProjectRow:
    """A project with pipeline `p`: one function operator adding 1 to `x`."""
    project = engine.projects.get(Caller(None), engine.projects.create("cluster").name)
    engine.pipelines.create(project, {"name": "p", "input_fields": X, "output_fields": X})
    engine.pipelines.create_version(project, "p", {"version": "v1", "objects": [
        {"name": "plus", "reference_type": "operator", "reference_name": "function",
         "configuration": {"expression": "x + 1", "input_fields": X, "output_fields": X}}], "attachments": [
        {"destination_name": "plus", "sources": [{"source_name": "pipeline_start", "mapping": TO_X}]},
        {"destination_name": "pipeline_end", "sources": [{"source_name": "plus", "mapping": TO_X}]}]})
    return project


def test_a_batch_pipeline_request_accepted_by_a_node_that_dies_runs_on_another(
        tmp_path: Path, database_url: str) -> None:
    with _two_nodes(tmp_path, database_url, [], []) as (a, b):
        project = _pipeline_setup(a.engine)
        plan = a.engine.pipelines.plan(project, "p", None)

        # Given batch pipeline requests node a accepted, and then died before it ran any
        async def accept_and_die() -> list[str]:
            accepted = await a.engine.pipeline_requests.create_batch(
                project, plan, [{"x": i} for i in range(5)], timeout=60, origin={})
            for task in a.engine.pipeline_requests._batch_tasks.tasks:
                task.cancel()
            return [record.id for record in accepted]

        ids = a.run(accept_and_die())
        a.kill()

        def rows() -> list[PipelineRequestRow]:
            with b.engine.db.read() as session:
                found = {row.id: row for row in session.scalars(
                    select(PipelineRequestRow).where(PipelineRequestRow.id.in_(ids)))}
            return [found[i] for i in ids]

        assert {row.status for row in rows()} == {"pending"}

        # Then node b runs every one of them to its end
        _until(lambda: all(row.status == "completed" for row in rows()))
        assert [row.owner for row in rows()] == [b.engine.nodes.id] * len(ids)
        assert [orjson.loads(row.result) for row in rows()] == [{"x": i + 1} for i in range(5)]
