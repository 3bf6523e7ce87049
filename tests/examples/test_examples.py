"""Every example runs as its README says, against a real server, and prints what the README shows.

Each command block of `examples/<dialect>/README.md` runs with bash in a copy of the repository's
`examples/` (what it writes stays out of the tree), `.venv/bin/python` being this interpreter, with
the variables the README tells the user to export.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.examples.snippets import EXAMPLES, commands, matches_output, outputs
from tests.fixtures.server import Server, free_port, wait_until

#: One example builds two deployments and waits for each: generous on a loaded machine.
EXAMPLE_TIMEOUT_S = 600


def workdir(tmp_path: Path) -> Path:
    """A copy of the repository's examples, where the README's commands run."""
    shutil.copytree(EXAMPLES, tmp_path / "examples", ignore=shutil.ignore_patterns("*.tar.gz", "*.zip"))
    return tmp_path


def shell(command: str, cwd: Path, env: dict[str, str], **popen: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["bash", "-e", "-c", command.replace(".venv/bin/python", sys.executable)],
        cwd=cwd, env={**os.environ, **env}, text=True, **popen,  # type: ignore[call-overload]
    )


def run(command: str, cwd: Path, env: dict[str, str]) -> str:
    """Run a README command block; its output, once it succeeded."""
    process = shell(command, cwd, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    printed, _ = process.communicate(timeout=EXAMPLE_TIMEOUT_S)
    assert process.returncode == 0, f"{command!r} exited with {process.returncode}:\n{printed}"
    return printed


def ubiops_env(server: Server, project: dict[str, str]) -> dict[str, str]:
    return {"MODELBAY_URL": server.url, "MODELBAY_TOKEN": project["token"], "MODELBAY_PROJECT": project["name"]}


def test_the_ubiops_example_runs_as_printed_and_again(server: Server, project: dict[str, str], tmp_path: Path) -> None:
    readme = EXAMPLES / "ubiops" / "README.md"
    [command] = commands(readme)
    [expected] = outputs(readme)
    cwd = workdir(tmp_path)
    for _ in range(2):  # in the same project: nothing of the first run is in the second's way
        printed = run(command, cwd, ubiops_env(server, project))
        assert matches_output(expected, printed), printed


#: What the README's `/etc/hosts` line does, for the example's Python alone: `*.localhost` resolves.
RESOLVES_LOCALHOST_NAMES = """
import socket

_getaddrinfo = socket.getaddrinfo


def getaddrinfo(host, *args, **kwargs):
    if isinstance(host, str) and host.endswith(".localhost"):
        host = "127.0.0.1"
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = getaddrinfo
"""


def test_the_abeja_example_runs_as_printed_with_and_without_the_hosts_line(
    server: Server, project: dict[str, str], tmp_path: Path,
) -> None:
    """Without the `/etc/hosts` line the script calls the service with a `Host` header; with it, the
    SDK's own `request_service` reaches it. Both in the same project: the example runs twice."""
    readme = EXAMPLES / "abeja" / "README.md"
    [command] = commands(readme)
    [expected] = outputs(readme)
    env = {
        "ABEJA_API_URL": f"http://localhost:{server.port}",
        "PLATFORM_AUTH_TOKEN": project["token"],
        "ABEJA_ORGANIZATION_ID": project["organization_id"],
    }
    cwd = workdir(tmp_path)
    printed = run(command, cwd, env)
    assert matches_output(expected, printed), printed

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(RESOLVES_LOCALHOST_NAMES)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    printed = run(command, cwd, env)
    assert matches_output(expected, printed), printed


def test_the_datature_example_delivers_signed_results_to_its_receiver(
    server: Server, project: dict[str, str], tmp_path: Path,
) -> None:
    readme = EXAMPLES / "datature" / "README.md"
    start_receiver, start_job = commands(readme)
    job_printed, receiver_printed = outputs(readme)
    port = free_port()
    env = {
        **ubiops_env(server, project),
        "DATATURE_PROJECT_ID": project["datature_project_id"],
        "WEBHOOK_SECRET": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0",
        "WEBHOOK_PORT": str(port),
        "WEBHOOK_URL": f"http://127.0.0.1:{port}/hook",
    }
    cwd = workdir(tmp_path)
    log = tmp_path / "receiver.log"
    with open(log, "w") as out:
        receiver = shell(start_receiver, cwd, env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "listening on" in log.read_text() or receiver.poll() is not None, timeout=30)
        assert receiver.poll() is None, log.read_text()
        for _ in range(2):  # in the same project, to the same receiver
            printed = run(start_job, cwd, env)
            assert matches_output(job_printed, printed), printed
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
    received = log.read_text()
    assert matches_output(receiver_printed, received), received
    verified = sorted(line.split(":")[0] for line in received.splitlines() if line.endswith("signature ok)"))
    assert verified == ["item 0", "item 0", "item 1", "item 1", "item 2", "item 2"], received
    assert "refused" not in received, received
