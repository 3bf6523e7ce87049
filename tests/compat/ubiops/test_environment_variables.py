"""The official `ubiops` SDK, unchanged, against a real modelbay server: environment variables of a
project, a deployment and a version, and how they reach a version's instances."""

from __future__ import annotations

import json
from typing import Any

import pytest
import ubiops

from tests.fixtures.cluster import NODES
from tests.fixtures.server import wait_until

#: Reports the variables it sees, in its process environment and in its init context.
REPORTS_VARIABLES = '''
import json
import os

NAMES = ["LEVEL", "SHARED", "TOKEN"]


class Deployment:
    def __init__(self, base_directory, context):
        self.context = context["environment_variables"]

    def request(self, data):
        return json.dumps({"env": {n: os.environ.get(n) for n in NAMES},
                           "context": {n: self.context.get(n) for n in NAMES}})
'''

Env = ubiops.EnvironmentVariableCreate


def seen(api: ubiops.CoreApi, project: str, deployment: str) -> dict[str, Any]:
    """What a new request's instance sees, checked to be the same in its environment and its context."""
    answer = json.loads(api.deployment_requests_create(project, deployment, "go").result)
    assert answer["env"] == answer["context"]
    return dict(answer["env"])


def seen_once_changed(api: ubiops.CoreApi, project: str, deployment: str, name: str, value: str | None) -> None:
    """A new request sees `value` for `name`: at once on one server; on a cluster, where another
    node learns of a change through the bus a moment after it was committed, within seconds."""
    if not NODES:
        assert seen(api, project, deployment)[name] == value
        return
    wait_until(lambda: seen(api, project, deployment)[name] == value, timeout=10, interval=0.1)


def listed(variables: list[Any]) -> set[tuple[Any, ...]]:
    return {(v.name, v.value, v.secret, v.inheritance_type, v.inheritance_name) for v in variables}


def test_variables_of_the_three_levels_reach_the_instances_the_most_specific_winning(
    api: ubiops.CoreApi, project: dict[str, str], deploy: Any
) -> None:
    p = project["name"]
    # Given variables on the project (one secret), the deployment and the version
    api.project_environment_variables_create(p, Env(name="LEVEL", value="project", secret=False))
    api.project_environment_variables_create(p, Env(name="SHARED", value="from-project", secret=False))
    token = api.project_environment_variables_create(p, Env(name="TOKEN", value="s3cret", secret=True))
    name = deploy("env-reporter", REPORTS_VARIABLES, plain=True)
    api.deployment_environment_variables_create(p, name, Env(name="LEVEL", value="deployment", secret=False))
    own = api.deployment_version_environment_variables_create(p, name, "v1",
                                                              Env(name="LEVEL", value="version", secret=False))

    # Then an instance sees the most specific of each, secret ones too
    assert seen(api, p, name) == {"LEVEL": "version", "SHARED": "from-project", "TOKEN": "s3cret"}
    # And a reader never sees a secret value; the version lists what it inherits and from where
    assert token.value is None and token.secret is True
    assert api.project_environment_variables_get(p, token.id).value is None
    assert listed(api.deployment_version_environment_variables_list(p, name, "v1")) == {
        ("LEVEL", "version", False, None, None),
        ("SHARED", "from-project", False, "project", p),
        ("TOKEN", None, True, "project", p),
    }
    assert listed(api.deployment_environment_variables_list(p, name)) == {
        ("LEVEL", "deployment", False, None, None),
        ("SHARED", "from-project", False, "project", p),
        ("TOKEN", None, True, "project", p),
    }
    assert {(v.name, v.value) for v in api.project_environment_variables_list(p)} == {
        ("LEVEL", "project"), ("SHARED", "from-project"), ("TOKEN", None)}

    # When the version's variable changes, new requests see the new value (its instances restart)
    api.deployment_version_environment_variables_update(p, name, own.id, "v1",
                                                        Env(name="LEVEL", value="version-2", secret=False))
    seen_once_changed(api, p, name, "LEVEL", "version-2")
    # And once it is deleted, the deployment's shows through
    api.deployment_version_environment_variables_delete(p, name, own.id, "v1")
    seen_once_changed(api, p, name, "LEVEL", "deployment")
    # And a project change reaches the versions of every deployment
    api.project_environment_variables_update(p, token.id, Env(name="TOKEN", value="rotated", secret=True))
    seen_once_changed(api, p, name, "TOKEN", "rotated")


def test_a_variable_is_read_updated_and_deleted_by_id_or_by_name(api: ubiops.CoreApi, project: dict[str, str]) -> None:
    p = project["name"]
    created = api.project_environment_variables_create(p, Env(name="MODE", value="a", secret=False))
    assert (created.name, created.value, created.secret) == ("MODE", "a", False)
    assert api.project_environment_variables_get(p, "MODE").id == created.id  # `ubiops env create --overwrite`
    renamed = api.project_environment_variables_update(p, created.id, Env(name="MODE_2", value="b", secret=True))
    assert (renamed.id, renamed.name, renamed.value, renamed.secret) == (created.id, "MODE_2", None, True)
    api.project_environment_variables_delete(p, "MODE_2")
    assert api.project_environment_variables_list(p) == []
    with pytest.raises(ubiops.ApiException) as missing:
        api.project_environment_variables_get(p, created.id)
    assert missing.value.status == 404


