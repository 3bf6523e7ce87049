"""Benchmark: UbiOps direct requests on a real modelbay server, against a bare uvicorn baseline.

Run `.venv/bin/python bench/direct_requests.py` (or `make bench`); see bench/README.md for what
each figure means. Needs `wrk` (`apt-get install -y wrk`) for the concurrent runs.

Everything runs on loopback, on ports picked by binding port 0, in a temporary directory that is
removed at the end; the servers are stopped (SIGTERM, then SIGKILL) even when something fails.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `bench.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    DEPLOYMENT,
    PROJECT,
    RESULTS_DIR,
    Proc,
    _f,
    _mib,
    all_process_cpu,
    bench_run,
    create_noop_deployment,
    create_noop_version,
    descendants,
    headers_for,
    log,
    machine,
    percentile,
    post_once,
    process_tree_rss,
    request_path,
    save_results,
    start_baseline,
    start_modelbay,
    steal_seconds,
    summarize_profile,
    system_busy_seconds,
    top_others,
    tree_cpu,
    ubiops_api,
)

VERSION = "v1"
BODY = b'{"x": 1}'
EXPECTED_RESULT = {"x": 1}

# The project's targets and reference figures (measured elsewhere on this machine class, no-op model,
# 8 concurrent clients); printed next to ours.
TARGET_RPS_C8 = 3200.0
TARGET_P50_C1_MS = 0.6
REFERENCE_RPS_C8 = {
    "Ray Serve 2.60": 220,
    "BentoML 1.4": 1050,
    "uvicorn + model in one worker process over a pipe": 13000,
    "bare uvicorn": 19000,
}


# --- measurements ----------------------------------------------------------------------------


def sequential(port: int, path: str, token: str, n: int, warmup: int) -> dict[str, Any]:
    """`n` requests one after another on one keep-alive connection, timed one by one."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = headers_for(token)
    timings: list[float] = []
    non_2xx = 0
    wall_start = 0.0
    try:
        for i in range(warmup + n):
            if i == warmup:
                wall_start = time.perf_counter()
            start = time.perf_counter_ns()
            conn.request("POST", path, BODY, headers)
            response = conn.getresponse()
            response.read()
            elapsed = time.perf_counter_ns() - start
            if i >= warmup:
                timings.append(elapsed / 1e6)
                if not 200 <= response.status < 300:
                    non_2xx += 1
    finally:
        conn.close()
    total_s = time.perf_counter() - wall_start
    timings.sort()
    return {
        "requests": n,
        "rps": n / total_s,
        "p50_ms": percentile(timings, 50),
        "p90_ms": percentile(timings, 90),
        "p99_ms": percentile(timings, 99),
        "max_ms": timings[-1],
        "mean_ms": sum(timings) / n,
        "non_2xx": non_2xx,
    }


WRK_LUA = """\
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = {auth}
"""

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION = r"([0-9.]+)(us|ms|s|m|h)"


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_wrk(output: str) -> dict[str, Any]:
    def ms(pattern: str) -> float | None:
        match = re.search(pattern + r"\s+" + _DURATION, output)
        return float(match.group(1)) * _UNITS_MS[match.group(2)] if match else None

    # The "Latency avg stdev max +/- stdev" line: its third figure is the slowest response.
    slowest = re.search(r"Latency" + (r"\s+" + _DURATION) * 3, output)
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", output)
    total = re.search(r"(\d+) requests in ([0-9.]+)(us|ms|s|m|h)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return {
        "rps": float(rps.group(1)) if rps else None,
        "requests": int(total.group(1)) if total else None,
        "avg_ms": ms(r"Latency"),
        "p50_ms": ms(r"\n\s+50%"),
        "p75_ms": ms(r"\n\s+75%"),
        "p90_ms": ms(r"\n\s+90%"),
        "p99_ms": ms(r"\n\s+99%"),
        "max_ms": float(slowest.group(5)) * _UNITS_MS[slowest.group(6)] if slowest else None,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": {
            key: int(value)
            for key, value in zip(("connect", "read", "write", "timeout"), sockets.groups(), strict=True)
        }
        if sockets
        else {"connect": 0, "read": 0, "write": 0, "timeout": 0},
    }


def run_wrk(url: str, token: str, connections: int, duration_s: int, workdir: Path) -> dict[str, Any]:
    script = workdir / "post.lua"
    script.write_text(WRK_LUA.format(body=_lua_string(BODY.decode()), auth=_lua_string(f"Token {token}")))
    threads = min(2, connections)
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s", str(script), url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr}\n{done.stdout}")
    result = parse_wrk(done.stdout)
    result.update(connections=connections, threads=threads, duration_s=duration_s, raw=done.stdout)
    return result


