"""Revisions: uploaded code archives of a version, built in the background by one node.

An upload is stored (its archive a blob every node reaches) and queued; a node with a free build
worker claims it (`owner`, queued -> building) and builds it, and its finishing write is fenced
by that claim. A node that dies mid-build gives its builds back to the queue (`nodes`), for
any node to claim. The build's outcome is what every node can use: the revision's archive and
its id; each node that runs the code unpacks it and makes its environment in its own data dir
on first use (`materialise`), and reuses what it built itself at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import Connection, select

from modelbay.core.activity import Activity
from modelbay.core.background import Background
from modelbay.core.builds import DEPLOYMENT_FILE_VARIABLE, Builder, BuildResult
from modelbay.core.clock import utcnow
from modelbay.core.deployments import Deployments, Target
from modelbay.core.environment_variables import effective
from modelbay.core.errors import NotFound, StatusChanged, last_line
from modelbay.core.hooks import Hook
from modelbay.core.nodes import Nodes
from modelbay.core.projects import Caller
from modelbay.core.states import REVISION, VERSION, RevisionStatus, VersionStatus, move
from modelbay.runtime.base import Code, InstanceStartFailed
from modelbay.store.blobs import BlobStore
from modelbay.store.db import Database
from modelbay.store.tables import DeploymentRow, NodeRow, ProjectRow, RevisionRow, VersionRow

log = logging.getLogger(__name__)

#: Longest build log tail kept as a revision's error message (the UbiOps SDK caps it at 1024).
ERROR_MESSAGE_CHARS = 1000

#: How often a node looks for queued builds (uploads to other nodes, builds of dead nodes).
CLAIM_PERIOD_S = 2.0

#: How old this node's copy of a deleted revision's code must be before the sweep removes it (a
#: revision made just after the sweep read the revisions is never taken for a deleted one).
LOCAL_SWEEP_GRACE_S = 600.0


class Revisions:
    """Accepts uploads and runs the builds this node claims on a small thread pool, never on the server's loop."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        builder: Builder,
        deployments: Deployments,
        on_version_changed: Callable[[str], None],
        nodes: Nodes,
        workers: int = 2,
        activity: Activity | None = None,
    ) -> None:
        self._db = db
        self._activity = activity or Activity()  # where the builds that end here are counted
        self._blobs = blobs
        self._builder = builder
        self._deployments = deployments
        self._on_version_changed = on_version_changed
        self._nodes = nodes
        self._workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="build")
        self._claiming = threading.Lock()
        self._building: set[str] = set()  # revisions this node claimed and builds
        #: Uploads made here -> a future that ends with their build, on whichever node it ran.
        self._uploads: dict[str, Future[None]] = {}
        #: Revision id -> its package dir and python on this node (built or prepared here).
        self._local: dict[str, tuple[Path, Path]] = {}
        self._background = Background("revisions")
        self._closed = False
        #: Told the id of a version whose deciding build (of its newest upload) ended, once written;
        #: called on the build's thread.
        self.build_ended: Hook[[str]] = Hook("revisions: build ended")
        nodes.add_recoverer(self._give_back, "builds")

    def start(self) -> None:
        """Look for queued builds now and then (builds a previous server left are queued again by `nodes`)."""
        with self._db.write() as session:  # left building by a server from before builds had owners
            move(session, REVISION, {"owner": None}, (RevisionStatus.BUILDING,), RevisionStatus.QUEUED)
        self._background.every(CLAIM_PERIOD_S, self._claim_pass, "claim builds")

    def upload(
        self, caller: Caller, project: ProjectRow, deployment_name: str, version: str, archive: BinaryIO
    ) -> tuple[RevisionRow, Future[None]]:
        """Store an archive as a new revision of a version and queue its build (here when a worker
        is free); the future ends with the build, wherever it runs."""
        version_row = self._deployments.get_version(project, deployment_name, version)
        revision_id = str(uuid.uuid4())
        key = f"revisions/{revision_id}.archive"  # a fresh key: an archive is never written over
        self._blobs.put(key, archive)
        now = utcnow()
        revision = RevisionRow(
            id=revision_id,
            version_id=version_row.id,
            status=RevisionStatus.QUEUED.value,
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
        built: Future[None] = Future()
        self._uploads[revision_id] = built
        self._claim_now()
        return revision, built

    def rebuild_failed(self, version_ids: list[str]) -> None:
        """Queue again the newest build of each of these versions that failed: what it was built
        with changed (the file of `class Deployment` its variables name), the archive did not."""
        with self._db.write() as session:
            versions = session.execute(select(VersionRow.id, VersionRow.status, VersionRow.latest_revision_id)
                                       .where(VersionRow.id.in_(version_ids))).all()
            queued = 0
            for version in versions:
                if version.latest_revision_id is None or not move(
                        session, REVISION, version.latest_revision_id, RevisionStatus.FAILED, RevisionStatus.QUEUED,
                        owner=None, finished_at=None, error_message=None):
                    continue
                queued += 1
                if version.status != VersionStatus.BUILDING:
                    move(session, VERSION, version.id, VersionStatus(version.status), VersionStatus.BUILDING)
        if queued:
            self._deployments.forget_targets()
            self._claim_now()

    def get(self, project: ProjectRow, deployment_name: str, version: str, revision_id: str) -> RevisionRow:
        version_row = self._deployments.get_version(project, deployment_name, version)
        with self._db.read() as session:
            row = session.get(RevisionRow, revision_id)
        if row is None or row.version_id != version_row.id:
            raise NotFound("revision", revision_id)
        return row

    def archive(self, project: ProjectRow, deployment_name: str, version: str, revision_id: str) -> Path:
        """The code archive a revision was made from, as uploaded, as a node-local file; raises
        `NotFound` as `get` does."""
        return self._blobs.local_path(self.get(project, deployment_name, version, revision_id).archive_key)

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

    def materialise(self, target: Target) -> tuple[Path, Path]:
        """The package dir and python of `target`'s built code on this node: what this node built
        or prepared before, else unpacked from its archive with its environment made or reused now
        (blocking: run it on a thread). Raises `InstanceStartFailed` when that fails here."""
        code = built_code(target)
        if (found := self._local.get(code.revision_id)) is not None:
            return found
        try:
            archive = self._blobs.local_path(code.archive_key)
        except FileNotFoundError:
            raise InstanceStartFailed(f"The code archive of revision {code.revision_id} is gone") from None
        # The project's own package cache, as its build had.
        result = self._builder.prepare(archive, code.revision_id, handler=target.handler,
                                       deployment_file=target.environment_variables.get(DEPLOYMENT_FILE_VARIABLE),
                                       cache_key=code.cache_key)
        if not result.ok or result.package_dir is None or result.python is None:
            raise InstanceStartFailed(f"The code of revision {code.revision_id} could not be prepared on "
                                      f"this server: {_tail(result.log)}", result.log)
        self._local[code.revision_id] = found = (result.package_dir, result.python)
        return found

    def sweep_local(self, grace_s: float = LOCAL_SWEEP_GRACE_S) -> int:
        """Remove this node's unpacked code of revisions that are gone (their version or deployment
        was deleted, through any node), unpacked more than `grace_s` ago; returns how many."""
        before = time.time() - grace_s
        with self._db.read() as session:
            existing = set(session.scalars(select(RevisionRow.id)))
        with self._claiming:
            keep = existing | self._building
        removed = self._builder.discard_packages(keep, before)
        for revision_id in removed:
            self._local.pop(revision_id, None)
        return len(removed)

    async def close(self) -> None:
        """Claim no more builds; those under way end on their threads (`nodes` queues them again on its close)."""
        self._closed = True
        await self._background.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- claiming builds ---------------------------------------------------------------------

    async def _claim_pass(self) -> None:
        await asyncio.to_thread(self._claim)
        await asyncio.to_thread(self._end_uploads_built_elsewhere)

    def _claim(self) -> None:
        """Claim queued builds (oldest first) for this node's free workers, and start them."""
        with self._claiming:
            free = self._workers - len(self._building)
            if free <= 0 or self._closed:
                return
            node_id = self._nodes.id
            queued = select(RevisionRow.id).where(RevisionRow.status == RevisionStatus.QUEUED)
            if not self._db.has_rows(queued):
                return
            with self._db.write() as session:
                # Only while this node is alive (its row locked: a recovery of it waits for this claim
                # and then gives the claimed builds back); a node declared dead learns it on its next beat.
                if session.scalar(select(NodeRow.id).where(NodeRow.id == node_id, NodeRow.end.is_(None))
                                  .with_for_update(read=True)) is None:
                    return
                # SKIP LOCKED: nodes claiming at once take different rows (SQLite writes one at a time).
                claimed = list(session.scalars(
                    queued.order_by(RevisionRow.created_at, RevisionRow.id).limit(free)
                    .with_for_update(skip_locked=True)))
                for revision_id in claimed:
                    move(session, REVISION, revision_id, RevisionStatus.QUEUED, RevisionStatus.BUILDING,
                         owner=node_id)
            for revision_id in claimed:
                self._building.add(revision_id)
                self._pool.submit(self._build, revision_id)

    def _claim_now(self) -> None:
        """Claim at once, outside the periodic pass; what fails here the next pass does."""
        try:
            self._claim()
        except Exception:
            log.exception("claiming queued builds failed; the next pass tries again")

    def _give_back(self, conn: Connection, node_ids: list[str]) -> int:
        """Queue again the builds of dead (or stopping) nodes, for any node to claim."""
        return move(conn, REVISION, {"owner": node_ids}, (RevisionStatus.BUILDING,), RevisionStatus.QUEUED,
                    owner=None)

    def _end_uploads_built_elsewhere(self) -> None:
        """End the futures of uploads made here whose build another node ran (or that went away)."""
        waiting = list(self._uploads)  # a copy: build threads end theirs meanwhile
        if not waiting:
            return
        with self._db.read() as session:
            open_ids = set(session.scalars(select(RevisionRow.id).where(
                RevisionRow.id.in_(waiting), RevisionRow.status.in_((RevisionStatus.QUEUED, RevisionStatus.BUILDING)))))
        for revision_id in [r for r in waiting if r not in open_ids]:
            self._end_upload(revision_id)

    def _end_upload(self, revision_id: str) -> None:
        built = self._uploads.pop(revision_id, None)
        if built is not None and not built.done():
            built.set_result(None)

    # --- building ----------------------------------------------------------------------------

    def _build(self, revision_id: str) -> None:
        try:
            self._run_build(revision_id)
        finally:
            with self._claiming:
                self._building.discard(revision_id)
            self._end_upload(revision_id)
            self._claim_now()  # the next queued one, now a worker is free

    def _run_build(self, revision_id: str) -> None:
        try:
            with self._db.read() as session:
                revision = session.get(RevisionRow, revision_id)
                version = session.get(VersionRow, revision.version_id) if revision is not None else None
                deployment = session.get(DeploymentRow, version.deployment_id) if version is not None else None
                if revision is None or version is None or deployment is None:  # deleted with its version meanwhile
                    return
                # The deployment file as the variables name it now; a later change restarts the
                # instances, which load the file it then names (no rebuild: the archive is the same).
                variables = effective(session, deployment.project_id, deployment.id, version.id,
                                      version.environment_variables)
                project = session.get(ProjectRow, deployment.project_id)
            log.info("build of %s/%s (revision %s) started", deployment.name, version.name, revision_id,
                     extra={"project": project.name if project else "?", "deployment": deployment.name,
                            "version": version.name, "revision": revision_id, "event": "build started"})
            archive = self._blobs.local_path(revision.archive_key)
            # Each project's builds have a package cache of their own: a build cannot poison another's.
            result = self._builder.build(archive, revision_id, handler=version.handler,
                                         deployment_file=variables.get(DEPLOYMENT_FILE_VARIABLE),
                                         cache_key=deployment.project_id)
        except Exception as exc:  # a builder bug must still end the build
            log.exception("build of revision %s crashed", revision_id)
            result = BuildResult(ok=False, log=f"The build crashed: {exc}", package_dir=None, python=None)
        self._finish(revision_id, result)

    def _finish(self, revision_id: str, result: BuildResult) -> None:
        """Write the build's outcome, if this node still owns the build (else another node has it now)."""
        now = utcnow()
        try:
            with self._db.write() as session:
                revision = session.get(RevisionRow, revision_id)
                if revision is None:
                    return
                version = session.get(VersionRow, revision.version_id)
                deployment = session.get(DeploymentRow, version.deployment_id) if version is not None else None
                project = session.get(ProjectRow, deployment.project_id) if deployment is not None else None
                values: dict[str, object] = {"finished_at": now, "build_log": result.log}
                if result.ok:
                    values.update(has_request_method=result.has_request_method,
                                  has_requests_method=result.has_requests_method)
                else:
                    values["error_message"] = _tail(result.log)
                move(session, REVISION, revision_id, RevisionStatus.BUILDING,
                     RevisionStatus.SUCCESS if result.ok else RevisionStatus.FAILED, fence=self._nodes.id, **values)
                decides = version is not None and version.latest_revision_id == revision_id
                if decides and version is not None:
                    if result.ok:
                        version.active_revision_id = revision_id
                    # A failed build leaves a version that still has working code serving it.
                    status = VersionStatus.AVAILABLE if version.active_revision_id else VersionStatus.FAILED
                    if version.status != status:
                        move(session, VERSION, version.id, VersionStatus(version.status), status)
                    version.updated_at = now
                    if deployment is not None:
                        deployment.updated_at = now
        except StatusChanged:
            log.warning("the build of revision %s ended after another node took it over; its outcome is dropped",
                        revision_id)
            return
        self._log_end(revision, project, deployment, version, result)
        if result.ok and result.package_dir is not None and result.python is not None:
            self._local[revision_id] = (result.package_dir, result.python)  # this node runs it at once
        self._deployments.forget_targets()
        if result.ok:
            # New code: instances of the old code are retired.
            self._on_version_changed(revision.version_id)
        if decides:
            self.build_ended(revision.version_id)

    def _log_end(self, revision: RevisionRow, project: ProjectRow | None, deployment: DeploymentRow | None,
                 version: VersionRow | None, result: BuildResult) -> None:
        """Count a build that ended, and log it (a failure with the last line of its log: why)."""
        outcome = "succeeded" if result.ok else "failed"
        self._activity.count("builds", revision.version_id, outcome)
        deployment_name = "?" if deployment is None else deployment.name
        version_name = "?" if version is None else version.name
        fields = {"project": "?" if project is None else project.name, "deployment": deployment_name,
                  "version": version_name, "revision": revision.id, "event": f"build {outcome}"}
        if result.ok:
            log.info("build of %s/%s (revision %s) succeeded", deployment_name, version_name, revision.id,
                     extra=fields)
        else:
            log.warning("build of %s/%s (revision %s) failed: %s", deployment_name, version_name, revision.id,
                        last_line(result.log), extra=fields)


def built_code(target: Target) -> Code:
    """The built code `target` runs (its own package cache: the project's, as its build had);
    raises `InstanceStartFailed` when its version has none."""
    if target.revision_id is None or target.archive_key is None:
        raise InstanceStartFailed(f"Version '{target.version_name}' has no successfully built code")
    return Code(target.revision_id, target.archive_key, cache_key=target.project_id)


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
