from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.server import Server

_names = itertools.count()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
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
