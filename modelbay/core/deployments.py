"""Deployments and their versions: what code runs, with which inputs, outputs and scaling."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select

from modelbay.core import bus as topics
from modelbay.core import environments
from modelbay.core.bus import Bus, Message
from modelbay.core.catalog import (
    DEPLOYMENTS,
    MAX_RETENTION_TIME,
    VERSIONS,
    check_description,
    check_labels,
    check_name,
    check_retention_mode,
    check_version_name,
    new_name,
    new_row_values,
    refuse_taken,
    update_description_and_labels,
)
from modelbay.core.clock import utcnow
from modelbay.core.environment_variables import effective
from modelbay.core.errors import Conflict, InvalidInput, NotFound, Unavailable
from modelbay.core.fields import check_definitions, check_io
from modelbay.store.db import Database
from modelbay.store.tables import DeploymentRow, ProjectRow, RequestRow, RevisionRow, VersionRow

#: Defaults a version gets for what its creator leaves out.
VERSION_DEFAULTS: dict[str, Any] = {
    "description": "",
    "labels": {},
    "instance_type": "512mb",
    "minimum_instances": 0,
    "maximum_instances": 5,
    "maximum_idle_time": 300,  # seconds an idle instance is kept above the minimum
    "request_retention_mode": "full",
    "request_retention_time": 604800,  # one week
    "maximum_queue_size_express": None,
    "maximum_queue_size_batch": None,
    "instance_processes": 1,
    "environment_variables": {},
    "handler": None,
}
VERSION_FIELDS = tuple(VERSION_DEFAULTS) + ("name", "environment")


@dataclass(frozen=True)
class Target:
    """A version resolved for serving: what the request path needs, cached in memory."""

    project_id: str
    project_name: str
    deployment_id: str
    deployment_name: str
    version_id: str
    version_name: str
    input_type: str
    output_type: str
    input_fields: tuple[dict[str, Any], ...]
    output_fields: tuple[dict[str, Any], ...]
    status: str
    retention_mode: str
    minimum_instances: int
    maximum_instances: int
    maximum_idle_time: int
    environment_variables: dict[str, Any]
    handler: str | None
    #: The built code it runs, None until a build succeeded: its revision and that revision's
    #: archive (each node unpacks it and makes its environment itself, `Revisions.materialise`).
    revision_id: str | None
    archive_key: str | None
    has_requests_method: bool
    instance_type: str = ""  # e.g. "2048mb": decides its instances' memory limit
    #: The instance pool serving it: None for the version's own pool, else a named group
    #: (a service) with its own scaling and environment.
    pool: str | None = None


class Deployments:
    """CRUD of deployments and versions. `on_version_changed` is told, on every node, when a version
    stops existing or its code or settings change; every node's cached targets go with any change."""

    def __init__(self, db: Database, bus: Bus, on_version_changed: Callable[[str], None] = lambda _vid: None) -> None:
        self._db = db
        self._bus = bus
        self._on_version_changed = on_version_changed
        self._targets: dict[tuple[str, str, str | None], Target] = {}
        self._generation = 0  # bumped on every change, so a load that raced a change is not cached
        bus.subscribe(topics.DEPLOYMENTS, self._changed_elsewhere)
        bus.subscribe(topics.VERSION, self._changed_elsewhere)
        bus.subscribe_resync(self._drop_targets)

    # --- deployments -----------------------------------------------------------------------

    def create(self, project: ProjectRow, fields: dict[str, Any]) -> DeploymentRow:
        name = check_name(fields.get("name"), "Deployment")
        row = DeploymentRow(project_id=project.id, name=name, **check_io(fields), **new_row_values(fields))
        with self._db.write() as session:
            refuse_taken(session, DEPLOYMENTS, project.id, name)
            session.add(row)
        return row

    def get(self, project: ProjectRow, name: str) -> DeploymentRow:
        with self._db.read() as session:
            return DEPLOYMENTS.get(session, project.id, name)

    def get_by_id(self, project: ProjectRow, deployment_id: str) -> DeploymentRow | None:
        """The project's deployment with this core id; None when it has none."""
        with self._db.read() as session:
            row = session.get(DeploymentRow, deployment_id)
        return row if row is not None and row.project_id == project.id else None

    def list_deployments(self, project: ProjectRow) -> list[DeploymentRow]:
        with self._db.read() as session:
            return DEPLOYMENTS.all(session, project.id)

    def update(self, project: ProjectRow, name: str, fields: dict[str, Any]) -> DeploymentRow:
        with self._db.write() as session:
            row = DEPLOYMENTS.get(session, project.id, name)
            row.name = new_name(session, DEPLOYMENTS, row, fields.get("name"))
            update_description_and_labels(row, fields)
            for key in ("input_fields", "output_fields"):
                if fields.get(key) is not None:
                    io_type = row.input_type if key == "input_fields" else row.output_type
                    if io_type != "structured":
                        raise InvalidInput(f"{key} can only be set on a structured deployment")
                    setattr(row, key, check_definitions(fields[key], key))
            if fields.get("default_version") is not None:
                row.default_version_id = VERSIONS.get(session, row.id, fields["default_version"]).id
            row.updated_at = utcnow()
        self.forget_targets()
        return row

    def delete(self, project: ProjectRow, name: str) -> None:
        with self._db.write() as session:
            row = DEPLOYMENTS.get(session, project.id, name)
            version_ids = list(session.scalars(select(VersionRow.id).where(VersionRow.deployment_id == row.id)))
            session.execute(delete(RequestRow).where(RequestRow.deployment_id == row.id))
            session.delete(row)
        self.forget_targets()
        for version_id in version_ids:
            self.version_changed(version_id)

    def default_version_name(self, deployment: DeploymentRow) -> str | None:
        with self._db.read() as session:
            return VERSIONS.default_name(session, deployment)

    # --- versions --------------------------------------------------------------------------

    def create_version(self, project: ProjectRow, deployment_name: str, fields: dict[str, Any]) -> VersionRow:
        values = {**VERSION_DEFAULTS, **{k: v for k, v in fields.items() if v is not None}}
        values["environment"] = values.get("environment") or environments.DEFAULT
        _check_version_values(values)
        now = utcnow()
        with self._db.write() as session:
            deployment = DEPLOYMENTS.get(session, project.id, deployment_name)
            if VERSIONS.find(session, deployment.id, values["name"]) is not None:
                raise Conflict(f"A version named '{values['name']}' already exists for this deployment")
            row = VersionRow(
                id=str(uuid.uuid4()),
                deployment_id=deployment.id,
                status="unavailable",
                created_at=now,
                updated_at=now,
                **{k: values[k] for k in VERSION_FIELDS},
            )
            session.add(row)
            if deployment.default_version_id is None:
                deployment.default_version_id = row.id
        self.forget_targets()
        return row

    def get_version(self, project: ProjectRow, deployment_name: str, version: str) -> VersionRow:
        with self._db.read() as session:
            deployment = DEPLOYMENTS.get(session, project.id, deployment_name)
            return VERSIONS.get(session, deployment.id, version)

    def version_by_id_start(self, deployment_id: str, start: str) -> VersionRow | None:
        """The version of the deployment with this core id whose own begins with `start`; None when
        it has none."""
        with self._db.read() as session:
            return session.scalar(select(VersionRow).where(
                VersionRow.deployment_id == deployment_id, VersionRow.id.startswith(start, autoescape=True),
            ).order_by(VersionRow.created_at).limit(1))

    def list_versions(self, project: ProjectRow, deployment_name: str) -> list[VersionRow]:
        with self._db.read() as session:
            deployment = DEPLOYMENTS.get(session, project.id, deployment_name)
            return list(
                session.scalars(
                    select(VersionRow).where(VersionRow.deployment_id == deployment.id).order_by(VersionRow.created_at)
                )
            )

    def update_version(
        self, project: ProjectRow, deployment_name: str, version: str, fields: dict[str, Any]
    ) -> VersionRow:
        with self._db.write() as session:
            deployment = DEPLOYMENTS.get(session, project.id, deployment_name)
            row = VERSIONS.get(session, deployment.id, version)
            values = {k: getattr(row, k) for k in VERSION_FIELDS}
            values.update({k: v for k, v in fields.items() if v is not None and k in VERSION_FIELDS})
            _check_version_values(values)
            if values["name"] != row.name and VERSIONS.find(session, deployment.id, values["name"]):
                raise Conflict(f"A version named '{values['name']}' already exists for this deployment")
            for key in VERSION_FIELDS:
                setattr(row, key, values[key])
            row.updated_at = utcnow()
        self.version_changed(row.id)
        return row

    def delete_version(self, project: ProjectRow, deployment_name: str, version: str) -> None:
        with self._db.write() as session:
            deployment = DEPLOYMENTS.get(session, project.id, deployment_name)
            row = VERSIONS.get(session, deployment.id, version)
            session.execute(delete(RequestRow).where(RequestRow.version_id == row.id))
            session.delete(row)
            if deployment.default_version_id == row.id:
                deployment.default_version_id = None
        self.version_changed(row.id)

    # --- serving ---------------------------------------------------------------------------

    def target(self, project: ProjectRow, deployment_name: str, version: str | None) -> Target:
        """Resolve the version a request goes to (`version` None: the default one). Cached.

        Raises `NotFound` for an unknown deployment or version.
        """
        return self._cached((project.id, deployment_name, version),
                            lambda: self._load_target(project, deployment_name, version))

    def target_of_version(self, version_id: str) -> Target:
        """The target of a version by id (queued requests know only that). Cached; raises `NotFound`."""

        def load() -> Target:
            with self._db.read() as session:
                row = session.get(VersionRow, version_id)
                deployment = session.get(DeploymentRow, row.deployment_id) if row else None
                project = session.get(ProjectRow, deployment.project_id) if deployment else None
            if row is None or deployment is None or project is None:
                raise NotFound("version", version_id)
            return self._load_target(project, deployment.name, row.name)

        return self._cached(("", version_id, None), load)

    def _cached(self, key: tuple[str, str, str | None], load: Callable[[], Target]) -> Target:
        target = self._targets.get(key)
        if target is None:
            generation = self._generation
            target = load()
            if generation == self._generation:  # no change raced the load
                self._targets[key] = target
        return target

    def serving_target(self, project: ProjectRow, deployment_name: str, version: str | None) -> Target:
        """Like `target`, but raises `Unavailable` unless the version has built code."""
        return self.serving_target_check(self.target(project, deployment_name, version))

    @staticmethod
    def serving_target_check(target: Target) -> Target:
        """Raises `Unavailable` unless the target has built code."""
        if target.revision_id is None:
            raise Unavailable(
                f"Version '{target.version_name}' of deployment '{target.deployment_name}' has no successfully "
                f"built code (status: {target.status})"
            )
        return target

    def versions_with_minimum_instances(self) -> list[str]:
        """Ids of the versions that keep instances running even when idle."""
        with self._db.read() as session:
            return list(session.scalars(select(VersionRow.id).where(VersionRow.minimum_instances > 0)))

    def forget_targets(self) -> None:
        """Drop cached targets on every node: a deployment or version changed (call it once committed)."""
        self._drop_targets()
        self._bus.publish(topics.DEPLOYMENTS)

    def version_changed(self, version_id: str) -> None:
        """On every node, drop cached targets and retire the instances of a version whose code or
        settings changed, or that is gone (call it once committed)."""
        self._drop_targets()
        self._on_version_changed(version_id)
        self._bus.publish(topics.VERSION, version_id)

    def _changed_elsewhere(self, message: Message) -> None:
        if message.from_here:  # done when it was sent
            return
        self._drop_targets()
        if message.topic == topics.VERSION:
            self._on_version_changed(message.payload)

    def _drop_targets(self) -> None:
        self._generation += 1
        self._targets.clear()

    def _load_target(self, project: ProjectRow, deployment_name: str, version: str | None) -> Target:
        with self._db.read() as session:
            deployment = DEPLOYMENTS.get(session, project.id, deployment_name)
            row = VERSIONS.get_or_default(session, deployment, version)
            revision = session.get(RevisionRow, row.active_revision_id) if row.active_revision_id else None
            variables = effective(session, project.id, deployment.id, row.id, row.environment_variables)
        return Target(
            project_id=project.id,
            project_name=project.name,
            deployment_id=deployment.id,
            deployment_name=deployment.name,
            version_id=row.id,
            version_name=row.name,
            input_type=deployment.input_type,
            output_type=deployment.output_type,
            input_fields=tuple(deployment.input_fields),
            output_fields=tuple(deployment.output_fields),
            status=row.status,
            retention_mode=row.request_retention_mode,
            minimum_instances=row.minimum_instances,
            maximum_instances=row.maximum_instances,
            maximum_idle_time=row.maximum_idle_time,
            environment_variables=variables,
            handler=row.handler,
            revision_id=revision.id if revision else None,
            archive_key=revision.archive_key if revision else None,
            has_requests_method=bool(revision and revision.has_requests_method),
            instance_type=row.instance_type,
        )


def _check_version_values(values: dict[str, Any]) -> None:
    """Raises `InvalidInput` naming the first version setting that is out of range."""
    check_version_name(values.get("name"))
    if values["environment"] not in environments.BUILT_IN:
        raise InvalidInput(
            f"Environment '{values['environment']}' does not exist; choose one of {', '.join(environments.BUILT_IN)}"
        )
    for key, low, high in (
        ("minimum_instances", 0, 100),
        ("maximum_instances", 1, 100),
        ("maximum_idle_time", 0, 86400 * 7),
        ("request_retention_time", 0, MAX_RETENTION_TIME),
        ("instance_processes", 1, 1),
    ):
        value = values[key]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise InvalidInput(f"{key} must be an integer from {low} to {high}")
    if values["minimum_instances"] > values["maximum_instances"]:
        raise InvalidInput("minimum_instances may not exceed maximum_instances")
    check_retention_mode(values["request_retention_mode"])
    check_description(values["description"])
    check_labels(values["labels"])
