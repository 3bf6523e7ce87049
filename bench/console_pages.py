"""How long the web console takes to render its pages with many requests in the store.

The issue asks for pages under 200 ms with 1,000,000 requests. This fills a fresh store (SQLite in
a temporary directory, or the database of MODELBAY_DATABASE_URL) with one project, one deployment
of two versions and `--requests` requests spread over them (statuses and origins mixed), a pipeline
(one version of three objects) with 100,000 requests of two steps each, whose deployment requests
are among those, a run whose three attempts are among them too, and a webhook that 20 jobs
delivered 300,000 results to (all inserted in bulk straight into the store), then serves the app
in-process (the engine started, no HTTP socket) and times each page, signed in as the project: the
median and the slowest of `--repeat` renders.

Run `.venv/bin/python bench/console_pages.py [--requests N] [--repeat R]`. Filling 1,000,000
requests and the rest takes a few minutes on SQLite.

With 1,000,000 requests on SQLite, on a 2-core machine busy with other work (load average 1.5 to
2.8), the medians of 7 renders were 10 to 64 ms per page and the slowest render 101 ms (a first
page of a version's or the project's requests 28 and 64 ms, the project's list halfway down 34 ms;
the pipelines page with its graph 29 ms, a pipeline's requests 24 ms first and 22 ms halfway down,
a pipeline request with its steps 23 ms, a run with its attempts 22 ms, a job with its deliveries
20 ms, the webhooks with their outcomes 10 ms). A status or origin filter reads at most
`core.browse.SCAN_LIMIT` rows.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi.testclient import TestClient
from sqlalchemy import insert

from modelbay.app import create_app
from modelbay.core.projects import hash_token
from modelbay.engine import open_database
from modelbay.settings import Settings
from modelbay.store.db import Database
from modelbay.store.tables import (
    DeliveryRow,
    DeploymentRow,
    JobRow,
    PipelineRequestRow,
    PipelineRow,
    PipelineVersionRow,
    ProjectRow,
    RequestRow,
    RunRow,
    VersionRow,
    WebhookRow,
)

TOKEN = "bench-console-token"
ORIGINS = [({"created_by": "ubiops"}, "direct"), ({"created_by": "ubiops"}, "batch"),
           ({"created_by": "pipeline", "pipeline": "p"}, "direct"), ({"created_by": "run", "run_id": "r"}, "direct"),
           ({"created_by": "batch job j"}, "direct")]
STATUSES = ["completed"] * 8 + ["failed", "cancelled"]
CHUNK = 20_000
#: The requests are 37 ms apart, the newest an hour old: well within their retention time (a week),
#: so the retention sweep leaves them be while the pages are timed.
SPACING = timedelta(milliseconds=37)

#: The pipeline `bench` (v1): two deployment objects side by side, joined by an operator.
PIPELINE_OBJECTS = [
    {"name": "first", "reference_type": "deployment", "reference_name": "bench", "version": "v1"},
    {"name": "second", "reference_type": "deployment", "reference_name": "bench", "version": "v2"},
    {"name": "join", "reference_type": "operator", "reference_name": "function"},
]
PIPELINE_ATTACHMENTS = [
    {"destination_name": destination, "sources": [{"source_name": source, "mapping": []} for source in sources]}
    for destination, sources in (("first", ["pipeline_start"]), ("second", ["pipeline_start"]),
                                 ("join", ["first", "second"]), ("pipeline_end", ["join"]))]
#: Its requests, each with two steps: deployment requests among those made by pipelines.
PIPELINE_REQUESTS = 100_000

#: The run whose attempts are three of the requests (of v1, 100 requests apart) in the middle.
RUN_ID = "bench-run"
ATTEMPT_GAP = 100

#: Datature jobs, each of as many items delivered to one webhook.
JOBS = 20
DELIVERIES = 300_000


@dataclass(frozen=True)
class Filled:
    """What the pages are timed on: a request and a pipeline request in the middle of their lists
    (id and created time), a job."""

    middle: tuple[str, datetime]
    pipeline_middle: tuple[str, datetime]
    job_id: str


def _insert(db: Database, table: Any, rows: list[dict[str, Any]]) -> None:
    with db.write() as session:
        session.execute(insert(table), rows)


def fill(settings: Settings, count: int) -> Filled:
    """One project, deployment and two versions (v1 and v2), `count` requests, a pipeline with
    `PIPELINE_REQUESTS` requests whose steps are among them, a run with three of them as its
    attempts, and a webhook with `JOBS` jobs delivering `DELIVERIES` results to it."""
    db = open_database(settings)
    now = datetime.now(UTC)
    first = now - timedelta(hours=1) - SPACING * count
    version_ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    # the run's attempts: requests made by runs (n % 5 == 3) of v1 (n even), near the middle
    attempt = count // 2 // 10 * 10 + 8
    attempts = {attempt + ATTEMPT_GAP * k for k in range(3)}
    assert max(attempts) < count, "too few requests for the run's attempts"
    middle: tuple[str, datetime] | None = None
    steps_made: list[tuple[str, datetime]] = []  # requests made by pipelines: the steps' requests
    try:
        with db.write() as session:
            session.add(ProjectRow(id="p", name="bench", token_hash=hash_token(TOKEN), number=10**12, handle="b" * 32,
                                   created_at=now))
            session.flush()  # the rows name each other by foreign keys: written in order
            session.add(DeploymentRow(id="d", project_id="p", name="bench", input_type="plain", output_type="plain",
                                      created_at=now, updated_at=now))
            session.add(PipelineRow(id="pl", project_id="p", name="bench", input_type="plain", output_type="plain",
                                    default_version_id="plv", created_at=now, updated_at=now))
            session.add(WebhookRow(id="w", project_id="p", name="bench-hook", endpoint="http://127.0.0.1:9/hook",
                                   secret="c2VjcmV0", max_retries=3, max_backoff_ms=2000, created_at=now,
                                   updated_at=now))
            session.flush()
            for number, version_id in enumerate(version_ids):
                session.add(VersionRow(
                    id=version_id, deployment_id="d", name=f"v{number + 1}", environment="python3-11",
                    instance_type="512mb", minimum_instances=0, maximum_instances=1, maximum_idle_time=300,
                    request_retention_mode="full", request_retention_time=604800, status="unavailable",
                    created_at=now, updated_at=now))
            session.add(PipelineVersionRow(id="plv", pipeline_id="pl", name="v1", request_retention_mode="full",
                                           request_retention_time=604800, objects=PIPELINE_OBJECTS,
                                           attachments=PIPELINE_ATTACHMENTS, created_at=now, updated_at=now))
        for start in range(0, count, CHUNK):
            rows = []
            for n in range(start, min(start + CHUNK, count)):
                origin, mode = ORIGINS[n % len(ORIGINS)]
                if n in attempts:
                    origin = {"created_by": "run", "run_id": RUN_ID}
                created = first + SPACING * n
                rows.append({
                    "id": str(uuid.uuid4()), "project_id": "p", "deployment_id": "d", "version_id": version_ids[n % 2],
                    "mode": mode, "status": STATUSES[n % len(STATUSES)], "timeout": 300, "origin": origin,
                    "data": b'"hello"', "result": b'"olleh"', "logs": "got hello\n", "input_size": 7, "output_size": 7,
                    "created_at": created, "started_at": created, "finished_at": created + timedelta(milliseconds=5),
                })
                if origin["created_by"] == "pipeline" and len(steps_made) < 2 * PIPELINE_REQUESTS:
                    steps_made.append((rows[-1]["id"], created))
            _insert(db, RequestRow, rows)
            if not middle and start + CHUNK >= count // 2:
                middle = rows[len(rows) // 2]["id"], rows[len(rows) // 2]["created_at"]
            print(f"\r  {min(start + CHUNK, count):,} requests stored", end="", flush=True)
        print()
        attempt_times = [first + SPACING * n for n in sorted(attempts)]
        _insert(db, RunRow, [{
            "id": RUN_ID, "project_id": "p", "deployment_id": "d", "version_id": version_ids[0], "status": "failed",
            "retry_count": 2, "attempts": 3, "input_data": "hello", "error_message": "every attempt failed",
            "created_at": attempt_times[0] - timedelta(milliseconds=200),
            "modified_at": attempt_times[-1] + timedelta(milliseconds=200)}])
        pipeline_middle = _fill_pipeline_requests(db, steps_made)
        job_id = _fill_jobs(db, now)
    finally:
        db.close()
    assert middle is not None
    return Filled(middle, pipeline_middle, job_id)


def _step(request_id: str, name: str, version: str, sequence: int) -> dict[str, Any]:
    return {"kind": "deployment", "id": request_id, "pipeline_object": name, "deployment": "bench",
            "version": version, "sequence_id": str(sequence), "status": "completed", "error_message": None,
            "input_size": 7, "output_size": 7}


def _fill_pipeline_requests(db: Database, steps_made: list[tuple[str, datetime]]) -> tuple[str, datetime]:
    """The pipeline's requests, each made when its first step's request was; returns the id and created
    time of the one in the middle."""
    count = len(steps_made) // 2
    middle: tuple[str, datetime] | None = None
    for start in range(0, count, CHUNK):
        rows = []
        for k in range(start, min(start + CHUNK, count)):
            (first_id, created), (second_id, last) = steps_made[2 * k], steps_made[2 * k + 1]
            rows.append({
                "id": str(uuid.uuid4()), "project_id": "p", "pipeline_id": "pl", "version_id": "plv",
                "mode": "direct", "status": STATUSES[k % len(STATUSES)], "timeout": 300, "data": b'"hello"',
                "result": b'"hello"', "input_size": 7, "output_size": 7, "origin": {"created_by": "ubiops"},
                "steps": [_step(first_id, "first", "v1", 2 * k), _step(second_id, "second", "v2", 2 * k + 1)],
                "created_at": created, "started_at": created, "finished_at": last + timedelta(milliseconds=5),
            })
        _insert(db, PipelineRequestRow, rows)
        if not middle and start + CHUNK >= count // 2:
            middle = rows[len(rows) // 2]["id"], rows[len(rows) // 2]["created_at"]
        print(f"\r  {min(start + CHUNK, count):,} pipeline requests stored", end="", flush=True)
    print()
    assert middle is not None
    return middle


def _fill_jobs(db: Database, now: datetime) -> str:
    """`JOBS` finished jobs an hour apart, each of `DELIVERIES` / `JOBS` items delivered (one in 50
    failed) to the webhook; returns the id of the newest."""
    items = DELIVERIES // JOBS
    job_ids = [str(uuid.uuid4()) for _ in range(JOBS)]
    started = [now - timedelta(hours=JOBS + 1 - j) for j in range(JOBS)]
    _insert(db, JobRow, [{
        "id": job_id, "project_id": "p", "name": f"job-{j}", "dataset_id": "ds", "deployment_id": "d",
        "webhook_ids": ["w"], "status": "finished", "item_count": items, "next_item": items, "gathered": items,
        "preprocessed": items, "predicted": items, "delivered": items - items // 50, "failed_deliver": items // 50,
        "created_at": started[j], "updated_at": started[j] + timedelta(minutes=30),
    } for j, job_id in enumerate(job_ids)])
    rows = []
    for j, job_id in enumerate(job_ids):
        for item in range(items):
            made = started[j] + timedelta(milliseconds=100 * item)
            rows.append({"id": str(uuid.uuid4()), "webhook_id": "w", "job_id": job_id, "item_index": item,
                         "status": "failed" if item % 50 == 49 else "delivered", "attempts": 1,
                         "next_attempt_at": made, "response_code": 200, "created_at": made,
                         "finished_at": made + timedelta(milliseconds=20)})
            if len(rows) == CHUNK:
                _insert(db, DeliveryRow, rows)
                rows = []
        print(f"\r  {(j + 1) * items:,} deliveries stored", end="", flush=True)
    if rows:
        _insert(db, DeliveryRow, rows)
    print()
    return job_ids[-1]


def timed(client: TestClient, path: str, repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
    return statistics.median(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="console-bench-"))
    try:
        settings = Settings(data_dir=root / "data", admin_token="bench-admin-token")
        print(f"filling the store with {args.requests:,} requests")
        filled = fill(settings, args.requests)
        middle, middle_time = filled.middle
        hour = (middle_time.replace(tzinfo=None) - timedelta(hours=1)).isoformat(timespec="minutes")
        hour_end = middle_time.replace(tzinfo=None).isoformat(timespec="minutes")
        with TestClient(create_app(settings), base_url="http://testserver") as client:
            client.get("/ui/sign-in")
            csrf = client.cookies.get("modelbay_console_csrf")
            signed = client.post("/ui/sign-in", data={"token": TOKEN, "csrf_token": csrf},
                                 headers={"Origin": "http://testserver"}, follow_redirects=False)
            assert signed.status_code == 303, signed.text
            version = "/ui/projects/bench/deployments/bench/versions/v1"
            pages = {
                "projects": "/ui/",
                "project": "/ui/projects/bench",
                "version": version,
                "version requests, first page": f"{version}/requests",
                "version requests, failed": f"{version}/requests?status=failed",
                "version requests, from pipelines": f"{version}/requests?origin=pipeline",
                "version requests, one hour": f"{version}/requests?from={hour}&to={hour_end}",
                "project requests, first page": "/ui/projects/bench/requests",
                "project requests, jobs that failed": "/ui/projects/bench/requests?origin=job&status=failed",
                "a request": f"/ui/projects/bench/requests/{middle}",
            }
            # A page deep in the list: the cursor of the request in the middle.
            cursor = urlencode({"before_time": middle_time.isoformat(), "before_id": middle})
            pages["project requests, halfway down"] = f"/ui/projects/bench/requests?{cursor}"
            pages["version requests, halfway down"] = f"{version}/requests?{cursor}"
            pages["version activity (JSON)"] = f"{version}/activity"
            pipeline_requests = "/ui/projects/bench/pipelines/bench/requests"
            pipeline_middle, pipeline_middle_time = filled.pipeline_middle
            pipeline_cursor = urlencode({"before_time": pipeline_middle_time.isoformat(), "before_id": pipeline_middle})
            pages.update({
                "pipelines (graph drawn)": "/ui/projects/bench/pipelines",
                "pipeline requests, first page": pipeline_requests,
                "pipeline requests, halfway down": f"{pipeline_requests}?{pipeline_cursor}",
                "a pipeline request (steps)": f"/ui/projects/bench/pipeline-requests/{pipeline_middle}",
                "a run (its attempts)": f"/ui/projects/bench/deployments/bench/runs/{RUN_ID}",
                "jobs": "/ui/projects/bench/jobs",
                "a job (deliveries)": f"/ui/projects/bench/jobs/{filled.job_id}",
                "webhooks (outcomes)": "/ui/projects/bench/webhooks",
            })
            print(f"{'page':40} {'median ms':>10} {'max ms':>8}")
            for name, path in pages.items():
                median, slowest = timed(client, path, args.repeat)
                print(f"{name:40} {median:10.1f} {slowest:8.1f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
