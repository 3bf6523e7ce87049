"""Pipeline requests: runs of a pipeline version, recorded in the store.

The pipeline request row is committed before it runs (direct) or before the call answers
(batch); `pipeline_walk.Walker` walks its graph. Once stored, a pipeline request lives as every
stored request does (`stored_requests.StoredRequests`); a delete or the retention sweep removes
its sub-pipeline, operator and deployment requests with it.

Every pipeline request runs on one node (`core.nodes`), its `owner`, and the write that ends it
is fenced by that owner. A direct one runs where it was received. A batch one waits pending: the
node that accepted it owns it at once and runs it when a slot is free; if that node dies, its
recovery gives the pending ones back to be claimed by any node (a periodic pass), and fails
what it was running (a walk cannot be resumed halfway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, delete, select, update

from modelbay.core.background import Background
from modelbay.core.clock import utcnow
from modelbay.core.deployments import Deployments
from modelbay.core.errors import InvalidInput, ModelbayError, NotFound, StatusChanged
from modelbay.core.fields import check_data
from modelbay.core.nodes import NODES, Nodes
from modelbay.core.payloads import Payloads, named_keys
from modelbay.core.pipeline_objects import PipelineObject
from modelbay.core.pipeline_walk import (
    OPERATOR_REQUESTS,
    PIPELINE_REQUESTS,
    Run,
    StepFailed,
    Stopped,
    Walker,
    next_sequence_id,
    step_result,
    time_left,
)
from modelbay.core.pipelines import Pipelines, Plan
from modelbay.core.requests import Requests
from modelbay.core.row_ids import time_ordered_id
from modelbay.core.scheduler import PRIORITY_BATCH, PRIORITY_DIRECT
from modelbay.core.stored_requests import MAX_BATCH, StoredRequests, check_batch, chunks
from modelbay.core.states import PIPELINE_REQUEST, REQUESTS, move
from modelbay.core.states import RequestStatus as Status
from modelbay.store.db import Database, Insert
from modelbay.store.tables import OperatorRequestRow, PipelineRequestRow, PipelineVersionRow, ProjectRow

log = logging.getLogger(__name__)

DIRECT_TIMEOUT_DEFAULT_S = 3600
DIRECT_TIMEOUT_MAX_S = 7200
BATCH_TIMEOUT_DEFAULT_S = 14400
BATCH_TIMEOUT_MAX_S = 172800

#: How long a delete waits for a running pipeline request it stopped to record its end.
STOP_WAIT_S = 30.0

#: Batch pipeline requests run at most this many at a time; the rest wait, pending.
BATCH_CONCURRENCY = 8

#: How often a node looks for pending batch requests no node holds (their node died), unless woken.
CLAIM_PERIOD_S = 2.0

#: Where the deployment steps of a batch pipeline request wait: as standard batch work (a batch
#: deployment request's default priority, 1), behind direct requests and high-priority batches.
BATCH_STEP_PRIORITY = PRIORITY_BATCH + 1


@dataclass(frozen=True)
class PipelineRecord:
    """A finished (or, for batch, accepted) pipeline request as the dialects see it."""

    id: str
    pipeline_name: str
    version_name: str
    status: str
    timeout: int
    result: Any
    error_message: str | None
    steps: list[dict[str, Any]]
    created_at: datetime


def check_input(plan: Plan, data: Any) -> bool:
    """Check a direct request's input; returns whether it is a list of inputs, each walked through the
    pipeline (the result is then the list of their results, as a deployment's `requests()` gives).

    Raises `InvalidInput` naming the field, or the item of the list.
    """
    if not isinstance(data, list):
        check_data(plan.io.input_type, plan.io.input_fields, data)
        return False
    if not data:
        raise InvalidInput("The input list is empty")
    if len(data) > MAX_BATCH:
        raise InvalidInput(f"At most {MAX_BATCH} inputs are allowed in one request, not {len(data)}")
    for index, item in enumerate(data):
        try:
            check_data(plan.io.input_type, plan.io.input_fields, item)
        except InvalidInput as exc:
            raise InvalidInput(f"Input {index} of the list: {exc.message}") from None
    return True


class PipelineRequests(StoredRequests):
    """Runs pipeline requests and answers questions about them."""

    machine = PIPELINE_REQUEST
    row_type = PipelineRequestRow
    version_row_type = PipelineVersionRow

    def __init__(self, db: Database, nodes: Nodes, pipelines: Pipelines, deployments: Deployments,
                 requests: Requests, payloads: Payloads) -> None:
        super().__init__(db, payloads)
        self._nodes = nodes
        self._pipelines = pipelines
        self._walker = Walker(db, payloads, deployments, requests, self._pipeline_step)
        self._runs: dict[str, Run] = {}  # every pipeline request walking now, sub-pipelines included
        self._batch_slots = asyncio.Semaphore(BATCH_CONCURRENCY)
        self._batch_tasks = Background("pipeline batch requests")
        self._batch_started: set[asyncio.Task[None]] = set()  # those past the wait for a slot
        self._claimable = asyncio.Event()  # a node died: look for its pending requests now
        nodes.add_recoverer(self.give_back, "pipeline requests")
        nodes.recovered.add(self._claimable.set)

    # --- create ----------------------------------------------------------------------------

    async def direct(self, project: ProjectRow, plan: Plan, data: Any, *, timeout: int,
                     origin: dict[str, str], on_update: Callable[[str], None] | None = None) -> PipelineRecord:
        """Run `data` through `plan` now and return the finished pipeline request.

        `on_update` receives the partials its deployment steps stream. Raises `InvalidInput`
        (nothing recorded) when `data` does not match the pipeline's input or the version is incomplete.
        A list of inputs is walked item by item (see `check_input`).
        """
        plan.check_runnable()
        as_list = check_input(plan, data)
        row = await self._new_row(plan, "direct", timeout, data, origin, Status.PROCESSING, self._nodes.id)
        # Not awaited: nobody has an answer before the run's last write, which follows it in
        # the committer's order; a crash before then leaves nothing accepted.
        self._db.committer.submit(Insert(PIPELINE_REQUESTS, [row])).add_done_callback(_log_failure)
        return await self._run(project, plan, row["id"], row["owner"], data, timeout, Status.PROCESSING,
                               row["created_at"], on_update=on_update, as_list=as_list)

    async def create_batch(self, project: ProjectRow, plan: Plan, items: list[Any], *, timeout: int,
                           origin: dict[str, str]) -> list[PipelineRecord]:
        """Validate every item, commit them all at once (all or nothing), then run them in the background."""
        plan.check_runnable()
        check_batch(items, lambda item: check_data(plan.io.input_type, plan.io.input_fields, item))
        owner = self._nodes.id  # the node that accepts them runs them, unless it dies first
        rows = [await self._new_row(plan, "batch", timeout, item, origin, Status.PENDING, owner) for item in items]
        await self._db.committer.submit_async(Insert(PIPELINE_REQUESTS, rows))
        for row in rows:
            self._spawn_batch(project, plan, row["id"], owner, timeout)
        return [PipelineRecord(r["id"], plan.pipeline_name, plan.version_name, "pending", timeout, None, None, [],
                               r["created_at"]) for r in rows]

    def _spawn_batch(self, project: ProjectRow, plan: Plan, request_id: str, owner: str, timeout: int) -> None:
        """Run a committed batch request `owner` holds once a slot is free. Its input is read from the
        store only then: thousands of waiting requests hold no input in memory."""
        async def run() -> None:
            async with self._batch_slots:
                self._batch_started.add(asyncio.current_task())  # type: ignore[arg-type]
                try:
                    await self._db.committer.submit_async(
                        lambda conn: move(conn, self.machine, request_id, Status.PENDING, Status.PROCESSING,
                                          fence=owner, started_at=utcnow()))
                except StatusChanged:
                    return  # cancelled or deleted while it waited, or given back (this node was declared dead)
                try:
                    data = self._input(request_id)
                    await self._run(project, plan, request_id, owner, data, timeout, Status.PROCESSING, utcnow(),
                                    priority=BATCH_STEP_PRIORITY)
                except Exception:
                    log.exception("batch pipeline request %s failed to run", request_id)

        task = self._batch_tasks.spawn(run(), name=f"pipeline-request-{request_id}")
        task.add_done_callback(self._batch_started.discard)

    async def _new_row(self, plan: Plan, mode: str, timeout: int, data: Any, origin: dict[str, str], status: Status,
                       owner: str, parent_id: str | None = None) -> dict[str, Any]:
        request_id = time_ordered_id()
        encoded = orjson.dumps(data)
        # a batch request keeps its input until it has run, whatever the retention
        kept = encoded if mode == "batch" or plan.retention_mode == "full" else None
        now = utcnow()
        return {
            "id": request_id,
            "project_id": plan.project_id,
            "pipeline_id": plan.pipeline_id,
            "version_id": plan.version_id,
            "parent_id": parent_id,
            "mode": mode,
            "status": status.value,
            "owner": owner,
            "timeout": timeout,
            **await self._payloads.values(request_id, "data", kept),
            "result": None,
            "error_message": None,
            "input_size": len(encoded),
            "output_size": 0,
            "steps": [],
            "origin": origin,
            "created_at": now,
            "started_at": now if status is Status.PROCESSING else None,
            "finished_at": None,
        }

    # --- running ---------------------------------------------------------------------------

    async def _run(self, project: ProjectRow, plan: Plan, request_id: str, owner: str, data: Any, timeout: int,
                   running: Status, created_at: datetime, parent: Run | None = None,
                   on_update: Callable[[str], None] | None = None,
                   priority: int = PRIORITY_DIRECT, as_list: bool = False) -> PipelineRecord:
        """Walk the DAG for a recorded request `owner` holds and record how it ended (fenced by `owner`)."""
        loop = asyncio.get_running_loop()
        run = Run(request_id, project, plan, timeout, loop.time() + timeout,
                  on_update=on_update or (parent.on_update if parent else None),
                  priority=parent.priority if parent else priority, as_list=as_list)
        self._runs[request_id] = run
        if parent is not None:
            parent.children[request_id] = run
            if parent.stopping:  # stopped while this row was written, so `_stop` did not see this run
                run.stopping = run.cancelled = True
        status, result, error = Status.COMPLETED, None, None
        try:
            result = await self._walker.walk(run, data)
        except StepFailed as exc:
            status, error = Status.FAILED, exc.message
        except Stopped:  # a step was cancelled from outside (a cancel of its deployment request)
            status, error = Status.FAILED, "A step of this pipeline request was cancelled"
        except Exception:  # a bug, not the user's: still record an end, or the request stays processing
            log.exception("pipeline request %s failed on an internal error", request_id)
            status, error = Status.FAILED, "The pipeline request failed on an internal error"
        finally:
            self._runs.pop(request_id, None)
            if parent is not None:
                parent.children.pop(request_id, None)
        if run.cancelled:
            status, result, error = Status.CANCELLED, None, None
        encoded = orjson.dumps(result) if status is Status.COMPLETED else b""
        kept = encoded if status is Status.COMPLETED and plan.retention_mode == "full" else None
        values = {
            **await self._payloads.values(request_id, "result", kept),
            "error_message": error,
            "output_size": len(encoded),
            "steps": run.steps,
            "finished_at": utcnow(),
        }
        if plan.retention_mode != "full":  # a batch input kept until now (its blob goes with the orphan sweep)
            values["data"] = values["data_key"] = None
        try:
            final = await self._db.committer.submit_async(
                self._finish(request_id, running, status, values, fence=owner))
        finally:
            run.recorded.set()
        return PipelineRecord(request_id, plan.pipeline_name, plan.version_name, (final or status).value, timeout,
                              result if final is Status.COMPLETED else None,
                              error if final is Status.FAILED else None, run.steps, created_at)

    async def _pipeline_step(self, run: Run, obj: PipelineObject, item: Any) -> Any:
        """Run a sub-pipeline object on one item: a pipeline request of its own, a child of `run`."""
        timeout = time_left(run, obj)
        try:
            plan = self._pipelines.plan(run.project, obj.reference_name, obj.version)
            plan.check_runnable()
            check_data(plan.io.input_type, plan.io.input_fields, item)
        except ModelbayError as exc:
            raise StepFailed(f"Object '{obj.name}' failed: {exc.message}") from None
        origin = {"created_by": "pipeline", "pipeline": run.plan.pipeline_name, "pipeline_request_id": run.id,
                  "pipeline_object": obj.name}
        row = await self._new_row(plan, "direct", timeout, item, origin, Status.PROCESSING, self._nodes.id,
                                  parent_id=run.id)
        entry = {"kind": "pipeline", "id": row["id"], "pipeline_object": obj.name, "pipeline": plan.pipeline_name,
                 "version": plan.version_name, "sequence_id": next_sequence_id(), "status": "processing",
                 "error_message": None, "input_size": row["input_size"], "output_size": None}
        run.steps.append(entry)
        await self._db.committer.submit_async(Insert(PIPELINE_REQUESTS, [row]))
        self._walker.store_steps(run)
        record = await self._run(run.project, plan, row["id"], row["owner"], item, timeout, Status.PROCESSING,
                                 row["created_at"], parent=run)
        return step_result(run, obj, entry, record.status, record.result, record.error_message)

    # --- reading, cancel and delete (the rest is `StoredRequests`') -------------------------

    def steps_of(self, row: PipelineRequestRow) -> list[dict[str, Any]]:
        """The steps of a request: live while it runs, else as stored."""
        run = self._runs.get(row.id)
        return list(run.steps) if run is not None else list(row.steps or [])

    def operator_request(self, plan: Plan, request_id: str) -> tuple[OperatorRequestRow, PipelineRequestRow]:
        """An operator request (with its input and result) of a request of this version, and that
        request as stored; raises `NotFound`."""
        with self._db.read() as session:
            row = session.get(OperatorRequestRow, request_id)
            parent = session.get(PipelineRequestRow, row.pipeline_request_id) if row else None
        if row is None or parent is None or parent.version_id != plan.version_id:
            raise NotFound("operator request", request_id)
        return self._payloads.fill(row, "operator request"), parent

    def _input(self, request_id: str) -> Any:
        """The input of a batch request (kept until it has run, whatever the retention)."""
        with self._db.read() as session:
            stored = session.execute(select(PipelineRequestRow.data, PipelineRequestRow.data_key)
                                     .where(PipelineRequestRow.id == request_id)).first()
        return self._payloads.value(*stored) if stored else None

    def _running_here(self) -> list[str]:
        return list(self._runs)

    async def _stop_running(self, request_id: str) -> bool:
        run = self._runs.get(request_id)
        if run is None:
            return False
        run.cancelled = True
        await self._walker.stop(run)  # its walk ends soon and records it cancelled
        return True

    async def _halt(self, ids: list[str]) -> None:
        runs = [run for request_id in ids if (run := self._runs.get(request_id)) is not None]
        elsewhere = self._running_elsewhere([request_id for request_id in ids if request_id not in self._runs])
        for run in runs:
            await self._stop_running(run.id)
        for request_id in elsewhere:
            self._tell_cancel(request_id)
        for run in runs:  # its steps are written with its end: wait for them, to delete them too
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.recorded.wait(), STOP_WAIT_S)
        # Another node holds the steps of those it runs in its memory until it writes their end.
        deadline = asyncio.get_running_loop().time() + STOP_WAIT_S
        while elsewhere and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            elsewhere = self._running_elsewhere(elsewhere)

    def _running_elsewhere(self, ids: list[str]) -> list[str]:
        """Those of `ids` that a live node other than this one runs (or is stopping)."""
        if not ids:
            return []
        table = PIPELINE_REQUESTS
        with self._db.read() as session:
            return [request_id for part in chunks(ids) for request_id in session.scalars(
                select(table.c.id).join(NODES, NODES.c.id == table.c.owner).where(
                    table.c.id.in_(part), table.c.owner != self._nodes.id, NODES.c.end.is_(None),
                    table.c.status.in_([Status.PROCESSING.value, Status.CANCELLED_PENDING.value])))]

    def _expired(self) -> tuple[Any, ...]:
        return (PIPELINE_REQUESTS.c.parent_id.is_(None),)  # sub-pipeline requests go with their parent

    def _remove(self, conn: Connection, ids: list[str]) -> list[str]:
        """Delete pipeline requests with their sub-pipeline, operator and deployment requests; returns
        the payload blob keys they named, to discard once this has committed."""
        todo, all_ids = list(ids), []
        while todo:  # sub-pipeline requests, at any depth
            all_ids += todo
            todo = [child for part in chunks(todo) for child in conn.scalars(
                select(PIPELINE_REQUESTS.c.id).where(PIPELINE_REQUESTS.c.parent_id.in_(part)))]
        deployment_ids = [
            step["id"]
            for part in chunks(all_ids)
            for steps in conn.scalars(select(PIPELINE_REQUESTS.c.steps).where(PIPELINE_REQUESTS.c.id.in_(part)))
            for step in steps or [] if step.get("kind") == "deployment"
        ]
        keys: list[str] = []
        for part in chunks(deployment_ids):
            keys += named_keys(conn, REQUESTS, REQUESTS.c.id.in_(part))
            conn.execute(delete(REQUESTS).where(REQUESTS.c.id.in_(part)))
        for part in chunks(all_ids):
            keys += named_keys(conn, OPERATOR_REQUESTS, OPERATOR_REQUESTS.c.pipeline_request_id.in_(part))
            conn.execute(delete(OPERATOR_REQUESTS).where(OPERATOR_REQUESTS.c.pipeline_request_id.in_(part)))
        return keys + super()._remove(conn, all_ids)

    # --- claiming and recovery -------------------------------------------------------------

    def start(self, project_of: Callable[[str], ProjectRow]) -> None:
        """Start looking for pending batch requests no node holds: at once (those of the node that ran
        on this data dir before, given back by its recovery), then every few seconds and whenever a
        node died. `project_of(project_id)` gives a project row. Called on the event loop."""
        self._project_of = project_of
        self._batch_tasks.every(CLAIM_PERIOD_S, self._claim_pass, "claim", wake=self._claimable)

    async def _claim_pass(self) -> None:
        """Claim as many free pending batch requests as there are free slots here, and run them."""
        room = BATCH_CONCURRENCY - len(self._batch_tasks.tasks)
        if room <= 0:
            return
        owner = self._nodes.id
        for request_id, project_id, version_id, timeout in await asyncio.to_thread(self._claim, owner, room):
            try:
                plan = self._pipelines.plan_of_version(version_id)
                project = self._project_of(project_id)
            except (ModelbayError, ValueError) as exc:
                message = f"The pipeline version of this request can no longer run: {exc}"
                with contextlib.suppress(StatusChanged):
                    await self._db.committer.submit_async(
                        lambda conn, request_id=request_id, message=message: move(
                            conn, self.machine, request_id, Status.PENDING, Status.FAILED, fence=owner,
                            finished_at=utcnow(), error_message=message))
                continue
            self._spawn_batch(project, plan, request_id, owner, timeout)

    def _claim(self, owner: str, limit: int) -> list[Any]:
        """Make `owner` the owner of up to `limit` pending requests that have none, oldest first. They
        stay pending until a slot runs them, so the claim is a compare-and-set of the owner alone;
        SKIP LOCKED lets nodes claiming at once take different rows (PostgreSQL)."""
        table = PIPELINE_REQUESTS
        unowned = select(table.c.id).where(table.c.owner.is_(None), table.c.status == Status.PENDING.value)
        if not self._db.has_rows(unowned):
            return []
        with self._db.write() as session:
            conn = session.connection()
            free = list(conn.scalars(
                unowned.order_by(table.c.created_at, table.c.id).limit(limit).with_for_update(skip_locked=True)))
            if not free:
                return []
            claimed = conn.execute(
                update(table).where(table.c.id.in_(free), table.c.owner.is_(None),
                                    table.c.status == Status.PENDING.value)
                .values(owner=owner).returning(table.c.id, table.c.project_id, table.c.version_id,
                                               table.c.timeout, table.c.created_at)).all()
        return [row[:4] for row in sorted(claimed, key=lambda row: (row.created_at, row.id))]

    async def close(self, grace_s: float = 30.0) -> None:
        """Let running batch requests finish, for up to `grace_s`; what waits stays pending (this
        node's stop gives it back for another node to run)."""
        await self._batch_tasks.stop_loops()
        for task in self._batch_tasks.tasks - self._batch_started:
            task.cancel()
        await self._batch_tasks.close(grace_s)


def _log_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("recording a pipeline request failed", exc_info=future.exception())
