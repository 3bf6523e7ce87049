"""Pipeline requests: one run of a pipeline version, walking its DAG.

Each object runs once all its sources have given their items: a deployment object becomes a
direct request through the same scheduler as any other (`Requests.direct`, with an `origin`
naming the pipeline request), an operator runs here, a sub-pipeline recurses. Independent
branches run concurrently. Every step gets the time the pipeline has left, so a pipeline
never outlives its timeout.

The pipeline request row is committed before it runs (direct) or before the call answers
(batch). Its steps (deployment, operator and sub-pipeline requests) are kept in memory while
it runs and stored with its end. After a crash, `recover` fails what was running and runs
again what was waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, Table, delete, select

from modelbay.core import operators
from modelbay.core.background import Background
from modelbay.core.clock import utcnow
from modelbay.core.deployments import Deployments
from modelbay.core.errors import InvalidInput, ModelbayError, NotFound, StatusChanged
from modelbay.core.fields import check_data
from modelbay.core.payloads import Payloads, named_keys
from modelbay.core.pipelines import END, START, PipelineObject, Pipelines, Plan, Source
from modelbay.core.requests import LIST_LIMIT_MAX, MAX_BATCH, Requests, cancel_selection, list_query
from modelbay.core.scheduler import PRIORITY_BATCH, PRIORITY_DIRECT
from modelbay.core.states import PIPELINE_REQUEST, REQUESTS, move
from modelbay.core.states import REQUEST_TERMINAL as TERMINAL
from modelbay.core.states import RequestStatus as Status
from modelbay.store.db import Database, Insert
from modelbay.store.tables import OperatorRequestRow, PipelineRequestRow, PipelineVersionRow, ProjectRow

log = logging.getLogger(__name__)

PIPELINE_REQUESTS: Table = PipelineRequestRow.__table__  # type: ignore[assignment]
OPERATOR_REQUESTS: Table = OperatorRequestRow.__table__  # type: ignore[assignment]

DIRECT_TIMEOUT_DEFAULT_S = 3600
DIRECT_TIMEOUT_MAX_S = 7200
BATCH_TIMEOUT_DEFAULT_S = 14400
BATCH_TIMEOUT_MAX_S = 172800

#: How long a delete waits for a running pipeline request it stopped to record its end.
STOP_WAIT_S = 30.0

#: Most ids bound in one `IN (…)`: deleting a pipeline or sweeping may name hundreds of thousands
#: of requests, past SQLite's 250,000 and PostgreSQL's 65,535 parameters per statement.
IDS_PER_STATEMENT = 500

#: Batch pipeline requests run at most this many at a time; the rest wait, pending.
BATCH_CONCURRENCY = 8

#: Where the deployment steps of a batch pipeline request wait: as standard batch work (a batch
#: deployment request's default priority, 1), behind direct requests and high-priority batches.
BATCH_STEP_PRIORITY = PRIORITY_BATCH + 1


class StepFailed(Exception):
    """A step failed, and with it the pipeline request; the message names the object."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Stopped(Exception):
    """A step that did not run because the pipeline request was already ending."""


_last_sequence = 0


