"""Read-only views of a project for people browsing it (the web console): pages of requests by
keyset, one request by id within a project, a version's instances, a pipeline's requests and the
times of their steps, the attempts of a run, and how a webhook's deliveries went.

Nothing here writes; every lookup is scoped to one project, so an id of another project's request
reads as missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select

from modelbay.core.scheduler import Scheduler, pool_key
from modelbay.core.stored_requests import chunks
from modelbay.store.db import Database
from modelbay.store.tables import (
    DeliveryRow,
    JobRow,
    OperatorRequestRow,
    PipelineRequestRow,
    RequestRow,
    RunRow,
)

#: Requests on one page of a list.
PAGE_SIZE = 50

#: Most requests one page reads to find those matching a status or origin filter (see `request_page`).
SCAN_LIMIT = 10_000

#: Where a request came from, as a list filters it: each a condition on its row. `direct` and
#: `batch` are requests a user made through an API (or the console); the others were made by the
#: engine for a pipeline request, an ABEJA run or service, or a Datature job.
_CREATED_BY = RequestRow.origin["created_by"].as_string()
_MADE_BY_ENGINE = or_(_CREATED_BY.in_(("pipeline", "run", "service")), _CREATED_BY.like("batch job %"))
ORIGINS: dict[str, Any] = {
    "direct": and_(RequestRow.mode == "direct", ~_MADE_BY_ENGINE),
    "batch": and_(RequestRow.mode == "batch", ~_MADE_BY_ENGINE),
    "pipeline": _CREATED_BY == "pipeline",
    "run": _CREATED_BY == "run",
    "service": _CREATED_BY == "service",
    "job": _CREATED_BY.like("batch job %"),
}

#: The columns a list shows: never the payloads or the logs.
LISTED = (RequestRow.id, RequestRow.deployment_id, RequestRow.version_id, RequestRow.mode, RequestRow.status,
          RequestRow.origin, RequestRow.created_at, RequestRow.started_at, RequestRow.finished_at,
          RequestRow.input_size, RequestRow.output_size)


def origin_of(origin: dict[str, Any], mode: str) -> str:
    """The name `ORIGINS` gives a request's origin."""
    created_by = str(origin.get("created_by", ""))
    if created_by.startswith("batch job "):
        return "job"
    if created_by in ("pipeline", "run", "service"):
        return created_by
    return mode


@dataclass(frozen=True)
class RequestFilter:
    """What a list of requests is narrowed to; None is no narrowing."""

    version_id: str | None = None  # one of the project's versions, found through the project
    status: str | None = None
    origin: str | None = None  # a key of ORIGINS
    created_from: datetime | None = None
    created_to: datetime | None = None


@dataclass(frozen=True)
class Page:
    """A page of requests, and where the next one starts: the (created time, id) to pass as
    `before`, None at the end of the list."""

    rows: list[Any]
    next: tuple[datetime, str] | None
    #: Whether the page is short because its scan ended, not the list (see `request_page`).
    scanned_only: bool = False


def _older_than(table: Any, before: tuple[datetime, str]) -> list[Any]:
    """(created_at, id) < `before`, written so that an index on created_at serves it."""
    created, row_id = before
    return [table.created_at <= created, or_(table.created_at < created, table.id < row_id)]


def request_page(db: Database, project_id: str, where: RequestFilter, *,
                 before: tuple[datetime, str] | None = None, limit: int = PAGE_SIZE,
                 scan_limit: int = SCAN_LIMIT) -> Page:
    """One page of a project's requests, newest first (by created time, then id), those older than
    `before` (the created time and id of the last row of the previous page; an empty id: older than
    that time): a keyset page, which costs the same on the thousandth page as on the first.

    The project, version and time filters are what an index serves; the status and origin filters
    are checked on the next `scan_limit` requests at most, so a filter that matches few rows still
    answers at once: a short page whose `next` goes on where its scan ended."""
    # A version is one of the project's (its caller found it through the project): its own index
    # serves its list, which a second condition on the project would leave for the project's index.
    bounds = [RequestRow.project_id == project_id if where.version_id is None
              else RequestRow.version_id == where.version_id]
    if where.created_from is not None:
        bounds.append(RequestRow.created_at >= where.created_from)
    if where.created_to is not None:
        bounds.append(RequestRow.created_at < where.created_to)
    if before is not None:
        bounds += _older_than(RequestRow, before)
    checks = []
    if where.status is not None:
        checks.append(RequestRow.status == where.status)
    if where.origin is not None:
        checks.append(ORIGINS[where.origin])
    query = select(*LISTED).where(*bounds).order_by(RequestRow.created_at.desc(), RequestRow.id.desc()).limit(limit)
    with db.read() as session:
        edge = None
        if checks:
            # The created time `scan_limit` rows down: read from the index alone, it bounds the scan.
            edge = session.scalar(select(RequestRow.created_at).where(*bounds)
                                  .order_by(RequestRow.created_at.desc()).offset(scan_limit - 1).limit(1))
            query = query.where(*checks)
            if edge is not None:
                query = query.where(RequestRow.created_at >= edge)
        rows = list(session.execute(query).all())
    if len(rows) == limit:
        return Page(rows, (rows[-1].created_at, rows[-1].id))
    if edge is not None:  # short because the scan ended: the next page starts past every row it read
        return Page(rows, (edge, ""), scanned_only=True)
    return Page(rows, None)


