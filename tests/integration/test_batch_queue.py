"""The batch queue under a real server: crashes, drains, priorities, scaling, lost workers and bad input.

Everything runs against `modelbay serve` subprocesses over raw HTTP, with real worker processes.
The store is read read-only with the stdlib, and processes are watched through /proc.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.server import Server, wait_until
from tests.integration.conftest import (
    alive,
    cmdline,
    create_version,
    deploy,
    descendants,
    error_of,
    is_worker,
    kill_leftovers,
    query,
    ubiops,
    unique,
)

#: Structured deployment (field `x`, int): sleeps `x` milliseconds, then echoes its input.
SLEEPS_MS = '''
import time


class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        time.sleep(data["x"] / 1000)
        return dict(data)
'''

#: Like SLEEPS_MS, but first touches `<MARKERS>/<x>` so a test sees the request's code has begun.
MARKS_THEN_SLEEPS_MS = """
import os
import time

MARKERS = {markers!r}


class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        open(os.path.join(MARKERS, str(data["x"])), "w").close()
        time.sleep(data["x"] / 1000)
        return dict(data)
"""

TERMINAL = {"completed", "failed", "cancelled"}
RECOVERY_DEADLINE_S = 60.0
SIGTERM_DEADLINE_S = 30.0


# --- helpers ---------------------------------------------------------------------------------


def workers(server: Server, version_id: str | None = None) -> dict[int, int]:
    """The server's live worker processes (pid -> start time), read from /proc; with `version_id`,
    only that version's (a worker runs in its version's package directory)."""
    assert server.process is not None
    found = {pid: start for pid, start in descendants(server.process.pid).items() if is_worker(pid)}
    if version_id is None:
        return found
    (row,) = query(server.data_dir, "SELECT active_revision_id FROM versions WHERE id = ?", version_id)
    # The server unpacked the revision's code under its data dir (the code's own folder may be inside).
    unpacked = os.path.realpath(server.data_dir / "builds" / "packages" / row["active_revision_id"])
    return {pid: start for pid, start in found.items() if _inside(_cwd(pid), unpacked)}


def _inside(path: str | None, folder: str) -> bool:
    return path is not None and (path == folder or path.startswith(folder + os.sep))


def _cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def version_id(client: httpx.Client, project: str, deployment: str, version: str = "v1") -> str:
    response = client.get(f"/projects/{project}/deployments/{deployment}/versions/{version}")
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def batch(client: httpx.Client, project: str, deployment: str, items: list[Any], **params: Any) -> list[str]:
    """Create a batch over raw HTTP; returns the request ids in item order."""
    response = client.post(f"/projects/{project}/deployments/{deployment}/requests/batch", json=items, params=params)
    assert response.status_code == 201, response.text
    created = response.json()
    assert [r["status"] for r in created] == ["pending"] * len(items), created
    return [r["id"] for r in created]


def direct(client: httpx.Client, project: str, deployment: str, data: Any, **params: Any) -> httpx.Response:
    return client.post(f"/projects/{project}/deployments/{deployment}/requests", json=data, params=params)


def rows(data_dir: Path, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The stored requests among `ids`: id -> row (as a dict)."""
    marks = ",".join("?" * len(ids))
    found = query(
        data_dir,
        f"SELECT id, status, error_message, result, started_at, finished_at FROM requests WHERE id IN ({marks})",
        *ids,
    )
    return {row["id"]: dict(row) for row in found}


def statuses(data_dir: Path, ids: list[str]) -> list[str | None]:
    found = rows(data_dir, ids)
    return [found[i]["status"] if i in found else None for i in ids]


def all_terminal(data_dir: Path, ids: list[str]) -> bool:
    return all(s in TERMINAL for s in statuses(data_dir, ids))


def requests_of(data_dir: Path, project_id: str) -> list[tuple[Any, ...]]:
    """A project's stored requests with what a mistaken call could change."""
    found = query(
        data_dir,
        "SELECT id, status, error_message, finished_at FROM requests WHERE project_id = ? ORDER BY id",
        project_id,
    )
    return [tuple(row) for row in found]


