"""The UbiOps dialect as a client without the SDK sees it: raw HTTP, status codes and `{"error": ...}` bodies.

Every 4xx is followed by a look at what it could have changed, to show that it changed nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from modelbay.dialects.ubiops.direct import PATHS as DIRECT_PATHS
from modelbay.dialects.ubiops.requests import router as requests_router
from modelbay.dialects.ubiops.routes import router
from tests.fixtures.packages import PLAIN
from tests.fixtures.server import Server
from tests.integration.conftest import (  # noqa: F401  (own_server is a fixture)
    create_deployment,
    create_version,
    deploy,
    error_of,
    own_server,
    package_zip,
    query,
    ubiops,
    unique,
    upload,
    wait_built,
    zip_bytes,
)


@dataclass
class Deployed:
    """A project on the session server with a built plain echo deployment `echo` (version v1)."""

    server: Server
    project: str
    token: str
    deployment_id: str

    def client(self, prefix: str = "/v2.1", scheme: str = "Token") -> httpx.Client:
        return ubiops(self.server, self.token, prefix, scheme)


@pytest.fixture(scope="module")
def deployed(server: Server) -> Iterator[Deployed]:
    name = unique("http")
    credentials = server.create_project(name)
    with ubiops(server, credentials["token"]) as client:
        deploy(client, name, "echo", PLAIN)
        deployment_id = client.get(f"/projects/{name}/deployments/echo").json()["id"]
    yield Deployed(server, name, credentials["token"], deployment_id)


@pytest.fixture
def client(deployed: Deployed) -> Iterator[httpx.Client]:
    with deployed.client() as c:
        yield c


def snapshot(deployed: Deployed) -> dict[str, Any]:
    """What a mistaken call could have changed: projects, deployments, versions, revisions, requests."""
    with deployed.client() as c, ubiops(deployed.server, deployed.server.admin_token) as admin:
        base = f"/projects/{deployed.project}/deployments"
        return {
            "projects": admin.get("/projects").json(),
            "deployments": c.get(base).json(),
            "versions": c.get(f"{base}/echo/versions").json(),
            "revisions": c.get(f"{base}/echo/versions/v1/revisions").json(),
            "requests": requests_of(deployed),
        }


def requests_of(deployed: Deployed) -> list[tuple[str, str]]:
    rows = query(
        deployed.server.data_dir,
        "SELECT id, status FROM requests WHERE deployment_id = ? ORDER BY id",
        deployed.deployment_id,
    )
    return [(row["id"], row["status"]) for row in rows]


def send_text(client: httpx.Client, path: str, text: str, **params: Any) -> httpx.Response:
    return client.post(path, content=text.encode(), headers={"content-type": "text/plain"}, params=params)


# --- authentication --------------------------------------------------------------------------

#: Every UbiOps route, read off the router so that a new route is covered the day it is added.
#: `/status` is left out: it is the service's liveness probe, open like UbiOps' own.
ROUTES = [("POST", path) for path in DIRECT_PATHS] + [
    (method, route.path)
    for route in [*requests_router.routes, *router.routes]
    if isinstance(route, APIRoute) and route.path != "/status"
    for method in sorted(route.methods)
]


def concrete(path: str, deployed: Deployed) -> str:
    return path.format(
        project_name=deployed.project,
        deployment_name="echo",
        version="v1",
        environment_name="python3-11",
        tag="latest",
        revision_id=str(uuid.uuid4()),
        request_id=str(uuid.uuid4()),
    )


def call(client: httpx.Client, method: str, path: str) -> httpx.Response:
    """A call with a body a route could act on if it skipped authentication."""
    if method in ("POST", "PATCH"):
        if path.endswith("/revisions"):
            return client.request(method, path, files={"file": ("pkg.zip", package_zip(PLAIN), "application/zip")})
        if path.endswith("/requests"):
            return client.request(method, path, content=b"hello", headers={"content-type": "text/plain"})
        return client.request(method, path, json={"name": "intruder", "version": "intruder", "description": "x"})
    return client.request(method, path)


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_every_route_answers_401_without_a_token(deployed: Deployed, method: str, path: str) -> None:
    before = snapshot(deployed)
    with httpx.Client(base_url=f"{deployed.server.url}/v2.1", timeout=60) as anonymous:
        response = call(anonymous, method, concrete(path, deployed))

    assert response.status_code == 401, response.text
    error_of(response)
    assert snapshot(deployed) == before


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_every_route_answers_401_for_a_wrong_token(deployed: Deployed, method: str, path: str) -> None:
    before = snapshot(deployed)
    with ubiops(deployed.server, "wrong") as wrong:
        response = call(wrong, method, concrete(path, deployed))

    assert response.status_code == 401, response.text
    error_of(response)
    assert snapshot(deployed) == before


@pytest.mark.parametrize("header", ["Token", "Bearer", "Basic dXNlcjpwYXNz", "wrong"])
def test_a_malformed_authorization_header_is_a_401(deployed: Deployed, header: str) -> None:
    response = httpx.get(
        f"{deployed.server.url}/v2.1/projects/{deployed.project}/deployments", headers={"Authorization": header}
    )

    assert response.status_code == 401, response.text
    error_of(response)


def test_another_projects_token_gets_403_and_changes_nothing(deployed: Deployed, project: dict[str, str]) -> None:
    """`project` is someone else's: its token must not reach `deployed.project`."""
    before = snapshot(deployed)
    with ubiops(deployed.server, project["token"]) as other:
        listed = other.get(f"/projects/{deployed.project}/deployments")
        created = other.post(f"/projects/{deployed.project}/deployments", json={"name": "intruder"})
        deleted = other.delete(f"/projects/{deployed.project}/deployments/echo")
        requested = send_text(other, f"/projects/{deployed.project}/deployments/echo/requests", "hi")

    for response in (listed, created, deleted, requested):
        assert response.status_code == 403, response.text
        error_of(response)
    assert snapshot(deployed) == before


