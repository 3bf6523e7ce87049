"""Benchmark: a Datature batch job end to end on a real modelbay server: items/s and server memory.

Run `.venv/bin/python bench/datature_job.py [--items 10000] [--instances 2]`; see bench/README.md
("Datature batch job"). With the official `datature` SDK it uploads an NDJSON dataset of `--items`
items `{"x": i}`, creates a webhook pointing at a loopback receiver in this process (which checks
every signature and counts deliveries), and a job over the structured no-op deployment (made with
the `ubiops` SDK). It polls the job every 0.25 s until Delivered + FailedDeliver equals the item
count (and reports when the receiver had every item, which that poll rounds up by up to 0.25 s),
while sampling the server's RSS (and its workers') every 0.1 s. With `--postgres`, the
server's store is a database of a PostgreSQL of the run's own (`bench.common.POSTGRES_SETTINGS`).

Everything runs on loopback, on ports picked by binding port 0, in a temporary directory removed at
the end; the server is stopped (SIGTERM, then SIGKILL, then leftover workers by pid) even when
something fails.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `bench.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    RESULTS_DIR,
    Proc,
    _mib,
    cpu_seconds,
    create_noop_deployment,
    create_noop_version,
    descendants,
    log,
    machine,
    postgres_cpu_seconds,
    process_tree_rss,
    read_store,
    rss_kib,
    segments_to_port,
    start_modelbay,
    start_postgres,
    system_busy_seconds,
    ubiops_api,
)

SECRET = base64.b64encode(b"bench-secret-bench-secret-bench!").decode()


class Receiver:
    """Counts signed deliveries by item index; a bad signature is counted, and answered 401."""

    def __init__(self) -> None:
        self.key = base64.b64decode(SECRET)
        self.lock = threading.Lock()
        self.seen: set[int] = set()
        self.duplicates = 0
        self.bad_signatures = 0
        self.posts = 0
        self.last_new_at = 0.0  # perf_counter when the latest item not seen before arrived

    def handle(self, body: bytes, signature: str) -> int:
        with self.lock:
            self.posts += 1
        stamp, _, given = signature.partition(",v1=")
        expected = hmac.new(self.key, stamp.removeprefix("t=").encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, given):
            with self.lock:
                self.bad_signatures += 1
            return 401
        index = json.loads(body)["itemIndex"]
        with self.lock:
            if index in self.seen:
                self.duplicates += 1
            else:
                self.last_new_at = time.perf_counter()
            self.seen.add(index)
        return 200


def serve_receiver(receiver: Receiver) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver would

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            code = receiver.handle(body, self.headers.get("x-modelbay-signature", ""))
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 256
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run(items: int, instances: int, workdir: Path, database_url: str | None = None,
        postgres_port: int | None = None) -> dict[str, Any]:
    procs: list[Proc] = []
    receiver = Receiver()
    hook_server = serve_receiver(receiver)
    # The receiver listens on loopback, which webhooks may reach only when the operator allows it.
    os.environ["MODELBAY_WEBHOOK_ALLOW_PRIVATE_TARGETS"] = "true"
    try:
        env = {"MODELBAY_DATABASE_URL": database_url} if database_url else {}
        server, token, data_dir = start_modelbay(workdir, procs, env=env)
        with ubiops_api(server.url, token) as api:
            create_noop_deployment(api)
            create_noop_version(api, workdir, "v1", poll_s=0.2, maximum_instances=instances)
        from datature.nexus import Client

        handle = read_store(database_url or data_dir / "modelbay.db", "SELECT handle FROM projects")
        nexus = Client(token, endpoint=server.url).get_project(f"proj_{handle}")
        [deployment] = nexus.deployments.list()
        dataset_path = workdir / "items.ndjson"
        with open(dataset_path, "w") as out:
            for i in range(items):
                out.write(f'{{"x": {i}}}\n')
        started = time.perf_counter()
        dataset = nexus.batch.datasets.create("bench", str(dataset_path))
        upload_s = time.perf_counter() - started
        assert nexus.batch.datasets.get(dataset.id).status.item_count == items
        webhook = nexus.batch.webhooks.create("bench", {
            "endpoint": f"http://127.0.0.1:{hook_server.server_address[1]}/hook",
            "secret": {"contents": SECRET}, "retries": {"max_retries": 3, "max_retry_delay": 15000}})

        peak = {"server_kib": 0, "tree_kib": 0}
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                own = rss_kib(server.process.pid) or 0
                tree = own + process_tree_rss(server.process.pid)["children_rss_kib"]
                peak["server_kib"] = max(peak["server_kib"], own)
                peak["tree_kib"] = max(peak["tree_kib"], tree)
                time.sleep(0.1)

        idle_kib = rss_kib(server.process.pid)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        log(f"job of {items} items on {instances} instance(s)")
        # CPU of the server, its workers (those started for the job count from their start) and this process.
        workers_before = {pid: cpu_seconds(pid) for pid in descendants(server.process.pid)}
        cpu_before = (cpu_seconds(server.process.pid), 0.0, time.process_time(), postgres_cpu_seconds())
        busy_before = system_busy_seconds()
        sent_before = segments_to_port(postgres_port) if postgres_port else 0
        started = time.perf_counter()
        job = nexus.batch.jobs.create("bench", {"dataset_id": dataset.id, "webhook_id": webhook.id,
                                                "deployment_id": deployment.id})
        first_delivery_s = None
        while True:
            state = nexus.batch.jobs.get(job.id)
            counts = state.status.items
            if first_delivery_s is None and counts.delivered:
                first_delivery_s = time.perf_counter() - started
            if counts.delivered + counts.failed_deliver >= items:
                break
            time.sleep(0.25)
        elapsed = time.perf_counter() - started
        busy = system_busy_seconds() - busy_before
        sent = segments_to_port(postgres_port) - sent_before if postgres_port else 0
        workers_cpu = sum(cpu_seconds(pid) - workers_before.get(pid, 0.0) for pid in descendants(server.process.pid))
        cpu_after = (cpu_seconds(server.process.pid), workers_cpu, time.process_time(), postgres_cpu_seconds())
        server_ms, workers_ms, bench_ms, postgres_ms = (
            (after - before) * 1000 / items for before, after in zip(cpu_before, cpu_after, strict=True))
        sampling.set()
        sampler.join()
        return {
            "items": items,
            "instances": instances,
            "store": "postgresql" if database_url else "sqlite",
            "upload_s": round(upload_s, 2),
            "elapsed_s": round(elapsed, 2),
            "items_per_s": round(items / elapsed, 1),
            "received_s": round(receiver.last_new_at - started, 3),
            "received_items_per_s": round(len(receiver.seen) / (receiver.last_new_at - started), 1),
            "first_delivery_s": round(first_delivery_s or 0, 2),
            "delivered": counts.delivered,
            "failed_deliver": counts.failed_deliver,
            "received_distinct": len(receiver.seen),
            "received_posts": receiver.posts,
            "received_duplicates": receiver.duplicates,
            "bad_signatures": receiver.bad_signatures,
            "server_cpu_ms_per_item": round(server_ms, 3),
            "workers_cpu_ms_per_item": round(workers_ms, 3),
            "bench_cpu_ms_per_item": round(bench_ms, 3),
            "postgres_cpu_ms_per_item": round(postgres_ms, 3),
            "machine_busy_cores": round(busy / elapsed, 2),
            "postgres_sends_per_item": round(sent / items, 2),
            "server_rss_idle_kib": idle_kib,
            "server_rss_peak_kib": peak["server_kib"],
            "tree_rss_peak_kib": peak["tree_kib"],
            "machine": machine(),
        }
    finally:
        for proc in procs:
            proc.stop()
        hook_server.shutdown()
        hook_server.server_close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--instances", type=int, default=2, help="maximum_instances of the no-op version")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--postgres", action="store_true", help="the server's store on a PostgreSQL")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-datature-"))
    postgres = start_postgres() if args.postgres else None
    try:
        result = run(args.items, args.instances, workdir, postgres.url(postgres.database()) if postgres else None,
                     postgres.port if postgres else None)
    finally:
        if postgres is not None:
            postgres.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"items:              {result['items']:,} on {result['instances']} instance(s), store on {result['store']}")
    print(f"dataset upload:     {result['upload_s']} s")
    print(f"job end to end:     {result['elapsed_s']} s  ->  {result['items_per_s']} items/s "
          f"(first delivery after {result['first_delivery_s']} s)")
    print(f"all received:       {result['received_s']} s  ->  {result['received_items_per_s']} items/s "
          "(the receiver's last new item: not rounded up to the SDK's next poll)")
    print(f"delivered:          {result['delivered']:,}  failed to deliver: {result['failed_deliver']:,}  "
          f"received: {result['received_posts']:,} POSTs, {result['received_distinct']:,} distinct, {result['received_duplicates']} duplicates, "
          f"{result['bad_signatures']} bad signatures")
    print(f"CPU per item:       server {result['server_cpu_ms_per_item']} ms, workers "
          f"{result['workers_cpu_ms_per_item']} ms, this process (the receiver, the SDK's polls) "
          f"{result['bench_cpu_ms_per_item']} ms"
          + (f", PostgreSQL {result['postgres_cpu_ms_per_item']} ms" if result["store"] == "postgresql" else ""))
    print(f"machine busy:       {result['machine_busy_cores']} of {os.cpu_count()} cores during the job")
    if result["store"] == "postgresql":
        print(f"sends to PostgreSQL: {result['postgres_sends_per_item']} per item (TCP segments from the server: "
              "about one per statement or commit)")
    print(f"server RSS:         idle {_mib(result['server_rss_idle_kib'])}, peak {_mib(result['server_rss_peak_kib'])}"
          f"  (with workers: peak {_mib(result['tree_rss_peak_kib'])})")
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"datature_job-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    ok = result["received_distinct"] == result["items"] and result["bad_signatures"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
