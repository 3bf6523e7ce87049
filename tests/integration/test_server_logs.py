"""The server logs one line per meaningful event on its standard error: as text by default, as
JSON objects with `--log-format json`; an access log only when asked for."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.databases import database_url_for
from tests.fixtures.server import STARTUP_DEADLINE_S, Server, wait_until
from tests.integration.conftest import create_deployment, create_version, deploy, package_zip, ubiops, upload, \
    wait_built

#: Fails every request, printing a traceback that ends with the exception.
FAILS = '''
class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        raise ValueError("no model for " + str(data))
'''


def log_of(server: Server) -> str:
    """What the server printed so far (own servers write to `<tmp>/server-<port>.log`)."""
    return (server.data_dir.parent / f"server-{server.port}.log").read_text()


def fail_a_build_and_a_request(server: Server) -> str:
    """A build that fails and a request that fails, in a new project; returns the failed request's id."""
    project = server.create_project("logged")
    with ubiops(server, project["token"]) as client:
        create_deployment(client, "logged", "unbuildable")
        create_version(client, "logged", "unbuildable")
        upload(client, "logged", "unbuildable", "v1", package_zip("this is not python"))
        assert wait_built(client, "logged", "unbuildable") == "failed"
        deploy(client, "logged", "failing", FAILS)
        response = client.post("/projects/logged/deployments/failing/requests", json="cats")
    assert response.status_code == 200 and response.json()["status"] == "failed", response.text
    return str(response.json()["id"])


def test_a_failed_build_and_a_failed_request_are_logged(own_server: Callable[..., Server]) -> None:
    server = own_server()
    request_id = fail_a_build_and_a_request(server)

    lines = wait_until(lambda: [line for line in log_of(server).splitlines() if request_id in line], timeout=10)
    [failed] = lines
    assert " WARNING modelbay.core.requests: " in failed
    assert "failing/v1 failed" in failed and "ValueError: no model for cats" in failed
    text = log_of(server)
    [build] = [line for line in text.splitlines() if "build of unbuildable/v1" in line and "failed" in line]
    assert " WARNING modelbay.core.revisions: " in build
    assert any("build of failing/v1" in line and "succeeded" in line for line in text.splitlines())
    assert any("instance " in line and "of failing/v1 started" in line for line in text.splitlines())
    # No line per successful request, and no access log by default.
    assert "uvicorn.access" not in text and '"POST /v2.1/' not in text


@pytest.fixture
def json_server(tmp_path: Path) -> Iterator[Server]:
    """A server started with `--log-format json --access-log`."""
    server = Server(data_dir=tmp_path / "data")
    server.data_dir.mkdir()
    env = dict(os.environ)
    if url := database_url_for(server.data_dir):
        env["MODELBAY_DATABASE_URL"] = url
    with open(tmp_path / f"server-{server.port}.log", "ab") as log:
        server.process = subprocess.Popen(
            [sys.executable, "-m", "modelbay.cli", "serve", "--port", str(server.port), "--data-dir",
             str(server.data_dir), "--log-format", "json", "--access-log"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while True:
            assert server.process.poll() is None, log_of(server)
            try:
                if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        yield server
    finally:
        server.stop()


def test_json_logs_are_one_object_per_line_with_the_events_fields(json_server: Server) -> None:
    request_id = fail_a_build_and_a_request(json_server)

    def entries() -> list[dict[str, Any]]:
        # What the CLI prints itself at start (address, token) is for a person: the log is the rest.
        return [json.loads(line) for line in log_of(json_server).splitlines() if line.startswith("{")]

    [failed] = wait_until(lambda: [e for e in entries() if e.get("request_id") == request_id], timeout=10)
    assert failed["level"] == "WARNING" and failed["logger"] == "modelbay.core.requests"
    assert failed["deployment"] == "failing" and failed["version"] == "v1" and failed["project"] == "logged"
    assert failed["origin"] == "direct" and failed["event"] == "request failed"
    assert "ValueError: no model for cats" in failed["message"]
    assert failed["time"].endswith("+00:00")
    all_entries = entries()
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in all_entries)
    [build] = [e for e in all_entries if e.get("event") == "build failed"]
    assert build["deployment"] == "unbuildable" and build["level"] == "WARNING"
    # The access log was asked for: a line per HTTP request, in the same format.
    assert any(e["logger"] == "uvicorn.access" and "/requests" in e["message"] for e in all_entries)
    lines = log_of(json_server).splitlines()
    # A text line starts with its time (the token printed at start may start with "20" too).
    assert not [line for line in lines if re.match(r"\d{4}-\d\d-\d\d[ T]\d\d:", line)], "a text line in a JSON log"
