"""Bench of the ABEJA dialect, driven by the official abeja-sdk against a real server.

Measures `create_run` latency (p50/p99, one SDK call after another), runs completed per second
for a no-op handler, and `request_service` requests per second at concurrency 8 (wrk sending
the SDK's exact request, Host header included) with 1 and then 2 instances. With `--postgres`, the
server's store is a database of a PostgreSQL of the run's own (`bench.common.POSTGRES_SETTINGS`).

    .venv/bin/python bench/abeja.py [--runs 300] [--duration 10] [--postgres] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# This file is named like the SDK's package: take its directory off the path, put the repo root on.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from bench.common import (  # noqa: E402
    RESULTS_DIR,
    Proc,
    log,
    machine,
    percentile,
    postgres_cpu_seconds,
    read_store,
    start_modelbay,
    start_postgres,
    tree_cpu,
)
from bench.direct_requests import _lua_string, parse_wrk  # noqa: E402

NOOP_HANDLER = '''
def handler(request, context):
    return {"status_code": 200, "content_type": "application/json", "content": {"ok": True}}
'''

WRK_LUA = """\
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Host"] = {host}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = {auth}
"""

_real_getaddrinfo = socket.getaddrinfo


def _getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    # The SDK sends service requests to <organization>.localhost: resolve it here, as DNS would.
    if isinstance(host, str) and (host == "localhost" or host.endswith(".localhost")):
        host = "127.0.0.1"
    return _real_getaddrinfo(host, *args, **kwargs)


def create_org(data_dir: Path, env: dict[str, str]) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "modelbay.cli", "project", "create", "abeja-bench", "--data-dir", str(data_dir),
         "--json"], capture_output=True, text=True, timeout=120, check=True, env=os.environ | env,
    )
    return dict(json.loads(done.stdout))


def deploy(sdk: Any, org: str, workdir: Path) -> tuple[str, str]:
    import requests

    deployments = sdk.deployments.APIClient()
    d = deployments.create_deployment(org, "noop")["deployment_id"]
    version = deployments.create_deployment_version(org, d, "1", "main:handler", "abeja-inc/all-cpu:19.10")
    src = workdir / "src"
    src.mkdir()
    (src / "main.py").write_text(NOOP_HANDLER)
    archive = shutil.make_archive(str(workdir / "pkg"), "gztar", root_dir=src, base_dir=".")
    with open(archive, "rb") as f:
        requests.put(version["upload_url"], data=f, timeout=60).raise_for_status()
    deadline = time.monotonic() + 120
    while deployments.get_deployment_version(org, d, version["version_id"])["status"] != "READY":
        if time.monotonic() > deadline:
            raise RuntimeError("the version did not build")
        time.sleep(0.05)
    return d, version["version_id"]


def runs_done(db: Path | str) -> int:
    return int(read_store(db, "SELECT count(*) FROM runs WHERE status = 'succeeded'"))


def wait_for_runs(db: Path | str, count: int, timeout: float = 300) -> float:
    """Poll until `count` runs have succeeded; returns the `perf_counter` time they had."""
    deadline = time.perf_counter() + timeout
    while runs_done(db) < count:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{count} runs did not succeed within {timeout} s")
        time.sleep(0.01)
    return time.perf_counter()


def bench_runs(sdk: Any, org: str, d: str, v: str, n: int, db: Path | str) -> dict[str, Any]:
    runs = sdk.runs.APIClient()
    runs.create_run(org, d, v)  # warm: the version's first instance starts here
    wait_for_runs(db, 1, timeout=120)
    timings: list[float] = []
    started = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        run = runs.create_run(org, d, v, retry_count=0)
        timings.append((time.perf_counter() - t0) * 1000)
        assert run["status"] == "SUBMITTED"
    submitted = time.perf_counter()
    finished = wait_for_runs(db, n + 1)
    timings.sort()
    # Then a burst from 8 clients at once: how fast runs are completed when creates are not the limit.
    before = runs_done(db)
    burst_started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: runs.create_run(org, d, v, retry_count=0), range(n)))
    burst_submitted = time.perf_counter()
    burst_finished = wait_for_runs(db, before + n)
    return {
        "runs": n,
        "create_p50_ms": percentile(timings, 50),
        "create_p99_ms": percentile(timings, 99),
        "submit_s": submitted - started,
        "all_done_s": finished - started,
        "runs_per_s": n / (finished - started),
        "burst_c8_submit_s": burst_submitted - burst_started,
        "burst_c8_all_done_s": burst_finished - burst_started,
        "burst_c8_runs_per_s": n / (burst_finished - burst_started),
    }


def bench_runs_wrk(org: dict[str, str], d: str, v: str, server: Proc, duration: int, workdir: Path,
                   db: Path | str) -> dict[str, Any]:
    """Runs created by wrk at c=8 (the SDK's exact `create_run` request): what the server does when
    the client is not the limit (8 SDK threads in one Python process are), up to every run done."""
    script = workdir / "runs.lua"
    script.write_text(WRK_LUA.format(body=_lua_string(json.dumps({"version_id": v, "retry_count": 0})),
                                     host=_lua_string(f"localhost:{server.port}"),
                                     auth=_lua_string(f"Bearer {org['token']}")))
    before = runs_done(db)
    url = f"{server.url}/organizations/{org['organization_id']}/deployments/{d}/runs"
    log(f"create_run: wrk -c8 for {duration} s")
    cpu_before, postgres_before = tree_cpu(server.process.pid), postgres_cpu_seconds()
    started = time.perf_counter()
    done = subprocess.run(["wrk", "-t2", "-c8", f"-d{duration}s", "--latency", "-s", str(script), url],
                          capture_output=True, text=True, timeout=duration + 60, check=True)
    created_s = time.perf_counter() - started
    parsed = parse_wrk(done.stdout)
    created = int(read_store(db, "SELECT count(*) FROM runs"))
    finished = wait_for_runs(db, created)
    cpu_after, postgres_after = tree_cpu(server.process.pid), postgres_cpu_seconds()
    runs = created - before
    return {"created": runs, "create_rps": parsed["rps"], "create_p50_ms": parsed["p50_ms"],
            "create_p99_ms": parsed["p99_ms"], "non_2xx": parsed["non_2xx"], "create_s": created_s,
            "all_done_s": finished - started, "runs_per_s": runs / (finished - started),
            "server_cpu_ms_per_run": 1000 * (cpu_after["server"] - cpu_before["server"]) / runs,
            "postgres_cpu_ms_per_run": 1000 * (postgres_after - postgres_before) / runs}


def bench_service(sdk: Any, org: dict[str, str], d: str, v: str, server: Proc, duration: int,
                  workdir: Path) -> dict[str, Any]:
    services = sdk.services.APIClient()
    o = org["organization_id"]
    s = services.create_service(o, d, v)["service_id"]
    results: dict[str, Any] = {}
    for instances in (1, 2):
        if instances > 1:
            services.update_service(o, d, s, {"instance_number": instances})
        deadline = time.monotonic() + 60
        while not ((x := services.get_service(o, d, s))["status"] == "READY"
                   and x["running_instance_number"] == instances):
            if time.monotonic() > deadline:
                raise RuntimeError("the service did not become ready")
            time.sleep(0.05)
        answer = services.request_service(o, d, s, json={"x": 1})
        assert answer.status_code == 200 and answer.json() == {"ok": True}
        script = workdir / "service.lua"
        script.write_text(WRK_LUA.format(body=_lua_string('{"x": 1}'), host=_lua_string(f"{o}.localhost"),
                                         auth=_lua_string(f"Bearer {org['token']}")))
        url = f"{server.url}/deployments/{d}/services/{s}"
        log(f"request_service: wrk -c8 for {duration} s with {instances} instance(s)")
        done = subprocess.run(["wrk", "-t2", "-c8", f"-d{duration}s", "--latency", "-s", str(script), url],
                              capture_output=True, text=True, timeout=duration + 60, check=True)
        parsed = parse_wrk(done.stdout)
        results[f"{instances}_instances"] = {k: parsed[k] for k in ("rps", "requests", "p50_ms", "p99_ms",
                                                                    "non_2xx", "socket_errors")}
    # What one SDK client sees (a new connection per call, as the SDK makes).
    n = 200
    t0 = time.perf_counter()
    for _ in range(n):
        services.request_service(o, d, s, json={"x": 1})
    results["sdk_sequential_rps"] = n / (time.perf_counter() - t0)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300, help="runs created for the run figures")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--postgres", action="store_true", help="the server's store on a PostgreSQL")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        log("wrk is missing: apt-get install -y wrk")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="modelbay-bench-abeja-"))
    procs: list[Proc] = []
    postgres = start_postgres() if args.postgres else None
    try:
        env = {"MODELBAY_DATABASE_URL": postgres.url(postgres.database())} if postgres else {}
        server, _, data_dir = start_modelbay(workdir, procs, env=env)
        store = env.get("MODELBAY_DATABASE_URL") or data_dir / "modelbay.db"
        org = create_org(data_dir, env)
        # The SDK reads these once, at import: set them first.
        os.environ["ABEJA_API_URL"] = f"http://localhost:{server.port}"
        os.environ["PLATFORM_AUTH_TOKEN"] = org["token"]
        socket.getaddrinfo = _getaddrinfo
        import abeja.deployments
        import abeja.runs
        import abeja.services

        sdk = abeja
        d, v = deploy(sdk, org["organization_id"], workdir)
        log(f"create_run x {args.runs}, one after another")
        results = {
            "machine": machine(),
            "store": "postgresql" if postgres else "sqlite",
            "runs": bench_runs(sdk, org["organization_id"], d, v, args.runs, store),
            "runs_wrk": bench_runs_wrk(org, d, v, server, args.duration, workdir, store),
            "request_service": bench_service(sdk, org, d, v, server, args.duration, workdir),
        }
    finally:
        for proc in procs:
            proc.stop()
        if postgres is not None:
            postgres.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"abeja-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    r, s = results["runs"], results["request_service"]
    print(f"store: {results['store']}")
    print(f"create_run: p50 {r['create_p50_ms']:.1f} ms, p99 {r['create_p99_ms']:.1f} ms "
          f"({r['runs']} runs, one after another)")
    print(f"runs completed: {r['runs_per_s']:.1f}/s ({r['runs']} no-op runs done {r['all_done_s']:.2f} s "
          f"after the first create)")
    print(f"runs completed, 8 clients creating at once: {r['burst_c8_runs_per_s']:.1f}/s ({r['runs']} runs done "
          f"{r['burst_c8_all_done_s']:.2f} s after the first create)")
    w = results["runs_wrk"]
    print(f"runs created by wrk c=8: {w['create_rps']:.0f}/s (p50 {w['create_p50_ms']:.1f} ms, p99 "
          f"{w['create_p99_ms']:.1f} ms, non-2xx {w['non_2xx']}); completed {w['runs_per_s']:.0f}/s ({w['created']} "
          f"runs done {w['all_done_s']:.2f} s after the first create); CPU per run: server "
          f"{w['server_cpu_ms_per_run']:.2f} ms, PostgreSQL {w['postgres_cpu_ms_per_run']:.2f} ms")
    for key in ("1_instances", "2_instances"):
        w = s[key]
        print(f"request_service c=8, {key.split('_')[0]} instance(s): {w['rps']:.0f} req/s, "
              f"p50 {w['p50_ms']:.1f} ms, p99 {w['p99_ms']:.1f} ms, non-2xx {w['non_2xx']}")
    print(f"request_service through the SDK, one after another: {s['sdk_sequential_rps']:.0f} req/s")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