def marking_sleeper(shared_path: Path) -> tuple[str, Path]:
    """MARKS_THEN_SLEEPS_MS writing into a fresh `shared_path/markers` (a directory the sandboxed
    code can write to): (source, markers dir)."""
    markers = shared_path / "markers"
    markers.mkdir()
    markers.chmod(0o777)
    return MARKS_THEN_SLEEPS_MS.format(markers=str(markers)), markers


def started(value: str) -> datetime:
    return datetime.fromisoformat(value)


# --- crashes and stops -----------------------------------------------------------------------


def test_no_request_of_a_batch_is_lost_when_the_server_is_killed_with_sigkill(
    own_server: Callable[..., Server], shared_path: Path
) -> None:
    source, markers = marking_sleeper(shared_path)
    first = own_server()
    project = first.create_project("crash")
    with ubiops(first, project["token"]) as client:
        deploy(client, "crash", "sleeper", source, plain=False, maximum_instances=1)
        ids = batch(client, "crash", "sleeper", [{"x": 20000}] + [{"x": 10 + i} for i in range(29)])

    wait_until(lambda: (markers / "20000").exists(), timeout=30)  # its code is running
    # and, running for longer than a moment, it is recorded as such
    wait_until(lambda: statuses(first.data_dir, ids) == ["processing"] + ["pending"] * 29, timeout=10)
    orphans = workers(first)
    assert len(orphans) == 1, {pid: cmdline(pid) for pid in orphans}
    own_server.remember_children()  # type: ignore[attr-defined]
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    # The busy worker is orphaned, still inside the request's code (it would only notice the
    # closed pipe when it answers): end it, as a crash of the whole machine would.
    kill_leftovers(orphans)
    wait_until(lambda: not alive(orphans), timeout=10)
    assert statuses(first.data_dir, ids) == ["processing"] + ["pending"] * 29  # nothing settled it yet

    second = own_server(first.data_dir)

    wait_until(lambda: all_terminal(second.data_dir, ids), timeout=RECOVERY_DEADLINE_S, interval=0.05)
    found = rows(second.data_dir, ids)
    lost = found[ids[0]]
    assert lost["status"] == "failed", lost
    assert "server stopped" in str(lost["error_message"]), lost
    assert lost["finished_at"] is not None
    for index, request_id in enumerate(ids[1:]):
        row = found[request_id]
        assert row["status"] == "completed", row
        assert row["result"] is not None and b'"x":%d' % (10 + index) in bytes(row["result"]).replace(b" ", b"")
    assert statuses(second.data_dir, ids).count("pending") == 0


def test_sigterm_lets_the_running_batch_item_finish_and_a_restart_completes_the_pending_ones(
    own_server: Callable[..., Server], shared_path: Path
) -> None:
    source, markers = marking_sleeper(shared_path)
    first = own_server()
    project = first.create_project("drain")
    with ubiops(first, project["token"]) as client:
        deploy(client, "drain", "sleeper", source, plain=False, maximum_instances=1)
        ids = batch(client, "drain", "sleeper", [{"x": 1500}] + [{"x": 10}] * 10)
    wait_until(lambda: (markers / "1500").exists(), timeout=30)  # its code is running
    wait_until(lambda: statuses(first.data_dir, ids) == ["processing"] + ["pending"] * 10, timeout=10)
    own_server.remember_children()  # type: ignore[attr-defined]
    children = workers(first)

    assert first.process is not None
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(timeout=SIGTERM_DEADLINE_S) == 0

    after_stop = statuses(first.data_dir, ids)
    assert after_stop[0] == "completed", after_stop  # the running item was drained, not cut off
    assert "processing" not in after_stop and None not in after_stop, after_stop
    assert "pending" in after_stop[1:], after_stop  # the stop did not wait for the whole queue
    wait_until(lambda: not alive(children), timeout=10)

    second = own_server(first.data_dir)

    wait_until(lambda: all_terminal(second.data_dir, ids), timeout=RECOVERY_DEADLINE_S, interval=0.05)
    assert statuses(second.data_dir, ids) == ["completed"] * len(ids)


