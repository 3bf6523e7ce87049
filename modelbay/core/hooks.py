"""Hooks: points where one part of the core lets others react to what happened in it.

A hook holds any number of reactions, called in the order they were added. As with middleware
in task queues (dramatiq's is the model), a reaction that raises is logged and never fails what
it reacts to: a run that reached its end stays ended, a delivery that was made stays recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Concatenate, Generic, ParamSpec

from sqlalchemy import Connection

from modelbay.store.driver import driver_cursor

log = logging.getLogger(__name__)

P = ParamSpec("P")


class Hook(Generic[P]):
    """Reactions to one kind of event, told after it has happened."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._reactions: list[Callable[P, None]] = []

    def add(self, reaction: Callable[P, None]) -> None:
        self._reactions.append(reaction)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> None:
        for reaction in self._reactions:
            try:
                reaction(*args, **kwargs)
            except Exception:
                log.exception("%s: reaction %s failed", self.name, getattr(reaction, "__qualname__", reaction))


class WriteHook(Generic[P]):
    """Reactions that write in the transaction of the event they react to, so both commit together.

    Each runs in a savepoint: one that raises is rolled back alone, and the event is still written.
    The savepoint is set on the driver: SQLAlchemy's `begin_nested` cost more than the reaction of a
    job's settled items (one per commit of delivered POSTs).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._reactions: list[Callable[Concatenate[Connection, P], None]] = []

    def add(self, reaction: Callable[Concatenate[Connection, P], None]) -> None:
        self._reactions.append(reaction)

    def __call__(self, conn: Connection, *args: P.args, **kwargs: P.kwargs) -> None:
        for reaction in self._reactions:
            cursor = driver_cursor(conn)
            cursor.execute("SAVEPOINT write_hook")
            try:
                reaction(conn, *args, **kwargs)
            except Exception:
                cursor.execute("ROLLBACK TO SAVEPOINT write_hook")
                log.exception("%s: reaction %s failed", self.name, getattr(reaction, "__qualname__", reaction))
            cursor.execute("RELEASE SAVEPOINT write_hook")
