"""User code as a hostile user writes it, against a real server: what it tries fails only its own
request, and the next request of the same deployment succeeds."""

from __future__ import annotations

import json
import os
import random
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.fixtures.server import Server, free_port, modelbay, wait_until
from tests.integration.conftest import (  # noqa: F401  (own_server is a fixture)
    _stat,
    cmdline,
    deploy,
    own_server,
    ubiops,
)

HOSTILE = '''
import json
import os
import subprocess
import time


def find(names):
    """Every visible file of one of these names (a walk over the whole file system)."""
    hits = []
    for root, dirs, files in os.walk("/"):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in ("/proc", "/sys", "/dev", "/usr")]
        hits += [os.path.join(root, f) for f in files if f in names]
    return hits


def readable(path):
    try:
        with open(path, "rb") as f:
            f.read(1)
        return True
    except OSError:
        return False


class Deployment:
    def request(self, data):
        order = json.loads(data)
        what = order["do"]
        if what == "look":
            processes = {}
            for pid in os.listdir("/proc"):
                if pid.isdigit() and readable(f"/proc/{pid}/cmdline"):
                    processes[pid] = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            return json.dumps({
                "found": find({"modelbay.db", "admin_token", "url_signing_key", "server.lock"}),
                "readable": [p for p in order["paths"] if readable(p)],
                "writable_package": os.access(os.getcwd(), os.W_OK),
                "processes": processes,
                "environment": dict(os.environ),
                "uid": os.getuid(),
            })
        if what == "spawn":
            subprocess.Popen(["sleep", order["seconds"]])
            subprocess.Popen(["setsid", "sh", "-c", "sleep %s &" % order["detached_seconds"]])
            return "spawned"
        if what == "allocate":
            block = bytearray(order["mib"] << 20)
            block[::4096] = b"\\x01" * len(range(0, len(block), 4096))  # every page touched
            return str(len(block))
        if what == "flood":
            chunk = b"x" * (1 << 20)
            for _ in range(100):  # 100 MB straight to fd 1, around sys.stdout
                view = memoryview(chunk)
                while view:
                    view = view[os.write(1, view):]
            return "flooded"
        if what == "hang":
            time.sleep(3600)
        return "ok"
'''