@pytest.mark.parametrize("name", ["1ST", "WITH-DASH", "WITH SPACE", "DOT.TED", "É"])
def test_a_bad_name_is_a_400_saying_what_a_name_may_hold(api: ubiops.CoreApi, project: dict[str, str],
                                                         name: str) -> None:
    with pytest.raises(ubiops.ApiException) as refused:
        api.project_environment_variables_create(project["name"], Env(name=name, value="x", secret=False))
    assert refused.value.status == 400
    assert json.loads(refused.value.body) == {
        "error": f"Environment variable name '{name}' is invalid: it must start with a letter or an underscore "
                 "and contain only letters, digits and underscores"}


def test_a_second_variable_of_a_name_in_one_scope_is_a_409_but_a_more_specific_one_is_not(
    api: ubiops.CoreApi, project: dict[str, str]
) -> None:
    p = project["name"]
    api.deployments_create(p, ubiops.DeploymentCreate(name="dup", input_type="plain", output_type="plain"))
    api.project_environment_variables_create(p, Env(name="X", value="1", secret=False))
    api.deployment_environment_variables_create(p, "dup", Env(name="X", value="2", secret=False))
    with pytest.raises(ubiops.ApiException) as refused:
        api.deployment_environment_variables_create(p, "dup", Env(name="X", value="3", secret=False))
    assert refused.value.status == 409
    assert "error" in json.loads(refused.value.body)
    other = api.deployment_environment_variables_create(p, "dup", Env(name="Y", value="4", secret=False))
    with pytest.raises(ubiops.ApiException) as renamed:
        api.deployment_environment_variables_update(p, "dup", other.id, Env(name="X", value="4", secret=False))
    assert renamed.value.status == 409


def test_copy_brings_a_deployments_own_variables_secret_ones_too(api: ubiops.CoreApi, project: dict[str, str]) -> None:
    p = project["name"]
    for name in ("source", "target"):
        api.deployments_create(p, ubiops.DeploymentCreate(name=name, input_type="plain", output_type="plain"))
        api.deployment_versions_create(p, name, ubiops.DeploymentVersionCreate(version="v1"))
    api.deployment_environment_variables_create(p, "source", Env(name="A", value="a", secret=False))
    api.deployment_environment_variables_create(p, "source", Env(name="KEY", value="k", secret=True))
    api.deployment_version_environment_variables_create(p, "source", "v1", Env(name="V", value="v", secret=False))
    api.deployment_environment_variables_create(p, "target", Env(name="A", value="old", secret=False))

    copied = api.deployment_environment_variables_copy(p, "target", ubiops.EnvironmentVariableCopy(
        source_deployment="source"))

    assert listed(copied) == {("A", "a", False, None, None), ("KEY", None, True, None, None)}
    to_version = api.deployment_version_environment_variables_copy(p, "target", "v1", ubiops.EnvironmentVariableCopy(
        source_deployment="source", source_version="v1"))
    assert ("V", "v", False, None, None) in listed(to_version)
    assert ("A", "a", False, "deployment", "target") in listed(to_version)


def test_the_variables_of_a_deleted_deployment_go_with_it(api: ubiops.CoreApi, project: dict[str, str]) -> None:
    p = project["name"]
    api.deployments_create(p, ubiops.DeploymentCreate(name="brief", input_type="plain", output_type="plain"))
    api.deployment_environment_variables_create(p, "brief", Env(name="A", value="1", secret=False))
    api.deployments_delete(p, "brief")
    api.deployments_create(p, ubiops.DeploymentCreate(name="brief", input_type="plain", output_type="plain"))
    assert api.deployment_environment_variables_list(p, "brief") == []
    with pytest.raises(ubiops.ApiException) as missing:
        api.deployment_environment_variables_list(p, "gone")
    assert missing.value.status == 404


def test_a_pipeline_object_lists_the_variables_of_the_deployment_version_it_runs(
    api: ubiops.CoreApi, project: dict[str, str]
) -> None:
    p = project["name"]
    api.deployments_create(p, ubiops.DeploymentCreate(name="step", input_type="plain", output_type="plain"))
    api.deployment_versions_create(p, "step", ubiops.DeploymentVersionCreate(version="v1"))
    api.deployment_version_environment_variables_create(p, "step", "v1", Env(name="A", value="1", secret=False))
    api.project_environment_variables_create(p, Env(name="B", value="2", secret=True))
    api.pipelines_create(p, ubiops.PipelineCreate(name="pipe", input_type="plain", output_type="plain"))
    api.pipeline_versions_create(p, "pipe", ubiops.PipelineVersionCreate(
        version="v1", objects=[{"name": "obj", "reference_name": "step"}]))

    assert listed(api.pipeline_version_object_environment_variables_list(p, "obj", "pipe", "v1")) == {
        ("A", "1", False, None, None), ("B", None, True, "project", p)}
    with pytest.raises(ubiops.ApiException) as missing:
        api.pipeline_version_object_environment_variables_list(p, "nothing", "pipe", "v1")
    assert missing.value.status == 404
