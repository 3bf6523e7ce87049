"""Pipelines and their versions: a DAG of objects (deployments, operators, sub-pipelines)
joined by attachments with field mappings, from `pipeline_start` to `pipeline_end`.

A version is validated as a whole when it is stored (`check_graph`), so a pipeline request
never meets an unknown object, a cycle or a mapping between mismatched fields. It may be stored
incomplete (an object off the path from start to end, an input not fed: built up step by step);
requests to it are refused with a 400 naming what is missing until it is complete.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from modelbay.core import operators
from modelbay.core.clock import utcnow
from modelbay.core.deployments import NAME_PATTERN, RETENTION_MODES, VERSION_PATTERN, _description, _labels
from modelbay.core.errors import Conflict, InvalidInput, NotFound
from modelbay.core.fields import IO_TYPES, check_definitions
from modelbay.core.operators import Io
from modelbay.store.db import Database
from modelbay.store.tables import (
    DeploymentRow,
    PipelineRequestRow,
    PipelineRow,
    PipelineVersionRow,
    ProjectRow,
    VersionRow,
)

START = "pipeline_start"
END = "pipeline_end"
REFERENCE_TYPES = ("deployment", "operator", "pipeline")

#: Most objects one pipeline version may hold.
MAX_OBJECTS = 200

#: How deep sub-pipelines may nest.
MAX_DEPTH = 10


@dataclass(frozen=True)
class Source:
    name: str
    mapping: tuple[tuple[str, str], ...]  # (source field, destination field); empty: a trigger only


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


def pipeline_io(row: PipelineRow) -> Io:
    return Io(row.input_type, tuple(row.input_fields), row.output_type, tuple(row.output_fields))


def check_graph(io: Io, objects: dict[str, Io], attachments: list[tuple[str, list[Source]]],
                complete: bool = True) -> tuple[str, ...]:
    """Validate the DAG: known names, matching fields, no cycle, and (when `complete`) every object
    on a path from start to end with every structured input fed. Returns the objects in topological
    order; raises `InvalidInput` naming the object and field at fault."""
    inputs_of: dict[str, dict[str, str]] = {name: {f["name"]: f["data_type"] for f in spec.input_fields}
                                             for name, spec in objects.items()}
    inputs_of[END] = {f["name"]: f["data_type"] for f in io.output_fields}
    outputs_of: dict[str, dict[str, str]] = {name: {f["name"]: f["data_type"] for f in spec.output_fields}
                                              for name, spec in objects.items()}
    outputs_of[START] = {f["name"]: f["data_type"] for f in io.input_fields}
    type_in = {name: spec.input_type for name, spec in objects.items()} | {END: io.output_type}
    type_out = {name: spec.output_type for name, spec in objects.items()} | {START: io.input_type}
    edges: dict[str, set[str]] = {name: set() for name in [START, *objects]}
    for destination, sources in attachments:
        if destination == START:
            raise InvalidInput("pipeline_start cannot be the destination of an attachment")
        if destination not in inputs_of:
            raise InvalidInput(f"Attachment destination '{destination}' is not an object of this version")
        for source in sources:
            if source.name == END:
                raise InvalidInput("pipeline_end cannot be the source of an attachment")
            if source.name not in outputs_of:
                raise InvalidInput(f"Attachment source '{source.name}' (to '{destination}') is not an object "
                                   "of this version")
            if source.name == destination:
                raise InvalidInput(f"Object '{destination}' is attached to itself")
            if type_in[destination] != type_out[source.name] and (
                type_in[destination] == "plain" or (type_out[source.name] == "plain" and source.mapping)
            ):
                raise InvalidInput(f"Object '{source.name}' gives {type_out[source.name]} output, but "
                                   f"'{destination}' takes {type_in[destination]} input")
            for source_field, destination_field in source.mapping:
                given = outputs_of[source.name].get(source_field)
                wanted = inputs_of[destination].get(destination_field)
                if given is None:
                    raise InvalidInput(f"Object '{source.name}' has no output field '{source_field}' "
                                       f"(mapped to '{destination}')")
                if wanted is None:
                    raise InvalidInput(f"Object '{destination}' has no input field '{destination_field}' "
                                       f"(mapped from '{source.name}')")
                if given != wanted:
                    raise InvalidInput(f"Field '{source_field}' of '{source.name}' is {given}, but field "
                                       f"'{destination_field}' of '{destination}' is {wanted}")
            edges[source.name].add(destination)
    # a cycle, found by Kahn's algorithm
    indegree = {name: 0 for name in [START, *objects]}
    for targets in edges.values():
        for target in targets:
            if target in indegree:
                indegree[target] += 1
    ready = sorted(name for name, n in indegree.items() if n == 0)
    order: list[str] = []
    while ready:
        name = ready.pop()
        order.append(name)
        for target in sorted(edges.get(name, ())):
            if target in indegree:
                indegree[target] -= 1
                if indegree[target] == 0:
                    ready.append(target)
    order.remove(START)
    if len(order) < len(objects):
        cyclic = sorted(name for name, n in indegree.items() if n > 0)
        raise InvalidInput(f"The attachments form a cycle through object '{cyclic[0]}'")
    if not complete:
        return tuple(order)
    # reachable from start, and reaching end
    reached = _reach(START, edges)
    for name in objects:
        if name not in reached:
            raise InvalidInput(f"Object '{name}' cannot be reached from pipeline_start")
    back: dict[str, set[str]] = {}
    for source, targets in edges.items():
        for target in targets:
            back.setdefault(target, set()).add(source)
    reaching_end = _reach(END, back)
    for name in objects:
        if name not in reaching_end:
            raise InvalidInput(f"Object '{name}' has no path to pipeline_end")
    if END not in reached:
        raise InvalidInput("pipeline_end cannot be reached from pipeline_start")
    # every field of a structured input must be fed by some mapping
    fed: dict[str, set[str]] = {}
    for destination, sources in attachments:
        for source in sources:
            fed.setdefault(destination, set()).update(d for _, d in source.mapping)
    for destination, fields in fed.items():
        missing = [f for f in inputs_of[destination] if f not in fields]
        if missing and type_in[destination] == "structured":
            raise InvalidInput(f"Input field '{missing[0]}' of '{destination}' receives no data from any attachment")
    return tuple(order)


def _reach(start: str, edges: dict[str, set[str]]) -> set[str]:
    seen = {start}
    stack = [start]
    while stack:
        for nxt in edges.get(stack.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def parse_attachments(raw: Any) -> list[tuple[str, list[Source]]]:
    """The attachments of a version body, checked for shape; raises `InvalidInput`."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidInput("attachments must be a list")
    result = []
    for i, attachment in enumerate(raw):
        if not isinstance(attachment, dict) or not isinstance(attachment.get("destination_name"), str):
            raise InvalidInput(f"attachments[{i}] needs a 'destination_name'")
        sources = attachment.get("sources")
        if not isinstance(sources, list) or not sources:
            raise InvalidInput(f"attachments[{i}] (to '{attachment['destination_name']}') needs a list of sources")
        parsed = []
        for source in sources:
            if not isinstance(source, dict) or not isinstance(source.get("source_name"), str):
                raise InvalidInput(f"attachments[{i}]: every source needs a 'source_name'")
            mapping = source.get("mapping") or []
            if not isinstance(mapping, list):
                raise InvalidInput(f"attachments[{i}]: mapping must be a list")
            pairs = []
            for m in mapping:
                if not isinstance(m, dict) or not isinstance(m.get("source_field_name"), str) or not isinstance(
                    m.get("destination_field_name"), str
                ):
                    raise InvalidInput(f"attachments[{i}]: every mapping needs 'source_field_name' and "
                                       "'destination_field_name'")
                pairs.append((m["source_field_name"], m["destination_field_name"]))
            parsed.append(Source(source["source_name"], tuple(pairs)))
        result.append((attachment["destination_name"], parsed))
    return result


