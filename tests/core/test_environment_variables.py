from __future__ import annotations

import pytest

from modelbay.core.bus import Bus
from modelbay.core.deployments import Deployments
from modelbay.core.environment_variables import EnvironmentVariables, Scope
from modelbay.core.errors import Conflict, InvalidInput
from modelbay.core.projects import Projects
from modelbay.store.db import Database
from modelbay.store.tables import ProjectRow


@pytest.fixture
def project(db: Database) -> ProjectRow:
    projects = Projects(db, "admin", Bus())
    token = projects.create("variables").token
    return projects.get(projects.authenticate(token), "variables")


def test_a_target_gets_project_then_deployment_then_its_own_parameters_then_version_variables(
    db: Database, project: ProjectRow
) -> None:
    deployments = Deployments(db, Bus())
    variables = EnvironmentVariables(db, deployments.version_changed)
    deployments.create(project, {"name": "d", "input_type": "plain", "output_type": "plain"})
    # the version's own parameters (ABEJA's user_parameters) rank between the deployment's and the version's
    deployments.create_version(project, "d", {"name": "v1", "environment_variables": {"OWN": "own", "B": "own"}})
    for scope, names in ((Scope(project), "ABCD"), (Scope(project, "d"), "BC"), (Scope(project, "d", "v1"), "C")):
        level = scope.version or scope.deployment or "p"
        for name in names:
            variables.create(scope, {"name": name, "value": f"{name.lower()}-{level}"})

    assert deployments.target(project, "d", "v1").environment_variables == {
        "A": "a-p", "B": "own", "C": "c-v1", "D": "d-p", "OWN": "own"}


def test_a_change_restarts_every_version_it_reaches(db: Database, project: ProjectRow) -> None:
    deployments = Deployments(db, Bus())
    changed: list[str] = []
    variables = EnvironmentVariables(db, changed.append)
    versions = {}
    for deployment in ("d", "e"):
        deployments.create(project, {"name": deployment, "input_type": "plain", "output_type": "plain"})
        for version in ("v1", "v2"):
            versions[deployment, version] = deployments.create_version(project, deployment, {"name": version}).id

    variables.create(Scope(project, "d", "v2"), {"name": "X", "value": "1"})
    assert changed == [versions["d", "v2"]]
    changed.clear()
    variables.create(Scope(project, "d"), {"name": "X", "value": "1"})
    assert sorted(changed) == sorted([versions["d", "v1"], versions["d", "v2"]])
    changed.clear()
    variables.delete(Scope(project), variables.create(Scope(project), {"name": "X", "value": "1"}).id)
    assert sorted(changed) == sorted(list(versions.values()) * 2)


def test_secret_values_are_kept_for_instances_and_never_read(db: Database, project: ProjectRow) -> None:
    deployments = Deployments(db, Bus())
    variables = EnvironmentVariables(db, deployments.version_changed)
    deployments.create(project, {"name": "d", "input_type": "plain", "output_type": "plain"})
    deployments.create_version(project, "d", {"name": "v1"})
    created = variables.create(Scope(project), {"name": "KEY", "value": "s3cret", "secret": True})

    assert created.value is None
    assert variables.get(Scope(project), "KEY").value is None
    assert [v.value for v in variables.list_variables(Scope(project, "d", "v1"))] == [None]
    assert deployments.target(project, "d", "v1").environment_variables == {"KEY": "s3cret"}


@pytest.mark.parametrize(("fields", "error"), [
    ({"name": "9LIVES", "value": "x"}, InvalidInput),
    ({"name": "A" * 65, "value": "x"}, InvalidInput),
    ({"name": "OK", "value": 5}, InvalidInput),
    ({"name": "OK", "value": "x", "secret": "yes"}, InvalidInput),
    ({"name": "TAKEN", "value": "x"}, Conflict),
])
def test_a_bad_or_taken_name_or_value_is_refused_and_nothing_is_stored(
    db: Database, project: ProjectRow, fields: dict[str, object], error: type[Exception]
) -> None:
    variables = EnvironmentVariables(db, lambda _vid: None)
    variables.create(Scope(project), {"name": "TAKEN", "value": "first"})
    with pytest.raises(error):
        variables.create(Scope(project), fields)
    assert [(v.name, v.value) for v in variables.list_variables(Scope(project))] == [("TAKEN", "first")]
