"""Builds in a cluster: two engines (nodes) with their own data dirs on one PostgreSQL database.

A revision is built once, by the node that claims it; any node runs it, unpacking the archive and
making the environment in its own data dir; a build whose node died is built by another.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelbay.core.projects import Caller
from modelbay.engine import Engine
from modelbay.settings import Settings
from modelbay.store.tables import ProjectRow, RevisionRow
from tests.fixtures.packages import PLAIN, make_package_dir, make_zip

pytestmark = pytest.mark.postgresql_only("nodes share a database only on PostgreSQL")

BUILD_DEADLINE_S = 180.0

#: Plain echo whose import blocks on node A (its data dir is "node-a") until the gate file exists.
GATED = '''
import os
import time

if os.sep + "node-a" + os.sep in __file__:
    while not os.path.exists({gate!r}):
        time.sleep(0.05)


class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        return data
'''


def node(tmp_path: Path, name: str, database_url: str, **settings: Any) -> Engine:
    return Engine(Settings(data_dir=tmp_path / name, database_url=database_url, **settings))


def plain_version(engine: Engine) -> ProjectRow:
    """A project with deployment "d" (plain in and out) and its version "1"."""
    project = engine.projects.get(Caller(None), engine.projects.create("cluster").name)
    engine.deployments.create(project, {"name": "d", "input_type": "plain", "output_type": "plain"})
    engine.deployments.create_version(project, "d", {"name": "1"})
    return project


def revision(engine: Engine, revision_id: str) -> RevisionRow:
    with engine.db.read() as session:
        row = session.get(RevisionRow, revision_id)
    assert row is not None
    return row


async def until(check: Callable[[], bool], timeout: float = BUILD_DEADLINE_S) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


def test_a_revision_uploaded_to_one_node_is_built_there_once_and_another_node_serves_it(
    tmp_path: Path, database_url: str
) -> None:
    archive = make_zip(make_package_dir(tmp_path, PLAIN), tmp_path / "plain.zip").read_bytes()

    async def scenario() -> None:
        a, b = node(tmp_path, "node-a", database_url), node(tmp_path, "node-b", database_url)
        await a.start()
        await b.start()
        try:
            project = plain_version(a)
            uploaded, built = a.revisions.upload(Caller(None), project, "d", "1", io.BytesIO(archive))
            await asyncio.wrap_future(built)
            row = revision(a, uploaded.id)
            assert (row.status, row.owner) == ("success", a.nodes.id), row.build_log
            # What every node can use: the archive's key and the revision; no path of node A's.
            assert row.package_dir is None and row.python is None
            assert row.archive_key == f"revisions/{uploaded.id}.archive"
            assert not (tmp_path / "node-b" / "builds" / "packages" / uploaded.id).exists()

            target = b.deployments.target(project, "d", "1")
            assert target.revision_id == uploaded.id
            done = await b.requests.direct(target, "hello", timeout=120, origin={})
            assert (done.status, done.error_message) == ("completed", None)
            assert done.result == "hello"
            # Node B unpacked the code and made the environment in its own data dir; it built nothing.
            package_dir, python = b.revisions.materialise(target)
            assert package_dir.is_relative_to(tmp_path / "node-b" / "builds" / "packages" / uploaded.id)
            assert python.is_relative_to(tmp_path / "node-b" / "builds" / "envs")
            assert revision(b, uploaded.id).build_log == row.build_log
        finally:
            await b.close()
            await a.close()

    asyncio.run(scenario())


def test_a_build_whose_node_stopped_beating_is_built_by_another_node(tmp_path: Path, database_url: str) -> None:
    gate = tmp_path / "gate"
    package = make_package_dir(tmp_path, GATED.format(gate=str(gate)))
    archive = make_zip(package, tmp_path / "gated.zip").read_bytes()
    # The sandbox is off so that the gate file is seen from inside the build's import check.
    settings = {"node_lease_s": 1.0, "sandbox": "none"}

    async def scenario() -> None:
        a, b = node(tmp_path, "node-a", database_url, **settings), node(tmp_path, "node-b", database_url, **settings)
        await a.start()
        await b.start()
        try:
            project = plain_version(a)
            # Node A claims the build, then hangs: its heartbeat stops and its build never ends.
            await a.nodes.stop_beating()
            uploaded, built = a.revisions.upload(Caller(None), project, "d", "1", io.BytesIO(archive))
            # Node A claimed it and builds it, held at the gate. (Not read from the row: on a slow machine
            # the lease can end between the last beat and here, and node B may have given it back already.)
            assert uploaded.id in a.revisions._building

            # Once the lease is over, node B gives the build back to the queue, claims and builds it.
            await until(lambda: revision(b, uploaded.id).status == "success")
            row = revision(b, uploaded.id)
            assert row.owner == b.nodes.id, row.build_log
            target = b.deployments.target(project, "d", "1")
            assert target.revision_id == uploaded.id

            # Node A's build ends at last: its outcome is refused, the revision stays node B's.
            gate.touch()
            await asyncio.wrap_future(built)
            await until(lambda: not a.revisions._building)
            assert (revision(a, uploaded.id).status, revision(a, uploaded.id).owner) == ("success", b.nodes.id)
            assert revision(a, uploaded.id).finished_at == row.finished_at
        finally:
            gate.touch()
            await b.close()
            await a.close()

    asyncio.run(scenario())
