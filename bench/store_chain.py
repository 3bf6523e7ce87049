"""The store's share of a batch drain, in-process: no HTTP, no worker, a fresh SQLite file.

A queued batch item (claimed by its node a few at a time, not timed here) that ends within 50 ms
costs one status write through the group committer: its finish (`pending` -> `completed`, not
awaited). A longer one costs two: marked `processing`, then its finish (`processing` -> `completed`). This times them alone, one item after
another as one drainer does, next to an empty committer transaction and the same two
transactions through the stdlib sqlite3 module (the floor).

Run `.venv/bin/python bench/store_chain.py [--items N]`; it prints µs per item (a few seconds).
It uses modelbay's private write helpers (`Requests._mark_processing`, `Requests._finish`), so it follows
what the drain does today and may need updating when they change.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop
from sqlalchemy import insert

from modelbay.core.clock import utcnow
from modelbay.core.nodes import Nodes
from modelbay.core.requests import Requests
from modelbay.core.states import REQUESTS
from modelbay.core.states import RequestStatus as Status
from modelbay.store.db import Database

FINISHED = {"result": b'{"x":1}', "error_message": None, "logs": None, "output_size": 7}


NODE = "bench-node"


def pending_rows(db: Database, n: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    now = utcnow()
    rows = [
        {
            "id": i,
            "project_id": "p",
            "deployment_id": "d",
            "version_id": "v",
            "mode": "batch",
            "status": "pending",
            "owner": NODE,  # claimed by this node
            "priority": 1,
            "timeout": 60,
            "data": b'{"x":1}',
            "input_size": 7,
            "origin": {},
            "created_at": now,
        }
        for i in ids
    ]
    with db.write() as session:
        session.execute(insert(REQUESTS), rows)
    return ids


def timed(label: str, n: int, coro: Callable[[], Awaitable[None]]) -> None:
    start = time.perf_counter()
    uvloop.run(coro())
    elapsed = time.perf_counter() - start
    print(f"{label:<62} {elapsed / n * 1e6:6.0f} µs/item  ({n / elapsed:8,.0f} items/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=5000)
    n = parser.parse_args().items
    tmp = Path(tempfile.mkdtemp(prefix="modelbay-store-chain-"))
    try:
        db = Database(f"sqlite:///{tmp / 'store.db'}")
        db.migrate()
        committer = db.committer
        # Only its writes are used.
        requests = Requests(db, None, None, None, Nodes(db, tmp, lease_s=30))  # type: ignore[arg-type]

        async def empty() -> None:
            for _ in range(n):
                await committer.submit_async(lambda conn: None)

        ids = pending_rows(db, n)

        async def claims() -> None:
            for rid in ids:
                await committer.submit_async(requests._mark_processing(rid, utcnow(), NODE))

        ids_once = pending_rows(db, n)

        async def written_once() -> None:  # what one drainer writes for a quick item
            for rid in ids_once:
                values = {**FINISHED, "started_at": utcnow(), "finished_at": utcnow()}
                committer.submit(requests._finish(rid, Status.PENDING, Status.COMPLETED, values, NODE))
            await committer.submit_async(lambda conn: None)  # the last finish is committed

        ids_chain = pending_rows(db, n)

        async def chain() -> None:  # what one drainer does, the worker call left out
            for rid in ids_chain:
                if not await committer.submit_async(requests._mark_processing(rid, utcnow(), NODE)):
                    raise RuntimeError("claim failed")
                committer.submit(requests._finish(rid, Status.PROCESSING, Status.COMPLETED,
                                                   {**FINISHED, "finished_at": utcnow()}, NODE))
            await committer.submit_async(lambda conn: None)  # the last finish is committed

        timed("empty committer transaction, awaited one by one", n, empty)
        timed("marked processing through move(), awaited one by one", n, claims)
        timed("marked processing (awaited) + finish: a slow item's writes", n, chain)
        timed("finish from pending (not awaited): a quick item's one write", n, written_once)
        db.close()

        conn = sqlite3.connect(tmp / "store.db", isolation_level=None)
        conn.execute("PRAGMA synchronous=NORMAL")  # as modelbay's connections (WAL is set in the file)
        conn.execute("UPDATE requests SET status='pending'")
        start = time.perf_counter()
        for rid in ids_chain:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "UPDATE requests SET status='processing', started_at=? WHERE id=? AND status='pending'",
                ("2026-01-01 00:00:00.000000", rid),
            )
            conn.execute("COMMIT")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "UPDATE requests SET status='completed', result=?, output_size=7, finished_at=? "
                "WHERE id=? AND status='processing'",
                (b'{"x":1}', "2026-01-01 00:00:00.000000", rid),
            )
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
        conn.close()
        label = "the same two transactions through stdlib sqlite3 (the floor)"
        print(f"{label:<62} {elapsed / n * 1e6:6.0f} µs/item  ({n / elapsed:8,.0f} items/s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
