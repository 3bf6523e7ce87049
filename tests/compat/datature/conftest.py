from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from datature.nexus import Client

from tests.compat.datature.receiver import Receiver, running_receiver
from tests.fixtures.server import Server


def nexus_project(server: Server, key: str, project_id: str) -> Any:
    """The SDK's project handle, pointed at the server the way a user points it."""
    return Client(key, endpoint=server.url).get_project(project_id)


@pytest.fixture
def nexus(server: Server, project: dict[str, str]) -> Any:
    return nexus_project(server, project["token"], project["datature_project_id"])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


def webhook_spec(receiver: Receiver, *, max_retries: int = 3, max_backoff_ms: int = 100) -> dict[str, Any]:
    return {"endpoint": receiver.url, "secret": {"contents": receiver.secret},
            "retries": {"max_retries": max_retries, "max_retry_delay": max_backoff_ms}}
