"""Pipelines and their versions: a DAG of objects (deployments, operators, sub-pipelines)
joined by attachments with field mappings, from `pipeline_start` to `pipeline_end`.

A version is validated as a whole when it is stored (`check_objects`, `check_graph`), so a pipeline
request never meets an unknown object, a cycle or a mapping between mismatched fields. It may be
stored incomplete (an object off the path from start to end, an input not fed: built up step by
step); requests to it are refused with a 400 naming what is missing until it is complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from modelbay.core import bus as topics
from modelbay.core.bus import Bus, Message
from modelbay.core.catalog import (
    PIPELINE_VERSIONS,
    PIPELINES,
    check_name,
    check_retention_mode,
    check_retention_time,
    check_version_name,
    new_name,
    new_row_values,
    refuse_taken,
    update_description_and_labels,
)
from modelbay.core.clock import utcnow
from modelbay.core.errors import Conflict, InvalidInput, NotFound
from modelbay.core.fields import IO_TYPES, check_definitions, check_io
from modelbay.core.operators import Io
from modelbay.core.pipeline_graph import Source, check_graph, parse_attachments, stored_attachments
from modelbay.core.pipeline_objects import PipelineObject, check_objects, io_of, pipeline_io, refuse_if_used
from modelbay.store.db import Database
from modelbay.store.tables import PipelineRequestRow, PipelineRow, PipelineVersionRow, ProjectRow


@dataclass(frozen=True)
class Plan:
    """A pipeline version resolved for running."""

    project_id: str
    pipeline_id: str
    pipeline_name: str
    version_id: str
    version_name: str
    retention_mode: str
    io: Io
    objects: dict[str, PipelineObject]
    sources: dict[str, tuple[Source, ...]]  # destination (an object or END) -> its sources
    order: tuple[str, ...]  # objects in a topological order
    incomplete: str | None = None  # why it cannot run yet (stored while being built up)

    def check_runnable(self) -> None:
        """Raise `InvalidInput` saying what is missing when the version is not complete."""
        if self.incomplete is not None:
            raise InvalidInput(self.incomplete)


class Pipelines:
    """CRUD of pipelines and their versions, and their resolution into plans."""

    def __init__(self, db: Database, bus: Bus) -> None:
        self._db = db
        self._bus = bus
        # Plans by (project id, pipeline, version or None), dropped on every node with every pipeline
        # change. A deployment change needs no drop: steps resolve their deployment version when they run.
        self._plans: dict[tuple[str, str, str | None], Plan] = {}
        self._generation = 0
        bus.subscribe(topics.PIPELINES, self._changed_elsewhere)
        bus.subscribe_resync(self._drop_plans)

    def _changed(self) -> None:
        """A pipeline or version changed (committed): every node drops its plans."""
        self._drop_plans()
        self._bus.publish(topics.PIPELINES)

    def _changed_elsewhere(self, message: Message) -> None:
        if not message.from_here:  # dropped when it was sent
            self._drop_plans()

    def _drop_plans(self) -> None:
        self._generation += 1
        self._plans.clear()

    # --- pipelines -------------------------------------------------------------------------

    def create(self, project: ProjectRow, fields: dict[str, Any]) -> PipelineRow:
        name = check_name(fields.get("name"), "Pipeline")
        row = PipelineRow(project_id=project.id, name=name, **check_io(fields), **new_row_values(fields))
        with self._db.write() as session:
            refuse_taken(session, PIPELINES, project.id, name)
            session.add(row)
        self._changed()
        return row

    def get(self, project: ProjectRow, name: str) -> PipelineRow:
        with self._db.read() as session:
            return PIPELINES.get(session, project.id, name)

    def list_pipelines(self, project: ProjectRow) -> list[PipelineRow]:
        with self._db.read() as session:
            return PIPELINES.all(session, project.id)

    def update(self, project: ProjectRow, name: str, fields: dict[str, Any]) -> PipelineRow:
        """Rename, describe, relabel, change fields or the default version. Raises as `create`."""
        with self._db.write() as session:
            row = PIPELINES.get(session, project.id, name)
            renamed_to = new_name(session, PIPELINES, row, fields.get("name"))
            if renamed_to != row.name:
                # sub-pipelines are referred to by name: a rename would break the versions using it
                refuse_if_used(session, project.id, row.name, action="renamed")
                row.name = renamed_to
            update_description_and_labels(row, fields)
            for key in ("input_type", "output_type"):
                if fields.get(key) is not None:
                    if fields[key] not in IO_TYPES:
                        raise InvalidInput(f"{key} must be 'structured' or 'plain'")
                    setattr(row, key, fields[key])
            for key in ("input_fields", "output_fields"):
                if fields.get(key) is not None:
                    setattr(row, key, check_definitions(fields[key], key))
            if any(fields.get(key) is not None for key in ("input_type", "output_type", "input_fields",
                                                            "output_fields")):
                self._refuse_unfitting(session, project.id, row)
            if fields.get("default_version") is not None:
                if not isinstance(fields["default_version"], str):
                    raise InvalidInput("default_version must be the name of a version")
                row.default_version_id = PIPELINE_VERSIONS.get(session, row.id, fields["default_version"]).id
            row.updated_at = utcnow()
        self._changed()
        return row

    def delete(self, project: ProjectRow, name: str) -> list[str]:
        """Delete a pipeline with its versions; returns the ids of its requests, for the caller to delete."""
        with self._db.write() as session:
            row = PIPELINES.get(session, project.id, name)
            refuse_if_used(session, project.id, row.name)
            request_ids = list(session.scalars(
                select(PipelineRequestRow.id).where(PipelineRequestRow.pipeline_id == row.id)
            ))
            session.execute(delete(PipelineVersionRow).where(PipelineVersionRow.pipeline_id == row.id))
            session.delete(row)
        self._changed()
        return request_ids

    def default_version_name(self, row: PipelineRow) -> str | None:
        with self._db.read() as session:
            return PIPELINE_VERSIONS.default_name(session, row)

    # --- versions --------------------------------------------------------------------------

    def create_version(self, project: ProjectRow, pipeline_name: str, fields: dict[str, Any]) -> PipelineVersionRow:
        """Validate and store a version with its objects and attachments; the first becomes the default.

        Raises `InvalidInput` naming the object and field at fault; then nothing is stored.
        """
        name = check_version_name(fields.get("version"))
        retention_mode = check_retention_mode(fields.get("request_retention_mode") or "full")
        retention_time = fields.get("request_retention_time")
        retention_time = check_retention_time(604800 if retention_time is None else retention_time)
        with self._db.write() as session:
            pipeline = PIPELINES.get(session, project.id, pipeline_name)
            if PIPELINE_VERSIONS.find(session, pipeline.id, name) is not None:
                raise Conflict(f"Pipeline '{pipeline_name}' already has a version '{name}'")
            objects, attachments = self._validated(session, project.id, pipeline, fields.get("objects"),
                                                   fields.get("attachments"))
            row = PipelineVersionRow(pipeline_id=pipeline.id, name=name, request_retention_mode=retention_mode,
                                     request_retention_time=retention_time, objects=objects,
                                     attachments=attachments, **new_row_values(fields))
            session.add(row)
            if pipeline.default_version_id is None:
                pipeline.default_version_id = row.id
        self._changed()
        return row

    def get_version(self, project: ProjectRow, pipeline_name: str, version: str) -> tuple[PipelineRow,
                                                                                           PipelineVersionRow]:
        with self._db.read() as session:
            pipeline = PIPELINES.get(session, project.id, pipeline_name)
            return pipeline, PIPELINE_VERSIONS.get(session, pipeline.id, version)

    def list_versions(self, project: ProjectRow, pipeline_name: str) -> tuple[PipelineRow, list[PipelineVersionRow]]:
        with self._db.read() as session:
            pipeline = PIPELINES.get(session, project.id, pipeline_name)
            rows = list(session.scalars(select(PipelineVersionRow).where(
                PipelineVersionRow.pipeline_id == pipeline.id).order_by(PipelineVersionRow.created_at)))
        return pipeline, rows

    def update_version(self, project: ProjectRow, pipeline_name: str, version: str,
                       fields: dict[str, Any]) -> PipelineVersionRow:
        """Change a version; new objects or attachments are validated together, as on create."""
        with self._db.write() as session:
            pipeline = PIPELINES.get(session, project.id, pipeline_name)
            row = PIPELINE_VERSIONS.get(session, pipeline.id, version)
            renamed_to = fields.get("version")
            if renamed_to is not None and renamed_to != row.name:
                if PIPELINE_VERSIONS.find(session, pipeline.id, check_version_name(renamed_to)) is not None:
                    raise Conflict(f"Pipeline '{pipeline_name}' already has a version '{renamed_to}'")
                # refused only when used by this name: a use of the default version is unchanged
                refuse_if_used(session, project.id, pipeline.name, row.name, action="renamed")
                row.name = renamed_to
            update_description_and_labels(row, fields)
            if fields.get("request_retention_mode") is not None:
                row.request_retention_mode = check_retention_mode(fields["request_retention_mode"])
            if fields.get("request_retention_time") is not None:
                row.request_retention_time = check_retention_time(fields["request_retention_time"])
            if fields.get("objects") is not None or fields.get("attachments") is not None:
                objects = fields["objects"] if fields.get("objects") is not None else row.objects
                attachments = fields["attachments"] if fields.get("attachments") is not None else row.attachments
                row.objects, row.attachments = self._validated(session, project.id, pipeline, objects, attachments)
            row.updated_at = utcnow()
        self._changed()
        return row

    def delete_version(self, project: ProjectRow, pipeline_name: str, version: str) -> list[str]:
        """Delete a version; returns the ids of its requests, for the caller to delete."""
        with self._db.write() as session:
            pipeline = PIPELINES.get(session, project.id, pipeline_name)
            row = PIPELINE_VERSIONS.get(session, pipeline.id, version)
            refuse_if_used(session, project.id, pipeline.name, row.name,
                           is_default=pipeline.default_version_id == row.id)
            request_ids = list(session.scalars(
                select(PipelineRequestRow.id).where(PipelineRequestRow.version_id == row.id)
            ))
            session.delete(row)
            if pipeline.default_version_id == row.id:
                pipeline.default_version_id = None
        self._changed()
        return request_ids

    # --- running ---------------------------------------------------------------------------

    def plan(self, project: ProjectRow, pipeline_name: str, version: str | None) -> Plan:
        """Resolve a version (None: the default one) for running. Cached; raises `NotFound`."""
        key = (project.id, pipeline_name, version)
        plan = self._plans.get(key)
        # One that cannot run is read again: it may have been completed through another node a
        # moment ago, whose message is on its way (a refusal costs a query; a run does not).
        if plan is None or plan.incomplete is not None:
            generation = self._generation
            plan = self._load_plan(project, pipeline_name, version)
            if generation == self._generation:  # no change raced the load
                self._plans[key] = plan
        return plan

    def _load_plan(self, project: ProjectRow, pipeline_name: str, version: str | None) -> Plan:
        with self._db.read() as session:
            pipeline = PIPELINES.get(session, project.id, pipeline_name)
            row = PIPELINE_VERSIONS.get_or_default(session, pipeline, version)
            return self._plan(session, project.id, pipeline, row)

    def plan_of_version(self, version_id: str) -> Plan:
        """The plan of a version by id (a queued batch request knows only that). Raises `NotFound`."""
        with self._db.read() as session:
            row = session.get(PipelineVersionRow, version_id)
            pipeline = session.get(PipelineRow, row.pipeline_id) if row else None
            if row is None or pipeline is None:
                raise NotFound("pipeline version", version_id)
            return self._plan(session, pipeline.project_id, pipeline, row)

    def _plan(self, session: Session, project_id: str, pipeline: PipelineRow, row: PipelineVersionRow) -> Plan:
        objects: dict[str, PipelineObject] = {}
        for obj in row.objects:
            spec = io_of(session, project_id, obj)
            objects[obj["name"]] = PipelineObject(obj["id"], obj["name"], obj["reference_type"], obj["reference_name"],
                                                  obj.get("version"), obj.get("configuration") or {}, spec)
        attachments = parse_attachments(row.attachments)
        sources: dict[str, list[Source]] = {}
        for destination, srcs in attachments:
            sources.setdefault(destination, []).extend(srcs)
        io, specs, incomplete = pipeline_io(pipeline), {n: o.io for n, o in objects.items()}, None
        try:
            order = check_graph(io, specs, attachments)
        except InvalidInput as exc:  # stored while being built up: it runs once it is complete
            order = check_graph(io, specs, attachments, complete=False)
            incomplete = f"Pipeline version '{row.name}' is incomplete: {exc.message}"
        return Plan(project_id, pipeline.id, pipeline.name, row.id, row.name, row.request_retention_mode,
                    io, objects, {d: tuple(s) for d, s in sources.items()}, order, incomplete)

    # --- validation ------------------------------------------------------------------------

    @staticmethod
    def _validated(session: Session, project_id: str, pipeline: PipelineRow, raw_objects: Any,
                   raw_attachments: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        objects, specs = check_objects(session, project_id, pipeline.name, raw_objects)
        parsed = parse_attachments(raw_attachments)
        # A version may be stored incomplete (created empty, then edited, as UbiOps users do); what
        # it holds must fit, and requests to it are refused until it is complete.
        check_graph(pipeline_io(pipeline), specs, parsed, complete=False)
        return objects, stored_attachments(parsed)

    @staticmethod
    def _refuse_unfitting(session: Session, project_id: str, pipeline: PipelineRow) -> None:
        """Raise `InvalidInput` when the new input or output of `pipeline` breaks the graph of one of its
        versions (a mapping from a field that is gone, say): the update would make it unrunnable."""
        for version in session.scalars(select(PipelineVersionRow).where(PipelineVersionRow.pipeline_id == pipeline.id)):
            try:
                specs = {obj["name"]: io_of(session, project_id, obj) for obj in version.objects}
            except InvalidInput:
                continue  # broken already (a deployment it refers to is gone), not by this update
            try:
                check_graph(pipeline_io(pipeline), specs, parse_attachments(version.attachments), complete=False)
            except InvalidInput as exc:
                raise InvalidInput(f"Version '{version.name}' would no longer be valid: {exc.message}") from None