def _children_cpu() -> float:
    """CPU seconds used by our finished children (wrk runs), from getrusage."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def start_profile(proc: Proc, connections: int, args: argparse.Namespace, workdir: Path) -> Any:
    """With --profile: py-spy samples the server (and its workers) during the wrk run at c=--profile-at."""
    if not (args.profile or args.profile_gil) or connections != args.profile_at:
        return None
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        log("--profile: py-spy not found (pip install py-spy); not profiling")
        return None
    out = workdir / "profile.txt"
    argv = [
        py_spy,
        "record",
        "--pid",
        str(proc.process.pid),
        "--subprocesses",
        "--format",
        "raw",
        "--rate",
        "250",
        "--duration",
        str(max(args.duration - 1, 1)),
        "--output",
        str(out),
        "--threads",
    ]
    if args.profile_gil:
        argv.append("--gil")  # only samples that hold the GIL: where the one core of Python goes
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), out


def finish_profile(profiler: Any, connections: int) -> dict[str, Any]:
    process, path = profiler
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return {"error": "py-spy did not finish"}
    if not path.exists():
        return {"error": f"py-spy wrote nothing: {stderr.decode(errors='replace')[-500:]}"}
    RESULTS_DIR.mkdir(exist_ok=True)
    kept = RESULTS_DIR / f"profile-c{connections}-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    shutil.copyfile(path, kept)
    return summarize_profile(path.read_text()) | {"raw": str(kept)}


# --- modelbay setup --------------------------------------------------------------------------


def completed_requests(db_path: Path) -> int:
    """How many requests the store holds as completed (read-only, beside the running server)."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)) as conn:
        return int(conn.execute("SELECT count(*) FROM requests WHERE status = 'completed'").fetchone()[0])


def settled_count(db_path: Path, quiet_s: float = 0.3, limit_s: float = 10.0) -> int:
    """The completed count once it stops moving (requests in flight when wrk stopped finish)."""
    deadline = time.monotonic() + limit_s
    last = completed_requests(db_path)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = completed_requests(db_path)
        if now == last:
            return now
        last = now
    return last


def deploy_noop(url: str, token: str, workdir: Path, poll_s: float) -> dict[str, Any]:
    """Create the structured no-op deployment with the `ubiops` SDK; time upload -> available."""
    with ubiops_api(url, token) as api:
        create_noop_deployment(api)
        timing = create_noop_version(api, workdir, VERSION, poll_s, maximum_instances=1)
    timing.pop("version_id", None)
    return timing


# --- the run ---------------------------------------------------------------------------------


def measure_target(
    name: str, proc: Proc, token: str, args: argparse.Namespace, workdir: Path, db_path: Path | None = None
) -> dict[str, Any]:
    path = request_path(PROJECT, DEPLOYMENT)
    out: dict[str, Any] = {}
    log(f"{name}: {args.requests} sequential requests on one keep-alive connection")
    out["sequential"] = sequential(proc.port, path, token, args.requests, args.warmup)
    out["wrk"] = {}
    for connections in args.concurrency:
        before = completed_requests(db_path) if db_path else None
        log(f"{name}: wrk -c{connections} for {args.duration} s")
        profiler = start_profile(proc, connections, args, workdir) if name == "modelbay" else None
        snapshot = all_process_cpu()
        cpu_before, wrk_before, busy_before = tree_cpu(proc.process.pid), _children_cpu(), system_busy_seconds()
        steal_before = steal_seconds()
        started = time.perf_counter()
        result = run_wrk(proc.url + path, token, connections, args.duration, workdir)
        elapsed = time.perf_counter() - started
        cpu_after, wrk_after, busy_after = tree_cpu(proc.process.pid), _children_cpu(), system_busy_seconds()
        result["steal_cores"] = (steal_seconds() - steal_before) / elapsed
        ours = (
            (cpu_after["server"] - cpu_before["server"])
            + (cpu_after["workers"] - cpu_before["workers"])
            + (wrk_after - wrk_before)
        )
        # Anything else running on the machine meanwhile (in cores): noise in these figures.
        result["other_cpu_cores"] = max((busy_after - busy_before) - ours, 0.0) / elapsed
        ours_pids = {os.getpid(), proc.process.pid, *descendants(proc.process.pid), *descendants(os.getpid())}
        result["other_busiest"] = top_others(snapshot, all_process_cpu(), ours_pids, elapsed)
        if profiler is None and result["other_cpu_cores"] > 0.15:
            log(
                f"warning: other processes used {result['other_cpu_cores']:.2f} cores during this run "
                f"(busiest still running: {', '.join(result['other_busiest']) or 'none: short-lived ones'})"
            )
        served = max(result["requests"] or 1, 1)
        result["cpu_ms_per_request"] = {
            "server": (cpu_after["server"] - cpu_before["server"]) * 1000 / served,
            "workers": (cpu_after["workers"] - cpu_before["workers"]) * 1000 / served,
            "wrk": (wrk_after - wrk_before) * 1000 / served,
        }
        result["server_cpu_utilisation"] = (cpu_after["server"] - cpu_before["server"]) / args.duration
        if profiler is not None:
            out["profile"] = finish_profile(profiler, connections) | {"connections": connections}
        if db_path is not None:
            result["recorded_completed"] = settled_count(db_path) - (before or 0)
        out["wrk"][connections] = result
        log(
            f"{name}: c={connections}: {result['rps']:.0f} req/s, p50 {result['p50_ms']:.2f} ms, "
            f"p99 {result['p99_ms']:.2f} ms, non-2xx {result['non_2xx']}"
        )
    return out


