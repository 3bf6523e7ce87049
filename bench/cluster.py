"""Benchmark: modelbay as a cluster of servers on one PostgreSQL, next to one server on SQLite.

Run `.venv/bin/python bench/cluster.py` (PostgreSQL's Debian package and wrk installed: `make test`
and `make bench` install them); see bench/README.md ("A cluster on PostgreSQL"). It starts a
throwaway PostgreSQL in a temp dir (tests/fixtures/postgres.py) and, one phase after the other:

1. Direct no-op requests at 8 clients (wrk) on one node on SQLite, then on one node on PostgreSQL.
2. Batch drain: `--items` no-op items on PostgreSQL with 1 node, then 2 nodes (maximum_instances
   one per node: the limit counts across the cluster), the batches POSTed round-robin; from the
   first POST until all are `completed`.
   Then direct no-op requests at 8 clients on 2 nodes and a version with maximum_instances 1: through
   the node that holds the instance, then through the other one, which sends each call there.
3. Claim latency: the claim statement of the queue (`Requests._claim_pending`'s SQL, 4 rows) timed
   against a version with `--backlog` pending rows, rolled back each time.
4. Failover: 2 nodes (lease 2 s) draining 50 ms items; one killed with SIGKILL; the time until its
   claimed items are given back and until they are all settled.
5. Memory: a node's RSS idle, then with `--backlog` pending requests (inserted with SQL) waiting for
   a version whose instance takes 20 s per item.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `bench.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import psycopg  # noqa: E402

from bench.common import (  # noqa: E402
    DEPLOYMENT,
    NOOP_DEPLOYMENT,
    PROJECT,
    Proc,
    bench_run,
    create_noop_deployment,
    create_noop_version,
    descendants,
    free_port,
    log,
    machine,
    rss_kib,
    save_results,
    start_process,
    ubiops_api,
)
from bench.direct_requests import run_wrk  # noqa: E402
from tests.fixtures.postgres import Cluster  # noqa: E402

SLEEPS_MS = """
import time


class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        time.sleep({ms} / 1000)
        return data
"""

CLAIM_SQL = """
UPDATE requests SET owner = %(node)s WHERE id IN (
    SELECT id FROM requests WHERE version_id = %(version)s AND status = 'pending' AND owner IS NULL
    ORDER BY priority, created_at, id LIMIT 4 FOR UPDATE SKIP LOCKED)