def test_a_batch_request_cancelled_just_as_it_starts_is_stopped_and_the_queue_goes_on(
    server: Server, shared_path: Path
) -> None:
    source, markers = marking_sleeper(shared_path)
    name = unique("cancel-early")
    credentials = server.create_project(name)
    with ubiops(server, credentials["token"]) as client:
        deploy(client, name, "sleeper", source, plain=False, maximum_instances=1)
        assert direct(client, name, "sleeper", {"x": 1}).status_code == 200  # the instance is up: no start delay
        ids = batch(client, name, "sleeper", [{"x": 30000}, {"x": 10}])
        # Cancelled within moments of its start: most often before it is even marked processing.
        wait_until(lambda: (markers / "30000").exists(), timeout=30, interval=0.002)
        response = client.patch(f"/projects/{name}/deployments/sleeper/requests/{ids[0]}",
                                json={"status": "cancelled"})
        assert response.status_code == 200, response.text

        # Its 30 s call was stopped: the next item ran long before it would have ended.
        wait_until(lambda: all_terminal(server.data_dir, ids), timeout=15)
    assert statuses(server.data_dir, ids) == ["cancelled", "completed"]


# --- ordering --------------------------------------------------------------------------------


def test_a_direct_request_is_served_ahead_of_queued_batch_work(server: Server) -> None:
    name = unique("ahead")
    credentials = server.create_project(name)
    with ubiops(server, credentials["token"]) as client:
        deploy(client, name, "sleeper", SLEEPS_MS, plain=False, maximum_instances=1)
        ids = batch(client, name, "sleeper", [{"x": 100}] * 20)
        wait_until(lambda: "processing" in statuses(server.data_dir, ids), timeout=30)

        response = direct(client, name, "sleeper", {"x": 0}, timeout=30)
        still_pending = statuses(server.data_dir, ids).count("pending")

        assert response.status_code == 200, response.text
        assert response.json()["status"] == "completed" and response.json()["result"] == {"x": 0}
        assert still_pending >= 10, still_pending  # it waited for at most the item running, not the queue
        wait_until(lambda: all_terminal(server.data_dir, ids), timeout=60)
        assert set(statuses(server.data_dir, ids)) == {"completed"}


def test_batch_priority_0_starts_before_priority_1_queued_earlier(server: Server) -> None:
    name = unique("priority")
    credentials = server.create_project(name)
    with ubiops(server, credentials["token"]) as client:
        deploy(client, name, "sleeper", SLEEPS_MS, plain=False, maximum_instances=1)
        (blocker,) = batch(client, name, "sleeper", [{"x": 1000}])
        wait_until(lambda: statuses(server.data_dir, [blocker]) == ["processing"], timeout=30)
        standard = batch(client, name, "sleeper", [{"x": 10}] * 5, priority=1)
        high = batch(client, name, "sleeper", [{"x": 10}] * 5, priority=0)
        assert statuses(server.data_dir, [blocker]) == ["processing"]  # both waited behind the blocker

        everything = [blocker, *standard, *high]
        wait_until(lambda: all_terminal(server.data_dir, everything), timeout=60)
        found = rows(server.data_dir, everything)
        assert {found[i]["status"] for i in everything} == {"completed"}
        # Through the API too: time_started of every high item is before every standard one.
        listed = client.get(f"/projects/{name}/deployments/sleeper/requests", params={"limit": 20}).json()
        api_started = {r["id"]: started(r["time_started"]) for r in listed}
    last_high = max(started(found[i]["started_at"]) for i in high)
    first_standard = min(started(found[i]["started_at"]) for i in standard)
    assert last_high < first_standard, (last_high, first_standard)
    assert max(api_started[i] for i in high) <= min(api_started[i] for i in standard)


