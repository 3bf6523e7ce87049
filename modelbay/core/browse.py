"""Read-only views of a project for people browsing it (the web console): pages of requests by
keyset, one request by id within a project, and a version's instances.

Nothing here writes; every lookup is scoped to one project, so an id of another project's request
reads as missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select

from modelbay.core.scheduler import Scheduler, pool_key
from modelbay.store.db import Database
from modelbay.store.tables import DeliveryRow, RequestRow

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
        created, request_id = before
        # (created_at, id) < (created, request_id), written so that an index on created_at serves it
        bounds += [RequestRow.created_at <= created, or_(RequestRow.created_at < created, RequestRow.id < request_id)]
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
