"""Stored rows and core records in the shapes the UbiOps API answers with."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from fastapi.responses import Response

from modelbay.core import environments
from modelbay.core.clock import as_utc
from modelbay.core.requests import RequestRecord
from modelbay.store.tables import DeploymentRow, ProjectRow, RequestRow, RevisionRow, VersionRow

#: UbiOps projects belong to an organisation; a modelbay server is one.
ORGANIZATION_NAME = "modelbay"


def respond(body: Any, status_code: int = 200) -> Response:
    """A JSON answer, encoded with orjson."""
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json")


def iso(value: datetime | None) -> str | None:
    """ISO-8601 with milliseconds and offset, as in `2020-03-28T20:00:26.613+00:00`."""
    return None if value is None else as_utc(value).isoformat(timespec="milliseconds")


def project(row: ProjectRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "creation_date": iso(row.created_at),
        "organization_name": ORGANIZATION_NAME,
        "advanced_permissions": False,
        "credits": None,
        "labels": {},
        "suspended": False,
        "suspended_reason": None,
        "cors_origins": [],
    }


def deployment(row: DeploymentRow, project_name: str, default_version: str | None = None) -> dict[str, Any]:
    return {
        "id": row.id,
        "project": project_name,
        "name": row.name,
        "description": row.description,
        "input_type": row.input_type,
        "output_type": row.output_type,
        "input_fields": row.input_fields,
        "output_fields": row.output_fields,
        "labels": row.labels,
        "supports_request_format": True,
        "creation_date": iso(row.created_at),
        "last_updated": iso(row.updated_at),
        "default_version": default_version,
    }


def version(row: VersionRow, deployment_row: DeploymentRow, revision: RevisionRow | None = None) -> dict[str, Any]:
    return {
        "id": row.id,
        "deployment": deployment_row.name,
        "version": row.name,
        "default": deployment_row.default_version_id == row.id,
        "description": row.description,
        "environment": row.environment,
        "environment_name": row.environment,
        "environment_display_name": environments.BUILT_IN.get(row.environment, row.environment),
        "environment_tag": None,
        "status": row.status,
        "active_revision": row.active_revision_id,
        "latest_revision": row.latest_revision_id,
        "instance_type": row.instance_type,
        "instance_type_group_id": None,
        "instance_type_group_name": row.instance_type,
        "scaling_strategy": "default",
        "minimum_instances": row.minimum_instances,
        "maximum_instances": row.maximum_instances,
        "maximum_idle_time": row.maximum_idle_time,
        "maximum_queue_size": row.maximum_queue_size_batch,
        "maximum_queue_size_express": row.maximum_queue_size_express,
        "maximum_queue_size_batch": row.maximum_queue_size_batch,
        "instance_processes": row.instance_processes,
        "request_retention_mode": row.request_retention_mode,
        "request_retention_time": row.request_retention_time,
        "restart_request_interruption": False,
        "ports": [],
        "labels": row.labels,
        "creation_date": iso(row.created_at),
        "last_updated": iso(row.updated_at),
        "last_file_upload": iso(row.last_file_upload),
        "has_request_method": bool(revision and revision.has_request_method),
        "has_requests_method": bool(revision and revision.has_requests_method),
        "health_check": None,
        "command": None,
        "args": None,
    }


def revision(row: RevisionRow, version_name: str) -> dict[str, Any]:
    return {
        "id": row.id,
        "version": version_name,
        "creation_date": iso(row.created_at),
        "created_by": row.created_by,
        "status": row.status,
        "error_message": row.error_message,
        "has_request_method": row.has_request_method,
        "has_requests_method": row.has_requests_method,
        "empty": False,
    }


def environment(name: str) -> dict[str, Any]:
    return {
        "id": name,
        "name": name,
        "display_name": environments.BUILT_IN[name],
        "project": None,
        "creation_date": None,
        "last_updated": None,
        "description": f"Built-in environment with {environments.BUILT_IN[name]}",
        "labels": {},
        "system": True,
        "supports_request_format": True,
    }


def environment_tag(name: str, tag: str = "latest") -> dict[str, Any]:
    return {
        "id": f"{name}:{tag}",
        "name": tag,
        "environment": name,
        "creation_date": None,
        "status": "completed",
        "supports_request_format": True,
        "implicit": True,
        "deprecated": False,
        "size": None,
        "error_message": None,
        "base_environment_name": None,
        "base_environment_tag": None,
        "built": True,
    }


def direct_request(record: RequestRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "deployment": record.deployment_name,
        "version": record.version_name,
        "status": record.status,
        "success": record.status == "completed",
        "result": record.result,
        "error_message": record.error_message,
        "timeout": record.timeout,
    }


def decoded(raw: bytes | None) -> Any:
    return None if raw is None else orjson.loads(raw)


def request_state(row: Any) -> dict[str, Any]:
    """Status, times, sizes and origin of a stored deployment or pipeline request."""
    return {
        "status": row.status,
        "success": row.status == "completed",
        "time_created": iso(row.created_at),
        "time_started": iso(row.started_at),
        "time_completed": iso(row.finished_at),
        "input_size": row.input_size,
        "output_size": row.output_size if row.finished_at else None,
        "origin": row.origin,
    }


def request_list_item(row: RequestRow, deployment_name: str, version_name: str) -> dict[str, Any]:
    return {"id": row.id, "deployment": deployment_name, "version": version_name, **request_state(row)}


def request_detail(
    row: RequestRow, deployment_name: str, version_name: str, metadata_only: bool = False
) -> dict[str, Any]:
    detail = request_list_item(row, deployment_name, version_name)
    detail.update(timeout=row.timeout, error_message=row.error_message, additional_data=None)
    if not metadata_only:
        detail.update(request_data=decoded(row.data), result=decoded(row.result))
    return detail


def batch_created(record: RequestRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "deployment": record.deployment_name,
        "version": record.version_name,
        "status": record.status,
        "time_created": iso(record.created_at),
    }