RETURNING id, data, data_key, timeout, priority, created_at
"""


class Nodes:
    """The modelbay servers of one phase, on one database, each with its own data dir and port."""

    def __init__(self, workdir: Path, procs: list[Proc], name: str, database_url: str | None,
                 env: dict[str, str] | None = None) -> None:
        self.workdir, self.procs, self.name = workdir / name, procs, name
        self.database_url = database_url
        self.env = {**os.environ, "MODELBAY_SANDBOX": "bwrap", **(env or {})}
        if database_url:
            self.env["MODELBAY_DATABASE_URL"] = database_url
        self.servers: list[Proc] = []

    def start(self, count: int) -> list[Proc]:
        for _ in range(count):
            index = len(self.servers)
            data_dir = self.workdir / f"node-{index}"
            data_dir.mkdir(parents=True)
            port = free_port()
            server = start_process(
                f"{self.name}-{index}",
                [sys.executable, "-m", "modelbay.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)],
                self.workdir, port, "/health", env=self.env,
            )
            self.procs.append(server)
            self.servers.append(server)
        return self.servers

    def project_token(self) -> str:
        created = subprocess.run(
            [sys.executable, "-m", "modelbay.cli", "project", "create", PROJECT, "--data-dir",
             str(self.workdir / "node-0"), "--json"],
            capture_output=True, text=True, timeout=120, env=self.env,
        )
        if created.returncode != 0:
            raise RuntimeError(f"project create failed: {created.stderr}")
        return str(json.loads(created.stdout)["token"])

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def deploy(url: str, token: str, workdir: Path, version: str, source: str = NOOP_DEPLOYMENT,
           first: bool = True, **settings: Any) -> str:
    with ubiops_api(url, token) as api:
        if first:
            create_noop_deployment(api)
        return str(create_noop_version(api, workdir, version, 0.2, source=source, **settings)["version_id"])


def count(url: str, sql: str, *params: Any) -> int:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        return int(conn.execute(sql, params).fetchone()[0])  # type: ignore[index]


def post_batches(servers: list[Proc], token: str, version: str, items: int) -> None:
    body = json.dumps([{"x": i} for i in range(250)]).encode()
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    clients = [httpx.Client(base_url=s.url, headers=headers, timeout=120) for s in servers]
    try:
        for call in range(items // 250):
            client = clients[call % len(clients)]
            path = f"/v2.1/projects/{PROJECT}/deployments/{DEPLOYMENT}/versions/{version}/requests/batch"
            response = client.post(path, content=body)
            if response.status_code != 201:
                raise RuntimeError(f"batch create answered {response.status_code}: {response.text}")
    finally:
        for client in clients:
            client.close()


# --- the phases ------------------------------------------------------------------------------


def direct(workdir: Path, procs: list[Proc], name: str, database_url: str | None, seconds: int) -> dict[str, Any]:
    nodes = Nodes(workdir, procs, name, database_url)
    (server,) = nodes.start(1)
    token = nodes.project_token()
    deploy(server.url, token, nodes.workdir, "v1")
    url = f"{server.url}/v2.1/projects/{PROJECT}/deployments/{DEPLOYMENT}/versions/v1/requests"
    run_wrk(url, token, 8, 2, nodes.workdir)  # warm-up
    result = run_wrk(url, token, 8, seconds, nodes.workdir)
    nodes.stop()
    log(f"direct, c=8, {name}: {result['rps']:,.0f} req/s, p50 {result['p50_ms']:.2f} ms, "
        f"p99 {result['p99_ms']:.2f} ms")
    return {key: result[key] for key in ("rps", "p50_ms", "p90_ms", "p99_ms", "non_2xx")}


def drain(workdir: Path, procs: list[Proc], pg: Cluster, count_nodes: int, items: int) -> dict[str, Any]:
    url = pg.url(pg.database())
    nodes = Nodes(workdir, procs, f"drain-{count_nodes}", url)
    servers = nodes.start(count_nodes)
    token = nodes.project_token()
    deploy(servers[0].url, token, nodes.workdir, "drain", maximum_instances=count_nodes)
    start = time.perf_counter()
    post_batches(servers, token, "drain", items)
    while count(url, "SELECT count(*) FROM requests WHERE status = 'completed'") < items:
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    owners = count(url, "SELECT count(DISTINCT owner) FROM requests")
    nodes.stop()
    log(f"drain of {items} items, {count_nodes} node(s) on PostgreSQL: {items / elapsed:,.0f} items/s "
        f"({owners} nodes ran some)")
    return {"items": items, "seconds": elapsed, "items_per_s": items / elapsed, "nodes_that_ran_items": owners}


def forwarded(workdir: Path, procs: list[Proc], pg: Cluster, seconds: int) -> dict[str, Any]:
    url = pg.url(pg.database())
    nodes = Nodes(workdir, procs, "forwarded", url)
    holder, other = nodes.start(2)
    token = nodes.project_token()
    deploy(holder.url, token, nodes.workdir, "v1", maximum_instances=1)
    results = {}
    for name, server in (("local", holder), ("forwarded", other)):  # the holder's first: it takes the instance
        endpoint = f"{server.url}/v2.1/projects/{PROJECT}/deployments/{DEPLOYMENT}/versions/v1/requests"
        run_wrk(endpoint, token, 8, 2, nodes.workdir)  # warm-up
        result = run_wrk(endpoint, token, 8, seconds, nodes.workdir)
        results[name] = {key: result[key] for key in ("rps", "p50_ms", "p90_ms", "p99_ms", "non_2xx")}
        log(f"direct, c=8, maximum_instances 1 on 2 nodes, {name}: {result['rps']:,.0f} req/s, "
            f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms")
    instances = count(url, "SELECT count(*) FROM instance_slots")
    nodes.stop()
    return {**results, "instances": instances}


def insert_backlog(url: str, version_id: str, rows: int) -> None:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        project, deployment = conn.execute(
            "SELECT d.project_id, d.id FROM versions v JOIN deployments d ON d.id = v.deployment_id WHERE v.id = %s",
            (version_id,)).fetchone()  # type: ignore[misc]
        conn.execute(
            "INSERT INTO requests (id, project_id, deployment_id, version_id, mode, status, priority, timeout, data,"
            " input_size, output_size, origin, created_at)"
            " SELECT gen_random_uuid()::text, %s, %s, %s, 'batch', 'pending', 1, 600, '{\"x\": 1}'::bytea, 8, 0,"
            " '{}'::json, now() + make_interval(secs => i / 1e6) FROM generate_series(1, %s) AS i",
            (project, deployment, version_id, rows))
        conn.execute("ANALYZE requests")


def claim_and_memory(workdir: Path, procs: list[Proc], pg: Cluster, backlog: int) -> dict[str, Any]:
    url = pg.url(pg.database())
    nodes = Nodes(workdir, procs, "backlog", url)
    (server,) = nodes.start(1)
    token = nodes.project_token()
    version_id = deploy(server.url, token, nodes.workdir, "slow", SLEEPS_MS.format(ms=20_000), maximum_instances=1)
    time.sleep(2)
    idle_kib = rss_kib(server.process.pid)
    log(f"inserting {backlog:,} pending requests")
    insert_backlog(url, version_id, backlog)
    libpq = url.replace("postgresql+psycopg://", "postgresql://")
    timings = []
    with psycopg.connect(libpq) as conn:
        for _ in range(50):
            start = time.perf_counter()
            conn.execute(CLAIM_SQL, {"node": "bench", "version": version_id}).fetchall()
            timings.append((time.perf_counter() - start) * 1000)
            conn.rollback()
    # The node finds the backlog with its poll (every 5 s), claims a few and starts the slow instance.
    deadline = time.monotonic() + 30
    while count(url, "SELECT count(*) FROM requests WHERE owner IS NOT NULL") == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(10)
    loaded_kib = rss_kib(server.process.pid)
    held = count(url, "SELECT count(*) FROM requests WHERE owner IS NOT NULL")
    nodes.stop()
    claim_ms = statistics.median(timings)
    log(f"claim of 4 rows with {backlog:,} pending: {claim_ms:.2f} ms median; node RSS idle "
        f"{(idle_kib or 0) / 1024:.0f} MiB, with the backlog {(loaded_kib or 0) / 1024:.0f} MiB ({held} rows claimed)")
    return {"backlog": backlog, "claim_ms_median": claim_ms, "claim_ms_max": max(timings),
            "rss_idle_kib": idle_kib, "rss_backlog_kib": loaded_kib, "rows_claimed": held}


def failover(workdir: Path, procs: list[Proc], pg: Cluster) -> dict[str, Any]:
    url = pg.url(pg.database())
    nodes = Nodes(workdir, procs, "failover", url, {"MODELBAY_NODE_LEASE_S": "2"})
    servers = nodes.start(2)
    token = nodes.project_token()
    deploy(servers[0].url, token, nodes.workdir, "sleepy", SLEEPS_MS.format(ms=50), maximum_instances=2)
    post_batches(servers, token, "sleepy", 1000)
    while count(url, "SELECT count(*) FROM requests WHERE status = 'completed'") < 100:
        time.sleep(0.05)
    victim = servers[1]
    orphans = descendants(victim.process.pid)
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait()
    killed = time.perf_counter()
    for pid in orphans:  # its workers, as a crash of its machine would end them
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    dead = "SELECT id FROM nodes WHERE name LIKE %s"
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        (node,) = conn.execute(dead, (f"%:{victim.process.pid}",)).fetchone()  # type: ignore[misc]
        held = conn.execute("SELECT id FROM requests WHERE owner = %s AND status IN ('pending', 'processing')",
                            (node,)).fetchall()
    held_ids = [row[0] for row in held]
    given_back = None
    while True:
        still = count(url, "SELECT count(*) FROM requests WHERE owner = %s AND status IN ('pending', 'processing')",
                      node)
        if still == 0 and given_back is None:
            given_back = time.perf_counter() - killed
        if given_back is not None and count(
                url, "SELECT count(*) FROM requests WHERE id = ANY(%s) AND status IN ('pending', 'processing')",
                held_ids) == 0:
            break
        time.sleep(0.02)
    settled = time.perf_counter() - killed
    nodes.stop()
    log(f"failover (lease 2 s): {len(held_ids)} items held by the killed node, given back {given_back:.2f} s "
        f"and settled {settled:.2f} s after the kill")
    return {"lease_s": 2, "held": len(held_ids), "given_back_s": given_back, "settled_s": settled}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=5000, help="items per drain run, a multiple of 250")
    parser.add_argument("--seconds", type=int, default=10, help="seconds of each wrk run (default 10)")
    parser.add_argument("--backlog", type=int, default=1_000_000, help="pending rows of the memory phase")
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results/*.json")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (server logs)")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"machine": machine()}
    pg = Cluster().start()
    try:
        with bench_run("modelbay-cluster-", args.keep) as (workdir, procs):
            results["direct_c8"] = {
                "sqlite": direct(workdir, procs, "direct-sqlite", None, args.seconds),
                "postgresql": direct(workdir, procs, "direct-postgresql", pg.url(pg.database()), args.seconds),
            }
            results["drain"] = {f"{n}_nodes": drain(workdir, procs, pg, n, args.items) for n in (1, 2)}
            results["direct_c8_maximum_1_on_2_nodes"] = forwarded(workdir, procs, pg, args.seconds)
            results["failover"] = failover(workdir, procs, pg)
            results["backlog"] = claim_and_memory(workdir, procs, pg, args.backlog)
    finally:
        pg.stop()
    direct_pg, direct_sqlite = results["direct_c8"]["postgresql"], results["direct_c8"]["sqlite"]
    print(f"\ndirect c=8: PostgreSQL {direct_pg['rps']:,.0f} req/s vs SQLite {direct_sqlite['rps']:,.0f} "
          f"({direct_pg['rps'] / direct_sqlite['rps']:.2f}x)")
    one, two = results["drain"]["1_nodes"], results["drain"]["2_nodes"]
    print(f"drain: 2 nodes {two['items_per_s']:,.0f} items/s vs 1 node {one['items_per_s']:,.0f} "
          f"({two['items_per_s'] / one['items_per_s']:.2f}x)")
    sent = results["direct_c8_maximum_1_on_2_nodes"]
    print(f"direct c=8 through the node without the instance: {sent['forwarded']['rps']:,.0f} req/s vs "
          f"{sent['local']['rps']:,.0f} through the one with it "
          f"({sent['forwarded']['rps'] / sent['local']['rps']:.2f}x; {sent['instances']} instance in the cluster)")
    if not args.no_json:
        save_results(results, "cluster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
