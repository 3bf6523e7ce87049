"""The walk of a pipeline request through its version's graph.

Each object runs once all its sources have given their items: a deployment object becomes a
direct request through the same scheduler as any other (`Requests.direct`, with an `origin`
naming the pipeline request), an operator runs here, a sub-pipeline is a pipeline request of its
own (run by `PipelineRequests`). Independent branches run concurrently. Every step gets the time
the pipeline has left, so a pipeline never outlives its timeout. The steps are kept in memory
while the walk goes on (`Run.steps`), stored when a deployment or sub-pipeline step starts (any
node shows a running request's steps; a delete on any node removes their requests) and stored
with the request's end.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Connection, Table, update

from modelbay.core import operators
from modelbay.core.clock import utcnow
from modelbay.core.deployments import Deployments
from modelbay.core.errors import ModelbayError
from modelbay.core.payloads import Payloads
from modelbay.core.pipeline_graph import END, START, Source
from modelbay.core.pipeline_objects import PipelineObject
from modelbay.core.pipelines import Plan
from modelbay.core.requests import Requests
from modelbay.core.row_ids import time_ordered_id
from modelbay.core.scheduler import PRIORITY_DIRECT
from modelbay.core.states import RequestStatus as Status
from modelbay.store.db import Database, Insert
from modelbay.store.tables import OperatorRequestRow, PipelineRequestRow, ProjectRow

OPERATOR_REQUESTS: Table = OperatorRequestRow.__table__  # type: ignore[assignment]
PIPELINE_REQUESTS: Table = PipelineRequestRow.__table__  # type: ignore[assignment]


class StepFailed(Exception):
    """A step failed, and with it the pipeline request; the message names the object."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Stopped(Exception):
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
    as_list: bool = False  # its input is a list of items, each walked, and its result their list
    priority: int = PRIORITY_DIRECT  # of its deployment steps: a batch request's wait as batch work
    recorded: asyncio.Event = field(default_factory=asyncio.Event)  # set once its end is written

    def remaining(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()


def time_left(run: Run, obj: PipelineObject) -> int:
    """The whole seconds the pipeline request has left for a step; raises `StepFailed` when none."""
    remaining = run.remaining()
    if remaining <= 0:
        raise StepFailed(f"The pipeline request timed out after {run.timeout} seconds before object "
                         f"'{obj.name}' could start")
    return max(1, math.ceil(remaining))


def step_result(run: Run, obj: PipelineObject, entry: dict[str, Any], status: str, result: Any,
                error: str | None, *, timed: bool = False) -> Any:
    """Record how a deployment or sub-pipeline step ended in its `entry`; returns its result, or
    raises `Stopped` (cancelled) or `StepFailed`. `timed`: a failure once the pipeline's time is
    (nearly) up is its timeout, named as such."""
    entry.update(status=status, error_message=error)
    if status == Status.COMPLETED:
        entry["output_size"] = len(orjson.dumps(result))
        return result
    if status == Status.CANCELLED or run.stopping:
        raise Stopped()
    if timed and run.remaining() <= 0.5:  # its time was the pipeline's: say so, naming the step
        raise StepFailed(f"The pipeline request timed out after {run.timeout} seconds while object "
                         f"'{obj.name}' was running")
    raise StepFailed(f"Object '{obj.name}' failed: {error}")


#: Runs a sub-pipeline object on one item and returns its result (see `PipelineRequests`).
PipelineStep = Callable[[Run, PipelineObject, Any], Awaitable[Any]]


class Walker:
    """Walks pipeline requests: runs their objects in order and stops them on failure or cancel."""

    def __init__(self, db: Database, payloads: Payloads, deployments: Deployments, requests: Requests,
                 pipeline_step: PipelineStep) -> None:
        self._db = db
        self._payloads = payloads
        self._deployments = deployments
        self._requests = requests
        self._pipeline_step = pipeline_step

    def store_steps(self, run: Run) -> None:
        """Write the steps of a running request (once its row is, in the committer's order). Not
        awaited: a step need not wait for it."""
        steps = [dict(step) for step in run.steps]  # as they are now: the walk goes on changing them

        def write(conn: Connection) -> None:
            conn.execute(update(PIPELINE_REQUESTS).where(PIPELINE_REQUESTS.c.id == run.id,
                                                         PIPELINE_REQUESTS.c.status == Status.PROCESSING.value)
                         .values(steps=steps))

        self._db.committer.submit(write, linger=True)

    async def walk(self, run: Run, data: Any) -> Any:
        """Run every object once its sources are done; returns what reaches `pipeline_end`."""
        plan = run.plan
        if plan.incomplete is not None:  # a queued request whose version was edited into an unfinished state
            raise StepFailed(plan.incomplete)
        loop = asyncio.get_running_loop()
        done: dict[str, asyncio.Future[list[Any]]] = {name: loop.create_future() for name in plan.order}
        done[START] = loop.create_future()
        done[START].set_result(list(data) if run.as_list else [data])

        async def gather_inputs(destination: str, io_type: str) -> list[Any]:
            sources = plan.sources.get(destination, ())
            given = [await done[source.name] for source in sources]
            return merge(destination, io_type, sources, given)

        async def run_object(name: str) -> None:
            obj = plan.objects[name]
            try:
                items = await gather_inputs(name, obj.io.input_type)
                done[name].set_result(await self._run_object(run, obj, items))
            except BaseException as exc:
                done[name].set_exception(Stopped() if isinstance(exc, asyncio.CancelledError) else exc)
                raise

        tasks = [loop.create_task(run_object(name)) for name in plan.order]
        end_task = loop.create_task(gather_inputs(END, plan.io.output_type))
        try:
            pending: set[asyncio.Future[Any]] = {*tasks, end_task}
            while pending:
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                if any(t.exception() is not None for t in finished if not t.cancelled()):
                    break
            failure = first_failure([*tasks, end_task])
            if failure is not None:
                await self.stop(run)
                # Every step ends on its own now: running ones were cancelled, the rest see `stopping`.
                await asyncio.gather(*tasks, end_task, return_exceptions=True)
                raise failure
        finally:
            for future in done.values():  # a failure nobody awaited is no "never retrieved" warning
                if future.done() and not future.cancelled():
                    future.exception()
        items = end_task.result()
        if run.as_list:
            return items
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
            raise Stopped()
        if obj.reference_type == "deployment":
            return [await self._deployment_step(run, obj, item)]
        if obj.reference_type == "pipeline":
            return [await self._pipeline_step(run, obj, item)]
        return await self._operator_step(run, obj, item, group=False)

    async def _deployment_step(self, run: Run, obj: PipelineObject, item: Any) -> Any:
        timeout = time_left(run, obj)
        request_id = time_ordered_id()
        entry = {"kind": "deployment", "id": request_id, "pipeline_object": obj.name,
                 "deployment": obj.reference_name, "version": obj.version, "sequence_id": next_sequence_id(),
                 "status": "processing", "error_message": None, "input_size": len(orjson.dumps(item)),
                 "output_size": None}
        run.steps.append(entry)
        self.store_steps(run)
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
        return step_result(run, obj, entry, record.status, record.result, record.error_message, timed=True)

    async def _operator_step(self, run: Run, obj: PipelineObject, data: Any, *, group: bool) -> Any:
        request_id = time_ordered_id()
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

    async def stop(self, run: Run) -> None:
        """Start no new steps, and cancel the running ones (sub-pipelines recursively)."""
        run.stopping = True
        for child in list(run.children.values()):
            child.cancelled = True
            await self.stop(child)
        for request_id in list(run.running):
            await self._requests.cancel_running(request_id)


def first_failure(tasks: list[asyncio.Task[Any]]) -> BaseException | None:
    """The failure to report: a failed step before a stop that followed from it."""
    failures = [t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
    for failure in failures:
        if isinstance(failure, StepFailed):
            return failure
    return failures[0] if failures else None


def merge(destination: str, io_type: str, sources: tuple[Source, ...], given: list[list[Any]]) -> list[Any]:
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
