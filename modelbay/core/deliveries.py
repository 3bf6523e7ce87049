"""Deliveries: bodies POSTed to webhooks, durable in the store, retried with capped exponential backoff.

A delivery is a row before it is ever tried, so one due when the server dies is made after it
restarts. The worker of every node claims due rows (sets their `owner`; they stay `pending`, so a
job still counts them open), POSTs them (a bounded number at a time) and records each try
compare-and-set on `pending` and fenced by the owner, so a delivery given up elsewhere (a
cancelled job) stays so, and one given back from a node declared dead is recorded by one node only.
A job's runner inserts its new deliveries claimed already, as many as this node's worker has room
for (`reserve`), and hands them over once committed (`take`): no claim, and no wait for one.
A dead node's claimed deliveries go back unclaimed, due at once: delivery is at least once (a POST
cut short by a kill may be made again), but one whose success was recorded is never made again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Dialect, Table, bindparam, func, select, update

from modelbay.core.activity import Activity
from modelbay.core.background import Background, Coalescer
from modelbay.core.hooks import WriteHook
from modelbay.core.clock import as_utc, utcnow
from modelbay.core.errors import StatusChanged
from modelbay.core.nodes import Nodes
from modelbay.core.row_ids import time_ordered_id
from modelbay.core.states import DELIVERY, DeliveryStatus, Move, move
from modelbay.core.webhook_client import WebhookClient
from modelbay.core.webhooks import backoff_ms, post_signed
from modelbay.store.db import Database, nothing, run_writes
from modelbay.store.driver import DriverStatement, driver_cursor
from modelbay.store.tables import DeliveryRow, WebhookRow

log = logging.getLogger(__name__)

DELIVERIES: Table = DeliveryRow.__table__  # type: ignore[assignment]
WEBHOOKS: Table = WebhookRow.__table__  # type: ignore[assignment]


#: Most POSTs in flight at once, over all webhooks.
MAX_IN_FLIGHT = 64

#: Most delivered POSTs that wait for the commit recording them without holding a place in flight;
#: past it, a delivered POST keeps its place until recorded. A place held through that commit (a
#: round of the committer) would bound the POSTs made per second, not those in flight.
MAX_SETTLING = 2 * MAX_IN_FLIGHT

#: Finishing POSTs wake the worker to claim more once no more than this many are in flight: one
#: claim for many deliveries under a job, not one claim per POST.
REFILL_AT = MAX_IN_FLIGHT // 2

#: Longest the worker sleeps with nothing due; a new delivery wakes it at once.
IDLE_WAKE_S = 5.0

#: Most deliveries handed to the worker as they are committed (see `reserve`) that may wait for a
#: place among those in flight; past it, new deliveries wait in the store for a claim. (Few: a job
#: stopped meanwhile still has these made.)
MAX_HANDED = 64


@dataclass(frozen=True)
class Due:
    id: str
    owner: str  # the node that claimed it: the fence of what records its outcome
    webhook_id: str
    job_id: str | None
    item_index: int | None
    body: bytes
    attempts: int
    endpoint: str | None
    secret: str | None
    max_retries: int
    max_backoff_ms: int
    project_id: str | None  # the webhook's (None: the webhook was deleted)


def new_delivery(webhook_id: str, body: bytes, *, job_id: str | None = None, item_index: int | None = None,
                 now: datetime | None = None, owner: str | None = None) -> dict[str, Any]:
    """A row to insert (in the caller's transaction) for one body to one webhook, due now; `owner`:
    the node that claims it as it is inserted (see `Deliveries.reserve`)."""
    now = now or utcnow()
    return {"id": time_ordered_id(), "webhook_id": webhook_id, "job_id": job_id, "item_index": item_index,
            "body": body, "status": DeliveryStatus.PENDING.value, "attempts": 0, "next_attempt_at": now,
            "response_code": None, "last_error": None, "created_at": now, "finished_at": None, "owner": owner}


def claimed_dues(conn: Connection, rows: list[dict[str, Any]]) -> list[Due]:
    """The deliveries of `rows`, inserted claimed in `conn`'s transaction, with what their webhooks
    say now (read once per webhook)."""
    webhooks: dict[str, Any] = {}
    statement = _webhook_statement(conn.dialect)
    for webhook_id in {row["webhook_id"] for row in rows}:
        found = statement.rows(driver_cursor(conn), {"id": webhook_id})
        webhooks[webhook_id] = found[0] if found else (None, None, 0, 0, None)
    dues = []
    for row in rows:
        endpoint, secret, max_retries, max_backoff_ms, project_id = webhooks[row["webhook_id"]]
        dues.append(Due(row["id"], row["owner"], row["webhook_id"], row["job_id"], row["item_index"], row["body"], 0,
                        endpoint, secret, max_retries or 0, max_backoff_ms or 0, project_id))
    return dues


@functools.cache
def _webhook_statement(dialect: Dialect) -> DriverStatement:
    """What a delivery needs of its webhook, compiled once."""
    return DriverStatement(select(WEBHOOKS.c.endpoint, WEBHOOKS.c.secret, WEBHOOKS.c.max_retries,
                                  WEBHOOKS.c.max_backoff_ms, WEBHOOKS.c.project_id)
                           .where(WEBHOOKS.c.id == bindparam("id")), dialect)


class Deliveries:
    """The delivery worker. `wake()` after committing new deliveries."""

    def __init__(self, db: Database, client: WebhookClient, nodes: Nodes, activity: Activity | None = None) -> None:
        self._db = db
        self._activity = activity or Activity()  # where the POSTs made here are counted
        self._client = client
        self._nodes = nodes
        self._in_flight: set[str] = set()
        self._settling = 0  # delivered, waiting for their commit, their place given up (`MAX_SETTLING`)
        self._handed: deque[Due] = deque()  # claimed as they were committed, waiting for a place in flight
        self._reserved = 0  # places promised by `reserve`, not yet handed over
        # Whether the store may hold due deliveries no node holds: finishing POSTs claim more only then
        # (the timed passes find the others, retries among them).
        self._unclaimed = True
        self._wake = asyncio.Event()
        self._background = Background("deliveries")
        #: Deliveries of these (job id, item index) ended, all delivered (True) or not; its reactions
        #: write in the same commit.
        self.items_settled: WriteHook[[list[tuple[str, int]], bool]] = WriteHook("deliveries: items settled")
        # Successes waiting for their commit: many go in one write (see `_record_delivered`).
        self._delivered: Coalescer[tuple[Due, int], None] = Coalescer(self._write_delivered)
        nodes.add_recoverer(self._give_back, "webhook deliveries")
        nodes.recovered.add(self.wake)

    def start(self) -> None:
        self._background.every(IDLE_WAKE_S, self._pass, "pass", wake=self._wake)

    def wake(self) -> None:
        """Deliveries no node holds were committed (or given back): claim them now."""
        self._unclaimed = True
        self._wake.set()

    @property
    def node_id(self) -> str:
        return self._nodes.id

    def reserve(self, wanted: int) -> int:
        """How many of `wanted` new deliveries this node's worker takes as they are committed: the
        caller inserts that many claimed by `node_id` (no claim of their own, and no wait for one),
        then hands them over with `take`, or gives the places back with `take([], reserved)`."""
        room = MAX_IN_FLIGHT + MAX_HANDED - len(self._in_flight) - len(self._handed) - self._reserved
        reserved = max(0, min(wanted, room))
        self._reserved += reserved
        return reserved

    def take(self, dues: list[Due], reserved: int) -> None:
        """Make the committed deliveries `dues` (claimed by this node), within `reserved` places."""
        self._reserved -= reserved
        for due in dues:
            if len(self._in_flight) < MAX_IN_FLIGHT:
                self._start(due)
            else:
                self._handed.append(due)

    def _start(self, due: Due) -> None:
        self._in_flight.add(due.id)
        self._background.spawn(self._attempt(due), name=f"delivery-{due.id}")

    async def close(self) -> None:
        await self._background.close()

    async def _pass(self) -> float:
        """Start attempts of due deliveries; returns how long to wait before the next pass."""
        free = MAX_IN_FLIGHT - len(self._in_flight)
        if free <= 0:
            return IDLE_WAKE_S  # full: a finishing attempt wakes us
        self._unclaimed = False  # a wake during the claim sets it again
        # Through the committer: the claim shares a commit with the job's writes instead of waiting for them.
        due = await self._db.committer.submit_async(self._claim_due(free))
        for item in due:
            self._start(item)
        if len(due) == free:
            self._unclaimed = True  # there may be more
            return IDLE_WAKE_S  # full: a finishing attempt wakes us
        return await asyncio.to_thread(self._seconds_to_next_due)

    def _claim_due(self, limit: int) -> Callable[[Connection], list[Due]]:
        """The claim of up to `limit` due deliveries no node holds.

        On PostgreSQL the rows another node is claiming are skipped, not waited for (SKIP LOCKED);
        on SQLite the write transaction holds the whole store.
        """
        node_id = self._nodes.id
        query = (
            select(DELIVERIES.c.id, DELIVERIES.c.webhook_id, DELIVERIES.c.job_id, DELIVERIES.c.item_index,
                   DELIVERIES.c.body, DELIVERIES.c.attempts, WEBHOOKS.c.endpoint, WEBHOOKS.c.secret,
                   WEBHOOKS.c.max_retries, WEBHOOKS.c.max_backoff_ms, WEBHOOKS.c.project_id)
            .select_from(DELIVERIES.outerjoin(WEBHOOKS, WEBHOOKS.c.id == DELIVERIES.c.webhook_id))
            .where(DELIVERIES.c.status == DeliveryStatus.PENDING, DELIVERIES.c.owner.is_(None),
                   DELIVERIES.c.next_attempt_at <= utcnow())
            .order_by(DELIVERIES.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True, of=DELIVERIES)
        )

        def claim(conn: Connection) -> list[Due]:
            rows = conn.execute(query).all()
            if not rows:
                return []
            claimed = set(conn.execute(
                update(DELIVERIES)
                .where(DELIVERIES.c.id.in_([r.id for r in rows]), DELIVERIES.c.status == DeliveryStatus.PENDING,
                       DELIVERIES.c.owner.is_(None))
                .values(owner=node_id)
                .returning(DELIVERIES.c.id)).scalars())
            return [Due(r.id, node_id, r.webhook_id, r.job_id, r.item_index, r.body or b"", r.attempts, r.endpoint,
                        r.secret, r.max_retries or 0, r.max_backoff_ms or 0, r.project_id)
                    for r in rows if r.id in claimed]

        return claim

    def _give_back(self, conn: Connection, node_ids: list[str]) -> int:
        """A recoverer (`Nodes`): the deliveries dead nodes were making are unclaimed again, due at once
        (the try they were making is not counted)."""
        return int(conn.execute(
            update(DELIVERIES)
            .where(DELIVERIES.c.owner.in_(node_ids), DELIVERIES.c.status == DeliveryStatus.PENDING)
            .values(owner=None)
        ).rowcount)

    def _seconds_to_next_due(self) -> float:
        with self._db.read() as session:
            first = session.scalar(select(func.min(DELIVERIES.c.next_attempt_at))
                                   .where(DELIVERIES.c.status == DeliveryStatus.PENDING,
                                          DELIVERIES.c.owner.is_(None)))
        if first is None:
            return IDLE_WAKE_S
        return max(0.0, min(IDLE_WAKE_S, (as_utc(first) - utcnow()).total_seconds()))

    async def _attempt(self, due: Due) -> None:
        try:
            if due.endpoint is None or due.secret is None:
                self._ended(due, "failed", due.attempts, "The webhook was deleted")
                await self._db.committer.submit_async(
                    self._settle(due, DeliveryStatus.FAILED, None, "The webhook was deleted", due.attempts))
                return
            headers = {"X-Modelbay-Delivery": due.id, "X-Modelbay-Attempt": str(due.attempts + 1)}
            outcome = await post_signed(self._client, due.endpoint, due.secret, due.body, headers)
            attempts = due.attempts + 1
            if outcome.ok:
                self._activity.count("deliveries", due.project_id or "", "delivered")
                settling = self._settling < MAX_SETTLING
                if settling:  # its place goes to the next POST now
                    self._settling += 1
                    self._land(due)
                try:
                    await self._record_delivered(due, outcome.status_code)
                finally:
                    if settling:
                        self._settling -= 1
                return
            # A refused target (see `webhook_targets`) is final: retrying would only be refused again.
            if attempts > due.max_retries or outcome.refused:
                self._ended(due, "failed", attempts, outcome.error)
                await self._db.committer.submit_async(
                    self._settle(due, DeliveryStatus.FAILED, outcome.status_code or None, outcome.error, attempts))
                return
            self._ended(due, "retried", attempts, outcome.error)
            retry_at = utcnow() + timedelta(milliseconds=backoff_ms(attempts, due.max_backoff_ms))
            await self._db.committer.submit_async(
                self._retry_later(due, attempts, retry_at, outcome.status_code or None, outcome.error))
            self.wake()  # unclaimed again: the next pass times itself by when it is due
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivery %s failed to record", due.id)
        finally:
            self._land(due)

    def _land(self, due: Due) -> None:
        """`due`'s POST ended: its place in flight goes to the next one (once)."""
        if due.id in self._in_flight:
            self._in_flight.discard(due.id)
            if self._handed:
                self._start(self._handed.popleft())
            elif len(self._in_flight) <= REFILL_AT and self._unclaimed:
                self._wake.set()

    def _ended(self, due: Due, outcome: str, attempts: int, answer: str | None) -> None:
        """Count a POST that failed (`retried`, or `failed`: given up), and log what the receiver answered;
        one that will be tried again at INFO, one given up at WARNING."""
        self._activity.count("deliveries", due.project_id or "", outcome)
        given_up = outcome == "failed"
        log.log(logging.WARNING if given_up else logging.INFO, "delivery %s to webhook %s failed after %d %s%s: %s",
                due.id, due.webhook_id, attempts, "attempt" if attempts == 1 else "attempts",
                "" if given_up else ", to be tried again", answer or "no answer",
                extra={"delivery_id": due.id, "webhook_id": due.webhook_id, "job_id": due.job_id,
                       "attempts": attempts, "answer": answer, "event": f"delivery {outcome}"})

    async def _record_delivered(self, due: Due, code: int) -> None:
        """Record a success. Those that arrive while a write is under way share the next one."""
        await self._delivered.add((due, code))

    async def _write_delivered(self, batch: list[tuple[Due, int]]) -> list[None]:
        await self._db.committer.submit_async(self._settle_delivered(batch))
        return [None] * len(batch)

    def _settle_delivered(self, batch: list[tuple[Due, int]]) -> Callable[[Connection], None]:
        def settle(conn: Connection) -> None:
            now = utcnow()
            # Compare-and-set on `pending` and the claim (joined on PostgreSQL: one statement for
            # all): one given up meanwhile stays so, and one given back (its node declared dead) is
            # another node's to record. In id order, as a job's stop locks them
            # (`Jobs._settle_open`), so the two seldom deadlock (a deadlock's loser is run again).
            done = sorted(batch, key=lambda item: item[0].id)
            moved = run_writes(conn, [
                Move(DELIVERY, due.id, DeliveryStatus.PENDING, DeliveryStatus.DELIVERED,
                     {"attempts": due.attempts + 1, "response_code": code, "last_error": None, "finished_at": now,
                      "body": None}, fence=due.owner, otherwise=nothing)
                for due, code in done])
            items = [(due.job_id, due.item_index) for (due, _), status in zip(done, moved, strict=True)
                     if status is not None and due.job_id is not None and due.item_index is not None]
            if items:
                self.items_settled(conn, items, True)

        return settle

    def _settle(self, due: Due, status: DeliveryStatus, code: int | None, error: str | None,
                attempts: int) -> Callable[[Connection], None]:
        def settle(conn: Connection) -> None:
            try:
                move(conn, DELIVERY, due.id, DeliveryStatus.PENDING, status, fence=due.owner, attempts=attempts,
                     response_code=code, last_error=error, finished_at=utcnow())
            except StatusChanged:
                return  # given up meanwhile (its job was stopped or deleted), or given back
            if due.job_id is not None and due.item_index is not None:
                self.items_settled(conn, [(due.job_id, due.item_index)], status is DeliveryStatus.DELIVERED)

        return settle

    @staticmethod
    def _retry_later(due: Due, attempts: int, retry_at: datetime, code: int | None,
                     error: str | None) -> Callable[[Connection], None]:
        def retry(conn: Connection) -> None:
            conn.execute(
                update(DELIVERIES).where(DELIVERIES.c.id == due.id, DELIVERIES.c.status == DeliveryStatus.PENDING,
                                         DELIVERIES.c.owner == due.owner)
                # Unclaimed again: any node makes the next try when it is due.
                .values(attempts=attempts, next_attempt_at=retry_at, response_code=code, last_error=error,
                        owner=None)
            )

        return retry
