"""The console's reads of the store (`core.browse`): keyset pages, filters, scoping to a project."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert

from modelbay.core import browse
from modelbay.core.browse import RequestFilter
from modelbay.store.db import Database
from modelbay.store.tables import RequestRow

T0 = datetime(2026, 1, 1, tzinfo=UTC)
#: An origin and mode of each name a list filters on.
ORIGINS = {
    "direct": ({"created_by": "ubiops"}, "direct"),
    "batch": ({"created_by": "ubiops"}, "batch"),
    "pipeline": ({"created_by": "pipeline", "pipeline": "p"}, "direct"),
    "run": ({"created_by": "run", "run_id": "r"}, "direct"),
    "job": ({"created_by": "batch job j1"}, "direct"),
    "service": ({"created_by": "service", "service_id": "s"}, "direct"),
}


def rows(project_id: str, version_id: str, count: int, *, same_time_every: int = 3) -> list[dict[str, Any]]:
    """`count` requests, several sharing each created time (ties the id must order)."""
    made = []
    for n in range(count):
        origin, mode = list(ORIGINS.values())[n % len(ORIGINS)]
        made.append({
            "id": str(uuid.uuid4()), "project_id": project_id, "deployment_id": "d", "version_id": version_id,
            "mode": mode, "status": "completed" if n % 2 else "failed", "timeout": 1, "origin": origin,
            "created_at": T0 + timedelta(seconds=n // same_time_every),
        })
    return made


def store(db: Database, made: list[dict[str, Any]]) -> None:
    with db.write() as session:
        session.execute(insert(RequestRow), made)


def every_page(db: Database, project_id: str, where: RequestFilter, limit: int, scan_limit: int = 1000) -> list[str]:
    seen: list[str] = []
    before = None
    while True:
        page = browse.request_page(db, project_id, where, before=before, limit=limit, scan_limit=scan_limit)
        seen += [row.id for row in page.rows]
        if page.next is None:
            return seen
        before = page.next


def newest_first(made: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in sorted(made, key=lambda r: (r["created_at"], r["id"]), reverse=True)]


def test_keyset_pages_walk_every_request_once_newest_first(db: Database) -> None:
    made = rows("p1", "v1", 53) + rows("p1", "v2", 10)
    other = rows("p2", "v9", 20)
    store(db, made + other)
    assert every_page(db, "p1", RequestFilter(), limit=7) == newest_first(made)
    assert every_page(db, "p1", RequestFilter(version_id="v2"), limit=4) == newest_first(made[53:])
    assert every_page(db, "p2", RequestFilter(), limit=50) == newest_first(other)  # each project its own


def test_filters_by_status_origin_and_time(db: Database) -> None:
    made = rows("p1", "v1", 36)
    store(db, made)
    failed = every_page(db, "p1", RequestFilter(status="failed"), limit=50)
    assert failed == newest_first([r for r in made if r["status"] == "failed"])
    assert set(ORIGINS) == set(browse.ORIGINS)
    for name, (origin, mode) in ORIGINS.items():
        found = every_page(db, "p1", RequestFilter(origin=name), limit=50)
        assert found == newest_first([r for r in made if r["origin"] == origin and r["mode"] == mode]), name
        assert browse.origin_of(origin, mode) == name
    # A filter matching few rows reads a bounded window per page, short pages going on where it ended.
    for scan_limit in (5, 7, 36):
        found = every_page(db, "p1", RequestFilter(origin="job", status="failed"), limit=2, scan_limit=scan_limit)
        assert found == newest_first([r for r in made if r["origin"] == ORIGINS["job"][0] and r["status"] == "failed"])
    first = browse.request_page(db, "p1", RequestFilter(origin="job"), limit=50, scan_limit=6)
    assert len(first.rows) == 1 and first.scanned_only
    window = RequestFilter(created_from=T0 + timedelta(seconds=2), created_to=T0 + timedelta(seconds=4))
    assert every_page(db, "p1", window, limit=50) == newest_first(made[6:12])


def test_a_request_is_found_only_in_its_own_project(db: Database) -> None:
    made = rows("p1", "v1", 1)
    store(db, made)
    assert browse.project_request(db, "p1", made[0]["id"]) is not None
    assert browse.project_request(db, "p2", made[0]["id"]) is None
    assert browse.project_request(db, "p1", "no-such-id") is None
