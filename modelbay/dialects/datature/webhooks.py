"""Datature webhooks: `/projects/{pid}/batch/webhooks`, translated to core calls."""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from modelbay.core.errors import InvalidInput
from modelbay.core.webhooks import DEFAULT_MAX_BACKOFF_MS, DEFAULT_MAX_RETRIES
from modelbay.dialects.datature import ids, schemas
from modelbay.dialects.datature.deps import EngineDep, JsonObject, ProjectDep
from modelbay.dialects.datature.errors import DatatureRoute
from modelbay.store.tables import ProjectRow, WebhookRow

PREFIX = "webhook"

router = APIRouter(route_class=DatatureRoute, prefix="/projects/{project_id}/batch/webhooks",
                   tags=["Datature · webhooks"])


def webhook(row: WebhookRow, project: ProjectRow) -> dict[str, Any]:
    """The Webhook model; the secret is never shown."""
    return {
        "id": schemas.external(PREFIX, row.id),
        "object": "webhook",
        "projectId": ids.project_id(project.handle),
        "name": row.name,
        "endpoint": row.endpoint,
        "retries": {"maxRetries": row.max_retries, "maxBackoffMs": row.max_backoff_ms},
        "createDate": schemas.ms(row.created_at),
        "updateDate": schemas.ms(row.updated_at),
    }


def _retries(spec: dict[str, Any]) -> dict[str, Any]:
    return schemas.obj(spec.get("retries"), "spec.retries", required=False)


@router.post("")
def create(engine: EngineDep, project: ProjectDep, body: JsonObject) -> Response:
    if "spec" not in body:
        raise InvalidInput("spec is required: {endpoint, secret: {contents}, retries?}")
    spec = schemas.obj(body.get("spec"), "spec")
    retries = _retries(spec)
    row = engine.webhooks.create(
        project.id,
        body.get("name"),
        spec.get("endpoint"),
        schemas.obj(spec.get("secret"), "spec.secret").get("contents"),
        retries.get("maxRetries", DEFAULT_MAX_RETRIES),
        retries.get("maxBackoffMs", DEFAULT_MAX_BACKOFF_MS),
    )
    return schemas.respond(webhook(row, project))


@router.get("")
def list_(engine: EngineDep, project: ProjectDep, page: str | None = None, limit: str | None = None) -> Response:
    offset, size = schemas.page_offset(page), schemas.page_limit(limit)
    rows, more = engine.webhooks.list(project.id, offset, size)
    return schemas.respond(schemas.paginated([webhook(r, project) for r in rows], offset, size, more))


@router.get("/{webhook_id}")
def get(engine: EngineDep, project: ProjectDep, webhook_id: str) -> Response:
    row = engine.webhooks.get(project.id, schemas.internal(PREFIX, "webhook", webhook_id))
    return schemas.respond(webhook(row, project))


@router.patch("/{webhook_id}")
def update(engine: EngineDep, project: ProjectDep, webhook_id: str, body: JsonObject) -> Response:
    spec = schemas.obj(body.get("spec"), "spec")
    retries = _retries(spec)
    secret = spec.get("secret")
    row = engine.webhooks.update(
        project.id,
        schemas.internal(PREFIX, "webhook", webhook_id),
        endpoint=spec.get("endpoint"),
        max_retries=retries.get("maxRetries"),
        max_backoff_ms=retries.get("maxBackoffMs"),
        secret=schemas.obj(secret, "spec.secret").get("contents") if secret is not None else None,
    )
    return schemas.respond(webhook(row, project))


@router.put("/{webhook_id}/secret")
def update_secret(engine: EngineDep, project: ProjectDep, webhook_id: str, body: JsonObject) -> Response:
    if "contents" not in body:
        raise InvalidInput("contents is required: the new secret, base64")
    row = engine.webhooks.update(project.id, schemas.internal(PREFIX, "webhook", webhook_id),
                                 secret=body.get("contents"))
    return schemas.respond(webhook(row, project))


# The SDK calls `…/webhooks/{id}:test`, a literal colon inside the last path segment. The report
# has the status and latency, never the target's body (that would read any URL for the caller).
@router.post("/{webhook_id}:test")
async def test(engine: EngineDep, project: ProjectDep, webhook_id: str) -> Response:
    core_id = schemas.internal(PREFIX, "webhook", webhook_id)
    sample = orjson.dumps({"kind": "WebhookTest", "webhookId": webhook_id, "projectId": ids.project_id(project.handle),
                           "createTime": int(time.time() * 1000)})
    attempt = await engine.webhooks.test(project.id, core_id, sample)
    answer: dict[str, Any] = {
        "status": "Ok" if attempt.ok else "Failed",
        "responseCode": attempt.status_code,
        "latencyMs": attempt.latency_ms,
        "attemptCount": 1,
    }
    if attempt.error is not None:
        answer["reason"] = attempt.error
    return schemas.respond(answer)


@router.delete("/{webhook_id}")
async def delete(engine: EngineDep, project: ProjectDep, webhook_id: str) -> Response:
    await run_in_threadpool(engine.webhooks.delete, project.id, schemas.internal(PREFIX, "webhook", webhook_id))
    engine.deliveries.wake()
    return schemas.respond(schemas.deleted(webhook_id))
