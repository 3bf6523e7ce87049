"""Two nodes on one PostgreSQL: runs and webhook deliveries accepted by either run exactly once on
one of them, and what a node held when it died the other finishes (deliveries at least once)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from modelbay.core.deliveries import DELIVERIES, new_delivery
from modelbay.core.nodes import DEAD, NODES
from modelbay.core.runs import RUNS, NewRun
from modelbay.engine import Engine
from modelbay.runtime.base import Call, CallOutcome
from modelbay.settings import Settings
from tests.core.test_runs import handler_version
from tests.core.test_scheduler import FakeRuntime

pytestmark = [
    pytest.mark.postgresql_only("on SQLite the store is a file in one server's data dir: one node at a time"),
    pytest.mark.timeout(120),
]

LEASE_S = 1.0
SECRET = base64.b64encode(b"k" * 32).decode()
ENDED = ("succeeded", "failed")


class HandlerRuntime(FakeRuntime):
    """Answers every call as handler code that succeeded; counts the calls. With `hold`, calls never end."""

    def __init__(self, *, hold: bool = False) -> None:
        super().__init__()
        self.calls: list[Call] = []
        self.hold = asyncio.Event() if hold else None

    async def call(self, instance: Any, call: Call, timeout: float, on_update: Any = None,
                   on_start: Any = None) -> CallOutcome:
        self.calls.append(call)
        if self.hold is not None:
            await self.hold.wait()
        envelope = {"status_code": 200, "content_type": "text/plain", "body": "", "encoding": "text"}
        return CallOutcome(ok=True, result=json.dumps(envelope))


def node(tmp_path: Path, name: str, database_url: str, runtime: HandlerRuntime, lease_s: float = LEASE_S) -> Engine:
    settings = Settings(data_dir=tmp_path / name, database_url=database_url, node_lease_s=lease_s,
                        webhook_allow_private_targets=True)
    return Engine(settings, runtime=runtime)


def runs_of(engine: Engine, ids: list[str]) -> dict[str, Any]:
    with engine.db.read() as session:
        return {row.id: row for row in session.execute(select(RUNS).where(RUNS.c.id.in_(ids)))}


async def until(condition: Callable[[], Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def abandon(engine: Engine) -> None:
    """A kill as far as the cluster sees it: no more heartbeats, and its runs and deliveries stop
    where they are (nothing written). The engine is not closed."""
    await engine.nodes.stop_beating()
    await engine.runs._background.close()
    await engine.deliveries._background.close()


async def close_after(engines: list[Engine], scenario: Callable[[], Awaitable[None]]) -> None:
    try:
        await scenario()
    finally:
        for engine in engines:
            await engine.close()


def test_runs_created_through_either_node_each_run_exactly_once(tmp_path: Path, database_url: str) -> None:
    runtimes = [HandlerRuntime(), HandlerRuntime()]
    # Nobody dies here: a lease a loaded machine cannot miss (at 1 s, one node was once declared dead).
    a, b = (node(tmp_path, name, database_url, runtime, lease_s=10.0)
            for name, runtime in zip("ab", runtimes, strict=True))

    async def scenario() -> None:
        await a.start()
        await b.start()
        # Instances enough for both nodes: engines in one process have no address to send calls to
        target = handler_version(a, tmp_path, maximum_instances=48, others=(b,))
        targets = [target, b.deployments.target_of_version(target.version_id)]
        ids = []
        for i in range(24):
            engine = (a, b)[i % 2]
            ids.append((await engine.runs.create(targets[i % 2], NewRun(None, None, 0, None, {}, None))).id)
        await until(lambda: all(r.status in ENDED for r in runs_of(a, ids).values()))
        assert {(r.status, r.attempts) for r in runs_of(a, ids).values()} == {("succeeded", 1)}
        assert sum(len(runtime.calls) for runtime in runtimes) == len(ids)

    asyncio.run(close_after([b, a], scenario))


class Receiver(ThreadingHTTPServer):
    """Counts POSTs per delivery; POSTs to /slow wait until `release` is set, then answer 200 like the rest."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.posts: Counter[str] = Counter()
        self.release = threading.Event()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.posts[self.headers["X-Modelbay-Delivery"]] += 1
        if self.path == "/slow":
            self.server.release.wait(30)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release.set()
        receiver.shutdown()
        receiver.server_close()


def test_a_node_that_dies_holding_runs_and_deliveries_leaves_them_to_the_other(
        tmp_path: Path, database_url: str) -> None:
    a_runtime, b_runtime = HandlerRuntime(hold=True), HandlerRuntime()
    a, b = node(tmp_path, "a", database_url, a_runtime), node(tmp_path, "b", database_url, b_runtime)

    async def scenario() -> None:
        await a.start()
        target = handler_version(a, tmp_path, maximum_instances=3, others=(b,))
        project_id = target.project_id
        # Given node A running three runs (one on its last attempt) and holding a fourth in its queue
        held = [(await a.runs.create(target, NewRun(None, None, retries, None, {}, None))).id for retries in (1, 1, 0)]
        queued = (await a.runs.create(target, NewRun(None, None, 0, None, {}, None))).id
        await until(lambda: [r.status for r in runs_of(a, held).values()] == ["running"] * 3)
        # and one delivery made (its success recorded) and one under way
        fast = a.webhooks.create(project_id, "fast", receiver.url("/fast"), SECRET, 3, 100)
        slow = a.webhooks.create(project_id, "slow", receiver.url("/slow"), SECRET, 3, 100)
        made, under_way = new_delivery(fast.id, b"{}"), new_delivery(slow.id, b"{}")
        with a.db.write() as session:
            session.execute(insert(DELIVERIES), [made, under_way])
        a.deliveries.wake()

        def deliveries() -> dict[str, Any]:
            with a.db.read() as session:
                return {row.id: row for row in session.execute(select(DELIVERIES))}

        await until(lambda: deliveries()[made["id"]].status == "delivered"
                    and receiver.posts[under_way["id"]] == 1)
        assert deliveries()[under_way["id"]].owner == a.nodes.id

        # When node B joins (it takes the queued run at once) and A dies
        await b.start()
        await abandon(a)
        receiver.release.set()

        # Then after A's lease B ends every run: the interrupted ones after another attempt, the one
        # that was on its last attempt failed; and it makes the delivery A was making, not the one A made
        await until(lambda: all(r.status in ENDED for r in runs_of(b, [*held, queued]).values())
                    and all(d.status == "delivered" for d in deliveries().values()))
        runs = runs_of(b, [*held, queued])
        assert [(runs[r].status, runs[r].attempts) for r in held] == [("succeeded", 2), ("succeeded", 2),
                                                                    ("failed", 1)]
        assert runs[held[2]].error_message == "The server stopped during the last attempt"
        assert (runs[queued].status, runs[queued].attempts) == ("succeeded", 1)
        assert {runs[r].owner for r in [*held[:2], queued]} == {b.nodes.id}
        assert len(a_runtime.calls) == 3 and len(b_runtime.calls) == 3
        lines = [line.message for line in b.journal.page(held[0])]
        assert "The server restarted; the run is queued again" in lines
        assert receiver.posts == {made["id"]: 1, under_way["id"]: 2}
        with b.db.read() as session:
            assert session.scalar(select(NODES.c.end).where(NODES.c.id == a.nodes.id)) == DEAD
        assert a_runtime.hold is not None
        a_runtime.hold.set()  # A's abandoned calls end, so it closes

    with running_receiver() as receiver:
        asyncio.run(close_after([b, a], scenario))
