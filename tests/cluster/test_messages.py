"""Two nodes on one PostgreSQL, in one process: what one node changes or cancels, the other learns
at once over the bus (real engines, real builds, real worker processes)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import make_url, update

from modelbay.core.errors import NotFound, Unauthorized, Unavailable
from modelbay.core.projects import Caller
from modelbay.core.states import REQUESTS
from modelbay.engine import Engine
from modelbay.settings import Settings
from modelbay.store.tables import ProjectRow
from tests.fixtures.packages import make_package_dir, make_zip

pytestmark = pytest.mark.postgresql_only("nodes share one PostgreSQL")

ADMIN = Caller(project_id=None)

#: How long "at once" may take: a notification's round trip, with room for a busy machine.
AT_ONCE_S = 5.0

GREETS = '''
import os


class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        return "{code} " + os.environ.get("GREETING", "")
'''

#: Appends a line to the file its input names, every 20 ms, until it is stopped.
WRITES_UNTIL_STOPPED = '''
import time


class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        while True:
            with open(data, "a") as out:
                out.write("x\\n")
            time.sleep(0.02)
'''


@asynccontextmanager
async def two_nodes(tmp_path: Path) -> AsyncIterator[tuple[Engine, Engine]]:
    """Two started engines, each with its own data dir, on the test's database."""
    engines = [Engine(Settings(data_dir=tmp_path / name, sandbox="none")) for name in ("a", "b")]
    try:
        for engine in engines:
            await engine.start()
        yield engines[0], engines[1]
    finally:
        for engine in engines:
            await engine.close()


async def eventually(check: Callable[[], bool], what: str, within: float = AT_ONCE_S) -> None:
    async with asyncio.timeout(within):
        while not check():
            await asyncio.sleep(0.02)
    assert check(), what


def stored_status(engine: Engine, target: Any, request_id: str) -> str | None:
    """A request's status as stored; None while it is not recorded (a direct request is recorded a
    moment after it starts, not when its code begins)."""
    try:
        return engine.requests.get(target, request_id).status
    except NotFound:
        return None


def raises(error: type[Exception], call: Callable[[], object]) -> bool:
    try:
        call()
    except error:
        return True
    return False


async def upload(engine: Engine, tmp_path: Path, project: ProjectRow, source: str) -> None:
    """Upload code for version 1 of deployment d through `engine` and wait for its build."""
    name = f"pkg-{uuid.uuid4().hex[:8]}"
    archive = make_zip(make_package_dir(tmp_path, source, name=name), tmp_path / f"{name}.zip")
    with archive.open("rb") as file:
        revision, built = engine.revisions.upload(ADMIN, project, "d", "1", file)
    await asyncio.wrap_future(built)
    assert engine.revisions.get(project, "d", "1", revision.id).status == "success"


async def greeting(engine: Engine, project: ProjectRow) -> str:
    target = engine.deployments.serving_target(project, "d", "1")
    record = await engine.requests.direct(target, "hi", timeout=60, origin={"created_by": "test"})
    assert record.status == "completed", record.error_message
    return str(record.result)


def a_deployment(engine: Engine, name: str, environment_variables: dict[str, str] | None = None) -> ProjectRow:
    project = engine.projects.get(ADMIN, engine.projects.create(name).name)
    engine.deployments.create(project, {"name": "d", "input_type": "plain", "output_type": "plain"})
    engine.deployments.create_version(project, "d", {"name": "1", "environment_variables": environment_variables})
    return project


def test_code_and_settings_changed_on_one_node_are_served_by_the_other_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with two_nodes(tmp_path) as (a, b):
            # Given a version whose code is not built yet, as node B has seen (and cached) it
            project = a_deployment(a, "changes", {"GREETING": "hello"})
            assert raises(Unavailable, lambda: b.deployments.serving_target(project, "d", "1"))
            # When its code is uploaded and built on node A
            await upload(a, tmp_path, project, GREETS.format(code="v1"))
            # Then node B serves it at once
            await eventually(lambda: not raises(Unavailable, lambda: b.deployments.serving_target(project, "d", "1")),
                             "node B saw the build")
            assert await greeting(b, project) == "v1 hello"
            version_id = b.deployments.target(project, "d", "1").version_id
            old_instances = b.scheduler.instances(version_id)
            assert len(old_instances) == 1
            # When new code is built on node A
            await upload(a, tmp_path, project, GREETS.format(code="v2"))
            # Then node B retires its instance of the old code and serves the new
            await eventually(lambda: old_instances[0] not in b.scheduler.instances(version_id),
                             "node B retired its old instance")
            assert await greeting(b, project) == "v2 hello"
            # And a change of the version's settings on node A is served by node B too
            a.deployments.update_version(project, "d", "1", {"environment_variables": {"GREETING": "bye"}})
            await eventually(lambda: b.deployments.target(project, "d", "1").environment_variables
                             == {"GREETING": "bye"}, "node B saw the new settings")
            assert await greeting(b, project) == "v2 bye"
            # And once node A deletes the deployment, node B knows it no more and keeps no instance of it
            a.deployments.delete(project, "d")
            await eventually(lambda: raises(NotFound, lambda: b.deployments.target(project, "d", "1")),
                             "node B forgot the deployment")
            await eventually(lambda: b.scheduler.instances(version_id) == [], "node B retired its instances")

    asyncio.run(scenario())


