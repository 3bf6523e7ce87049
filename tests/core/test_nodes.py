"""Nodes: registration, heartbeats, the recovery of lapsed nodes and what each gives back."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Connection, select, update

from modelbay.core.clock import utcnow
from modelbay.core.nodes import DEAD, NODES, STOPPED, Nodes, owned_by
from modelbay.store.db import Database


class Recorder:
    """A recoverer that remembers which nodes it was asked to give back."""

    def __init__(self) -> None:
        self.calls: list[list[str | None]] = []

    def __call__(self, conn: Connection, node_ids: list[str | None]) -> int:
        self.calls.append(sorted(node_ids, key=str))
        return len(node_ids)


def ends(db: Database) -> dict[str, str | None]:
    with db.read() as session:
        return dict(session.execute(select(NODES.c.id, NODES.c.end)).all())


def lapse(db: Database, node_id: str, seconds: float) -> None:
    with db.write() as session:
        session.execute(update(NODES).where(NODES.c.id == node_id)
                        .values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))


@pytest.mark.postgresql_only("on SQLite one server holds the store: a second node declares the first dead")
def test_a_node_whose_heartbeat_lapsed_is_declared_dead_once_and_its_work_given_back(
        db: Database, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = Nodes(db, tmp_path / "a", lease_s=5), Nodes(db, tmp_path / "b", lease_s=5)
    recorder = Recorder()
    b.add_recoverer(recorder)
    a.register()
    b.register()
    assert recorder.calls == []  # a lives

    assert b.recover_lapsed() == 0  # a beats (its registration counts)
    lapse(db, a.id, 6)
    assert b.recover_lapsed() == 1
    assert recorder.calls == [[a.id]]
    assert ends(db)[a.id] == DEAD
    assert b.recover_lapsed() == 0  # once
    assert recorder.calls == [[a.id]]


def test_a_node_declared_dead_goes_on_under_a_new_id(db: Database, tmp_path: Path) -> None:
    node = Nodes(db, tmp_path, lease_s=5)
    node.register()
    first = node.id
    lapse(db, first, 6)
    node.recover_lapsed()  # another node would do this; the node itself is as good a witness
    assert ends(db)[first] == DEAD

    node._beat()

    assert node.id != first
    assert ends(db)[node.id] is None
    assert (tmp_path / "node").read_text() == node.id


def test_a_node_declared_dead_gives_back_what_it_still_holds_under_its_old_id_when_it_learns_of_it(
        db: Database, tmp_path: Path) -> None:
    node = Nodes(db, tmp_path, lease_s=5)
    node.register()
    recorder = Recorder()
    node.add_recoverer(recorder)
    first = node.id
    lapse(db, first, 6)
    node.recover_lapsed()
    assert recorder.calls == [[first]]

    # What it claimed between that recovery and this beat, no recovery gives back: this beat does
    assert node._beat() == 1

    assert recorder.calls == [[first], [first]]
    assert node._beat() == 0 and len(recorder.calls) == 2


def test_the_next_server_on_a_data_dir_recovers_the_one_before_at_once(db: Database, tmp_path: Path) -> None:
    before = Nodes(db, tmp_path, lease_s=60)
    before.register()  # then killed: no close, its heartbeat is recent
    after = Nodes(db, tmp_path, lease_s=60)
    recorder = Recorder()
    after.add_recoverer(recorder)

    after.register()

    assert ends(db)[before.id] == DEAD
    assert recorder.calls and before.id in recorder.calls[0]


def test_a_node_that_stops_gives_back_its_own_work_and_says_so(db: Database, tmp_path: Path) -> None:
    node = Nodes(db, tmp_path, lease_s=5)
    recorder = Recorder()
    node.add_recoverer(recorder)
    node.register()
    recorder.calls.clear()

    async def live_then_stop() -> None:
        node.start()
        await asyncio.sleep(0)
        await node.close()

    asyncio.run(live_then_stop())

    assert recorder.calls == [[node.id]]
    assert ends(db)[node.id] == STOPPED


def test_rows_without_an_owner_are_given_back_only_when_no_node_lives(db: Database, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    alive = Nodes(db, tmp_path / "a", lease_s=60)
    alive.register()
    joining = Nodes(db, tmp_path / "b", lease_s=60)
    recorder = Recorder()
    joining.add_recoverer(recorder)

    joining.register()

    given = [node for call in recorder.calls for node in call]
    if db.is_sqlite:  # one server holds a SQLite store: the other is gone, and so is any claim
        assert alive.id in given and None in given
    else:  # the other node beats: neither it nor the rows without an owner are touched
        assert given == []


def test_owned_by_names_the_rows_of_the_given_nodes_and_none_means_without_owner(db: Database) -> None:
    owner = NODES.c.name  # any string column will do for the condition's shape
    assert str(owned_by(owner, ["a"]).compile()) == "nodes.name IN (__[POSTCOMPILE_name_1])"
    assert "IS NULL" in str(owned_by(owner, ["a", None]).compile())


def test_a_node_knows_whether_it_joined_a_live_node(db: Database, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = Nodes(db, tmp_path / "a", lease_s=60), Nodes(db, tmp_path / "b", lease_s=60)
    first.register()
    second.register()
    assert first.alone
    assert second.alone is db.is_sqlite  # on SQLite the first is gone by definition


def test_a_node_beats_while_its_event_loop_is_blocked(db: Database, tmp_path: Path) -> None:
    node = Nodes(db, tmp_path, lease_s=0.5)
    node.register()

    def beat() -> datetime:
        with db.read() as session:
            return session.scalar(select(NODES.c.heartbeat_at).where(NODES.c.id == node.id))

    async def blocked() -> tuple[datetime, datetime]:
        node.start()
        first = beat()
        time.sleep(1.0)  # the loop is stuck (a slow request, a long collection): the beats go on
        last = beat()
        await node.close()
        return first, last

    first, last = asyncio.run(blocked())
    assert last > first
