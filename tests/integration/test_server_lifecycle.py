"""The server as an operator runs it: start, health, tokens, SIGTERM, restart on the same data dir."""

from __future__ import annotations

import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.fixtures.packages import PLAIN
from tests.fixtures.server import Server, free_port, wait_until
from tests.integration.conftest import SLEEPS, alive, cmdline, deploy, descendants, query, ubiops

SIGTERM_DEADLINE_S = 30.0
#: How long a refused `modelbay serve` may take to exit (well under 1 s; the margin is for a busy machine).
REFUSAL_DEADLINE_S = 30.0


def refused_serve(data_dir: Path, port: int) -> subprocess.CompletedProcess[str]:
    """`modelbay serve` that is expected to refuse; one that starts serving instead is stopped
    (SIGTERM) and the test fails."""
    process = subprocess.Popen(
        [sys.executable, "-m", "modelbay.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=REFUSAL_DEADLINE_S)
    except subprocess.TimeoutExpired:
        process.terminate()
        process.communicate(timeout=SIGTERM_DEADLINE_S)
        raise AssertionError(f"a second `modelbay serve` on {data_dir} port {port} kept running") from None
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def request_statuses(data_dir: Path, ids: list[str]) -> list[str]:
    rows = {row["id"]: row["status"] for row in query(data_dir, "SELECT id, status FROM requests")}
    return [rows[i] for i in ids]


def plain_request(client: httpx.Client, project: str, deployment: str, text: str) -> httpx.Response:
    return client.post(
        f"/projects/{project}/deployments/{deployment}/requests",
        content=text.encode(),
        headers={"content-type": "text/plain"},
    )


def test_health_answers_200_without_a_token(server: Server) -> None:
    response = httpx.get(f"{server.url}/health")

    assert response.status_code == 200


def test_the_admin_token_is_kept_in_the_data_dir_readable_by_its_owner_only(server: Server) -> None:
    path = server.data_dir / "admin_token"

    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == server.admin_token
    response = httpx.get(f"{server.url}/v2.1/projects", headers={"Authorization": f"Token {server.admin_token}"})
    assert response.status_code == 200, response.text


def test_modelbay_admin_token_overrides_the_kept_token(own_server: Callable[..., Server], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    kept = data_dir / "admin_token"
    kept.write_text("kept-token-0123456789abcdef\n")
    kept.chmod(0o600)

    srv = own_server(data_dir, extra_env={"MODELBAY_ADMIN_TOKEN": "env-token-0123456789abcdef"})

    def projects(token: str) -> httpx.Response:
        return httpx.get(f"{srv.url}/v2.1/projects", headers={"Authorization": f"Token {token}"})

    assert projects("env-token-0123456789abcdef").status_code == 200
    assert projects("kept-token-0123456789abcdef").status_code == 401
    created = httpx.post(
        f"{srv.url}/v2.1/projects",
        json={"name": "made-by-env-admin"},
        headers={"Authorization": "Token env-token-0123456789abcdef"},
    )
    assert created.status_code == 201, created.text


def test_sigterm_lets_a_running_request_finish_then_exits_leaving_no_worker_processes(
    own_server: Callable[..., Server],
) -> None:
    srv = own_server()
    project = srv.create_project("lifecycle")
    client = ubiops(srv, project["token"])
    deploy(client, "lifecycle", "sleeper", SLEEPS)
    warm = plain_request(client, "lifecycle", "sleeper", "0")  # starts a worker
    assert warm.status_code == 200 and warm.json()["result"] == "done", warm.text
    assert srv.process is not None
    children = descendants(srv.process.pid)
    assert any("worker.py" in cmdline(pid) for pid in children), {pid: cmdline(pid) for pid in children}
    own_server.remember_children()  # type: ignore[attr-defined]

    answers: dict[str, httpx.Response] = {}
    running = threading.Thread(
        target=lambda: answers.update(late=plain_request(client, "lifecycle", "sleeper", "2")), daemon=True
    )
    running.start()
    wait_until(lambda: query(srv.data_dir, "SELECT id FROM requests WHERE status = 'processing'"), timeout=30)
    srv.process.send_signal(signal.SIGTERM)
    # wait raises when the server outlives the deadline; 0 tells a supervisor the stop was clean
    assert srv.process.wait(timeout=SIGTERM_DEADLINE_S) == 0
    running.join(timeout=SIGTERM_DEADLINE_S)
    client.close()

    late = answers["late"]
    assert late.status_code == 200, late.text
    assert late.json()["status"] == "completed" and late.json()["result"] == "done", late.text
    statuses = [row["status"] for row in query(srv.data_dir, "SELECT status FROM requests WHERE id = ?", late.json()["id"])]
    assert statuses == ["completed"]
    wait_until(lambda: not alive(children), timeout=10)


def test_a_restart_on_the_same_data_dir_keeps_the_admin_token_projects_and_built_versions(
    own_server: Callable[..., Server],
) -> None:
    first = own_server()
    admin = first.admin_token
    project = first.create_project("survivor")
    with ubiops(first, project["token"]) as client:
        deploy(client, "survivor", "echo", PLAIN)
        revisions = client.get("/projects/survivor/deployments/echo/versions/v1/revisions").json()
    first.stop()

    second = own_server(first.data_dir)

    assert (second.data_dir / "admin_token").read_text().strip() == admin
    with ubiops(second, admin) as as_admin:
        assert "survivor" in [p["name"] for p in as_admin.get("/projects").json()]
    with ubiops(second, project["token"]) as client:
        assert client.get("/projects/survivor").status_code == 200
        names = [d["name"] for d in client.get("/projects/survivor/deployments").json()]
        assert names == ["echo"]
        version = client.get("/projects/survivor/deployments/echo/versions/v1").json()
        assert version["status"] == "available"
        assert client.get("/projects/survivor/deployments/echo/versions/v1/revisions").json() == revisions
        response = plain_request(client, "survivor", "echo", "after restart")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "completed"
        assert response.json()["result"] == "after restart"


def test_docs_answers_200(server: Server) -> None:
    docs = httpx.get(f"{server.url}/docs")
    spec = httpx.get(f"{server.url}/openapi.json", timeout=60)  # made on first use

    assert docs.status_code == 200
    assert "text/html" in docs.headers["content-type"]
    assert spec.status_code == 200
    assert any(path.startswith("/v2.1/") for path in spec.json()["paths"])


def test_metrics_serves_prometheus_text(server: Server) -> None:
    response = httpx.get(f"{server.url}/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# HELP " in response.text and "# TYPE " in response.text


def test_a_second_server_on_the_same_data_dir_exits_at_once_and_leaves_the_running_requests_alone(
    own_server: Callable[..., Server],
) -> None:
    first = own_server()
    assert first.process is not None
    project = first.create_project("owner")
    with ubiops(first, project["token"]) as client:
        deploy(client, "owner", "sleeper", SLEEPS, maximum_instances=2)
        created = client.post("/projects/owner/deployments/sleeper/requests/batch", json=["10", "10"])
    assert created.status_code == 201, created.text
    ids = [r["id"] for r in created.json()]
    wait_until(lambda: request_statuses(first.data_dir, ids) == ["processing"] * 2, timeout=60, interval=0.05)
    own_server.remember_children()  # type: ignore[attr-defined]

    for port in (free_port(), first.port):  # another port, then the first server's own
        second = refused_serve(first.data_dir, port)

        assert second.returncode != 0
        assert "Traceback" not in second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert str(first.data_dir.resolve()) in lines[0], lines
        assert f"pid {first.process.pid}" in lines[0] and first.url in lines[0], lines
        # Nothing settled the first server's requests (recovery would have failed them).
        assert set(request_statuses(first.data_dir, ids)) <= {"processing", "completed"}

    wait_until(lambda: "processing" not in request_statuses(first.data_dir, ids), timeout=60, interval=0.05)
    assert request_statuses(first.data_dir, ids) == ["completed"] * 2
    assert first.process.poll() is None
    assert httpx.get(f"{first.url}/health").status_code == 200


def test_a_server_on_a_port_in_use_exits_at_once_without_creating_its_database(
    server: Server, tmp_path: Path
) -> None:
    data_dir = tmp_path / "other-data"

    second = refused_serve(data_dir, server.port)

    assert second.returncode != 0
    assert "Traceback" not in second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert f"127.0.0.1:{server.port}" in lines[0] and "address already in use" in lines[0], lines
    assert not (data_dir / "modelbay.db").exists()  # the port was bound before the database was opened
    assert not (data_dir / "admin_token").exists()
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_a_server_killed_with_sigkill_restarts_on_the_same_data_dir_and_port_at_once(
    own_server: Callable[..., Server],
) -> None:
    first = own_server()
    project = first.create_project("phoenix")
    with ubiops(first, project["token"]) as client:
        deploy(client, "phoenix", "sleeper", SLEEPS)
        created = client.post("/projects/phoenix/deployments/sleeper/requests/batch", json=["60"])
    assert created.status_code == 201, created.text
    wait_until(lambda: query(first.data_dir, "SELECT id FROM requests WHERE status = 'processing'"), timeout=60)
    own_server.remember_children()  # type: ignore[attr-defined]  # a worker left behind is ended at teardown

    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    # At once: no waiting for the lock or the port, even while the busy worker may still run.
    second = own_server(first.data_dir, port=first.port)

    assert second.process is not None
    assert httpx.get(f"{second.url}/health").status_code == 200
    # The restarted server holds the data dir now: a third one is refused, naming it.
    third = refused_serve(first.data_dir, free_port())
    assert third.returncode != 0
    assert f"pid {second.process.pid}" in third.stderr, third.stderr