def test_a_bearer_token_is_accepted_like_a_token(deployed: Deployed) -> None:
    with deployed.client(scheme="Bearer") as bearer, deployed.client() as token:
        path = f"/projects/{deployed.project}/deployments"
        response = bearer.get(path)

        assert response.status_code == 200, response.text
        assert response.json() == token.get(path).json()


def test_the_v2_prefix_serves_the_same_routes_as_v2_1(deployed: Deployed, project: dict[str, str]) -> None:
    name = project["name"]
    with ubiops(deployed.server, project["token"], "/v2") as v2, ubiops(deployed.server, project["token"]) as v21:
        created = v2.post(f"/projects/{name}/deployments", json={"name": "made-on-v2", "input_type": "plain", "output_type": "plain"})
        assert created.status_code == 201, created.text
        assert v21.get(f"/projects/{name}/deployments").json() == v2.get(f"/projects/{name}/deployments").json()
        assert v21.get(f"/projects/{name}/deployments/made-on-v2").json() == created.json()
        assert v2.get(f"/projects/{name}").json() == v21.get(f"/projects/{name}").json()
        missing = v2.get(f"/projects/{name}/deployments/no-such-deployment")
        assert missing.status_code == 404
        assert "no-such-deployment" in error_of(missing)

    with deployed.client("/v2") as v2:
        response = send_text(v2, f"/projects/{deployed.project}/deployments/echo/requests", "via v2")
        assert response.status_code == 200, response.text
        assert response.json()["result"] == "via v2"
        assert v2.get("/projects").status_code == 200


# --- malformed calls -------------------------------------------------------------------------


