"""The places of one version's runs on a node: taken in turn, handed over or given back."""

from __future__ import annotations

import asyncio

from modelbay.core.run_places import RunPlaces


def test_runs_take_free_places_then_wait_in_turn_for_a_place_handed_over_or_given_back() -> None:
    async def scenario() -> list[object]:
        places = RunPlaces(1)
        assert await places.take("first") is None and places.full()
        second = asyncio.create_task(places.take("second"))
        third = asyncio.create_task(places.take("third"))
        await asyncio.sleep(0)
        assert places.first_waiting() == "second"
        places.hand_over("started")
        assert places.first_waiting() == "third"
        places.give_back()  # the second's place, freed
        results = [await second, await third]
        places.give_back()
        assert not places.full()
        return results

    assert asyncio.run(scenario()) == ["started", None]


def test_a_run_that_stops_waiting_leaves_its_turn_and_one_that_stops_after_its_turn_gives_the_place_back() -> None:
    async def scenario() -> tuple[object, bool]:
        places = RunPlaces(1)
        await places.take()
        gone = asyncio.create_task(places.take("gone"))
        later = asyncio.create_task(places.take("later"))
        await asyncio.sleep(0)
        gone.cancel()  # still waiting: its turn passes to the next
        assert places.first_waiting() == "later"
        places.give_back()
        later.cancel()  # its place was given, but it no longer wants it
        await asyncio.gather(gone, later, return_exceptions=True)
        return places.first_waiting(), places.full()

    assert asyncio.run(scenario()) == (None, False)
