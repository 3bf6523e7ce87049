"""Datature batch jobs: `/projects/{pid}/batch/jobs`, translated to core calls."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from modelbay.core.decimals import is_decimal
from modelbay.core.errors import InvalidInput
from modelbay.core.job_items import ItemOutcome
from modelbay.core.states import ItemStatus, JobStatus
from modelbay.dialects.datature import artifacts, ids, schemas
from modelbay.dialects.datature.deps import EngineDep, JsonObject, ProjectDep
from modelbay.dialects.datature.errors import DatatureRoute
from modelbay.store.tables import JobLogRow, JobRow, ProjectRow

PREFIX = "batchjob"
LOG_PREFIX = "batchjoblog"

#: Job overviews: the SDK knows Waiting, Reached and Failed.
OVERVIEW = {
    JobStatus.SCHEDULED: "Waiting",
    JobStatus.RUNNING: "Waiting",
    JobStatus.FINISHED: "Reached",
    JobStatus.STOPPED: "Failed",
    JobStatus.FAILED: "Failed",
}

ITEM_STATUS = {
    ItemStatus.FAILED_PROCESS: "FailedProcess",
    ItemStatus.PREDICTED: "Predicted",
    ItemStatus.FAILED_PREDICT: "FailedPredict",
    ItemStatus.DELIVERED: "Delivered",
    ItemStatus.FAILED_DELIVER: "FailedDeliver",
}

LOG_KIND = {"item": "ItemPredicted", "job_started": "JobStarted"}

router = APIRouter(route_class=DatatureRoute, prefix="/projects/{project_id}/batch/jobs", tags=["Datature · jobs"])


def _dt(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value / 1000, UTC)


def job(row: JobRow, project: ProjectRow) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "datasetId": schemas.external("dataset", row.dataset_id),
        "deployment": ({"kind": "ExistingDeployment", "deploymentId": schemas.external("deploy", row.deployment_id)}
                       if row.ephemeral is None else
                       {"kind": "NewEphemeralDeployment", "template": row.ephemeral["template"]}),
        "resultDelivery": {"destinations": [{"kind": "Webhook", "webhookId": schemas.external("webhook", w)}
                                            for w in row.webhook_ids]},
    }
    if row.start_at is not None:
        spec["startAtTime"] = schemas.ms(row.start_at)
    if row.stop_at is not None:
        spec["stopAtTime"] = schemas.ms(row.stop_at)
    status: dict[str, Any] = {
        "overview": OVERVIEW.get(row.status, row.status),
        "message": row.message,
        "updateDate": schemas.ms(row.updated_at),
        "items": {
            "Gathered": row.gathered,
            "FailedGather": row.failed_gather,
            "Preprocessed": row.preprocessed,
            "FailedProcess": row.failed_process,
            "Predicted": row.predicted,
            "FailedPredict": row.failed_predict,
            "Delivered": row.delivered,
            "FailedDeliver": row.failed_deliver,
        },
    }
    if row.reason:
        status["reason"] = row.reason
    if row.cancelled_at is not None:
        status["cancelledAt"] = schemas.ms(row.cancelled_at)
    return {
        "id": schemas.external(PREFIX, row.id),
        "object": "batch_job",
        "name": row.name,
        "projectId": ids.project_id(project.handle),
        "spec": spec,
        "status": status,
        "createDate": schemas.ms(row.created_at),
        "updateDate": schemas.ms(row.updated_at),
    }


def item_result(outcome: ItemOutcome) -> bytes:
    """What a webhook receives for one item: the item, and its result or why it has none."""
    body: dict[str, Any] = {
        "kind": "BatchJobItemResult",
        "jobId": schemas.external(PREFIX, outcome.job_id),
        "datasetId": schemas.external("dataset", outcome.dataset_id),
        "itemIndex": outcome.index,
        "item": outcome.item,
        "status": ITEM_STATUS[outcome.status],
    }
    if outcome.error is None:
        body["result"] = outcome.result
    else:
        body["reason"] = outcome.error
    return orjson.dumps(body)


def log_entry(row: JobLogRow) -> dict[str, Any]:
    return {
        "kind": LOG_KIND.get(row.kind, row.kind),
        "createTime": row.created_ms,
        "id": f"{row.seq:024x}",
        "level": row.level,
        "item": row.item,
        "status": ITEM_STATUS.get(row.status, row.status.capitalize()),
        "timeMs": row.time_ms,
        "reason": row.reason or "",
    }


@router.post("")
def create(engine: EngineDep, project: ProjectDep, body: JsonObject) -> Response:
    spec = schemas.obj(body.get("spec"), "spec")
    deployment = schemas.obj(spec.get("deployment"), "spec.deployment")
    dataset_id = spec.get("datasetId")
    if not isinstance(dataset_id, str):
        raise InvalidInput("spec.datasetId is required")
    own = None
    if deployment.get("kind") == "ExistingDeployment":
        if not isinstance(deployment.get("deploymentId"), str):
            raise InvalidInput("spec.deployment.deploymentId is required")
        deployment_id: str | None = schemas.internal("deploy", "deployment", deployment["deploymentId"])
    elif deployment.get("kind") == "NewEphemeralDeployment":
        own, deployment_id = artifacts.ephemeral(engine, project, deployment), None
    else:
        raise InvalidInput("spec.deployment.kind must be 'ExistingDeployment' (with the deploymentId of a deployment "
                           "of this project) or 'NewEphemeralDeployment' (with a template)")
    destinations = schemas.obj(spec.get("resultDelivery"), "spec.resultDelivery").get("destinations")
    if not isinstance(destinations, list) or not destinations:
        raise InvalidInput("spec.resultDelivery.destinations must list at least one webhook")
    webhook_ids = []
    for destination in destinations:
        destination = schemas.obj(destination, "a destination")
        if destination.get("kind") != "Webhook" or not isinstance(destination.get("webhookId"), str):
            raise InvalidInput("Each destination must be {kind: 'Webhook', webhookId}")
        webhook_ids.append(schemas.internal("webhook", "webhook", destination["webhookId"]))
    row = engine.jobs.create(
        project,
        body.get("name"),
        schemas.internal("dataset", "dataset", dataset_id),
        deployment_id,
        webhook_ids,
        _dt(schemas.optional_int(spec.get("startAtTime"), "spec.startAtTime")),
        _dt(schemas.optional_int(spec.get("stopAtTime"), "spec.stopAtTime")),
        own,
    )
    return schemas.respond(job(row, project))


@router.get("")
def list_(engine: EngineDep, project: ProjectDep, page: str | None = None, limit: str | None = None) -> Response:
    offset, size = schemas.page_offset(page), schemas.page_limit(limit)
    rows, more = engine.jobs.list(project.id, offset, size)
    return schemas.respond(schemas.paginated([job(r, project) for r in rows], offset, size, more))


@router.get("/{job_id}")
def get(engine: EngineDep, project: ProjectDep, job_id: str) -> Response:
    return schemas.respond(job(engine.jobs.get(project.id, schemas.internal(PREFIX, "job", job_id)), project))


@router.patch("/{job_id}")
async def update(engine: EngineDep, project: ProjectDep, job_id: str, body: JsonObject) -> Response:
    """Only the stop time may change; a stop time at or before now cancels the job (the SDK's `cancel`)."""
    spec = schemas.obj(body.get("spec"), "spec")
    stop_at = schemas.optional_int(spec.get("stopAtTime"), "spec.stopAtTime")
    if stop_at is None:
        raise InvalidInput("spec.stopAtTime is the one field of a job that may change")
    core_id = schemas.internal(PREFIX, "job", job_id)
    row = await engine.jobs.set_stop_time(project.id, core_id, _dt(stop_at))
    return schemas.respond(job(row, project))


@router.delete("/{job_id}")
async def delete(engine: EngineDep, project: ProjectDep, job_id: str) -> Response:
    await engine.jobs.delete(project.id, schemas.internal(PREFIX, "job", job_id))
    return schemas.respond(schemas.deleted(job_id))


@router.get("/{job_id}/logs")
async def logs(engine: EngineDep, project: ProjectDep, job_id: str, beforeTime: str | None = None,  # noqa: N803
               afterTime: str | None = None, minLevel: str | None = None,  # noqa: N803
               maxEntries: str | None = None) -> Response:  # noqa: N803
    def number(value: str | None, name: str) -> int | None:
        if value is None or value == "":
            return None
        if not is_decimal(value):
            raise InvalidInput(f"{name} must be a non-negative integer")
        return int(value)

    core_id = schemas.internal(PREFIX, "job", job_id)
    rows = await run_in_threadpool(
        engine.jobs.logs, project.id, core_id, before_ms=number(beforeTime, "beforeTime"),
        after_ms=number(afterTime, "afterTime"), min_level=minLevel or None,
        limit=number(maxEntries, "maxEntries"))
    return schemas.respond({
        "id": schemas.external(LOG_PREFIX, core_id),
        "object": "batch_job_log",
        "projectId": ids.project_id(project.handle),
        "entries": [log_entry(r) for r in rows],
    })