def test_bad_json_when_creating_a_deployment_is_a_400_that_mentions_json(deployed: Deployed, client: httpx.Client) -> None:
    before = snapshot(deployed)

    response = client.post(
        f"/projects/{deployed.project}/deployments",
        content=b'{"name": "half-written", ',
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 400, response.text
    assert "JSON" in error_of(response)
    assert snapshot(deployed) == before


def test_a_json_array_instead_of_an_object_is_a_400(deployed: Deployed, client: httpx.Client) -> None:
    before = snapshot(deployed)

    response = client.post(f"/projects/{deployed.project}/deployments", json=[{"name": "in-a-list"}])

    assert response.status_code == 400, response.text
    error_of(response)
    assert snapshot(deployed) == before


@pytest.mark.parametrize("path", ["/no-such-route", "/projects/{p}/no-such-collection", "/projects/{p}/deployments/echo/versions/v1/nothing"])
def test_an_unknown_route_under_v2_1_is_a_404_with_an_error_body(deployed: Deployed, client: httpx.Client, path: str) -> None:
    response = client.get(path.format(p=deployed.project))

    assert response.status_code == 404, response.text
    error_of(response)


def test_an_unknown_deployment_is_a_404_that_names_it(deployed: Deployed, client: httpx.Client) -> None:
    base = f"/projects/{deployed.project}/deployments/no-such-deployment"
    before = snapshot(deployed)

    answers = [
        client.get(base),
        client.get(f"{base}/versions"),
        client.patch(base, json={"description": "x"}),
        client.delete(base),
        send_text(client, f"{base}/requests", "hi"),
    ]

    for response in answers:
        assert response.status_code == 404, response.text
        assert "no-such-deployment" in error_of(response)
    assert snapshot(deployed) == before


def test_patching_a_version_with_a_non_integer_maximum_instances_is_a_400_and_changes_nothing(
    deployed: Deployed, client: httpx.Client
) -> None:
    before = snapshot(deployed)

    response = client.patch(
        f"/projects/{deployed.project}/deployments/echo/versions/v1",
        json={"maximum_instances": "many", "description": "should not be saved"},
    )

    assert response.status_code == 400, response.text
    assert "maximum_instances" in error_of(response)
    assert snapshot(deployed) == before


@pytest.mark.parametrize("timeout", ["abc", "1.5", "0", "-1", "3601"])
def test_a_direct_request_with_a_bad_timeout_is_a_400_and_is_not_recorded(
    deployed: Deployed, client: httpx.Client, timeout: str
) -> None:
    before = requests_of(deployed)

    response = send_text(client, f"/projects/{deployed.project}/deployments/echo/requests", "hi", timeout=timeout)

    assert response.status_code == 400, response.text
    assert "timeout" in error_of(response)
    assert requests_of(deployed) == before


def test_a_direct_request_with_a_non_integer_priority_is_a_400_and_is_not_recorded(
    deployed: Deployed, client: httpx.Client
) -> None:
    before = requests_of(deployed)

    response = send_text(client, f"/projects/{deployed.project}/deployments/echo/requests", "hi", priority="high")

    assert response.status_code == 400, response.text
    assert "priority" in error_of(response)
    assert requests_of(deployed) == before


def test_a_direct_request_whose_json_body_is_broken_is_a_400_that_says_so(deployed: Deployed, client: httpx.Client) -> None:
    before = requests_of(deployed)

    response = client.post(
        f"/projects/{deployed.project}/deployments/echo/versions/v1/requests",
        content=b'{"x": ', headers={"content-type": "application/json"},
    )

    assert response.status_code == 400, response.text
    assert "not valid JSON" in error_of(response)
    assert requests_of(deployed) == before


def test_a_direct_request_larger_than_the_limit_is_a_413_and_is_not_recorded(
    own_server: Callable[..., Server]  # noqa: F811
) -> None:
    server = own_server(extra_env={"MODELBAY_MAX_REQUEST_BYTES": "2000"})
    credentials = server.create_project("limit")
    with ubiops(server, credentials["token"]) as c:
        deploy(c, "limit", "echo", PLAIN)
        path = "/projects/limit/deployments/echo/requests"

        too_big = send_text(c, path, "x" * 5000)
        just_right = send_text(c, path, "x" * 2000)

    assert too_big.status_code == 413, too_big.text
    assert "2000 bytes" in error_of(too_big)
    assert just_right.status_code == 200 and just_right.json()["result"] == "x" * 2000
    assert len(query(server.data_dir, "SELECT id FROM requests")) == 1  # only the one that fit


# --- plain input -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["hello", "two\nlines", "{\"looks\": \"like json\"}", "ünïcödé ✓"])
def test_a_text_plain_body_to_a_plain_deployment_returns_the_text(deployed: Deployed, client: httpx.Client, text: str) -> None:
    response = send_text(client, f"/projects/{deployed.project}/deployments/echo/requests", text)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "completed", body
    assert body["result"] == text


def test_an_empty_text_plain_body_to_a_plain_deployment_returns_an_empty_string(deployed: Deployed, client: httpx.Client) -> None:
    response = send_text(client, f"/projects/{deployed.project}/deployments/echo/versions/v1/requests", "")

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed", response.text
    assert response.json()["result"] == ""


def test_a_json_object_sent_to_a_plain_deployment_is_a_400_and_is_not_recorded(deployed: Deployed, client: httpx.Client) -> None:
    before = requests_of(deployed)

    response = client.post(f"/projects/{deployed.project}/deployments/echo/requests", json={"x": 1})

    assert response.status_code == 400, response.text
    error_of(response)
    assert requests_of(deployed) == before


# --- revisions -------------------------------------------------------------------------------


@pytest.mark.parametrize("files", [None, {"archive": ("pkg.zip", b"PK", "application/zip")}], ids=["no body", "wrong part name"])
def test_a_revision_upload_without_the_file_part_is_a_400_not_a_422(
    deployed: Deployed, client: httpx.Client, files: dict[str, Any] | None
) -> None:
    before = snapshot(deployed)

    response = client.post(f"/projects/{deployed.project}/deployments/echo/versions/v1/revisions", files=files)

    assert response.status_code == 400, response.text
    assert "file" in error_of(response)
    assert snapshot(deployed) == before


def test_a_broken_multipart_body_is_a_400(deployed: Deployed, client: httpx.Client) -> None:
    before = snapshot(deployed)

    response = client.post(
        f"/projects/{deployed.project}/deployments/echo/versions/v1/revisions",
        content=b"--xx\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\ntruncated",
        headers={"content-type": "multipart/form-data; boundary=xx"},
    )

    assert response.status_code == 400, response.text
    error_of(response)
    assert snapshot(deployed) == before


def test_a_method_a_route_does_not_have_is_a_405_with_an_error_body(deployed: Deployed, client: httpx.Client) -> None:
    before = snapshot(deployed)

    response = client.put(f"/projects/{deployed.project}/deployments", json={"name": "put"})

    assert response.status_code == 405, response.text
    error_of(response)
    assert snapshot(deployed) == before


def assert_never_500(client: httpx.Client, project: str, deployment: str, revision: str) -> dict[str, Any]:
    """Every view of a failed build answers normally; returns the revision."""
    base = f"/projects/{project}/deployments/{deployment}"
    for path in (base, f"{base}/versions", f"{base}/versions/v1", f"{base}/versions/v1/revisions"):
        response = client.get(path)
        assert response.status_code == 200, (path, response.text)
    response = client.get(f"{base}/versions/v1/revisions/{revision}")
    assert response.status_code == 200, response.text
    unavailable = send_text(client, f"{base}/requests", "hi")
    assert unavailable.status_code == 400, unavailable.text
    error_of(unavailable)
    return dict(response.json())


def test_requirements_that_cannot_be_installed_fail_the_revision_naming_the_package(
    project: dict[str, str], server: Server
) -> None:
    name = project["name"]
    with ubiops(server, project["token"]) as client:
        create_deployment(client, name, "badreqs")
        create_version(client, name, "badreqs")
        revision = upload(client, name, "badreqs", "v1", package_zip(PLAIN, "modelbay-no-such-package-xyz==1.0\n"))

        assert wait_built(client, name, "badreqs") == "failed"
        described = assert_never_500(client, name, "badreqs", revision)
        assert described["status"] == "failed"
        assert "modelbay-no-such-package-xyz" in described["error_message"], described["error_message"]
        version = client.get(f"/projects/{name}/deployments/badreqs/versions/v1").json()
        assert version["status"] == "failed"
        assert version["active_revision"] is None


def test_an_upload_that_is_not_an_archive_fails_its_revision_with_a_clear_message(
    project: dict[str, str], server: Server
) -> None:
    name = project["name"]
    with ubiops(server, project["token"]) as client:
        create_deployment(client, name, "notzip")
        create_version(client, name, "notzip")
        revision = upload(client, name, "notzip", "v1", b"this is not an archive")

        assert wait_built(client, name, "notzip") == "failed"
        described = assert_never_500(client, name, "notzip", revision)
        assert described["status"] == "failed"
        assert "not a valid zip" in described["error_message"], described["error_message"]


@pytest.mark.parametrize(
    "members",
    [
        {"../{evil}": "print('escaped')\n"},
        {"deployment.py": PLAIN, "requirements.txt": "", "../../{evil}": "print('escaped')\n"},
    ],
    ids=["only the escaping member", "a valid package with an escaping member"],
)
def test_a_zip_with_a_member_outside_its_folder_fails_the_revision_and_writes_nothing_outside(
    project: dict[str, str], server: Server, tmp_path: Path, members: dict[str, str]
) -> None:
    name = project["name"]
    evil = f"evil_{uuid.uuid4().hex}.py"
    archive = zip_bytes({member.format(evil=evil): text for member, text in members.items()}, top_folder=None)
    with ubiops(server, project["token"]) as client:
        create_deployment(client, name, "zipslip")
        create_version(client, name, "zipslip")
        revision = upload(client, name, "zipslip", "v1", archive)

        assert wait_built(client, name, "zipslip") == "failed"
        described = assert_never_500(client, name, "zipslip", revision)
        assert described["status"] == "failed"
        assert evil in described["error_message"], described["error_message"]

    written = list(server.data_dir.parent.rglob(evil)) + list(tmp_path.rglob(evil))
    assert written == []
