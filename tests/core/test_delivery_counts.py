"""Each webhook POST is counted by its project and outcome, and a failed one is logged with the
receiver's answer: INFO while it will be tried again, WARNING once given up."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from modelbay.core.activity import Activity
from modelbay.core.deliveries import DELIVERIES, Deliveries, new_delivery
from modelbay.core.webhook_client import WebhookClient
from modelbay.core.webhooks import Webhooks
from modelbay.store.tables import DeliveryRow
from tests.compat.datature.receiver import running_receiver
from tests.core.test_deliveries import a_node, open_store

pytestmark = pytest.mark.timeout(60)


def test_posts_are_counted_by_outcome_and_failures_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = open_store(tmp_path)
    activity = Activity()

    def finished() -> bool:
        with db.read() as session:
            return session.scalar(select(DeliveryRow.finished_at)) is not None

    async def scenario(url: str, secret: str) -> None:
        async with WebhookClient(allow_private=True) as client:
            hook = Webhooks(db, client, allow_private_targets=True).create("p", "h", url, secret, 1, 50)
            with db.write() as session:
                session.execute(insert(DELIVERIES), [new_delivery(hook.id, b"{}")])
            worker = Deliveries(db, client, a_node(db), activity)
            worker.start()
            deadline = time.monotonic() + 10
            try:
                while not finished():
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
            finally:
                await worker.close()

    with running_receiver(fail_always=True) as receiver, caplog.at_level(logging.INFO, "modelbay.core.deliveries"):
        asyncio.run(scenario(receiver.url, receiver.secret))
    db.close()

    assert activity.deliveries == {("p", "retried"): 1, ("p", "failed"): 1}
    retried, failed = [r for r in caplog.records if r.name == "modelbay.core.deliveries"]
    assert retried.levelno == logging.INFO and "to be tried again" in retried.getMessage()
    assert failed.levelno == logging.WARNING and "after 2 attempts" in failed.getMessage()
    assert "answered 500" in failed.getMessage() and failed.attempts == 2  # type: ignore[attr-defined]
