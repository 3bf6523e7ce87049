"""Benchmark: what the bubblewrap sandbox costs: instance start, and direct requests with and without it.

Run `.venv/bin/python bench/sandbox.py` (or `make bench-sandbox`); see bench/README.md. Needs `wrk`
and `bwrap`. Two parts, each measuring the sandbox (`bwrap`) and no sandbox (`none`) side by side,
interleaved so that the machine's drift hits both alike:

1. Instance start: `LocalRuntime` in this process (no server) starts and stops a no-op package on
   this interpreter, alternately with `Bubblewrap()` and `NoSandbox()`.
2. Direct requests: two real servers at once, `MODELBAY_SANDBOX=bwrap` and `MODELBAY_SANDBOX=none`,
   each with the no-op deployment: the cold first request of a version, the c=1 loop and wrk at c=8.

Everything runs on loopback, on free ports, in a temporary directory removed at the end; the
servers are stopped (SIGTERM, then SIGKILL, then leftover workers by pid) even when something fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `bench.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    DEPLOYMENT,
    NOOP_DEPLOYMENT,
    PROJECT,
    Proc,
    _f,
    bench_run,
    create_noop_deployment,
    create_noop_version,
    descendants,
    log,
    machine,
    percentile,
    post_once,
    request_path,
    save_results,
    start_modelbay,
    system_busy_seconds,
    tree_cpu,
    ubiops_api,
)
from bench.direct_requests import EXPECTED_RESULT, _children_cpu, run_wrk, sequential  # noqa: E402
from modelbay.runtime.base import Call, InstanceSpec  # noqa: E402
from modelbay.runtime.local import LocalRuntime  # noqa: E402
from modelbay.runtime.sandbox import Bubblewrap, NoSandbox, Sandbox  # noqa: E402

KINDS = ("bwrap", "none")  # the values of MODELBAY_SANDBOX compared; the first is the numerator
MEMORY_LIMIT_MIB = 2048  # the server's default instance memory limit: both kinds run under prlimit


def interleaved(i: int) -> tuple[str, ...]:
    """A B, then B A, ...: neither kind always goes first (warm caches, a core just woken)."""
    return KINDS if i % 2 == 0 else KINDS[::-1]


# --- part 1: instance start with LocalRuntime, no server ---------------------------------------


def sandbox_of(kind: str) -> Sandbox:
    if kind == "none":
        return NoSandbox()
    sandbox = Bubblewrap()
    sandbox.check()  # a clear message if bubblewrap cannot run here
    return sandbox


async def _instance_starts(workdir: Path, starts: int, warmup: int) -> dict[str, Any]:
    package = workdir / "starts" / "package"
    package.mkdir(parents=True)
    (package / "deployment.py").write_text(textwrap.dedent(NOOP_DEPLOYMENT))
    spec = InstanceSpec(
        version_id="v1",
        package_dir=package,
        python=Path(sys.executable),
        init_context={"deployment": DEPLOYMENT, "version": "v1"},
        memory_limit_bytes=MEMORY_LIMIT_MIB << 20,
    )
    runtimes = {
        kind: LocalRuntime(log_dir=workdir / "starts" / kind / "logs", sandbox=sandbox_of(kind)) for kind in KINDS
    }
    samples: dict[str, dict[str, list[float]]] = {kind: {"start_ms": [], "stop_ms": []} for kind in KINDS}
    try:
        for i in range(warmup + starts):
            for kind in interleaved(i):
                runtime = runtimes[kind]
                began = time.perf_counter()
                instance = await runtime.start(spec)  # returns once the worker has loaded the package
                started = time.perf_counter()
                outcome = await runtime.call(instance, Call(f"r{i}", {"x": 1}, {"id": f"r{i}"}), 30)
                if not outcome.ok or outcome.result != EXPECTED_RESULT:
                    raise RuntimeError(f"{kind}: the started instance answered {outcome}")
                stopping = time.perf_counter()
                await runtime.stop(instance)
                stopped = time.perf_counter()
                if i >= warmup:
                    samples[kind]["start_ms"].append((started - began) * 1000)
                    samples[kind]["stop_ms"].append((stopped - stopping) * 1000)
    finally:
        for runtime in runtimes.values():
            await runtime.close()
    out: dict[str, Any] = {}
    for kind, figures in samples.items():
        start, stop = sorted(figures["start_ms"]), sorted(figures["stop_ms"])
        out[kind] = {
            "start_p50_ms": percentile(start, 50),
            "start_p90_ms": percentile(start, 90),
            "start_min_ms": start[0],
            "start_max_ms": start[-1],
            "stop_p50_ms": percentile(stop, 50),
            "start_ms": figures["start_ms"],
        }
    return out


def instance_starts(workdir: Path, starts: int, warmup: int) -> dict[str, Any]:
    log(f"instance start: {starts} starts + stops of each kind with LocalRuntime, interleaved")
    loadavg = os.getloadavg()[0]
    out = asyncio.run(_instance_starts(workdir, starts, warmup))
    out["loadavg_1m"] = [loadavg, os.getloadavg()[0]]
    for kind in KINDS:
        log(f"{kind}: start p50 {out[kind]['start_p50_ms']:.1f} ms, p90 {out[kind]['start_p90_ms']:.1f} ms")
    return out


# --- part 2: direct requests on two real servers -------------------------------------------------


@dataclass
class Server:
    kind: str
    proc: Proc
    token: str


def start_servers(workdir: Path, procs: list[Proc], versions: list[str]) -> dict[str, Server]:
    """One server per kind, each in its own directory with the no-op deployment and `versions`
    of it (`maximum_instances=1`, so one worker each; none started until its first request)."""
    servers: dict[str, Server] = {}
    for kind in KINDS:
        own = workdir / kind
        own.mkdir()
        proc, token, _ = start_modelbay(own, procs, name=f"modelbay-{kind}", env={"MODELBAY_SANDBOX": kind})
        log(f"{kind}: creating the no-op deployment and {len(versions)} version(s) with the ubiops SDK")
        with ubiops_api(proc.url, token) as api:
            create_noop_deployment(api)
            for version in versions:
                create_noop_version(api, own, version, poll_s=0.01, maximum_instances=1)
        servers[kind] = Server(kind, proc, token)
    return servers


def cold_requests(servers: dict[str, Server], versions: list[str]) -> dict[str, list[float]]:
    """The first request of each version, which starts its one instance; the kinds alternate."""
    out: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for i, version in enumerate(versions):
        for kind in interleaved(i):
            server = servers[kind]
            path = f"/v2.1/projects/{PROJECT}/deployments/{DEPLOYMENT}/versions/{version}/requests"
            status, body, ms = post_once(server.proc.port, path, server.token)
            if status != 200 or body.get("status") != "completed" or body.get("result") != EXPECTED_RESULT:
                raise RuntimeError(f"{kind}: first request of {version} went wrong: HTTP {status}: {body}")
            out[kind].append(ms)
    for kind in KINDS:
        log(f"{kind}: cold first requests {', '.join(f'{ms:.0f}' for ms in out[kind])} ms")
    return out


class OtherCpu:
    """CPU used on the machine by anything but this run (this process, its children, both servers
    and their workers) between `__init__` and `cores()`: the noise in a figure, in cores."""

    def __init__(self, servers: dict[str, Server]) -> None:
        self._servers = servers
        self._began = time.perf_counter()
        self._busy = system_busy_seconds()
        self._ours = self._our_cpu()

    def _our_cpu(self) -> float:
        servers = sum(sum(tree_cpu(s.proc.process.pid).values()) for s in self._servers.values())
        return servers + time.process_time() + _children_cpu()

    def cores(self) -> float:
        elapsed = time.perf_counter() - self._began
        other = (system_busy_seconds() - self._busy) - (self._our_cpu() - self._ours)
        return max(other, 0.0) / elapsed


def hot_round(
    servers: dict[str, Server], args: argparse.Namespace, workdir: Path, round_no: int
) -> dict[str, dict[str, Any]]:
    """One round: the c=1 loop on each server, then wrk at c=8 on each, the kinds interleaved."""
    path = request_path(PROJECT, DEPLOYMENT)
    out: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
    for kind in interleaved(round_no):
        server = servers[kind]
        noise = OtherCpu(servers)
        loop = sequential(server.proc.port, path, server.token, args.requests, args.warmup)
        loop["other_cpu_cores"] = noise.cores()
        out[kind]["sequential"] = loop
        log(f"round {round_no + 1}, {kind}: c=1 loop p50 {loop['p50_ms']:.3f} ms, p99 {loop['p99_ms']:.3f} ms")
    for kind in interleaved(round_no + 1):  # the other kind first this time
        server = servers[kind]
        pid = server.proc.process.pid
        noise = OtherCpu(servers)
        cpu_before = tree_cpu(pid)
        result = run_wrk(server.proc.url + path, server.token, args.connections, args.duration, workdir)
        cpu_after = tree_cpu(pid)
        served = max(result["requests"] or 1, 1)
        result["other_cpu_cores"] = noise.cores()
        result["cpu_ms_per_request"] = {
            part: (cpu_after[part] - cpu_before[part]) * 1000 / served for part in ("server", "workers")
        }
        result.pop("raw", None)
        out[kind]["wrk"] = result
        log(
            f"round {round_no + 1}, {kind}: wrk c={args.connections}: {result['rps']:.0f} req/s, "
            f"p50 {result['p50_ms']:.2f} ms, non-2xx {result['non_2xx']}, "
            f"other processes {result['other_cpu_cores']:.2f} cores"
        )
    return out


def direct_requests(args: argparse.Namespace, workdir: Path, procs: list[Proc]) -> dict[str, Any]:
    versions = [f"v{i + 1}" for i in range(args.cold)]  # v1, the default version, is the hot target
    servers = start_servers(workdir, procs, versions)
    out: dict[str, Any] = {"loadavg_1m": [os.getloadavg()[0]]}
    out["cold_ms"] = cold_requests(servers, versions)
    path = request_path(PROJECT, DEPLOYMENT)
    for server in servers.values():
        sequential(server.proc.port, path, server.token, 200, 0)  # warm up
        server.proc.remember_children()
    out["rounds"] = []
    for round_no in range(args.rounds):
        out["rounds"].append(hot_round(servers, args, workdir, round_no))
        out["loadavg_1m"].append(os.getloadavg()[0])
    out["check_after_load"] = {}
    for kind, server in servers.items():
        status, body, _ = post_once(server.proc.port, path, server.token)
        out["check_after_load"][kind] = status == 200 and body.get("result") == EXPECTED_RESULT
        out.setdefault("workers", {})[kind] = len(descendants(server.proc.process.pid))
        server.proc.remember_children()
        log(f"stopping {server.proc.name} (exit code {server.proc.stop()})")
    return out


# --- report ----------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _cell(values: list[float], digits: int) -> str:
    """The median, and the range when there are several values."""
    if len(values) == 1:
        return _f(values[0], digits)
    return f"{_f(_median(values), digits)} ({_f(min(values), digits)}–{_f(max(values), digits)})"


def summary(results: dict[str, Any]) -> list[tuple[str, str, dict[str, list[float]], int]]:
    """(section, figure, values per kind, digits) for every row of the report."""
    starts, direct = results["instance_start"], results["direct"]
    rounds = direct["rounds"]

    def per_round(*keys: str) -> dict[str, list[float]]:
        out = {}
        for kind in KINDS:
            values = []
            for r in rounds:
                value: Any = r[kind]
                for key in keys:
                    value = value[key]
                values.append(value)
            out[kind] = values
        return out

    n, c = results["settings"]["starts"], results["settings"]["connections"]
    requests = results["settings"]["requests"]
    return [
        (f"instance start, LocalRuntime ({n} each)", "p50 ms", {k: [starts[k]["start_p50_ms"]] for k in KINDS}, 1),
        ("", "p90 ms", {k: [starts[k]["start_p90_ms"]] for k in KINDS}, 1),
        ("", "stop p50 ms", {k: [starts[k]["stop_p50_ms"]] for k in KINDS}, 1),
        (
            f"cold first request ({len(direct['cold_ms']['bwrap'])} versions each)",
            "ms: median (range)",
            direct["cold_ms"],
            1,
        ),
        (f"c=1 loop ({requests} req; {len(rounds)} rounds)", "p50 ms", per_round("sequential", "p50_ms"), 3),
        ("", "p99 ms", per_round("sequential", "p99_ms"), 3),
        ("", "req/s", per_round("sequential", "rps"), 0),
        (f"wrk c={c} ({len(rounds)} rounds)", "req/s", per_round("wrk", "rps"), 0),
        ("", "p50 ms", per_round("wrk", "p50_ms"), 2),
        ("", "p99 ms", per_round("wrk", "p99_ms"), 2),
        ("", "CPU ms/request, server", per_round("wrk", "cpu_ms_per_request", "server"), 3),
        ("", "CPU ms/request, worker", per_round("wrk", "cpu_ms_per_request", "workers"), 3),
        ("", "non-2xx", per_round("wrk", "non_2xx"), 0),
        ("noise", "other processes' CPU, c=1 loops (cores)", per_round("sequential", "other_cpu_cores"), 2),
        ("", f"other processes' CPU, wrk c={c} (cores)", per_round("wrk", "other_cpu_cores"), 2),
    ]


def report(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 130)
    m = results["machine"]
    loads = results["instance_start"]["loadavg_1m"] + results["direct"]["loadavg_1m"]
    console.print(
        f"\n[bold]modelbay: the sandbox's cost[/bold] — {m['date']}, {m['cpus']} CPUs ({m['cpu_model']}), "
        f"Python {m['python']}, {m['wrk']}, modelbay {m['modelbay_commit']}; "
        f"load average (1 min) during the run {min(loads):.2f}–{max(loads):.2f}"
    )
    table = Table(title="MODELBAY_SANDBOX=bwrap against =none, in one run")
    for column in ("run", "figure", "bwrap", "none", "bwrap / none"):
        table.add_column(column, justify="left" if column in ("run", "figure") else "right")
    for section, figure, values, digits in summary(results):
        if section and table.rows:
            table.rows[-1].end_section = True
        a, b = _median(values["bwrap"]), _median(values["none"])
        ratio = f"{a / b:.2f}×" if b and not figure.startswith(("other", "non-2xx")) else ""
        table.add_row(section, figure, _cell(values["bwrap"], digits), _cell(values["none"], digits), ratio)
    console.print(table)
    console.print(
        "Figures from several rounds are the median (range). The ratio compares medians. A request does "
        "not pass through the sandbox: the instance is a long-lived process behind pipes."
    )
    noisy = [
        value
        for r in results["direct"]["rounds"]
        for kind in KINDS
        for value in (r[kind]["sequential"]["other_cpu_cores"], r[kind]["wrk"]["other_cpu_cores"])
    ]
    if max(noisy) > 0.15:  # not the load average: this run's own processes are in it
        console.print(
            f"[yellow]warning: other processes used up to {max(noisy):.2f} cores during some runs: absolute "
            "figures are noisy; the interleaving keeps the ratios fairer[/yellow]"
        )


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=30, help="instance starts of each kind (default 30)")
    parser.add_argument("--cold", type=int, default=5, help="versions per server, each timed on its first request")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of c=1 loop + wrk on each server (default 3)")
    parser.add_argument("--requests", type=int, default=3000, help="requests in each c=1 loop (default 3000)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed requests before each c=1 loop")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results/*.json")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (server logs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    packages = {"wrk": "wrk", "bwrap": "bubblewrap"}
    missing = [tool for tool in packages if shutil.which(tool) is None]
    if missing:
        print(
            f"{' and '.join(missing)} not installed: apt-get install -y {' '.join(packages[t] for t in missing)}"
            " (or run `make bench-sandbox`, which installs them when missing).",
            file=sys.stderr,
        )
        return 2
    if args.starts < 1 or args.cold < 1 or args.rounds < 1 or args.duration < 1:
        raise SystemExit("--starts, --cold, --rounds and --duration must be at least 1")
    results: dict[str, Any] = {
        "machine": machine(),
        "settings": {key: value for key, value in vars(args).items() if key not in ("no_json", "keep")},
    }
    with bench_run("modelbay-bench-sandbox-", args.keep) as (workdir, procs):
        results["instance_start"] = instance_starts(workdir, args.starts, warmup=2)
        results["direct"] = direct_requests(args, workdir, procs)
    report(results)
    if not args.no_json:
        save_results(results, "sandbox")
    direct = results["direct"]
    ok = all(direct["check_after_load"].values()) and all(
        r[kind][part]["non_2xx"] == 0 for r in direct["rounds"] for kind in KINDS for part in ("sequential", "wrk")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
