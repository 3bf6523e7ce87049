"""`modelbay serve` with the `ray` runtime as an operator starts it: alone (it starts a local Ray
instance), or pointed at a cluster that is not there."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.fixtures.packages import PLAIN
from tests.fixtures.server import Server, free_port, wait_until
from tests.integration.conftest import alive, cmdline, deploy, descendants, ubiops

SIGTERM_DEADLINE_S = 60.0


def test_serve_on_a_ray_cluster_that_is_not_there_exits_at_once_saying_so(tmp_path: Path) -> None:
    absent = f"127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "modelbay.cli", "serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "d"),
         "--runtime", "ray", "--ray-address", absent],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"error: could not reach the Ray cluster at {absent}: Connection refused"
    assert "Traceback" not in done.stderr, done.stderr


def test_a_server_with_the_ray_runtime_alone_starts_its_own_ray_serves_and_leaves_nothing_after_sigterm(
    own_server: Callable[..., Server], tmp_path: Path
) -> None:
    srv = own_server(extra_env={"MODELBAY_RUNTIME": "ray", "MODELBAY_RAY_ADDRESS": "",
                                "MODELBAY_RAY_NODE_DIR": str(tmp_path / "ray")})
    project = srv.create_project("on-ray")
    client = ubiops(srv, project["token"])
    deploy(client, "on-ray", "echo", PLAIN)
    answer = client.post("/projects/on-ray/deployments/echo/requests", content=b"hello",
                         headers={"content-type": "text/plain"})
    assert answer.status_code == 200 and answer.json()["result"] == "hello", answer.text
    client.close()

    assert srv.process is not None
    children = descendants(srv.process.pid)
    commands = [cmdline(pid) for pid in children]
    assert any("InstanceActor" in c for c in commands) and any("worker.py" in c for c in commands), commands
    assert any("raylet" in c for c in commands), commands  # the local Ray instance is the server's own
    srv.process.send_signal(signal.SIGTERM)
    assert srv.process.wait(timeout=SIGTERM_DEADLINE_S) == 0
    wait_until(lambda: not alive(children), timeout=30)
