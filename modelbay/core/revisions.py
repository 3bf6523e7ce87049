"""Revisions: uploaded code archives of a version, built in the background."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select

from modelbay.core.builds import Builder, BuildResult
from modelbay.core.clock import utcnow
from modelbay.core.deployments import Deployments
from modelbay.core.errors import NotFound
from modelbay.core.hooks import Hook
from modelbay.core.projects import Caller
from modelbay.core.states import REVISION, VERSION, RevisionStatus, VersionStatus, move
from modelbay.store.blobs import BlobStore
from modelbay.store.db import Database
from modelbay.store.tables import DeploymentRow, ProjectRow, RevisionRow, VersionRow

log = logging.getLogger(__name__)

#: Longest build log tail kept as a revision's error message (the UbiOps SDK caps it at 1024).
ERROR_MESSAGE_CHARS = 1000


class Revisions:
    """Accepts uploads and runs their builds on a small thread pool, never on the server's loop."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        builder: Builder,
        deployments: Deployments,
        on_version_changed: Callable[[str], None],
        workers: int = 2,
    ) -> None:
        self._db = db
        self._blobs = blobs
        self._builder = builder
        self._deployments = deployments
        self._on_version_changed = on_version_changed
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="build")
        #: Told the id of a version whose deciding build (of its newest upload) ended, once written;
        #: called on the build's thread.
        self.build_ended: Hook[[str]] = Hook("revisions: build ended")

    def upload(
        self, caller: Caller, project: ProjectRow, deployment_name: str, version: str, archive: BinaryIO
    ) -> tuple[RevisionRow, Future[None]]:
        """Store an archive as a new revision of a version and start its build; the future ends with it."""
        version_row = self._deployments.get_version(project, deployment_name, version)
        revision_id = str(uuid.uuid4())
        key = f"revisions/{revision_id}.archive"
        self._blobs.put(key, archive)
        now = utcnow()
        revision = RevisionRow(
            id=revision_id,
            version_id=version_row.id,
            status=RevisionStatus.BUILDING.value,
            archive_key=key,
            created_by="admin" if caller.is_admin else "project-token",
            created_at=now,
        )
        with self._db.write() as session:
            row = session.get(VersionRow, version_row.id)
            if row is None:
                raise NotFound("version", version)
            session.add(revision)
            row.latest_revision_id = revision_id
            row.last_file_upload = now
            if row.status != VersionStatus.BUILDING:  # already building: the newest upload's build decides
                move(session, VERSION, row.id, VersionStatus(row.status), VersionStatus.BUILDING)
            row.updated_at = now
        self._deployments.forget_targets()
        return revision, self._pool.submit(self._build, revision_id, version_row.handler)

    def get(self, project: ProjectRow, deployment_name: str, version: str, revision_id: str) -> RevisionRow:
        version_row = self._deployments.get_version(project, deployment_name, version)
        with self._db.read() as session:
            row = session.get(RevisionRow, revision_id)
        if row is None or row.version_id != version_row.id:
            raise NotFound("revision", revision_id)
        return row

    def archive(self, project: ProjectRow, deployment_name: str, version: str, revision_id: str) -> Path:
        """The code archive a revision was made from, as uploaded; raises `NotFound` as `get` does."""
        return self._blobs.path(self.get(project, deployment_name, version, revision_id).archive_key)

    def list(self, project: ProjectRow, deployment_name: str, version: str) -> list[RevisionRow]:
        version_row = self._deployments.get_version(project, deployment_name, version)
        with self._db.read() as session:
            return list(
                session.scalars(
                    select(RevisionRow)
                    .where(RevisionRow.version_id == version_row.id)
                    .order_by(RevisionRow.created_at.desc())
                )
            )

    def resume(self) -> None:
        """Restart builds a previous server left unfinished."""
        with self._db.read() as session:
            rows = session.execute(
                select(RevisionRow.id, VersionRow.handler)
                .join(VersionRow, VersionRow.id == RevisionRow.version_id)
                .where(RevisionRow.status == RevisionStatus.BUILDING)
            ).all()
        for revision_id, handler in rows:
            self._pool.submit(self._build, revision_id, handler)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _build(self, revision_id: str, handler: str | None) -> None:
        try:
            with self._db.read() as session:
                revision = session.get(RevisionRow, revision_id)
                version = session.get(VersionRow, revision.version_id) if revision is not None else None
                deployment = session.get(DeploymentRow, version.deployment_id) if version is not None else None
            if revision is None or deployment is None:  # deleted with its version meanwhile
                return
            archive = Path(self._blobs.path(revision.archive_key))
            # Each project's builds have a package cache of their own: a build cannot poison another's.
            result = self._builder.build(archive, revision_id, handler=handler, cache_key=deployment.project_id)
        except Exception as exc:  # a builder bug must still end the build
            log.exception("build of revision %s crashed", revision_id)
            result = BuildResult(ok=False, log=f"The build crashed: {exc}", package_dir=None, python=None)
        self._finish(revision_id, result)

    def _finish(self, revision_id: str, result: BuildResult) -> None:
        now = utcnow()
        with self._db.write() as session:
            revision = session.get(RevisionRow, revision_id)
            if revision is None:
                return
            version = session.get(VersionRow, revision.version_id)
            revision.finished_at = now
            revision.build_log = result.log
            move(session, REVISION, revision_id, RevisionStatus.BUILDING,
                 RevisionStatus.SUCCESS if result.ok else RevisionStatus.FAILED)
            if result.ok:
                revision.package_dir = str(result.package_dir)
                revision.python = str(result.python)
                revision.has_request_method = result.has_request_method
                revision.has_requests_method = result.has_requests_method
            else:
                revision.error_message = _tail(result.log)
            decides = version is not None and version.latest_revision_id == revision_id
            if decides and version is not None:
                if result.ok:
                    version.active_revision_id = revision_id
                # A failed build leaves a version that still has working code serving it.
                status = VersionStatus.AVAILABLE if version.active_revision_id else VersionStatus.FAILED
                if version.status != status:
                    move(session, VERSION, version.id, VersionStatus(version.status), status)
                version.updated_at = now
                deployment = session.get(DeploymentRow, version.deployment_id)
                if deployment is not None:
                    deployment.updated_at = now
        self._deployments.forget_targets()
        if result.ok:
            # New code: instances of the old code are retired.
            self._on_version_changed(revision.version_id)
        if decides:
            self.build_ended(revision.version_id)


def build_failure(db: Database, version_id: str) -> str | None:
    """Why a version has no code to run when its newest build failed: the build and its reason.
    None while that build runs, after it succeeded, or when earlier code still serves the version."""
    with db.read() as session:
        version = session.get(VersionRow, version_id)
        if version is None or version.active_revision_id or version.latest_revision_id is None:
            return None
        revision = session.get(RevisionRow, version.latest_revision_id)
    if revision is None or revision.status != RevisionStatus.FAILED:
        return None
    return f"The build of version '{version.name}' (revision {revision.id}) failed: {revision.error_message}"


def _tail(text: str) -> str:
    text = text.strip() or "The build failed without output."
    return text if len(text) <= ERROR_MESSAGE_CHARS else "…" + text[-ERROR_MESSAGE_CHARS:]