def ask(client: httpx.Client, project: str, order: dict[str, Any], **params: Any) -> dict[str, Any]:
    """A direct request to the hostile deployment: the stored request as the API answers it."""
    response = client.post(f"/projects/{project}/deployments/hostile/requests", json=json.dumps(order), params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def assert_still_serves(client: httpx.Client, project: str) -> None:
    answer = ask(client, project, {"do": "nothing"})
    assert answer["status"] == "completed" and answer["result"] == "ok", answer


def sleeping(seconds: str) -> set[int]:
    """Host pids of live `sleep <seconds>` processes (zombies count as gone)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and cmdline(int(entry)).split() == ["sleep", seconds]:
            stat = _stat(int(entry))
            if stat is not None and stat[1] != "Z":
                found.add(int(entry))
    return found


def test_user_code_sees_nothing_of_the_data_dir_the_server_or_its_environment(
    own_server: Callable[..., Server],  # noqa: F811
) -> None:
    # Given a server whose environment holds settings and a secret of the operator's
    server = own_server(extra_env={"MODELBAY_MAX_LOG_BYTES": "1048576", "OPERATOR_SECRET": "secret-0123456789"})
    project = server.create_project("prying")
    with ubiops(server, project["token"]) as client:
        deploy(client, "prying", "hostile", HOSTILE, maximum_instances=1)
        # When its code looks for the data dir's files, other processes and the server's environment
        data = server.data_dir.resolve()
        paths = [str(data / name) for name in ("modelbay.db", "admin_token", "url_signing_key")]
        answer = ask(client, "prying", {"do": "look", "paths": paths})
        assert answer["status"] == "completed", answer
        seen = json.loads(answer["result"])
        # Then it finds none of them, reads none of them, and writes nothing of its own package
        assert seen["found"] == [] and seen["readable"] == []
        assert seen["writable_package"] is False
        # It sees only its own processes: not the server (whose command line holds its port)
        assert not any("modelbay" in line and "serve" in line for line in seen["processes"].values())
        assert len(seen["processes"]) <= 4, seen["processes"]  # the sandbox's init and the worker
        assert not [name for name in seen["environment"] if name.startswith("MODELBAY_")]
        assert "secret-0123456789" not in json.dumps(seen) and server.admin_token not in json.dumps(seen)
        assert seen["uid"] == 65534  # an unprivileged user
        assert_still_serves(client, "prying")


def test_processes_started_by_user_code_end_with_its_instance_and_with_the_server(
    own_server: Callable[..., Server],  # noqa: F811
) -> None:
    server = own_server()
    project = server.create_project("spawning")
    first, second = (str(random.randint(10_000_000, 99_999_999)) for _ in range(2))
    with ubiops(server, project["token"]) as client:
        deploy(client, "spawning", "hostile", HOSTILE, maximum_instances=1)
        # Given code that leaves a child behind and a detached (setsid) grandchild
        answer = ask(client, "spawning", {"do": "spawn", "seconds": first, "detached_seconds": second})
        assert answer["result"] == "spawned", answer
        wait_until(lambda: sleeping(first) and sleeping(second))
        # When its instance is replaced (a request past its timeout kills it)
        hung = ask(client, "spawning", {"do": "hang"}, timeout=2)
        assert hung["status"] == "failed", hung
        # Then both are gone, and the deployment serves again on a new instance
        wait_until(lambda: not sleeping(first) and not sleeping(second))
        assert_still_serves(client, "spawning")

        # And when the server itself is killed, what its instances started goes with it
        answer = ask(client, "spawning", {"do": "spawn", "seconds": first, "detached_seconds": second})
        assert answer["result"] == "spawned", answer
        wait_until(lambda: sleeping(first) and sleeping(second))
    server.stop(signal.SIGKILL)
    wait_until(lambda: not sleeping(first) and not sleeping(second))


def test_a_request_past_the_memory_limit_fails_with_out_of_memory_and_the_next_one_succeeds(
    server: Server, project: dict[str, str]
) -> None:
    name = project["name"]
    with ubiops(server, project["token"]) as client:
        # Given a version of the 256mb instance type
        deploy(client, name, "hostile", HOSTILE, maximum_instances=1, instance_type="256mb")
        # When a request allocates (and touches) 512 MiB
        answer = ask(client, name, {"do": "allocate", "mib": 512})
        # Then it fails, saying why, and the instance is replaced
        assert answer["status"] == "failed", answer
        assert answer["error_message"] == "out of memory (limit 256 MiB)"
        assert ask(client, name, {"do": "allocate", "mib": 64})["result"] == str(64 << 20)
        assert_still_serves(client, name)


def test_raw_writes_to_fd_1_count_against_the_log_limit(server: Server, project: dict[str, str]) -> None:
    name = project["name"]
    with ubiops(server, project["token"]) as client:
        deploy(client, name, "hostile", HOSTILE, maximum_instances=1)
        # When a request writes 100 MB straight to fd 1
        answer = ask(client, name, {"do": "flood"})
        # Then it fails with the log limit's message, and the instance log never grew past its cap
        assert answer["status"] == "failed", answer
        assert "printed more than 1048576 bytes of logs" in answer["error_message"]
        assert_still_serves(client, name)
    sizes = [p.stat().st_size for p in (server.data_dir / "instances").glob("*.log")]
    assert all(size < 9 << 20 for size in sizes), sizes


def test_the_server_refuses_to_start_without_its_sandbox_unless_told_to_run_unsandboxed(tmp_path: Path) -> None:
    # Given a machine where bwrap cannot be found (a PATH without it)
    no_bwrap = {**os.environ, "PATH": str(tmp_path)}
    port = str(free_port())
    refused = modelbay("serve", "--port", port, "--data-dir", str(tmp_path / "data"), env=no_bwrap)
    # Then the server refuses to start, saying why and what to do, and touches no data
    assert refused.returncode != 0
    assert "bubblewrap (bwrap) is not installed" in refused.stderr and "MODELBAY_SANDBOX=none" in refused.stderr
    assert not (tmp_path / "data").exists()
    # Unless the operator says explicitly to run user code unsandboxed
    server = Server(tmp_path / "data").start({"PATH": str(tmp_path), "MODELBAY_SANDBOX": "none"})
    try:
        assert httpx.get(f"{server.url}/health").status_code == 200
    finally:
        server.stop()
