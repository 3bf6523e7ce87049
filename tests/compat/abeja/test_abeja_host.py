"""The real abeja-sdk against a server whose ABEJA proxy answers on a public host name of its own
(`MODELBAY_ABEJA_HOST`), as it would behind a wildcard DNS name `*.models.test`."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from modelbay.dialects.abeja.services import organization_in_host
from tests.compat.abeja.conftest import upload
from tests.compat.abeja.test_services import PROXY
from tests.fixtures.server import Server, free_port, wait_until

HOST = "models.test"


@pytest.fixture
def host_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sdk: Any) -> Iterator[Server]:
    """A server answering ABEJA on `HOST`, which (and each `<organization_id>.HOST`) resolves to it;
    the SDK talks to it for this test."""
    from abeja.common.connection import Connection

    server = Server(data_dir=tmp_path / "data", port=free_port()).start({"MODELBAY_ABEJA_HOST": HOST})
    resolve = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and (host == HOST or host.endswith("." + HOST)):
            host = "127.0.0.1"
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(Connection, "BASE_URL", f"http://{HOST}:{server.port}")
    try:
        yield server
    finally:
        server.stop()


def test_the_proxy_answers_on_the_configured_host_and_on_no_other(
    host_server: Server, sdk: Any, tmp_path: Path
) -> None:
    org = host_server.create_project("hosted")
    o, credential = org["organization_id"], {"auth_token": org["token"]}
    deployments = sdk["deployments"].APIClient(credential=credential)
    services = sdk["services"].APIClient(credential=credential)
    d = deployments.create_deployment(o, "app")["deployment_id"]
    version = deployments.create_deployment_version(o, d, "0.0.1", "main:handler", "abeja-inc/all-cpu:19.10")
    assert upload(version, PROXY, tmp_path).status_code == 200
    wait_until(lambda: deployments.get_deployment_version(o, d, version["version_id"])["status"] == "READY",
               timeout=120)
    s = services.create_service(o, d, version["version_id"])["service_id"]
    wait_until(lambda: services.get_service(o, d, s)["status"] == "READY", timeout=60)

    # The SDK sends a service request to http://<organization_id>.models.test:<port>/…
    assert services.request_service(o, d, s, json={"x": 1}).json()["got"] == {"x": 1}

    # Another host before the same path is not the proxy's
    path = f"/deployments/{d}/services/{s}"
    other = httpx.post(f"{host_server.url}{path}", json={}, headers={
        "Authorization": f"Bearer {org['token']}", "Host": f"{o}.api.example.com"})
    assert other.status_code == 404
    assert other.json()["error_description"] == (
        f"Deployment '{d} (the Host header names no organization: requests go to "
        f"http://<organization_id>.{HOST}/deployments/{d})' was not found")
    same = requests.post(f"http://{o}.{HOST.upper()}:{host_server.port}{path}", json={"y": 2},
                         headers={"Authorization": f"Bearer {org['token']}"}, timeout=30)
    assert same.status_code == 200 and same.json()["got"] == {"y": 2}  # host names are case-insensitive


@pytest.mark.parametrize(("host", "abeja_host", "organization"), [
    ("1234567890123.models.test", "models.test", "1234567890123"),
    ("1234567890123.models.test:8000", "models.test", "1234567890123"),
    ("1234567890123.Models.Test.", "models.test", "1234567890123"),
    ("1234567890123.api.example.com:8000", "models.test", None),
    ("1234567890123.sub.models.test", "models.test", None),
    ("models.test", "models.test", None),
    ("1234567890123.api.example.com:8000", "", "1234567890123"),  # unset: any host (the default)
    ("localhost:8000", "", None),
])
def test_the_organization_is_read_from_the_host_header(host: str, abeja_host: str, organization: str | None) -> None:
    assert organization_in_host(host, abeja_host) == organization