def run(args: argparse.Namespace, workdir: Path, procs: list[Proc]) -> dict[str, Any]:
    results: dict[str, Any] = {
        "machine": machine(),
        "settings": {
            "sequential_requests": args.requests,
            "warmup": args.warmup,
            "wrk_duration_s": args.duration,
            "concurrency": args.concurrency,
        },
    }

    # modelbay: a real server, a project from the CLI, a deployment from the SDK.
    server, token, data_dir = start_modelbay(workdir, procs)
    time.sleep(1.0)  # let start-up settle before reading its RSS
    mb: dict[str, Any] = {"rss_idle_after_startup": process_tree_rss(server.process.pid)}

    log("creating the no-op deployment with the ubiops SDK and uploading its package")
    mb["deploy"] = deploy_noop(server.url, token, workdir, args.poll_ms / 1000)
    log(f"upload -> available: {mb['deploy']['upload_to_available_ms']:.0f} ms")

    path = request_path(PROJECT, DEPLOYMENT)
    status, body, first_ms = post_once(server.port, path, token)
    mb["first_request_ms"] = first_ms  # starts the (single) instance: minimum_instances is 0
    if status != 200 or body.get("status") != "completed" or body.get("result") != EXPECTED_RESULT:
        raise RuntimeError(f"first request went wrong: HTTP {status}: {body}")
    log(f"first request (starts the instance): {first_ms:.0f} ms")
    sequential(server.port, path, token, 200, 0)  # warm up
    time.sleep(0.5)
    server.remember_children()
    mb["rss_before_load"] = process_tree_rss(server.process.pid)

    db_path = data_dir / "modelbay.db"
    mb.update(measure_target("modelbay", server, token, args, workdir, db_path))

    status, body, _ = post_once(server.port, path, token)
    mb["check_after_load"] = {"http_status": status, "status": body.get("status"), "result": body.get("result")}
    mb["check_ok"] = status == 200 and body.get("status") == "completed" and body.get("result") == EXPECTED_RESULT
    server.remember_children()
    mb["rss_after_load"] = process_tree_rss(server.process.pid)
    log(f"stopping modelbay (exit code {server.stop()})")
    results["modelbay"] = mb

    # Baseline: a bare ASGI callable under uvicorn, same options, one process.
    baseline = start_baseline(workdir, procs)
    bl: dict[str, Any] = {}
    status, body, _ = post_once(baseline.port, path, token)
    if status != 200 or body.get("result") != EXPECTED_RESULT:
        raise RuntimeError(f"baseline answered HTTP {status}: {body}")
    sequential(baseline.port, path, token, 200, 0)
    bl["rss_before_load"] = process_tree_rss(baseline.process.pid)
    bl.update(measure_target("baseline", baseline, token, args, workdir))
    bl["rss_after_load"] = process_tree_rss(baseline.process.pid)
    log(f"stopping the baseline (exit code {baseline.stop()})")
    results["baseline"] = bl
    return results


