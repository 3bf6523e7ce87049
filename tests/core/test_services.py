"""Scaling settings of services (how the ABEJA SDK spells them is read by its dialect:
tests/dialects/test_abeja_scaling.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from modelbay.core.bus import Bus
from modelbay.core.clock import utcnow
from modelbay.core.deployments import Deployments, Target
from modelbay.core.errors import InvalidInput, NotFound
from modelbay.core.projects import Caller, Projects
from modelbay.core.services import Scaling, Services, check_scaling
from modelbay.engine import Engine, open_database
from modelbay.settings import Settings
from modelbay.store.db import Database
from modelbay.store.tables import ServiceRow
from tests.core.test_runs import BASE, build_result, building_version
from tests.core.test_scheduler import FakeRuntime


def test_a_new_service_runs_one_instance_by_default() -> None:
    assert check_scaling({}) == Scaling(1, 1, 1, False)


def test_min_and_max_default_to_the_instance_number() -> None:
    assert check_scaling({"instance_number": 3}) == Scaling(3, 3, 3, False)


def test_autoscale_takes_a_bool() -> None:
    assert check_scaling({"enable_autoscale": True, "min_instance_number": 1, "max_instance_number": 4}) == \
        Scaling(1, 1, 4, True)
    assert check_scaling({"enable_autoscale": True}).enable_autoscale is True


def test_an_update_changes_only_what_it_names() -> None:
    current = Scaling(2, 1, 4, True)
    assert check_scaling({"instance_number": 3}, current) == Scaling(3, 1, 4, True)


@pytest.mark.parametrize("fields", [{"instance_number": "3"}, {"enable_autoscale": "true"}])
def test_the_core_takes_no_numbers_or_booleans_spelled_as_text(fields: dict[str, object]) -> None:
    with pytest.raises(InvalidInput) as raised:
        check_scaling(fields)
    assert raised.value.field in fields


@pytest.mark.parametrize(
    "fields",
    [
        {"instance_number": 0},
        {"instance_number": 21},
        {"instance_number": True},
        {"instance_number": "\u00b2"},  # isdigit() says yes, int() says no
        {"instance_number": "9" * 5000},  # more digits than int() converts
        {"min_instance_number": 3, "max_instance_number": 2},
        {"enable_autoscale": "yes"},
        {"enable_autoscale": 1},
    ],
)
def test_bad_scaling_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        check_scaling(fields)


@contextlib.contextmanager
def one_service(tmp_path: Path, status: str, at: datetime | None = None) -> Iterator[tuple[Database, Services, str]]:
    """A store holding deployment `d`, its version `1` and its service `s` in `status` (made and
    modified `at`, by default now), and the `Services` over it: (store, services, deployment id)."""
    db = open_database(Settings(data_dir=tmp_path / "data"))
    projects, deployments = Projects(db, "admin", Bus()), Deployments(db, Bus())
    try:
        project = projects.get(Caller(None), projects.create("svc").name)
        deployments.create(project, {"name": "d", "input_type": "plain", "output_type": "plain"})
        version = deployments.create_version(project, "d", {"name": "1", "handler": "main:handler"})
        at = at or utcnow()
        with db.write() as session:
            session.add(ServiceRow(id="s", project_id=project.id, deployment_id=version.deployment_id,
                                   version_id=version.id, status=status, instance_number=1,
                                   min_instance_number=1, max_instance_number=1, instance_type="cpu-0.25",
                                   created_at=at, modified_at=at))
        services = Services(db, deployments, None, None, None, None, 0, Bus())  # type: ignore[arg-type]
        yield db, services, version.deployment_id
    finally:
        db.close()


def test_a_service_changed_since_its_readiness_was_seen_is_not_marked_ready(tmp_path: Path) -> None:
    # Given a service in progress, as a reconcile pass read it
    seen = utcnow()
    with one_service(tmp_path, "in_progress", seen) as (db, services, _):
        # When a scaling change lands before the pass marks it ready, the mark is refused
        with db.write() as session:
            session.get(ServiceRow, "s").modified_at = utcnow()  # type: ignore[union-attr]
        assert not services._mark_ready("s", seen)
        with db.read() as session:
            changed = session.get(ServiceRow, "s")
        assert changed is not None and changed.status == "in_progress"
        # Then the next pass, which sees the change, marks it
        assert services._mark_ready("s", changed.modified_at)
        with db.read() as session:
            assert session.get(ServiceRow, "s").status == "ready"  # type: ignore[union-attr]


class _Pools:
    """The scheduler's pools, as far as services see them; made on demand, as a call makes them."""

    def __init__(self) -> None:
        self.live: set[str] = set()

    def drop(self, key: str) -> None:
        self.live.discard(key)


