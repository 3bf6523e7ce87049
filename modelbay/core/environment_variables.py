"""Environment variables of a project, a deployment or a version.

A version's instances get the project's variables, then its deployment's, then its own: a variable
of the same name at a more specific level wins (`effective`). The lists of a deployment and of a
version show the variables they inherit that none of theirs hides. A secret variable's value
reaches the instances, never a reader. A change restarts the instances of every version it
reaches, as a change of a version's settings does; a change of the variable naming the
deployment file (`builds.DEPLOYMENT_FILE_VARIABLE`) also lets a failed build of it run again.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelbay.core.builds import DEPLOYMENT_FILE_VARIABLE
from modelbay.core.catalog import DEPLOYMENTS, VERSIONS
from modelbay.core.clock import utcnow
from modelbay.core.errors import Conflict, InvalidInput, NotFound
from modelbay.core.hooks import Hook
from modelbay.store.db import Database
from modelbay.store.tables import DeploymentRow, EnvironmentVariableRow, ProjectRow, VersionRow

#: What a process environment takes as a name: a letter or underscore, then letters, digits, underscores.
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_NAME = 64

#: Levels, from the least specific.
PROJECT, DEPLOYMENT, VERSION = "project", "deployment", "version"


@dataclass(frozen=True)
class Scope:
    """Where variables are read or written: a project, one of its deployments, or one of its versions."""

    project: ProjectRow
    deployment: str | None = None
    version: str | None = None


@dataclass(frozen=True)
class Variable:
    """A variable as a reader sees it: `value` None for a secret one."""

    id: str
    name: str
    value: str | None
    secret: bool
    #: Where an inherited variable is defined, as (level, name of the project or deployment); None
    #: for a variable of the scope read.
    inherited_from: tuple[str, str] | None = None


@dataclass(frozen=True)
class _Resolved:
    """A scope's rows: the ids of its project, deployment and version (the last two None above them)."""

    project: ProjectRow
    deployment: DeploymentRow | None
    version: VersionRow | None

    @property
    def scope_id(self) -> str:
        return (self.version or self.deployment or self.project).id

    @property
    def level(self) -> str:
        return VERSION if self.version else DEPLOYMENT if self.deployment else PROJECT


def _visible(row: EnvironmentVariableRow, inherited_from: tuple[str, str] | None = None) -> Variable:
    return Variable(row.id, row.name, None if row.secret else row.value, row.secret, inherited_from)


def check_name(value: Any) -> str:
    """Raises `InvalidInput` unless `value` may name an environment variable."""
    if not isinstance(value, str) or not value:
        raise InvalidInput("name is required")
    if len(value) > MAX_NAME:
        raise InvalidInput(f"Environment variable name '{value[:MAX_NAME]}…' is longer than {MAX_NAME} characters")
    if not NAME_PATTERN.match(value):
        raise InvalidInput(f"Environment variable name '{value}' is invalid: it must start with a letter or an "
                           "underscore and contain only letters, digits and underscores")
    return value


