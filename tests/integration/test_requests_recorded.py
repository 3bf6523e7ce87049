"""Direct requests are recorded in the store: read it read-only with the stdlib, as an operator would."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable

import httpx

from tests.fixtures.packages import NOOP
from tests.fixtures.server import Server, wait_until
from tests.integration.conftest import SLEEPS, deploy, query, ubiops

REQUEST_COLUMNS = "id, status, input_size, output_size, origin, created_at, finished_at, error_message, mode"


def request_row(server: Server, request_id: str) -> dict[str, object] | None:
    rows = query(server.data_dir, f"SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?", request_id)
    return dict(rows[0]) if rows else None


def test_a_direct_request_is_committed_before_its_answer_is_sent(project: dict[str, str], server: Server) -> None:
    name = project["name"]
    with ubiops(server, project["token"]) as client:
        deploy(client, name, "recorded", NOOP, plain=False)
        response = client.post(f"/projects/{name}/deployments/recorded/requests", json={"x": 42})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "completed" and body["result"] == {"x": 42}

    row = request_row(server, body["id"])  # read at once: no polling, the answer came after the commit

    assert row is not None, "the answered request is not in the store"
    assert row["status"] == "completed"
    assert row["mode"] == "direct"
    assert isinstance(row["input_size"], int) and row["input_size"] > 0
    assert isinstance(row["output_size"], int) and row["output_size"] > 0
    assert "created_by" in json.loads(str(row["origin"]))
    assert row["finished_at"] is not None
    assert row["error_message"] is None


def test_a_request_running_when_the_server_is_killed_ends_failed_after_a_restart(
    own_server: Callable[..., Server],
) -> None:
    first = own_server()
    project = first.create_project("killed")
    with ubiops(first, project["token"]) as client:
        deploy(client, "killed", "sleeper", SLEEPS)
        version_id = client.get("/projects/killed/deployments/sleeper/versions/v1").json()["id"]

    outcome: dict[str, object] = {}

    def long_request() -> None:
        try:
            with ubiops(first, project["token"]) as c:
                outcome["response"] = c.post(
                    "/projects/killed/deployments/sleeper/requests",
                    content=b"30",
                    headers={"content-type": "text/plain"},
                    params={"timeout": 60},
                )
        except httpx.TransportError as exc:  # the server dies under it: expected
            outcome["error"] = exc

    thread = threading.Thread(target=long_request, daemon=True)
    thread.start()

    def processing() -> list[str]:
        rows = query(
            first.data_dir, "SELECT id FROM requests WHERE version_id = ? AND status = 'processing'", version_id
        )
        return [row["id"] for row in rows]

    (request_id,) = wait_until(processing, timeout=30)
    own_server.remember_children()  # type: ignore[attr-defined]  # the worker outlives a kill -9: ended at teardown
    first.stop(signal.SIGKILL)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert "response" not in outcome, outcome  # the request was cut off, not answered
    assert request_row(first, request_id)["status"] == "processing"  # type: ignore[index]

    second = own_server(first.data_dir)

    row = request_row(second, request_id)
    assert row is not None
    assert row["status"] == "failed", row
    assert "server stopped" in str(row["error_message"]), row
    assert row["finished_at"] is not None
    # The version itself still serves after the restart.
    with ubiops(second, project["token"]) as client:
        response = client.post(
            "/projects/killed/deployments/sleeper/requests", content=b"0", headers={"content-type": "text/plain"}
        )
    assert response.status_code == 200, response.text
    assert response.json()["result"] == "done"
