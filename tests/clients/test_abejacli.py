"""ABEJA's own command-line client, `abejacli` 2.2.8, against a real server, as a user runs it.

The client is installed once into its own virtualenv (`.venv-clients/abejacli` in the repository:
it pins its own `requests` and friends); reruns reuse it. A client that cannot be installed fails
the test. It reads its credentials from `~/.abeja/config` (written by `abeja config init`, in the
test's own HOME) and the API from ABEJA_API_URL. It calls a deployment's own URL at
`http://<organization_id>.localhost:<port>/deployments/<id>`: the client's Python resolves
`*.localhost` to 127.0.0.1 through a `sitecustomize` on its PYTHONPATH, as the ABEJA compat tests do
in their own process (a user adds a line to /etc/hosts).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.server import Server, wait_until

VERSION = "2.2.8"
REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv-clients" / "abejacli"
ABEJA = VENV / "bin" / "abeja"

HANDLER = '''
def handler(request, context):
    print("handling %s" % request["content_type"])
    return {"status_code": 200, "content_type": "application/json",
            "content": {"echo": request["contents"], "service": request["headers"].get("x-abeja-service-id")}}
'''

#: Makes `<organization_id>.localhost` (and `localhost`) 127.0.0.1 in the client's process.
RESOLVE_LOCALHOST = '''
import socket

_getaddrinfo = socket.getaddrinfo


def _localhost(host, *args, **kwargs):
    if isinstance(host, str) and (host == "localhost" or host.endswith(".localhost")):
        host = "127.0.0.1"
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _localhost
'''


def installed_version() -> str | None:
    if not ABEJA.exists():
        return None
    probe = subprocess.run([str(VENV / "bin" / "python"), "-c",
                            "import importlib.metadata as m; print(m.version('abejacli'))"],
                           capture_output=True, text=True, timeout=60)
    return probe.stdout.strip() if probe.returncode == 0 else None


@pytest.fixture(scope="session")
def abeja_cli() -> Path:
    """The `abeja` command of abejacli VERSION, installed into its own virtualenv once (under a
    lock: the suites on SQLite and on PostgreSQL run side by side)."""
    VENV.parent.mkdir(exist_ok=True)
    with open(VENV.parent / "abejacli.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed_version() != VERSION:
            steps = ([sys.executable, "-m", "venv", str(VENV)],
                     [str(VENV / "bin" / "pip"), "install", "--quiet", f"abejacli=={VERSION}"])
            for step in steps:
                done = subprocess.run(step, capture_output=True, text=True, timeout=900)
                if done.returncode != 0:
                    pytest.fail(f"cannot install abejacli {VERSION}: {' '.join(step)} exited {done.returncode}:\n"
                                f"{done.stderr[-3000:]}")
            assert installed_version() == VERSION
    return ABEJA


class Cli:
    """Runs `abeja …` in `cwd` with the test's HOME and environment."""

    def __init__(self, abeja: Path, home: Path, server: Server, cwd: Path) -> None:
        self.abeja, self.cwd = abeja, cwd
        site = home / "site"
        site.mkdir(parents=True)
        (site / "sitecustomize.py").write_text(RESOLVE_LOCALHOST)
        keep = {k: v for k, v in os.environ.items()
                if not k.startswith(("ABEJA_", "PYTHON", "VIRTUAL_ENV", "PERSONAL_ACCESS", "ORGANIZATION_"))}
        self.env = {**keep, "HOME": str(home), "PYTHONPATH": str(site),
                    "ABEJA_API_URL": f"http://localhost:{server.port}"}

    def run(self, *args: str, input: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.abeja), *args], input=input, capture_output=True, text=True, env=self.env,
                              cwd=self.cwd, timeout=180)

    def json(self, *args: str) -> Any:
        """Run a command that must succeed; its output parsed as the JSON it prints."""
        done = self.run(*args)
        assert done.returncode == 0, f"abeja {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return json.loads(done.stdout)


def test_abejacli_deploys_serves_and_calls_a_model_through_its_default_endpoint(
    abeja_cli: Path, server: Server, tmp_path: Path
) -> None:
    org = server.create_project("abejacli-" + os.urandom(4).hex())
    o = org["organization_id"]
    code = tmp_path / "model"
    code.mkdir()
    (code / "main.py").write_text(textwrap.dedent(HANDLER))
    cli = Cli(abeja_cli, tmp_path / "home", server, code)

    # `abeja config init`, answered as a user answers it
    init = cli.run("config", "init", input=f"1234567890123\n{org['token']}\n{o}\n")
    assert init.returncode == 0 and "setup completed" in init.stdout, init.stdout + init.stderr
    assert json.loads((tmp_path / "home" / ".abeja" / "config").read_text())["organization-name"] == o

    d = cli.json("model", "create-deployment", "--name", "cli-model")["deployment_id"]
    assert cli.json("model", "describe-deployments", "-d", d)["name"] == "cli-model"
    # Archives the working directory and uploads it
    version = cli.json("model", "create-deployment-version", "-d", d, "-v", "0.0.1", "-i", "abeja-inc/all-cpu:19.10",
                       "-h", "main:handler")
    v = version["version_id"]
    assert version == {"version": "0.0.1", "version_id": v}
    built = wait_until(lambda: (x := cli.json("model", "describe-deployment-versions", "-d", d, "-v", v))["status"]
                       in ("READY", "FAILED") and x, timeout=120, interval=0.5)
    assert built["status"] == "READY", built

    s = cli.json("model", "create-service", "-d", d, "-v", v)["service_id"]
    wait_until(lambda: cli.json("model", "describe-services", "-d", d, "-s", s)["status"] == "READY",
               timeout=120, interval=0.5)
    logs = cli.json("model", "describe-service-logs", "-d", d, "-s", s)
    assert any("Service created" in event["message"] for event in logs["events"]), logs

    endpoint = cli.json("model", "create-endpoint", "-d", d, "-s", s, "-c", "default")
    e = endpoint["endpoint_id"]
    assert endpoint == {"endpoint_id": e, "custom_alias": "default", "service_id": s}
    assert cli.json("model", "describe-endpoints", "-d", d) == {"entries": [endpoint]}
    assert cli.json("model", "describe-endpoints", "-d", d, "-e", e) == endpoint

    # No service id: the deployment's own URL, which its default endpoint serves
    assert cli.json("model", "check-endpoint-json", "-d", d, "-k", "greeting", "-v", "hello") == {
        "echo": {"greeting": "hello"}, "service": s}
    assert cli.json("model", "check-endpoint-json", "-d", d, "-s", s, "-k", "x", "-v", "1")["echo"] == {"x": "1"}
    wait_until(lambda: any("handling application/json" in event["message"] for event in
                           cli.json("model", "describe-service-logs", "-d", d, "-s", s)["events"]), timeout=30)

    unknown = cli.run("model", "describe-endpoints", "-d", d, "-e", "pnt-0000000000000000")
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert "404" in unknown.stderr and "not_found" in unknown.stderr, unknown.stderr

    assert cli.json("model", "delete-endpoint", "-d", d, "-e", e) == {"message": f"{e} deleted"}
    assert cli.json("model", "describe-endpoints", "-d", d) == {"entries": []}
    no_endpoint = cli.run("model", "check-endpoint-json", "-d", d, "-k", "x", "-v", "1")
    assert no_endpoint.returncode == 1 and "404" in no_endpoint.stderr, no_endpoint.stderr
