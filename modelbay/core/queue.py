"""The queue of accepted batch requests: drained per version, in order, by up to one drainer per instance."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from modelbay.core.background import Background

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueuedItem:
    """A committed `pending` request waiting for an instance."""

    request_id: str
    version_id: str
    data: Any
    timeout: int
    priority: int  # 0 high, 1 standard


class BatchQueue:
    """In-memory order over the store's pending requests; the store stays the source of truth.

    `run` gets each item once, in priority-then-arrival order per version; `drainers_for`
    says how many items of a version may run at once (its maximum instances).
    """

    def __init__(
        self,
        run: Callable[[QueuedItem], Awaitable[None]],
        drainers_for: Callable[[str], int],
    ) -> None:
        self._run = run
        self._drainers_for = drainers_for
        self._pending: dict[str, tuple[deque[QueuedItem], deque[QueuedItem]]] = {}
        self._drainers: dict[str, int] = {}
        self._background = Background("batch queue")
        self._closing = False

    def push(self, items: list[QueuedItem]) -> None:
        """Queue committed items (in arrival order) and start drainers for their versions."""
        versions = set()
        for item in items:
            queues = self._pending.setdefault(item.version_id, (deque(), deque()))
            queues[min(item.priority, 1)].append(item)
            versions.add(item.version_id)
        for version_id in versions:
            self._start_drainers(version_id)

    def depth(self, version_id: str) -> int:
        queues = self._pending.get(version_id)
        return 0 if queues is None else len(queues[0]) + len(queues[1])

    async def close(self, grace_s: float) -> None:
        """Stop taking items, let running ones finish for up to `grace_s`, then cancel the rest."""
        self._closing = True
        await self._background.close(grace_s)

    def _pop(self, version_id: str) -> QueuedItem | None:
        if self._closing:
            return None
        queues = self._pending.get(version_id)
        if queues is None:
            return None
        for queue in queues:
            if queue:
                return queue.popleft()
        del self._pending[version_id]
        return None

    def _start_drainers(self, version_id: str) -> None:
        try:
            wanted = self._drainers_for(version_id)
        except Exception:
            log.exception("cannot size the drainers of version %s", version_id)
            wanted = 1
        while self._drainers.get(version_id, 0) < min(wanted, self.depth(version_id)):
            self._drainers[version_id] = self._drainers.get(version_id, 0) + 1
            self._background.spawn(self._drain(version_id), name=f"drain-{version_id}")

    async def _drain(self, version_id: str) -> None:
        try:
            while (item := self._pop(version_id)) is not None:
                try:
                    await self._run(item)
                except Exception:
                    log.exception("running queued request %s failed", item.request_id)
        finally:
            self._drainers[version_id] -= 1
            if not self._drainers[version_id]:
                del self._drainers[version_id]
