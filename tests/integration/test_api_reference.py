"""The API reference: /docs and /redoc load nothing from the internet, and the OpenAPI document is one
that OpenAPI tools take (every path parameter declared, one tag and the dialect's credential per
operation, the routes answered before the framework listed). Raw HTTP against a real server, without a token."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest

from modelbay.app import create_app
from modelbay.settings import Settings
from tests.fixtures.server import Server

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}
DIRECT_REQUEST_PATHS = [
    f"{prefix}/projects/{{project_name}}/deployments/{{deployment_name}}{version}/requests"
    for prefix in ("/v2.1", "/v2")
    for version in ("", "/versions/{version}")
]


@pytest.fixture(scope="module")
def document(server: Server) -> dict[str, Any]:
    # No credential: the reference is public. A long timeout: made on first use, on a loaded machine.
    response = httpx.get(f"{server.url}/openapi.json", timeout=60)
    assert response.status_code == 200, response.text
    return dict(response.json())


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def dialect_of(path: str) -> str | None:
    """The dialect the prefix of `path` belongs to (app.MOUNTED_ERRORS)."""
    if path.startswith(("/v2.1/", "/v2/")):
        return "UbiOps"
    if path.startswith(("/organizations/", "/deployments/")):
        return "ABEJA"
    if path.startswith("/projects/"):
        return "Datature"
    return None


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_a_reference_page_loads_its_assets_from_the_server_itself(server: Server, page: str) -> None:
    response = httpx.get(f"{server.url}{page}")  # no credential

    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "http://" not in response.text and "https://" not in response.text, response.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', response.text)
    assert any(url.endswith(".js") for url in assets), response.text
    for url in assets:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = httpx.get(urljoin(server.url, url))
        assert asset.status_code == 200, url
        assert CONTENT_TYPES[Path(url).suffix] in asset.headers["content-type"], (url, asset.headers)
        assert len(asset.content) > (100_000 if url.endswith(".js") else 1_000), url
    assert "/openapi.json" in response.text  # the document the page shows


def test_the_redoc_script_leaves_out_the_logo_it_would_load_from_redocly(server: Server) -> None:
    script = httpx.get(f"{server.url}/docs/assets/redoc.standalone.js")

    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert len(script.content) > 1_000_000  # the whole of it, not a stub
    assert b"cdn.redoc.ly" not in script.content
    assert b"API docs by Redocly" in script.content  # the rest of its sidebar is as shipped


def test_every_path_parameter_is_declared_by_each_operation(document: dict[str, Any]) -> None:
    undeclared = []
    for path, method, operation in operations(document):
        declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        for name in re.findall(r"\{(\w+)\}", path):
            if name not in declared:
                undeclared.append(f"{method.upper()} {path}: {name}")
        assert all(p["required"] for p in operation.get("parameters", []) if p["in"] == "path"), (path, method)
    assert undeclared == []


def test_every_operation_has_one_tag_of_its_dialect(document: dict[str, Any]) -> None:
    known = {tag["name"] for tag in document["tags"]}
    groups = {tag: group["name"] for group in document["x-tagGroups"] for tag in group["tags"]}

    assert groups.keys() == known
    for path, method, operation in operations(document):
        assert len(operation["tags"]) == 1 and operation["tags"][0] in known, (path, method, operation["tags"])
        assert groups[operation["tags"][0]] == (dialect_of(path) or "modelbay"), (path, method)
    used = {operation["tags"][0] for _, _, operation in operations(document)}
    assert used == known  # no tag described for nothing


def test_each_dialect_operation_requires_that_dialect_credential(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["UbiOpsToken"] == {**schemes["UbiOpsToken"], "type": "apiKey", "in": "header",
                                      "name": "Authorization"}
    assert schemes["AbejaBearer"] == {**schemes["AbejaBearer"], "type": "http", "scheme": "bearer"}
    assert schemes["DatatureSecretKey"] == {**schemes["DatatureSecretKey"], "type": "apiKey", "in": "header",
                                            "name": "Secret-Key"}
    expected = {
        "UbiOps": [{"UbiOpsToken": []}],
        "ABEJA": [{"AbejaBearer": []}, {"AbejaBasic": []}],
        "Datature": [{"DatatureSecretKey": []}],
    }

    for path, method, operation in operations(document):
        dialect = dialect_of(path)
        if dialect is None or path in ("/v2.1/status", "/v2/status"):  # the server's own; UbiOps' status
            assert "security" not in operation, (path, method)
        else:
            assert operation["security"] == expected[dialect], (path, method)
            for requirement in operation["security"]:
                assert requirement.keys() <= schemes.keys()


def test_the_direct_request_routes_are_listed_as_served(server: Server, document: dict[str, Any]) -> None:
    for path in DIRECT_REQUEST_PATHS:
        operation = document["paths"][path]["post"]
        assert operation["tags"] == ["UbiOps · requests"]
        assert {"application/json", "text/plain"} <= operation["requestBody"]["content"].keys()
        result = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert {"id", "status", "result", "error_message"} <= set(result["required"])
        assert {"400", "401", "404"} <= operation["responses"].keys()
        # served (by `Front`, before the framework): without a token, its UbiOps 401
        served = httpx.post(server.url + path.format(project_name="p", deployment_name="d", version="v1"), json=1)
        assert served.status_code == 401 and set(served.json()) == {"error"}, served.text
    operation_ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(operation_ids) == len(set(operation_ids))


def test_the_abeja_run_create_is_listed_as_served(server: Server, document: dict[str, Any]) -> None:
    path = "/organizations/{organization_id}/deployments/{deployment_id}/runs"
    operation = document["paths"][path]["post"]
    assert operation["tags"] == ["ABEJA · runs"]
    assert operation["security"] == [{"AbejaBearer": []}, {"AbejaBasic": []}]
    assert "version_id" in operation["requestBody"]["content"]["application/json"]["schema"]["required"]
    assert {"400", "401", "404"} <= operation["responses"].keys()
    assert "get" in document["paths"][path]  # the framework's routes on the same path are still listed
    # served (by `Front`, before the framework): without a credential, its ABEJA 401
    served = httpx.post(server.url + path.format(organization_id="1234567890123", deployment_id="1"), json={})
    assert served.status_code == 401 and set(served.json()) == {"error", "error_description"}, served.text


def test_the_document_is_made_once(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path)).app  # the FastAPI app behind the direct-request path

    assert app.openapi() is app.openapi()
