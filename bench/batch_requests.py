"""Benchmark: UbiOps batch requests on a real modelbay server: accept, drain, cold start, memory.

Run `.venv/bin/python bench/batch_requests.py` (or `make bench-batch`); see bench/README.md
("Batch requests") for what each figure means. No wrk needed: every client here is stdlib.

1. Accept: `POST .../versions/accept/requests/batch` with 250 no-op items, timed one call at a time
   on a keep-alive connection, the queue drained between calls; the same body POSTed to the bare
   uvicorn baseline (bench/baseline_app.py) in the same run.
2. Drain: 10,000 items (40 calls of 250, back to back) on a version with maximum_instances 1, then
   on one with 2; from the first accept until the store holds all 10,000 as `completed` (the
   SQLite file polled read-only every 50 ms).
3. Cold start: a direct request to a version with minimum_instances 0 and maximum_idle_time 1 s,
   once its worker process is gone; against a warm request right after.
4. Server RSS idle after start-up and after each drain.

Everything runs on loopback, on ports picked by binding port 0, in a temporary directory removed at
the end; the servers are stopped (SIGTERM, then SIGKILL, then leftover workers by pid) even when
something fails. The measurements are bounded by --budget seconds (default 140); with server
start-up (at most 60 s) and shutdown (normally under 1 s) a run stays under 3 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `bench.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    DEPLOYMENT,
    PROJECT,
    RESULTS_DIR,
    ROOT,
    Proc,
    _f,
    _mib,
    all_process_cpu,
    bench_run,
    cpu_seconds,
    create_noop_deployment,
    create_noop_version,
    descendants,
    headers_for,
    log,
    machine,
    percentile,
    post_once,
    process_tree_rss,
    save_results,
    start_baseline,
    start_modelbay,
    summarize_profile,
    system_busy_seconds,
    top_others,
    tree_cpu,
    ubiops_api,
)

BATCH_SIZE = 250
DIRECT_BODY = b'{"x": 1}'

#: The versions this run makes, with their SDK `DeploymentVersionCreate` settings.
VERSIONS: dict[str, dict[str, Any]] = {
    "accept": {"maximum_instances": 1},
    "drain1": {"maximum_instances": 1},
    "drain2": {"maximum_instances": 2},
    "cold": {"minimum_instances": 0, "maximum_instances": 1, "maximum_idle_time": 1},
}

# The project's targets.
TARGET_ACCEPT_P50_MS = 25.0
TARGET_DRAIN_ITEMS_S = 5000.0
TARGET_COLD_START_MS = 250.0

POLL_S = 0.05  # store polls during a drain


class OutOfTime(Exception):
    """The run's --budget is spent."""


class Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def bound(self, seconds: float, reserve: float = 0.0) -> float:
        """`seconds`, or less when the budget (keeping `reserve` for what comes after) is shorter."""
        return max(min(seconds, self.left() - reserve), 0.0)

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise OutOfTime(f"out of time budget while {what}")


