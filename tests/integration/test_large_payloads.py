"""Large request payloads live in the blob store, not in the database: on a real server, read back
through the API, the database file checked with the stdlib, the blob folder with the file system."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.fixtures.databases import database_url_for
from tests.fixtures.server import Server, wait_until
from tests.integration.conftest import deploy, kill_leftovers, query, ubiops, unique

#: Echoes its input; sleeps a minute on "sleep" (to hold a one-instance queue).
ECHO = '''
import time


class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        if data == "sleep":
            time.sleep(60)
        return data
'''

#: Four times the 64 KiB threshold's weight in megabytes: large enough that storing it inline
#: would grow the database by twice its size (input and result).
LARGE = "payload " * (2 << 18)  # 2 MiB

#: What the database (file and WAL) may grow by for one large request: its row, not its payloads.
MAX_GROWTH = 256 << 10

DONE = ("completed", "failed", "cancelled")


def db_bytes(data_dir: Path) -> int:
    return sum(path.stat().st_size for path in data_dir.glob("modelbay.db*"))


def payload_files(data_dir: Path, request_id: str) -> list[str]:
    """The payload blobs of a request: files in the data dir on SQLite, blobs in the database shared
    by every node otherwise (`store.blobs`)."""
    if database_url_for(data_dir) is not None:
        rows = query(data_dir, "SELECT key FROM blobs WHERE key LIKE ?", f"payloads/{request_id}/%")
        return sorted(row["key"].rsplit("/", 1)[1] for row in rows)
    folder = data_dir / "blobs" / "payloads" / request_id
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def keys_of(data_dir: Path, table: str, request_id: str) -> dict[str, Any]:
    [row] = query(data_dir, f"SELECT data IS NULL AS no_data, result IS NULL AS no_result, data_key, result_key "
                            f"FROM {table} WHERE id = ?", request_id)
    return dict(row)


def echo_pipeline(client: httpx.Client, project: str, deployment: str, **version: Any) -> str:
    """A plain pipeline whose one object is `deployment`; returns its name."""
    name = unique("echoes")
    response = client.post(f"/projects/{project}/pipelines", json={"name": name, "input_type": "plain",
                                                                   "output_type": "plain"})
    assert response.status_code == 201, response.text
    response = client.post(f"/projects/{project}/pipelines/{name}/versions", json={
        "version": "v1", "objects": [{"name": "echo", "reference_name": deployment}], "attachments": [
            {"destination_name": "echo", "sources": [{"source_name": "pipeline_start"}]},
            {"destination_name": "pipeline_end", "sources": [{"source_name": "echo"}]}], **version})
    assert response.status_code == 201, response.text
    return name


def step_request_id(data_dir: Path, pipeline_request_id: str) -> str:
    [row] = [row for row in query(data_dir, "SELECT id, origin FROM requests")
             if json.loads(row["origin"]).get("pipeline_request_id") == pipeline_request_id]
    return str(row["id"])


def test_a_large_direct_request_round_trips_with_its_payloads_outside_the_database(
        project: dict[str, str], server: Server) -> None:
    name = project["name"]
    with ubiops(server, project["token"]) as client:
        deploy(client, name, "echo", ECHO)
        base = f"/projects/{name}/deployments/echo/requests"
        assert client.post(base, json="warm").status_code == 200
        before = db_bytes(server.data_dir)

        # When a 2 MiB request is echoed
        response = client.post(base, json=LARGE)

        # Then the answer is whole, the database grew by a row, and the payloads are two files
        assert response.status_code == 200, response.text[:300]
        body = response.json()
        assert (body["status"], body["result"] == LARGE) == ("completed", True)
        request_id = body["id"]
        assert db_bytes(server.data_dir) - before < MAX_GROWTH
        assert keys_of(server.data_dir, "requests", request_id) == {
            "no_data": 1, "no_result": 1, "data_key": f"payloads/{request_id}/data",
            "result_key": f"payloads/{request_id}/result"}
        assert payload_files(server.data_dir, request_id) == ["data", "result"]

        # And every way of reading the request gives the payloads back
        detail = client.get(f"{base}/{request_id}").json()
        assert (detail["request_data"] == LARGE, detail["result"] == LARGE) == (True, True)
        [collected] = client.post(f"{base}/collect", json=[request_id]).json()
        assert (collected["request_data"] == LARGE, collected["result"] == LARGE) == (True, True)
        assert client.get(f"{base}/{request_id}/input").text == LARGE
        assert client.get(f"{base}/{request_id}/output").text == LARGE
        assert "request_data" not in client.get(f"{base}/{request_id}", params={"metadata_only": "true"}).json()

        # And a small request stays in its row
        small = client.post(base, json="small").json()
        assert keys_of(server.data_dir, "requests", small["id"]) == {
            "no_data": 0, "no_result": 0, "data_key": None, "result_key": None}
        assert payload_files(server.data_dir, small["id"]) == []

        # And deleting the request removes its payloads before the call answers
        assert client.delete(f"{base}/{request_id}").status_code == 204
        assert payload_files(server.data_dir, request_id) == []
        assert client.get(f"{base}/{request_id}").status_code == 404


def test_large_batch_requests_round_trip_and_a_batch_delete_removes_their_payloads(
        project: dict[str, str], server: Server) -> None:
    name = project["name"]
    with ubiops(server, project["token"]) as client:
        deploy(client, name, "echo", ECHO)
        base = f"/projects/{name}/deployments/echo/requests"
        before = db_bytes(server.data_dir)
        response = client.post(f"{base}/batch", json=[LARGE, "small", LARGE])
        assert response.status_code == 201, response.text
        ids = [r["id"] for r in response.json()]

        rows = wait_until(lambda: (found := client.post(f"{base}/collect", json=ids).json())
                          and all(r["status"] in DONE for r in found) and found, timeout=60)

        assert [r["status"] for r in rows] == ["completed"] * 3
        assert [r["request_data"] for r in rows] == [r["result"] for r in rows] == [LARGE, "small", LARGE]
        assert db_bytes(server.data_dir) - before < MAX_GROWTH
        assert [payload_files(server.data_dir, i) for i in ids] == [["data", "result"], [], ["data", "result"]]

        assert client.post(f"{base}/delete", json=ids).status_code == 200
        assert [payload_files(server.data_dir, i) for i in ids] == [[], [], []]


def test_large_pipeline_requests_round_trip_and_deleting_one_removes_its_steps_payloads(
        project: dict[str, str], server: Server) -> None:
    name = project["name"]
    with ubiops(server, project["token"]) as client:
        deploy(client, name, "echo", ECHO)
        pipeline = echo_pipeline(client, name, "echo")
        base = f"/projects/{name}/pipelines/{pipeline}/requests"
        before = db_bytes(server.data_dir)

        # A direct pipeline request: its own payloads and its step's are blobs
        response = client.post(base, json=LARGE)
        assert response.status_code == 200, response.text[:300]
        assert (response.json()["status"], response.json()["result"] == LARGE) == ("completed", True)
        direct_id = response.json()["id"]
        step_id = step_request_id(server.data_dir, direct_id)
        assert keys_of(server.data_dir, "pipeline_requests", direct_id)["result_key"] == f"payloads/{direct_id}/result"
        assert payload_files(server.data_dir, direct_id) == payload_files(server.data_dir, step_id) == ["data", "result"]
        detail = client.get(f"{base}/{direct_id}").json()
        assert (detail["request_data"] == LARGE, detail["result"] == LARGE) == (True, True)
        assert client.get(f"{base}/{direct_id}/output").text == LARGE

        # A batch pipeline request: its input is read back from the blob store when it runs
        response = client.post(f"{base}/batch", json=[LARGE])
        assert response.status_code == 201, response.text
        [batch_id] = [r["id"] for r in response.json()]
        [row] = wait_until(lambda: (found := client.post(f"{base}/collect", json=[batch_id]).json())
                           and found[0]["status"] in DONE and found, timeout=60)
        assert (row["status"], row["request_data"] == LARGE, row["result"] == LARGE) == ("completed", True, True)
        assert db_bytes(server.data_dir) - before < 2 * MAX_GROWTH

        # Deleting the pipeline requests removes their payloads and their steps' ones
        batch_step_id = step_request_id(server.data_dir, batch_id)
        assert client.post(f"{base}/delete", json=[direct_id, batch_id]).status_code == 200
        for request_id in (direct_id, step_id, batch_id, batch_step_id):
            assert payload_files(server.data_dir, request_id) == [], request_id


def test_the_retention_sweep_removes_the_payloads_of_expired_requests(own_server: Callable[..., Server]) -> None:
    # Given a deployment and a pipeline that keep requests for 0 s, and a large request to each
    first = own_server()
    project = first.create_project("expiring")
    with ubiops(first, project["token"]) as client:
        deploy(client, "expiring", "echo", ECHO, request_retention_time=0)
        pipeline = echo_pipeline(client, "expiring", "echo", request_retention_time=0)
        direct = client.post("/projects/expiring/deployments/echo/requests", json=LARGE).json()["id"]
        piped = client.post(f"/projects/expiring/pipelines/{pipeline}/requests", json=LARGE).json()["id"]
    ids = [direct, piped, step_request_id(first.data_dir, piped)]
    assert [payload_files(first.data_dir, i) for i in ids] == [["data", "result"]] * 3

    # When the server restarts (it sweeps at start, then every minute)
    first.stop()
    second = own_server(first.data_dir)

    # Then the expired requests are gone, and their payloads with them
    wait_until(lambda: not query(second.data_dir, "SELECT id FROM pipeline_requests"), timeout=30)
    assert query(second.data_dir, "SELECT id FROM requests") == []
    # the files go once the rows' deletion is committed, a moment after the rows
    wait_until(lambda: [payload_files(second.data_dir, i) for i in ids] == [[], [], []], timeout=30)


def test_a_large_batch_request_pending_when_the_server_is_killed_runs_with_its_input_after_a_restart(
        own_server: Callable[..., Server]) -> None:
    # Given a one-instance deployment busy with a long item, and a large one waiting behind it
    first = own_server()
    project = first.create_project("recovering")
    with ubiops(first, project["token"]) as client:
        deploy(client, "recovering", "echo", ECHO, maximum_instances=1)
        base = "/projects/recovering/deployments/echo/requests"
        response = client.post(f"{base}/batch", json=["sleep", LARGE])
        assert response.status_code == 201, response.text
        busy, waiting = [r["id"] for r in response.json()]
        wait_until(lambda: client.get(f"{base}/{busy}", params={"metadata_only": "true"}).json()["status"]
                   == "processing", timeout=60)

    # When the server is killed and started again
    own_server.remember_children()  # type: ignore[attr-defined]
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    kill_leftovers(own_server.children_seen)  # type: ignore[attr-defined]
    second = own_server(first.data_dir)

    # Then the waiting item runs with its whole input, read back from the blob store
    with ubiops(second, project["token"]) as client:
        row = wait_until(lambda: (found := client.get(f"{base}/{waiting}").json())["status"] in DONE and found,
                         timeout=60)
    assert (row["status"], row["result"] == LARGE) == ("completed", True)
