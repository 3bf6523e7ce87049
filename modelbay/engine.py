"""The composition root: every core service wired together over one store and one runtime.

It lives above the core because it reads `Settings` and picks the runtime and sandbox; the core
itself is given what it needs.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, inspect, make_url

from modelbay.core import server_secrets, signed_urls
from modelbay.core.activity import Activity
from modelbay.core.activity_history import ActivityHistory, existing_versions, observe
from modelbay.core.background import Background
from modelbay.core.builds import DEPLOYMENT_FILE_VARIABLE, Builder
from modelbay.core.bus import Bus
from modelbay.core.datasets import Datasets
from modelbay.core.deliveries import Deliveries
from modelbay.core.deployments import Deployments, Target
from modelbay.core.endpoints import Endpoints
from modelbay.core.environment_variables import EnvironmentVariables
from modelbay.core.errors import NotFound, Unavailable
from modelbay.core.instance_slots import InstanceSlots, LocalSlots
from modelbay.core.job_items import ItemOutcome, default_body
from modelbay.core.jobs import Jobs
from modelbay.core.journal import Journal
from modelbay.core.node_packages import NodePackages
from modelbay.core.nodes import Nodes
from modelbay.core.payloads import Payloads
from modelbay.core.peers import Peers, node_token
from modelbay.core.pipeline_requests import PipelineRequests
from modelbay.core.pipelines import Pipelines
from modelbay.core.projects import Projects, hash_token
from modelbay.core.requests import Requests
from modelbay.core.revisions import Revisions, built_code
from modelbay.core.runs import Runs
from modelbay.core.scheduler import QUICK_BATCH_DEPTH_FACTOR, Scheduler
from modelbay.core.services import Services
from modelbay.core.webhook_client import WebhookClient
from modelbay.core.webhooks import Webhooks
from modelbay.runtime.base import InstanceSpec, Runtime
from modelbay.runtime.local import LocalRuntime
from modelbay.runtime.sandbox import Sandbox
from modelbay.runtime.sandbox import from_settings as sandbox_from_settings
from modelbay.settings import Settings
from modelbay.store.blobs import DatabaseBlobStore, LocalBlobStore
from modelbay.store.db import Database
from modelbay.store.tables import ProjectRow

log = logging.getLogger(__name__)

#: How often requests past their retention time are removed.
RETENTION_SWEEP_PERIOD_S = 60.0


def admin_token(settings: Settings, db: Database) -> server_secrets.AdminToken:
    """The admin token: the one set in the settings wins; else the one every server on `db` shares."""
    if settings.admin_token:
        return server_secrets.AdminToken(hash_token(settings.admin_token))
    return server_secrets.admin_token(db, settings.data_dir)


_SIZED_INSTANCE_TYPE = re.compile(r"^(\d{1,7})(mb|gb)(_|$)", re.IGNORECASE)


def memory_limit_bytes(instance_type: str, default_mib: int) -> int:
    """An instance's memory limit: the size its type names ("512mb", "16384mb_t4", "4gb"), else the default."""
    match = _SIZED_INSTANCE_TYPE.match(instance_type or "")
    if match is None:
        return default_mib << 20
    size, unit = int(match[1]), match[2].lower()
    return max(size << (30 if unit == "gb" else 20), 64 << 20)


def make_runtime(settings: Settings, sandbox: Sandbox, archive_path: Callable[[str], Path]) -> Runtime:
    """The runtime the settings name. The `ray` one joins its cluster here (raises
    `RuntimeUnavailable` when it cannot)."""
    if settings.runtime == "local":
        return LocalRuntime(
            log_dir=settings.data_dir / "instances",
            start_timeout=settings.instance_start_timeout_s,
            sandbox=sandbox,
            scratch_dir=settings.data_dir / "scratch",
            network=settings.sandbox_network,
            shared_dirs=settings.shared_dirs,
            depth=settings.instance_call_depth * QUICK_BATCH_DEPTH_FACTOR,  # quick batch calls go deeper
        )
    from modelbay.runtime import ray_runtime
    from modelbay.runtime.ray_instance import NodeSetup

    ray_runtime.connect(settings.ray_address, settings.ray_namespace)
    node_dir = settings.ray_node_dir.absolute()
    return ray_runtime.RayRuntime(
        node=NodeSetup(root=node_dir, sandbox=settings.sandbox, network=settings.sandbox_network,
                       shared_dirs=settings.shared_dirs, start_timeout=settings.instance_start_timeout_s),
        preparer=NodePackages(node_dir / "code", settings.sandbox, settings.instance_memory_mib << 20),
        archive_path=archive_path,
        placements={
            name: ray_runtime.Placement(t.num_cpus, t.num_gpus, t.memory_mib << 20 if t.memory_mib else None,
                                        t.resources)
            for name, t in settings.ray_instance_types.items()
        },
        start_timeout=settings.instance_start_timeout_s,
    )


