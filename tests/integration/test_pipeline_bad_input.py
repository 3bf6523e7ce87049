"""Malformed pipeline and pipeline version bodies over raw HTTP: a 400 with `{"error": …}`, never a 500."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.server import Server
from tests.integration.conftest import error_of, ubiops

X = [{"name": "x", "data_type": "int"}]

BAD_VERSIONS: list[Any] = [
    [],
    "text",
    {"objects": []},
    {"version": ""},
    {"version": "v1", "objects": "none"},
    {"version": "v1", "objects": [1]},
    {"version": "v1", "objects": [{"name": "a"}]},
    {"version": "v1", "objects": [{"name": "a", "reference_name": "f", "reference_type": "model"}]},
    {"version": "v1", "objects": [{"name": "a", "reference_type": "operator", "reference_name": "function",
                                   "configuration": {"expression": 5}}]},
    {"version": "v1", "objects": [{"name": "a", "reference_type": "operator", "reference_name": "function",
                                   "configuration": {"expression": "x", "output_fields": "x"}}]},
    {"version": "v1", "objects": [{"name": "a", "reference_type": "operator", "reference_name": "count-subrequests",
                                   "configuration": {"on_error": ["skip"]}}]},
    {"version": "v1", "objects": [{"name": "pipeline_end", "reference_name": "d"}]},
    {"version": "v1", "attachments": {"destination_name": "pipeline_end"}},
    {"version": "v1", "attachments": [{"destination_name": "pipeline_end", "sources": []}]},
    {"version": "v1", "attachments": [{"destination_name": "pipeline_end", "sources": [{"source_name": 3}]}]},
    {"version": "v1", "attachments": [{"destination_name": "pipeline_end", "sources": [
        {"source_name": "pipeline_start", "mapping": [{"source_field_name": "x"}]}]}]},
    {"version": "v1", "attachments": [{"destination_name": "pipeline_start", "sources": [
        {"source_name": "pipeline_end"}]}]},
    {"version": "v1", "request_retention_mode": "forever"},
    {"version": "v1", "request_retention_time": -1},
]


@pytest.mark.parametrize("body", BAD_VERSIONS, ids=[str(i) for i in range(len(BAD_VERSIONS))])
def test_a_malformed_pipeline_version_is_a_400_and_stores_nothing(server: Server, body: Any) -> None:
    project = server.create_project(f"badpl-{abs(hash(repr(body))) % 10**8}")
    with ubiops(server, project["token"]) as client:
        base = f"/projects/{project['name']}/pipelines"
        created = client.post(base, json={"name": "p", "input_type": "structured", "input_fields": X,
                                          "output_type": "structured", "output_fields": X})
        assert created.status_code == 201, created.text
        response = client.post(f"{base}/p/versions", json=body)
        assert response.status_code == 400, response.text
        assert error_of(response)
        assert client.get(f"{base}/p/versions").json() == []


@pytest.mark.parametrize("body", [
    {"name": "Bad Name"}, {"name": "p", "input_type": "json"}, {"name": "p", "input_fields": [{"name": "x"}]},
    {"name": "p", "output_fields": "x"}, {"name": "p", "description": "x" * 401},
])
def test_a_malformed_pipeline_is_a_400_and_stores_nothing(server: Server, body: dict[str, Any]) -> None:
    project = server.create_project(f"badp-{abs(hash(repr(body))) % 10**8}")
    with ubiops(server, project["token"]) as client:
        response = client.post(f"/projects/{project['name']}/pipelines", json=body)
        assert response.status_code == 400, response.text
        assert error_of(response)
        assert client.get(f"/projects/{project['name']}/pipelines").json() == []


@pytest.mark.parametrize("body", [{"default_version": ["v1"]}, {"default_version": {"a": 1}}, {"name": ["p"]},
                                  {"input_type": 5}, {"labels": [1]}])
def test_a_malformed_pipeline_update_is_a_400_and_changes_nothing(server: Server, body: dict[str, Any]) -> None:
    project = server.create_project(f"badu-{abs(hash(repr(body))) % 10**8}")
    with ubiops(server, project["token"]) as client:
        base = f"/projects/{project['name']}/pipelines"
        assert client.post(base, json={"name": "p", "input_type": "plain", "output_type": "plain"}).status_code == 201
        before = client.get(f"{base}/p").json()
        response = client.patch(f"{base}/p", json=body)
        assert response.status_code == 400, response.text
        assert error_of(response)
        assert client.get(f"{base}/p").json() == before