# --- instances -------------------------------------------------------------------------------


def test_an_idle_instance_is_stopped_after_its_maximum_idle_time_and_the_next_request_cold_starts(
    server: Server,
) -> None:
    name = unique("idle")
    credentials = server.create_project(name)
    with ubiops(server, credentials["token"]) as client:
        # Idle for 3 s: long enough to see the instance after its first request on a busy machine
        deploy(client, name, "sleeper", SLEEPS_MS, plain=False, minimum_instances=0, maximum_idle_time=3)
        version = version_id(client, name, "sleeper")
        first = direct(client, name, "sleeper", {"x": 1})
        assert first.status_code == 200 and first.json()["status"] == "completed", first.text
        before = workers(server, version)
        assert len(before) == 1, before

        wait_until(lambda: not workers(server, version), timeout=15, interval=0.05)

        second = direct(client, name, "sleeper", {"x": 2})
    assert second.status_code == 200, second.text
    assert second.json()["status"] == "completed" and second.json()["result"] == {"x": 2}
    now = workers(server, version)
    assert len(now) == 1 and not set(now) & set(before), (before, now)  # a new process served it


def test_minimum_instances_run_from_the_build_on_and_again_after_a_restart_before_any_request(
    own_server: Callable[..., Server],
) -> None:
    first = own_server()
    credentials = first.create_project("warm")
    with ubiops(first, credentials["token"]) as client:
        deploy(client, "warm", "sleeper", SLEEPS_MS, plain=False, minimum_instances=2, maximum_instances=3,
               maximum_idle_time=1)
        version = version_id(client, "warm", "sleeper")

    # No request was made, yet the minimum runs, and stays past the maximum idle time.
    wait_until(lambda: len(workers(first, version)) == 2, timeout=30)
    started = workers(first, version)
    time.sleep(2.5)  # two reconcile periods beyond maximum_idle_time: what must NOT happen is a stop
    assert workers(first, version) == started
    assert query(first.data_dir, "SELECT id FROM requests") == []
    first.stop()

    second = own_server(first.data_dir)
    wait_until(lambda: len(workers(second, version)) == 2, timeout=30)


def test_no_more_than_maximum_instances_workers_run_under_ten_concurrent_requests(server: Server) -> None:
    name = unique("capped")
    credentials = server.create_project(name)
    with ubiops(server, credentials["token"]) as client:
        deploy(client, name, "sleeper", SLEEPS_MS, plain=False, maximum_instances=2)
        version = version_id(client, name, "sleeper")

    most = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal most
        while not done.is_set():
            most = max(most, len(workers(server, version)))

    def one(i: int) -> httpx.Response:
        with ubiops(server, credentials["token"]) as c:
            return direct(c, name, "sleeper", {"x": 300}, timeout=60)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(one, range(10)))
    finally:
        done.set()
        sampler.join(timeout=10)

    assert [a.status_code for a in answers] == [200] * 10, [a.text for a in answers]
    assert [a.json()["status"] for a in answers] == ["completed"] * 10
    assert most <= 2, most
    assert most == 2, most  # ten waiting requests did scale it up to its maximum