class Noise:
    """CPU used on the machine by anything but the server, its workers and this script over a phase
    (from /proc/stat), in cores: other work sharing the cores makes the figures slower."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.snapshot = all_process_cpu()
        self.started = time.perf_counter()
        self.busy = system_busy_seconds()
        self.ours = self._ours()

    def _ours(self) -> float:
        tree = tree_cpu(self.server_pid)
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # py-spy, when profiling
        return tree["server"] + tree["workers"] + me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def cores(self) -> float:
        elapsed = time.perf_counter() - self.started
        other = (system_busy_seconds() - self.busy) - (self._ours() - self.ours)
        return max(other, 0.0) / elapsed if elapsed > 0 else 0.0

    def busiest(self) -> str:
        """The busiest other processes still running, for the warning."""
        ours = {os.getpid(), self.server_pid, *descendants(self.server_pid), *descendants(os.getpid())}
        elapsed = time.perf_counter() - self.started
        return ", ".join(top_others(self.snapshot, all_process_cpu(), ours, elapsed)) or "none: short-lived ones"

    def report(self, phase: str) -> float:
        cores = self.cores()
        if cores > 0.15:
            log(
                f"warning: other processes used {cores:.2f} cores during {phase} (busiest still running: "
                f"{self.busiest()}): its figures are not clean"
            )
        return cores


# --- the store, read-only ---------------------------------------------------------------------


class Store:
    """The server's SQLite file, opened read-only (`mode=ro`) beside the running server."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path

    def connect(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)

    def completed(self, conn: sqlite3.Connection, version_id: str) -> int:
        row = conn.execute(
            "SELECT count(*) FROM requests WHERE status='completed' AND version_id=?", (version_id,)
        ).fetchone()
        return int(row[0])

    def batch_statuses(self, version_id: str) -> dict[str, int]:
        with contextlib.closing(self.connect()) as conn:
            rows = conn.execute(
                "SELECT status, count(*) FROM requests WHERE version_id=? AND mode='batch' GROUP BY status",
                (version_id,),
            ).fetchall()
        return {status: int(count) for status, count in rows}

    def version_ids(self) -> dict[str, str]:
        with contextlib.closing(self.connect()) as conn:
            rows = conn.execute(
                "SELECT v.name, v.id FROM versions v JOIN deployments d ON d.id = v.deployment_id WHERE d.name = ?",
                (DEPLOYMENT,),
            ).fetchall()
        return dict(rows)

    def package_dir(self, version_id: str) -> str:
        """Where the server unpacked the version's code (its workers run in it, or in a folder inside)."""
        with contextlib.closing(self.connect()) as conn:
            (revision_id,) = conn.execute("SELECT active_revision_id FROM versions WHERE id = ?",
                                          (version_id,)).fetchone()
        return os.path.realpath(self.db_path.parent / "builds" / "packages" / revision_id)


# --- clients ----------------------------------------------------------------------------------


def batch_path(version: str) -> str:
    return f"/v2.1/projects/{PROJECT}/deployments/{DEPLOYMENT}/versions/{version}/requests/batch"


def direct_path(version: str) -> str:
    return f"/v2.1/projects/{PROJECT}/deployments/{DEPLOYMENT}/versions/{version}/requests"


def batch_body(first: int, n: int = BATCH_SIZE) -> bytes:
    return json.dumps([{"x": i} for i in range(first, first + n)]).encode()


