"""Benchmark: modelbay beside its peers, BentoML and Ray Serve, on the same no-op, in one run.

Run `.venv/bin/python bench/peers.py` (wrk installed: `make bench` installs it); see bench/README.md
("Peers: BentoML and Ray Serve beside modelbay"). Six servers answer `{"x": 1}` with `{"x": 1}`:

- modelbay: the UbiOps direct request to the no-op deployment (one instance), as
  bench/direct_requests.py sends it; modelbay-postgres: the same, the server on a PostgreSQL of the
  run's own (tests/fixtures/postgres.py, from Debian's package), a fresh database each round;
- bare uvicorn: bench/baseline_app.py, a bare ASGI handler answering modelbay's JSON shape (no
  worker process, nothing recorded): the ceiling of one Python front on this machine;
- the pipe design: bench/pipe_app.py, the same front handing each request to one worker process
  over a pipe, several in flight (modelbay's design with nothing recorded): its ceiling;
- BentoML 1.4 (one worker) and Ray Serve 2.60 (one replica), each in a virtualenv of its own under
  `.venv-bench/`, made on first use.

`--only` picks some (modelbay-postgres is not among the default ones). In each of `--rounds`
rounds, every server in turn is started (alone on the machine), answers `--requests` requests one
after another and wrk at each `--concurrency`, and is stopped: the rounds are interleaved so that
the machine's noise spreads over every server. A figure is the median of the rounds (max: the
highest of them). The ratios are modelbay's throughput (on each database) over each other server's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `bench.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    DEPLOYMENT,
    PROJECT,
    ROOT,
    Proc,
    _f,
    bench_run,
    bench_venv,
    create_noop_deployment,
    create_noop_version,
    free_port,
    log,
    machine,
    post_once,
    request_path,
    save_results,
    start_baseline,
    start_modelbay,
    start_postgres,
    start_process,
    system_busy_seconds,
    tree_cpu,
    ubiops_api,
)
from bench.direct_requests import EXPECTED_RESULT, _children_cpu, run_wrk, sequential  # noqa: E402
from bench.ray_runtime import RAY_SERVE_APP, RAY_SERVE_PIN, RAY_SERVE_VENV  # noqa: E402

BENTOML_VENV = ROOT / ".venv-bench" / "bentoml"
BENTOML_PIN = "bentoml==1.4.40"

BENTOML_SERVICE = """
import bentoml


# One worker; no access log line per request (modelbay and the baselines write none either).
@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class Noop:
    @bentoml.api
    async def predict(self, x: int) -> dict:
        return {"x": x}
"""

SERVERS = ("modelbay", "modelbay-postgres", "bentoml", "ray-serve", "pipe-design", "bare-uvicorn")
DEFAULT_SERVERS = [name for name in SERVERS if name != "modelbay-postgres"]
LABELS = {"modelbay": "modelbay", "modelbay-postgres": "modelbay on PostgreSQL", "bentoml": "BentoML",
          "ray-serve": "Ray Serve", "pipe-design": "pipe design", "bare-uvicorn": "bare uvicorn"}
PEER_STARTUP_DEADLINE_S = 180.0  # Ray starts its own cluster; on a busy machine that takes a while


@dataclass
class Target:
    """A server under test: where to POST `{"x": 1}`, and how to find `{"x": 1}` in its answer."""

    name: str
    proc: Proc
    path: str
    token: str
    start_s: float
    answer: Callable[[Any], Any]  # the parsed response body -> the model's output

    @property
    def url(self) -> str:
        return self.proc.url + self.path


# --- the servers -----------------------------------------------------------------------------


class Postgres:
    """The run's PostgreSQL, started when a round first needs it."""

    cluster: Any = None

    @classmethod
    def database_url(cls) -> str:
        if cls.cluster is None:
            cls.cluster = start_postgres()
        return str(cls.cluster.url(cls.cluster.database()))

    @classmethod
    def stop(cls) -> None:
        if cls.cluster is not None:
            cls.cluster.stop()
            cls.cluster = None


def start_modelbay_target(workdir: Path, procs: list[Proc], name: str = "modelbay") -> Target:
    phase = workdir / name
    phase.mkdir(parents=True)
    started = time.perf_counter()
    env = {"MODELBAY_DATABASE_URL": Postgres.database_url()} if name == "modelbay-postgres" else None
    server, token, _ = start_modelbay(phase, procs, name, env)
    with ubiops_api(server.url, token) as api:
        create_noop_deployment(api)
        create_noop_version(api, phase, "v1", 0.05, maximum_instances=1)
    return Target(
        name,
        server,
        request_path(PROJECT, DEPLOYMENT),
        token,
        time.perf_counter() - started,
        lambda body: body.get("result") if body.get("status") == "completed" else body,
    )


