"""UbiOps pipeline versions created empty and then edited, as code written for UbiOps does: stored,
refused requests of every kind with a 400 saying what is missing, and run once complete."""

from __future__ import annotations

import json
from typing import Any

import pytest
import ubiops

from tests.fixtures.packages import NOOP

X = [{"name": "x", "data_type": "int"}]


def attach(destination: str, source: str) -> dict[str, Any]:
    return {"destination_name": destination, "sources": [
        {"source_name": source, "mapping": [{"source_field_name": "x", "destination_field_name": "x"}]}]}


def refused(call: Any) -> str:
    """The error text of a 400 in the UbiOps shape."""
    with pytest.raises(ubiops.ApiException) as error:
        call()
    assert error.value.status == 400, error.value.body
    body = json.loads(error.value.body)
    assert set(body) == {"error"}
    return str(body["error"])


def with_echo_pipeline(api: ubiops.CoreApi, project: dict[str, str], deploy: Any, name: str) -> str:
    """A built deployment `echo` and a structured pipeline `name` with no version yet; returns the project."""
    deploy("echo", NOOP)
    api.pipelines_create(project["name"], ubiops.PipelineCreate(name=name, input_type="structured", input_fields=X,
                                                                output_type="structured", output_fields=X))
    return project["name"]


def test_an_empty_version_is_stored_refuses_every_kind_of_request_then_runs_once_complete(
    api: ubiops.CoreApi, project: dict[str, str], deploy: Any
) -> None:
    p = with_echo_pipeline(api, project, deploy, "grown")
    # Given a version created with nothing in it
    created = api.pipeline_versions_create(p, "grown", ubiops.PipelineVersionCreate(version="v1"))
    assert created.version == "v1"
    stored = api.pipeline_versions_get(p, "grown", "v1")
    assert (stored.objects, stored.attachments) == ([], [])
    missing = "Pipeline version 'v1' is incomplete: pipeline_end cannot be reached from pipeline_start"

    # Then requests to it, by the default version or by name, direct or batch, are a 400 saying so
    assert refused(lambda: api.pipeline_requests_create(p, "grown", {"x": 1})) == missing
    assert refused(lambda: api.pipeline_version_requests_create(p, "grown", "v1", {"x": 1})) == missing
    assert refused(lambda: api.batch_pipeline_requests_create(p, "grown", [{"x": 1}])) == missing
    assert refused(lambda: api.batch_pipeline_version_requests_create(p, "grown", "v1", [{"x": 1}])) == missing
    assert api.pipeline_requests_list(p, "grown") == []  # nothing recorded

    # When an object is added without attachments, it is stored and still refused, naming what is missing
    api.pipeline_versions_update(p, "grown", "v1", ubiops.PipelineVersionUpdate(
        objects=[{"name": "echo", "reference_name": "echo"}]))
    assert "cannot be reached from pipeline_start" in refused(
        lambda: api.pipeline_version_requests_create(p, "grown", "v1", {"x": 1}))

    # When its attachments complete it, it runs
    api.pipeline_versions_update(p, "grown", "v1", ubiops.PipelineVersionUpdate(
        attachments=[attach("echo", "pipeline_start"), attach("pipeline_end", "echo")]))
    assert api.pipeline_version_requests_create(p, "grown", "v1", {"x": 7}).result == {"x": 7}


def test_an_empty_version_beside_a_complete_default_leaves_the_default_running(
    api: ubiops.CoreApi, project: dict[str, str], deploy: Any
) -> None:
    p = with_echo_pipeline(api, project, deploy, "two")
    api.pipeline_versions_create(p, "two", ubiops.PipelineVersionCreate(
        version="v1", objects=[{"name": "echo", "reference_name": "echo"}],
        attachments=[attach("echo", "pipeline_start"), attach("pipeline_end", "echo")]))
    api.pipeline_versions_create(p, "two", ubiops.PipelineVersionCreate(version="v2"))

    assert api.pipeline_requests_create(p, "two", {"x": 3}).result == {"x": 3}
    assert "'v2' is incomplete" in refused(lambda: api.pipeline_version_requests_create(p, "two", "v2", {"x": 3}))


def test_an_empty_plain_version_is_stored_and_refused_until_complete(api: ubiops.CoreApi,
                                                                      project: dict[str, str]) -> None:
    p = project["name"]
    api.pipelines_create(p, ubiops.PipelineCreate(name="plain", input_type="plain", output_type="plain"))
    api.pipeline_versions_create(p, "plain", ubiops.PipelineVersionCreate(version="v1"))
    assert "'v1' is incomplete" in refused(lambda: api.pipeline_requests_create(p, "plain", "text"))
    # pipeline_start straight to pipeline_end is complete
    api.pipeline_versions_update(p, "plain", "v1", ubiops.PipelineVersionUpdate(attachments=[
        {"destination_name": "pipeline_end", "sources": [{"source_name": "pipeline_start", "mapping": []}]}]))
    assert api.pipeline_requests_create(p, "plain", "text").result == "text"