class Client:
    """One keep-alive `http.client` connection; `post` returns (status, raw body, ms)."""

    def __init__(self, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = headers_for(token)

    def post(self, path: str, body: bytes) -> tuple[int, bytes, float]:
        start = time.perf_counter_ns()
        self.conn.request("POST", path, body, self.headers)
        response = self.conn.getresponse()
        raw = response.read()
        return response.status, raw, (time.perf_counter_ns() - start) / 1e6

    def close(self) -> None:
        self.conn.close()


def check_created(status: int, raw: bytes, n: int) -> None:
    """A batch create answer: HTTP 201 and `n` pending requests."""
    if status != 201:
        raise RuntimeError(f"batch create answered HTTP {status}: {raw[:500]!r}")
    created = json.loads(raw)
    if len(created) != n or any(item.get("status") != "pending" for item in created):
        raise RuntimeError(f"batch create answered {len(created)} items, not {n} pending ones: {raw[:300]!r}")


def latency_stats(timings: list[float]) -> dict[str, Any]:
    ordered = sorted(timings)
    return {
        "calls": len(ordered),
        "p50_ms": percentile(ordered, 50),
        "p90_ms": percentile(ordered, 90),
        "p99_ms": percentile(ordered, 99),
        "min_ms": ordered[0] if ordered else None,
        "max_ms": ordered[-1] if ordered else None,
        "mean_ms": sum(ordered) / len(ordered) if ordered else None,
    }


# --- 1. accept ----------------------------------------------------------------------------------


def wait_completed(store: Store, conn: sqlite3.Connection, version_id: str, expected: int, limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    while store.completed(conn, version_id) < expected:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def accept_modelbay(
    server: Proc, token: str, store: Store, version_id: str, calls: int, warmup: int, budget: Budget
) -> dict[str, Any]:
    """`calls` timed batch creates of 250 on one keep-alive connection; before each, the queue of
    the previous one has drained (the server is idle when the call starts)."""
    path = batch_path("accept")
    status, body, _ = post_once(server.port, direct_path("accept"), token, DIRECT_BODY)  # starts the instance
    if status != 200 or body.get("status") != "completed":
        raise RuntimeError(f"direct request to 'accept' went wrong: HTTP {status}: {body}")
    client = Client(server.port, token)
    timings: list[float] = []
    drain_waits: list[float] = []
    noise = Noise(server.process.pid)
    with contextlib.closing(store.connect()) as conn:
        expected = store.completed(conn, version_id)
        try:
            for i in range(warmup + calls):
                budget.check("measuring accept")
                status, raw, ms = client.post(path, batch_body(i * BATCH_SIZE))
                check_created(status, raw, BATCH_SIZE)
                expected += BATCH_SIZE
                waited = time.perf_counter()
                limit = budget.bound(30, reserve=60)
                if not wait_completed(store, conn, version_id, expected, limit):
                    raise OutOfTime(f"the 'accept' queue did not drain within {limit:.1f} s (time budget)")
                if i >= warmup:
                    timings.append(ms)
                    drain_waits.append((time.perf_counter() - waited) * 1000)
        finally:
            client.close()
    out = latency_stats(timings)
    out["drained_between_calls"] = True
    out["drain_wait_after_call_p50_ms"] = percentile(sorted(drain_waits), 50)
    out["statuses"] = store.batch_statuses(version_id)
    out["other_cpu_cores"] = noise.report("accept")
    return out


def accept_baseline(baseline: Proc, token: str, calls: int, warmup: int) -> dict[str, Any]:
    client = Client(baseline.port, token)
    timings = []
    try:
        for i in range(warmup + calls):
            status, raw, ms = client.post(batch_path("accept"), batch_body(i * BATCH_SIZE))
            check_created(status, raw, BATCH_SIZE)
            if i >= warmup:
                timings.append(ms)
    finally:
        client.close()
    return latency_stats(timings)


# --- 2. drain -----------------------------------------------------------------------------------


class Poller(threading.Thread):
    """Counts the version's completed requests every POLL_S until `target` more than at the start."""

    def __init__(self, store: Store, version_id: str, start_count: int, target: int, limit_s: float) -> None:
        super().__init__(name="store-poller", daemon=True)
        self.store, self.version_id = store, version_id
        self.start_count, self.target, self.limit_s = start_count, target, limit_s
        self.samples: list[tuple[float, int]] = []  # (perf_counter, completed in this run)
        self.done_at: float | None = None
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            with contextlib.closing(self.store.connect()) as conn:
                deadline = time.perf_counter() + self.limit_s
                while not self._stop_event.is_set():
                    count = self.store.completed(conn, self.version_id) - self.start_count
                    now = time.perf_counter()
                    self.samples.append((now, count))
                    if count >= self.target:
                        self.done_at = now
                        return
                    if now > deadline:
                        return
                    self._stop_event.wait(POLL_S)
        except BaseException as exc:  # reported by the caller
            self.error = exc

    def stop(self) -> None:
        self._stop_event.set()


def start_py_spy(server: Proc, workdir: Path, gil: bool) -> tuple[subprocess.Popen[bytes], Path] | None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        log("--profile: py-spy not found (pip install py-spy); not profiling")
        return None
    out = workdir / "drain-profile.txt"
    argv = [py_spy, "record", "--pid", str(server.process.pid), "--subprocesses", "--format", "raw"]
    argv += ["--rate", "200", "--output", str(out), "--threads"] + (["--gil"] if gil else [])
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)  # let it attach before the load starts
    return process, out


def finish_py_spy(profiler: tuple[subprocess.Popen[bytes], Path], label: str) -> dict[str, Any]:
    process, path = profiler
    process.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
    try:
        _, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return {"error": "py-spy did not finish"}
    if not path.exists():
        return {"error": f"py-spy wrote nothing: {stderr.decode(errors='replace')[-500:]}"}
    RESULTS_DIR.mkdir(exist_ok=True)
    kept = RESULTS_DIR / f"profile-drain-{label}-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    shutil.copyfile(path, kept)
    raw = path.read_text()
    return {
        "raw": str(kept.relative_to(ROOT)),
        "server": summarize_profile(raw),
        "workers": summarize_profile(raw, which="workers"),
    }


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds used so far by each thread of a process (from /proc/<pid>/task)."""
    out = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            out[int(tid)] = cpu_seconds_of(f"/proc/{pid}/task/{tid}/stat")
    return out


def cpu_seconds_of(stat_path: str) -> float:
    try:
        stat = Path(stat_path).read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_names(pid: int) -> dict[int, str]:
    """OS thread id -> Python thread name, from one `py-spy dump` (empty without py-spy)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        return {}
    try:
        done = subprocess.run([py_spy, "dump", "--pid", str(pid), "--json"], capture_output=True, text=True, timeout=20)
        return {t["os_thread_id"]: t.get("thread_name") or "?" for t in json.loads(done.stdout)}
    except (subprocess.SubprocessError, ValueError, KeyError, TypeError):
        return {}


def worker_pids(server: Proc) -> list[int]:
    return [pid for pid in descendants(server.process.pid) if "worker.py" in _cmdline(pid)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def drain(
    server: Proc,
    token: str,
    store: Store,
    version: str,
    version_id: str,
    items: int,
    budget: Budget,
    reserve_s: float,
    profile: str | None,
    workdir: Path,
) -> dict[str, Any]:
    """Queue `items` no-op items in calls of 250, back to back on one connection, and time the
    drain from the first accept until the store holds all of them as completed."""
    calls = items // BATCH_SIZE
    bodies = [batch_body(i * BATCH_SIZE) for i in range(calls)]  # encoded before the clock starts
    status, body, _ = post_once(server.port, direct_path(version), token, DIRECT_BODY)  # starts one instance
    if status != 200 or body.get("status") != "completed":
        raise RuntimeError(f"direct request to {version!r} went wrong: HTTP {status}: {body}")
    with contextlib.closing(store.connect()) as conn:
        start_count = store.completed(conn, version_id)
    profiler = start_py_spy(server, workdir, profile == "gil") if profile else None
    try:
        return _drain_measured(
            server, token, store, version, version_id, items, bodies, start_count, budget, reserve_s, profile, profiler
        )
    except BaseException:
        if profiler is not None and profiler[0].poll() is None:
            profiler[0].kill()
            profiler[0].wait()
        raise


def _drain_measured(
    server: Proc,
    token: str,
    store: Store,
    version: str,
    version_id: str,
    items: int,
    bodies: list[bytes],
    start_count: int,
    budget: Budget,
    reserve_s: float,
    profile: str | None,
    profiler: tuple[subprocess.Popen[bytes], Path] | None,
) -> dict[str, Any]:
    calls = len(bodies)
    path = batch_path(version)
    pid = server.process.pid
    noise = Noise(pid)
    threads_before = thread_cpu(pid)
    workers_before = {p: cpu_seconds(p) for p in worker_pids(server)}
    server_cpu_before = cpu_seconds(pid)
    limit_s = budget.bound(60, reserve=reserve_s)
    poller = Poller(store, version_id, start_count, items, limit_s)
    client = Client(server.port, token)
    timings: list[float] = []
    first_sent = time.perf_counter()
    first_accepted = last_accepted = 0.0
    try:
        for i, payload in enumerate(bodies):
            status, raw, ms = client.post(path, payload)
            check_created(status, raw, BATCH_SIZE)
            timings.append(ms)
            last_accepted = time.perf_counter()
            if i == 0:
                first_accepted = last_accepted
                poller.start()
    finally:
        client.close()
    poller.join(limit_s + 5)
    poller.stop()
    if poller.error is not None:
        raise RuntimeError(f"polling the store failed: {poller.error!r}")
    ended = poller.done_at or time.perf_counter()
    other_cores = noise.report(f"the drain on {version}")
    server_cpu = cpu_seconds(pid) - server_cpu_before
    threads_used = {tid: cpu - threads_before.get(tid, 0.0) for tid, cpu in thread_cpu(pid).items()}
    workers_after = {p: cpu_seconds(p) for p in worker_pids(server)}
    worker_cpu = sum(cpu - workers_before.get(p, 0.0) for p, cpu in workers_after.items())
    prof = finish_py_spy(profiler, version) if profiler else None
    names = thread_names(pid)
    by_thread: dict[str, float] = {}
    for tid, used in threads_used.items():
        if used > 0:
            name = names.get(tid, f"thread {tid}")
            by_thread[name] = by_thread.get(name, 0.0) + used
    completed = poller.samples[-1][1] if poller.samples else 0
    elapsed = ended - first_accepted

    def at(fraction: float) -> float | None:
        return next((t for t, count in poller.samples if count >= fraction * items), None)

    t20, t80 = at(0.2), at(0.8)
    server.remember_children()
    out: dict[str, Any] = {
        "version": version,
        "maximum_instances": VERSIONS[version]["maximum_instances"],
        "items": items,
        "calls": calls,
        "drained": poller.done_at is not None,
        "completed": completed,
        "drain_s": elapsed,
        "items_per_s": completed / elapsed if elapsed > 0 else None,
        "steady_items_per_s_20_80": (0.6 * items / (t80 - t20)) if t20 and t80 and t80 > t20 else None,
        "fill_s": last_accepted - first_sent,
        "fill_items_per_s": items / (last_accepted - first_sent),
        "completed_when_fill_ended": next((c for t, c in reversed(poller.samples) if t <= last_accepted), 0),
        "accept_under_load": latency_stats(timings),
        "statuses": store.batch_statuses(version_id),
        "server_cpu_s": server_cpu,
        "worker_cpu_s": worker_cpu,
        "server_cpu_us_per_item": server_cpu * 1e6 / max(completed, 1),
        "worker_cpu_us_per_item": worker_cpu * 1e6 / max(completed, 1),
        "server_cpu_cores": server_cpu / elapsed if elapsed > 0 else None,
        "server_cpu_us_per_item_by_thread": {
            name: used * 1e6 / max(completed, 1) for name, used in sorted(by_thread.items(), key=lambda kv: -kv[1])
        },
        "worker_processes": len(workers_after),  # of every version so far
        "polls": len(poller.samples),
        "other_cpu_cores": other_cores,
        "rss_after": process_tree_rss(pid),
        "profiled": profile,
    }
    if prof is not None:
        out["profile"] = prof
    return out


# --- 3. cold start ------------------------------------------------------------------------------


def version_workers(server: Proc, package_dir: str) -> list[int]:
    """The server's live (not zombie) worker processes running in `package_dir`."""
    found = []
    for pid in worker_pids(server):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        inside = cwd == package_dir or cwd.startswith(package_dir + os.sep)
        if inside and stat[stat.rindex(")") + 2] != "Z":
            found.append(pid)
    return found


def cold_start(
    server: Proc, token: str, store: Store, version_id: str, reps: int, warm: int, budget: Budget
) -> dict[str, Any]:
    """`reps` + 1 times: wait until the version's worker is gone, then one direct request (it starts
    the instance), then `warm` direct requests (each on a fresh connection, like the cold one)."""
    package_dir = store.package_dir(version_id)
    path = direct_path("cold")
    cold: list[float] = []
    warm_ms: list[float] = []
    gone_after: list[float] = []  # from the last request's answer until the worker was gone
    last_answer: float | None = None
    noise = Noise(server.process.pid)
    for rep in range(reps + 1):
        deadline = time.monotonic() + budget.bound(15, reserve=5)
        while version_workers(server, package_dir):
            if time.monotonic() > deadline:
                raise OutOfTime("the 'cold' version's worker did not go away within 15 s")
            time.sleep(0.01)
        if last_answer is not None:
            gone_after.append(time.perf_counter() - last_answer)
        status, body, ms = post_once(server.port, path, token, DIRECT_BODY)
        if status != 200 or body.get("status") != "completed" or body.get("result") != {"x": 1}:
            raise RuntimeError(f"cold request went wrong: HTTP {status}: {body}")
        if not version_workers(server, package_dir):
            raise RuntimeError("no worker of 'cold' after its request")
        cold.append(ms)
        for _ in range(warm):
            status, body, ms = post_once(server.port, path, token, DIRECT_BODY)
            if status != 200 or body.get("status") != "completed":
                raise RuntimeError(f"warm request went wrong: HTTP {status}: {body}")
            warm_ms.append(ms)
        last_answer = time.perf_counter()
        log(f"cold start {rep}: {cold[-1]:.1f} ms (warm after it: {warm_ms[-1]:.2f} ms)")
    first, timed = cold[0], cold[1:]
    other_cores = noise.report("the cold starts")
    return {
        "other_cpu_cores": other_cores,
        "first_ever_ms": first,
        "cold_ms": timed,
        "cold_p50_ms": percentile(sorted(timed), 50),
        "cold_max_ms": max(timed),
        "warm_p50_ms": percentile(sorted(warm_ms), 50),
        "warm_requests": len(warm_ms),
        "worker_gone_after_last_request_s": gone_after,
    }


# --- the run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path, procs: list[Proc]) -> dict[str, Any]:
    budget = Budget(args.budget)
    results: dict[str, Any] = {
        "machine": machine(),
        "settings": {
            "batch_size": BATCH_SIZE,
            "accept_calls": args.calls,
            "accept_warmup": args.warmup,
            "drain_items": args.items,
            "cold_reps": args.cold_reps,
            "poll_s": POLL_S,
            "profile": args.profile,
        },
    }
    server, token, data_dir = start_modelbay(workdir, procs)
    time.sleep(1.0)  # let start-up settle before reading its RSS
    results["rss_idle_after_startup"] = process_tree_rss(server.process.pid)
    store = Store(data_dir / "modelbay.db")

    log("creating the no-op deployment and its versions with the ubiops SDK")
    with ubiops_api(server.url, token) as api:
        create_noop_deployment(api)
        deploys = {
            version: create_noop_version(
                api, workdir, version, 0.01, deadline_s=budget.bound(60, reserve=60), **settings
            )
            for version, settings in VERSIONS.items()
        }
    ids = store.version_ids()
    for version, deployed in deploys.items():
        if deployed["version_id"] not in (None, ids[version]):
            raise RuntimeError(f"the SDK's version id for {version} is not the store's")
    results["deploy"] = deploys
    budget.check("deploying")

    log(f"accept: {args.calls} batch creates of {BATCH_SIZE} (queue drained between calls)")
    accept = accept_modelbay(server, token, store, ids["accept"], args.calls, args.warmup, budget)
    log(f"accept: p50 {accept['p50_ms']:.2f} ms, p99 {accept['p99_ms']:.2f} ms")
    results["accept"] = accept

    baseline = start_baseline(workdir, procs)
    results["accept_baseline"] = accept_baseline(baseline, token, args.calls, args.warmup)
    log(f"baseline accept: p50 {results['accept_baseline']['p50_ms']:.2f} ms")
    log(f"stopping the baseline (exit code {baseline.stop()})")
    procs.remove(baseline)

    results["rss_before_drains"] = process_tree_rss(server.process.pid)  # deployed, accept run done
    results["drains"] = []
    for version in ("drain1", "drain2"):
        budget.check("draining")
        log(f"drain: {args.items:,} items on {version} (maximum_instances {VERSIONS[version]['maximum_instances']})")
        profile = ("gil" if args.profile_gil else "all") if (args.profile or args.profile_gil) else None
        result = drain(
            server,
            token,
            store,
            version,
            ids[version],
            args.items,
            budget,
            reserve_s=25 if version == "drain1" else 20,
            profile=profile if version == "drain1" else None,
            workdir=workdir,
        )
        log(
            f"drain {version}: {result['completed']:,}/{args.items:,} completed in {result['drain_s']:.2f} s "
            f"= {result['items_per_s']:,.0f} items/s; statuses {result['statuses']}"
        )
        results["drains"].append(result)

    budget.check("starting the cold-start runs")
    log(f"cold start: {args.cold_reps} + 1 times, waiting for the worker to go after 1 s idle")
    results["cold_start"] = cold_start(server, token, store, ids["cold"], args.cold_reps, 3, budget)
    results["rss_at_end"] = process_tree_rss(server.process.pid)
    server.remember_children()
    log(f"stopping modelbay (exit code {server.stop()})")
    results["remaining_budget_s"] = budget.left()
    return results


# --- report -----------------------------------------------------------------------------------


def verdicts(results: dict[str, Any]) -> list[str]:
    out = []
    p50 = results["accept"]["p50_ms"]
    out.append(
        f"accept 250: p50 {p50:.1f} ms vs target ≤ {TARGET_ACCEPT_P50_MS:.0f} ms: "
        f"{'met' if p50 <= TARGET_ACCEPT_P50_MS else 'NOT met'}"
    )
    for d in results["drains"]:
        rate = d["items_per_s"] or 0.0
        out.append(
            f"drain, maximum_instances {d['maximum_instances']}: {rate:,.0f} items/s vs target "
            f"≥ {TARGET_DRAIN_ITEMS_S:,.0f}: {'met' if rate >= TARGET_DRAIN_ITEMS_S and d['drained'] else 'NOT met'}"
        )
    cold = results["cold_start"]["cold_p50_ms"]
    out.append(
        f"cold start: p50 {cold:.0f} ms vs target ≤ {TARGET_COLD_START_MS:.0f} ms: "
        f"{'met' if cold <= TARGET_COLD_START_MS else 'NOT met'}"
    )
    return out


def report(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 130)
    m = results["machine"]
    console.print(
        f"\n[bold]modelbay batch requests[/bold] — {m['date']}, {m['cpus']} CPUs ({m['cpu_model']}), "
        f"Python {m['python']}, uvicorn {m['packages']['uvicorn']}, modelbay {m['modelbay_commit']}"
    )
    table = Table(title=f"Batch requests: POST .../requests/batch with {BATCH_SIZE} no-op items")
    for column in ("run", "figure", "modelbay", "baseline (bare uvicorn)", "target"):
        table.add_column(column, justify="left" if column in ("run", "figure") else "right")
    a, b = results["accept"], results["accept_baseline"]
    label = f"accept 250, {a['calls']} calls, queue drained between calls"
    table.add_row(label, "p50 ms", _f(a["p50_ms"]), _f(b["p50_ms"]), f"≤ {TARGET_ACCEPT_P50_MS:.0f}")
    table.add_row("", "p99 ms", _f(a["p99_ms"]), _f(b["p99_ms"]), "")
    table.add_row("", "modelbay / baseline (p50)", f"{a['p50_ms'] / b['p50_ms']:.1f}×", "", "")
    table.add_row(
        "", "then until the 250 were completed (p50)", f"{_f(a['drain_wait_after_call_p50_ms'], 1)} ms", "", ""
    )
    table.add_row("", "batch statuses", json.dumps(a["statuses"]), "", "")
    table.add_row(
        "", "other processes' CPU meanwhile (cores; noise)", _f(a["other_cpu_cores"]), "", "", end_section=True
    )
    for d in results["drains"]:
        run_label = f"drain {d['items']:,} items, maximum_instances {d['maximum_instances']}" + (
            " (under py-spy: slowed)" if d["profiled"] else ""
        )
        table.add_row(
            run_label,
            "items/s, first accept → all completed",
            _f(d["items_per_s"], 0) + ("" if d["drained"] else " (NOT drained in time)"),
            "",
            f"≥ {TARGET_DRAIN_ITEMS_S:,.0f}",
        )
        table.add_row("", "seconds", _f(d["drain_s"]), "", "")
        table.add_row("", "items/s, 20% → 80% completed", _f(d["steady_items_per_s_20_80"], 0), "", "")
        table.add_row(
            "",
            f"fill: {d['calls']} calls back to back",
            f"{d['fill_s']:.2f} s ({d['completed_when_fill_ended']:,} completed by then)",
            "",
            "",
        )
        acc = d["accept_under_load"]
        table.add_row("", "accept during the fill p50 / p99 ms", f"{_f(acc['p50_ms'])} / {_f(acc['p99_ms'])}", "", "")
        table.add_row("", "batch statuses", json.dumps(d["statuses"]), "", "")
        table.add_row(
            "",
            "CPU µs/item: server + workers",
            f"{d['server_cpu_us_per_item']:.0f} + {d['worker_cpu_us_per_item']:.0f}",
            "",
            "",
        )
        threads = ", ".join(f"{name} {us:.0f}" for name, us in d["server_cpu_us_per_item_by_thread"].items() if us >= 5)
        table.add_row("", "server CPU µs/item by thread", threads, "", "")
        table.add_row("", "server CPU use (1.0 = one core)", _f(d["server_cpu_cores"]), "", "")
        table.add_row("", "other processes' CPU meanwhile (cores; noise)", _f(d["other_cpu_cores"]), "", "")
        table.add_row("", "server RSS after", _mib(d["rss_after"]["server_rss_kib"]), "", "", end_section=True)
    c = results["cold_start"]
    table.add_row(
        "direct request, minimum_instances 0, maximum_idle_time 1 s",
        f"cold (worker gone), p50 of {len(c['cold_ms'])}",
        f"{c['cold_p50_ms']:.1f} ms",
        "",
        f"≤ {TARGET_COLD_START_MS:.0f} ms",
    )
    table.add_row("", "cold, each", ", ".join(f"{v:.0f}" for v in c["cold_ms"]) + " ms", "", "")
    table.add_row("", "first start of the version", f"{c['first_ever_ms']:.1f} ms", "", "")
    table.add_row("", f"warm, p50 of {c['warm_requests']}", f"{c['warm_p50_ms']:.2f} ms", "", "")
    table.add_row("", "other processes' CPU meanwhile (cores; noise)", _f(c["other_cpu_cores"]), "", "")
    gone = c["worker_gone_after_last_request_s"]
    table.add_row(
        "",
        "worker gone after last request (s)",
        f"{min(gone):.2f}–{max(gone):.2f}" if gone else "-",
        "",
        "",
        end_section=True,
    )
    table.add_row("memory", "server RSS idle after start-up", _mib(results["rss_idle_after_startup"]["server_rss_kib"]))
    table.add_row(
        "", "server RSS before the drains (4 versions deployed)", _mib(results["rss_before_drains"]["server_rss_kib"])
    )
    for d in results["drains"]:
        table.add_row(
            "", f"server RSS after {d['items']:,} drained ({d['version']})", _mib(d["rss_after"]["server_rss_kib"])
        )
    table.add_row("", "server RSS at the end", _mib(results["rss_at_end"]["server_rss_kib"]))
    console.print(table)
    for line in verdicts(results):
        console.print(f"[bold]{line}[/bold]")
    for d in results["drains"]:
        profile = d.get("profile")
        if not profile:
            continue
        if "error" in profile:
            console.print(f"\nprofile: {profile['error']}")
            continue
        console.print(f"\npy-spy during the drain on {d['version']} (raw stacks in {profile['raw']}):", markup=False)
        for who, key in (("server", "server_samples"), ("workers", "samples")):
            summary = profile[who]
            console.print(f" {who}: {summary[key]} samples", markup=False)
            for title, section, n in (
                ("samples by thread", "threads_pct", 6),
                ("self time by package", "self_by_package_pct", 10),
                ("most self time", "self_pct", 15),
                ("most inclusive time", "inclusive_pct", 30),
            ):
                console.print(f"  {title} (% of {who} samples):")
                for frame, pct in summary[section][:n]:
                    console.print(f"    {pct:5.1f}%  {frame}", markup=False, highlight=False, soft_wrap=True)


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40, help="timed batch creates in the accept run (default 40)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batch creates before them (default 3)")
    parser.add_argument("--items", type=int, default=10_000, help="items per drain run, a multiple of 250")
    parser.add_argument("--cold-reps", type=int, default=5, help="timed cold starts (default 5)")
    parser.add_argument("--budget", type=float, default=140.0, help="seconds the measurements may take (default 140)")
    parser.add_argument("--profile", action="store_true", help="py-spy the server during the first drain")
    parser.add_argument("--profile-gil", action="store_true", help="like --profile, only samples holding the GIL")
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results/*.json")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (server logs)")
    args = parser.parse_args(argv)
    if args.items % BATCH_SIZE or args.items <= 0:
        parser.error(f"--items must be a positive multiple of {BATCH_SIZE}")
    if args.calls < 1 or args.cold_reps < 1:
        parser.error("--calls and --cold-reps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    with bench_run("modelbay-bench-batch-", args.keep) as (workdir, procs):
        results = run(args, workdir, procs)
    results["wall_s"] = time.monotonic() - started
    report(results)
    print(f"\nwhole run: {results['wall_s']:.0f} s")
    if not args.no_json:
        save_results(results, "batch_requests")
    failed = sum(d["statuses"].get("failed", 0) for d in results["drains"]) + results["accept"]["statuses"].get(
        "failed", 0
    )
    drained = all(d["drained"] for d in results["drains"])
    return 0 if failed == 0 and drained else 1


if __name__ == "__main__":
    sys.exit(main())
