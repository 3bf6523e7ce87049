"""Benchmark: what a pipeline adds over the requests it makes.

A pipeline of 3 no-op deployment objects in a chain, against 3 direct requests to the same
no-op deployment one after another, on one keep-alive connection each (c=1). The overhead is
the difference of the two medians: walking the DAG, mapping fields, recording the pipeline
request and its steps.

Run `.venv/bin/python bench/pipelines.py [--requests N]`; see bench/README.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `bench.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    DEPLOYMENT,
    PROJECT,
    Proc,
    create_noop_deployment,
    create_noop_version,
    headers_for,
    log,
    machine,
    percentile,
    request_path,
    start_modelbay,
    ubiops_api,
)

PIPELINE = "three-noops"
STEPS = 3
WARMUP = 100


def create_pipeline(api: Any) -> None:
    import ubiops

    fields = [{"name": "x", "data_type": "int"}]
    api.pipelines_create(PROJECT, ubiops.PipelineCreate(
        name=PIPELINE, input_type="structured", input_fields=fields, output_type="structured", output_fields=fields))
    names = [f"step-{i}" for i in range(STEPS)]
    mapping = [{"source_field_name": "x", "destination_field_name": "x"}]
    api.pipeline_versions_create(PROJECT, PIPELINE, ubiops.PipelineVersionCreate(
        version="v1",
        objects=[{"name": n, "reference_name": DEPLOYMENT} for n in names],
        attachments=[{"destination_name": dest, "sources": [{"source_name": src, "mapping": mapping}]}
                     for src, dest in zip(["pipeline_start", *names], [*names, "pipeline_end"], strict=True)],
    ))


def timed(conn: http.client.HTTPConnection, path: str, token: str) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    conn.request("POST", path, b'{"x": 1}', headers_for(token))
    body = json.loads(conn.getresponse().read())
    return (time.perf_counter() - start) * 1000, body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="timed samples of each kind")
    args = parser.parse_args()
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="modelbay-bench-") as tmp:
        try:
            server, token, _ = start_modelbay(Path(tmp), procs)
            with ubiops_api(server.url, token) as api:
                create_noop_deployment(api)
                create_noop_version(api, Path(tmp), "v1", 0.01, maximum_instances=1)
                create_pipeline(api)
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            direct_path = request_path(PROJECT, DEPLOYMENT)
            pipeline_path = f"/v2.1/projects/{PROJECT}/pipelines/{PIPELINE}/requests"
            for _ in range(WARMUP):
                timed(conn, direct_path, token)
                timed(conn, pipeline_path, token)
            direct_ms: list[float] = []
            pipeline_ms: list[float] = []
            failures = 0
            for _ in range(args.requests):  # interleaved, so drift hits both alike
                total = 0.0
                for _ in range(STEPS):
                    ms, body = timed(conn, direct_path, token)
                    total += ms
                    failures += body.get("status") != "completed"
                direct_ms.append(total)
                ms, body = timed(conn, pipeline_path, token)
                failures += body.get("status") != "completed" or len(body["deployment_requests"]) != STEPS
                pipeline_ms.append(ms)
            conn.close()
        finally:
            for proc in procs:
                proc.stop()
    direct_ms.sort()
    pipeline_ms.sort()
    report = {
        "machine": machine(),
        "samples": args.requests,
        "three_direct_p50_ms": percentile(direct_ms, 50),
        "three_direct_p99_ms": percentile(direct_ms, 99),
        "pipeline_p50_ms": percentile(pipeline_ms, 50),
        "pipeline_p99_ms": percentile(pipeline_ms, 99),
        "overhead_p50_ms": percentile(pipeline_ms, 50) - percentile(direct_ms, 50),
        "failures": failures,
    }
    log(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2))
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
