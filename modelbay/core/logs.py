"""Request logs: what user code printed while serving a request, as labelled lines."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from modelbay.core.clock import as_utc
from modelbay.store.db import Database
from modelbay.store.tables import DeploymentRow, RequestRow, VersionRow

#: Most lines one query returns.
MAX_LINES = 5000


@dataclass(frozen=True)
class LogLine:
    time: datetime
    text: str
    labels: dict[str, str]


def request_log_lines(
    db: Database, project_id: str, *, start: datetime | None, end: datetime | None, scan_limit: int = 10_000
) -> list[LogLine]:
    """The log lines of a project's finished requests in [start, end), oldest first.

    Each line is labelled with its deployment, version and request; a request's lines carry the
    time it finished (the worker collects them per request).
    """
    query = (
        select(RequestRow.id, RequestRow.logs, RequestRow.finished_at, DeploymentRow.name, VersionRow.name)
        .join(VersionRow, VersionRow.id == RequestRow.version_id)
        .join(DeploymentRow, DeploymentRow.id == RequestRow.deployment_id)
        .where(RequestRow.project_id == project_id, RequestRow.logs.is_not(None), RequestRow.finished_at.is_not(None))
        .order_by(RequestRow.finished_at, RequestRow.id)
        .limit(scan_limit)
    )
    if start is not None:
        query = query.where(RequestRow.finished_at >= start)
    if end is not None:
        query = query.where(RequestRow.finished_at < end)
    lines = []
    with db.read() as session:
        rows = session.execute(query).all()
    for request_id, logs, finished_at, deployment, version in rows:
        labels = {"deployment_name": deployment, "deployment_version": version, "deployment_request_id": request_id}
        for text in logs.splitlines():
            lines.append(LogLine(as_utc(finished_at), text, labels))
    return lines
