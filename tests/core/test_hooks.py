import logging

import pytest
from sqlalchemy import create_engine, text

from modelbay.core.hooks import Hook, WriteHook


def test_every_reaction_is_told_in_order_and_a_failing_one_is_logged_not_raised(
        caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []
    hook: Hook[[str]] = Hook("things")

    def fails(_value: str) -> None:
        raise RuntimeError("boom")

    hook.add(lambda value: seen.append(f"first {value}"))
    hook.add(fails)
    hook.add(lambda value: seen.append(f"last {value}"))
    with caplog.at_level(logging.ERROR):
        hook("x")
    assert seen == ["first x", "last x"]
    assert "things: reaction" in caplog.text and "boom" in caplog.text


def test_a_failing_write_reaction_is_rolled_back_alone_and_the_event_still_commits() -> None:
    engine = create_engine("sqlite://")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (v TEXT)"))
    hook: WriteHook[[str]] = WriteHook("writes")

    def writes(conn, value: str) -> None:  # type: ignore[no-untyped-def]
        conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": f"reaction {value}"})

    def writes_then_fails(conn, value: str) -> None:  # type: ignore[no-untyped-def]
        conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": f"lost {value}"})
        raise RuntimeError("boom")

    hook.add(writes_then_fails)
    hook.add(writes)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES ('event')"))
        hook(conn, "x")
    with engine.connect() as conn:
        assert sorted(conn.scalars(text("SELECT v FROM t"))) == ["event", "reaction x"]
