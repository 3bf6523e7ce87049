"""Revisions: a build's outcome is what every node can use (keys and ids), never a node's paths."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from modelbay.core.projects import Caller
from modelbay.engine import Engine
from modelbay.settings import Settings
from modelbay.store.tables import RevisionRow
from tests.fixtures.packages import PLAIN, make_package_dir, make_zip


def test_a_built_revision_holds_no_path_and_each_server_prepares_its_code_from_the_archive(tmp_path: Path) -> None:
    archive = make_zip(make_package_dir(tmp_path, PLAIN), tmp_path / "plain.zip").read_bytes()
    settings = Settings(data_dir=tmp_path / "data")

    async def build() -> tuple[str, tuple[Path, Path]]:
        engine = Engine(settings)
        await engine.start()
        try:
            project = engine.projects.get(Caller(None), engine.projects.create("builds").name)
            engine.deployments.create(project, {"name": "d", "input_type": "plain", "output_type": "plain"})
            engine.deployments.create_version(project, "d", {"name": "1"})
            uploaded, built = engine.revisions.upload(Caller(None), project, "d", "1", io.BytesIO(archive))
            await asyncio.wrap_future(built)
            with engine.db.read() as session:
                row = session.get(RevisionRow, uploaded.id)
            assert row is not None and row.status == "success", row and row.build_log
            assert row.owner == engine.nodes.id
            values = [getattr(row, column.key) for column in RevisionRow.__table__.columns if column.key != "build_log"]
            assert not [value for value in values if isinstance(value, str) and value.startswith("/")]
            # The server that built it runs what it built.
            return uploaded.id, engine.revisions.materialise(engine.deployments.target(project, "d", "1"))
        finally:
            await engine.close()

    revision_id, (package_dir, python) = asyncio.run(build())
    assert package_dir == tmp_path / "data" / "builds" / "packages" / revision_id / "deployment_package"

    async def restart() -> tuple[Path, Path]:
        engine = Engine(settings)
        await engine.start()
        try:
            project = engine.projects.get(Caller(None), "builds")
            return engine.revisions.materialise(engine.deployments.target(project, "d", "1"))
        finally:
            await engine.close()

    # A server that has not built it (here: the next one on the data dir) finds the unpacked code
    # and the environment there and reuses them.
    assert asyncio.run(restart()) == (package_dir, python)


def test_the_sweep_removes_this_servers_copy_of_the_code_of_a_deleted_version_only(tmp_path: Path) -> None:
    archive = make_zip(make_package_dir(tmp_path, PLAIN), tmp_path / "plain.zip").read_bytes()

    async def scenario() -> None:
        engine = Engine(Settings(data_dir=tmp_path / "data"))
        await engine.start()
        try:
            project = engine.projects.get(Caller(None), engine.projects.create("sweeps").name)
            engine.deployments.create(project, {"name": "d", "input_type": "plain", "output_type": "plain"})
            packages = tmp_path / "data" / "builds" / "packages"
            revisions = {}
            for version in ("kept", "gone"):
                engine.deployments.create_version(project, "d", {"name": version})
                uploaded, built = engine.revisions.upload(Caller(None), project, "d", version, io.BytesIO(archive))
                await asyncio.wrap_future(built)
                revisions[version] = uploaded.id
            assert engine.revisions.sweep_local(grace_s=0) == 0  # both exist
            engine.deployments.delete_version(project, "d", "gone")

            assert engine.revisions.sweep_local(grace_s=0) == 1
            assert sorted(p.name for p in packages.iterdir()) == [revisions["kept"]]
            assert engine.revisions.materialise(engine.deployments.target(project, "d", "kept"))[0].is_dir()
        finally:
            await engine.close()

    asyncio.run(scenario())