def test_a_token_renewed_on_one_node_stops_working_on_the_other(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with two_nodes(tmp_path) as (a, b):
            # Given a project's token that node B has accepted (and cached)
            old = a.projects.create("tokens").token
            project_id = b.projects.authenticate(old).project_id
            assert project_id is not None
            # When node A gives the project a new token
            new = a.projects.renew_token(ADMIN, "tokens")
            # Then node B refuses the old one at once, and takes the new one
            assert raises(Unauthorized, lambda: a.projects.authenticate(old))
            await eventually(lambda: raises(Unauthorized, lambda: b.projects.authenticate(old)),
                             "node B refused the old token")
            assert b.projects.authenticate(new).project_id == project_id

    asyncio.run(scenario())


def test_a_cancel_through_one_node_stops_the_code_running_on_the_other(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with two_nodes(tmp_path) as (a, b):
            project = a_deployment(a, "cancels")
            await upload(a, tmp_path, project, WRITES_UNTIL_STOPPED)
            # Given a request whose code runs on node A (it writes to a file until it is stopped)
            target = a.deployments.serving_target(project, "d", "1")
            marks, request_id = tmp_path / "marks", str(uuid.uuid4())
            running = asyncio.create_task(a.requests.direct(target, str(marks), timeout=120,
                                                            origin={"created_by": "test"}, request_id=request_id))
            b_target = b.deployments.serving_target(project, "d", "1")
            await eventually(
                lambda: marks.exists() and not raises(NotFound, lambda: b.requests.get(b_target, request_id)),
                "the request runs and is recorded", within=30)
            # When it is cancelled through node B
            status = await b.requests.cancel(b_target, request_id)
            # Then its code stops on node A: the request ends cancelled, its instance is stopped,
            # and the file grows no more
            record = await asyncio.wait_for(running, AT_ONCE_S)
            assert record.status == "cancelled"
            assert status.value == "cancelled_pending"  # node A runs it: A records its end
            assert b.requests.get(b_target, request_id).status == "cancelled"
            await eventually(lambda: a.scheduler.instances(target.version_id) == [], "node A stopped the instance")
            size = marks.stat().st_size
            await asyncio.sleep(0.3)
            assert marks.stat().st_size == size

    asyncio.run(scenario())


def test_a_cancel_whose_message_was_missed_stops_the_code_once_the_node_listens_again(
        tmp_path: Path, database_url: str) -> None:
    async def scenario() -> None:
        async with two_nodes(tmp_path) as (a, b):
            project = a_deployment(a, "missed")
            await upload(a, tmp_path, project, WRITES_UNTIL_STOPPED)
            target = a.deployments.serving_target(project, "d", "1")
            marks, request_id = tmp_path / "marks", str(uuid.uuid4())
            running = asyncio.create_task(a.requests.direct(target, str(marks), timeout=120,
                                                            origin={"created_by": "test"}, request_id=request_id))
            await eventually(lambda: marks.exists() and stored_status(a, target, request_id) == "processing",
                             "the request runs and is recorded", within=30)
            # Given a cancel that node A never heard of (written while its listener was away)
            with b.db.write() as session:
                session.execute(update(REQUESTS).where(REQUESTS.c.id == request_id)
                                .values(status="cancelled_pending"))
            # When node A's listener reconnects
            conninfo = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
            with psycopg.connect(conninfo, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                              (f"modelbay bus {a.nodes.id}"[:63],))
            # Then it looks for what it missed, and the code stops
            record = await asyncio.wait_for(running, 30)
            assert record.status == "cancelled"
            await eventually(lambda: a.scheduler.instances(target.version_id) == [], "node A stopped the instance")

    asyncio.run(scenario())
