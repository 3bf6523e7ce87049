"""The delivery worker over a real SQLite store and a loopback receiver: signed, retried, durable."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from modelbay.core.clock import utcnow
from modelbay.core.deliveries import DELIVERIES, Deliveries, new_delivery
from modelbay.core.nodes import Nodes
from modelbay.core.webhook_client import WebhookClient
from modelbay.core.webhooks import Webhooks, backoff_ms, sign, verify
from modelbay.store.db import Database
from modelbay.store.tables import DeliveryRow, ProjectRow
from tests.fixtures.databases import store_url
from tests.compat.datature.receiver import Receiver, running_receiver

pytestmark = pytest.mark.timeout(60)  # a worker that will not close fails here, not at the suite's 300 s


def a_node(db: Database) -> Nodes:
    """A node that is never registered: the worker's claims need only its id."""
    return Nodes(db, Path(), lease_s=30)


def open_store(tmp_path: Path) -> Database:
    db = Database(store_url(tmp_path, "store.db"))
    db.migrate()
    with db.write() as session:
        session.add(ProjectRow(id="p", name="p", token_hash="h", number=1, handle="x",
                               created_at=utcnow()))
    return db


async def deliver(db: Database, receiver: Receiver, bodies: list[bytes], *, max_retries: int,
                  until: str, timeout: float = 10.0) -> list[DeliveryRow]:
    async with WebhookClient(allow_private=True) as client:
        hook = Webhooks(db, client, allow_private_targets=True).create("p", "h", receiver.url, receiver.secret, max_retries, 50)
        with db.write() as session:
            session.execute(insert(DELIVERIES), [new_delivery(hook.id, body) for body in bodies])
        worker = Deliveries(db, client, a_node(db))
        worker.start()
        deadline = time.monotonic() + timeout
        try:
            while True:
                with db.read() as session:
                    rows = list(session.scalars(select(DeliveryRow)))
                if all(r.status == until for r in rows):
                    return rows
                assert time.monotonic() < deadline, [(r.status, r.last_error) for r in rows if r.status != until]
                await asyncio.sleep(0.02)
        finally:
            await worker.close()


async def poll(condition: Callable[[], Any], deadline: float) -> Any:
    """Poll `condition` until it is truthy (its value); fail once `deadline` (monotonic) passed."""
    while not (value := condition()):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    return value


def all_delivered(db: Database) -> list[DeliveryRow] | None:
    """The stored deliveries once all are delivered, else None."""
    with db.read() as session:
        stored = list(session.scalars(select(DeliveryRow)))
    return stored if all(r.status == "delivered" for r in stored) else None


def insert_as_a_job_does(db: Database, worker: Deliveries, hook_id: str, count: int) -> tuple[list[Any], int]:
    """`count` new deliveries, inserted as a job's outcomes insert theirs: those `worker` reserves
    claimed by its node (their dues returned, for `take`), the others unclaimed; and how many it reserved."""
    from modelbay.core.deliveries import claimed_dues

    rows = [new_delivery(hook_id, f'{{"n":{i}}}'.encode()) for i in range(count)]
    reserved = worker.reserve(count)
    for row in rows[:reserved]:
        row["owner"] = worker.node_id
    with db.write() as session:
        session.execute(insert(DELIVERIES), rows)
        return claimed_dues(session.connection(), rows[:reserved]), reserved


def a_job_worker(db: Database, client: WebhookClient, receiver: Receiver,
                 count: int) -> tuple[Deliveries, list[Any], int]:
    """A worker of deliveries to a webhook of `receiver` (no retries), and `count` deliveries
    inserted as a job's are (`insert_as_a_job_does`)."""
    hook = Webhooks(db, client, allow_private_targets=True).create("p", "h", receiver.url, receiver.secret, 0, 50)
    worker = Deliveries(db, client, a_node(db))
    return (worker, *insert_as_a_job_does(db, worker, hook.id, count))


def each_delivered_once(scenario: Callable[[Receiver], Awaitable[list[DeliveryRow]]], count: int) -> None:
    """Run `scenario` against a receiver: deliveries 0 to `count` - 1 arrived, each stored as
    delivered at its first attempt."""
    with running_receiver() as receiver:
        stored = asyncio.run(scenario(receiver))
        assert sorted(r.json["n"] for r in receiver.delivered()) == list(range(count))
    assert all(r.attempts == 1 and r.response_code == 200 for r in stored)