def test_a_worker_killed_mid_request_fails_that_request_and_the_queue_goes_on(server: Server, shared_path: Path) -> None:
    source, markers = marking_sleeper(shared_path)
    name = unique("lost")
    credentials = server.create_project(name)
    with ubiops(server, credentials["token"]) as client:
        deploy(client, name, "sleeper", source, plain=False, maximum_instances=1)
        version = version_id(client, name, "sleeper")
        ids = batch(client, name, "sleeper", [{"x": 20000}, {"x": 10}, {"x": 11}, {"x": 12}])
        wait_until(lambda: (markers / "20000").exists(), timeout=30)
        wait_until(lambda: statuses(server.data_dir, ids) == ["processing", "pending", "pending", "pending"])
        (pid,) = workers(server, version)

        os.kill(pid, signal.SIGKILL)

        wait_until(lambda: all_terminal(server.data_dir, ids), timeout=30)
        found = rows(server.data_dir, ids)
        assert found[ids[0]]["status"] == "failed", found[ids[0]]
        message = str(found[ids[0]]["error_message"])
        assert "stopped unexpectedly" in message and "SIGKILL" in message, message
        assert [found[i]["status"] for i in ids[1:]] == ["completed"] * 3
        got = client.get(f"/projects/{name}/deployments/sleeper/requests/{ids[0]}").json()
        assert got["status"] == "failed" and got["error_message"] == message
        assert pid not in workers(server, version)


# --- bad input -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sleeper(server: Server) -> dict[str, str]:
    """A project on the session server with a built `sleeper` (v1) and a `sleeper` v2 without code."""
    name = unique("bad")
    credentials = server.create_project(name)
    with ubiops(server, credentials["token"]) as client:
        deploy(client, name, "sleeper", SLEEPS_MS, plain=False, maximum_instances=1)
        create_version(client, name, "sleeper", "v2")
        project_id = client.get(f"/projects/{name}").json()["id"]
    return {"project": name, "token": credentials["token"], "id": project_id}


BASE = "/projects/{project}/deployments/sleeper"

#: (method, path under the deployment, params, JSON body or raw bytes), each a 400.
BAD_REQUESTS: list[tuple[str, str, dict[str, Any], Any]] = [
    ("POST", "/requests/batch", {}, 5),
    ("POST", "/requests/batch", {}, True),
    ("POST", "/requests/batch", {}, b"null"),
    ("POST", "/requests/batch", {}, 1.5),
    ("POST", "/requests/batch", {}, b"not json"),
    ("POST", "/requests/batch", {}, []),
    ("POST", "/requests/batch", {}, [{"x": 1}] * 251),
    ("POST", "/requests/batch", {"timeout": 172801}, [{"x": 1}]),
    ("POST", "/requests/batch", {"timeout": 0}, [{"x": 1}]),
    ("POST", "/requests/batch", {"timeout": "soon"}, [{"x": 1}]),
    ("POST", "/requests/batch", {"priority": 2}, [{"x": 1}]),
    ("POST", "/requests/batch", {"priority": -1}, [{"x": 1}]),
    ("POST", "/requests/batch", {"priority": "high"}, [{"x": 1}]),
    *[
        (method, path, params, body)
        for path in ("/requests/collect", "/requests/cancel", "/requests/delete")
        for method, params in [("POST", {})]
        for body in ({"ids": ["a"]}, "an-id", 7, ["a"] * 251, [1, 2], ["a", None], [["a"]], b"not json")
    ],
    ("POST", "/requests/cancel", {"status": "completed"}, []),
    ("POST", "/requests/cancel", {"status": "bogus"}, []),
    ("POST", "/requests/delete", {}, []),
    ("GET", "/requests", {"status": "bogus"}, None),
    ("GET", "/requests", {"status": "pending,completed"}, None),
    ("GET", "/requests", {"status": "processing,failed"}, None),
    ("GET", "/requests", {"limit": 0}, None),
    ("GET", "/requests", {"limit": 1001}, None),
    ("GET", "/requests", {"limit": "abc"}, None),
    ("GET", "/requests", {"offset": -1}, None),
    ("GET", "/requests", {"offset": "x"}, None),
    ("GET", "/requests", {"start_date": "notadate"}, None),
    ("GET", "/requests", {"end_date": "2024-13-01"}, None),
]

UNKNOWN = "00000000-0000-4000-8000-000000000000"


def send(client: httpx.Client, method: str, path: str, params: dict[str, Any], body: Any) -> httpx.Response:
    if isinstance(body, bytes):
        return client.request(method, path, params=params, content=body, headers={"content-type": "application/json"})
    if body is None and method == "GET":
        return client.request(method, path, params=params)
    return client.request(method, path, params=params, json=body)


