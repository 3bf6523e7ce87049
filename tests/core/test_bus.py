"""The bus between nodes: on a real PostgreSQL (two buses on two connections pools are two nodes),
and in one process (SQLite)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable

import psycopg
import pytest
from sqlalchemy import make_url

from modelbay.core.bus import Bus, Message
from modelbay.store.db import Database

DEADLINE_S = 10.0


async def eventually(check: Callable[[], bool], what: str) -> None:
    """Wait until `check()` holds, or fail saying `what` did not happen."""
    async with asyncio.timeout(DEADLINE_S):
        while not check():
            await asyncio.sleep(0.01)
    assert check(), what


def collector(bus: Bus, topic: str) -> list[Message]:
    seen: list[Message] = []
    bus.subscribe(topic, seen.append)
    return seen


def on_two_nodes(database_url: str, scenario: Callable[[Bus, Bus], Awaitable[None]]) -> None:
    """Run `scenario` with two started buses on one database, each with its own pool (two nodes)."""

    async def main() -> None:
        dbs = [Database(database_url), Database(database_url)]
        buses = [Bus(db, lambda name=name: name) for db, name in zip(dbs, ("node-a", "node-b"), strict=True)]
        try:
            for bus in buses:
                await bus.start()
            await scenario(*buses)
        finally:
            for bus in buses:
                await bus.close()
            for db in dbs:
                db.close()

    asyncio.run(main())


@pytest.mark.postgresql_only("LISTEN/NOTIFY between nodes")
def test_two_nodes_see_each_others_messages_with_the_sender(database_url: str) -> None:
    async def scenario(a: Bus, b: Bus) -> None:
        seen_a, seen_b = collector(a, "work"), collector(b, "work")
        other_topic = collector(b, "cancel")
        # When node A publishes (from a thread, as sync code does after its commit)
        await asyncio.to_thread(a.publish, "work", "version-1")
        # Then both nodes get it, each knowing whether it sent it
        await eventually(lambda: len(seen_a) == 1 and len(seen_b) == 1, "both nodes got the message")
        assert seen_a == [Message("work", "version-1", "node-a", from_here=True)]
        assert seen_b == [Message("work", "version-1", "node-a", from_here=False)]
        # And node B's answer reaches A, in order
        b.publish("work", "version-2")
        b.publish("work", "version-3")
        await eventually(lambda: len(seen_a) == 3, "node A got node B's messages")
        assert [(m.payload, m.sender, m.from_here) for m in seen_a[1:]] == [
            ("version-2", "node-b", False), ("version-3", "node-b", False)]
        assert other_topic == []

    on_two_nodes(database_url, scenario)


@pytest.mark.postgresql_only("a listener's connection to PostgreSQL")
def test_a_listener_whose_connection_dies_reconnects_and_asks_for_a_resync(database_url: str) -> None:
    async def scenario(a: Bus, b: Bus) -> None:
        resyncs_a, resyncs_b = threading.Event(), threading.Event()
        a.subscribe_resync(resyncs_a.set)
        b.subscribe_resync(resyncs_b.set)
        seen_b = collector(b, "work")
        # When B's listening connection is killed by the database
        conninfo = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(conninfo, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                ("modelbay bus node-b",)).fetchall()
        assert killed == [(True,)]
        # Then B reconnects and asks its users to refresh (it may have missed messages); A is untouched
        await eventually(resyncs_b.is_set, "node B resynced")
        assert not resyncs_a.is_set()
        # And messages reach B again
        a.publish("work", "after")
        await eventually(lambda: [m.payload for m in seen_b] == ["after"], "node B hears again")

    on_two_nodes(database_url, scenario)


@pytest.mark.postgresql_only("NOTIFY sent by a node's committer")
def test_a_handler_publishing_a_settings_change_returns_once_the_message_is_out(database_url: str) -> None:
    async def scenario(a: Bus, b: Bus) -> None:
        seen_b = collector(b, "version")
        # Given node A's committer busy with a write
        released = threading.Event()
        assert a._postgres is not None
        a._postgres.committer.submit(lambda _conn: released.wait(DEADLINE_S))
        try:
            # When a handler's thread publishes work, it returns at once (nothing to wait for)
            await asyncio.wait_for(asyncio.to_thread(a.publish, "work", "version-1"), DEADLINE_S)
            # But a version change waits for its message to go out: the client's next call may go to B
            publishing = asyncio.ensure_future(asyncio.to_thread(a.publish, "version", "version-1"))
            done, _ = await asyncio.wait([publishing], timeout=0.3)
            assert not done, "publish returned before the committer sent the message"
        finally:
            released.set()
        await asyncio.wait_for(publishing, DEADLINE_S)
        await eventually(lambda: [m.payload for m in seen_b] == ["version-1"], "node B got the change")

    on_two_nodes(database_url, scenario)


def test_in_one_process_every_subscriber_of_the_topic_gets_it_on_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        bus = Bus()  # one server holds the data (SQLite): delivered in this process only
        loop_thread = threading.get_ident()
        threads: list[int] = []
        seen: list[Message] = []
        told = asyncio.Event()

        def fails(_message: Message) -> None:
            raise RuntimeError("deliberate failure in a subscriber")

        async def later(message: Message) -> None:
            await asyncio.sleep(0)
            seen.append(message)
            told.set()

        bus.subscribe("cancel", fails)
        bus.subscribe("cancel", lambda message: threads.append(threading.get_ident()))
        bus.subscribe("cancel", later)
        bus.subscribe("work", lambda message: pytest.fail("another topic's subscriber was called"))
        bus.publish("cancel", "before the start")  # nobody listens yet: dropped
        await bus.start()
        try:
            # When a thread publishes
            await asyncio.to_thread(bus.publish, "cancel", "requests r-1")
            await asyncio.wait_for(told.wait(), DEADLINE_S)
            # Then the subscribers run on the loop, a failing one only logged
            assert threads == [loop_thread]
            assert seen == [Message("cancel", "requests r-1", bus.node_id, from_here=True)]
            assert "deliberate failure in a subscriber" in caplog.text
        finally:
            await bus.close()
        bus.publish("cancel", "after the close")  # dropped, without an error

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())


def test_a_message_too_large_for_postgresql_is_refused() -> None:
    with pytest.raises(ValueError):
        Bus().publish("work", "x" * 8000)
