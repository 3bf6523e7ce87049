"""UbiOps pipelines through the official `ubiops` SDK: versions, DAG runs, operators and sub-pipelines."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ubiops
from ubiops.utils.exceptions import StatusError

from tests.compat.ubiops.conftest import sdk_client
from tests.fixtures.packages import make_package_dir
from tests.fixtures.server import Server, wait_until

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

TALKER = '''
class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data, context):
        context["streaming_update"](f"working on {data['x']}")
        return {"x": data["x"]}
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
    for name, source, inputs, outputs in (("double", DOUBLE, X, X), ("add-one", ADD_ONE, X, Y),
                                            ("talker", TALKER, X, X)):
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


def test_a_list_of_inputs_walks_each_and_answers_the_list_of_results(env: tuple[ubiops.CoreApi, str]) -> None:
    # what `ubiops pipelines requests create NAME --data '{"x": 5}'` sends: always a list
    api, project = env
    name = make_pipeline(api, project, CHAIN_OBJECTS, CHAIN_ATTACHMENTS)

    response = api.pipeline_requests_create(project, name, [{"x": 5}, {"x": 1}])
    single = api.pipeline_requests_create(project, name, [{"x": 5}])

    assert (response.status, response.result) == ("completed", [{"y": 11}, {"y": 3}]), response.error_message
    assert [s.pipeline_object for s in response.deployment_requests] == ["first", "first", "second", "second"]
    assert (single.status, single.result) == ("completed", [{"y": 11}])
    with pytest.raises(ubiops.ApiException) as error:
        api.pipeline_requests_create(project, name, [{"x": 1}, {"x": "two"}])
    assert error.value.status == 400 and "Input 1 of the list" in error.value.body


def test_pipelines_list_and_get_show_fields_and_the_default_version(env: tuple[ubiops.CoreApi, str]) -> None:
    api, project = env
    name = make_pipeline(api, project, CHAIN_OBJECTS, CHAIN_ATTACHMENTS)
    api.pipelines_create(project, ubiops.PipelineCreate(name=f"{name}-plain", input_type="plain", output_type="plain"))

    listed = {p.name: p for p in api.pipelines_list(project)}
    assert listed[f"{name}-plain"].input_fields == [] and listed[f"{name}-plain"].output_fields == []
    assert [f.name for f in listed[name].input_fields] == ["x"]
    detail = api.pipelines_get(project, name)
    assert detail.default_version == "v1" and detail.output_type == "structured"

    version = api.pipeline_versions_get(project, name, "v1")
    assert version.request_retention_mode == "full"
    assert [o.name for o in version.objects] == ["first", "second"] and all(o.id for o in version.objects)
    assert version.objects[0].reference_type == "deployment" and version.objects[0].version is None
    assert [a.destination_name for a in version.attachments] == ["first", "second", "pipeline_end"]
    assert version.attachments[1].sources[0].mapping[0].source_field_name == "x"

    api.pipelines_update(project, name, ubiops.PipelineUpdate(description="two steps"))
    assert api.pipelines_get(project, name).description == "two steps"
    with pytest.raises(ubiops.ApiException) as error:  # v1 maps `x` from the start and `y` to the end
        api.pipelines_update(project, name, ubiops.PipelineUpdate(input_fields=[{"name": "z", "data_type": "int"}]))
    assert error.value.status == 400 and "Version 'v1' would no longer be valid" in error.value.body
    assert [f.name for f in api.pipelines_get(project, name).input_fields] == ["x"]
    api.pipeline_versions_delete(project, name, "v1")
    assert api.pipelines_get(project, name).default_version is None
    api.pipelines_delete(project, name)
    assert name not in {p.name for p in api.pipelines_list(project)}


@pytest.mark.parametrize(
    ("objects", "attachments", "message"),
    [
        ([{"name": "a", "reference_name": "no-such"}], [attach("a", ("pipeline_start", [m("x", "x")]))],
         "Object 'a' refers to deployment 'no-such', which does not exist"),
        ([{"name": "a", "reference_name": "double", "version": "v9"}], [attach("a", ("pipeline_start", None))],
         "Object 'a' refers to deployment 'double', which has no version 'v9'"),
        ([{"name": "a", "reference_name": "double"}], [attach("zz", ("pipeline_start", None))],
         "Attachment destination 'zz' is not an object of this version"),
        ([{"name": "a", "reference_name": "double"}, {"name": "b", "reference_name": "double"}],
         [attach("a", ("pipeline_start", [m("x", "x")]), ("b", [m("x", "x")])), attach("b", ("a", [m("x", "x")])),
          attach("pipeline_end", ("b", [m("x", "y")]))],
         "cycle"),
        ([{"name": "a", "reference_name": "double"}],
         [attach("a", ("pipeline_start", [m("x", "nope")])), attach("pipeline_end", ("a", [m("x", "y")]))],
         "Object 'a' has no input field 'nope'"),
        ([{"name": "a", "reference_name": "double"},
          {"name": "s", "reference_type": "operator", "reference_name": "pipeline-variable",
           "configuration": {"output_fields": [{"name": "s", "data_type": "string"}],
                             "output_values": [{"name": "s", "value": "text"}]}}],
         [attach("s", ("pipeline_start", None)), attach("a", ("s", [m("s", "x")])),
          attach("pipeline_end", ("a", [m("x", "y")]))],
         "Field 's' of 's' is string, but field 'x' of 'a' is int"),
    ],
    ids=["unknown-deployment", "unknown-version", "unknown-object", "cycle", "unknown-field", "type-mismatch"],
)
def test_an_invalid_version_is_refused_with_a_message_naming_the_fault(
    env: tuple[ubiops.CoreApi, str], objects: list[dict[str, Any]], attachments: list[dict[str, Any]], message: str
) -> None:
    api, project = env
    name = f"bad-{next(_count)}"
    api.pipelines_create(project, ubiops.PipelineCreate(name=name, input_type="structured", input_fields=X,
                                                        output_type="structured", output_fields=Y))
    with pytest.raises(ubiops.ApiException) as error:
        api.pipeline_versions_create(project, name, ubiops.PipelineVersionCreate(
            version="v1", objects=objects, attachments=attachments))
    assert error.value.status == 400
    assert message in str(error.value.body)
    assert api.pipeline_versions_list(project, name) == []  # nothing stored


def test_a_version_created_empty_is_stored_refuses_requests_until_complete_then_runs(
    env: tuple[ubiops.CoreApi, str]
) -> None:
    # Given a version created empty, as code written for UbiOps does before editing it
    api, project = env
    name = f"growing-{next(_count)}"
    api.pipelines_create(project, ubiops.PipelineCreate(name=name, input_type="structured", input_fields=X,
                                                        output_type="structured", output_fields=Y))
    api.pipeline_versions_create(project, name, ubiops.PipelineVersionCreate(version="v1"))
    assert [v.version for v in api.pipeline_versions_list(project, name)] == ["v1"]
    # Then a request to it is a 400 saying what is missing, and nothing is recorded
    for objects, attachments, missing in [
        ([], [], "pipeline_end cannot be reached from pipeline_start"),
        ([{"name": "a", "reference_name": "double"}, {"name": "lost", "reference_name": "double"}],
         [attach("a", ("pipeline_start", [m("x", "x")])), attach("lost", ("a", [m("x", "x")])),
          attach("pipeline_end", ("a", [m("x", "y")]))],
         "Object 'lost' has no path to pipeline_end"),
    ]:
        api.pipeline_versions_update(project, name, "v1", ubiops.PipelineVersionUpdate(
            objects=objects, attachments=attachments))
        with pytest.raises(ubiops.ApiException) as error:
            api.pipeline_requests_create(project, name, {"x": 2})
        assert error.value.status == 400, error.value.body
        assert f"Pipeline version 'v1' is incomplete: {missing}" in str(error.value.body)
    assert api.pipeline_requests_list(project, name) == []
    # When it is completed, it runs
    api.pipeline_versions_update(project, name, "v1", ubiops.PipelineVersionUpdate(
        objects=[{"name": "a", "reference_name": "double"}],
        attachments=[attach("a", ("pipeline_start", [m("x", "x")])), attach("pipeline_end", ("a", [m("x", "y")]))]))
    assert api.pipeline_requests_create(project, name, {"x": 2}).result == {"y": 4}


def test_a_sub_pipeline_runs_as_one_object_and_may_not_contain_its_parent(env: tuple[ubiops.CoreApi, str]) -> None:
    api, project = env
    inner = make_pipeline(api, project, CHAIN_OBJECTS, CHAIN_ATTACHMENTS)
    outer = make_pipeline(api, project, [{"name": "inner", "reference_type": "pipeline", "reference_name": inner}], [
        attach("inner", ("pipeline_start", [m("x", "x")])),
        attach("pipeline_end", ("inner", [m("y", "y")])),
    ])

    response = api.pipeline_requests_create(project, outer, {"x": 1})

    assert response.status == "completed", response.error_message
    assert response.result == {"y": 3}
    [sub] = response.pipeline_requests
    assert sub.pipeline_object == "inner" and sub.status == "completed" and sub.sequence_id
    inner_request = api.pipeline_requests_get(project, inner, sub.id)
    assert [d.pipeline_object for d in inner_request.deployment_requests] == ["first", "second"]

    # the inner pipeline may not take the outer one in, directly or not
    with pytest.raises(ubiops.ApiException) as error:
        api.pipeline_versions_create(project, inner, ubiops.PipelineVersionCreate(
            version="v2", objects=[{"name": "loop", "reference_type": "pipeline", "reference_name": outer}],
            attachments=[attach("loop", ("pipeline_start", [m("x", "x")])),
                         attach("pipeline_end", ("loop", [m("y", "y")]))]))
    assert error.value.status == 400
    assert f"Object 'loop' makes pipeline '{inner}' contain itself (through pipeline '{outer}')" in error.value.body


def test_a_failing_step_fails_the_pipeline_with_a_message_naming_it(env: tuple[ubiops.CoreApi, str]) -> None:
    api, project = env
    name = make_pipeline(api, project, CHAIN_OBJECTS, CHAIN_ATTACHMENTS)

    response = api.pipeline_requests_create(project, name, {"x": -1})

    assert response.status == "failed"
    assert response.error_message == "Object 'first' failed: negative numbers are refused"
    assert [s.pipeline_object for s in response.deployment_requests] == ["first"]
    with pytest.raises(StatusError, match="negative numbers"):
        ubiops.utils.wait_for_pipeline_request(api.api_client, project, name, response.id, quiet=True)


def test_a_timeout_that_runs_out_mid_pipeline_fails_it_naming_the_running_step(
    env: tuple[ubiops.CoreApi, str],
) -> None:
    api, project = env
    name = make_pipeline(api, project, CHAIN_OBJECTS, CHAIN_ATTACHMENTS)

    response = api.pipeline_requests_create(project, name, {"x": 1030}, timeout=2)

    assert response.status == "failed"
    assert response.error_message == "The pipeline request timed out after 2 seconds while object 'first' was running"
    assert response.pipeline_timeout == 2
    [first] = response.deployment_requests
    assert first.status == "failed"


def operator(name: str, kind: str, **configuration: Any) -> dict[str, Any]:
    return {"name": name, "reference_type": "operator", "reference_name": kind, "configuration": configuration}


def test_a_fan_out_runs_one_request_per_item_and_collects_them_back(env: tuple[ubiops.CoreApi, str]) -> None:
    api, project = env
    xs = [{"name": "xs", "data_type": "array_int"}]
    name = make_pipeline(api, project, [
        operator("split", "create-subrequests", input_fields=xs, output_fields=X),
        {"name": "double", "reference_name": "double"},
        operator("join", "collect-subrequests", input_fields=X, output_fields=xs),
        operator("how-many", "count-subrequests", output_fields=[{"name": "n", "data_type": "int"}]),
    ], [
        attach("split", ("pipeline_start", [m("xs", "xs")])),
        attach("double", ("split", [m("x", "x")])),
        attach("join", ("double", [m("x", "x")])),
        attach("how-many", ("double", None)),
        attach("pipeline_end", ("join", [m("xs", "xs")]), ("how-many", [m("n", "n")])),
    ], inputs=xs, outputs=[*xs, {"name": "n", "data_type": "int"}])

    response = api.pipeline_requests_create(project, name, {"xs": [1, 2, 3, 4]})

    assert response.status == "completed", response.error_message
    assert response.result == {"xs": [2, 4, 6, 8], "n": 4}
    assert len(response.deployment_requests) == 4
    assert {o.pipeline_object for o in response.operator_requests} == {"split", "join", "how-many"}
    join = next(o for o in response.operator_requests if o.pipeline_object == "join")
    detail = api.pipeline_version_object_requests_get(project, name, join.id, "v1")
    assert detail.pipeline_request_id == response.id and detail.pipeline_object == "join"
    assert detail.result == {"xs": [2, 4, 6, 8]} and detail.status == "completed"
    assert detail.request_data == [{"x": 2}, {"x": 4}, {"x": 6}, {"x": 8}]
    assert api.pipeline_version_object_requests_output_get(project, name, join.id, "v1").json() == {"xs": [2, 4, 6, 8]}
    assert api.pipeline_version_object_requests_input_get(project, name, join.id, "v1").json()[0] == {"x": 2}


def test_a_fan_out_over_the_item_limit_fails_the_request_naming_the_operator(env: tuple[ubiops.CoreApi, str]) -> None:
    api, project = env
    xs = [{"name": "xs", "data_type": "array_int"}]
    name = make_pipeline(api, project, [
        operator("split", "create-subrequests", input_fields=xs, output_fields=X),
        operator("how-many", "count-subrequests", output_fields=[{"name": "n", "data_type": "int"}]),
    ], [
        attach("split", ("pipeline_start", [m("xs", "xs")])),
        attach("how-many", ("split", None)),
        attach("pipeline_end", ("how-many", [m("n", "n")])),
    ], inputs=xs, outputs=[{"name": "n", "data_type": "int"}])

    response = api.pipeline_requests_create(project, name, {"xs": [0] * 10_001})

    assert response.status == "failed"
    assert "'split'" in response.error_message and "at most 10000" in response.error_message


def test_an_if_condition_routes_each_request_to_one_branch(env: tuple[ubiops.CoreApi, str]) -> None:
    api, project = env
    name = make_pipeline(api, project, [
        operator("big", "if-condition", expression="x >= 10", input_fields=X),
        operator("small", "if-condition", expression="x < 10", input_fields=X),
        operator("as-y", "function", expression="x * 100", input_fields=X, output_fields=Y),
        {"name": "add", "reference_name": "add-one"},
    ], [
        attach("big", ("pipeline_start", [m("x", "x")])),
        attach("small", ("pipeline_start", [m("x", "x")])),
        attach("as-y", ("big", [m("x", "x")])),
        attach("add", ("small", [m("x", "x")])),
        attach("pipeline_end", ("as-y", [m("y", "y")]), ("add", [m("y", "y")])),
    ])

    big = api.pipeline_requests_create(project, name, {"x": 12})
    small = api.pipeline_requests_create(project, name, {"x": 3})

    assert (big.status, big.result) == ("completed", {"y": 1200})
    assert big.deployment_requests == []
    assert (small.status, small.result) == ("completed", {"y": 4})
    assert [d.pipeline_object for d in small.deployment_requests] == ["add"]


def test_raise_error_fails_the_request_with_its_message_and_a_variable_feeds_constants(
    env: tuple[ubiops.CoreApi, str],
) -> None:
    api, project = env
    name = make_pipeline(api, project, [
        operator("ten", "pipeline-variable", output_fields=[{"name": "ten", "data_type": "int"}],
                 output_values=[{"name": "ten", "value": 10}]),
        operator("sum", "function", expression="x + ten", input_fields=[*X, {"name": "ten", "data_type": "int"}],
                 output_fields=Y),
        operator("negative", "if-condition", expression="x < 0", input_fields=X),
        operator("refuse", "raise-error", input_fields=X, error_message="x must not be negative"),
    ], [
        attach("ten", ("pipeline_start", None)),
        attach("sum", ("pipeline_start", [m("x", "x")]), ("ten", [m("ten", "ten")])),
        attach("negative", ("pipeline_start", [m("x", "x")])),
        attach("refuse", ("negative", [m("x", "x")])),
        attach("pipeline_end", ("sum", [m("y", "y")]), ("refuse", [])),
    ])

    assert api.pipeline_requests_create(project, name, {"x": 5}).result == {"y": 15}
    refused = api.pipeline_requests_create(project, name, {"x": -5})
    assert refused.status == "failed"
    assert refused.error_message == "x must not be negative"


def test_get_list_collect_input_output_and_delete_of_pipeline_requests(env: tuple[ubiops.CoreApi, str]) -> None:
    api, project = env
    name = make_pipeline(api, project, CHAIN_OBJECTS, CHAIN_ATTACHMENTS)
    done = api.pipeline_requests_create(project, name, {"x": 2})
    failed = api.pipeline_version_requests_create(project, name, "v1", {"x": -2})

    detail = api.pipeline_requests_get(project, name, done.id)
    assert detail.status == "completed" and detail.result == {"y": 5} and detail.request_data == {"x": 2}
    assert detail.time_created is not None and detail.time_completed is not None
    assert [d.pipeline_object for d in detail.deployment_requests] == ["first", "second"]
    meta = api.pipeline_version_requests_get(project, name, done.id, "v1", metadata_only=True)
    assert meta.result is None and meta.status == "completed"
    ubiops.utils.wait_for_pipeline_version_request(api.api_client, project, name, "v1", done.id, quiet=True)

    assert [r.id for r in api.pipeline_requests_list(project, name)] == [done.id]
    assert {r.id for r in api.pipeline_requests_list(project, name, status="completed,failed")} == {done.id, failed.id}
    # an id's tail: its head is the time it was made, shared by requests made close together
    assert [r.id for r in api.pipeline_requests_list(project, name, status="failed", search_id=failed.id[-12:])] == [
        failed.id]
    collected = api.pipeline_requests_batch_get(project, name, [failed.id, done.id])
    assert [c.status for c in collected] == ["failed", "completed"]
    assert collected[0].error_message == "Object 'first' failed: negative numbers are refused"

    assert api.pipeline_requests_output_get(project, name, done.id).json() == {"y": 5}
    assert api.pipeline_requests_input_get(project, name, done.id).json() == {"x": 2}

    with pytest.raises(ubiops.ApiException) as error:
        api.pipeline_requests_list(project, name, status="pending,completed")
    assert error.value.status == 400

    # deleting a pipeline request deletes its deployment requests too
    sub_id = detail.deployment_requests[0].id
    api.pipeline_requests_delete(project, name, done.id)
    api.pipeline_requests_batch_delete(project, name, [failed.id])
    assert api.pipeline_requests_list(project, name, status="completed,failed") == []
    with pytest.raises(ubiops.ApiException) as gone:
        api.deployment_version_requests_get(project, "double", sub_id, "v1")
    assert gone.value.status == 404


def test_a_batch_of_pipeline_requests_runs_in_the_background_and_is_all_or_nothing(
    env: tuple[ubiops.CoreApi, str],
) -> None:
    api, project = env
    name = make_pipeline(api, project, CHAIN_OBJECTS, CHAIN_ATTACHMENTS)

    with pytest.raises(ubiops.ApiException) as error:
        api.batch_pipeline_requests_create(project, name, [{"x": 1}, {"x": "two"}])
    assert error.value.status == 400 and "Request 1 of the batch" in error.value.body
    assert api.pipeline_requests_list(project, name, status="pending") == []

    created = api.batch_pipeline_requests_create(project, name, [{"x": i} for i in range(5)])
    assert all(c.status == "pending" and c.time_created for c in created)
    for c in created:  # it raises for a failed or cancelled request
        ubiops.utils.wait_for_pipeline_request(api.api_client, project, name, c.id, quiet=True)
    collected = api.pipeline_requests_batch_get(project, name, [c.id for c in created])
    assert [c.status for c in collected] == ["completed"] * 5
    assert [c.result for c in collected] == [{"y": 2 * i + 1} for i in range(5)]


def test_cancelling_a_running_pipeline_request_cancels_its_running_step(env: tuple[ubiops.CoreApi, str]) -> None:
    api, project = env
    name = make_pipeline(api, project, CHAIN_OBJECTS, CHAIN_ATTACHMENTS)
    [created] = api.batch_pipeline_requests_create(project, name, [{"x": 1030}])

    def running_step() -> Any:
        detail = api.pipeline_requests_get(project, name, created.id, metadata_only=True)
        return detail.deployment_requests and detail.deployment_requests[0].status == "processing" and detail
    detail = wait_until(running_step, timeout=30)
    api.pipeline_requests_update(project, name, created.id, ubiops.PipelineRequestUpdate(status="cancelled"))

    final = wait_until(lambda: (d := api.pipeline_requests_get(project, name, created.id)).status == "cancelled" and d,
                       timeout=30)
    assert final.error_message is None and final.result is None
    step = api.deployment_version_requests_get(project, "double", detail.deployment_requests[0].id, "v1")
    assert step.status == "cancelled"


def test_stream_pipeline_request_yields_the_partials_of_its_steps_then_the_result(
    env: tuple[ubiops.CoreApi, str],
) -> None:
    api, project = env
    name = make_pipeline(api, project, [
        {"name": "talk", "reference_name": "talker"}, {"name": "add", "reference_name": "add-one"},
    ], [
        attach("talk", ("pipeline_start", [m("x", "x")])),
        attach("add", ("talk", [m("x", "x")])),
        attach("pipeline_end", ("add", [m("y", "y")])),
    ])

    chunks = list(ubiops.utils.stream_pipeline_request(api.api_client, project, name, data={"x": 3},
                                                       full_response=True))

    assert chunks[0] == "working on 3"
    assert chunks[-1].status == "completed" and chunks[-1].result == {"y": 4}
    assert [d.pipeline_object for d in chunks[-1].deployment_requests] == ["talk", "add"]
    with pytest.raises(ubiops.exceptions.UbiOpsException, match="Input field 'x' must be of type int"):
        list(ubiops.utils.stream_pipeline_request(api.api_client, project, name, data={"x": "three"}))


def test_a_plain_pipeline_passes_text_through_its_version_path(env: tuple[ubiops.CoreApi, str]) -> None:
    api, project = env
    name = f"plain-{next(_count)}"
    api.pipelines_create(project, ubiops.PipelineCreate(name=name, input_type="plain", output_type="plain"))
    api.pipeline_versions_create(project, name, ubiops.PipelineVersionCreate(
        version="v1", objects=[], attachments=[attach("pipeline_end", ("pipeline_start", None))]))

    response = api.pipeline_version_requests_create(project, name, "v1", "hello pipeline")

    assert (response.status, response.result) == ("completed", "hello pipeline")
    assert api.pipeline_requests_output_get(project, name, response.id).text == "hello pipeline"


@pytest.mark.parametrize(("call", "status", "message"), [
    (lambda api, p, n: api.pipeline_requests_create(p, n, {"x": "five"}), 400, "Input field 'x' must be of type int"),
    (lambda api, p, n: api.pipeline_requests_create(p, n, {"x": 1}, timeout=7201), 400, "timeout must be an integer"),
    (lambda api, p, n: api.batch_pipeline_requests_create(p, n, [{"x": 1}], timeout=172801), 400,
     "timeout must be an integer"),
    (lambda api, p, n: api.pipeline_requests_create(p, "no-such", {"x": 1}), 404, "Pipeline 'no-such' was not found"),
    (lambda api, p, n: api.pipeline_version_requests_create(p, n, "v9", {"x": 1}), 404,
     "Pipeline version 'v9' was not found"),
    (lambda api, p, n: api.pipeline_requests_get(p, n, "00000000-0000-0000-0000-000000000000"), 404,
     "was not found"),
    (lambda api, p, n: api.pipeline_requests_batch_get(p, n, ["nope"]), 404, "Pipeline request 'nope' was not found"),
    (lambda api, p, n: api.pipelines_create(p, ubiops.PipelineCreate(name=n, input_type="structured")), 409,
     "already exists"),
    (lambda api, p, n: api.pipeline_version_object_requests_get(p, n, "nope", "v1"), 404,
     "Operator request 'nope' was not found"),
])
def test_bad_pipeline_calls_are_clear_4xx_errors(env: tuple[ubiops.CoreApi, str], call: Any, status: int,
                                                  message: str) -> None:
    api, project = env
    name = make_pipeline(api, project, CHAIN_OBJECTS, CHAIN_ATTACHMENTS)
    with pytest.raises(ubiops.ApiException) as error:
        call(api, project, name)
    assert error.value.status == status
    assert message in error.value.body
    assert api.pipeline_requests_list(project, name, status="completed,failed") == []


def test_deleting_a_pipeline_deletes_its_requests_and_a_used_sub_pipeline_is_kept_and_not_renamed(
    env: tuple[ubiops.CoreApi, str],
) -> None:
    api, project = env
    inner = make_pipeline(api, project, CHAIN_OBJECTS, CHAIN_ATTACHMENTS)
    outer = make_pipeline(api, project, [{"name": "in", "reference_type": "pipeline", "reference_name": inner}], [
        attach("in", ("pipeline_start", [m("x", "x")])), attach("pipeline_end", ("in", [m("y", "y")]))])
    response = api.pipeline_requests_create(project, outer, {"x": 1})
    step_id = api.pipeline_requests_get(project, inner, response.pipeline_requests[0].id).deployment_requests[0].id

    with pytest.raises(ubiops.ApiException) as error:
        api.pipelines_delete(project, inner)
    assert error.value.status == 409
    with pytest.raises(ubiops.ApiException) as version_error:  # its default version, used as such
        api.pipeline_versions_delete(project, inner, "v1")
    assert version_error.value.status == 409 and "sub-pipeline" in version_error.value.body
    with pytest.raises(ubiops.ApiException) as rename_error:  # outer refers to it by its name
        api.pipelines_update(project, inner, ubiops.PipelineUpdate(name=f"{inner}-new"))
    assert rename_error.value.status == 409 and "cannot be renamed" in rename_error.value.body
    assert api.pipeline_requests_create(project, outer, {"x": 1}).status == "completed"

    api.pipelines_delete(project, outer)
    with pytest.raises(ubiops.ApiException) as gone:
        api.deployment_version_requests_get(project, "double", step_id, "v1")
    assert gone.value.status == 404


def test_independent_branches_run_concurrently(env: tuple[ubiops.CoreApi, str]) -> None:
    api, project = env
    name = make_pipeline(api, project, [
        {"name": "left", "reference_name": "double"}, {"name": "right", "reference_name": "double"},
    ], [
        attach("left", ("pipeline_start", [m("x", "x")])),
        attach("right", ("pipeline_start", [m("x", "x")])),
        attach("pipeline_end", ("left", [m("x", "a")]), ("right", [m("x", "b")])),
    ], outputs=[{"name": "a", "data_type": "int"}, {"name": "b", "data_type": "int"}])

    response = api.pipeline_requests_create(project, name, {"x": 1001})  # each step sleeps 1 s

    assert (response.status, response.result) == ("completed", {"a": 2002, "b": 2002})
    left, right = (api.deployment_version_requests_get(project, "double", d.id, "v1")
                   for d in response.deployment_requests)
    assert left.time_started < right.time_completed and right.time_started < left.time_completed  # they overlap


def test_cancel_all_processing_pipeline_requests_with_an_empty_list(env: tuple[ubiops.CoreApi, str]) -> None:
    api, project = env
    name = make_pipeline(api, project, CHAIN_OBJECTS, CHAIN_ATTACHMENTS)
    created = api.batch_pipeline_requests_create(project, name, [{"x": 1030}, {"x": 1030}])
    wait_until(lambda: len(api.pipeline_requests_list(project, name, status="processing")) == 2, timeout=30)

    api.pipeline_requests_batch_cancel(project, name, [], status="processing")

    def statuses() -> list[str]:
        return [c.status for c in api.pipeline_requests_batch_get(project, name, [c.id for c in created])]
    wait_until(lambda: statuses() == ["cancelled", "cancelled"], timeout=30)
    assert api.pipeline_requests_list(project, name, status="processing") == []


def test_a_version_update_with_new_objects_is_validated_as_a_whole(env: tuple[ubiops.CoreApi, str]) -> None:
    api, project = env
    name = make_pipeline(api, project, CHAIN_OBJECTS, CHAIN_ATTACHMENTS)

    with pytest.raises(ubiops.ApiException) as error:
        api.pipeline_versions_update(project, name, "v1", ubiops.PipelineVersionUpdate(
            objects=[{"name": "first", "reference_name": "double"}]))  # "second" is still attached
    assert error.value.status == 400 and "Attachment destination 'second' is not an object" in error.value.body
    assert [o.name for o in api.pipeline_versions_get(project, name, "v1").objects] == ["first", "second"]

    api.pipeline_versions_update(project, name, "v1", ubiops.PipelineVersionUpdate(
        objects=[{"name": "only", "reference_name": "add-one"}],
        attachments=[attach("only", ("pipeline_start", [m("x", "x")])),
                     attach("pipeline_end", ("only", [m("y", "y")]))],
        request_retention_mode="metadata"))
    version = api.pipeline_versions_get(project, name, "v1")
    assert [o.name for o in version.objects] == ["only"] and version.request_retention_mode == "metadata"
    response = api.pipeline_requests_create(project, name, {"x": 1})
    assert response.result == {"y": 2}  # the answer has it; the store keeps only the metadata
    assert api.pipeline_requests_get(project, name, response.id).result is None


def test_cancelling_a_pipeline_request_cancels_its_running_sub_pipeline_and_its_step(
    env: tuple[ubiops.CoreApi, str],
) -> None:
    api, project = env
    inner = make_pipeline(api, project, CHAIN_OBJECTS, CHAIN_ATTACHMENTS)
    outer = make_pipeline(api, project, [{"name": "in", "reference_type": "pipeline", "reference_name": inner}], [
        attach("in", ("pipeline_start", [m("x", "x")])), attach("pipeline_end", ("in", [m("y", "y")]))])
    [created] = api.batch_pipeline_requests_create(project, outer, [{"x": 1030}])

    def inner_step_running() -> Any:
        subs = api.pipeline_requests_get(project, outer, created.id, metadata_only=True).pipeline_requests
        if not subs:
            return None
        steps = api.pipeline_requests_get(project, inner, subs[0].id, metadata_only=True).deployment_requests
        return steps and steps[0].status == "processing" and (subs[0].id, steps[0].id)
    sub_id, step_id = wait_until(inner_step_running, timeout=30)

    api.pipeline_requests_update(project, outer, created.id, ubiops.PipelineRequestUpdate(status="cancelled"))

    wait_until(lambda: api.pipeline_requests_get(project, outer, created.id).status == "cancelled", timeout=30)
    assert api.pipeline_requests_get(project, inner, sub_id).status == "cancelled"
    assert api.deployment_version_requests_get(project, "double", step_id, "v1").status == "cancelled"


def test_deleting_a_running_pipeline_request_deletes_its_running_step_too(env: tuple[ubiops.CoreApi, str]) -> None:
    api, project = env
    name = make_pipeline(api, project, CHAIN_OBJECTS, CHAIN_ATTACHMENTS)
    [created] = api.batch_pipeline_requests_create(project, name, [{"x": 1030}])

    def running_step() -> Any:
        steps = api.pipeline_requests_get(project, name, created.id, metadata_only=True).deployment_requests
        return steps and steps[0].status == "processing" and steps[0].id
    step_id = wait_until(running_step, timeout=30)

    api.pipeline_requests_delete(project, name, created.id)

    for get in (lambda: api.pipeline_requests_get(project, name, created.id),
                lambda: api.deployment_version_requests_get(project, "double", step_id, "v1")):
        with pytest.raises(ubiops.ApiException) as gone:
            get()
        assert gone.value.status == 404
