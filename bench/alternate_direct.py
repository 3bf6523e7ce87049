"""Direct requests on two (or more) checkouts, side by side: wrk rounds taken in turn.

Run `.venv/bin/python bench/alternate_direct.py /path/to/before /path/to/after --rounds 3`. Each
checkout's own `bench/` starts its server (no-op deployment, one instance, as
`bench/direct_requests.py`) in a temporary directory; all stay up, and each round runs wrk on each
in turn, so a change is measured against its base in the same minutes (this machine's speed
drifts by up to 2x between hours). Per round: req/s, p50 and p99, the server's CPU per request (from
/proc) and how many requests shared each of its store commits. Needs `wrk`. With `--postgres`, the
servers store their data in databases of their own on one PostgreSQL the run starts (as
`bench/peers.py` does for modelbay-postgres).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

#: Run in a child with a checkout's own code: starts its server, prints where it is, waits for stdin to close.
SERVE = """
import json, sys
from pathlib import Path
from bench.common import DEPLOYMENT, PROJECT, post_once, request_path, start_modelbay
from bench.direct_requests import deploy_noop, sequential
workdir = Path(sys.argv[1])
procs = []
try:
    server, token, _ = start_modelbay(workdir, procs)
    deploy_noop(server.url, token, workdir, 0.05)
    path = request_path(PROJECT, DEPLOYMENT)
    post_once(server.port, path, token)  # starts the instance
    sequential(server.port, path, token, 300, 0)  # warm
    print(json.dumps({"port": server.port, "token": token, "pid": server.process.pid, "path": path}), flush=True)
    sys.stdin.read()
finally:
    for proc in procs:
        proc.stop()
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def commits(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    return float(re.search(r"modelbay_store_commit_seconds_count(?:\{[^}]*\})? (\S+)", text).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--postgres", action="store_true", help="each server on a database of a PostgreSQL")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelbay-alternate-") as tmp:
        servers = []
        postgres = None
        try:
            if args.postgres:
                sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
                from bench.common import start_postgres

                postgres = start_postgres()
            for n, checkout in enumerate(args.checkouts):
                tree = str(checkout.resolve())
                workdir = Path(tmp) / str(n)
                workdir.mkdir()
                env = {**os.environ, "PYTHONPATH": tree}
                if postgres is not None:
                    env["MODELBAY_DATABASE_URL"] = postgres.url(postgres.database())
                child = subprocess.Popen([sys.executable, "-c", SERVE, str(workdir)], cwd=tree, text=True, env=env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                servers.append((tree, child, json.loads(child.stdout.readline())))
            figures: dict[str, list[tuple[float, float]]] = {tree: [] for tree, _, _ in servers}
            for round_ in range(args.rounds):
                for tree, _, server in servers:
                    script = Path(tmp) / "post.lua"
                    script.write_text('wrk.method = "POST"\nwrk.body = \'{"x": 1}\'\n'
                                      'wrk.headers["Content-Type"] = "application/json"\n'
                                      f'wrk.headers["Authorization"] = "Token {server["token"]}"\n')
                    cpu, committed = cpu_seconds(server["pid"]), commits(server["port"])
                    out = subprocess.run(
                        ["wrk", f"-t{min(2, args.connections)}", f"-c{args.connections}", f"-d{args.duration}",
                         "--latency", "-s", str(script), f"http://127.0.0.1:{server['port']}{server['path']}"],
                        capture_output=True, text=True, check=True).stdout
                    cpu, committed = cpu_seconds(server["pid"]) - cpu, commits(server["port"]) - committed
                    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
                    answered = int(re.search(r"(\d+) requests in", out).group(1))
                    p50, p99 = (re.search(rf"\n\s+{q}%\s+(\S+)", out).group(1) for q in (50, 99))
                    figures[tree].append((rate, cpu / answered * 1000))
                    print(f"round {round_}  {tree}  {rate:,.0f} req/s  p50 {p50}  p99 {p99}  server CPU "
                          f"{cpu / answered * 1000:.3f} ms/request  {answered / max(committed, 1):.2f} requests/commit",
                          flush=True)
            for tree, rounds in figures.items():
                print(f"median  {tree}  {statistics.median(r for r, _ in rounds):,.0f} req/s  "
                      f"{statistics.median(c for _, c in rounds):.3f} ms/request")
        finally:
            for _, child, _ in servers:
                child.stdin.close()
                child.wait(timeout=60)
            if postgres is not None:
                postgres.stop()


if __name__ == "__main__":
    main()
