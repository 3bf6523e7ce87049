"""A server that starts after a crash says, in one INFO line, what it gave back of each kind."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from modelbay.core.nodes import Nodes
from modelbay.store.db import Database


def test_the_recovery_at_start_is_logged_with_counts_by_kind(db: Database, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    before = Nodes(db, tmp_path, lease_s=60)
    before.register()  # then killed: no close
    after = Nodes(db, tmp_path, lease_s=60)
    after.add_recoverer(lambda _conn, _ids: 3, "requests")
    after.add_recoverer(lambda _conn, _ids: 0, "builds")
    after.add_recoverer(lambda _conn, _ids: 1, "webhook deliveries")
    with caplog.at_level(logging.INFO, "modelbay.core.nodes"):
        after.register()

    [record] = [r for r in caplog.records if r.name == "modelbay.core.nodes"]
    assert record.levelno == logging.INFO
    assert before.id in record.getMessage()
    assert record.getMessage().endswith("gave back 3 requests, 1 webhook deliveries")
    assert record.given_back == {"requests": 3, "builds": 0, "webhook deliveries": 1}  # type: ignore[attr-defined]


def test_a_clean_stop_leaves_nothing_to_log_at_the_next_start(db: Database, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    before = Nodes(db, tmp_path, lease_s=60)
    before.register()
    asyncio.run(before.close())
    after = Nodes(db, tmp_path, lease_s=60)
    after.add_recoverer(lambda _conn, _ids: 0, "requests")
    with caplog.at_level(logging.INFO, "modelbay.core.nodes"):
        after.register()
    assert not [r for r in caplog.records if r.name == "modelbay.core.nodes"]
