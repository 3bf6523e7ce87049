"""Edge cases of the request operations: bounds, bodies, time zones, instances freed by a cancel,
and workers orphaned by a killed server."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.server import Server, wait_until
from tests.integration.conftest import (  # noqa: F401  (own_server is a fixture)
    alive,
    deploy,
    error_of,
    kill_leftovers,
    own_server,
    query,
    ubiops,
    unique,
)
from tests.integration.test_batch_queue import SLEEPS_MS, batch, direct, marking_sleeper, statuses, workers


def deployed(server: Server, source: str = SLEEPS_MS, **version: Any) -> tuple[str, str]:
    name = unique("edge")
    credentials = server.create_project(name)
    with ubiops(server, credentials["token"]) as client:
        deploy(client, name, "sleeper", source, plain=False, **version)
    return name, credentials["token"]


# --- an offset beyond SQLite's 64-bit integers ------------------------------------------------


@pytest.mark.parametrize("offset", [2**63, 10**20])
def test_a_list_offset_beyond_64_bits_is_a_400_not_a_500(server: Server, offset: int) -> None:
    name, token = deployed(server)
    with ubiops(server, token) as client:
        response = client.get(f"/projects/{name}/deployments/sleeper/requests", params={"offset": offset})
    assert response.status_code == 400, (response.status_code, response.text)
    error_of(response)


# --- a cancel body that is not a list, even a falsy one ----------------------------------------


@pytest.mark.parametrize("body", [b"{}", b"false", b"0", b'""'])
def test_a_cancel_whose_body_is_not_a_list_is_a_400_and_cancels_nothing(server: Server, body: bytes) -> None:
    name, token = deployed(server, maximum_instances=1)
    with ubiops(server, token) as client:
        ids = batch(client, name, "sleeper", [{"x": 30000}, {"x": 1}, {"x": 1}])
        wait_until(lambda: statuses(server.data_dir, ids) == ["processing", "pending", "pending"], timeout=30)
        response = client.post(
            f"/projects/{name}/deployments/sleeper/requests/cancel",
            params={"status": "pending"},
            content=body,
            headers={"content-type": "application/json"},
        )
        after = statuses(server.data_dir, ids)
        client.patch(f"/projects/{name}/deployments/sleeper/requests/{ids[0]}", json={"status": "cancelled"})
    assert response.status_code == 400, (response.status_code, response.text)
    assert after == ["processing", "pending", "pending"]


# --- a request waiting for the only instance when the one holding it is stopped ---------------


@pytest.mark.parametrize("how", ["delete", "cancel"])
def test_a_request_waiting_for_the_only_instance_is_served_once_the_running_one_is_stopped(
    server: Server, how: str, shared_path: Path
) -> None:
    source, markers = marking_sleeper(shared_path)
    name, token = deployed(server, source, maximum_instances=1)
    base = f"/projects/{name}/deployments/sleeper"
    with ubiops(server, token) as client:
        (running,) = batch(client, name, "sleeper", [{"x": 30000}])
        # Its code runs (a direct request would otherwise be served first, as it should be)
        wait_until(lambda: (markers / "30000").exists(), timeout=30)
        answers: dict[str, httpx.Response] = {}

        def waiting_request() -> None:
            with ubiops(server, token) as c:
                answers["direct"] = direct(c, name, "sleeper", {"x": 1}, timeout=15)

        thread = threading.Thread(target=waiting_request, daemon=True)
        thread.start()
        # It is waiting for the instance: recorded as processing after 50 ms, while the other runs.
        wait_until(lambda: len(query(server.data_dir, "SELECT id FROM requests WHERE status = 'processing' "
                                     "AND version_id = (SELECT version_id FROM requests WHERE id = ?)", running)) == 2,
                   timeout=10)
        if how == "delete":
            assert client.delete(f"{base}/requests/{running}").status_code == 204
        else:
            assert client.patch(f"{base}/requests/{running}", json={"status": "cancelled"}).status_code == 200
        thread.join(timeout=30)
    response = answers["direct"]
    assert response.status_code == 200, response.text
    # Not "Request timed out": an instance was started for it once the other was stopped.
    assert response.json()["status"] == "completed", response.text


# --- start_date / end_date with a UTC offset ---------------------------------------------------


@pytest.mark.parametrize("hours", [5, -5])
def test_a_date_window_around_now_written_with_a_utc_offset_lists_the_requests(server: Server, hours: int) -> None:
    name, token = deployed(server)
    with ubiops(server, token) as client:
        request_id = direct(client, name, "sleeper", {"x": 1}).json()["id"]
        now = datetime.now(UTC).astimezone(timezone(timedelta(hours=hours)))
        response = client.get(
            f"/projects/{name}/deployments/sleeper/requests",
            params={"start_date": (now - timedelta(minutes=5)).isoformat(),
                    "end_date": (now + timedelta(minutes=5)).isoformat()},
        )
    assert response.status_code == 200, response.text
    assert [r["id"] for r in response.json()] == [request_id]


# --- a worker orphaned by a SIGKILLed server ---------------------------------------------------


def test_a_worker_orphaned_by_a_killed_server_exits_even_while_its_request_hangs(
    own_server: Callable[..., Server], shared_path: Path  # noqa: F811
) -> None:
    source, markers = marking_sleeper(shared_path)
    srv = own_server()
    credentials = srv.create_project("orphan")
    with ubiops(srv, credentials["token"]) as client:
        deploy(client, "orphan", "hangs", source, plain=False)
        (request_id,) = batch(client, "orphan", "hangs", [{"x": 3_600_000}])  # an hour
    wait_until(lambda: (markers / "3600000").exists(), timeout=30)  # its code is running
    orphans = workers(srv)
    assert orphans
    own_server.remember_children()  # type: ignore[attr-defined]
    srv.stop(signal.SIGKILL)
    try:
        wait_until(lambda: not alive(orphans), timeout=10)
    finally:
        kill_leftovers(orphans)
