"""The places a node runs one version's runs in: at most a number at once, taken in turn.

A run that ends may hand its place to the first run waiting, with whatever that run needs to
start at once (`Runs` passes the attempt it started for it, in the write that hands the place
over); otherwise the place is given back, and the first run waiting takes it as a free one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any


class RunPlaces:
    """Like `asyncio.Semaphore` (first come, first served), with places handed from run to run."""

    def __init__(self, places: int) -> None:
        self._places = self._free = places
        self._waiting: deque[tuple[asyncio.Future[Any], Any]] = deque()

    @property
    def taken(self) -> int:
        """How many places runs hold now."""
        return self._places - self._free

    def full(self) -> bool:
        """Whether a run that comes now waits for a place."""
        return self._free == 0 or bool(self._waiting)

    async def take(self, ticket: Any = None) -> Any:
        """A place: returns None for a free one, or what the run that handed its place over passed.
        `ticket`: what a run handing its place over learns of this one (`first_waiting`)."""
        if not self.full():
            self._free -= 1
            return None
        taken = asyncio.get_running_loop().create_future()
        entry = (taken, ticket)
        self._waiting.append(entry)
        try:
            return await taken
        except asyncio.CancelledError:
            if not taken.cancelled():
                self.give_back()  # it had a place and no longer wants it
            elif entry in self._waiting:
                self._waiting.remove(entry)
            raise

    def first_waiting(self) -> Any:
        """The ticket of the run that takes the next place (None when none waits, or it gave none)."""
        while self._waiting and self._waiting[0][0].done():  # cancelled while it waited
            self._waiting.popleft()
        return self._waiting[0][1] if self._waiting else None

    def hand_over(self, handed: Any) -> None:
        """Give the place of a run that ends to the first run waiting (`first_waiting` just named its
        ticket), with `handed` (not None)."""
        taken, _ = self._waiting.popleft()
        taken.set_result(handed)

    def give_back(self) -> None:
        """Free the place of a run that ends: the first run waiting takes it, as a free one."""
        while self._waiting:
            taken, _ = self._waiting.popleft()
            if not taken.done():
                taken.set_result(None)
                return
        self._free += 1