def database_exists(settings: Settings) -> bool:
    """Whether the store was created already: the SQLite file exists, or another database holds
    the schema. Checked without creating anything."""
    url = make_url(settings.sqlalchemy_url)
    if url.get_backend_name() == "sqlite":
        path = url.database
        return path is not None and path not in ("", ":memory:") and Path(path).is_file()
    engine = create_engine(url)
    try:
        return inspect(engine).has_table("alembic_version")
    finally:
        engine.dispose()


def open_database(settings: Settings, *, migrate_in_child: bool = False) -> Database:
    """Open the store and bring its schema up to date (see `Database.migrate`)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.sqlalchemy_url)
    db.migrate(in_child=migrate_in_child)
    return db


class Engine:
    """Owns the store, the runtime and the services; `start` and `close` bracket the server's life."""

    def __init__(self, settings: Settings, runtime: Runtime | None = None, *,
                 job_item_body: Callable[[ItemOutcome], bytes] = default_body) -> None:
        self.settings = settings
        self.activity = Activity()  # what this server did, counted for the metrics
        data = settings.data_dir
        self.db = open_database(settings)
        self.nodes = Nodes(self.db, data, lease_s=settings.node_lease_s, address=settings.node_url)
        self.bus = Bus(self.db, lambda: self.nodes.id)
        # Nodes sharing a database reach blobs through it; one server on SQLite keeps them as files.
        self.blobs = (LocalBlobStore(data / "blobs") if self.db.is_sqlite
                      else DatabaseBlobStore(self.db, data / "blob-cache"))
        self.payloads = Payloads(self.db, self.blobs)
        sandbox = sandbox_from_settings(settings.sandbox, check=False)  # `serve` checked it before
        self.runtime = runtime or make_runtime(settings, sandbox, self.blobs.local_path)
        signing_key = server_secrets.signing_key(self.db, data)
        self.node_token = node_token(signing_key)
        # Instance limits count across the nodes sharing the database; one server on SQLite counts its own.
        self.peers = None if self.db.is_sqlite else Peers(self.node_token)
        self.scheduler = Scheduler(self.runtime, self._instance_spec, self._serving_target,
                                   slots=LocalSlots() if self.db.is_sqlite else InstanceSlots(self.db, self.nodes),
                                   peers=self.peers, depth=min(settings.instance_call_depth, self.runtime.depth))
        self.projects = Projects(self.db, admin_token(settings, self.db).hash, self.bus)
        self.deployments = Deployments(self.db, self.bus, self.scheduler.version_changed)
        self.environment_variables = EnvironmentVariables(self.db, self.deployments.version_changed)
        self.revisions = Revisions(
            self.db,
            self.blobs,
            Builder(
                data / "builds",
                sandbox,
                uv_cache_dir=settings.uv_cache_dir,
                memory_limit_bytes=settings.instance_memory_mib << 20,
            ),
            self.deployments,
            self.deployments.version_changed,  # on every node
            self.nodes,
            workers=settings.build_workers,
            activity=self.activity,
        )
        self.environment_variables.deployment_file_changed.add(self.revisions.rebuild_failed)
        self.requests = Requests(self.db, self.scheduler, self.deployments, self.payloads, self.nodes, self.activity)
        self.url_signer = signed_urls.UrlSigner(signing_key)
        # One client for every webhook POST: pooled connections to receivers, each checked.
        allow_private = settings.webhook_allow_private_targets
        self.http = WebhookClient(allow_private=allow_private)
        self.webhooks = Webhooks(self.db, self.http, allow_private_targets=allow_private)
        self.deliveries = Deliveries(self.db, self.http, self.nodes, self.activity)
        self.datasets = Datasets(self.db, self.blobs, data / "spool")
        self.jobs = Jobs(self.db, self.nodes, self.datasets, self.deployments, self.requests, self.deliveries,
                         self.scheduler, job_item_body, self.activity)
        self.pipelines = Pipelines(self.db, self.bus)
        self.pipeline_requests = PipelineRequests(self.db, self.nodes, self.pipelines, self.deployments,
                                                  self.requests, self.payloads)
        self.journal = Journal(self.db)
        self.runs = Runs(self.db, self.deployments, self.requests, self.scheduler, self.journal, self.nodes,
                         self.activity)
        self.services = Services(
            self.db, self.deployments, self.requests, self.scheduler, self.runtime, self.journal,
            scale_down_idle_s=settings.service_scale_down_idle_s, bus=self.bus,
        )
        self.endpoints = Endpoints(self.db)
        # Runs and services waiting for a version's code go on (or fail) when its build ends.
        self.revisions.build_ended.add(self.runs.build_ended)
        self.revisions.build_ended.add(self.services.build_ended)
        self.nodes.declared_dead.add(self.scheduler.retire_all)  # its instance slots went with its old id
        self.requests.use_bus(self.bus)
        self.pipeline_requests.use_bus(self.bus)
        # Each version's recent past, sampled for the console's live charts.
        self.activity_history = ActivityHistory(lambda: observe(self.activity, self.scheduler, self.requests.queue),
                                                lambda version_ids: existing_versions(self.db, version_ids))
        self._background = Background("engine")  # the retention sweep, the activity sampling

    async def start(self) -> None:
        """Start the loops, then settle what a previous server left behind."""
        self.db.committer.commit_on_loop()
        await self.bus.start()
        self.scheduler.start()
        self.nodes.register()  # gives back what the server before this one held
        self.requests.start()
        self.pipeline_requests.start(self._project_of)
        self.revisions.start()
        self.deliveries.start()  # deliveries due while the server was down go out now
        self.jobs.start()
        for version_id in self.deployments.versions_with_minimum_instances():
            if (target := self._serving_target(version_id)) is not None:
                self.scheduler.warm(target)
        self.runs.start()
        self.services.start(alone=self.nodes.alone)
        self._background.every(RETENTION_SWEEP_PERIOD_S, self._sweep, "retention sweep")
        self.activity_history.start(self._background)
        self.nodes.start()

    async def _sweep(self) -> None:
        """Remove requests past their version's retention time, and payload files no request names, off
        the event loop."""
        removed = await asyncio.to_thread(self.requests.sweep_expired)
        if removed:
            log.info("removed %d requests past their retention time", removed)
        removed = await asyncio.to_thread(self.pipeline_requests.sweep_expired)
        if removed:
            log.info("removed %d pipeline requests past their retention time", removed)
        await asyncio.to_thread(self.journal.sweep_orphans)
        removed = await asyncio.to_thread(self.revisions.sweep_local)
        if removed:
            log.info("removed this server's copies of the code of %d deleted revisions", removed)
        for prefix in ("revisions", "datasets"):  # this server's copies of archives and datasets deleted anywhere
            await asyncio.to_thread(self.blobs.tidy, prefix, time.time() - RETENTION_SWEEP_PERIOD_S)
        removed = await asyncio.to_thread(self.payloads.sweep_orphans)
        if removed:
            log.info("removed %d request payload files no request names", removed)

    async def close(self) -> None:
        await self._background.close()
        await self.jobs.close()
        await self.deliveries.close()
        await self.services.close()
        # Running pipeline requests, run attempts and batch requests get their grace period side by side.
        await asyncio.gather(self.pipeline_requests.close(), self.runs.close(), self.requests.close())
        await self.revisions.close()
        await self.nodes.close()
        await self.scheduler.close()
        await self.bus.close()
        await self.http.aclose()
        if self.peers is not None:
            await self.peers.close()
        self.db.close()

    def _project_of(self, project_id: str) -> ProjectRow:
        with self.db.read() as session:
            row = session.get(ProjectRow, project_id)
        if row is None:
            raise NotFound("project", project_id)
        return row

    def _serving_target(self, version_id: str) -> Target | None:
        try:
            return Deployments.serving_target_check(self.deployments.target_of_version(version_id))
        except (NotFound, Unavailable):
            return None

    def pool_target(self, version_id: str, pool: str | None) -> Target:
        """What a call another node sent runs on: its version's target, or a service's. Raises
        `NotFound` or `Unavailable` when this node cannot serve it."""
        if pool is None:
            return Deployments.serving_target_check(self.deployments.target_of_version(version_id))
        if pool.startswith("job:"):
            return self.jobs.pool_target(pool)
        return self.services.pool_target(pool)

    async def _instance_spec(self, target: Target) -> InstanceSpec:
        code = built_code(target)
        package_dir = python = None
        if not self.runtime.prepares_code:
            package_dir, python = await asyncio.to_thread(self.revisions.materialise, target)
        return InstanceSpec(
            version_id=target.version_id,
            package_dir=package_dir,
            python=python,
            init_context={
                "project": target.project_name,
                "project_id": target.project_id,
                "deployment": target.deployment_name,
                "deployment_id": target.deployment_id,
                "version": target.version_name,
                "version_id": target.version_id,
                "input_type": target.input_type,
                "output_type": target.output_type,
                "input_fields": list(target.input_fields),
                "output_fields": list(target.output_fields),
                "language": "python",
                "environment_variables": dict(target.environment_variables),
            },
            environment={k: str(v) for k, v in target.environment_variables.items()},
            handler=target.handler,
            deployment_file=target.environment_variables.get(DEPLOYMENT_FILE_VARIABLE),
            max_log_bytes=self.settings.max_log_bytes,
            memory_limit_bytes=memory_limit_bytes(target.instance_type, self.settings.instance_memory_mib),
            code=code,
            instance_type=target.instance_type,
        )
