"""Services: named, long-running groups of instances of one version, with start/stop and scaling.

A service owns its own instance pool in the scheduler (its own instance count and environment).
A reconcile loop compares what each stored service wants with what runs and closes the gap;
a service is `in_progress` until its instances have loaded and passed a health check, then
`ready`. The store holds what is wanted, so a restart brings every running service back.
A service of a version whose code is building stays `in_progress` until the build ends (a pass
follows at once, woken by `Revisions.build_ended`); if the build failed, the service stops and
its `start_error` is the build's reason.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import functools
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Dialect, bindparam, delete, select
from sqlalchemy.orm import Session

from modelbay.core import bus as topics
from modelbay.core.background import Background
from modelbay.core.bus import Bus, Message
from modelbay.core.clock import utcnow
from modelbay.core.deployments import Deployments, Target
from modelbay.core.errors import InvalidInput, NotFound, Unavailable
from modelbay.core.journal import Journal, split_lines
from modelbay.core.requests import RequestRecord, Requests
from modelbay.core.revisions import build_failure
from modelbay.core.scheduler import Scheduler
from modelbay.core.states import SERVICE, ServiceStatus, VersionStatus, move
from modelbay.runtime.base import Runtime
from modelbay.store.db import Database
from modelbay.store.driver import DriverStatement, driver_cursor
from modelbay.store.tables import LogLineRow, ServiceRow

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The columns of a service's row that change once it is made (`update`, `set_running`, and the
#: status moves as its instances come and go): what a call reads of it (see `Services.serving`).
CHANGING = ("status", "instance_number", "min_instance_number", "max_instance_number", "enable_autoscale")


@functools.cache
def _changing_statement(dialect: Dialect) -> DriverStatement:
    table = ServiceRow.__table__
    return DriverStatement(select(table.c.deployment_id, *(table.c[name] for name in CHANGING))
                           .where(table.c.id == bindparam("id")), dialect)

#: How often wanted and actual instances are compared while a service is coming up, and when all
#: are settled (a change wakes the loop at once either way).
RECONCILE_PERIOD_S = 0.25
SETTLED_PERIOD_S = 2.0

#: Most instances one service may ask for: each is a process on this machine.
MAX_INSTANCES = 20

#: How long one call through a service may take.
CALL_TIMEOUT_S = 600

#: How long closing waits for service log lines still being written.
LOG_WRITE_GRACE_S = 5.0


@dataclass(frozen=True)
class Scaling:
    instance_number: int
    min_instance_number: int
    max_instance_number: int
    enable_autoscale: bool


def check_scaling(fields: dict[str, Any], current: Scaling | None = None) -> Scaling:
    """Scaling settings from `fields` over `current`; raises `InvalidInput` naming the bad one.
    Numbers are ints and `enable_autoscale` a bool: a dialect reads its clients' spellings first."""
    values: dict[str, Any] = dataclasses.asdict(current) if current else {
        "instance_number": 1, "min_instance_number": None, "max_instance_number": None, "enable_autoscale": False,
    }
    for key in ("instance_number", "min_instance_number", "max_instance_number"):
        value = fields.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INSTANCES:
            raise InvalidInput(f"${key} must be an integer from 1 to {MAX_INSTANCES}", field=key)
        values[key] = value
    autoscale = fields.get("enable_autoscale")
    if autoscale is not None:
        if not isinstance(autoscale, bool):
            raise InvalidInput("$enable_autoscale must be true or false", field="enable_autoscale")
        values["enable_autoscale"] = autoscale
    number = values["instance_number"]
    low = values["min_instance_number"] if values["min_instance_number"] is not None else number
    high = values["max_instance_number"] if values["max_instance_number"] is not None else max(number, low)
    if low > high:
        raise InvalidInput("$min_instance_number may not exceed $max_instance_number", field="min_instance_number")
    return Scaling(number, low, high, values["enable_autoscale"])


