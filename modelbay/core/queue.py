"""The queue of batch requests is the store: pending rows, claimed a few at a time by the node that runs them.

A node claims a version's oldest pending rows (priority first) by writing its id as their
`owner`, in one statement that skips rows another node is claiming (`FOR UPDATE SKIP LOCKED` on
PostgreSQL; SQLite has one writer), and runs them one per drainer, up to the version's maximum
instances. It holds only the rows it claimed, a few per drainer, so a backlog of any size stays
in the store. A node learns of pending work from its own batch creations, from other nodes'
messages and from a slow poll; work it claimed but had not started when it stopped or died goes
back to the queue (`StoredRequests.give_back`).

A node that no other node lives beside claims the batches it creates as it stores them (their rows
written with its id as `owner`) and holds their items (`hold`), up to `HOLD_MAX_BYTES`, as long as
the store holds none of the version's unclaimed rows for all it knows: a claim is a write of every
row again, and the only node to claim them would be this one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from modelbay.core.background import Background

log = logging.getLogger(__name__)

#: How many rows a drainer claims at once: several per round trip, few enough that other nodes
#: (and a restart) find the rest in the store. The next claim starts when half are gone.
CLAIM_PER_DRAINER = 8

#: The same on PostgreSQL, where a claim is a round trip to the database server and its commit
#: several more: four times fewer claims drain a backlog a quarter faster.
CLAIM_PER_DRAINER_POSTGRESQL = 32

#: What the items a node holds without a claim (`BatchQueue.hold`) may take of its memory, counted
#: as their encoded input plus `HELD_ITEM_OVERHEAD` each; past it a batch stays in the store.
HOLD_MAX_BYTES = 32 << 20
HELD_ITEM_OVERHEAD = 512


@dataclass(frozen=True)
class QueuedItem:
    """A `pending` request this node claimed, waiting for an instance."""

    request_id: str
    version_id: str
    data: Any
    timeout: int
    priority: int  # 0 high, 1 standard
    owner: str  # the node id it was claimed under: its writes are fenced by it
    held_bytes: int = 0  # what it counts against `HOLD_MAX_BYTES` (held without a claim)


#: Claims up to n pending rows of a version for this node, in queue order.
Claim = Callable[[str, int], Awaitable[list[QueuedItem]]]


class BatchQueue:
    """Drains pending requests per version: `run` gets each claimed item once, in claim order;
    `drainers_for` says how many items of a version may run at once here (its maximum instances,
    or none while the other nodes of the cluster run all it may have)."""

    def __init__(self, claim: Claim, run: Callable[[QueuedItem], Awaitable[None]],
                 drainers_for: Callable[[str], int], claim_per_drainer: int = CLAIM_PER_DRAINER) -> None:
        self._claim = claim
        self._claim_per_drainer = claim_per_drainer
        self._run = run
        self._drainers_for = drainers_for
        self._claimed: dict[str, deque[QueuedItem]] = {}  # version -> claimed, not yet started
        self._drainers: dict[str, int] = {}
        self._claims: dict[str, asyncio.Task[int]] = {}  # version -> its claim under way
        self._woken: set[str] = set()  # versions woken since their last claim began
        self._unclaimed: set[str] = set()  # versions whose store may hold rows nobody claimed
        self._held_bytes = 0
        self._background = Background("batch queue")
        self._closing = False

    def wake(self, version_id: str) -> None:
        """There may be pending work for `version_id`: start a drainer for it unless one runs."""
        self._woken.add(version_id)  # a claim under way may have missed it: claim once more
        self._unclaimed.add(version_id)
        if not self._closing and not self._drainers.get(version_id):
            self._add_drainer(version_id)

    def may_hold(self, version_id: str, size: int) -> bool:
        """Whether items of `size` bytes (with their overhead) may be held without a claim: the
        store holds none of the version's unclaimed rows (they came first), and memory allows."""
        return version_id not in self._unclaimed and self._held_bytes + size <= HOLD_MAX_BYTES

    def hold(self, version_id: str, items: list[QueuedItem]) -> None:
        """Queue items this node stored as claimed by itself, as if it had claimed them (`may_hold`)."""
        self._held_bytes += sum(item.held_bytes for item in items)
        claimed = self._claimed.setdefault(version_id, deque())
        if claimed and items and items[0].priority < claimed[-1].priority:
            claimed.extend(items)  # a higher priority than some waiting: they go first (a stable sort)
            self._claimed[version_id] = claimed = deque(sorted(claimed, key=lambda item: item.priority))
        else:
            claimed.extend(items)
        if not self._closing and not self._drainers.get(version_id):
            self._add_drainer(version_id)  # it starts the others as it takes items (`_next`)

    def draining(self) -> set[str]:
        """The versions this node is draining now."""
        return set(self._drainers)

    def depth(self, version_id: str) -> int:
        """Claimed items of a version waiting here for an instance."""
        return len(self._claimed.get(version_id, ()))

    def depths(self) -> dict[str, int]:
        """Claimed items waiting here for an instance, per version that has any."""
        return {version_id: len(claimed) for version_id, claimed in self._claimed.items() if claimed}

    async def close(self, grace_s: float) -> None:
        """Stop taking items, let running ones finish for up to `grace_s`, then cancel the rest.
        What was claimed and not started stays pending, owned by this node until it is given back."""
        self._closing = True
        await self._background.close(grace_s)

    def _add_drainer(self, version_id: str) -> None:
        self._drainers[version_id] = self._drainers.get(version_id, 0) + 1
        self._background.spawn(self._drain(version_id), name=f"drain-{version_id}")

    async def _next(self, version_id: str) -> QueuedItem | None:
        while not self._closing:
            claimed = self._claimed.get(version_id)
            if claimed:
                item = claimed.popleft()
                self._held_bytes -= item.held_bytes
                if claimed or version_id in self._unclaimed:
                    wanted = self._wanted(version_id)
                    self._add_drainers(version_id, min(wanted, len(claimed) + 1))  # more to run: more drainers
                    if version_id in self._unclaimed and len(claimed) <= wanted * self._claim_per_drainer // 2:
                        self._refill(version_id)  # half gone: claim the next ones while these run
                return item
            # Shielded: a drainer cancelled while it waits must not cancel the claim others wait on.
            if not await asyncio.shield(self._refill(version_id)) and version_id not in self._woken:
                return None
        return None

    def _refill(self, version_id: str) -> asyncio.Task[int]:
        """The claim of the version's next items: the one under way, else a new one."""
        claim = self._claims.get(version_id)
        if claim is None:
            claim = self._claims[version_id] = self._background.spawn(self._claim_more(version_id))
        return claim

    async def _claim_more(self, version_id: str) -> int:
        try:
            wanted = self._wanted(version_id)
            self._woken.discard(version_id)
            asked = wanted * self._claim_per_drainer
            items = await self._claim(version_id, asked) if wanted else []
        finally:
            del self._claims[version_id]
        if wanted and len(items) < asked and version_id not in self._woken:
            self._unclaimed.discard(version_id)  # it claimed the last of them
        if items:
            claimed = self._claimed.setdefault(version_id, deque())
            claimed.extend(items)
            self._add_drainers(version_id, min(wanted, len(claimed)))
        return len(items)

    def _add_drainers(self, version_id: str, drainers: int) -> None:
        """Start drainers until the version has `drainers`."""
        while not self._closing and self._drainers.get(version_id, 0) < drainers:
            self._add_drainer(version_id)

    def _wanted(self, version_id: str) -> int:
        try:
            return max(self._drainers_for(version_id), 0)
        except Exception:
            log.exception("cannot size the drainers of version %s", version_id)
            return 1

    async def _drain(self, version_id: str) -> None:
        try:
            while (item := await self._next(version_id)) is not None:
                try:
                    await self._run(item)
                except Exception:
                    log.exception("running queued request %s failed", item.request_id)
        finally:
            self._drainers[version_id] -= 1
            if not self._drainers[version_id]:
                del self._drainers[version_id]
                if not self._claimed.get(version_id):
                    self._claimed.pop(version_id, None)