def start_bentoml_target(workdir: Path, procs: list[Proc]) -> Target:
    phase = workdir / "bentoml"
    phase.mkdir(parents=True)
    (phase / "noop_service.py").write_text(textwrap.dedent(BENTOML_SERVICE))
    python = bench_venv(BENTOML_VENV, BENTOML_PIN)
    port = free_port()
    log(f"starting BentoML on 127.0.0.1:{port}")
    started = time.perf_counter()
    env = {**os.environ, "BENTOML_HOME": str(phase / "home"), "BENTOML_DO_NOT_TRACK": "true"}
    argv = [str(python), "-m", "bentoml", "serve", "noop_service:Noop", "--host", "127.0.0.1", "--port", str(port)]
    server = start_process(
        "bentoml", argv, phase, port, "/readyz", env=env, cwd=phase, deadline_s=PEER_STARTUP_DEADLINE_S
    )
    procs.append(server)
    return Target("bentoml", server, "/predict", "", time.perf_counter() - started, lambda body: body)


def start_ray_serve_target(workdir: Path, procs: list[Proc]) -> Target:
    phase = workdir / "ray-serve"
    phase.mkdir(parents=True)
    app = phase / "noop_app.py"
    app.write_text(textwrap.dedent(RAY_SERVE_APP))
    python = bench_venv(RAY_SERVE_VENV, RAY_SERVE_PIN)
    port = free_port()
    log(f"starting Ray Serve on 127.0.0.1:{port}")
    started = time.perf_counter()
    # No request log line to stderr, which Ray forwards to the driver's output: as for BentoML.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_SERVE_LOG_TO_STDERR": "0"}
    argv = [str(python), str(app), str(port)]
    server = start_process("ray-serve", argv, phase, port, "/", env=env, deadline_s=PEER_STARTUP_DEADLINE_S)
    procs.append(server)
    return Target("ray-serve", server, "/", "", time.perf_counter() - started, lambda body: body)


def start_bare_uvicorn_target(workdir: Path, procs: list[Proc]) -> Target:
    phase = workdir / "bare-uvicorn"
    phase.mkdir(parents=True)
    started = time.perf_counter()
    server = start_baseline(phase, procs)
    return Target(
        "bare-uvicorn",
        server,
        request_path(PROJECT, DEPLOYMENT),
        "",
        time.perf_counter() - started,
        lambda body: body.get("result"),
    )


def start_pipe_design_target(workdir: Path, procs: list[Proc]) -> Target:
    phase = workdir / "pipe-design"
    phase.mkdir(parents=True)
    started = time.perf_counter()
    server = start_baseline(phase, procs, app="bench.pipe_app:app", name="pipe-design")
    return Target("pipe-design", server, request_path(PROJECT, DEPLOYMENT), "", time.perf_counter() - started,
                  lambda body: body.get("result"))


STARTERS: dict[str, Callable[[Path, list[Proc]], Target]] = {
    "modelbay": start_modelbay_target,
    "modelbay-postgres": lambda workdir, procs: start_modelbay_target(workdir, procs, "modelbay-postgres"),
    "bentoml": start_bentoml_target,
    "ray-serve": start_ray_serve_target,
    "pipe-design": start_pipe_design_target,
    "bare-uvicorn": start_bare_uvicorn_target,
}


def check_answer(target: Target) -> None:
    """One request must come back HTTP 200 with the no-op's output, `{"x": 1}`."""
    status, body, _ = post_once(target.proc.port, target.path, target.token)
    if status != 200 or target.answer(body) != EXPECTED_RESULT:
        raise RuntimeError(f"{target.name} answered HTTP {status}: {body}")


# --- one round -------------------------------------------------------------------------------


