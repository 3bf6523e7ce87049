"""The batch drain alone, on either store: items/s and the server's CPU per item.

`bench/batch_requests.py` measures the drain on SQLite among its other figures; this one runs only
the drain, with `--postgres` on a PostgreSQL of the run's own (`bench.common.POSTGRES_SETTINGS`).
It queues `--items` no-op items in UbiOps batch requests of 250, back to back on one keep-alive
connection, to a version of one instance, and times them from the first post until the store holds
all of them as completed.

    .venv/bin/python bench/drain.py [--items 20000] [--postgres]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.batch_requests import BATCH_SIZE, DIRECT_BODY, Client, batch_body, batch_path, direct_path  # noqa: E402
from bench.common import (  # noqa: E402
    Proc,
    create_noop_deployment,
    create_noop_version,
    log,
    post_once,
    postgres_cpu_seconds,
    read_store,
    start_modelbay,
    start_postgres,
    system_busy_seconds,
    tree_cpu,
    ubiops_api,
)

COMPLETED = "SELECT count(*) FROM requests WHERE status = 'completed'"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=20_000, help="items drained, a multiple of 250")
    parser.add_argument("--postgres", action="store_true", help="the server's store on a PostgreSQL")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds the drain may take")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="modelbay-bench-drain-"))
    procs: list[Proc] = []
    postgres = start_postgres() if args.postgres else None
    try:
        env = {"MODELBAY_DATABASE_URL": postgres.url(postgres.database())} if postgres else {}
        server, token, data_dir = start_modelbay(workdir, procs, env=env)
        store = env.get("MODELBAY_DATABASE_URL") or data_dir / "modelbay.db"
        with ubiops_api(server.url, token) as api:
            create_noop_deployment(api)
            create_noop_version(api, workdir, "drain", 0.01, maximum_instances=1)
        status, body, _ = post_once(server.port, direct_path("drain"), token, DIRECT_BODY)  # starts its instance
        if status != 200:
            raise RuntimeError(f"the direct request failed: HTTP {status}: {body}")
        bodies = [batch_body(i * BATCH_SIZE) for i in range(args.items // BATCH_SIZE)]  # before the clock starts
        client = Client(server.port, token)
        done_before = int(read_store(store, COMPLETED))
        log(f"drain of {len(bodies) * BATCH_SIZE} items on {'PostgreSQL' if postgres else 'SQLite'}")
        cpu_before = tree_cpu(server.process.pid)
        postgres_before, busy_before = postgres_cpu_seconds(), system_busy_seconds()
        started = time.perf_counter()
        for body_bytes in bodies:
            status, raw, _ = client.post(batch_path("drain"), body_bytes)
            if status not in (200, 201):
                raise RuntimeError(f"a batch was refused: HTTP {status}: {raw[:200]!r}")
        posted_s = time.perf_counter() - started
        items = len(bodies) * BATCH_SIZE
        while int(read_store(store, COMPLETED)) < done_before + items:
            if time.perf_counter() - started > args.timeout:
                raise RuntimeError(f"the drain took over {args.timeout:.0f} s")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        cpu_after = tree_cpu(server.process.pid)
        postgres_s, busy_s = postgres_cpu_seconds() - postgres_before, system_busy_seconds() - busy_before
        client.close()
    finally:
        for proc in procs:
            proc.stop()
        if postgres is not None:
            postgres.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"store: {'postgresql' if postgres else 'sqlite'}")
    print(f"drain: {items} items in {elapsed:.2f} s -> {items / elapsed:,.0f} items/s (all posted after {posted_s:.2f} s)")
    print(f"CPU per item: server {1000 * (cpu_after['server'] - cpu_before['server']) / items:.3f} ms, "
          f"workers {1000 * (cpu_after['workers'] - cpu_before['workers']) / items:.3f} ms"
          + (f", PostgreSQL {1000 * postgres_s / items:.3f} ms" if postgres else ""))
    print(f"the machine was busy {busy_s / elapsed:.2f} cores of its {os.cpu_count()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