class Pipelines:
    """CRUD of pipelines and their versions, and their resolution into plans."""

    def __init__(self, db: Database) -> None:
        self._db = db
        # Plans by (project id, pipeline, version or None), dropped on every pipeline change. A
        # deployment change needs no drop: steps resolve their deployment version when they run.
        self._plans: dict[tuple[str, str, str | None], Plan] = {}
        self._generation = 0

    def _changed(self) -> None:
        self._generation += 1
        self._plans.clear()

    # --- pipelines -------------------------------------------------------------------------

    def create(self, project: ProjectRow, fields: dict[str, Any]) -> PipelineRow:
        name = fields.get("name")
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise InvalidInput("Pipeline name must be 1-64 lowercase letters, digits and dashes, "
                               "starting and ending with a letter or digit")
        input_type = fields.get("input_type") or "structured"
        output_type = fields.get("output_type") or "structured"
        for key, value in (("input_type", input_type), ("output_type", output_type)):
            if value not in IO_TYPES:
                raise InvalidInput(f"{key} must be 'structured' or 'plain', not {value!r}")
        now = utcnow()
        row = PipelineRow(
            id=str(uuid.uuid4()),
            project_id=project.id,
            name=name,
            description=_description(fields.get("description")),
            input_type=input_type,
            output_type=output_type,
            input_fields=check_definitions(fields.get("input_fields"), "input_fields")
            if input_type == "structured" else [],
            output_fields=check_definitions(fields.get("output_fields"), "output_fields")
            if output_type == "structured" else [],
            labels=_labels(fields.get("labels")),
            created_at=now,
            updated_at=now,
        )
        with self._db.write() as session:
            if self._find(session, project.id, name) is not None:
                raise Conflict(f"A pipeline named '{name}' already exists in this project")
            session.add(row)
        self._changed()
        return row

    def get(self, project: ProjectRow, name: str) -> PipelineRow:
        with self._db.read() as session:
            return self._get(session, project.id, name)

    def list_pipelines(self, project: ProjectRow) -> list[PipelineRow]:
        with self._db.read() as session:
            return list(session.scalars(
                select(PipelineRow).where(PipelineRow.project_id == project.id).order_by(PipelineRow.name)
            ))

    def update(self, project: ProjectRow, name: str, fields: dict[str, Any]) -> PipelineRow:
        """Rename, describe, relabel, change fields or the default version. Raises as `create`."""
        with self._db.write() as session:
            row = self._get(session, project.id, name)
            new_name = fields.get("name")
            if new_name is not None and new_name != row.name:
                if not isinstance(new_name, str) or not NAME_PATTERN.match(new_name):
                    raise InvalidInput("Pipeline name must be 1-64 lowercase letters, digits and dashes")
                if self._find(session, project.id, new_name) is not None:
                    raise Conflict(f"A pipeline named '{new_name}' already exists in this project")
                # sub-pipelines are referred to by name: a rename would break the versions using it
                self._refuse_if_used(session, project.id, row.name, action="renamed")
                row.name = new_name
            if fields.get("description") is not None:
                row.description = _description(fields["description"])
            if fields.get("labels") is not None:
                row.labels = _labels(fields["labels"])
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
                version = self._find_version(session, row.id, fields["default_version"])
                if version is None:
                    raise NotFound("pipeline version", fields["default_version"])
                row.default_version_id = version.id
            row.updated_at = utcnow()
        self._changed()
        return row

    def delete(self, project: ProjectRow, name: str) -> list[str]:
        """Delete a pipeline with its versions; returns the ids of its requests, for the caller to delete."""
        with self._db.write() as session:
            row = self._get(session, project.id, name)
            self._refuse_if_used(session, project.id, row.name)
            request_ids = list(session.scalars(
                select(PipelineRequestRow.id).where(PipelineRequestRow.pipeline_id == row.id)
            ))
            session.execute(delete(PipelineVersionRow).where(PipelineVersionRow.pipeline_id == row.id))
            session.delete(row)
        self._changed()
        return request_ids

    def default_version_name(self, row: PipelineRow) -> str | None:
        if row.default_version_id is None:
            return None
        with self._db.read() as session:
            return session.scalar(select(PipelineVersionRow.name).where(
                PipelineVersionRow.id == row.default_version_id))

    # --- versions --------------------------------------------------------------------------

    def create_version(self, project: ProjectRow, pipeline_name: str, fields: dict[str, Any]) -> PipelineVersionRow:
        """Validate and store a version with its objects and attachments; the first becomes the default.

        Raises `InvalidInput` naming the object and field at fault; then nothing is stored.
        """
        name = fields.get("version")
        if not isinstance(name, str) or not VERSION_PATTERN.match(name):
            raise InvalidInput("version must be 1-64 letters, digits, dots, dashes or underscores")
        retention_mode = fields.get("request_retention_mode") or "full"
        if retention_mode not in RETENTION_MODES:
            raise InvalidInput(f"request_retention_mode must be one of {', '.join(RETENTION_MODES)}")
        retention_time = fields.get("request_retention_time")
        retention_time = 604800 if retention_time is None else retention_time
        if not isinstance(retention_time, int) or isinstance(retention_time, bool) or not (
            0 <= retention_time <= 86400 * 365
        ):
            raise InvalidInput("request_retention_time must be an integer from 0 to 31536000")
        now = utcnow()
        with self._db.write() as session:
            pipeline = self._get(session, project.id, pipeline_name)
            if self._find_version(session, pipeline.id, name) is not None:
                raise Conflict(f"Pipeline '{pipeline_name}' already has a version '{name}'")
            objects, attachments = self._validated(session, project.id, pipeline, fields.get("objects"),
                                                   fields.get("attachments"))
            row = PipelineVersionRow(
                id=str(uuid.uuid4()),
                pipeline_id=pipeline.id,
                name=name,
                description=_description(fields.get("description")),
                labels=_labels(fields.get("labels")),
                request_retention_mode=retention_mode,
                request_retention_time=retention_time,
                objects=objects,
                attachments=attachments,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            if pipeline.default_version_id is None:
                pipeline.default_version_id = row.id
        self._changed()
        return row

    def get_version(self, project: ProjectRow, pipeline_name: str, version: str) -> tuple[PipelineRow,
                                                                                           PipelineVersionRow]:
        with self._db.read() as session:
            pipeline = self._get(session, project.id, pipeline_name)
            return pipeline, self._get_version(session, pipeline.id, version)

    def list_versions(self, project: ProjectRow, pipeline_name: str) -> tuple[PipelineRow, list[PipelineVersionRow]]:
        with self._db.read() as session:
            pipeline = self._get(session, project.id, pipeline_name)
            rows = list(session.scalars(select(PipelineVersionRow).where(
                PipelineVersionRow.pipeline_id == pipeline.id).order_by(PipelineVersionRow.created_at)))
        return pipeline, rows

    def update_version(self, project: ProjectRow, pipeline_name: str, version: str,
                       fields: dict[str, Any]) -> PipelineVersionRow:
        """Change a version; new objects or attachments are validated together, as on create."""
        with self._db.write() as session:
            pipeline = self._get(session, project.id, pipeline_name)
            row = self._get_version(session, pipeline.id, version)
            new_name = fields.get("version")
            if new_name is not None and new_name != row.name:
                if not isinstance(new_name, str) or not VERSION_PATTERN.match(new_name):
                    raise InvalidInput("version must be 1-64 letters, digits, dots, dashes or underscores")
                if self._find_version(session, pipeline.id, new_name) is not None:
                    raise Conflict(f"Pipeline '{pipeline_name}' already has a version '{new_name}'")
                # refused only when used by this name: a use of the default version is unchanged
                self._refuse_if_used(session, project.id, pipeline.name, row.name, action="renamed")
                row.name = new_name
            if fields.get("description") is not None:
                row.description = _description(fields["description"])
            if fields.get("labels") is not None:
                row.labels = _labels(fields["labels"])
            if fields.get("request_retention_mode") is not None:
                if fields["request_retention_mode"] not in RETENTION_MODES:
                    raise InvalidInput(f"request_retention_mode must be one of {', '.join(RETENTION_MODES)}")
                row.request_retention_mode = fields["request_retention_mode"]
            if fields.get("request_retention_time") is not None:
                value = fields["request_retention_time"]
                if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 86400 * 365:
                    raise InvalidInput("request_retention_time must be an integer from 0 to 31536000")
                row.request_retention_time = value
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
            pipeline = self._get(session, project.id, pipeline_name)
            row = self._get_version(session, pipeline.id, version)
            self._refuse_if_used(session, project.id, pipeline.name, row.name,
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
        if plan is None:
            generation = self._generation
            plan = self._load_plan(project, pipeline_name, version)
            if generation == self._generation:  # no change raced the load
                self._plans[key] = plan
        return plan

    def _load_plan(self, project: ProjectRow, pipeline_name: str, version: str | None) -> Plan:
        with self._db.read() as session:
            pipeline = self._get(session, project.id, pipeline_name)
            if version is None:
                if pipeline.default_version_id is None:
                    raise NotFound("default version of pipeline", pipeline_name)
                row = session.get(PipelineVersionRow, pipeline.default_version_id)
                if row is None:
                    raise NotFound("default version of pipeline", pipeline_name)
            else:
                row = self._get_version(session, pipeline.id, version)
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
            spec = self._io_of(session, project_id, obj)
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

    def _validated(self, session: Session, project_id: str, pipeline: PipelineRow, raw_objects: Any,
                   raw_attachments: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
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
                self._refuse_containing(session, project_id, pipeline.name, reference_name, version, name)
            specs[name] = self._io_of(session, project_id, obj)
            objects.append(obj)
        parsed = parse_attachments(raw_attachments)
        # A version may be stored incomplete (created empty, then edited, as UbiOps users do); what
        # it holds must fit, and requests to it are refused until it is complete.
        check_graph(pipeline_io(pipeline), specs, parsed, complete=False)
        attachments = [
            {
                "id": str(uuid.uuid4()),
                "destination_name": destination,
                "sources": [
                    {"source_name": s.name,
                     "mapping": [{"source_field_name": a, "destination_field_name": b} for a, b in s.mapping]}
                    for s in sources
                ],
            }
            for destination, sources in parsed
        ]
        return objects, attachments

    def _refuse_unfitting(self, session: Session, project_id: str, pipeline: PipelineRow) -> None:
        """Raise `InvalidInput` when the new input or output of `pipeline` breaks the graph of one of its
        versions (a mapping from a field that is gone, say): the update would make it unrunnable."""
        for version in session.scalars(select(PipelineVersionRow).where(PipelineVersionRow.pipeline_id == pipeline.id)):
            try:
                specs = {obj["name"]: self._io_of(session, project_id, obj) for obj in version.objects}
            except InvalidInput:
                continue  # broken already (a deployment it refers to is gone), not by this update
            try:
                check_graph(pipeline_io(pipeline), specs, parse_attachments(version.attachments), complete=False)
            except InvalidInput as exc:
                raise InvalidInput(f"Version '{version.name}' would no longer be valid: {exc.message}") from None

    def _io_of(self, session: Session, project_id: str, obj: dict[str, Any]) -> Io:
        kind, ref, name = obj["reference_type"], obj["reference_name"], obj["name"]
        if kind == "operator":
            return operators.io(ref, obj.get("configuration"), name)
        if kind == "deployment":
            deployment = session.scalar(select(DeploymentRow).where(
                DeploymentRow.project_id == project_id, DeploymentRow.name == ref))
            if deployment is None:
                raise InvalidInput(f"Object '{name}' refers to deployment '{ref}', which does not exist")
            version_id = deployment.default_version_id
            if obj.get("version") is not None:
                version_id = session.scalar(select(VersionRow.id).where(
                    VersionRow.deployment_id == deployment.id, VersionRow.name == obj["version"]))
            if version_id is None:
                what = f"version '{obj['version']}'" if obj.get("version") else "a default version"
                raise InvalidInput(f"Object '{name}' refers to deployment '{ref}', which has no {what}")
            return Io(deployment.input_type, tuple(deployment.input_fields), deployment.output_type,
                      tuple(deployment.output_fields))
        sub = self._find(session, project_id, ref)
        if sub is None:
            raise InvalidInput(f"Object '{name}' refers to pipeline '{ref}', which does not exist")
        if (self._find_version(session, sub.id, obj["version"]) if obj.get("version") else
                sub.default_version_id) is None:
            raise InvalidInput(f"Object '{name}' refers to pipeline '{ref}', which has no "
                               + (f"version '{obj['version']}'" if obj.get("version") else "default version"))
        return pipeline_io(sub)

    def _refuse_containing(self, session: Session, project_id: str, this: str, ref: str, version: str | None,
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
            sub = self._find(session, project_id, name)
            if sub is None:
                continue  # reported as unknown by `_io_of`
            row = (self._find_version(session, sub.id, ver) if ver else
                   session.get(PipelineVersionRow, sub.default_version_id) if sub.default_version_id else None)
            for obj in row.objects if row else []:
                if obj["reference_type"] == "pipeline":
                    stack.append((obj["reference_name"], obj.get("version"), depth + 1))

    def _refuse_if_used(self, session: Session, project_id: str, name: str,
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

    # --- lookups ---------------------------------------------------------------------------

    @staticmethod
    def _find(session: Session, project_id: str, name: str) -> PipelineRow | None:
        return session.scalar(select(PipelineRow).where(PipelineRow.project_id == project_id,
                                                        PipelineRow.name == name))

    def _get(self, session: Session, project_id: str, name: str) -> PipelineRow:
        row = self._find(session, project_id, name)
        if row is None:
            raise NotFound("pipeline", name)
        return row

    @staticmethod
    def _find_version(session: Session, pipeline_id: str, name: str) -> PipelineVersionRow | None:
        return session.scalar(select(PipelineVersionRow).where(PipelineVersionRow.pipeline_id == pipeline_id,
                                                               PipelineVersionRow.name == name))

    def _get_version(self, session: Session, pipeline_id: str, name: str) -> PipelineVersionRow:
        row = self._find_version(session, pipeline_id, name)
        if row is None:
            raise NotFound("pipeline version", name)
        return row

