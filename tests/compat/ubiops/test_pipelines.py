"""UbiOps pipelines through the official `ubiops` SDK: versions, DAG runs, operators and sub-pipelines."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ubiops

from tests.compat.ubiops.conftest import sdk_client
from tests.fixtures.packages import make_package_dir
from tests.fixtures.server import Server

DOUBLE = '''
import time


class Oops(Exception):
    public_error_message = "negative numbers are refused"


class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        if data["x"] < 0:
            raise Oops()
        if data["x"] >= 1000:  # 1000 + n: sleep n seconds first
            time.sleep(data["x"] - 1000)
        return {"x": data["x"] * 2}
'''

ADD_ONE = '''
class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        return {"y": data["x"] + 1}
'''

X = [{"name": "x", "data_type": "int"}]
Y = [{"name": "y", "data_type": "int"}]


def m(source: str, destination: str) -> dict[str, str]:
    return {"source_field_name": source, "destination_field_name": destination}


def attach(destination: str, *sources: tuple[str, list[dict[str, str]] | None]) -> dict[str, Any]:
    return {"destination_name": destination, "sources": [{"source_name": s, "mapping": mp} for s, mp in sources]}


@pytest.fixture(scope="module")
def env(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ubiops.CoreApi, str]]:
    """One project with two built deployments, shared by the tests of this module."""
    project = server.create_project("pipelines")
    client = sdk_client(server, project["token"])
    api = ubiops.CoreApi(client)
    tmp: Path = tmp_path_factory.mktemp("pipeline-packages")
    for name, source, inputs, outputs in (("double", DOUBLE, X, X), ("add-one", ADD_ONE, X, Y)):
        api.deployments_create(project["name"], ubiops.DeploymentCreate(
            name=name, input_type="structured", output_type="structured", input_fields=inputs, output_fields=outputs))
        api.deployment_versions_create(project["name"], name, ubiops.DeploymentVersionCreate(version="v1"))
        archive = ubiops.utils.zip_dir(str(make_package_dir(tmp / name, source, "")), str(tmp / f"{name}.zip"))
        api.revisions_file_upload(project["name"], name, "v1", file=archive)
        ubiops.utils.wait_for_deployment_version(client, project["name"], name, "v1", quiet=True, timeout=120)
    yield api, project["name"]
    client.close()


_count = iter(range(10_000))


def make_pipeline(api: ubiops.CoreApi, project: str, objects: list[dict[str, Any]], attachments: list[dict[str, Any]],
                  *, inputs: list[dict[str, str]] = X, outputs: list[dict[str, str]] = Y,
                  name: str | None = None) -> str:
    name = name or f"pl-{next(_count)}"
    api.pipelines_create(project, ubiops.PipelineCreate(
        name=name, input_type="structured", input_fields=inputs, output_type="structured", output_fields=outputs))
    api.pipeline_versions_create(project, name, ubiops.PipelineVersionCreate(
        version="v1", objects=objects, attachments=attachments))
    return name


CHAIN_OBJECTS = [
    {"name": "first", "reference_name": "double"},
    {"name": "second", "reference_type": "deployment", "reference_name": "add-one", "version": "v1"},
]
CHAIN_ATTACHMENTS = [
    attach("first", ("pipeline_start", [m("x", "x")])),
    attach("second", ("first", [m("x", "x")])),
    attach("pipeline_end", ("second", [m("y", "y")])),
]


def test_a_chain_of_two_deployments_answers_with_what_reaches_the_end(env: tuple[ubiops.CoreApi, str]) -> None:
    api, project = env
    name = make_pipeline(api, project, CHAIN_OBJECTS, CHAIN_ATTACHMENTS)

    response = api.pipeline_requests_create(project, name, {"x": 5})

    assert response.status == "completed", response.error_message
    assert response.result == {"y": 11}
    assert response.pipeline_timeout == 3600 and response.deployment_timeout == 3600
    steps = response.deployment_requests
    assert [s.pipeline_object for s in steps] == ["first", "second"]
    assert all(s.status == "completed" and s.sequence_id for s in steps)
    assert steps[0].sequence_id < steps[1].sequence_id
    # each step is a deployment request of its own, readable through the deployment
    first = api.deployment_version_requests_get(project, "double", steps[0].id, "v1")
    assert first.result == {"x": 10} and first.origin["pipeline_request_id"] == response.id
