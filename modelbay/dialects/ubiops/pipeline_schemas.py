"""Pipelines and their versions, and the steps and operator requests of their requests, in the shapes the UbiOps
API answers with."""

from __future__ import annotations

from typing import Any

from modelbay.dialects.ubiops.schemas import decoded, iso, version_header
from modelbay.store.tables import OperatorRequestRow, PipelineRequestRow, PipelineRow, PipelineVersionRow


def pipeline(row: PipelineRow, project_name: str, default_version: str | None = None) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "project": project_name,
        "description": row.description,
        "input_type": row.input_type,
        "input_fields": row.input_fields or [],
        "output_type": row.output_type,
        "output_fields": row.output_fields or [],
        "labels": row.labels,
        "creation_date": iso(row.created_at),
        "last_updated": iso(row.updated_at),
        "default_version": default_version,
    }


def pipeline_version(row: PipelineVersionRow, pipeline_row: PipelineRow) -> dict[str, Any]:
    objects = []
    for obj in row.objects:
        objects.append({
            "id": obj["id"],
            "name": obj["name"],
            "reference_name": obj["reference_name"],
            "reference_type": obj["reference_type"],
            "version": obj.get("version"),
            "configuration": obj.get("configuration") or {},
            "metadata": obj.get("metadata") or {},
        })
    return {
        **version_header("pipeline", row, pipeline_row),
        "labels": row.labels,
        "creation_date": iso(row.created_at),
        "last_updated": iso(row.updated_at),
        "request_retention_mode": row.request_retention_mode,
        "request_retention_time": row.request_retention_time,
        "metadata": {},
        "objects": objects,
        "attachments": row.attachments,
    }


#: Which response list holds which kind of step, and the name of its reference key.
_KINDS = (("deployment_requests", "deployment"), ("operator_requests", "operator"), ("pipeline_requests", "pipeline"))


def steps(all_steps: list[dict[str, Any]], with_sizes: bool = True) -> dict[str, list[dict[str, Any]]]:
    """Steps split into `deployment_requests`, `operator_requests` and `pipeline_requests`, in sequence order."""
    ordered = sorted(all_steps, key=lambda s: s["sequence_id"])
    out: dict[str, list[dict[str, Any]]] = {}
    for key, kind in _KINDS:
        items = []
        for step in ordered:
            if step["kind"] != kind:
                continue
            item = {k: v for k, v in step.items() if k != "kind"}
            item["success"] = step["status"] == "completed"
            if not with_sizes:
                item.pop("input_size", None)
                item.pop("output_size", None)
            items.append(item)
        out[key] = items
    return out


def operator_request(row: OperatorRequestRow, parent: PipelineRequestRow, pipeline_name: str, version_name: str,
                     metadata_only: bool = False) -> dict[str, Any]:
    detail = {
        "id": row.id,
        "pipeline_request_id": parent.id,
        "pipeline": pipeline_name,
        "version": version_name,
        # the SDK reads `pipeline_object`, the reference's example shows `object`: both
        "pipeline_object": row.pipeline_object,
        "object": row.pipeline_object,
        "operator": row.operator,
        "sequence_id": row.sequence_id,
        "status": row.status,
        "success": row.status == "completed",
        "time_created": iso(row.created_at),
        "time_started": iso(row.created_at),
        "time_completed": iso(row.finished_at),
        "error_message": row.error_message,
        "input_size": row.input_size,
        "output_size": row.output_size,
    }
    if not metadata_only:
        detail.update(request_data=decoded(row.data), result=decoded(row.result))
    return detail