def test_bad_input_on_every_request_operation_is_a_400_with_an_error_and_changes_nothing(
    server: Server, sleeper: dict[str, str]
) -> None:
    project = sleeper["project"]
    with ubiops(server, sleeper["token"]) as client:
        base = BASE.format(project=project)
        # Something to cancel or delete by mistake: a request running and one waiting.
        waiting = batch(client, project, "sleeper", [{"x": 30000}, {"x": 1}])
        wait_until(lambda: statuses(server.data_dir, waiting) == ["processing", "pending"], timeout=30)
        before = requests_of(server.data_dir, sleeper["id"])

        answers = {}
        for method, path, params, body in BAD_REQUESTS:
            for prefix in (base, f"{base}/versions/v1"):
                answers[(method, prefix + path, repr(params), repr(body)[:40])] = send(
                    client, method, prefix + path, params, body
                )
        request_id = waiting[1]
        for prefix in (base, f"{base}/versions/v1"):
            get = f"{prefix}/requests/{request_id}"
            answers[("GET", get, "metadata_only=maybe", "")] = client.get(get, params={"metadata_only": "maybe"})
            for patch in ({"status": "completed"}, {"status": "pending"}, {}, ["cancelled"], "cancelled"):
                answers[("PATCH", get, "", repr(patch))] = client.patch(get, json=patch)
            answers[("PATCH", get, "", "not json")] = client.patch(
                get, content=b"{", headers={"content-type": "application/json"}
            )

        wrong = {key: (r.status_code, r.text) for key, r in answers.items() if r.status_code != 400}
        assert not wrong, wrong
        for response in answers.values():
            error_of(response)
        assert requests_of(server.data_dir, sleeper["id"]) == before
        # Leave nothing running for the next test of this module to see change.
        assert client.patch(f"{base}/requests/{waiting[0]}", json={"status": "cancelled"}).status_code == 200
        wait_until(lambda: all_terminal(server.data_dir, waiting), timeout=30)


def test_an_unknown_request_id_is_a_404_on_get_patch_delete_input_and_output(
    server: Server, sleeper: dict[str, str]
) -> None:
    project = sleeper["project"]
    with ubiops(server, sleeper["token"]) as client:
        base = BASE.format(project=project)
        direct(client, project, "sleeper", {"x": 1})
        before = requests_of(server.data_dir, sleeper["id"])
        answers = []
        for prefix in (base, f"{base}/versions/v1"):
            one = f"{prefix}/requests/{UNKNOWN}"
            answers += [
                client.get(one),
                client.get(one, params={"metadata_only": "True"}),
                client.patch(one, json={"status": "cancelled"}),
                client.delete(one),
                client.get(f"{one}/input"),
                client.get(f"{one}/output"),
                client.post(f"{prefix}/requests/collect", json=[UNKNOWN]),
                client.post(f"{prefix}/requests/cancel", json=[UNKNOWN]),
                client.post(f"{prefix}/requests/delete", json=[UNKNOWN]),
            ]
        assert [r.status_code for r in answers] == [404] * len(answers), [r.text for r in answers]
        for response in answers:
            assert UNKNOWN in error_of(response)
        assert requests_of(server.data_dir, sleeper["id"]) == before


def test_a_batch_to_a_version_without_built_code_is_a_400_and_stores_nothing(
    server: Server, sleeper: dict[str, str]
) -> None:
    project = sleeper["project"]
    with ubiops(server, sleeper["token"]) as client:
        before = requests_of(server.data_dir, sleeper["id"])
        response = client.post(f"/projects/{project}/deployments/sleeper/versions/v2/requests/batch", json=[{"x": 1}])
    assert response.status_code == 400, response.text
    assert "no successfully built code" in error_of(response)
    assert requests_of(server.data_dir, sleeper["id"]) == before
