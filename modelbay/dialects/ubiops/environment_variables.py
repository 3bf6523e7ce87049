"""UbiOps environment variables of a project, a deployment and a version, and their copy."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from modelbay.core.environment_variables import Scope, Variable
from modelbay.core.errors import InvalidInput, NotFound
from modelbay.dialects.ubiops.deps import EngineDep, JsonObject, ProjectDep
from modelbay.dialects.ubiops.errors import UbiopsRoute
from modelbay.dialects.ubiops.schemas import respond
from modelbay.store.tables import ProjectRow

router = APIRouter(route_class=UbiopsRoute, tags=["UbiOps · environment variables"])

PROJECT = "/projects/{project_name}"
DEPLOYMENT = PROJECT + "/deployments/{deployment_name}"
VERSION = DEPLOYMENT + "/versions/{version}"

def shape(variable: Variable, inherited: bool = False) -> dict[str, Any]:
    """`EnvironmentVariableList`, or `InheritedEnvironmentVariableList` in the lists of a deployment
    or version (`inherited`)."""
    body: dict[str, Any] = {"id": variable.id, "name": variable.name, "value": variable.value,
                            "secret": variable.secret}
    if inherited:
        level, name = variable.inherited_from or (None, None)
        body["inheritance_type"] = level  # "project" or "deployment", None for its own
        body["inheritance_name"] = name
    return body


def _copied_from(project: ProjectRow, body: dict[str, Any]) -> Scope:
    source_deployment, source_version = body.get("source_deployment"), body.get("source_version")
    if not isinstance(source_deployment, str) or not source_deployment:
        raise InvalidInput("source_deployment is required")
    if source_version is not None and not isinstance(source_version, str):
        raise InvalidInput("source_version must be the name of a version")
    return Scope(project, source_deployment, source_version or None)


def _list(engine: EngineDep, scope: Scope) -> Response:
    inherited = scope.deployment is not None
    return respond([shape(v, inherited) for v in engine.environment_variables.list_variables(scope)])


def _create(engine: EngineDep, scope: Scope, body: dict[str, Any]) -> Response:
    return respond(shape(engine.environment_variables.create(scope, body)), 201)


# --- project ---------------------------------------------------------------------------------


@router.get(PROJECT + "/environment-variables")
def project_environment_variables_list(engine: EngineDep, project: ProjectDep) -> Response:
    return _list(engine, Scope(project))


@router.post(PROJECT + "/environment-variables", status_code=201)
def project_environment_variables_create(engine: EngineDep, project: ProjectDep, body: JsonObject) -> Response:
    return _create(engine, Scope(project), body)


@router.get(PROJECT + "/environment-variables/{key}")
def project_environment_variables_get(engine: EngineDep, project: ProjectDep, key: str) -> Response:
    return respond(shape(engine.environment_variables.get(Scope(project), key)))


@router.patch(PROJECT + "/environment-variables/{key}")
def project_environment_variables_update(engine: EngineDep, project: ProjectDep, key: str,
                                         body: JsonObject) -> Response:
    return respond(shape(engine.environment_variables.update(Scope(project), key, body)))


@router.delete(PROJECT + "/environment-variables/{key}", status_code=204)
def project_environment_variables_delete(engine: EngineDep, project: ProjectDep, key: str) -> Response:
    engine.environment_variables.delete(Scope(project), key)
    return Response(status_code=204)


# --- deployment ------------------------------------------------------------------------------


@router.get(DEPLOYMENT + "/environment-variables")
def deployment_environment_variables_list(engine: EngineDep, project: ProjectDep, deployment_name: str) -> Response:
    return _list(engine, Scope(project, deployment_name))


@router.post(DEPLOYMENT + "/environment-variables", status_code=201)
def deployment_environment_variables_create(engine: EngineDep, project: ProjectDep, deployment_name: str,
                                            body: JsonObject) -> Response:
    return _create(engine, Scope(project, deployment_name), body)


@router.get(DEPLOYMENT + "/environment-variables/{key}")
def deployment_environment_variables_get(engine: EngineDep, project: ProjectDep, deployment_name: str,
                                         key: str) -> Response:
    return respond(shape(engine.environment_variables.get(Scope(project, deployment_name), key)))


@router.patch(DEPLOYMENT + "/environment-variables/{key}")
def deployment_environment_variables_update(engine: EngineDep, project: ProjectDep, deployment_name: str,
                                            key: str, body: JsonObject) -> Response:
    return respond(shape(engine.environment_variables.update(Scope(project, deployment_name), key, body)))


@router.delete(DEPLOYMENT + "/environment-variables/{key}", status_code=204)
def deployment_environment_variables_delete(engine: EngineDep, project: ProjectDep, deployment_name: str,
                                            key: str) -> Response:
    engine.environment_variables.delete(Scope(project, deployment_name), key)
    return Response(status_code=204)


@router.post(DEPLOYMENT + "/copy-environment-variables", status_code=201)
def deployment_environment_variables_copy(engine: EngineDep, project: ProjectDep, deployment_name: str,
                                          body: JsonObject) -> Response:
    copied = engine.environment_variables.copy(Scope(project, deployment_name), _copied_from(project, body))
    return respond([shape(v, inherited=True) for v in copied], 201)


# --- version ---------------------------------------------------------------------------------


@router.get(VERSION + "/environment-variables")
def deployment_version_environment_variables_list(engine: EngineDep, project: ProjectDep, deployment_name: str,
                                                  version: str) -> Response:
    return _list(engine, Scope(project, deployment_name, version))


@router.post(VERSION + "/environment-variables", status_code=201)
def deployment_version_environment_variables_create(engine: EngineDep, project: ProjectDep, deployment_name: str,
                                                    version: str, body: JsonObject) -> Response:
    return _create(engine, Scope(project, deployment_name, version), body)


@router.get(VERSION + "/environment-variables/{key}")
def deployment_version_environment_variables_get(engine: EngineDep, project: ProjectDep, deployment_name: str,
                                                 version: str, key: str) -> Response:
    return respond(shape(engine.environment_variables.get(Scope(project, deployment_name, version), key)))


@router.patch(VERSION + "/environment-variables/{key}")
def deployment_version_environment_variables_update(engine: EngineDep, project: ProjectDep, deployment_name: str,
                                                    version: str, key: str, body: JsonObject) -> Response:
    scope = Scope(project, deployment_name, version)
    return respond(shape(engine.environment_variables.update(scope, key, body)))


@router.delete(VERSION + "/environment-variables/{key}", status_code=204)
def deployment_version_environment_variables_delete(engine: EngineDep, project: ProjectDep, deployment_name: str,
                                                    version: str, key: str) -> Response:
    engine.environment_variables.delete(Scope(project, deployment_name, version), key)
    return Response(status_code=204)


@router.post(VERSION + "/copy-environment-variables", status_code=201)
def deployment_version_environment_variables_copy(engine: EngineDep, project: ProjectDep, deployment_name: str,
                                                  version: str, body: JsonObject) -> Response:
    scope = Scope(project, deployment_name, version)
    copied = engine.environment_variables.copy(scope, _copied_from(project, body))
    return respond([shape(v, inherited=True) for v in copied], 201)


# --- pipeline objects ------------------------------------------------------------------------


@router.get(PROJECT + "/pipelines/{pipeline_name}/versions/{version}/objects/{name}/environment-variables")
def pipeline_version_object_environment_variables_list(engine: EngineDep, project: ProjectDep, pipeline_name: str,
                                                       version: str, name: str) -> Response:
    """The variables of the deployment version a pipeline object runs (none for an operator or a
    sub-pipeline), as that version lists them."""
    _pipeline, row = engine.pipelines.get_version(project, pipeline_name, version)
    obj = next((o for o in row.objects if o["name"] == name), None)
    if obj is None:
        raise NotFound("pipeline object", name)
    if obj["reference_type"] != "deployment":
        return respond([])
    deployment = obj["reference_name"]
    deployment_version = obj.get("version") or engine.deployments.default_version_name(
        engine.deployments.get(project, deployment))
    if deployment_version is None:
        return respond([])
    return _list(engine, Scope(project, deployment, deployment_version))
