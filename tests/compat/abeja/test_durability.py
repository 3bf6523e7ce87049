"""Accepted runs survive a server killed with SIGKILL: after a restart each one reaches an end."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import httpx
import pytest

from tests.fixtures.abeja_apps import deploy_gated
from tests.fixtures.server import Server, wait_until

pytestmark = pytest.mark.single_server_only("kills and restarts a server of its own, not the shared one")


def test_runs_accepted_before_a_kill_9_all_finish_after_the_restart(tmp_path: Path, shared_path: Path) -> None:
    server = Server(tmp_path / "data").start()
    try:
        org = server.create_project("durable")
        o = org["organization_id"]
        headers = {"Authorization": f"Bearer {org['token']}"}

        def api() -> httpx.Client:
            return httpx.Client(base_url=f"{server.url}/organizations/{o}", headers=headers, timeout=30)

        with api() as client:
            d, v, gate = deploy_gated(client, tmp_path, shared_path)
            ids = [client.post(f"/deployments/{d}/runs", json={"version_id": v, "environment": {"GATE": str(gate)}})
                   .json()["run_id"] for _ in range(8)]
            wait_until(lambda: client.get(f"/deployments/{d}/runs/{ids[0]}").json()["status"] == "RUNNING",
                       timeout=30)

        # When the server dies mid-run and comes back on the same data
        server.stop(signal.SIGKILL)
        server.start()
        gate.write_text("open")

        # Then every accepted run ends, the interrupted ones after another attempt
        with api() as client:
            def statuses() -> list[str]:
                return [client.get(f"/deployments/{d}/runs/{r}").json()["status"] for r in ids]

            wait_until(lambda: all(s in ("SUCCEEDED", "FAILED") for s in statuses()), timeout=60)
            assert statuses() == ["SUCCEEDED"] * 8
            first = client.get(f"/deployments/{d}/runs/{ids[0]}").json()
            assert first["attempts"] == 2
            messages = [e["message"] for e in client.get(f"/deployments/{d}/runs/{ids[0]}/logs").json()["events"]]
            assert "The server restarted; the run is queued again" in messages
    finally:
        server.stop()


def test_sigterm_lets_a_running_attempt_finish_before_the_server_exits(tmp_path: Path, shared_path: Path) -> None:
    server = Server(tmp_path / "data").start()
    try:
        org = server.create_project("graceful")
        client = httpx.Client(base_url=f"{server.url}/organizations/{org['organization_id']}",
                              headers={"Authorization": f"Bearer {org['token']}"}, timeout=30)
        d, v, gate = deploy_gated(client, tmp_path, shared_path)
        r = client.post(f"/deployments/{d}/runs", json={"version_id": v, "environment": {"GATE": str(gate)}})
        run_id = r.json()["run_id"]
        wait_until(lambda: client.get(f"/deployments/{d}/runs/{run_id}").json()["status"] == "RUNNING", timeout=30)
        client.close()

        # When SIGTERM arrives mid-attempt and the attempt ends a moment later
        opener = threading.Timer(0.5, gate.write_text, ("open",))
        opener.start()
        assert server.stop() == 0
        opener.join()

        # Then the attempt was let finish: one attempt, succeeded
        server.start()
        with httpx.Client(base_url=f"{server.url}/organizations/{org['organization_id']}",
                          headers={"Authorization": f"Bearer {org['token']}"}, timeout=30) as client:
            run = client.get(f"/deployments/{d}/runs/{run_id}").json()
        assert run["status"] == "SUCCEEDED" and run["attempts"] == 1
    finally:
        server.stop()
