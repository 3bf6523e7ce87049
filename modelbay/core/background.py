"""Background work on the event loop: held tasks, periodic loops, a graceful close, shared commits.

The loop keeps only weak references to its tasks, so a task nobody holds may be dropped by the
garbage collector mid-run; every background task of the core is held here until it ends. A task
that fails is logged (not left to "exception was never retrieved"), and each pass of a loop has
its own try/except, so one bad pass never ends the loop.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: One pass of a periodic loop: sync or async; it may return the seconds until the next pass
#: (0: at once), else the loop's period applies.
Pass = Callable[[], Awaitable[float | None] | float | None]


class Background:
    """The background tasks and loops of one owner, started by it and closed with it."""

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[_Loop] = []

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run `coro` as a task held until it ends; an exception it ends with is logged."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def every(self, period_s: float, run_pass: Pass, name: str, *, wake: asyncio.Event | None = None) -> None:
        """Start a loop that runs `run_pass` now and then every `period_s` (or what the pass returns).

        Setting `wake` starts the next pass at once; a pass that fails is logged and the loop goes on.
        """
        self._loops.append(_Loop(period_s, run_pass, f"{self._owner}: {name}", wake))

    @property
    def tasks(self) -> set[asyncio.Task[Any]]:
        """The spawned tasks still running (a copy)."""
        return set(self._tasks)

    async def stop_loops(self) -> None:
        """Stop every loop (a pass under way is cancelled) and wait until they have ended."""
        loops, self._loops = self._loops, []
        for loop in loops:
            loop.stop()
        await asyncio.gather(*(loop.task for loop in loops), return_exceptions=True)

    async def close(self, grace_s: float = 0.0) -> None:
        """Stop the loops, let spawned tasks finish for up to `grace_s`, then cancel the rest and
        wait until they have ended."""
        await self.stop_loops()
        tasks = self.tasks
        if tasks and grace_s > 0:
            _, tasks = await asyncio.wait(tasks, timeout=grace_s)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s: background task %s failed", self._owner, task.get_name(), exc_info=exc)


class _Loop:
    """One periodic loop, running from its creation until `stop`."""

    def __init__(self, period_s: float, run_pass: Pass, name: str, wake: asyncio.Event | None) -> None:
        self.period_s = period_s
        self.run_pass = run_pass
        self.name = name
        self.wake = wake
        # A flag as well as the cancel: on Python 3.11 a wait with a timeout can swallow a cancel
        # that arrives as the wait ends, and the loop would go round again.
        self.stopping = False
        self.task = asyncio.get_running_loop().create_task(self.run(), name=name)

    def stop(self) -> None:
        self.stopping = True
        if self.wake is not None:
            self.wake.set()
        self.task.cancel()

    async def run(self) -> None:
        while not self.stopping:
            if self.wake is not None:
                self.wake.clear()  # a wake during the pass starts the next one at once
            delay: float | None = None
            try:
                result = self.run_pass()
                delay = await result if inspect.isawaitable(result) else result
            except Exception:
                log.exception("%s failed", self.name)
            delay = self.period_s if delay is None else delay
            if delay > 0 and not self.stopping:
                await self._sleep(delay)

    async def _sleep(self, delay: float) -> None:
        if self.wake is None:
            await asyncio.sleep(delay)
            return
        try:
            async with asyncio.timeout(delay):
                await self.wake.wait()
        except TimeoutError:
            pass


class Coalescer(Generic[T, R]):
    """Items added while a write is under way share the next write: one commit of a few statements
    for many outcomes, not a few statements for each.

    `write` takes a batch and returns one result per item, in order; `add` resolves to the item's
    result, or raises what the write of its batch raised.
    """

    def __init__(self, write: Callable[[list[T]], Awaitable[list[R]]]) -> None:
        self._write = write
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None  # held: the loop keeps only weak references

    async def add(self, item: T) -> R:
        waiter: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, waiter))
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return await waiter

    async def _flush(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    results = await self._write([item for item, _ in batch])
                except Exception as exc:
                    for _, waiter in batch:
                        if not waiter.done():
                            waiter.set_exception(exc)
                    continue
                for (_, waiter), result in zip(batch, results, strict=True):
                    if not waiter.done():
                        waiter.set_result(result)
        finally:
            self._flusher = None
