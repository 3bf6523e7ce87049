"""What deployments and pipelines, and their versions, have in common: how they are named and
found by name, and the attributes both check the same way (description, labels, retention)."""

from __future__ import annotations

import re
import uuid
from typing import Any, Generic, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import InstrumentedAttribute, Session

from modelbay.core.clock import utcnow
from modelbay.core.errors import Conflict, InvalidInput, NotFound
from modelbay.store.tables import DeploymentRow, PipelineRow, PipelineVersionRow, VersionRow

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}[a-z0-9]$|^[a-z0-9]$")
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RETENTION_MODES = ("none", "metadata", "full")
MAX_DESCRIPTION = 400
MAX_RETENTION_TIME = 86400 * 365  # seconds

Row = TypeVar("Row", DeploymentRow, VersionRow, PipelineRow, PipelineVersionRow)


class NamedRows(Generic[Row]):
    """Rows whose name is unique within their owner (a project's deployments, a pipeline's versions)."""

    def __init__(self, table: type[Row], owner: InstrumentedAttribute[str], kind: str) -> None:
        self._table = table
        self._owner = owner  # the column holding the owner's id
        self.kind = kind  # what `NotFound` calls one

    def find(self, session: Session, owner_id: str, name: str) -> Row | None:
        return session.scalar(select(self._table).where(self._owner == owner_id, self._table.name == name))

    def get(self, session: Session, owner_id: str, name: str) -> Row:
        """Like `find`, but raises `NotFound`."""
        row = self.find(session, owner_id, name)
        if row is None:
            raise NotFound(self.kind, name)
        return row

    def all(self, session: Session, owner_id: str) -> list[Row]:
        """The owner's rows, by name."""
        return list(session.scalars(select(self._table).where(self._owner == owner_id).order_by(self._table.name)))


class NamedVersions(NamedRows[Row]):
    """The versions of a deployment or pipeline (`owner_kind`), one of which may be its default."""

    def __init__(self, table: type[Row], owner: InstrumentedAttribute[str], kind: str, owner_kind: str) -> None:
        super().__init__(table, owner, kind)
        self.owner_kind = owner_kind

    def get_or_default(self, session: Session, owner: DeploymentRow | PipelineRow, name: str | None) -> Row:
        """The version of `owner` named `name`, or its default one when `name` is None. Raises `NotFound`."""
        if name is not None:
            return self.get(session, owner.id, name)
        row = session.get(self._table, owner.default_version_id) if owner.default_version_id else None
        if row is None:
            raise NotFound(f"default version of {self.owner_kind}", owner.name)
        return row

    def default_name(self, session: Session, owner: DeploymentRow | PipelineRow) -> str | None:
        if owner.default_version_id is None:
            return None
        return session.scalar(select(self._table.name).where(self._table.id == owner.default_version_id))


DEPLOYMENTS = NamedRows(DeploymentRow, DeploymentRow.project_id, "deployment")
VERSIONS = NamedVersions(VersionRow, VersionRow.deployment_id, "version", "deployment")
PIPELINES = NamedRows(PipelineRow, PipelineRow.project_id, "pipeline")
PIPELINE_VERSIONS = NamedVersions(PipelineVersionRow, PipelineVersionRow.pipeline_id, "pipeline version", "pipeline")


def refuse_taken(session: Session, rows: NamedRows[Any], project_id: str, name: str) -> None:
    """Raise `Conflict` when the project has a deployment or pipeline (`rows`) named `name`."""
    if rows.find(session, project_id, name) is not None:
        raise Conflict(f"A {rows.kind} named '{name}' already exists in this project")


def new_name(session: Session, rows: NamedRows[Any], row: DeploymentRow | PipelineRow, value: Any) -> str:
    """The name an update gives a deployment or pipeline (`value`; None: unchanged), checked
    as on create. Raises `InvalidInput` or `Conflict`."""
    if value is None or value == row.name:
        return row.name
    refuse_taken(session, rows, row.project_id, check_name(value, rows.kind.capitalize()))
    return value


def new_row_values(fields: dict[str, Any]) -> dict[str, Any]:
    """A new row's id and times, with the description and labels `fields` give, checked."""
    now = utcnow()
    return {
        "id": str(uuid.uuid4()),
        "description": check_description(fields.get("description")),
        "labels": check_labels(fields.get("labels")),
        "created_at": now,
        "updated_at": now,
    }


def check_name(value: Any, noun: str) -> str:
    """The name of a deployment or pipeline (`noun`); raises `InvalidInput` unless it fits the pattern."""
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise InvalidInput(f"{noun} name must be 1-64 lowercase letters, digits and dashes, "
                           "starting and ending with a letter or digit")
    return value


def check_version_name(value: Any) -> str:
    if not isinstance(value, str) or not VERSION_PATTERN.match(value):
        raise InvalidInput("version must be 1-64 letters, digits, dots, dashes or underscores")
    return value


def check_description(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
        raise InvalidInput(f"description must be a string of at most {MAX_DESCRIPTION} characters")
    return value


def check_labels(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise InvalidInput("labels must be an object of string keys and values")
    return value


def update_description_and_labels(row: Any, fields: dict[str, Any]) -> None:
    """Set the description and labels an update gives (None: unchanged), checked."""
    if fields.get("description") is not None:
        row.description = check_description(fields["description"])
    if fields.get("labels") is not None:
        row.labels = check_labels(fields["labels"])


def check_retention_mode(value: Any) -> str:
    if value not in RETENTION_MODES:
        raise InvalidInput(f"request_retention_mode must be one of {', '.join(RETENTION_MODES)}")
    return value


def check_retention_time(value: Any) -> int:
    """Seconds a version keeps its finished requests."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_RETENTION_TIME:
        raise InvalidInput(f"request_retention_time must be an integer from 0 to {MAX_RETENTION_TIME}")
    return value