def next_sequence_id() -> str:
    """An id that sorts by creation, as a string of fixed width (the SDK compares them as strings)."""
    global _last_sequence
    value = max(time.time_ns() // 1000 * 10, _last_sequence + 1)
    _last_sequence = value
    return str(value)


@dataclass
class Run:
    """A pipeline request being walked."""

    id: str
    project: ProjectRow
    plan: Plan
    timeout: int
    deadline: float  # event-loop time
    steps: list[dict[str, Any]] = field(default_factory=list)
    running: set[str] = field(default_factory=set)  # deployment request ids running now
    children: dict[str, Run] = field(default_factory=dict)  # sub-pipeline requests running now
    stopping: bool = False
    cancelled: bool = False
    on_update: Callable[[str], None] | None = None  # where streamed partials of its steps go
    priority: int = PRIORITY_DIRECT  # of its deployment steps: a batch request's wait as batch work
    recorded: asyncio.Event = field(default_factory=asyncio.Event)  # set once its end is written

    def remaining(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()


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


class PipelineRequests:
    """Runs pipeline requests and answers questions about them."""

    def __init__(self, db: Database, pipelines: Pipelines, deployments: Deployments, requests: Requests,
                 payloads: Payloads) -> None:
        self._db = db
        self._payloads = payloads
        self._pipelines = pipelines
        self._deployments = deployments
        self._requests = requests
        self._runs: dict[str, Run] = {}  # every pipeline request walking now, sub-pipelines included
        self._batch_slots = asyncio.Semaphore(BATCH_CONCURRENCY)
        self._batch_tasks = Background("pipeline batch requests")
        self._batch_started: set[asyncio.Task[None]] = set()  # those past the wait for a slot

    # --- create ----------------------------------------------------------------------------

    async def direct(self, project: ProjectRow, plan: Plan, data: Any, *, timeout: int,
                     origin: dict[str, str], on_update: Callable[[str], None] | None = None) -> PipelineRecord:
        """Run `data` through `plan` now and return the finished pipeline request.

        `on_update` receives the partials its deployment steps stream. Raises `InvalidInput`
        (nothing recorded) when `data` does not match the pipeline's input or the version is incomplete.
        """
        plan.check_runnable()
        check_data(plan.io.input_type, plan.io.input_fields, data)
        row = await self._new_row(plan, "direct", timeout, data, origin, Status.PROCESSING)
        # Not awaited: nobody has an answer before the run's last write, which follows it in
        # the committer's order; a crash before then leaves nothing accepted.
        self._db.committer.submit(Insert(PIPELINE_REQUESTS, [row])).add_done_callback(_log_failure)
        return await self._run(project, plan, row["id"], data, timeout, Status.PROCESSING, row["created_at"],
                               on_update=on_update)

    async def create_batch(self, project: ProjectRow, plan: Plan, items: list[Any], *, timeout: int,
                           origin: dict[str, str]) -> list[PipelineRecord]:
        """Validate every item, commit them all at once (all or nothing), then run them in the background."""
        plan.check_runnable()
        if not items:
            raise InvalidInput("A batch needs at least one request")
        if len(items) > MAX_BATCH:
            raise InvalidInput(f"At most {MAX_BATCH} requests are allowed in one batch, not {len(items)}")
        for index, item in enumerate(items):
            try:
                check_data(plan.io.input_type, plan.io.input_fields, item)
            except InvalidInput as exc:
                raise InvalidInput(f"Request {index} of the batch: {exc.message}") from None
        rows = [await self._new_row(plan, "batch", timeout, item, origin, Status.PENDING) for item in items]
        await self._db.committer.submit_async(Insert(PIPELINE_REQUESTS, rows))
        for row in rows:
            self._spawn_batch(project, plan, row["id"], timeout)
        return [PipelineRecord(r["id"], plan.pipeline_name, plan.version_name, "pending", timeout, None, None, [],
                               r["created_at"]) for r in rows]

    def _spawn_batch(self, project: ProjectRow, plan: Plan, request_id: str, timeout: int) -> None:
        """Run a committed batch request once a slot is free. Its input is read from the store only
        then: thousands of waiting requests hold no input in memory."""
        async def run() -> None:
            async with self._batch_slots:
                self._batch_started.add(asyncio.current_task())  # type: ignore[arg-type]
                try:
                    await self._db.committer.submit_async(
                        lambda conn: move(conn, PIPELINE_REQUEST, request_id, Status.PENDING, Status.PROCESSING,
                                             started_at=utcnow()))
                except StatusChanged:
                    return  # cancelled or deleted while it waited
                try:
                    data = self._input(request_id)
                    await self._run(project, plan, request_id, data, timeout, Status.PROCESSING, utcnow(),
                                    priority=BATCH_STEP_PRIORITY)
                except Exception:
                    log.exception("batch pipeline request %s failed to run", request_id)

        task = self._batch_tasks.spawn(run(), name=f"pipeline-request-{request_id}")
        task.add_done_callback(self._batch_started.discard)

    async def _new_row(self, plan: Plan, mode: str, timeout: int, data: Any, origin: dict[str, str], status: Status,
                       parent_id: str | None = None) -> dict[str, Any]:
        request_id = str(uuid.uuid4())
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

    async def _run(self, project: ProjectRow, plan: Plan, request_id: str, data: Any, timeout: int,
                   running: Status, created_at: datetime, parent: Run | None = None,
                   on_update: Callable[[str], None] | None = None,
                   priority: int = PRIORITY_DIRECT) -> PipelineRecord:
        """Walk the DAG for a recorded request and record how it ended."""
        loop = asyncio.get_running_loop()
        run = Run(request_id, project, plan, timeout, loop.time() + timeout,
                  on_update=on_update or (parent.on_update if parent else None),
                  priority=parent.priority if parent else priority)
        self._runs[request_id] = run
        if parent is not None:
            parent.children[request_id] = run
            if parent.stopping:  # stopped while this row was written, so `_stop` did not see this run
                run.stopping = run.cancelled = True
        status, result, error = Status.COMPLETED, None, None
        try:
            result = await self._walk(run, data)
        except StepFailed as exc:
            status, error = Status.FAILED, exc.message
        except _Stopped:  # a step was cancelled from outside (a cancel of its deployment request)
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
            final = await self._db.committer.submit_async(self._finish(request_id, running, status, values))
        finally:
            run.recorded.set()
        return PipelineRecord(request_id, plan.pipeline_name, plan.version_name, (final or status).value, timeout,
                              result if final is Status.COMPLETED else None,
                              error if final is Status.FAILED else None, run.steps, created_at)

    @staticmethod
    def _finish(request_id: str, running: Status, status: Status, values: dict[str, Any]) -> Any:
        def finish(conn: Connection) -> Status | None:
            if status is not Status.CANCELLED:
                try:
                    move(conn, PIPELINE_REQUEST, request_id, running, status, **values)
                    return status
                except StatusChanged:
                    pass
            values.pop("result", None)
            values.pop("result_key", None)
            values["error_message"] = None
            if status is Status.CANCELLED:  # stopped with its parent: its own cancel is not recorded yet
                try:
                    move(conn, PIPELINE_REQUEST, request_id, running, Status.CANCELLED_PENDING)
                except StatusChanged:
                    pass
            try:
                move(conn, PIPELINE_REQUEST, request_id, Status.CANCELLED_PENDING, Status.CANCELLED, **values)
                return Status.CANCELLED
            except StatusChanged:
                return None  # deleted meanwhile

        return finish

    async def _walk(self, run: Run, data: Any) -> Any:
        """Run every object once its sources are done; returns what reaches `pipeline_end`."""
        plan = run.plan
        if plan.incomplete is not None:  # a queued request whose version was edited into an unfinished state
            raise StepFailed(plan.incomplete)
        loop = asyncio.get_running_loop()
        done: dict[str, asyncio.Future[list[Any]]] = {name: loop.create_future() for name in plan.order}
        done[START] = loop.create_future()
        done[START].set_result([data])

        async def gather_inputs(destination: str, io_type: str) -> list[Any]:
            sources = plan.sources.get(destination, ())
            given = [await done[source.name] for source in sources]
            return _merge(destination, io_type, sources, given)

        async def run_object(name: str) -> None:
            obj = plan.objects[name]
            try:
                items = await gather_inputs(name, obj.io.input_type)
                done[name].set_result(await self._run_object(run, obj, items))
            except BaseException as exc:
                done[name].set_exception(_Stopped() if isinstance(exc, asyncio.CancelledError) else exc)
                raise

        tasks = [loop.create_task(run_object(name)) for name in plan.order]
        end_task = loop.create_task(gather_inputs(END, plan.io.output_type))
        try:
            pending: set[asyncio.Future[Any]] = {*tasks, end_task}
            while pending:
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                if any(t.exception() is not None for t in finished if not t.cancelled()):
                    break
            failure = _first_failure([*tasks, end_task])
            if failure is not None:
                await self._stop(run)
                # Every step ends on its own now: running ones were cancelled, the rest see `stopping`.
                await asyncio.gather(*tasks, end_task, return_exceptions=True)
                raise failure
        finally:
            for future in done.values():  # a failure nobody awaited is no "never retrieved" warning
                if future.done() and not future.cancelled():
                    future.exception()
        items = end_task.result()
        if not items:
            return None
        return items[0] if len(items) == 1 else items

    async def _run_object(self, run: Run, obj: PipelineObject, items: list[Any]) -> list[Any]:
        if obj.reference_type == "operator" and obj.reference_name in operators.FAN_IN:
            return [await self._operator_step(run, obj, items, group=True)]
        results = await asyncio.gather(*(self._step(run, obj, item) for item in items), return_exceptions=True)
        out: list[Any] = []
        skip_failures = obj.configuration.get("on_error") in operators.ON_ERROR_SKIP
        for result in results:
            if isinstance(result, BaseException):
                if isinstance(result, StepFailed) and skip_failures:
                    continue
                raise result
            out.extend(result)
        if len(out) > operators.MAX_ITEMS:  # fan-outs of fan-outs: each within the limit, together not
            raise StepFailed(f"Object '{obj.name}' gives {len(out)} items; at most {operators.MAX_ITEMS} are allowed")
        return out

    async def _step(self, run: Run, obj: PipelineObject, item: Any) -> list[Any]:
        if run.stopping:
            raise _Stopped()
        if obj.reference_type == "deployment":
            return [await self._deployment_step(run, obj, item)]
        if obj.reference_type == "pipeline":
            return [await self._pipeline_step(run, obj, item)]
        return await self._operator_step(run, obj, item, group=False)

    def _time_left(self, run: Run, obj: PipelineObject) -> int:
        remaining = run.remaining()
        if remaining <= 0:
            raise StepFailed(f"The pipeline request timed out after {run.timeout} seconds before object "
                             f"'{obj.name}' could start")
        return max(1, math.ceil(remaining))

    async def _deployment_step(self, run: Run, obj: PipelineObject, item: Any) -> Any:
        timeout = self._time_left(run, obj)
        request_id = str(uuid.uuid4())
        entry = {"kind": "deployment", "id": request_id, "pipeline_object": obj.name,
                 "deployment": obj.reference_name, "version": obj.version, "sequence_id": next_sequence_id(),
                 "status": "processing", "error_message": None, "input_size": len(orjson.dumps(item)),
                 "output_size": None}
        run.steps.append(entry)
        origin = {"created_by": "pipeline", "pipeline": run.plan.pipeline_name,
                  "pipeline_version": run.plan.version_name, "pipeline_request_id": run.id,
                  "pipeline_object": obj.name}
        run.running.add(request_id)
        try:
            target = self._deployments.serving_target(run.project, obj.reference_name, obj.version)
            entry["version"] = target.version_name
            record = await self._requests.direct(target, item, timeout=timeout, origin=origin,
                                                 request_id=request_id, on_update=run.on_update,
                                                 priority=run.priority)
        except ModelbayError as exc:
            entry.update(status="failed", error_message=exc.message)
            raise StepFailed(f"Object '{obj.name}' failed: {exc.message}") from None
        finally:
            run.running.discard(request_id)
        entry.update(status=record.status, error_message=record.error_message)
        if record.status == Status.COMPLETED:
            entry["output_size"] = len(orjson.dumps(record.result))
            return record.result
        if record.status == Status.CANCELLED or run.stopping:
            raise _Stopped()
        if run.remaining() <= 0.5:  # its time was the pipeline's: say so, naming the step
            raise StepFailed(f"The pipeline request timed out after {run.timeout} seconds while object "
                             f"'{obj.name}' was running")
        raise StepFailed(f"Object '{obj.name}' failed: {record.error_message}")

    async def _pipeline_step(self, run: Run, obj: PipelineObject, item: Any) -> Any:
        timeout = self._time_left(run, obj)
        try:
            plan = self._pipelines.plan(run.project, obj.reference_name, obj.version)
            plan.check_runnable()
            check_data(plan.io.input_type, plan.io.input_fields, item)
        except ModelbayError as exc:
            raise StepFailed(f"Object '{obj.name}' failed: {exc.message}") from None
        origin = {"created_by": "pipeline", "pipeline": run.plan.pipeline_name, "pipeline_request_id": run.id,
                  "pipeline_object": obj.name}
        row = await self._new_row(plan, "direct", timeout, item, origin, Status.PROCESSING, parent_id=run.id)
        entry = {"kind": "pipeline", "id": row["id"], "pipeline_object": obj.name, "pipeline": plan.pipeline_name,
                 "version": plan.version_name, "sequence_id": next_sequence_id(), "status": "processing",
                 "error_message": None, "input_size": row["input_size"], "output_size": None}
        run.steps.append(entry)
        await self._db.committer.submit_async(Insert(PIPELINE_REQUESTS, [row]))
        record = await self._run(run.project, plan, row["id"], item, timeout, Status.PROCESSING, row["created_at"],
                                 parent=run)
        entry.update(status=record.status, error_message=record.error_message)
        if record.status == Status.COMPLETED:
            entry["output_size"] = len(orjson.dumps(record.result))
            return record.result
        if record.status == Status.CANCELLED or run.stopping:
            raise _Stopped()
        raise StepFailed(f"Object '{obj.name}' failed: {record.error_message}")

    async def _operator_step(self, run: Run, obj: PipelineObject, data: Any, *, group: bool) -> Any:
        request_id = str(uuid.uuid4())
        sequence_id = next_sequence_id()
        encoded = orjson.dumps(data)
        status, result, error = Status.COMPLETED, None, None
        try:
            if group:
                result = operators.run_group(obj.reference_name, obj.io, data)
            else:
                result = operators.run_item(obj.reference_name, obj.configuration, obj.io, data)
        except operators.OperatorFailed as exc:
            status, error = Status.FAILED, exc.message
        output = orjson.dumps(result) if status is Status.COMPLETED else b""
        now = utcnow()
        keep = run.plan.retention_mode == "full"
        payloads = {**await self._payloads.values(request_id, "data", encoded if keep else None),
                    **await self._payloads.values(request_id, "result",
                                                  output if keep and status is Status.COMPLETED else None)}
        self._db.committer.submit(Insert(OPERATOR_REQUESTS, [{
            "id": request_id, "pipeline_request_id": run.id, "pipeline_object": obj.name,
            "operator": obj.reference_name, "sequence_id": sequence_id, "status": status.value, **payloads,
            "error_message": error, "input_size": len(encoded), "output_size": len(output),
            "created_at": now, "finished_at": now,
        }]))
        run.steps.append({"kind": "operator", "id": request_id, "pipeline_object": obj.name,
                          "operator": obj.reference_name, "sequence_id": sequence_id, "status": status.value,
                          "error_message": error, "input_size": len(encoded), "output_size": len(output)})
        if status is Status.FAILED:
            if obj.reference_name == operators.RAISE_ERROR:
                raise StepFailed(error or "The pipeline raised an error")
            raise StepFailed(f"Object '{obj.name}' failed: {error}")
        return result

    async def _stop(self, run: Run) -> None:
        """Start no new steps, and cancel the running ones (sub-pipelines recursively)."""
        run.stopping = True
        for child in list(run.children.values()):
            child.cancelled = True
            await self._stop(child)
        for request_id in list(run.running):
            await self._requests.cancel_running(request_id)

    # --- reading ---------------------------------------------------------------------------

    def get(self, plan: Plan, request_id: str) -> PipelineRequestRow:
        """The request with its input and result; raises `NotFound` unless it exists for this pipeline version."""
        return self._payloads.fill(self._row(plan, request_id), "pipeline request")

    def _row(self, plan: Plan, request_id: str) -> PipelineRequestRow:
        """The request as stored (large payloads not read); raises `NotFound` as `get` does."""
        with self._db.read() as session:
            row = session.get(PipelineRequestRow, request_id)
        if row is None or row.version_id != plan.version_id:
            raise NotFound("pipeline request", request_id)
        return row

    def steps_of(self, row: PipelineRequestRow) -> list[dict[str, Any]]:
        """The steps of a request: live while it runs, else as stored."""
        run = self._runs.get(row.id)
        return list(run.steps) if run is not None else list(row.steps or [])

    def collect(self, plan: Plan, ids: list[str]) -> list[PipelineRequestRow]:
        """All the requests named, with their inputs and results, or `NotFound` for the first unknown one."""
        return [self._payloads.fill(row, "pipeline request") for row in self._rows(plan, ids)]

    def _rows(self, plan: Plan, ids: list[str]) -> list[PipelineRequestRow]:
        """Like `collect`, the rows as stored."""
        with self._db.read() as session:
            rows = {row.id: row for row in session.scalars(select(PipelineRequestRow).where(
                PipelineRequestRow.id.in_(ids), PipelineRequestRow.version_id == plan.version_id))}
        for request_id in ids:
            if request_id not in rows:
                raise NotFound("pipeline request", request_id)
        return [rows[i] for i in ids]

    def list(self, plan: Plan, *, status: str | None = None, limit: int | None = None, offset: int | None = None,
             start_date: datetime | None = None, end_date: datetime | None = None,
             search_id: str | None = None) -> list[PipelineRequestRow]:
        """The version's requests, newest first, filtered as deployment requests are (large payloads not read)."""
        query = list_query(PipelineRequestRow, plan.version_id, status=status, limit=limit, offset=offset,
                           start_date=start_date, end_date=end_date, search_id=search_id)
        with self._db.read() as session:
            return list(session.scalars(query))

    def operator_request(self, plan: Plan, request_id: str) -> tuple[OperatorRequestRow, PipelineRequestRow]:
        """An operator request (with its input and result) of a request of this version, and that
        request as stored; raises `NotFound`."""
        with self._db.read() as session:
            row = session.get(OperatorRequestRow, request_id)
            parent = session.get(PipelineRequestRow, row.pipeline_request_id) if row else None
        if row is None or parent is None or parent.version_id != plan.version_id:
            raise NotFound("operator request", request_id)
        return self._payloads.fill(row, "operator request"), parent

    # --- cancel and delete -----------------------------------------------------------------

    async def cancel(self, plan: Plan, request_id: str) -> Status:
        """Cancel one request: a pending one at once, a running one once its running steps stop."""
        row = self._row(plan, request_id)
        return await self._cancel(row.id, Status(row.status))

    async def cancel_many(self, plan: Plan, ids: list[str] | None, status: str | None) -> int:
        rows = cancel_selection(ids, status, lambda named: self._rows(plan, named),
                                lambda offset: self.list(plan, status=status, limit=LIST_LIMIT_MAX, offset=offset))
        for row in rows:
            if status is None or row.status == status:
                await self._cancel(row.id, Status(row.status))
        return len(rows)

    async def _cancel(self, request_id: str, current: Status) -> Status:
        committer = self._db.committer
        for _ in range(3):  # the status may move under us (pending -> processing)
            if current in TERMINAL or current is Status.CANCELLED_PENDING:
                return current
            new = Status.CANCELLED if current is Status.PENDING else Status.CANCELLED_PENDING
            values = {"finished_at": utcnow()} if new is Status.CANCELLED else {}
            try:
                await committer.submit_async(
                    lambda conn, old=current, new=new, values=values: move(conn, PIPELINE_REQUEST, request_id, old, new,
                                                                          **values))
            except StatusChanged:
                current = self._status(request_id)
                continue
            run = self._runs.get(request_id)
            if run is not None:
                run.cancelled = True
                await self._stop(run)  # its walk ends soon and records it cancelled
            elif new is Status.CANCELLED_PENDING:  # nothing here runs it (its server died): end it now
                await committer.submit_async(lambda conn: move(
                    conn, PIPELINE_REQUEST, request_id, Status.CANCELLED_PENDING, Status.CANCELLED,
                    finished_at=utcnow()))
                return Status.CANCELLED
            return new
        return current

    def _input(self, request_id: str) -> Any:
        """The input of a batch request (kept until it has run, whatever the retention)."""
        with self._db.read() as session:
            stored = session.execute(select(PipelineRequestRow.data, PipelineRequestRow.data_key)
                                     .where(PipelineRequestRow.id == request_id)).first()
        return self._payloads.value(*stored) if stored else None

    def _status(self, request_id: str) -> Status:
        with self._db.read() as session:
            status = session.scalar(select(PipelineRequestRow.status).where(PipelineRequestRow.id == request_id))
        if status is None:
            raise NotFound("pipeline request", request_id)
        return Status(status)

    async def delete(self, plan: Plan, ids: list[str]) -> None:
        """Delete requests with their sub-requests (all or nothing); running ones are stopped first."""
        rows = self._rows(plan, ids)
        await self.delete_by_id([row.id for row in rows])

    async def delete_by_id(self, ids: list[str]) -> None:
        """Delete pipeline requests, their sub-pipeline requests, operator and deployment requests;
        running ones are stopped first."""
        if not ids:
            return
        stopped = []
        for request_id in ids:
            run = self._runs.get(request_id)
            if run is not None:
                run.cancelled = True
                await self._stop(run)
                stopped.append(run)
        for run in stopped:  # its steps are written with its end: wait for them, to delete them too
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.recorded.wait(), STOP_WAIT_S)
        keys = await self._db.committer.submit_async(lambda conn: _remove(conn, ids))
        await asyncio.to_thread(self._payloads.discard, keys)

    def sweep_expired(self) -> int:
        """Delete finished pipeline requests (with their sub-requests) older than their version's
        retention time; returns how many."""
        now = utcnow()
        with self._db.write() as session:
            conn = session.connection()
            versions = conn.execute(select(PipelineVersionRow.id, PipelineVersionRow.request_retention_time)).all()
            expired = []
            for version_id, retention_s in versions:
                expired += list(conn.scalars(select(PIPELINE_REQUESTS.c.id).where(
                    PIPELINE_REQUESTS.c.version_id == version_id,
                    PIPELINE_REQUESTS.c.parent_id.is_(None),
                    PIPELINE_REQUESTS.c.status.in_([s.value for s in TERMINAL]),
                    PIPELINE_REQUESTS.c.finished_at < now - timedelta(seconds=retention_s),
                )))
            keys = _remove(conn, expired)
        self._payloads.discard(keys)  # once the rows are gone for good
        return len(expired)

    # --- recovery --------------------------------------------------------------------------

    def recover(self, project_of: Callable[[str], ProjectRow]) -> tuple[int, int]:
        """After a restart: fail what was running, cancel what was cancelling, run again what waits.

        `project_of(project_id)` gives a project row. Returns (settled, queued).
        """
        now = utcnow()
        with self._db.write() as session:
            conn = session.connection()
            stuck = conn.execute(select(PIPELINE_REQUESTS.c.id, PIPELINE_REQUESTS.c.status).where(
                PIPELINE_REQUESTS.c.status.in_([Status.PROCESSING.value, Status.CANCELLED_PENDING.value]))).all()
            for request_id, status in stuck:
                if status == Status.CANCELLED_PENDING.value:
                    move(conn, PIPELINE_REQUEST, request_id, Status.CANCELLED_PENDING, Status.CANCELLED,
                         finished_at=now)
                else:
                    move(conn, PIPELINE_REQUEST, request_id, Status.PROCESSING, Status.FAILED, finished_at=now,
                         error_message="The server stopped while this pipeline request was running")
            waiting = conn.execute(select(
                PIPELINE_REQUESTS.c.id, PIPELINE_REQUESTS.c.project_id, PIPELINE_REQUESTS.c.version_id,
                PIPELINE_REQUESTS.c.timeout,
            ).where(PIPELINE_REQUESTS.c.status == Status.PENDING.value).order_by(
                PIPELINE_REQUESTS.c.created_at, PIPELINE_REQUESTS.c.id)).all()
        queued = 0
        for request_id, project_id, version_id, timeout in waiting:
            try:
                plan = self._pipelines.plan_of_version(version_id)
                project = project_of(project_id)
            except (ModelbayError, ValueError) as exc:
                message = f"The pipeline version of this request can no longer run: {exc}"
                with self._db.write() as session:
                    move(session.connection(), PIPELINE_REQUEST, request_id, Status.PENDING, Status.FAILED,
                         finished_at=now, error_message=message)
                continue
            self._spawn_batch(project, plan, request_id, timeout)
            queued += 1
        return len(stuck), queued

    async def close(self, grace_s: float = 30.0) -> None:
        """Let running batch requests finish, for up to `grace_s`; what waits stays pending and runs
        again after a restart (what is still running then is failed at the restart)."""
        for task in self._batch_tasks.tasks - self._batch_started:
            task.cancel()
        await self._batch_tasks.close(grace_s)


def _remove(conn: Connection, ids: list[str]) -> list[str]:
    """Delete pipeline requests with their sub-pipeline, operator and deployment requests; returns
    the payload blob keys they named, to discard once this has committed."""
    todo, all_ids = list(ids), []
    while todo:  # sub-pipeline requests, at any depth
        all_ids += todo
        todo = [child for part in _chunks(todo) for child in conn.scalars(
            select(PIPELINE_REQUESTS.c.id).where(PIPELINE_REQUESTS.c.parent_id.in_(part)))]
    deployment_ids = [
        step["id"]
        for part in _chunks(all_ids)
        for steps in conn.scalars(select(PIPELINE_REQUESTS.c.steps).where(PIPELINE_REQUESTS.c.id.in_(part)))
        for step in steps or [] if step.get("kind") == "deployment"
    ]
    keys: list[str] = []
    for part in _chunks(deployment_ids):
        keys += named_keys(conn, REQUESTS, REQUESTS.c.id.in_(part))
        conn.execute(delete(REQUESTS).where(REQUESTS.c.id.in_(part)))
    for part in _chunks(all_ids):
        keys += named_keys(conn, OPERATOR_REQUESTS, OPERATOR_REQUESTS.c.pipeline_request_id.in_(part))
        keys += named_keys(conn, PIPELINE_REQUESTS, PIPELINE_REQUESTS.c.id.in_(part))
        conn.execute(delete(OPERATOR_REQUESTS).where(OPERATOR_REQUESTS.c.pipeline_request_id.in_(part)))
        conn.execute(delete(PIPELINE_REQUESTS).where(PIPELINE_REQUESTS.c.id.in_(part)))
    return keys


def _chunks(ids: list[str]) -> Iterator[list[str]]:
    """`ids` in slices of at most `IDS_PER_STATEMENT`."""
    for start in range(0, len(ids), IDS_PER_STATEMENT):
        yield ids[start:start + IDS_PER_STATEMENT]


def _log_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("recording a pipeline request failed", exc_info=future.exception())


def _first_failure(tasks: list[asyncio.Task[Any]]) -> BaseException | None:
    """The failure to report: a failed step before a stop that followed from it."""
    failures = [t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
    for failure in failures:
        if isinstance(failure, StepFailed):
            return failure
    return failures[0] if failures else None


def _merge(destination: str, io_type: str, sources: tuple[Source, ...], given: list[list[Any]]) -> list[Any]:
    """The items an object receives: item i of every source, mapped field by field.

    A source with no items (a branch an if-condition stopped) takes no part; a source with one
    item is paired with every item of the others (a fan-out meeting a constant).
    """
    active = [(source, items) for source, items in zip(sources, given, strict=True) if items]
    if not active:
        return []
    count = max(len(items) for _, items in active)
    for source, items in active:
        if len(items) not in (1, count):
            raise StepFailed(f"Object '{destination}' receives {len(items)} items from '{source.name}' but "
                             f"{count} from another source")
    merged: list[Any] = []
    for i in range(count):
        if io_type == "plain":
            merged.append(active[0][1][i if len(active[0][1]) > 1 else 0])
            continue
        value: dict[str, Any] = {}
        for source, items in active:
            item = items[i if len(items) > 1 else 0]
            for source_field, destination_field in source.mapping:
                value[destination_field] = item.get(source_field) if isinstance(item, dict) else None
        merged.append(value)
    return merged
