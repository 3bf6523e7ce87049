"""Benchmark: modelbay's `ray` runtime next to its `local` one and next to Ray Serve, in one run.

Run `.venv/bin/python bench/ray_runtime.py` (wrk installed: `make bench` installs it); see
bench/README.md ("Instances on a Ray cluster"). One phase after the other, each on its own:

1. modelbay with `MODELBAY_RUNTIME=local` (SQLite): the no-op deployment (one instance), its cold
   start (the first request), 1,000 requests one after another, then wrk at 8 connections.
2. The same with `MODELBAY_RUNTIME=ray`: the server starts its own local Ray instance, and its
   instance is an actor there.
3. Ray Serve 2.60, in a virtualenv of its own (`.venv-bench/ray-serve`, made on first use), serving
   the same no-op (one replica) over its HTTP proxy: the same sequential run and wrk at 8.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `bench.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    DEPLOYMENT,
    PROJECT,
    ROOT,
    Proc,
    bench_run,
    create_noop_deployment,
    create_noop_version,
    free_port,
    log,
    machine,
    post_once,
    request_path,
    save_results,
    start_modelbay,
    start_process,
    ubiops_api,
)
from bench.direct_requests import run_wrk, sequential  # noqa: E402

RAY_SERVE_VENV = ROOT / ".venv-bench" / "ray-serve"
RAY_SERVE_PIN = "ray[serve]==2.60.0"

RAY_SERVE_APP = """
import signal
import sys
import time

import ray
from ray import serve
from starlette.requests import Request


@serve.deployment(num_replicas=1, max_ongoing_requests=64)
class Noop:
    async def __call__(self, request: Request):
        if request.method == "GET":
            return {"ready": True}
        return await request.json()


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # exit handlers stop the Ray instance
ray.init(include_dashboard=False)
serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])})
serve.run(Noop.bind(), route_prefix="/")
while True:
    time.sleep(3600)
"""


def modelbay_phase(workdir: Path, procs: list[Proc], runtime: str, requests: int, seconds: int) -> dict[str, Any]:
    phase = workdir / runtime
    phase.mkdir()
    env = {"MODELBAY_RUNTIME": runtime, "MODELBAY_RAY_ADDRESS": "", "MODELBAY_RAY_NODE_DIR": str(phase / "ray")}
    started = time.perf_counter()
    server, token, _ = start_modelbay(phase, procs, f"modelbay-{runtime}", env)
    server_start_s = time.perf_counter() - started
    with ubiops_api(server.url, token) as api:
        create_noop_deployment(api)
        create_noop_version(api, phase, "v1", 0.05, maximum_instances=1)
    path = request_path(PROJECT, DEPLOYMENT)
    status, body, cold_ms = post_once(server.port, path, token)
    if status != 200 or body.get("result") != {"x": 1}:
        raise RuntimeError(f"first request answered {status}: {body}")
    one_by_one = sequential(server.port, path, token, requests, warmup=100)
    loaded = run_wrk(f"{server.url}{path}", token, 8, seconds, phase)
    server.stop()
    result = {"server_start_s": server_start_s, "cold_start_ms": cold_ms, "c1": one_by_one, "c8": loaded}
    log(f"modelbay {runtime}: server start {server_start_s:.1f} s, cold start {cold_ms:.0f} ms, "
        f"c=1 p50 {one_by_one['p50_ms']:.2f} ms, c=8 {loaded['rps']:,.0f} req/s p50 {loaded['p50_ms']:.2f} ms "
        f"p99 {loaded['p99_ms']:.2f} ms")
    return result


def ray_serve_python() -> Path:
    python = RAY_SERVE_VENV / "bin" / "python"
    if not (RAY_SERVE_VENV / ".installed").exists():
        log(f"installing {RAY_SERVE_PIN} into {RAY_SERVE_VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(RAY_SERVE_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", RAY_SERVE_PIN], check=True)
        (RAY_SERVE_VENV / ".installed").touch()
    return python


def ray_serve_phase(workdir: Path, procs: list[Proc], requests: int, seconds: int) -> dict[str, Any]:
    phase = workdir / "ray-serve"
    phase.mkdir()
    app = phase / "noop_app.py"
    app.write_text(textwrap.dedent(RAY_SERVE_APP))
    port = free_port()
    started = time.perf_counter()
    server = start_process("ray-serve", [str(ray_serve_python()), str(app), str(port)], phase, port, "/",
                           env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    procs.append(server)
    start_s = time.perf_counter() - started
    one_by_one = sequential(port, "/", "", requests, warmup=100)
    loaded = run_wrk(f"http://127.0.0.1:{port}/", "", 8, seconds, phase)
    server.stop()
    log(f"Ray Serve: start {start_s:.1f} s, c=1 p50 {one_by_one['p50_ms']:.2f} ms, c=8 {loaded['rps']:,.0f} req/s "
        f"p50 {loaded['p50_ms']:.2f} ms p99 {loaded['p99_ms']:.2f} ms")
    return {"start_s": start_s, "c1": one_by_one, "c8": loaded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="sequential requests per phase")
    parser.add_argument("--duration", type=int, default=10, help="seconds of each wrk run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine()}
    with bench_run("modelbay-bench-ray-", args.keep) as (workdir, procs):
        results["local"] = modelbay_phase(workdir, procs, "local", args.requests, args.duration)
        results["ray"] = modelbay_phase(workdir, procs, "ray", args.requests, args.duration)
        results["ray_serve"] = ray_serve_phase(workdir, procs, args.requests, args.duration)
    local, ray, serve = (results[k]["c8"]["rps"] for k in ("local", "ray", "ray_serve"))
    results["ratios"] = {"ray_vs_local_c8": ray / local, "ray_vs_ray_serve_c8": ray / serve}
    log(f"c=8: ray runtime {ray:,.0f} req/s = {ray / local:.2f}x local, {ray / serve:.1f}x Ray Serve")
    save_results(results, "ray_runtime")


if __name__ == "__main__":
    main()
