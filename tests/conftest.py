from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.server import Server

_names = itertools.count()


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


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, sandbox_shared_root: Path) -> Iterator[Server]:
    """One real server per test process; tests isolate themselves with their own projects."""
    root: Path = tmp_path_factory.mktemp("server")
    # Test webhook receivers listen on loopback, which webhooks may reach only when allowed.
    srv = Server(data_dir=root / "data").start({"MODELBAY_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true"})
    yield srv
    srv.stop()


@pytest.fixture
def project(server: Server) -> dict[str, str]:
    """A fresh project on the shared server: its credentials."""
    return server.create_project(f"test-{next(_names)}")
