from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelbay.store.db import Database
from tests.fixtures import databases, ray_cluster
from tests.fixtures.cluster import NODES, serving
from tests.fixtures.server import Server

_names = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests about one database (marked `sqlite_only` or `postgresql_only`) are skipped on the
    other, and tests of one server (`single_server_only`) on a cluster, with their reason."""
    skipped = ["sqlite_only" if databases.ON_POSTGRESQL else "postgresql_only"]
    if NODES:
        skipped.append("single_server_only")
    for item in items:
        for name in skipped:
            if (marker := item.get_closest_marker(name)) is not None:
                item.add_marker(pytest.mark.skip(reason=f"{name.replace('_', ' ')}: {marker.args[0]}"))


@pytest.fixture(scope="session", autouse=True)
def postgres_cluster() -> Iterator[None]:
    """With MODELBAY_TEST_DATABASE=postgresql: this test process's own PostgreSQL cluster."""
    if not databases.ON_POSTGRESQL:
        yield
        return
    from tests.fixtures.postgres import Cluster

    databases.cluster = cluster = Cluster().start()
    yield
    databases.cluster = None
    cluster.stop()


@pytest.fixture(autouse=True)
def _test_database(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """On PostgreSQL, a test that has a `tmp_path` (where its own data dirs live) gets a fresh
    database: its settings, servers and commands read it from MODELBAY_DATABASE_URL."""
    if not databases.ON_POSTGRESQL or "tmp_path" not in request.fixturenames:
        yield
        return
    assert databases.cluster is not None
    name = databases.cluster.database()
    monkeypatch.setenv("MODELBAY_DATABASE_URL", databases.cluster.url(name))
    yield
    databases.cluster.drop(name)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """The URL of a fresh, empty store for this test: a SQLite file, or a PostgreSQL database."""
    return databases.store_url(tmp_path)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """A migrated store of the test's own: a SQLite file, or a fresh PostgreSQL database."""
    database = Database(database_url)
    database.migrate()
    yield database
    database.close()


@pytest.fixture(scope="session", autouse=True)
def sandbox_shared_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory every server started by the tests shares with its sandboxed user code
    (`MODELBAY_SANDBOX_SHARED_DIRS`): where test deployments leave markers and wait for gates.
    Nothing else of the tests' files, nor any server's data dir, is visible to user code."""
    root = tmp_path_factory.mktemp("shared")
    root.chmod(0o1777)  # the sandbox's user (not the tests' own) writes here
    previous = os.environ.get("MODELBAY_SANDBOX_SHARED_DIRS")
    os.environ["MODELBAY_SANDBOX_SHARED_DIRS"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("MODELBAY_SANDBOX_SHARED_DIRS", None)
    else:
        os.environ["MODELBAY_SANDBOX_SHARED_DIRS"] = previous


@pytest.fixture
def shared_path(sandbox_shared_root: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh directory for this test that its deployments' code can read and write."""
    path = sandbox_shared_root / f"{request.node.name[:60]}-{next(_names)}"
    path.mkdir(mode=0o777)
    path.chmod(0o777)  # mkdir's mode is cut by the umask
    return path


@pytest.fixture(scope="session", autouse=True)
def ray_runtime_for_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """With MODELBAY_TEST_RUNTIME=ray: this test process's own Ray cluster, on which every server the
    tests start places its instances."""
    if ray_cluster.RUNTIME != "ray":
        yield
        return
    cluster = ray_cluster.start()
    env = ray_cluster.server_env(cluster, tmp_path_factory.mktemp("ray-nodes"))
    os.environ.update(env)
    yield
    for name in env:
        os.environ.pop(name, None)
    cluster.shutdown()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, sandbox_shared_root: Path) -> Iterator[Server]:
    """One real server per test process (or a cluster: tests/fixtures/cluster.py); tests isolate
    themselves with their own projects."""
    root: Path = tmp_path_factory.mktemp("server")
    # Test webhook receivers listen on loopback, which webhooks may reach only when allowed.
    srv = serving(root, {"MODELBAY_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true"})
    yield srv
    srv.stop()


@pytest.fixture
def project(server: Server) -> dict[str, str]:
    """A fresh project on the shared server: its credentials."""
    return server.create_project(f"test-{next(_names)}")
