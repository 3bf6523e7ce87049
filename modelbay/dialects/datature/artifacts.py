"""Datature artifacts and the instances a job may start for itself.

An artifact (`artifact_<core id>`) is a deployment version's built code: a Datature deployment
shows its serving version's as `artifactId`. A job whose deployment is a `NewEphemeralDeployment`
names an artifact (or a template deployment) and gets instances of that code of its own, started
with the job and stopped when its items have run (`core.jobs.Ephemeral`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from modelbay.core.errors import InvalidInput, NotFound
from modelbay.core.jobs import MAX_OWN_INSTANCES, Ephemeral
from modelbay.dialects.datature import schemas
from modelbay.dialects.datature.deps import EngineDep, ProjectDep
from modelbay.dialects.datature.errors import DatatureRoute
from modelbay.engine import Engine
from modelbay.store.tables import ProjectRow

PREFIX = "artifact"

#: The one instance type offered: the server's default instance (one worker process). The SDK
#: picks among the ids it knows, and this is one of them.
DEFAULT_INSTANCE = "instance_x1cpu-standard"

#: Resource keys Datature may ask for that a modelbay instance cannot have.
GPUS = ("GPU_T4", "GPU_L4", "GPU_A100_40GB", "GPU_A100_80GB", "GPU_H100")

router = APIRouter(route_class=DatatureRoute, prefix="/projects/{project_id}/artifacts",
                   tags=["Datature · artifacts"])


@router.get("/{artifact_id}/availableInstances/regions/{region}")
def available_instances(engine: EngineDep, project: ProjectDep, artifact_id: str, region: str) -> Response:
    version_of_artifact(engine, project, artifact_id)  # it must exist here
    return schemas.respond({
        "artifactId": artifact_id,
        "region": region,
        "availableInstances": [{"instanceId": DEFAULT_INSTANCE, "resources": {"cpu": 1}, "regions": ["*"]}],
    })


def version_of_artifact(engine: Engine, project: ProjectRow, artifact_id: str) -> str:
    """The core id of the version an artifact id of this project names; raises `NotFound`."""
    version_id = schemas.internal(PREFIX, "artifact", artifact_id)
    try:
        target = engine.deployments.target_of_version(version_id)
    except NotFound:
        target = None
    if target is None or target.project_id != project.id:
        raise NotFound("artifact", artifact_id)
    return version_id


def ephemeral(engine: Engine, project: ProjectRow, deployment: dict[str, Any]) -> Ephemeral:
    """The job's own instances a `NewEphemeralDeployment` describes: its template names the code
    (`artifactId`, else the template deployment's `id`: its serving version), how many (`replicas`
    or `scaling.replicas`) and what kind (`instanceId`, or `resources` whose `ram` in MB becomes
    the memory limit). The job shows the template back as a Datature deployment."""
    template = schemas.obj(deployment.get("template"), "spec.deployment.template")
    if isinstance(template.get("artifactId"), str):
        version_id = version_of_artifact(engine, project, template["artifactId"])
    elif isinstance(template.get("id"), str):
        core_id = schemas.internal("deploy", "deployment", template["id"])
        named = [row.name for row in engine.deployments.list_deployments(project) if row.id == core_id]
        if not named:
            raise NotFound("deployment", template["id"])
        version_id = engine.deployments.target(project, named[0], None).version_id
    else:
        raise InvalidInput("spec.deployment.template needs an artifactId (GET /projects/{id}/deployments shows each "
                           "deployment's) or the id of a template deployment")
    scaling = template.get("scaling") if isinstance(template.get("scaling"), dict) else {}
    replicas = template.get("replicas", scaling.get("replicas", 1))
    if not isinstance(replicas, int) or isinstance(replicas, bool) or not 1 <= replicas <= MAX_OWN_INSTANCES:
        raise InvalidInput(f"spec.deployment.template.replicas must be an integer from 1 to {MAX_OWN_INSTANCES}")
    shown = {key: template[key] for key in ("id", "name", "region", "resources") if key in template}
    shown.update(artifactId=schemas.external(PREFIX, version_id), scaling={"replicas": replicas,
                                                                          "mode": "FixedReplicaCount"})
    if "resources" not in template:
        shown["instanceId"] = DEFAULT_INSTANCE
    return Ephemeral(version_id=version_id, replicas=replicas, instance_type=_instance_type(template),
                     template=shown)


def _instance_type(template: dict[str, Any]) -> str | None:
    """The core instance type of a template: None (the version's own) for the default instance."""
    instance_id = template.get("instanceId")
    if instance_id is not None and instance_id != DEFAULT_INSTANCE:
        raise InvalidInput(f"Unknown instanceId {instance_id!r}: this server offers {DEFAULT_INSTANCE}")
    resources = template.get("resources")
    if resources is None:
        return None
    resources = schemas.obj(resources, "spec.deployment.template.resources")
    if any(resources.get(gpu) for gpu in GPUS):
        raise InvalidInput("This server offers no GPU instances: leave the template's GPU resources out")
    ram = resources.get("ram")
    if ram is None:
        return None
    if not isinstance(ram, int) or isinstance(ram, bool) or not 64 <= ram <= 1 << 20:
        raise InvalidInput("spec.deployment.template.resources.ram must be the memory in MB, from 64")
    return f"{ram}mb"