def _check_value(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidInput("value is required and must be a string")
    return value


def _check_secret(value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput("secret must be true or false")
    return value


def effective(session: Session, project_id: str, deployment_id: str, version_id: str,
              own: dict[str, Any] | None = None) -> dict[str, Any]:
    """The variables a version's instances get: the project's, then the deployment's, then `own`
    (what the version holds itself: ABEJA user parameters), then the version's; later wins."""
    rows = session.scalars(select(EnvironmentVariableRow).where(
        EnvironmentVariableRow.scope_id.in_((project_id, deployment_id, version_id))))
    by_scope: dict[str, dict[str, str]] = {}
    for row in rows:
        by_scope.setdefault(row.scope_id, {})[row.name] = row.value
    return {
        **by_scope.get(project_id, {}),
        **by_scope.get(deployment_id, {}),
        **(own or {}),
        **by_scope.get(version_id, {}),
    }


class EnvironmentVariables:
    """CRUD of variables at the three levels. `version_changed` is told, once committed, of every
    version whose variables changed (it restarts their instances on every node)."""

    def __init__(self, db: Database, version_changed: Callable[[str], None]) -> None:
        self._db = db
        self._version_changed = version_changed
        #: Told, once committed, the ids of the versions whose deployment file variable changed.
        self.deployment_file_changed: Hook[[list[str]]] = Hook("environment variables: deployment file changed")

    # --- reading ---------------------------------------------------------------------------

    def list_variables(self, scope: Scope) -> list[Variable]:
        """The scope's own variables, then those it inherits that none of its own hides, by name."""
        with self._db.read() as session:
            resolved = _resolve(session, scope)
            levels = [(PROJECT, resolved.project.id, resolved.project.name)]
            if resolved.deployment is not None:
                levels.append((DEPLOYMENT, resolved.deployment.id, resolved.deployment.name))
            if resolved.version is not None:
                levels.append((VERSION, resolved.version.id, resolved.version.name))
            rows = list(session.scalars(select(EnvironmentVariableRow).where(
                EnvironmentVariableRow.scope_id.in_([scope_id for _, scope_id, _ in levels]))))
        found: dict[str, Variable] = {}
        for level, scope_id, name in levels:  # least specific first: a more specific one replaces it
            inherited_from = None if scope_id == resolved.scope_id else (level, name)
            for row in rows:
                if row.scope_id == scope_id:
                    found[row.name] = _visible(row, inherited_from)
        return sorted(found.values(), key=lambda v: (v.inherited_from is not None, v.name))

    def get(self, scope: Scope, key: str) -> Variable:
        """A variable of the scope itself, by id or by name; raises `NotFound`."""
        with self._db.read() as session:
            return _visible(_own(session, _resolve(session, scope), key))

    # --- writing ---------------------------------------------------------------------------

    def create(self, scope: Scope, fields: dict[str, Any]) -> Variable:
        """Raises `InvalidInput` for a bad name or value, `Conflict` when the scope has one of that name."""
        name, value = check_name(fields.get("name")), _check_value(fields.get("value"))
        secret = _check_secret(fields.get("secret", False))
        now = utcnow()
        with self._db.write() as session:
            resolved = _resolve(session, scope)
            _refuse_taken(session, resolved, name)
            row = _new_row(resolved, name, value, secret, now)
            session.add(row)
            versions = _versions_reached(session, resolved)
        self._changed(versions, {name})
        return _visible(row)

    def update(self, scope: Scope, key: str, fields: dict[str, Any]) -> Variable:
        """Rename, revalue or change whether it is secret; what is left out stays. Raises as `create`."""
        with self._db.write() as session:
            resolved = _resolve(session, scope)
            row = _own(session, resolved, key)
            names = {row.name}
            if fields.get("name") is not None and fields["name"] != row.name:
                name = check_name(fields["name"])
                _refuse_taken(session, resolved, name)
                row.name = name
            if fields.get("value") is not None:
                row.value = _check_value(fields["value"])
            if fields.get("secret") is not None:
                row.secret = _check_secret(fields["secret"])
            row.updated_at = utcnow()
            names.add(row.name)
            versions = _versions_reached(session, resolved)
        self._changed(versions, names)
        return _visible(row)

    def delete(self, scope: Scope, key: str) -> None:
        with self._db.write() as session:
            resolved = _resolve(session, scope)
            row = _own(session, resolved, key)
            session.delete(row)
            versions = _versions_reached(session, resolved)
        self._changed(versions, {row.name})

    def copy(self, scope: Scope, source: Scope) -> list[Variable]:
        """Copy the variables of a deployment or version (its own, secret ones too) into `scope`,
        replacing those of the same name; returns the scope's list afterwards."""
        now = utcnow()
        with self._db.write() as session:
            resolved, origin = _resolve(session, scope), _resolve(session, source)
            if origin.deployment is None:
                raise InvalidInput("source_deployment is required")
            if origin.scope_id == resolved.scope_id:
                raise InvalidInput("The source of a copy is where it copies to")
            mine = {row.name: row for row in session.scalars(select(EnvironmentVariableRow).where(
                EnvironmentVariableRow.scope_id == resolved.scope_id))}
            names = set()
            for row in session.scalars(select(EnvironmentVariableRow).where(
                    EnvironmentVariableRow.scope_id == origin.scope_id)):
                names.add(row.name)
                if (existing := mine.get(row.name)) is not None:
                    existing.value, existing.secret, existing.updated_at = row.value, row.secret, now
                else:
                    session.add(_new_row(resolved, row.name, row.value, row.secret, now))
            versions = _versions_reached(session, resolved)
        self._changed(versions, names)
        return self.list_variables(scope)

    def _changed(self, version_ids: list[str], names: set[str]) -> None:
        for version_id in version_ids:
            self._version_changed(version_id)
        if DEPLOYMENT_FILE_VARIABLE in names and version_ids:
            self.deployment_file_changed(version_ids)


def _resolve(session: Session, scope: Scope) -> _Resolved:
    """The rows a scope names; raises `NotFound` for an unknown deployment or version."""
    if scope.deployment is None:
        if scope.version is not None:
            raise InvalidInput("A version's variables need its deployment")
        return _Resolved(scope.project, None, None)
    deployment = DEPLOYMENTS.get(session, scope.project.id, scope.deployment)
    version = VERSIONS.get(session, deployment.id, scope.version) if scope.version is not None else None
    return _Resolved(scope.project, deployment, version)


def _own(session: Session, resolved: _Resolved, key: str) -> EnvironmentVariableRow:
    """A variable of the scope itself, by id or by name (clients look one up by either)."""
    row = session.scalar(select(EnvironmentVariableRow).where(
        EnvironmentVariableRow.scope_id == resolved.scope_id,
        (EnvironmentVariableRow.id == key) | (EnvironmentVariableRow.name == key)))
    if row is None:
        raise NotFound("environment variable", key)
    return row


def _refuse_taken(session: Session, resolved: _Resolved, name: str) -> None:
    taken = session.scalar(select(EnvironmentVariableRow.id).where(
        EnvironmentVariableRow.scope_id == resolved.scope_id, EnvironmentVariableRow.name == name))
    if taken is not None:
        raise Conflict(f"An environment variable named '{name}' already exists at this {resolved.level} level")


def _new_row(resolved: _Resolved, name: str, value: str, secret: bool, now: Any) -> EnvironmentVariableRow:
    return EnvironmentVariableRow(
        id=str(uuid.uuid4()),
        project_id=resolved.project.id,
        deployment_id=resolved.deployment.id if resolved.deployment else None,
        version_id=resolved.version.id if resolved.version else None,
        scope_id=resolved.scope_id,
        name=name,
        value=value,
        secret=secret,
        created_at=now,
        updated_at=now,
    )


def _versions_reached(session: Session, resolved: _Resolved) -> list[str]:
    """The ids of the versions whose instances get the scope's variables."""
    if resolved.version is not None:
        return [resolved.version.id]
    query = select(VersionRow.id)
    if resolved.deployment is not None:
        return list(session.scalars(query.where(VersionRow.deployment_id == resolved.deployment.id)))
    return list(session.scalars(query.join(DeploymentRow, VersionRow.deployment_id == DeploymentRow.id)
                                .where(DeploymentRow.project_id == resolved.project.id)))
