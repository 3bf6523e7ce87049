"""The console's reads of pipeline requests, run attempts and webhook deliveries (`core.browse`)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert

from modelbay.core import browse
from modelbay.store.db import Database
from modelbay.store.tables import (
    DeliveryRow,
    JobRow,
    OperatorRequestRow,
    PipelineRequestRow,
    ProjectRow,
    RequestRow,
    RunRow,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def pipeline_requests(project_id: str, version_id: str, count: int, start: int = 0) -> list[dict[str, Any]]:
    """`count` pipeline requests, two sharing each created time (ties the id must order)."""
    return [{"id": str(uuid.uuid4()), "project_id": project_id, "pipeline_id": "p", "version_id": version_id,
             "mode": "direct", "status": "completed", "timeout": 1, "steps": [], "origin": {},
             "created_at": T0 + timedelta(seconds=(start + n) // 2)} for n in range(count)]


def request(project_id: str, version_id: str, at: datetime, origin: dict[str, Any], **values: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "project_id": project_id, "deployment_id": "d", "version_id": version_id,
            "mode": "direct", "status": "completed", "timeout": 1, "origin": origin, "created_at": at, **values}


def store(db: Database, row_type: Any, made: list[dict[str, Any]]) -> None:
    with db.write() as session:
        session.execute(insert(row_type), made)


def newest_first(made: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in sorted(made, key=lambda r: (r["created_at"], r["id"]), reverse=True)]


def test_a_pipelines_requests_are_paged_newest_first_across_its_versions(db: Database) -> None:
    v1, v2 = pipeline_requests("p1", "v1", 13), pipeline_requests("p1", "v2", 8, start=5)
    other = pipeline_requests("p1", "v9", 5)  # another pipeline's version
    store(db, PipelineRequestRow, v1 + v2 + other)
    for limit in (1, 4, 21, 50):
        seen, before = [], None
        while True:
            page = browse.pipeline_request_page(db, ["v1", "v2"], before=before, limit=limit)
            assert len(page.rows) <= limit
            seen += [row.id for row in page.rows]
            if page.next is None:
                break
            before = page.next
        assert seen == newest_first(v1 + v2), limit
    assert browse.pipeline_request_page(db, [], limit=5).rows == []


def test_a_pipeline_request_is_found_only_in_its_own_project(db: Database) -> None:
    [made] = pipeline_requests("p1", "v1", 1)
    store(db, PipelineRequestRow, [made])
    assert browse.project_pipeline_request(db, "p1", made["id"]) is not None
    assert browse.project_pipeline_request(db, "p2", made["id"]) is None
    assert browse.project_pipeline_request(db, "p1", "no-such-id") is None


def test_step_times_come_from_the_rows_the_steps_made(db: Database) -> None:
    [parent, child] = pipeline_requests("p1", "v1", 2)
    child["parent_id"] = parent["id"]
    step = request("p1", "dv", T0, {"created_by": "pipeline"}, started_at=T0 + timedelta(seconds=1),
                   finished_at=T0 + timedelta(seconds=3))
    elsewhere = request("p2", "dv", T0, {})  # another project's request named by a forged step
    operator = {"id": str(uuid.uuid4()), "pipeline_request_id": parent["id"], "pipeline_object": "op",
                "operator": "function", "sequence_id": "1", "status": "completed", "created_at": T0,
                "finished_at": T0 + timedelta(milliseconds=2)}
    store(db, PipelineRequestRow, [parent, child])
    store(db, RequestRow, [step, elsewhere])
    store(db, OperatorRequestRow, [operator])
    steps = [{"kind": "deployment", "id": step["id"]}, {"kind": "pipeline", "id": child["id"]},
             {"kind": "operator", "id": operator["id"]}, {"kind": "deployment", "id": elsewhere["id"]},
             {"kind": "deployment", "id": "deleted-meanwhile"}]
    times = browse.step_times(db, "p1", parent["id"], steps)
    assert set(times) == {step["id"], child["id"], operator["id"]}
    assert times[step["id"]].finished_at.replace(tzinfo=UTC) == T0 + timedelta(seconds=3)
    assert times[operator["id"]].started_at == times[operator["id"]].created_at  # an operator starts as made
    assert browse.step_times(db, "p1", child["id"], steps[2:3]) == {}  # not a step of that request


def run_row(run_id: str, created: datetime, modified: datetime) -> dict[str, Any]:
    return {"id": run_id, "project_id": "p1", "deployment_id": "d", "version_id": "v1", "status": "failed",
            "retry_count": 2, "attempts": 3, "created_at": created, "modified_at": modified}


def test_a_runs_attempts_are_its_versions_requests_made_by_it(db: Database) -> None:
    start = T0 + timedelta(hours=1)
    mine = [request("p1", "v1", start + timedelta(seconds=n), {"created_by": "run", "run_id": "r1"}) for n in (1, 5)]
    noise = [
        request("p1", "v1", start + timedelta(seconds=2), {"created_by": "run", "run_id": "r2"}),  # another run
        request("p1", "v1", start + timedelta(seconds=3), {"created_by": "ubiops"}),
        request("p1", "v2", start + timedelta(seconds=3), {"created_by": "run", "run_id": "r1"}),  # another version
        # made with the same run id long after the run ended: past its life
        request("p1", "v1", start + timedelta(days=1), {"created_by": "run", "run_id": "r1"}),
    ]
    store(db, RequestRow, mine + noise)
    run = RunRow(**run_row("r1", start, start + timedelta(seconds=6)))  # as read (only its fields are used)
    assert [row.id for row in browse.run_attempts(db, run, ended=True)] == [r["id"] for r in mine]
    # a run still going: everything since it was made
    assert [row.id for row in browse.run_attempts(db, run, ended=False)] == [r["id"] for r in mine] + [noise[-1]["id"]]


def delivery(webhook_id: str, job_id: str, item: int, status: str) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "webhook_id": webhook_id, "job_id": job_id, "item_index": item,
            "status": status, "attempts": 1, "next_attempt_at": T0, "created_at": T0 + timedelta(seconds=item)}


def job(project_id: str, job_id: str, webhook_ids: list[str], at: datetime) -> dict[str, Any]:
    return {"id": job_id, "project_id": project_id, "name": job_id, "dataset_id": "ds", "deployment_id": "d",
            "webhook_ids": webhook_ids, "status": "finished", "created_at": at, "updated_at": at}


def test_webhook_outcomes_count_its_latest_deliveries(db: Database) -> None:
    with db.write() as session:
        session.execute(insert(ProjectRow), [{"id": p, "name": p, "token_hash": p, "number": n, "handle": p,
                                              "created_at": T0} for n, p in enumerate(("p1", "p2"))])
    store(db, JobRow, [job("p1", "old", ["w1", "w2"], T0), job("p1", "new", ["w1"], T0 + timedelta(days=1)),
                       job("p2", "theirs", ["w1"], T0 + timedelta(days=2))])
    store(db, DeliveryRow,
          [delivery("w1", "old", n, "failed") for n in range(5)]
          + [delivery("w2", "old", n, "delivered") for n in range(5)]
          + [delivery("w1", "new", n, "delivered") for n in range(3)] + [delivery("w1", "new", 3, "pending")]
          + [delivery("w1", "theirs", n, "cancelled") for n in range(9)])  # another project's job: never read
    # the newest job's last items first, then the older job's
    assert browse.webhook_outcomes(db, "p1", ["w1", "w2", "w3"], last=5) == {
        "w1": {"pending": 1, "delivered": 3, "failed": 1}, "w2": {"delivered": 5}}
    assert browse.webhook_outcomes(db, "p1", ["w1"])["w1"] == {"pending": 1, "delivered": 3, "failed": 5}
    assert browse.webhook_outcomes(db, "p1", ["w1"], last=5, jobs_searched=1) == {"w1": {"pending": 1, "delivered": 3}}
    assert browse.webhook_outcomes(db, "p2", ["w2"]) == {}