def test_signatures_verify_and_reject_tampering_and_replays() -> None:
    key = b"k" * 32
    header = sign(key, b'{"a":1}', 1_000_000)
    assert verify(key, b'{"a":1}', header, now_ms=1_000_500)
    assert not verify(key, b'{"a":2}', header, now_ms=1_000_500)
    assert not verify(b"x" * 32, b'{"a":1}', header, now_ms=1_000_500)
    assert not verify(key, b'{"a":1}', header, now_ms=1_000_000 + 10 * 60 * 1000)  # a stale replay


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff_ms(n, 3000) for n in range(1, 6)] == [500, 1000, 2000, 3000, 3000]


def test_a_failing_delivery_is_retried_until_it_succeeds(tmp_path: Path) -> None:
    db = open_store(tmp_path)
    with running_receiver(fail_next=2) as receiver:
        [row] = asyncio.run(deliver(db, receiver, [b'{"n":1}'], max_retries=3, until="delivered"))
        assert row.attempts == 3 and row.response_code == 200 and row.body is None
        assert [r.answered for r in receiver.received] == [500, 500, 200]
        assert all(r.signature_ok for r in receiver.received)
        assert [r.headers["x-modelbay-attempt"] for r in receiver.received] == ["1", "2", "3"]
    db.close()


def test_a_delivery_gives_up_after_max_retries(tmp_path: Path) -> None:
    db = open_store(tmp_path)
    with running_receiver(fail_always=True) as receiver:
        [row] = asyncio.run(deliver(db, receiver, [b"{}"], max_retries=2, until="failed"))
        assert row.attempts == 3 and len(receiver.received) == 3  # the first try and two retries
        assert "500" in (row.last_error or "")
    db.close()


@pytest.mark.parametrize("count", [40])
def test_many_deliveries_each_arrive_once(tmp_path: Path, count: int) -> None:
    db = open_store(tmp_path)
    secret = base64.b64encode(b"s" * 32).decode()
    with running_receiver(secret=secret) as receiver:
        bodies = [f'{{"n":{i}}}'.encode() for i in range(count)]
        asyncio.run(deliver(db, receiver, bodies, max_retries=0, until="delivered"))
        assert sorted(r.json["n"] for r in receiver.delivered()) == list(range(count))
    db.close()


def test_deliveries_handed_over_as_committed_are_made_without_a_claim_and_the_rest_wait_for_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelbay.core import deliveries

    monkeypatch.setattr(deliveries, "MAX_IN_FLIGHT", 2)
    monkeypatch.setattr(deliveries, "MAX_HANDED", 3)
    db = open_store(tmp_path)

    async def scenario(receiver: Receiver) -> list[DeliveryRow]:
        async with WebhookClient(allow_private=True) as client:
            worker, dues, reserved = a_job_worker(db, client, receiver, 8)
            assert reserved == 5  # two in flight and three waiting for a place
            worker.take(dues, reserved)  # no claim pass runs: these are made all the same
            deadline = time.monotonic() + 10
            try:
                await poll(lambda: len(receiver.delivered()) >= reserved, deadline)
                with db.read() as session:
                    unclaimed = session.scalars(select(DeliveryRow.status).where(DeliveryRow.owner.is_(None))).all()
                assert unclaimed == ["pending"] * 3
                worker.start()  # the claim pass makes the others
                await poll(lambda: len(receiver.delivered()) >= 8, deadline)
                return await poll(lambda: all_delivered(db), deadline)
            finally:
                await worker.close()

    each_delivered_once(scenario, 8)
    db.close()


def test_a_delivered_post_gives_its_place_to_the_next_before_its_commit_up_to_max_settling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelbay.core import deliveries

    monkeypatch.setattr(deliveries, "MAX_IN_FLIGHT", 1)
    monkeypatch.setattr(deliveries, "MAX_SETTLING", 1)
    db = open_store(tmp_path)
    committing = threading.Event()

    async def scenario(receiver: Receiver) -> list[DeliveryRow]:
        async with WebhookClient(allow_private=True) as client:
            worker, dues, reserved = a_job_worker(db, client, receiver, 3)
            busy = db.committer.submit(lambda _conn: committing.wait(10))  # no commit until it is set
            worker.take(dues, reserved)
            deadline = time.monotonic() + 10
            try:
                # The first POST was made and waits for its commit without its place: the second was
                # made; it keeps its place (one settling at most), so the third waits for a commit
                await poll(lambda: len(receiver.delivered()) == 2 and worker._settling == 1
                           and worker._in_flight == {dues[1].id}, deadline)
                assert len(receiver.delivered()) == 2
                committing.set()
                assert busy.result(timeout=10) is True
                await poll(lambda: len(receiver.delivered()) == 3, deadline)
                return await poll(lambda: all_delivered(db), deadline)
            finally:
                committing.set()
                await worker.close()

    each_delivered_once(scenario, 3)
    db.close()
