"""How long the web console takes to render its pages with many requests in the store.

The issue asks for pages under 200 ms with 1,000,000 requests. This fills a fresh store (SQLite in
a temporary directory, or the database of MODELBAY_DATABASE_URL) with one project, one deployment
of two versions and `--requests` requests spread over them (statuses and origins mixed, inserted in
bulk straight into the store), then serves the app in-process (the engine started, no HTTP socket)
and times each page, signed in as the project: the median and the slowest of `--repeat` renders.

Run `.venv/bin/python bench/console_pages.py [--requests N] [--repeat R]`. Filling 1,000,000 rows
takes a few minutes on SQLite.

With 1,000,000 requests on SQLite, on a 2-core machine busy with other work, the medians of 5
renders were 7 to 74 ms per page (a first page of a version's or the project's requests 19 and 31
ms, the project's list halfway down 74 ms, a filter matching nothing 52 ms: it reads at most
`core.browse.SCAN_LIMIT` rows).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

from fastapi.testclient import TestClient
from sqlalchemy import insert

from modelbay.app import create_app
from modelbay.core.projects import hash_token
from modelbay.engine import open_database
from modelbay.settings import Settings
from modelbay.store.tables import DeploymentRow, ProjectRow, RequestRow, VersionRow

TOKEN = "bench-console-token"
ORIGINS = [({"created_by": "ubiops"}, "direct"), ({"created_by": "ubiops"}, "batch"),
           ({"created_by": "pipeline", "pipeline": "p"}, "direct"), ({"created_by": "run", "run_id": "r"}, "direct"),
           ({"created_by": "batch job j"}, "direct")]
STATUSES = ["completed"] * 8 + ["failed", "cancelled"]
CHUNK = 20_000
#: The requests are 37 ms apart, the newest an hour old: well within their retention time (a week),
#: so the retention sweep leaves them be while the pages are timed.
SPACING = timedelta(milliseconds=37)


def fill(settings: Settings, count: int) -> tuple[str, datetime]:
    """One project, deployment and two versions (v1 and v2), and `count` requests; returns the id and
    the created time of a request in the middle."""
    db = open_database(settings)
    now = datetime.now(UTC)
    first = now - timedelta(hours=1) - SPACING * count
    version_ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    middle: tuple[str, datetime] | None = None
    try:
        with db.write() as session:
            session.add(ProjectRow(id="p", name="bench", token_hash=hash_token(TOKEN), number=10**12, handle="b" * 32,
                                   created_at=now))
            session.flush()  # the rows name each other by foreign keys: written in order
            session.add(DeploymentRow(id="d", project_id="p", name="bench", input_type="plain", output_type="plain",
                                      created_at=now, updated_at=now))
            session.flush()
            for number, version_id in enumerate(version_ids):
                session.add(VersionRow(
                    id=version_id, deployment_id="d", name=f"v{number + 1}", environment="python3-11",
                    instance_type="512mb", minimum_instances=0, maximum_instances=1, maximum_idle_time=300,
                    request_retention_mode="full", request_retention_time=604800, status="unavailable",
                    created_at=now, updated_at=now))
        for start in range(0, count, CHUNK):
            rows = []
            for n in range(start, min(start + CHUNK, count)):
                origin, mode = ORIGINS[n % len(ORIGINS)]
                created = first + SPACING * n
                rows.append({
                    "id": str(uuid.uuid4()), "project_id": "p", "deployment_id": "d", "version_id": version_ids[n % 2],
                    "mode": mode, "status": STATUSES[n % len(STATUSES)], "timeout": 300, "origin": origin,
                    "data": b'"hello"', "result": b'"olleh"', "logs": "got hello\n", "input_size": 7, "output_size": 7,
                    "created_at": created, "started_at": created, "finished_at": created + timedelta(milliseconds=5),
                })
            with db.write() as session:
                session.execute(insert(RequestRow), rows)
            if not middle and start + CHUNK >= count // 2:
                middle = rows[len(rows) // 2]["id"], rows[len(rows) // 2]["created_at"]
            print(f"\r  {min(start + CHUNK, count):,} requests stored", end="", flush=True)
        print()
    finally:
        db.close()
    assert middle is not None
    return middle


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
        middle, middle_time = fill(settings, args.requests)
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
            print(f"{'page':40} {'median ms':>10} {'max ms':>8}")
            for name, path in pages.items():
                median, slowest = timed(client, path, args.repeat)
                print(f"{name:40} {median:10.1f} {slowest:8.1f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