def test_a_call_that_outlives_the_deletion_of_its_service_leaves_no_pool_behind() -> None:
    # Given a call through a service that waits for an instance
    row = ServiceRow(id="s", deployment_id="d", version_id="v", status="in_progress", instance_number=1,
                     min_instance_number=1, max_instance_number=1, enable_autoscale=False, environment={})
    pools = _Pools()
    target = dataclasses.replace(BASE, pool="service:s")

    class Stubs:
        def target_of_version(self, _version_id: str) -> Target:
            return target

        def serving_target_check(self, t: Target) -> Target:
            return t

        async def direct(self, t: Target, *_args: Any, **_kwargs: Any) -> Any:
            pools.live.add(t.pool)
            services._forget("s")  # When the service is deleted meanwhile, retiring its pool,
            pools.live.add(t.pool)  # the waiting call makes the scheduler build the pool again
            return SimpleNamespace(logs="")

    class Store:  # what `Services.get` reads: the service's row
        @contextlib.contextmanager
        def read(self) -> Iterator[Any]:
            yield SimpleNamespace(get=lambda _table, service_id: row if service_id == "s" else None)

    stubs = Stubs()
    services = Services(Store(), stubs, stubs, pools, None, None, 0, Bus())  # type: ignore[arg-type]
    asyncio.run(services.call(services.get("d", "s"), {}, {}))
    # Then, once the call ends, that pool is retired too
    assert pools.live == set()


# --- services of a version whose code is still building -------------------------------------


def service_while_building(tmp_path: Path, ok: bool) -> tuple[ServiceRow, str | None, list[str]]:
    """Create a service while its version builds, then end the build as `ok` says; wait until it settles."""

    async def scenario() -> tuple[ServiceRow, str | None, list[str]]:
        engine = Engine(Settings(data_dir=tmp_path / "data"), runtime=FakeRuntime())
        await engine.start()
        try:
            target, revision_id = building_version(engine)
            row = await engine.services.create(target, {})
            assert row.status == "in_progress"
            await asyncio.to_thread(engine.revisions._finish, revision_id, build_result(tmp_path, ok))
            deadline = asyncio.get_running_loop().time() + 10
            while (current := engine.services.get(row.deployment_id, row.id)).status == "in_progress":
                assert asyncio.get_running_loop().time() < deadline, "the service never settled"
                await asyncio.sleep(0.02)
            lines = [line.message for line in engine.journal.page(row.id)]
            return current, engine.services.start_error(current), lines
        finally:
            await engine.close()

    return asyncio.run(scenario())


def test_a_service_created_while_its_code_builds_becomes_ready_when_the_build_succeeds(tmp_path: Path) -> None:
    row, error, lines = service_while_building(tmp_path, ok=True)
    assert row.status == "ready" and error is None
    assert lines[1] == "The version's code is still building; the service starts when the build ends"


def test_a_service_created_while_its_code_builds_stops_with_the_builds_reason_when_it_fails(tmp_path: Path) -> None:
    row, error, lines = service_while_building(tmp_path, ok=False)
    assert row.status == "stopped"
    assert error == "The build of version '1' (revision r) failed: Build failed: no wheel for torch"
    assert lines[-1] == f"{error}; the service stopped"


@pytest.mark.parametrize("alone", [True, False])
def test_a_server_joining_running_servers_leaves_their_ready_services_ready(tmp_path: Path, alone: bool) -> None:
    with one_service(tmp_path, "ready") as (db, services, _):
        async def start_and_close() -> None:
            services.start(alone=alone)
            await services.close()

        asyncio.run(start_and_close())
        with db.read() as session:
            status = session.get(ServiceRow, "s").status  # type: ignore[union-attr]
        # Alone, the server brings the service back (ready once its instances are); joining
        # others, their instances serve it meanwhile.
        assert status == ("in_progress" if alone else "ready")


def test_a_call_serves_what_another_node_changed_in_the_store_and_the_row_it_holds_otherwise(tmp_path: Path) -> None:
    with one_service(tmp_path, "ready") as (db, services, d):
        held = services.serving(d, "s")
        assert services.serving(d, "s") is held  # nothing changed: the row it holds
        for change in ({"max_instance_number": 3}, {"status": "stopped"}, {"enable_autoscale": True}):
            with db.write() as session:  # as another node writes it, without a word to this one
                session.query(ServiceRow).filter_by(id="s").update(change)
            served = services.serving(d, "s")
            assert served is not held and all(getattr(served, key) == value for key, value in change.items())
            held = served
        with pytest.raises(NotFound):
            services.serving("another-deployment", "s")
        with db.write() as session:
            session.query(ServiceRow).filter_by(id="s").delete()
        with pytest.raises(NotFound):
            services.serving(d, "s")
