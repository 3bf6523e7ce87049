"""Requests, of a deployment or of a pipeline, in the shapes the UbiOps API answers with.

One family for both nouns: the shared fields (id, the name under the noun's key, version, status and,
when stored, times, sizes, origin and, in a detail, input and output), plus the fields each noun adds."""

from __future__ import annotations

from typing import Any

from modelbay.core.pipeline_requests import PipelineRecord
from modelbay.core.requests import RequestRecord
from modelbay.dialects.ubiops.pipeline_schemas import steps
from modelbay.dialects.ubiops.schemas import decoded, iso
from modelbay.store.tables import PipelineRequestRow, RequestRow

#: A stored request as the core returns it: a `RequestRow` or a `PipelineRequestRow`.
StoredRow = RequestRow | PipelineRequestRow


def direct(noun: str, name: str, record: RequestRecord | PipelineRecord, extras: dict[str, Any]) -> dict[str, Any]:
    """The answer to a direct request, with the fields its noun adds (`extras`); `noun` is the key of `name`."""
    return {"id": record.id, noun: name, "version": record.version_name, "status": record.status,
            "success": record.status == "completed", **extras}


def deployment_direct(record: RequestRecord) -> dict[str, Any]:
    return direct("deployment", record.deployment_name, record,
                  {"result": record.result, "error_message": record.error_message, "timeout": record.timeout})


def pipeline_direct(record: PipelineRecord) -> dict[str, Any]:
    return direct("pipeline", record.pipeline_name, record, {
        "error_message": record.error_message,
        **steps(record.steps, with_sizes=False),
        "result": record.result,
        "pipeline_timeout": record.timeout,
        "deployment_timeout": record.timeout,
    })


def list_item(noun: str, name: str, version: str, row: StoredRow) -> dict[str, Any]:
    """A stored request in a list; `noun` (`deployment` or `pipeline`) is the key of `name`."""
    return {
        "id": row.id,
        noun: name,
        "version": version,
        "status": row.status,
        "success": row.status == "completed",
        "time_created": iso(row.created_at),
        "time_started": iso(row.started_at),
        "time_completed": iso(row.finished_at),
        "input_size": row.input_size,
        "output_size": row.output_size if row.finished_at else None,
        "origin": row.origin,
    }


def detail(noun: str, name: str, version: str, row: StoredRow, extras: dict[str, Any],
           metadata_only: bool = False) -> dict[str, Any]:
    """A stored request with the fields its noun adds (`extras`), and its input and output unless `metadata_only`."""
    answer = list_item(noun, name, version, row)
    answer.update(extras)
    if not metadata_only:
        answer.update(request_data=decoded(row.data), result=decoded(row.result))
    return answer


def deployment_extras(row: RequestRow) -> dict[str, Any]:
    return {"timeout": row.timeout, "error_message": row.error_message, "additional_data": None}


def pipeline_extras(row: PipelineRequestRow, all_steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "error_message": row.error_message,
        "pipeline_timeout": row.timeout,
        "deployment_timeout": row.timeout,
        **steps(all_steps),
    }


def batch_created(noun: str, name: str, record: RequestRecord | PipelineRecord) -> dict[str, Any]:
    """A request just stored by a batch create; `noun` is the key of `name`."""
    return {"id": record.id, noun: name, "version": record.version_name, "status": record.status,
            "time_created": iso(record.created_at)}
