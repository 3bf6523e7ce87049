"""Calls made after one fixed delay unless cancelled first, all on one timer of the event loop.

A request still running after a moment is recorded as running. Most end within a millisecond, so
nearly every such call is cancelled: a timer each (made, pushed on the loop's heap, cancelled, and
later swept from it) costs more than an entry in an ordered dict.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class DelayedCalls:
    """Calls each callback `delay` seconds after it was added, unless cancelled first. Callbacks run
    on the loop, in the order they were added, up to one timer tick late."""

    def __init__(self, delay: float) -> None:
        self._delay = delay
        self._due: dict[int, tuple[float, Callable[[], None]]] = {}  # key -> (when, callback), oldest first
        self._keys = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, callback: Callable[[], None]) -> int:
        """Call `callback` after the delay; returns the key that cancels it. On the running loop."""
        key = next(self._keys)
        self._due[key] = (time.monotonic() + self._delay, callback)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._delay, self._fire)
        return key

    def cancel(self, key: int) -> None:
        """Do not make that call (nothing happens when it was made already)."""
        self._due.pop(key, None)

    def _fire(self) -> None:
        self._timer = None
        now = time.monotonic()
        while self._due:
            key = next(iter(self._due))
            when, callback = self._due[key]
            if when > now:
                self._timer = asyncio.get_running_loop().call_later(when - now, self._fire)
                return
            del self._due[key]
            try:
                callback()
            except Exception:
                log.exception("a delayed call failed")