# --- report ----------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 130)
    m = results["machine"]
    mb, bl = results["modelbay"], results["baseline"]
    noisy = [
        f"{who} c={c}: {w['other_cpu_cores']:.2f}"
        for who, r in (("modelbay", mb), ("baseline", bl))
        for c, w in r["wrk"].items()
        if w["other_cpu_cores"] > 0.15
    ]
    console.print(
        f"\n[bold]modelbay direct requests[/bold] — {m['date']}, {m['cpus']} CPUs ({m['cpu_model']}), "
        f"Python {m['python']}, uvicorn {m['packages']['uvicorn']}, {m['wrk']}, modelbay {m['modelbay_commit']}"
    )

    table = Table(title='Direct request round trip: POST /v2.1/projects/{p}/deployments/{d}/requests {"x": 1}')
    for column in ("run", "figure", "modelbay", "baseline (bare uvicorn)", "modelbay / baseline", "target"):
        table.add_column(column, justify="left" if column in ("run", "figure") else "right")

    def ratio(a: float | None, b: float | None) -> str:
        return "-" if not a or not b else f"{a / b:.2f}×"

    seq_m, seq_b = mb["sequential"], bl["sequential"]
    label = f"c=1 loop ({results['settings']['sequential_requests']} req, keep-alive http.client)"
    table.add_row(
        label,
        "p50 ms",
        _f(seq_m["p50_ms"], 3),
        _f(seq_b["p50_ms"], 3),
        ratio(seq_m["p50_ms"], seq_b["p50_ms"]),
        f"≤ {TARGET_P50_C1_MS}",
    )
    table.add_row(
        "", "p99 ms", _f(seq_m["p99_ms"], 3), _f(seq_b["p99_ms"], 3), ratio(seq_m["p99_ms"], seq_b["p99_ms"]), ""
    )
    table.add_row("", "req/s", _f(seq_m["rps"], 0), _f(seq_b["rps"], 0), ratio(seq_m["rps"], seq_b["rps"]), "")
    table.add_row("", "non-2xx", str(seq_m["non_2xx"]), str(seq_b["non_2xx"]), "", "", end_section=True)
    for connections, wm in mb["wrk"].items():
        wb = bl["wrk"][connections]
        run_label = f"wrk -t{wm['threads']} -c{connections} -d{wm['duration_s']}s"
        target = f"≥ {TARGET_RPS_C8:,.0f}" if int(connections) == 8 else ""
        table.add_row(run_label, "req/s", _f(wm["rps"], 0), _f(wb["rps"], 0), ratio(wm["rps"], wb["rps"]), target)
        table.add_row("", "p50 ms", _f(wm["p50_ms"]), _f(wb["p50_ms"]), ratio(wm["p50_ms"], wb["p50_ms"]), "")
        table.add_row("", "p99 ms", _f(wm["p99_ms"]), _f(wb["p99_ms"]), ratio(wm["p99_ms"], wb["p99_ms"]), "")
        errors = sum(wm["socket_errors"].values()), sum(wb["socket_errors"].values())
        table.add_row(
            "", "non-2xx / socket errors", f"{wm['non_2xx']} / {errors[0]}", f"{wb['non_2xx']} / {errors[1]}", "", ""
        )
        cm, cb = wm["cpu_ms_per_request"], wb["cpu_ms_per_request"]
        table.add_row(
            "",
            "CPU ms/request: server + workers (wrk)",
            f"{cm['server']:.3f} + {cm['workers']:.3f} ({cm['wrk']:.3f})",
            f"{cb['server']:.3f} + {cb['workers']:.3f} ({cb['wrk']:.3f})",
            ratio(cm["server"] + cm["workers"], cb["server"] + cb["workers"]),
            "",
        )
        table.add_row(
            "",
            "server process CPU use (1.0 = one core)",
            _f(wm["server_cpu_utilisation"]),
            _f(wb["server_cpu_utilisation"]),
            "",
            "",
        )
        table.add_row(
            "",
            "other processes' CPU meanwhile (cores; noise)",
            _f(wm["other_cpu_cores"]),
            _f(wb["other_cpu_cores"]),
            "",
            "",
        )
        table.add_row(
            "",
            "responses (wrk) / recorded completed in store",
            f"{wm['requests']:,} / {wm.get('recorded_completed', 0):,}",
            f"{wb['requests']:,} / -",
            "",
            "",
            end_section=True,
        )
    console.print(table)
    if noisy:
        console.print(
            "[yellow]warning: other processes used CPU during some runs (cores): "
            + ", ".join(noisy)
            + " — rerun on a quiet machine for clean figures[/yellow]"
        )

    other = Table(title="Deployment and memory")
    other.add_column("figure")
    other.add_column("value", justify="right")
    d = mb["deploy"]
    other.add_row("revisions_file_upload start → version available", f"{d['upload_to_available_ms']:,.0f} ms")
    other.add_row("  of which the upload call itself", f"{d['upload_call_ms']:,.0f} ms")
    other.add_row("first request (starts the one instance)", f"{mb['first_request_ms']:,.0f} ms")
    check = mb["check_after_load"]
    other.add_row(
        "response after the load",
        f"{'OK' if mb['check_ok'] else 'WRONG'}: HTTP {check['http_status']}, "
        f"{check['status']}, result {json.dumps(check['result'])}",
        end_section=True,
    )
    other.add_row("modelbay server RSS, idle after start-up", _mib(mb["rss_idle_after_startup"]["server_rss_kib"]))
    other.add_row("modelbay server RSS, before load (deployed, warm)", _mib(mb["rss_before_load"]["server_rss_kib"]))
    other.add_row("modelbay server RSS, after load", _mib(mb["rss_after_load"]["server_rss_kib"]))
    for when in ("rss_before_load", "rss_after_load"):
        tree = mb[when]
        other.add_row(
            f"worker processes ({len(tree['children'])}) RSS, {when[4:].replace('_', ' ')}",
            _mib(tree["children_rss_kib"]),
        )
    other.add_row(
        "baseline (bare uvicorn) RSS, before / after load",
        f"{_mib(bl['rss_before_load']['server_rss_kib'])} / {_mib(bl['rss_after_load']['server_rss_kib'])}",
    )
    console.print(other)
    for child in mb["rss_after_load"]["children"]:
        console.print(f"  worker pid {child['pid']}: {_mib(child['rss_kib'])}  {child['cmd']}", markup=False)

    c8 = mb["wrk"].get(8)
    console.print("\nFor comparison at c=8 (measured elsewhere on this machine class, no-op model):")
    for name, rps in REFERENCE_RPS_C8.items():
        console.print(f"  {name}: ~{rps:,} req/s")
    verdicts = []
    if c8:
        verdicts.append(
            f"c=8 {c8['rps']:,.0f} req/s vs target ≥ {TARGET_RPS_C8:,.0f}: "
            f"{'met' if c8['rps'] >= TARGET_RPS_C8 else 'NOT met'}"
        )
    verdicts.append(
        f"c=1 p50 {seq_m['p50_ms']:.3f} ms vs target ≤ {TARGET_P50_C1_MS} ms: "
        f"{'met' if seq_m['p50_ms'] <= TARGET_P50_C1_MS else 'NOT met'}"
    )
    for line in verdicts:
        console.print(f"[bold]{line}[/bold]")

    profile = mb.get("profile")
    if profile and "error" not in profile:
        console.print(
            f"\npy-spy during the c={profile['connections']} run "
            f"({profile['server_samples']} server samples; "
            f"worker excluded; raw stacks in {profile['raw']}):",
            markup=False,
        )
        sections = (
            ("samples by thread", "threads_pct", 6),
            ("self time by package", "self_by_package_pct", 12),
            ("most self time", "self_pct", 15),
            ("most inclusive time", "inclusive_pct", 40),
        )
        for title, key, n in sections:
            console.print(f"  {title} (% of server samples):")
            for frame, pct in profile[key][:n]:
                console.print(f"    {pct:5.1f}%  {frame}", markup=False, highlight=False, soft_wrap=True)
    elif profile:
        console.print(f"\nprofile: {profile['error']}")


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--requests", type=int, default=3000, help="requests in the c=1 loop (default 3000)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed requests before the c=1 loop")
    parser.add_argument(
        "--concurrency",
        type=lambda s: [int(c) for c in s.split(",")],
        default=[1, 8, 64],
        help="wrk connection counts, comma-separated (default 1,8,64)",
    )
    parser.add_argument("--poll-ms", type=float, default=10.0, help="status poll interval while deploying")
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results/*.json")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the server with py-spy during one wrk run (needs py-spy; slows the server)",
    )
    parser.add_argument("--profile-at", type=int, default=8, help="the wrk connection count to profile (default 8)")
    parser.add_argument("--profile-gil", action="store_true", help="like --profile, sampling only the GIL holder")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (server logs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed; it drives the concurrent runs. Install it with:\n"
            "    apt-get install -y wrk        (Debian/Ubuntu; run `apt-get update` first if needed)\n"
            "or run `make bench`, which installs it when it is missing.",
            file=sys.stderr,
        )
        return 2
    if args.duration < 1:
        raise SystemExit("--duration must be at least 1 s")
    with bench_run("modelbay-bench-", args.keep) as (workdir, procs):
        results = run(args, workdir, procs)
    report(results)
    if not args.no_json:
        save_results(results, "direct_requests")
    ok = results["modelbay"]["check_ok"] and all(
        w["non_2xx"] == 0 for r in (results["modelbay"], results["baseline"]) for w in r["wrk"].values()
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
