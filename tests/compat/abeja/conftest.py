"""The real abeja-sdk against a real server.

The SDK reads `ABEJA_API_URL` once, at import: so each test process picks one port for all
its ABEJA tests and sets the variable here, before any test module imports the SDK; one
server then listens on that port. Every test gets its own
organization (project) on it. `<org>.localhost`, where the SDK sends service requests,
resolves to 127.0.0.1 inside this process.
"""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fixtures.cluster import serving
from tests.fixtures.packages import make_package_dir, make_tar_gz
from tests.fixtures.server import Server, free_port, wait_until

PORT = free_port()
os.environ["ABEJA_API_URL"] = f"http://localhost:{PORT}"

#: Autoscaled services give back idle instances after this long, so tests see it happen.
SCALE_DOWN_IDLE_S = "1"

_real_getaddrinfo = socket.getaddrinfo


def _getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if isinstance(host, str) and (host == "localhost" or host.endswith(".localhost")):
        host = "127.0.0.1"
    return _real_getaddrinfo(host, *args, **kwargs)


@pytest.fixture(scope="session")
def abeja_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("abeja")
    server = serving(root, {"MODELBAY_SERVICE_SCALE_DOWN_IDLE_S": SCALE_DOWN_IDLE_S}, port=PORT)
    socket.getaddrinfo = _getaddrinfo
    try:
        yield server
    finally:
        socket.getaddrinfo = _real_getaddrinfo
        server.stop()


@pytest.fixture(scope="session")
def sdk(abeja_server: Server) -> Any:
    """The SDK's client modules."""
    modules = {name: importlib.import_module(f"abeja.{name}") for name in ("deployments", "runs", "services")}
    from abeja.common.connection import Connection

    assert Connection.BASE_URL == f"http://localhost:{abeja_server.port}"
    return modules


@pytest.fixture
def org(abeja_server: Server, request: pytest.FixtureRequest) -> dict[str, str]:
    name = "a" + str(abs(hash(request.node.nodeid)) % 10**12)
    return abeja_server.create_project(name)


def credential(org: dict[str, str]) -> dict[str, str]:
    return {"auth_token": org["token"]}


@pytest.fixture
def deployments(sdk: Any, org: dict[str, str]) -> Any:
    return sdk["deployments"].APIClient(credential=credential(org))


@pytest.fixture
def runs(sdk: Any, org: dict[str, str]) -> Any:
    return sdk["runs"].APIClient(credential=credential(org))


@pytest.fixture
def services(sdk: Any, org: dict[str, str]) -> Any:
    return sdk["services"].APIClient(credential=credential(org))


def upload(version: dict[str, Any], source: str, tmp_path: Path, requirements: str = "") -> requests.Response:
    """Archive `source` as main.py the way the ABEJA CLI does and PUT it to the version's signed URL."""
    package = make_package_dir(tmp_path / version["version_id"], source, requirements, module_file="main.py")
    archive = make_tar_gz(package, tmp_path / version["version_id"])
    with open(archive, "rb") as f:
        return requests.put(version["upload_url"], data=f, timeout=60)


@pytest.fixture
def deploy(deployments: Any, org: dict[str, str], tmp_path: Path) -> Callable[..., tuple[str, str]]:
    """A deployment with one built code version running `source`; returns (deployment_id, version_id)."""

    def _deploy(source: str, *, name: str = "app", user_parameters: dict[str, str] | None = None,
                deployment_id: str | None = None, version: str = "0.0.1") -> tuple[str, str]:
        if deployment_id is None:
            deployment_id = deployments.create_deployment(org["organization_id"], name)["deployment_id"]
        created = deployments.create_deployment_version(
            org["organization_id"], deployment_id, version, "main:handler", "abeja-inc/all-cpu:19.10",
            user_parameters,
        )
        assert upload(created, source, tmp_path).status_code == 200
        wait_until(lambda: deployments.get_deployment_version(
            org["organization_id"], deployment_id, created["version_id"])["status"] in ("READY", "FAILED"),
            timeout=120)
        return deployment_id, created["version_id"]

    return _deploy


ECHO = '''
import os


def handler(request, context):
    return {
        "status_code": 200,
        "content_type": "application/json",
        "content": {"contents": request["contents"], "pid": os.getpid(), "env": os.environ.get("GREETING")},
    }
'''