def project_request(db: Database, project_id: str, request_id: str) -> RequestRow | None:
    """A request of the project, as stored (large payloads not read); None when the project has none
    with this id."""
    with db.read() as session:
        row = session.get(RequestRow, request_id)
    return row if row is not None and row.project_id == project_id else None


@dataclass(frozen=True)
class Instances:
    """A version's instances on this server by state, and those other servers run."""

    starting: int
    idle: int
    busy: int
    elsewhere: int


async def instances(scheduler: Scheduler, version_id: str) -> Instances:
    """The instances of a version's own pool now."""
    own = next((load for load in scheduler.loads() if pool_key(load.target) == version_id), None)
    return Instances(
        starting=0 if own is None else own.starting,
        idle=0 if own is None else own.idle,
        busy=0 if own is None else own.busy,
        elsewhere=await scheduler.instances_elsewhere(version_id),
    )


#: Most deliveries a job's page lists.
DELIVERIES_SHOWN = 200


def job_deliveries(db: Database, job_id: str, limit: int = DELIVERIES_SHOWN) -> list[DeliveryRow]:
    """The webhook deliveries of a job's items, in item order (the job was found through its project)."""
    with db.read() as session:
        return list(session.scalars(select(DeliveryRow).where(DeliveryRow.job_id == job_id)
                                    .order_by(DeliveryRow.item_index, DeliveryRow.created_at).limit(limit)))


# --- pipeline requests -------------------------------------------------------------------------

#: The columns a list of pipeline requests shows: never the payloads or the steps.
PIPELINE_LISTED = (PipelineRequestRow.id, PipelineRequestRow.version_id, PipelineRequestRow.parent_id,
                   PipelineRequestRow.mode, PipelineRequestRow.status, PipelineRequestRow.origin,
                   PipelineRequestRow.created_at, PipelineRequestRow.started_at, PipelineRequestRow.finished_at,
                   PipelineRequestRow.input_size, PipelineRequestRow.output_size)


def pipeline_request_page(db: Database, version_ids: list[str], *, before: tuple[datetime, str] | None = None,
                          limit: int = PAGE_SIZE) -> Page:
    """One page of the requests of a pipeline's versions (sub-pipeline requests included), newest
    first, those older than `before` (a keyset, as in `request_page`).

    Each version's page is read through its own index (version, created time) and the pages are
    merged: a pipeline has a few versions, and each read stops after `limit` + 1 rows."""
    rows: list[Any] = []
    with db.read() as session:
        for version_id in version_ids:
            bounds = [PipelineRequestRow.version_id == version_id]
            if before is not None:
                bounds += _older_than(PipelineRequestRow, before)
            rows += session.execute(select(*PIPELINE_LISTED).where(*bounds).order_by(
                PipelineRequestRow.created_at.desc(), PipelineRequestRow.id.desc()).limit(limit + 1)).all()
    rows.sort(key=lambda row: (row.created_at, row.id), reverse=True)
    shown = rows[:limit]
    return Page(shown, (shown[-1].created_at, shown[-1].id) if len(rows) > limit else None)


def project_pipeline_request(db: Database, project_id: str, request_id: str) -> PipelineRequestRow | None:
    """A pipeline request of the project, as stored (large payloads not read); None when the project
    has none with this id."""
    with db.read() as session:
        row = session.get(PipelineRequestRow, request_id)
    return row if row is not None and row.project_id == project_id else None


