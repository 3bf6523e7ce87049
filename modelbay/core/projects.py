"""Projects: the namespace every other thing lives in, and the tokens that reach it.

A project has two public ids besides its name, a `number` and a `handle`; each dialect shows them
its own way (`dialects/*/ids.py`), so the core holds no vendor's id.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update

from modelbay.core import bus as topics
from modelbay.core.bus import Bus, Message
from modelbay.core.clock import utcnow
from modelbay.core.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from modelbay.store.db import Database
from modelbay.store.tables import (
    DeliveryRow,
    DeploymentRow,
    JobLogRow,
    JobRow,
    OperatorRequestRow,
    PipelineRequestRow,
    ProjectRow,
    RequestRow,
    ServiceRow,
    VersionRow,
    WebhookRow,
)

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}[a-z0-9]$")

#: How long a cached token or project is trusted. A change made here, or through another node on
#: PostgreSQL, drops the caches at once; one made by a command next to a server on SQLite (whose
#: messages stay in their process) is seen within this time.
CACHE_TTL_S = 2.0


@dataclass(frozen=True)
class Caller:
    """Who is calling: the project a token belongs to, or the admin (project None)."""

    project_id: str | None

    @property
    def is_admin(self) -> bool:
        return self.project_id is None

    def check_access(self, project: ProjectRow) -> None:
        """Raises `Forbidden` unless the caller may act in `project`."""
        if not self.is_admin and self.project_id != project.id:
            raise Forbidden(f"This token has no access to project '{project.name}'")


@dataclass(frozen=True)
class Credentials:
    """What `Projects.create` returns once: the token, and the public ids the dialects derive theirs from."""

    name: str
    token: str
    number: int
    handle: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Projects:
    """Creates, renews and deletes projects and resolves tokens. Token and project lookups are
    cached (they sit on every request) for `CACHE_TTL_S`; a project's change drops them on every node."""

    def __init__(self, db: Database, admin_token_hash: str, bus: Bus) -> None:
        self._db = db
        self._admin_hash = admin_token_hash  # servers keep only the hash (`core.server_secrets`)
        self._bus = bus
        self._callers: dict[str, Caller] = {}
        self._by_name: dict[str, ProjectRow] = {}
        self._public_ids: dict[tuple[str, object], ProjectRow] = {}  # (column, value): what dialects look up
        self._generation = 0  # bumped on every change, so a lookup that raced a change is not cached
        self._cached_since = time.monotonic()
        bus.subscribe(topics.PROJECTS, self._changed_elsewhere)
        bus.subscribe_resync(self._forget)

    def create(self, name: str) -> Credentials:
        """Create a project and return its credentials; the token is shown only here."""
        if not NAME_PATTERN.match(name):
            raise InvalidInput(
                "Project name must be 3-64 characters of lowercase letters, digits and dashes, "
                "starting and ending with a letter or digit"
            )
        token = secrets.token_hex(20)
        row = ProjectRow(
            id=str(uuid.uuid4()),
            name=name,
            token_hash=hash_token(token),
            number=secrets.randbelow(9 * 10**12) + 10**12,  # 13 digits: fixed width, no leading zero
            handle=secrets.token_hex(16),
            created_at=utcnow(),
        )
        with self._db.write() as session:  # a racing duplicate is a Conflict too (Database.write)
            if session.scalar(select(ProjectRow.id).where(ProjectRow.name == name)):
                raise Conflict(f"A project named '{name}' already exists")
            session.add(row)
        return Credentials(name, token, row.number, row.handle)

    def renew_token(self, caller: Caller, name: str) -> str:
        """Give a project a new token and return it; the old one stops working on every node."""
        project = self.get(caller, name)
        token = secrets.token_hex(20)
        with self._db.write() as session:
            renewed = session.execute(update(ProjectRow).where(ProjectRow.id == project.id)
                                      .values(token_hash=hash_token(token)))
        if renewed.rowcount == 0:
            raise NotFound("project", name)
        self._forget()
        self._bus.publish(topics.PROJECTS, project.id)
        return token

    def delete(self, caller: Caller, name: str) -> None:
        """Delete a project and everything in it: deployments, versions, runs, services, requests,
        pipelines, webhooks, datasets and jobs. Its token stops working on every node; the
        instances of its versions and services are retired. Log lines and stored files that no
        row names any more go with the next retention sweep."""
        project = self.get(caller, name)
        with self._db.write() as session:
            version_ids = list(session.scalars(select(VersionRow.id).join(
                DeploymentRow, DeploymentRow.id == VersionRow.deployment_id).where(
                DeploymentRow.project_id == project.id)))
            service_ids = list(session.scalars(select(ServiceRow.id).where(ServiceRow.project_id == project.id)))
            # What the store does not delete with the project row (kept by id, not by a foreign key).
            pipeline_requests = select(PipelineRequestRow.id).where(PipelineRequestRow.project_id == project.id)
            jobs = select(JobRow.id).where(JobRow.project_id == project.id)
            webhooks = select(WebhookRow.id).where(WebhookRow.project_id == project.id)
            session.execute(delete(OperatorRequestRow).where(
                OperatorRequestRow.pipeline_request_id.in_(pipeline_requests)))
            session.execute(delete(PipelineRequestRow).where(PipelineRequestRow.project_id == project.id))
            session.execute(delete(RequestRow).where(RequestRow.project_id == project.id))
            session.execute(delete(JobLogRow).where(JobLogRow.job_id.in_(jobs)))
            session.execute(delete(DeliveryRow).where(DeliveryRow.webhook_id.in_(webhooks)))
            deleted = session.execute(delete(ProjectRow).where(ProjectRow.id == project.id))
        if deleted.rowcount == 0:
            raise NotFound("project", name)
        self._forget()
        self._bus.publish(topics.PROJECTS, project.id)
        for version_id in version_ids:
            self._bus.publish(topics.VERSION, version_id)
        for service_id in service_ids:
            self._bus.publish(topics.SERVICES, service_id)

    def _changed_elsewhere(self, message: Message) -> None:
        if not message.from_here:  # dropped when it was sent
            self._forget()

    def _forget(self) -> None:
        """Drop every cached token and project (changes are rare; a lookup costs one query)."""
        self._generation += 1
        self._cached_since = time.monotonic()
        self._callers.clear()
        self._by_name.clear()
        self._public_ids.clear()

    def _expire(self) -> None:
        if time.monotonic() - self._cached_since > CACHE_TTL_S:
            self._forget()

    def authenticate(self, token: str | None) -> Caller:
        """Resolve a token to its caller. Raises `Unauthorized` for a missing or unknown token."""
        if not token:
            raise Unauthorized("Authentication credentials were not provided")
        self._expire()
        caller = self._callers.get(token)
        if caller is not None:
            return caller
        generation = self._generation
        digest = hash_token(token)
        if secrets.compare_digest(digest, self._admin_hash):
            caller = Caller(project_id=None)
        else:
            with self._db.read() as session:
                project_id = session.scalar(select(ProjectRow.id).where(ProjectRow.token_hash == digest))
            if project_id is None:
                raise Unauthorized("Invalid token")
            caller = Caller(project_id=project_id)
        if generation == self._generation:  # no change raced the lookup
            self._callers[token] = caller
        return caller

    def get(self, caller: Caller, name: str) -> ProjectRow:
        """The project named `name`. Raises `NotFound`, or `Forbidden` for another project's token."""
        self._expire()
        project = self._by_name.get(name)
        if project is None:
            generation = self._generation
            with self._db.read() as session:
                project = session.scalar(select(ProjectRow).where(ProjectRow.name == name))
            if project is None:
                raise NotFound("project", name)
            if generation == self._generation:
                self._by_name[name] = project
        caller.check_access(project)
        return project

    def by_number(self, caller: Caller, number: int | None, *, kind: str, name: str) -> ProjectRow:
        """The project with this public number; see `_by_public_id`."""
        return self._by_public_id(caller, ProjectRow.number, number, kind, name)

    def by_handle(self, caller: Caller, handle: str | None, *, kind: str, name: str) -> ProjectRow:
        """The project with this public handle; see `_by_public_id`."""
        return self._by_public_id(caller, ProjectRow.handle, handle, kind, name)

    def _by_public_id(self, caller: Caller, column: Any, value: object, kind: str, name: str) -> ProjectRow:
        """The project whose `column` is `value`; a `value` of None (an id its dialect could not read)
        is no project's. `kind` and `name` are the dialect's word for a project and the id as the
        caller gave it, for the errors: `Forbidden` for a project the caller may not use (an unknown
        id included, so ids cannot be probed); `NotFound` for the admin."""
        self._expire()
        project = self._public_ids.get((column.key, value))
        if project is None and value is not None:
            generation = self._generation
            with self._db.read() as session:
                project = session.scalar(select(ProjectRow).where(column == value))
            if project is not None and generation == self._generation:
                self._public_ids[(column.key, value)] = project
        if project is None and caller.is_admin:
            raise NotFound(kind, name)
        if project is None or (not caller.is_admin and caller.project_id != project.id):
            raise Forbidden(f"This credential has no access to {kind} '{name}'")
        return project

    def list(self, caller: Caller) -> list[ProjectRow]:
        with self._db.read() as session:
            query = select(ProjectRow).order_by(ProjectRow.name)
            if not caller.is_admin:
                query = query.where(ProjectRow.id == caller.project_id)
            return list(session.scalars(query))
