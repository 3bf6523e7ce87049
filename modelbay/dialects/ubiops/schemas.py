"""Stored rows and core records in the shapes the UbiOps API answers with."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from fastapi.responses import Response

from modelbay.core import environments
from modelbay.core.clock import as_utc
from modelbay.store.tables import DeploymentRow, ProjectRow, RevisionRow, VersionRow

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


def user(project: ProjectRow | None) -> dict[str, Any]:
    """The user a token stands for: a project's (named after it) or the admin (`project` None)."""
    name = project.name if project is not None else "admin"
    return {
        "id": project.id if project is not None else "admin",
        "email": f"{name}@modelbay.local",
        "name": name,
        "surname": ORGANIZATION_NAME,
        "registration_date": iso(project.created_at) if project is not None else None,
        "authentication": "token",
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


def version_header(noun: str, row: Any, owner: Any) -> dict[str, Any]:
    """The fields a version of a deployment or of a pipeline (`owner`) starts with; `noun` is the key of its name."""
    return {"id": row.id, noun: owner.name, "version": row.name, "default": owner.default_version_id == row.id,
            "description": row.description}


def version(row: VersionRow, deployment_row: DeploymentRow, revision: RevisionRow | None = None) -> dict[str, Any]:
    return {
        **version_header("deployment", row, deployment_row),
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


def decoded(raw: bytes | None) -> Any:
    return None if raw is None else orjson.loads(raw)
