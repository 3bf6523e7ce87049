"""Every dialect answers errors in its own shape: those its routes raise, a method a route lacks, and
a path under its prefix that no route serves. Raw HTTP against a real server."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from modelbay.app import create_app
from modelbay.console.rendering import ConsoleRoute
from modelbay.dialects.common.errors import DialectRoute
from modelbay.settings import Settings
from tests.fixtures.server import Server


def shape_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert isinstance(body, dict), body
    return body


def ubiops_error(response: httpx.Response) -> str:
    body = shape_of(response)
    assert set(body) == {"error"} and body["error"], body
    return str(body["error"])


def abeja_error(response: httpx.Response) -> tuple[str, str]:
    body = shape_of(response)
    assert set(body) == {"error", "error_description"} and body["error_description"], body
    return body["error"], body["error_description"]


def datature_error(response: httpx.Response) -> str:
    body = shape_of(response)
    assert set(body) == {"message"} and body["message"], body
    return str(body["message"])


def test_abeja_answers_a_core_error_a_missing_method_and_an_unknown_path_in_its_shape(
    server: Server, project: dict[str, str]
) -> None:
    org = f"{server.url}/organizations/{project['organization_id']}"
    headers = {"Authorization": f"Bearer {project['token']}"}

    missing = httpx.get(f"{org}/deployments/1234567890123", headers=headers)
    assert missing.status_code == 404
    assert abeja_error(missing) == ("not_found", "Deployment '1234567890123' was not found")

    unauthorized = httpx.get(f"{org}/deployments")
    assert unauthorized.status_code == 401 and abeja_error(unauthorized)[0] == "unauthorized"

    wrong_method = httpx.put(f"{org}/deployments", headers=headers)
    assert wrong_method.status_code == 405 and abeja_error(wrong_method)[0] == "method_not_allowed"
    proxy_wrong_method = httpx.get(f"{server.url}/deployments/1234567890123/services/ser-0000000000000000")
    assert proxy_wrong_method.status_code == 405 and abeja_error(proxy_wrong_method)[0] == "method_not_allowed"

    for path in (f"{org}/no-such-collection", f"{server.url}/deployments/no-such-route"):
        unknown = httpx.get(path, headers=headers)
        assert unknown.status_code == 404 and abeja_error(unknown)[0] == "not_found"


def test_datature_answers_a_core_error_a_missing_method_and_an_unknown_path_in_its_shape(
    server: Server, project: dict[str, str]
) -> None:
    base = f"{server.url}/projects/{project['datature_project_id']}"
    headers = {"Secret-Key": project["token"]}
    webhook_id = f"webhook_{uuid.uuid4()}"

    missing = httpx.get(f"{base}/batch/webhooks/{webhook_id}", headers=headers)
    assert missing.status_code == 404
    assert datature_error(missing) == f"Webhook '{webhook_id}' was not found"  # the caller's id, prefix and all

    unauthorized = httpx.get(f"{base}/batch/webhooks", headers={"Secret-Key": "not-a-key"})
    assert unauthorized.status_code == 401 and datature_error(unauthorized)

    wrong_method = httpx.put(f"{base}/batch/webhooks", headers=headers)
    assert wrong_method.status_code == 405 and datature_error(wrong_method)

    unknown = httpx.get(f"{base}/no-such-collection", headers=headers)
    assert unknown.status_code == 404 and datature_error(unknown)


@pytest.mark.parametrize("prefix", ["/v2.1", "/v2"])
def test_ubiops_answers_a_core_error_a_missing_method_and_an_unknown_path_in_its_shape(
    server: Server, project: dict[str, str], prefix: str
) -> None:
    base = f"{server.url}{prefix}/projects/{project['name']}"
    headers = {"Authorization": f"Token {project['token']}"}

    missing = httpx.get(f"{base}/deployments/no-such-deployment", headers=headers)
    assert missing.status_code == 404 and "no-such-deployment" in ubiops_error(missing)

    wrong_method = httpx.put(f"{base}/deployments", headers=headers)
    assert wrong_method.status_code == 405 and ubiops_error(wrong_method)

    unknown = httpx.get(f"{base}/no-such-collection", headers=headers)
    assert unknown.status_code == 404 and ubiops_error(unknown)


def test_a_path_of_no_dialect_is_a_404_with_an_error_body(server: Server) -> None:
    response = httpx.get(f"{server.url}/no-such-path")

    assert response.status_code == 404 and ubiops_error(response) == "Not Found"


def test_every_route_of_a_dialect_answers_its_errors_itself(tmp_path: Any) -> None:
    """A dialect router without its route class would answer its errors in another shape. (The web
    console's routes answer theirs as pages: `ConsoleRoute`.)"""
    app = create_app(Settings(data_dir=tmp_path)).app  # the FastAPI app behind the direct-request path
    paths = {path for path, route in _api_routes(app.router) if not isinstance(route, DialectRoute | ConsoleRoute)}

    # the last: between the nodes of a cluster only; "/" sends a browser to the console
    assert paths == {"/", "/health", "/metrics", "/_node/calls"}


def _api_routes(router: Any) -> list[tuple[str, Any]]:
    """(path, route) of every path operation, through included routers."""
    found = []
    for route in router.routes:
        if hasattr(route, "original_router"):  # a router included in this one
            found += _api_routes(route.original_router)
        elif hasattr(route, "endpoint") and hasattr(route, "dependant"):
            found.append((route.path, route))
    return found
