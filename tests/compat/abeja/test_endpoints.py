"""ABEJA endpoints through the real abeja-sdk: CRUD, and the deployment's own URL served by the
service its `default` endpoint points at."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from abeja.endpoints import APIClient as EndpointsClient
from abeja.exceptions import BadRequest, NotFound
from sqlalchemy import func, select

from modelbay.engine import open_database
from modelbay.settings import Settings
from modelbay.store.tables import EndpointRow
from tests.compat.abeja.conftest import credential
from tests.fixtures.databases import database_url_for
from tests.fixtures.server import Server, wait_until

WHO = '''
def handler(request, context):
    return {"status_code": 200, "content_type": "application/json",
            "content": {"got": request["contents"], "service": request["headers"].get("x-abeja-service-id")}}
'''


@pytest.fixture
def endpoints(sdk: Any, org: dict[str, str]) -> EndpointsClient:
    return EndpointsClient(credential=credential(org))


@pytest.fixture
def ready_service(services: Any, org: dict[str, str]) -> Callable[[str, str], str]:
    """A service of the deployment's version, once it is READY."""

    def _service(d: str, v: str) -> str:
        created = services.create_service(org["organization_id"], d, v)
        wait_until(lambda: services.get_service(org["organization_id"], d, created["service_id"])["status"]
                   == "READY", timeout=60)
        return str(created["service_id"])

    return _service


def call_deployment(server: Server, org: dict[str, str], d: str, body: Any) -> httpx.Response:
    """POST to `http://<organization_id>.localhost:<port>/deployments/<d>`, as a user of ABEJA would."""
    return httpx.post(f"http://{org['organization_id']}.localhost:{server.port}/deployments/{d}", json=body,
                      headers={"Authorization": f"Bearer {org['token']}"}, timeout=60)


def endpoint_count(server: Server) -> int:
    db = open_database(Settings(data_dir=server.data_dir, database_url=database_url_for(server.data_dir)))
    try:
        with db.read() as session:
            return int(session.scalar(select(func.count()).select_from(EndpointRow)) or 0)
    finally:
        db.close()


def test_the_default_endpoint_serves_the_deployments_url_and_follows_an_update(
    endpoints: EndpointsClient, org: dict[str, str], deploy: Callable[..., tuple[str, str]],
    ready_service: Callable[[str, str], str], abeja_server: Server,
) -> None:
    o = org["organization_id"]
    d, v = deploy(WHO)
    first, second = ready_service(d, v), ready_service(d, v)
    no_endpoint = call_deployment(abeja_server, org, d, {"x": 0})
    assert no_endpoint.status_code == 404 and no_endpoint.json()["error"] == "not_found"

    created = endpoints.create_endpoint(o, d, first)
    assert re.fullmatch(r"pnt-[0-9a-f]{16}", created["endpoint_id"])
    assert created == {"endpoint_id": created["endpoint_id"], "custom_alias": "default", "service_id": first}
    e = created["endpoint_id"]
    assert endpoints.get_endpoints(o, d) == {"entries": [created]}
    assert endpoints.get_endpoint(o, d, e) == created
    assert endpoints.get_endpoint(o, d, "default") == created  # an endpoint is named by its id or its alias

    answer = call_deployment(abeja_server, org, d, {"x": 1})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"got": {"x": 1}, "service": first}

    assert endpoints.update_endpoint(o, d, e, second) == {"message": f"{e} updated"}
    assert endpoints.get_endpoint(o, d, e)["service_id"] == second
    assert call_deployment(abeja_server, org, d, {"x": 2}).json() == {"got": {"x": 2}, "service": second}

    assert endpoints.delete_endpoint(o, d, "default") == {"message": f"{e} deleted"}
    assert endpoints.get_endpoints(o, d) == {"entries": []}
    assert call_deployment(abeja_server, org, d, {"x": 3}).status_code == 404


def test_endpoint_errors_are_abejas_400_and_404(
    endpoints: EndpointsClient, org: dict[str, str], deploy: Callable[..., tuple[str, str]],
    ready_service: Callable[[str, str], str], abeja_server: Server,
) -> None:
    o = org["organization_id"]
    d, v = deploy(WHO)
    other_d, other_v = deploy(WHO, name="other")
    s, other_s = ready_service(d, v), ready_service(other_d, other_v)

    for bad in (other_s, "ser-0000000000000000", "nonsense"):
        with pytest.raises(BadRequest) as refused:
            endpoints.create_endpoint(o, d, bad)
        assert "service_id" in refused.value.error_description
    with pytest.raises(BadRequest):
        endpoints.create_endpoint(o, d, s, custom_alias="not an alias")
    e = endpoints.create_endpoint(o, d, s)["endpoint_id"]
    with pytest.raises(BadRequest) as duplicate:
        endpoints.create_endpoint(o, d, s)
    assert "default" in duplicate.value.error_description
    assert endpoints.create_endpoint(o, d, s, custom_alias="canary")["custom_alias"] == "canary"
    with pytest.raises(BadRequest):
        endpoints.update_endpoint(o, d, e, other_s)
    assert endpoints.get_endpoint(o, d, e)["service_id"] == s  # a refused update changed nothing

    for unknown in ("pnt-0000000000000000", "nothing"):
        for call in (lambda: endpoints.get_endpoint(o, d, unknown),
                     lambda: endpoints.update_endpoint(o, d, unknown, s),
                     lambda: endpoints.delete_endpoint(o, d, unknown)):
            with pytest.raises(NotFound):
                call()
    with pytest.raises(NotFound):
        endpoints.get_endpoint(o, other_d, e)  # another deployment's endpoint
    raw = httpx.get(f"{abeja_server.url}/organizations/{o}/deployments/{d}/endpoints/pnt-0000000000000000",
                    headers={"Authorization": f"Bearer {org['token']}"})
    assert raw.status_code == 404 and set(raw.json()) == {"error", "error_description"}


def test_deleting_a_service_or_a_deployment_deletes_its_endpoints(
    endpoints: EndpointsClient, services: Any, deployments: Any, org: dict[str, str],
    deploy: Callable[..., tuple[str, str]], ready_service: Callable[[str, str], str], abeja_server: Server,
) -> None:
    o = org["organization_id"]
    d, v = deploy(WHO)
    s = ready_service(d, v)
    endpoints.create_endpoint(o, d, s)
    before = endpoint_count(abeja_server)
    services.delete_service(o, d, s)
    assert endpoints.get_endpoints(o, d) == {"entries": []}
    assert endpoint_count(abeja_server) == before - 1
    assert call_deployment(abeja_server, org, d, {}).status_code == 404

    s = ready_service(d, v)
    endpoints.create_endpoint(o, d, s)
    endpoints.create_endpoint(o, d, s, custom_alias="other")
    assert endpoint_count(abeja_server) == before + 1
    deployments.delete_deployment(o, d)
    assert endpoint_count(abeja_server) == before - 1
