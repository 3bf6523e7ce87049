"""Lax input refused: numbers in a query are ASCII digits only (`int()` reads '１２' as 12 and fails
on '²'), and field names have at most 64 characters, as UbiOps has them. Each a 400 in the dialect's
shape that changes nothing."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fixtures.packages import PLAIN
from tests.fixtures.server import Server
from tests.integration.conftest import deploy, error_of, ubiops, unique

FULL_WIDTH_12 = "１２"  # what `int()` takes as 12
NOT_A_NUMBER = ["１２", "²", "1_0", " 12", "+12", "0x1", "1" * 40, ""]


@pytest.fixture(scope="module")
def echo(server: Server) -> Iterator[tuple[str, str]]:
    """A project with a built plain deployment `echo` and a plain pipeline `p` passing its input through."""
    name = unique("strict")
    token = server.create_project(name)["token"]
    with ubiops(server, token) as client:
        deploy(client, name, "echo", PLAIN)
        pipelines = f"/projects/{name}/pipelines"
        assert client.post(pipelines, json={"name": "p", "input_type": "plain", "output_type": "plain"}).is_success
        attachment = {"destination_name": "pipeline_end", "sources": [{"source_name": "pipeline_start"}]}
        assert client.post(f"{pipelines}/p/versions", json={"version": "v1", "attachments": [attachment]}).is_success
    yield name, token


def request_counts(client: httpx.Client, name: str) -> tuple[int, int]:
    deployment = client.get(f"/projects/{name}/deployments/echo/requests").json()
    pipeline = client.get(f"/projects/{name}/pipelines/p/requests").json()
    return len(deployment), len(pipeline)


@pytest.mark.parametrize("value", NOT_A_NUMBER)
def test_a_timeout_that_is_not_ascii_digits_is_a_400_for_every_request_route(
    server: Server, echo: tuple[str, str], value: str
) -> None:
    name, token = echo
    with ubiops(server, token) as client:
        before = request_counts(client, name)
        for path in ("deployments/echo/requests", "deployments/echo/versions/v1/requests",
                     "deployments/echo/requests/batch", "pipelines/p/requests", "pipelines/p/requests/batch"):
            response = client.post(f"/projects/{name}/{path}", params={"timeout": value}, json="hi")
            assert response.status_code == 400, (path, response.text)
            assert "timeout must be an integer" in error_of(response)
        stream = client.post(f"/projects/{name}/deployments/echo/requests/stream", params={"timeout": value},
                             json="hi")
        assert stream.status_code == 400 and "timeout must be an integer" in stream.json()["error_message"]
        assert request_counts(client, name) == before


def test_ascii_digits_still_work(server: Server, echo: tuple[str, str]) -> None:
    name, token = echo
    with ubiops(server, token) as client:
        response = client.post(f"/projects/{name}/deployments/echo/requests", params={"timeout": "12"}, json="hi")
        assert response.status_code == 200 and response.json()["result"] == "hi", response.text
        assert len(client.get(f"/projects/{name}/deployments/echo/requests", params={"limit": "1"}).json()) == 1
        logs = client.get(f"/projects/{name}/logs", params={"limit": "5", "start": "0"})
        assert logs.status_code == 200, logs.text


@pytest.mark.parametrize("query", [{"limit": FULL_WIDTH_12}, {"offset": FULL_WIDTH_12}, {"limit": "²"}])
def test_a_list_query_that_is_not_ascii_digits_is_a_400(
    server: Server, echo: tuple[str, str], query: dict[str, str]
) -> None:
    name, token = echo
    with ubiops(server, token) as client:
        for path in ("deployments/echo/requests", "pipelines/p/requests"):
            response = client.get(f"/projects/{name}/{path}", params=query)
            assert response.status_code == 400, (path, response.text)
            assert "must be an integer" in error_of(response)


@pytest.mark.parametrize("query", [{"limit": FULL_WIDTH_12}, {"start": FULL_WIDTH_12}, {"end": "²"}])
def test_a_log_query_that_is_not_ascii_digits_is_a_400(
    server: Server, echo: tuple[str, str], query: dict[str, str]
) -> None:
    name, token = echo
    with ubiops(server, token) as client:
        response = client.get(f"/projects/{name}/logs", params=query)
        assert response.status_code == 400, response.text
        error_of(response)


def _page(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize("query", [{"limit": FULL_WIDTH_12}, {"limit": "²"}, {"page": _page("o²")},
                                   {"page": _page("o１２")}])
def test_a_datature_page_that_is_not_ascii_digits_is_a_400(
    server: Server, project: dict[str, str], query: dict[str, str]
) -> None:
    for kind in ("webhooks", "datasets", "jobs"):
        response = httpx.get(f"{server.url}/projects/{project['datature_project_id']}/batch/{kind}", params=query,
                             headers={"Secret-Key": project["token"]})
        assert response.status_code == 400, (kind, response.text)
        assert set(response.json()) == {"message"}


# --- field names -------------------------------------------------------------------------


def fields(name: str) -> list[dict[str, Any]]:
    return [{"name": name, "data_type": "int"}]


@pytest.mark.parametrize("length", [65, 100_000])
def test_a_field_name_longer_than_64_characters_is_a_400(server: Server, project: dict[str, str], length: int) -> None:
    long = "f" * length
    with ubiops(server, project["token"]) as client:
        base = f"/projects/{project['name']}"
        for kind, body in [
            ("deployments", {"name": "d", "input_type": "structured", "input_fields": fields(long),
                             "output_type": "plain"}),
            ("deployments", {"name": "d", "input_type": "plain", "output_type": "structured",
                             "output_fields": fields(long)}),
            ("pipelines", {"name": "p", "input_type": "structured", "input_fields": fields(long),
                           "output_type": "plain"}),
            ("pipelines", {"name": "p", "input_type": "plain", "output_type": "structured",
                           "output_fields": fields(long)}),
        ]:
            response = client.post(f"{base}/{kind}", json=body)
            assert response.status_code == 400, response.text
            message = error_of(response)
            assert f"{length} characters" in message and "64" in message and len(message) < 200
            assert client.get(f"{base}/{kind}").json() == []


def test_a_field_name_of_64_characters_is_taken(server: Server, project: dict[str, str]) -> None:
    name = "f" * 64
    with ubiops(server, project["token"]) as client:
        response = client.post(f"/projects/{project['name']}/deployments", json={
            "name": "d", "input_type": "structured", "input_fields": fields(name), "output_type": "plain"})
        assert response.status_code == 201, response.text
        assert response.json()["input_fields"][0]["name"] == name
