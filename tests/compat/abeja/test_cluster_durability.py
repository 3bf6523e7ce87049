"""Two servers on one PostgreSQL: runs accepted by one that is killed with SIGKILL end on the other."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from tests.fixtures.abeja_apps import deploy_gated
from tests.fixtures.server import Server, wait_until

pytestmark = [
    pytest.mark.postgresql_only("on SQLite the store is a file in one server's data dir: one server"),
    pytest.mark.single_server_only("kills a node of its own two-node cluster, not of the shared one"),
]

LEASE = {"MODELBAY_NODE_LEASE_S": "2"}


def test_runs_of_a_server_killed_with_sigkill_end_on_the_other(tmp_path: Path, shared_path: Path) -> None:
    first, second = Server(tmp_path / "first"), Server(tmp_path / "second")
    try:
        first.start(LEASE)
        org = first.create_project("cluster")
        headers = {"Authorization": f"Bearer {org['token']}"}

        def api(server: Server) -> httpx.Client:
            return httpx.Client(base_url=f"{server.url}/organizations/{org['organization_id']}", headers=headers,
                                timeout=30)

        # Given runs accepted by the first server, one of them running there
        with api(first) as client:
            d, v, gate = deploy_gated(client, tmp_path, shared_path)
            ids = [client.post(f"/deployments/{d}/runs", json={"version_id": v, "environment": {"GATE": str(gate)}})
                   .json()["run_id"] for _ in range(4)]
            wait_until(lambda: client.get(f"/deployments/{d}/runs/{ids[0]}").json()["status"] == "RUNNING",
                       timeout=30)

        # When a second server runs on the same database and the first dies
        second.start(LEASE)
        first.stop(signal.SIGKILL)
        gate.write_text("open")

        # Then the second ends every run, the interrupted one after another attempt, each once
        with api(second) as client:
            def runs() -> list[dict[str, object]]:
                return [client.get(f"/deployments/{d}/runs/{r}").json() for r in ids]

            wait_until(lambda: all(run["status"] in ("SUCCEEDED", "FAILED") for run in runs()), timeout=90)
            assert [run["status"] for run in runs()] == ["SUCCEEDED"] * 4
            assert runs()[0]["attempts"] == 2
            messages = [e["message"] for e in client.get(f"/deployments/{d}/runs/{ids[0]}/logs").json()["events"]]
            assert "The server restarted; the run is queued again" in messages
            assert sum(m.startswith("Attempt ") and m.endswith(" succeeded") for m in messages) == 1
    finally:
        for server in (second, first):
            if server.process is not None:
                server.stop()