class Services:
    """CRUD, start/stop and scaling of services, and calls through them."""

    def __init__(self, db: Database, deployments: Deployments, requests: Requests, scheduler: Scheduler,
                 runtime: Runtime, journal: Journal, scale_down_idle_s: float, bus: Bus) -> None:
        self._db = db
        self._bus = bus
        self._deployments = deployments
        self._requests = requests
        self._scheduler = scheduler
        self._runtime = runtime
        self._journal = journal
        self._scale_down_idle_s = scale_down_idle_s
        self._rows: dict[str, ServiceRow] = {}  # the serving path's cache; every change here refreshes it
        self._targets: dict[str, tuple[Target, Target]] = {}  # service id -> (version target, service target)
        self._pools: set[str] = set()
        self._background = Background("services")  # the reconcile loop and log writes of calls
        self._wake = asyncio.Event()
        self._generation = 0  # bumped on every change, so a reconcile that raced one is not applied
        self._loop: asyncio.AbstractEventLoop | None = None  # set by `start`: build ends are told on threads
        bus.subscribe(topics.SERVICES, self._changed_elsewhere)
        bus.subscribe(topics.VERSION, self._version_changed)  # a build that ended elsewhere
        bus.subscribe_resync(self._wake.set)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, alone: bool = True) -> None:
        """Bring back every service that was running. When no other server runs (`alone`), a
        service is ready again only once its instances are; else the other servers' instances serve it."""
        self._loop = asyncio.get_running_loop()
        if alone:
            with self._db.write() as session:
                move(session, SERVICE, {}, {ServiceStatus.READY}, ServiceStatus.IN_PROGRESS)
        self._background.every(RECONCILE_PERIOD_S, self._reconcile_pass, "reconcile", wake=self._wake)

    def build_ended(self, version_id: str) -> None:
        """A reaction to `Revisions.build_ended` (on the build's thread): reconcile now, so services
        that waited for the build start, or stop if it failed."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def close(self) -> None:
        """Stop reconciling; give the log lines of calls that have ended a moment to be written."""
        await self._background.close(LOG_WRITE_GRACE_S)

    # --- CRUD --------------------------------------------------------------------------------

    async def create(self, target: Target, fields: dict[str, Any]) -> ServiceRow:
        """Create a service of `target`'s version; its instances start in the background."""
        building = target.revision_id is None and target.status == VersionStatus.BUILDING
        if target.revision_id is None and not building:
            raise Unavailable(f"Version '{target.version_name}' has no built code (status: {target.status})")
        scaling = check_scaling(fields)
        instance_type = fields.get("instance_type") or "cpu-0.25"
        if not isinstance(instance_type, str) or len(instance_type) > 64:
            raise InvalidInput("instance_type must be a string of at most 64 characters")
        now = utcnow()
        row = ServiceRow(
            id=secrets.token_hex(8),
            project_id=target.project_id,
            deployment_id=target.deployment_id,
            version_id=target.version_id,
            status=ServiceStatus.IN_PROGRESS.value,
            instance_type=instance_type,
            environment=dict(fields.get("environment") or {}),
            model_alias=fields.get("model_alias"),
            created_at=now,
            modified_at=now,
            **dataclasses.asdict(scaling),
        )
        await self._write(lambda session: session.add(row))
        lines = [f"Service created with {self._wanted(row)} instance(s)"]
        if building:
            lines.append("The version's code is still building; the service starts when the build ends")
        await self._journal.append(row.id, lines)
        self._changed(row)
        return row

    def get(self, deployment_id: str, service_id: str) -> ServiceRow:
        """Raises `NotFound` unless the service exists in this deployment. Read from the store, not
        the cache: a change made through another node shows at once (its message may still be on
        its way), and a service stopped there refuses calls here at once."""
        with self._db.read() as session:
            row = session.get(ServiceRow, service_id)
        if row is not None:
            self._rows[service_id] = row
        if row is None or row.deployment_id != deployment_id:
            raise NotFound("service", service_id)
        return row

    def serving(self, deployment_id: str, service_id: str) -> ServiceRow:
        """The service a call goes to, as `get` reads it; a call reads only what changes of the row
        (`CHANGING`), and takes the rest from the row last read while those are as it holds them.
        (`True == 1`: a driver may give a boolean as either.)"""
        cached = self._rows.get(service_id)
        if cached is not None:
            with self._db.reader_engine.connect() as conn:
                found = _changing_statement(conn.dialect).rows(driver_cursor(conn), {"id": service_id})
            if found and found[0][0] == deployment_id and all(
                    getattr(cached, name) == value for name, value in zip(CHANGING, found[0][1:], strict=True)):
                return cached
        return self.get(deployment_id, service_id)

    def list(self, deployment_id: str) -> builtins.list[ServiceRow]:
        with self._db.read() as session:
            return list(
                session.scalars(
                    select(ServiceRow).where(ServiceRow.deployment_id == deployment_id).order_by(ServiceRow.created_at)
                )
            )

    async def update(self, deployment_id: str, service_id: str, fields: dict[str, Any]) -> ServiceRow:
        """Change the scaling; the service goes `in_progress` until it matches."""
        self.get(deployment_id, service_id)

        def write(session: Session) -> ServiceRow:
            # Locked: the status read here is the one the move below compares (the service may be
            # becoming ready at this moment, on this node or another).
            row = session.get(ServiceRow, service_id, with_for_update=True, populate_existing=True)
            if row is None:
                raise NotFound("service", service_id)
            # Over the stored settings, not the cached ones: two PATCHes naming different fields both hold.
            scaling = check_scaling(fields, Scaling(row.instance_number, row.min_instance_number,
                                                    row.max_instance_number, row.enable_autoscale))
            if row.status == ServiceStatus.READY:
                move(session, SERVICE, service_id, ServiceStatus.READY, ServiceStatus.IN_PROGRESS)
                session.refresh(row, ["status"])
            for key, value in dataclasses.asdict(scaling).items():
                setattr(row, key, value)
            row.modified_at = utcnow()
            return row

        row = await self._write(write)
        await self._journal.append(service_id, [f"Scaling changed: {self._describe(row)}"])
        self._changed(row)
        return row

    async def delete(self, deployment_id: str, service_id: str) -> None:
        """Delete a service; its instances stop (busy ones once their call ends)."""
        self.get(deployment_id, service_id)

        def write(session: Session) -> None:
            session.execute(delete(ServiceRow).where(ServiceRow.id == service_id))
            session.execute(delete(LogLineRow).where(LogLineRow.owner_id == service_id))

        await self._write(write)
        self._forget(service_id)

    async def set_running(self, deployment_id: str, service_id: str, running: bool) -> ServiceRow:
        """Start or stop a service. Raises `InvalidInput` when it already is in that state."""
        self.get(deployment_id, service_id)

        def write(session: Session) -> ServiceRow:
            row = session.get(ServiceRow, service_id, with_for_update=True, populate_existing=True)  # as in `update`
            if row is None:
                raise NotFound("service", service_id)
            stopped = row.status == ServiceStatus.STOPPED
            if running and not stopped:
                raise InvalidInput("The service is already running")
            if not running and stopped:
                raise InvalidInput("The service is not running")
            move(session, SERVICE, service_id, ServiceStatus(row.status),
                 ServiceStatus.IN_PROGRESS if running else ServiceStatus.STOPPED)
            session.refresh(row, ["status"])
            row.modified_at = utcnow()
            return row

        row = await self._write(write)
        await self._journal.append(service_id, ["Service started" if running else "Service stopped"])
        self._changed(row)
        return row

    # --- serving -----------------------------------------------------------------------------

    async def call(self, row: ServiceRow, data: Any, context: dict[str, Any]) -> tuple[Target, RequestRecord]:
        """Run one request on the instances of the service `row` (as `serving` just read it). Raises
        `Unavailable` for a stopped one (at once: a caller never waits on a stopped service)."""
        service_id = row.id
        if row.status == ServiceStatus.STOPPED:
            raise Unavailable("The service is stopped")
        target = self._deployments.serving_target_check(self.target(row))
        try:
            record = await self._requests.direct(
                target, data, timeout=CALL_TIMEOUT_S, origin={"created_by": "service", "service_id": service_id},
                context=context,
            )
        finally:
            self._drop_if_gone(service_id)
        if record.logs:
            self._background.spawn(self._journal.append(service_id, split_lines(record.logs)),
                                   name=f"logs-{service_id}")
        return target, record

    def _drop_if_gone(self, service_id: str) -> None:
        """Retire the pool of a service deleted or stopped during a call. A call waiting for an
        instance when the pool was retired makes the scheduler build the pool again; for a deleted
        service nothing else would ever retire that one (the reconcile loop no longer knows it)."""
        row = self._rows.get(service_id)
        if row is None or row.status == ServiceStatus.STOPPED:
            self._scheduler.drop(f"service:{service_id}")

    def target(self, row: ServiceRow) -> Target:
        """The service's own target: its version's, served by the service's pool, scaled and with its env."""
        base = self._deployments.target_of_version(row.version_id)
        cached = self._targets.get(row.id)
        if cached is not None and cached[0] is base:
            return cached[1]
        low, high = self._bounds(row)
        target = dataclasses.replace(
            base,
            pool=f"service:{row.id}",
            minimum_instances=low,
            maximum_instances=high,
            maximum_idle_time=int(self._scale_down_idle_s) if row.enable_autoscale else base.maximum_idle_time,
            environment_variables={**base.environment_variables, **(row.environment or {})},
            instance_type=row.instance_type,
        )
        self._targets[row.id] = (base, target)
        return target

    def pool_target(self, pool: str) -> Target:
        """The target of a service's pool ("service:<id>"), for a call another node sent. Raises
        `NotFound` for a service that is gone, `Unavailable` for one stopped or without code."""
        service_id = pool.removeprefix("service:")
        row = self._rows.get(service_id)
        if row is None:
            with self._db.read() as session:
                row = session.get(ServiceRow, service_id)
        if row is None:
            raise NotFound("service", service_id)
        if row.status == ServiceStatus.STOPPED:
            raise Unavailable("The service is stopped")
        return self._deployments.serving_target_check(self.target(row))

    def start_error(self, row: ServiceRow) -> str | None:
        """Why the service cannot start: its version's failed build (while it is stopped for it), or
        why its last instance failed to start, until one starts."""
        if row.status == ServiceStatus.STOPPED:
            try:
                built = self._deployments.target_of_version(row.version_id).revision_id is not None
            except NotFound:
                return None
            if not built:
                return build_failure(self._db, row.version_id)
        return self._scheduler.start_error(f"service:{row.id}")

    async def instance_count(self, service_id: str) -> int:
        """The service's instances in the cluster: this node's loaded ones, and the others' of its."""
        key = f"service:{service_id}"
        return len(self._scheduler.instances(key)) + await self._scheduler.instances_elsewhere(key)

    # --- reconciling -------------------------------------------------------------------------

    async def _reconcile_pass(self) -> float:
        """A pass of the reconcile loop; the next comes sooner while a service is coming up."""
        return RECONCILE_PERIOD_S if await self._reconcile() else SETTLED_PERIOD_S

    async def _reconcile(self) -> bool:
        """One pass; returns whether a service is still coming up (then the next pass comes sooner)."""
        generation = self._generation
        rows = await asyncio.to_thread(self._all)
        if generation != self._generation:
            return True  # a change raced the read: look again on the next pass
        live: set[str] = set()
        for row in rows:
            if generation != self._generation:
                return True
            self._rows[row.id] = row
            key = f"service:{row.id}"
            if row.status == ServiceStatus.STOPPED:
                continue
            try:
                target = self.target(row)
            except NotFound:
                continue  # its version is going away with it
            if target.revision_id is None:
                if (row.status == ServiceStatus.IN_PROGRESS and target.status == VersionStatus.FAILED
                        and await self._stop_unbuilt(row) and self._rows.get(row.id) is row):
                    row.status = ServiceStatus.STOPPED.value  # the serving path sees it stopped at once
                continue  # not built: no instances (in progress while it builds)
            live.add(key)
            self._scheduler.ensure(target)
            if row.status == ServiceStatus.IN_PROGRESS and await self._is_ready(key, target):
                marked = await asyncio.to_thread(self._mark_ready, row.id, row.modified_at)
                if marked and self._rows.get(row.id) is row:  # the serving path sees it ready at once
                    row.status = ServiceStatus.READY.value
        for key in self._pools - live:
            self._scheduler.drop(key)
        self._pools = live
        if generation == self._generation:  # services deleted behind our back (with their deployment)
            existing = {row.id for row in rows}
            for service_id in [sid for sid in self._rows if sid not in existing]:
                self._rows.pop(service_id, None)
                self._targets.pop(service_id, None)
        return any(row.status == ServiceStatus.IN_PROGRESS for row in rows)

    async def _stop_unbuilt(self, row: ServiceRow) -> bool:
        """Stop a service that waited for a build that failed, saying why in its log; returns
        whether it stopped (a change since the pass read it keeps it as it is)."""
        failure = await asyncio.to_thread(build_failure, self._db, row.version_id) or "The version has no built code"
        lines = self._journal.rows(row.id, [f"{failure}; the service stopped"])

        def write(session: Session) -> int:
            moved = move(session, SERVICE, {"id": row.id, "modified_at": row.modified_at},
                         {ServiceStatus.IN_PROGRESS}, ServiceStatus.STOPPED, modified_at=utcnow())
            if moved:  # the reason is in the log as soon as the service shows stopped
                self._journal.write(session.connection(), lines)
            return moved

        return bool(await self._write(write))

    async def _is_ready(self, key: str, target: Target) -> bool:
        """Whether the service runs its minimum, counting other nodes' instances, and this node's
        have loaded and answer a health check."""
        instances = self._scheduler.instances(key)
        if len(instances) > target.maximum_instances:
            return False
        if len(instances) < target.minimum_instances and (
                len(instances) + await self._scheduler.instances_elsewhere(key) < target.minimum_instances):
            return False
        for instance in instances:
            if not await self._runtime.healthy(instance):
                return False
        return True

    def _all(self) -> builtins.list[ServiceRow]:
        with self._db.read() as session:
            return list(session.scalars(select(ServiceRow)))

    def _mark_ready(self, service_id: str, seen_modified_at: datetime) -> bool:
        """`in_progress` -> `ready`, unless the service changed since the pass that saw it ready
        (a scaling change or a stop in between would otherwise be marked ready too).
        Returns whether it was marked."""
        with self._db.write() as session:
            return bool(move(session, SERVICE, {"id": service_id, "modified_at": seen_modified_at},
                             {ServiceStatus.IN_PROGRESS}, ServiceStatus.READY, modified_at=utcnow()))

    async def _write(self, write: Callable[[Session], T]) -> T:
        """Run `write` in a write transaction off the loop (waiting for SQLite's write lock would block it)."""

        def run() -> T:
            with self._db.write() as session:
                return write(session)

        return await asyncio.to_thread(run)

    def _changed(self, row: ServiceRow) -> None:
        self._generation += 1
        self._rows[row.id] = row
        self._targets.pop(row.id, None)
        if row.status == ServiceStatus.STOPPED:
            self._scheduler.drop(f"service:{row.id}")
        self._wake.set()
        self._bus.publish(topics.SERVICES, row.id)

    def _forget(self, service_id: str) -> None:
        self._generation += 1
        self._rows.pop(service_id, None)
        self._targets.pop(service_id, None)
        self._scheduler.drop(f"service:{service_id}")
        self._pools.discard(f"service:{service_id}")
        self._wake.set()
        self._bus.publish(topics.SERVICES, service_id)

    async def _changed_elsewhere(self, message: Message) -> None:
        """Another node changed a service: what is cached of it is read again (a row gone from the
        cache would count as deleted), and the reconcile pass that follows retires its pool here if
        it stopped or is gone."""
        if message.from_here:
            return
        service_id = message.payload
        self._generation += 1
        self._targets.pop(service_id, None)
        generation = self._generation

        def read() -> ServiceRow | None:
            with self._db.read() as session:
                return session.get(ServiceRow, service_id)

        row = await asyncio.to_thread(read)
        if generation == self._generation:  # no change raced the read
            if row is None:
                self._rows.pop(service_id, None)
            else:
                self._rows[service_id] = row
        self._wake.set()

    def _version_changed(self, _message: Message) -> None:
        self._wake.set()

    @staticmethod
    def _bounds(row: ServiceRow) -> tuple[int, int]:
        if row.enable_autoscale:
            return row.min_instance_number, row.max_instance_number
        return row.instance_number, row.instance_number

    def _wanted(self, row: ServiceRow) -> int:
        return self._bounds(row)[0]

    def _describe(self, row: ServiceRow) -> str:
        if row.enable_autoscale:
            return f"autoscale from {row.min_instance_number} to {row.max_instance_number} instances"
        return f"{row.instance_number} instance(s)"

