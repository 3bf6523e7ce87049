"""The ABEJA wire shapes: core rows to the dicts the SDK returns, and query values to core ones."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import orjson

from modelbay.core.clock import as_utc
from modelbay.core.decimals import is_decimal
from modelbay.core.deployments import Target
from modelbay.core.errors import InvalidInput
from modelbay.core.journal import Line
from modelbay.dialects.abeja import ids
from modelbay.store.tables import DeploymentRow, RunRow, ServiceRow, VersionRow

#: Core version statuses as a code version's `status`.
VERSION_STATUS = {"unavailable": "UPLOAD_WAITING", "building": "BUILDING", "available": "READY", "failed": "FAILED"}


def timestamp(value: datetime | None) -> str | None:
    """`2018-01-01T00:00:00.000000Z`, the SDK's format."""
    # isoformat, not strftime: a run's answer holds several, and strftime costs five times as much
    return None if value is None else value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def query_time(value: str | None, name: str) -> datetime | None:
    """The SDK sends `%Y-%m-%dT%H:%M:%S` without a zone: UTC."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.rstrip("Z"))
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: year 1 with an offset east of UTC
        raise InvalidInput(f"{name} must be a time like 2018-01-01T00:00:00") from None


def query_bool(value: str | None, name: str) -> bool | None:
    """`True`/`False` as Python's `str(bool)` writes them, or lowercase."""
    if value is None or value == "":
        return None
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise InvalidInput(f"{name} must be true or false")


def models(alias: str | None) -> dict[str, Any]:
    return {"alias": alias} if alias else {}


def deployment(row: DeploymentRow) -> dict[str, Any]:
    return {
        "deployment_id": ids.deployment_id(row.id),
        "name": row.name,
        "description": row.description,
        "creator": {},
        "default_environment": {},
        "runs": [],
        "services": [],
        "triggers": [],
        "created_at": timestamp(row.created_at),
        "modified_at": timestamp(row.updated_at),
    }


def version(deployment_row: DeploymentRow, row: VersionRow, build_error: str | None = None) -> dict[str, Any]:
    return {
        "deployment_id": ids.deployment_id(deployment_row.id),
        "version": row.name,
        "version_id": ids.version_id(row.id),
        "handler": row.handler,
        "image": (row.labels or {}).get("image"),
        "user_parameters": dict(row.environment_variables or {}),
        "status": VERSION_STATUS.get(row.status, row.status.upper()),
        "build_error": ids.public_text(build_error) if build_error else build_error,
        "created_at": timestamp(row.created_at),
        "modified_at": timestamp(row.updated_at),
    }


def run(row: RunRow, target: Target | None) -> dict[str, Any]:
    user_parameters = dict(target.environment_variables) if target else {}
    return {
        "deployment_id": ids.deployment_id(row.deployment_id),
        "models": models(row.model_alias),
        "model_version": target.version_name if target else None,
        "model_version_id": ids.version_id(row.version_id),
        "input_data": row.input_data,
        "output_template": row.output_template,
        "retry_count": row.retry_count,
        "run_id": ids.run_id(row.id),
        "status": row.status.upper(),
        "user_env_vars": {**{k: str(v) for k, v in user_parameters.items()}, **(row.environment or {})},
        "distribution": row.distribution,
        "attempts": row.attempts,
        "error_message": ids.public_text(row.error_message) if row.error_message else row.error_message,
        "created_at": timestamp(row.created_at),
        "modified_at": timestamp(row.modified_at),
    }


def service(row: ServiceRow, target: Target | None, running_instances: int, error: str | None, *,
            metrics_url: str) -> dict[str, Any]:
    user_parameters = {k: str(v) for k, v in (target.environment_variables if target else {}).items()}
    return {
        "service_id": ids.service_id(row.id),
        "deployment_id": ids.deployment_id(row.deployment_id),
        "models": models(row.model_alias),
        "model_version": target.version_name if target else None,
        "model_version_id": ids.version_id(row.version_id),
        "status": row.status.upper(),
        "instance_number": row.instance_number,
        "min_instance_number": row.min_instance_number,
        "max_instance_number": row.max_instance_number,
        "enable_autoscale": row.enable_autoscale,
        "instance_type": row.instance_type,
        "metrics_url": metrics_url,
        "user_env_vars": dict(row.environment or {}),
        "merged_env_vars": {**user_parameters, **(row.environment or {})},
        "record_channel_id": None,
        "service_process_type": "multi",
        "running_instance_number": running_instances,
        "error": ids.public_text(error) if error else error,
        "created_at": timestamp(row.created_at),
        "modified_at": timestamp(row.modified_at),
    }


def events(lines: list[Line]) -> list[dict[str, Any]]:
    return [{"message": line.message, "timestamp": timestamp(line.time)} for line in lines]


def line_token(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    if not is_decimal(value):
        raise InvalidInput(f"{name} is not a token this server gave out")
    return int(value)


def page_token(created_at: datetime, core_id: str) -> str:
    """An opaque cursor: the last entry's creation time and id."""
    raw = orjson.dumps([as_utc(created_at).isoformat(), core_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def read_page_token(token: str | None) -> tuple[datetime, str] | None:
    if not token:
        return None
    try:
        at, core_id = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return datetime.fromisoformat(at), str(core_id)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise InvalidInput("next_page_token is not a token this server gave out") from None
