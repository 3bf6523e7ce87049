"""Pipeline requests survive a server killed with SIGKILL: after a restart every accepted one ends terminal."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.fixtures.server import Server, wait_until
from tests.integration.conftest import deploy, kill_leftovers, query, ubiops
from tests.integration.test_batch_queue import MARKS_THEN_SLEEPS_MS, RECOVERY_DEADLINE_S, TERMINAL, workers

X = [{"name": "x", "data_type": "int"}]


def pipeline_rows(data_dir: Path, ids: list[str]) -> dict[str, dict[str, Any]]:
    marks = ",".join("?" * len(ids))
    found = query(data_dir, f"SELECT id, status, error_message, result FROM pipeline_requests WHERE id IN ({marks})",
                  *ids)
    return {row["id"]: dict(row) for row in found}


def statuses(data_dir: Path, ids: list[str]) -> list[str | None]:
    found = pipeline_rows(data_dir, ids)
    return [found[i]["status"] if i in found else None for i in ids]


def test_no_pipeline_request_is_lost_when_the_server_is_killed_with_sigkill(
    own_server: Callable[..., Server], shared_path: Path
) -> None:
    # Given a one-step pipeline over a one-instance sleeper, a direct request and a batch of 12 in flight
    markers = shared_path / "markers"
    first, project, client = _sleeper_pipeline(own_server, markers)
    base = "/projects/crash/pipelines"
    response = client.post(f"{base}/wait/requests/batch", json=[{"x": 20000}] + [{"x": 10 + i} for i in range(11)])
    assert response.status_code == 201, response.text
    ids = [r["id"] for r in response.json()]
    direct_answer: list[Any] = []
    threading.Thread(target=lambda: direct_answer.append(_direct(first, project["token"])), daemon=True).start()
    wait_until(lambda: (markers / "20000").exists(), timeout=30)
    wait_until(lambda: len(query(first.data_dir, "SELECT id FROM pipeline_requests")) == 13, timeout=10)

    # When the server is killed and started again
    orphans = workers(first)
    own_server.remember_children()  # type: ignore[attr-defined]
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    kill_leftovers(orphans)
    all_ids = [row["id"] for row in query(first.data_dir, "SELECT id FROM pipeline_requests")]
    assert "processing" in statuses(first.data_dir, all_ids)
    second = own_server(first.data_dir)

    # Then every accepted pipeline request ends terminal: what ran failed, what waited completed
    wait_until(lambda: all(s in TERMINAL for s in statuses(second.data_dir, all_ids)), timeout=RECOVERY_DEADLINE_S)
    found = pipeline_rows(second.data_dir, all_ids)
    assert found[ids[0]]["status"] == "failed"
    assert "server stopped" in found[ids[0]]["error_message"]
    assert {found[i]["status"] for i in ids[-3:]} == {"completed"}  # these waited, pending, behind 8 running
    stuck = query(second.data_dir, "SELECT id FROM requests WHERE status NOT IN ('completed', 'failed', 'cancelled')")
    assert stuck == []


def _sleeper_pipeline(own_server: Callable[..., Server], markers: Path) -> tuple[Server, dict[str, str], httpx.Client]:
    """A server with pipeline `wait`: one object, a one-instance deployment sleeping `x` ms (marking its start)."""
    markers.mkdir()
    markers.chmod(0o777)  # the sandboxed code writes here
    first = own_server()
    project = first.create_project("crash")
    client = ubiops(first, project["token"])
    deploy(client, "crash", "sleeper", MARKS_THEN_SLEEPS_MS.format(markers=str(markers)), plain=False,
           maximum_instances=1)
    base = "/projects/crash/pipelines"
    assert client.post(base, json={"name": "wait", "input_type": "structured", "input_fields": X,
                                   "output_type": "structured", "output_fields": X}).status_code == 201
    version = {"version": "v1", "objects": [{"name": "sleep", "reference_name": "sleeper"}], "attachments": [
        {"destination_name": "sleep", "sources": [{"source_name": "pipeline_start", "mapping": [
            {"source_field_name": "x", "destination_field_name": "x"}]}]},
        {"destination_name": "pipeline_end", "sources": [{"source_name": "sleep", "mapping": [
            {"source_field_name": "x", "destination_field_name": "x"}]}]},
    ]}
    assert client.post(f"{base}/wait/versions", json=version).status_code == 201, "version"
    return first, project, client


def test_sigterm_lets_a_running_batch_pipeline_request_finish(own_server: Callable[..., Server],
                                                               shared_path: Path) -> None:
    first, _, client = _sleeper_pipeline(own_server, shared_path / "markers")
    response = client.post("/projects/crash/pipelines/wait/requests/batch", json=[{"x": 1500}])
    assert response.status_code == 201, response.text
    [request_id] = [r["id"] for r in response.json()]
    wait_until(lambda: (shared_path / "markers" / "1500").exists(), timeout=30)
    own_server.remember_children()  # type: ignore[attr-defined]

    assert first.process is not None
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(timeout=30) == 0

    row = pipeline_rows(first.data_dir, [request_id])[request_id]
    assert row["status"] == "completed", row  # drained, not cut off


def _direct(server: Server, token: str) -> int:
    try:
        return ubiops(server, token).post("/projects/crash/pipelines/wait/requests", json={"x": 20001}).status_code
    except httpx.TransportError:
        return 0
