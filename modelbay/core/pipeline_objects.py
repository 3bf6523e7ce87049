"""The objects of a pipeline version: deployments, operators and sub-pipelines, checked for shape and
resolved against what they refer to into the fields each takes and gives (`Io`). Sub-pipelines
are referred to by name, so a pipeline may not contain itself, nest deeper than `MAX_DEPTH`, or be
deleted or renamed while another pipeline uses it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelbay.core import operators
from modelbay.core.catalog import DEPLOYMENTS, PIPELINE_VERSIONS, PIPELINES, VERSIONS
from modelbay.core.errors import Conflict, InvalidInput
from modelbay.core.operators import Io
from modelbay.core.pipeline_graph import END, START
from modelbay.store.tables import PipelineRow, PipelineVersionRow

REFERENCE_TYPES = ("deployment", "operator", "pipeline")

#: Most objects one pipeline version may hold.
MAX_OBJECTS = 200

#: How deep sub-pipelines may nest.
MAX_DEPTH = 10


@dataclass(frozen=True)
class PipelineObject:
    """An object of a version, resolved: what it refers to and the fields it takes and gives."""

    id: str
    name: str
    reference_type: str
    reference_name: str
    version: str | None
    configuration: dict[str, Any]
    io: Io


def pipeline_io(row: PipelineRow) -> Io:
    return Io(row.input_type, tuple(row.input_fields), row.output_type, tuple(row.output_fields))


def check_objects(session: Session, project_id: str, pipeline_name: str,
                  raw_objects: Any) -> tuple[list[dict[str, Any]], dict[str, Io]]:
    """The objects of a version body of pipeline `pipeline_name`, as stored (each with a new id),
    and what each takes and gives by name. Raises `InvalidInput` naming the object at fault."""
    if raw_objects is None:
        raw_objects = []
    if not isinstance(raw_objects, list):
        raise InvalidInput("objects must be a list")
    if len(raw_objects) > MAX_OBJECTS:
        raise InvalidInput(f"A pipeline version holds at most {MAX_OBJECTS} objects")
    objects: list[dict[str, Any]] = []
    specs: dict[str, Io] = {}
    for i, raw in enumerate(raw_objects):
        if not isinstance(raw, dict):
            raise InvalidInput(f"objects[{i}] must be an object")
        name = raw.get("name")
        if not isinstance(name, str) or not name or len(name) > 64 or name in (START, END):
            raise InvalidInput(f"objects[{i}] needs a 'name' of 1-64 characters other than pipeline_start "
                               "and pipeline_end")
        if name in specs:
            raise InvalidInput(f"Object name '{name}' is used twice")
        reference_type = raw.get("reference_type") or "deployment"
        if reference_type not in REFERENCE_TYPES:
            raise InvalidInput(f"Object '{name}': reference_type must be one of {', '.join(REFERENCE_TYPES)}")
        reference_name = raw.get("reference_name")
        if not isinstance(reference_name, str) or not reference_name:
            raise InvalidInput(f"Object '{name}' needs a 'reference_name'")
        version = raw.get("version")
        if version is not None and not isinstance(version, str):
            raise InvalidInput(f"Object '{name}': version must be a string")
        configuration = raw.get("configuration")
        if configuration is not None and not isinstance(configuration, dict):
            raise InvalidInput(f"Object '{name}': configuration must be an object")
        obj = {
            "id": str(uuid.uuid4()),
            "name": name,
            "reference_type": reference_type,
            "reference_name": reference_name,
            "version": version if reference_type != "operator" else None,
            "configuration": configuration or {},
            "metadata": raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {},
        }
        if reference_type == "pipeline":
            _refuse_containing(session, project_id, pipeline_name, reference_name, version, name)
        specs[name] = io_of(session, project_id, obj)
        objects.append(obj)
    return objects, specs


def io_of(session: Session, project_id: str, obj: dict[str, Any]) -> Io:
    """What a stored object takes and gives; raises `InvalidInput` when what it refers to is gone."""
    kind, ref, name = obj["reference_type"], obj["reference_name"], obj["name"]
    if kind == "operator":
        return operators.io(ref, obj.get("configuration"), name)
    if kind == "deployment":
        deployment = DEPLOYMENTS.find(session, project_id, ref)
        if deployment is None:
            raise InvalidInput(f"Object '{name}' refers to deployment '{ref}', which does not exist")
        version_id = deployment.default_version_id
        if obj.get("version") is not None:
            version = VERSIONS.find(session, deployment.id, obj["version"])
            version_id = version.id if version else None
        if version_id is None:
            what = f"version '{obj['version']}'" if obj.get("version") else "a default version"
            raise InvalidInput(f"Object '{name}' refers to deployment '{ref}', which has no {what}")
        return Io(deployment.input_type, tuple(deployment.input_fields), deployment.output_type,
                  tuple(deployment.output_fields))
    sub = PIPELINES.find(session, project_id, ref)
    if sub is None:
        raise InvalidInput(f"Object '{name}' refers to pipeline '{ref}', which does not exist")
    if (PIPELINE_VERSIONS.find(session, sub.id, obj["version"]) if obj.get("version") else
            sub.default_version_id) is None:
        raise InvalidInput(f"Object '{name}' refers to pipeline '{ref}', which has no "
                           + (f"version '{obj['version']}'" if obj.get("version") else "default version"))
    return pipeline_io(sub)


def _refuse_containing(session: Session, project_id: str, this: str, ref: str, version: str | None,
                       object_name: str) -> None:
    """Raise `InvalidInput` when sub-pipeline `ref` is `this` pipeline or contains it at any depth."""
    stack: list[tuple[str, str | None, int]] = [(ref, version, 1)]
    while stack:
        name, ver, depth = stack.pop()
        if name == this:
            via = "" if name == ref else f" (through pipeline '{ref}')"
            raise InvalidInput(f"Object '{object_name}' makes pipeline '{this}' contain itself{via}")
        if depth > MAX_DEPTH:
            raise InvalidInput(f"Object '{object_name}': sub-pipelines nest deeper than {MAX_DEPTH} levels")
        sub = PIPELINES.find(session, project_id, name)
        if sub is None:
            continue  # reported as unknown by `io_of`
        row = (PIPELINE_VERSIONS.find(session, sub.id, ver) if ver else
               session.get(PipelineVersionRow, sub.default_version_id) if sub.default_version_id else None)
        for obj in row.objects if row else []:
            if obj["reference_type"] == "pipeline":
                stack.append((obj["reference_name"], obj.get("version"), depth + 1))


def refuse_if_used(session: Session, project_id: str, name: str,
                   version: str | None = None, is_default: bool = False, action: str = "deleted") -> None:
    """Raise `Conflict` when another pipeline's version uses pipeline `name` (with `version`:
    that version of it, named or, when `is_default`, as the default) as a sub-pipeline;
    `action` (deleted, renamed) is what the message says cannot be done."""
    def uses(obj: dict[str, Any]) -> bool:
        if obj["reference_type"] != "pipeline" or obj["reference_name"] != name:
            return False
        return version is None or obj.get("version") == version or (is_default and obj.get("version") is None)

    for row in session.scalars(select(PipelineVersionRow).join(
            PipelineRow, PipelineRow.id == PipelineVersionRow.pipeline_id).where(
            PipelineRow.project_id == project_id, PipelineRow.name != name)):
        if any(uses(o) for o in row.objects):
            what = f"Pipeline '{name}'" if version is None else f"Version '{version}' of pipeline '{name}'"
            raise Conflict(f"{what} is used as a sub-pipeline and cannot be {action}")