def measure_wrk(target: Target, connections: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """wrk against `target`, with the CPU anything else on the machine used meanwhile, in cores:
    noise in the figure."""
    ours_before = sum(tree_cpu(target.proc.process.pid).values()) + _children_cpu()
    busy_before = system_busy_seconds()
    started = time.perf_counter()
    result = run_wrk(target.url, target.token, connections, args.duration, workdir)
    elapsed = time.perf_counter() - started
    ours = sum(tree_cpu(target.proc.process.pid).values()) + _children_cpu() - ours_before
    result["other_cpu_cores"] = max(system_busy_seconds() - busy_before - ours, 0.0) / elapsed
    return result


def measure(target: Target, number: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One round's figures for one server, started alone: the requests one after another, then wrk."""
    check_answer(target)  # for modelbay, this first request starts the instance
    log(f"round {number}, {target.name}: up in {target.start_s:.1f} s, answers {EXPECTED_RESULT}")
    seq = sequential(target.proc.port, target.path, target.token, args.requests, args.warmup)
    log(f"round {number}, {target.name}: {args.requests} one after another: p50 {seq['p50_ms']:.2f} ms, "
        f"p99 {seq['p99_ms']:.2f} ms")
    figures: dict[str, Any] = {"start_s": target.start_s, "sequential": seq, "wrk": {}}
    for connections in args.concurrency:
        result = measure_wrk(target, connections, args, workdir)
        figures["wrk"][connections] = result
        log(f"round {number}, {target.name}: c={connections}: {result['rps']:,.0f} req/s, "
            f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, max {result['max_ms']:.1f} ms, "
            f"non-2xx {result['non_2xx']}, other processes {result['other_cpu_cores']:.2f} cores")
    check_answer(target)  # still right after the load
    return figures


def run_round(number: int, args: argparse.Namespace, workdir: Path, procs: list[Proc]) -> dict[str, Any]:
    """Each server in turn: started, measured, stopped (so that none idles beside another's load)."""
    out: dict[str, Any] = {}
    for name in args.only:
        target = STARTERS[name](workdir / f"round-{number}", procs)
        try:
            out[name] = measure(target, number, args, workdir)
        finally:
            log(f"round {number}, {name}: stopped (exit code {target.proc.stop()})")
    return out


# --- summary ---------------------------------------------------------------------------------


def summarize(rounds: list[dict[str, Any]], names: list[str], concurrency: list[int]) -> dict[str, Any]:
    """Per server: the median over rounds of each figure (max: the highest), and the errors summed."""

    def median(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    summary: dict[str, Any] = {}
    for name in names:
        runs = [r[name] for r in rounds]
        seqs = [run["sequential"] for run in runs]
        server: dict[str, Any] = {
            "start_s": median([run["start_s"] for run in runs]),
            "sequential": {
                key: median([s[key] for s in seqs]) for key in ("rps", "p50_ms", "p99_ms")
            }
            | {"max_ms": max(s["max_ms"] for s in seqs), "non_2xx": sum(s["non_2xx"] for s in seqs)},
            "wrk": {},
        }
        for connections in concurrency:
            wrks = [run["wrk"][connections] for run in runs]
            server["wrk"][connections] = {
                key: median([w[key] for w in wrks])
                for key in ("rps", "p50_ms", "p99_ms", "other_cpu_cores")
            } | {
                "max_ms": max((w["max_ms"] for w in wrks if w["max_ms"] is not None), default=None),
                "non_2xx": sum(w["non_2xx"] for w in wrks),
                "socket_errors": sum(sum(w["socket_errors"].values()) for w in wrks),
            }
        summary[name] = server
    return summary


def ratios(summary: dict[str, Any], concurrency: list[int]) -> dict[str, dict[str, float]]:
    """modelbay's req/s (on each database run) over each other server's: above 1, modelbay serves more."""
    out: dict[str, dict[str, float]] = {}
    for ours in (name for name in ("modelbay", "modelbay-postgres") if name in summary):
        mb = summary[ours]
        for name, other in summary.items():
            if name.startswith("modelbay"):
                continue
            runs = {"sequential": (mb["sequential"]["rps"], other["sequential"]["rps"])}
            runs |= {f"c{c}": (mb["wrk"][c]["rps"], other["wrk"][c]["rps"]) for c in concurrency}
            out[f"{ours}/{name}"] = {run: a / b for run, (a, b) in runs.items() if a and b}
    return out


def report(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    m, settings, summary = results["machine"], results["settings"], results["summary"]
    names = list(summary)
    versions = results["versions"]
    console.print(
        f"\n[bold]modelbay beside its peers[/bold] — {m['date']}, {m['cpus']} CPUs ({m['cpu_model']}), "
        f"modelbay {m['modelbay_commit']}, {m['wrk']}; median of {settings['rounds']} interleaved round(s), "
        f"wrk {settings['wrk_duration_s']} s per run",
        highlight=False,
    )
    table = Table(title='The same no-op: {"x": 1} -> {"x": 1}')
    table.add_column("run")
    table.add_column("figure")
    for name in names:
        table.add_column(f"{LABELS[name]}\n{versions[name]}", justify="right")
    seq_label = f"{settings['sequential_requests']} one after another"
    rows = [("start", "start", ("start_s",)), (seq_label, "sequential", ("rps", "p50_ms", "p99_ms", "max_ms"))]
    rows += [(f"wrk -c{c}", c, ("rps", "p50_ms", "p99_ms", "max_ms", "other_cpu_cores")) for c in settings["concurrency"]]
    titles = {
        "start_s": "until it answers, s",
        "rps": "req/s",
        "p50_ms": "p50 ms",
        "p99_ms": "p99 ms",
        "max_ms": "max ms",
        "other_cpu_cores": "other processes' CPU (cores; noise)",
    }
    for label, run, keys in rows:
        for i, key in enumerate(keys):
            cells = []
            for name in names:
                server = summary[name]
                figures = server if run == "start" else server[run] if run == "sequential" else server["wrk"][run]
                cells.append(_f(figures[key], 0 if key == "rps" else 2))
            table.add_row(label if i == 0 else "", titles[key], *cells, end_section=i == len(keys) - 1)
    console.print(table)

    if results["ratios"]:
        ratio_table = Table(title="modelbay's req/s over each server's (above 1: modelbay serves more)")
        ratio_table.add_column("run")
        for pair in results["ratios"]:
            ours, other = pair.split("/", 1)
            ratio_table.add_column(f"{LABELS[ours]} / {LABELS[other]}", justify="right")
        runs = ["sequential", *(f"c{c}" for c in settings["concurrency"])]
        for run in runs:
            ratio_table.add_row(
                seq_label if run == "sequential" else f"wrk -{run}",
                *(f"{r[run]:.2f}×" if run in r else "-" for r in results["ratios"].values()),
            )
        console.print(ratio_table)
    errors = [
        f"{LABELS[name]} c={c}: {w['non_2xx']} non-2xx, {w['socket_errors']} socket errors"
        for name in names
        for c, w in summary[name]["wrk"].items()
        if w["non_2xx"] or w["socket_errors"]
    ]
    errors += [
        f"{LABELS[name]} sequential: {summary[name]['sequential']['non_2xx']} non-2xx"
        for name in names
        if summary[name]["sequential"]["non_2xx"]
    ]
    for line in errors:
        console.print(f"[red]{line}[/red]")
    console.print(
        "The pipe design is modelbay's design with nothing recorded (a front handing each request to "
        "one worker over a pipe); bare uvicorn is a handler with no worker: one Python front's ceiling.",
        highlight=False,
    )


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are their median")
    parser.add_argument("--requests", type=int, default=1000, help="requests one after another per round")
    parser.add_argument("--warmup", type=int, default=100, help="untimed requests before those")
    parser.add_argument(
        "--concurrency",
        type=lambda s: [int(c) for c in s.split(",")],
        default=[1, 8, 64],
        help="wrk connection counts, comma-separated (default 1,8,64)",
    )
    parser.add_argument(
        "--only",
        type=lambda s: [name.strip() for name in s.split(",")],
        default=DEFAULT_SERVERS,
        help=f"the servers to run, comma-separated, among {','.join(SERVERS)} (default all but modelbay-postgres)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (server logs)")
    args = parser.parse_args(argv)
    unknown = set(args.only) - set(SERVERS)
    if unknown:
        parser.error(f"--only: unknown server(s) {', '.join(sorted(unknown))}; choose among {', '.join(SERVERS)}")
    if args.duration < 1 or args.rounds < 1 or args.requests < 1:
        parser.error("--duration, --rounds and --requests must be at least 1")
    args.only = [name for name in SERVERS if name in args.only]  # always the same order
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: `apt-get install -y wrk` (or `make bench`, which installs it).", file=sys.stderr)
        return 2
    host = machine()
    packages = host["packages"]
    results: dict[str, Any] = {
        "machine": host,
        "settings": {
            "servers": args.only,
            "rounds": args.rounds,
            "sequential_requests": args.requests,
            "warmup": args.warmup,
            "wrk_duration_s": args.duration,
            "concurrency": args.concurrency,
        },
        "versions": {
            "modelbay": packages["modelbay"],
            "modelbay-postgres": packages["modelbay"],
            "pipe-design": f"uvicorn {packages['uvicorn']}",
            "bare-uvicorn": f"uvicorn {packages['uvicorn']}",
            "bentoml": BENTOML_PIN.split("==")[1],
            "ray-serve": RAY_SERVE_PIN.split("==")[1],
        },
    }
    with bench_run("modelbay-bench-peers-", args.keep) as (workdir, procs):
        try:
            rounds = [run_round(n, args, workdir, procs) for n in range(1, args.rounds + 1)]
        finally:
            Postgres.stop()
    results["rounds"] = rounds
    results["summary"] = summarize(rounds, args.only, args.concurrency)
    results["ratios"] = ratios(results["summary"], args.concurrency)
    report(results)
    save_results(results, "peers")
    ok = all(
        w["non_2xx"] == 0 and w["socket_errors"] == 0
        for server in results["summary"].values()
        for w in server["wrk"].values()
    ) and all(server["sequential"]["non_2xx"] == 0 for server in results["summary"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
