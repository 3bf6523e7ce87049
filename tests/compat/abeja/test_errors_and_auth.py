from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest
from abeja.exceptions import BadRequest, Forbidden, NotFound, Unauthorized

from tests.compat.abeja.test_runs import NOOP
from tests.fixtures.server import Server


def test_without_or_with_a_bad_credential_every_call_is_a_401(sdk: Any, org: dict[str, str]) -> None:
    o = org["organization_id"]
    for credential in ({}, {"auth_token": "not-a-token"}, {"user_id": "1", "personal_access_token": "nope"}):
        client = sdk["deployments"].APIClient(credential=credential)
        with pytest.raises(Unauthorized) as denied:
            client.get_deployments(o)
        assert denied.value.error == "unauthorized" and denied.value.error_description


def test_a_personal_access_token_works_as_basic_credentials(sdk: Any, org: dict[str, str]) -> None:
    client = sdk["deployments"].APIClient(credential={"user_id": "1234567890123",
                                                       "personal_access_token": org["token"]})
    created = client.create_deployment(org["organization_id"], "by-basic")
    assert client.get_deployment(org["organization_id"], created["deployment_id"])["name"] == "by-basic"


def test_another_organizations_path_is_a_403(sdk: Any, org: dict[str, str], abeja_server: Server) -> None:
    other = abeja_server.create_project("someone-else-" + org["organization_id"])
    mine = sdk["deployments"].APIClient(credential={"auth_token": org["token"]})
    theirs = sdk["deployments"].APIClient(credential={"auth_token": other["token"]})
    d = theirs.create_deployment(other["organization_id"], "private")["deployment_id"]
    with pytest.raises(Forbidden):
        mine.get_deployments(other["organization_id"])
    with pytest.raises(Forbidden):
        mine.get_deployment(other["organization_id"], d)
    with pytest.raises(Forbidden):
        mine.get_deployments("1000000000000")  # an organization that does not exist gives nothing away
    assert theirs.get_deployment(other["organization_id"], d)["name"] == "private"


def test_unknown_ids_are_404s(deployments: Any, runs: Any, services: Any, org: dict[str, str]) -> None:
    o = org["organization_id"]
    with pytest.raises(NotFound):
        deployments.get_deployment(o, "1234567890123")
    d = deployments.create_deployment(o, "app")["deployment_id"]
    with pytest.raises(NotFound):
        deployments.get_deployment_version(o, d, "ver-0000000000000000")
    with pytest.raises(NotFound):
        runs.get_run(o, d, "run-0000000000000000")
    with pytest.raises(NotFound):
        runs.get_run(o, d, "not-a-run-id")
    with pytest.raises(NotFound):
        services.get_service(o, d, "ser-0000000000000000")
    with pytest.raises(NotFound):
        runs.create_run(o, d, "ver-0000000000000000")


def test_bad_bodies_are_400s_in_the_abeja_shape_and_every_2xx_has_json(
    abeja_server: Server, org: dict[str, str], deployments: Any
) -> None:
    o = org["organization_id"]
    headers = {"Authorization": f"Bearer {org['token']}"}
    url = f"{abeja_server.url}/organizations/{o}/deployments"
    for body in (b"{not json", b"[1, 2]", b'{"name": 5}'):
        answer = httpx.post(url, content=body, headers={**headers, "Content-Type": "application/json"})
        assert answer.status_code == 400
        assert set(answer.json()) == {"error", "error_description"} and answer.json()["error"] == "bad_request"
    d = deployments.create_deployment(o, "app")["deployment_id"]
    with pytest.raises(BadRequest):
        deployments.patch_deployment(o, d, name="Bad Name")
    deleted = httpx.delete(f"{url}/{d}", headers=headers)
    assert deleted.status_code == 200 and deleted.json()["message"]
    basic = base64.b64encode(f"user-1:{org['token']}".encode()).decode()
    assert httpx.get(url, headers={"Authorization": f"Basic {basic}"}).json() == {"entries": []}


def test_malformed_tokens_and_signatures_are_4xx_never_a_500(
    abeja_server: Server, org: dict[str, str], deploy: Any
) -> None:
    # Given a run and its version, whose archive URL the caller tampers with
    o = org["organization_id"]
    headers = {"Authorization": f"Bearer {org['token']}"}
    d, v = deploy(NOOP)
    base = f"{abeja_server.url}/organizations/{o}/deployments/{d}"
    r = httpx.post(f"{base}/runs", json={"version_id": v}, headers=headers).json()["run_id"]
    # When tokens are digits '²' (which isdigit() takes and int() refuses) or too many for the store
    for query in ("logs?next_token=%C2%B2", "logs?next_token=" + "9" * 30,
                  "recentlogs?next_backward_token=" + "9" * 30, "recentlogs?next_forward_token=%C2%B2",
                  "logs?start_time=0001-01-01T00:00:00%2B01:00"):
        answer = httpx.get(f"{base}/runs/{r}/{query}", headers=headers)
        # Then each is a 400 in the ABEJA shape
        assert answer.status_code == 400, (query, answer.text)
        assert answer.json()["error"] == "bad_request"
    for expires in ("%C2%B2", "9" * 5000):
        answer = httpx.put(f"{base}/versions/{v}/archive?expires={expires}&signature=ab", content=b"x")
        assert answer.status_code == 403 and answer.json()["error"] == "forbidden"
    for distribution in (-1, 2**31):
        answer = httpx.post(f"{base}/runs", json={"version_id": v, "distribution": distribution}, headers=headers)
        assert answer.status_code == 400 and "distribution" in answer.json()["error_description"]
    assert httpx.get(f"{base}/runs/{r}%0A", headers=headers).status_code == 404
