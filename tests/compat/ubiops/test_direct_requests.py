"""Direct requests through the official `ubiops` SDK against a real server and real worker processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import ubiops

from tests.fixtures.packages import BATCH, EXITS, HANGS, NOOP, PLAIN, PRINTS_50MB, RAISES

CONTEXT_ECHO = '''
import os


class Deployment:
    def __init__(self, base_directory, context):
        self.loaded_from = base_directory
        self.init_context = context

    def request(self, data, context):
        print("working on", data["x"])
        return {"x": data["x"] * 2, "deployment": self.init_context["deployment"],
                "version": self.init_context["version"], "request_id": context["id"],
                "has_package": os.path.exists(os.path.join(self.loaded_from, "deployment.py"))}
'''

PUBLIC_ERROR = '''
class Oops(Exception):
    public_error_message = "the model refuses negative numbers"


class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        if data["x"] < 0:
            raise Oops()
        return {"x": data["x"]}
'''

WRONG_OUTPUT = '''
class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        return {"x": "not an int"}
'''


def test_a_structured_direct_request_completes_with_the_result(api: ubiops.CoreApi, project: dict[str, str], deploy) -> None:
    deploy("echo", NOOP)
    response = api.deployment_requests_create(project["name"], "echo", {"x": 21})
    assert response.status == "completed"
    assert response.result == {"x": 21}
    assert response.timeout == 300
    assert response.error_message is None


def test_the_version_path_serves_that_version(api: ubiops.CoreApi, project: dict[str, str], deploy) -> None:
    deploy("echo", NOOP)
    response = api.deployment_version_requests_create(project["name"], "echo", "v1", {"x": 1}, timeout=30)
    assert (response.status, response.result, response.version, response.timeout) == ("completed", {"x": 1}, "v1", 30)


def test_a_plain_request_sends_and_returns_raw_text(api: ubiops.CoreApi, project: dict[str, str], deploy) -> None:
    deploy("plain", PLAIN, plain=True)
    response = api.deployment_requests_create(project["name"], "plain", "hello, world")
    assert (response.status, response.result) == ("completed", "hello, world")
    assert api.deployment_requests_create(project["name"], "plain", '{"looks": "like json"}').result == '{"looks": "like json"}'


def test_the_code_gets_its_init_and_request_context(api: ubiops.CoreApi, project: dict[str, str], deploy) -> None:
    out = [{"name": n, "data_type": t} for n, t in
           [("x", "int"), ("deployment", "string"), ("version", "string"), ("request_id", "string"), ("has_package", "bool")]]
    deploy("ctx", CONTEXT_ECHO, output_fields=out)
    response = api.deployment_requests_create(project["name"], "ctx", {"x": 4})
    assert response.result["x"] == 8
    assert (response.result["deployment"], response.result["version"]) == ("ctx", "v1")
    assert response.result["request_id"] == response.id
    assert response.result["has_package"] is True


@pytest.mark.parametrize(
    ("data", "field"),
    [({}, "Missing input field: x"), ({"x": 1, "y": 2}, "Unexpected input field: y"), ({"x": "one"}, "'x' must be of type int")],
)
def test_input_that_does_not_match_the_fields_is_a_400_naming_the_field(
    api: ubiops.CoreApi, project: dict[str, str], deploy, data: dict[str, object], field: str
) -> None:
    deploy("echo", NOOP)
    with pytest.raises(ubiops.ApiException) as bad:
        api.deployment_requests_create(project["name"], "echo", data)
    assert bad.value.status == 400 and field in bad.value.body


def test_output_that_does_not_match_the_fields_fails_the_request(api: ubiops.CoreApi, project: dict[str, str], deploy) -> None:
    deploy("wrong", WRONG_OUTPUT)
    response = api.deployment_requests_create(project["name"], "wrong", {"x": 1})
    assert response.status == "failed"
    assert "invalid output" in response.error_message and "'x'" in response.error_message


def test_a_timeout_above_the_maximum_is_a_400(api: ubiops.CoreApi, project: dict[str, str], deploy) -> None:
    deploy("echo", NOOP)
    with pytest.raises(ubiops.ApiException) as bad:
        api.deployment_requests_create(project["name"], "echo", {"x": 1}, timeout=3601)
    assert bad.value.status == 400 and "3600" in bad.value.body


def test_a_request_to_a_deleted_deployment_is_a_404(api: ubiops.CoreApi, project: dict[str, str], deploy) -> None:
    deploy("echo", NOOP)
    api.deployments_delete(project["name"], "echo")
    with pytest.raises(ubiops.ApiException) as gone:
        api.deployment_requests_create(project["name"], "echo", {"x": 1})
    assert gone.value.status == 404


def test_a_version_without_code_answers_400(api: ubiops.CoreApi, project: dict[str, str]) -> None:
    p = project["name"]
    api.deployments_create(p, ubiops.DeploymentCreate(name="empty", input_type="plain", output_type="plain"))
    api.deployment_versions_create(p, "empty", ubiops.DeploymentVersionCreate(version="v1"))
    with pytest.raises(ubiops.ApiException) as bad:
        api.deployment_requests_create(p, "empty", "x")
    assert bad.value.status == 400 and "no successfully built code" in bad.value.body


def test_a_public_error_message_becomes_the_request_error(api: ubiops.CoreApi, project: dict[str, str], deploy) -> None:
    deploy("picky", PUBLIC_ERROR)
    response = api.deployment_requests_create(project["name"], "picky", {"x": -1})
    assert (response.status, response.error_message) == ("failed", "the model refuses negative numbers")
    assert api.deployment_requests_create(project["name"], "picky", {"x": 1}).status == "completed"


@pytest.mark.parametrize(
    ("source", "timeout", "message"),
    [
        (RAISES, 300, "An exception occurred in the request"),  # (an instance's cold start counts)
        (EXITS, 300, "stopped unexpectedly"),
        (HANGS, 2, "timed out after 2 seconds"),
        (PRINTS_50MB, 60, "printed more than"),
    ],
    ids=["raises", "exits", "hangs", "prints-50mb"],
)
def test_hostile_code_fails_only_its_own_request_and_the_next_one_succeeds(
    api: ubiops.CoreApi, project: dict[str, str], deploy, tmp_path: Path, source: str, timeout: int, message: str
) -> None:
    # Given a version whose code misbehaves on x == 0 and behaves otherwise
    guarded = source.replace("def request(self, data):", "def request(self, data):\n        if data['x'] != 0:\n            return dict(data)")
    deploy("bad", guarded)
    response = api.deployment_requests_create(project["name"], "bad", {"x": 0}, timeout=timeout)
    assert response.status == "failed"
    assert message in response.error_message
    assert api.deployment_requests_create(project["name"], "bad", {"x": 5}).result == {"x": 5}
    assert api.service_status().status == "ok"


def test_a_list_of_inputs_goes_to_the_requests_method_in_one_call(api: ubiops.CoreApi, project: dict[str, str], deploy) -> None:
    source = BATCH.replace("return [dict(item) for item in data]", "return [{'x': item['x'] * 10} for item in data]")
    deploy("many", source)
    response = api.deployment_requests_create(project["name"], "many", [{"x": 1}, {"x": 2}])
    assert (response.status, response.result) == ("completed", [{"x": 10}, {"x": 20}])