@dataclass(frozen=True)
class StepTimes:
    """When the request a step made was created, started and ended (an operator's starts as it
    is created)."""

    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def step_times(db: Database, project_id: str, request_id: str, steps: list[dict[str, Any]]) -> dict[str, StepTimes]:
    """The times of the steps of pipeline request `request_id` (of the project), by step id, read
    from the rows the steps made: deployment requests, sub-pipeline requests, operator requests.
    A step whose row is gone (deleted, or past its retention) has none."""
    ids: dict[str, list[str]] = {"deployment": [], "pipeline": [], "operator": []}
    for step in steps:
        ids.get(str(step.get("kind")), []).append(str(step.get("id")))
    times: dict[str, StepTimes] = {}
    with db.read() as session:
        for table, kind, scope in (
            (RequestRow, "deployment", RequestRow.project_id == project_id),
            (PipelineRequestRow, "pipeline", PipelineRequestRow.project_id == project_id),
            (OperatorRequestRow, "operator", OperatorRequestRow.pipeline_request_id == request_id),
        ):
            started = table.created_at if table is OperatorRequestRow else table.started_at
            for part in chunks(ids[kind]):
                for row in session.execute(select(table.id, table.created_at, started.label("started_at"),
                                                  table.finished_at).where(table.id.in_(part), scope)):
                    times[row.id] = StepTimes(row.created_at, row.started_at, row.finished_at)
    return times


# --- runs and webhooks -------------------------------------------------------------------------

#: How far the clocks of two nodes may disagree: a run's attempt may be made by a node other than
#: the one that stamped the run.
CLOCK_SLACK = timedelta(minutes=1)

#: Most attempts a run's page lists (a run has at most ten: `runs.RETRY_COUNT_MAX` + 1).
ATTEMPTS_SHOWN = 50


def run_attempts(db: Database, run: RunRow, ended: bool, limit: int = ATTEMPTS_SHOWN) -> list[Any]:
    """The requests a run made, its attempts, oldest first.

    Each attempt is a request of the run's version made while the run lived, so the version's
    index (version, created time) reads only the version's requests made between the run's creation
    and its last change (when it has `ended`; until now, when not); the run's id is checked on
    those rows alone, never on the project's other requests."""
    bounds = [RequestRow.version_id == run.version_id, RequestRow.created_at >= run.created_at - CLOCK_SLACK]
    if ended:
        bounds.append(RequestRow.created_at <= run.modified_at + CLOCK_SLACK)
    query = (select(*LISTED).where(*bounds, _CREATED_BY == "run", RequestRow.origin["run_id"].as_string() == run.id)
             .order_by(RequestRow.created_at, RequestRow.id).limit(limit))
    with db.read() as session:
        return list(session.execute(query).all())


#: How many of a webhook's latest deliveries its outcome counts are taken over, and in how many of
#: the project's latest jobs they are looked for.
RECENT_DELIVERIES = 100
JOBS_SEARCHED = 20


def webhook_outcomes(db: Database, project_id: str, webhook_ids: list[str], last: int = RECENT_DELIVERIES,
                     jobs_searched: int = JOBS_SEARCHED) -> dict[str, dict[str, int]]:
    """For each webhook of the project, how many of its `last` latest deliveries are in each status
    (pending, delivered, failed, cancelled); a webhook with none is missing.

    Every delivery is made for an item of a job, so they are found job by job, from the project's
    latest (of at most `jobs_searched`) and in each from its last item back: one read of the
    (job, item) index per job, of `last` deliveries for each webhook the job names, that stops
    once every webhook has its `last`. No read goes through all the deliveries of a webhook (a job
    of a million items makes a million of them)."""
    outcomes: dict[str, dict[str, int]] = {}
    needed = dict.fromkeys(webhook_ids, last)
    with db.read() as session:
        jobs = session.execute(select(JobRow.id, JobRow.webhook_ids).where(JobRow.project_id == project_id)
                               .order_by(JobRow.created_at.desc(), JobRow.id.desc()).limit(jobs_searched)).all()
        for job_id, named in jobs:
            named = list(named or [])
            if not any(needed.get(w, 0) > 0 for w in named):
                continue
            # an item has one delivery per webhook of its job: these are those of its last `last` items
            deliveries = session.execute(
                select(DeliveryRow.webhook_id, DeliveryRow.status).where(DeliveryRow.job_id == job_id)
                .order_by(DeliveryRow.item_index.desc()).limit(last * len(named))).all()
            for webhook_id, status in deliveries:
                if needed.get(webhook_id, 0) > 0:
                    needed[webhook_id] -= 1
                    counts = outcomes.setdefault(webhook_id, {})
                    counts[status] = counts.get(status, 0) + 1
            if not any(needed.values()):
                break
    return outcomes
