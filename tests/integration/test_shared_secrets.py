"""Two servers on one PostgreSQL database share the URL-signing key and the admin token: a URL one
hands out works on the other. (Nothing else of a cluster is safe yet: these tests keep to these flows.)"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse

import crc32c
import httpx
import pytest

from tests.compat.abeja.conftest import ECHO
from tests.fixtures.packages import make_package_dir, make_tar_gz
from tests.fixtures.server import Server, wait_until

pytestmark = pytest.mark.postgresql_only("on SQLite the store is a file in one server's data dir")


def on(server: Server, url: str) -> str:
    """`url`, as handed out by another server, sent to `server` instead (a balancer's next pick)."""
    return urlparse(url)._replace(netloc=urlparse(server.url).netloc).geturl()


def tampered(url: str) -> str:
    parts = urlparse(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query["signature"] = ("0" if query["signature"][0] != "0" else "1") + query["signature"][1:]
    return parts._replace(query=urlencode(query)).geturl()


@pytest.fixture
def two_servers(own_server: Callable[..., Server], tmp_path: Path) -> tuple[Server, Server]:
    """Two servers, each with its own data dir, on the test's one database."""
    return own_server(tmp_path / "first"), own_server(tmp_path / "second")


def test_the_admin_token_made_by_the_first_server_works_on_both(two_servers: tuple[Server, Server]) -> None:
    first, second = two_servers
    assert first.admin_token and second.admin_token == ""  # only the server that made it keeps a copy

    for server in two_servers:
        projects = httpx.get(f"{server.url}/v2.1/projects", headers={"Authorization": f"Token {first.admin_token}"})
        assert projects.status_code == 200, projects.text
        wrong = httpx.get(f"{server.url}/v2.1/projects", headers={"Authorization": "Token not-the-admin-token"})
        assert wrong.status_code == 401
    created = httpx.post(f"{second.url}/v2.1/projects", json={"name": "made-on-second"},
                         headers={"Authorization": f"Token {first.admin_token}"})
    assert created.status_code == 201, created.text


@pytest.mark.parametrize("direction", ["first to second", "second to first"])
def test_a_datature_dataset_upload_url_of_one_server_is_accepted_by_the_other(
    two_servers: tuple[Server, Server], direction: str
) -> None:
    maker, taker = two_servers if direction == "first to second" else two_servers[::-1]
    project = two_servers[0].create_project("datasets")
    body = b'{"kind": "Image", "url": "https://x/1.jpg"}\n'
    crc = base64.b64encode(crc32c.crc32c(body).to_bytes(4, "big")).decode()
    created = httpx.post(
        f"{maker.url}/projects/{project['datature_project_id']}/batch/datasets",
        json={"name": "shared", "spec": {"source": {"kind": "UploadedNewlineDelimitedJsonFile",
                                                    "sizeBytes": len(body), "crc32c": crc}}},
        headers={"Secret-Key": project["token"]},
    )
    assert created.status_code == 200, created.text
    url = created.json()["status"]["source"]["uploadUrl"]["url"]

    assert httpx.put(on(taker, tampered(url)), content=body).status_code == 403  # the signature is checked
    uploaded = httpx.put(on(taker, url), content=body)
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["itemCount"] == 1


def test_an_abeja_code_upload_url_of_one_server_is_accepted_by_the_other(
    two_servers: tuple[Server, Server], tmp_path: Path
) -> None:
    first, second = two_servers
    org = first.create_project("abeja")
    headers = {"Authorization": f"Bearer {org['token']}"}
    with httpx.Client(base_url=f"{first.url}/organizations/{org['organization_id']}", headers=headers,
                      timeout=30) as client:
        d = client.post("/deployments", json={"name": "app"}).json()["deployment_id"]
        version = client.post(f"/deployments/{d}/versions",
                              json={"version": "1", "handler": "main:handler", "image": "x"}).json()
    archive = make_tar_gz(make_package_dir(tmp_path, ECHO, module_file="main.py"), tmp_path / "pkg").read_bytes()

    assert httpx.put(on(second, tampered(version["upload_url"])), content=archive).status_code == 403
    uploaded = httpx.put(on(second, version["upload_url"]), content=archive, timeout=60)
    assert uploaded.status_code == 200, uploaded.text
    with httpx.Client(base_url=f"{second.url}/organizations/{org['organization_id']}", headers=headers,
                      timeout=30) as client:
        v = version["version_id"]
        wait_until(lambda: client.get(f"/deployments/{d}/versions/{v}").json()["status"] == "READY", timeout=120)
