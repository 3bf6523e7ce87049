"""Helpers shared by the benchmarks in bench/: processes and /proc, servers we start and stop,
the no-op deployment, py-spy summaries, and what machine a run was on.

Imported as `bench.common` (the scripts put the repository root on `sys.path` when run as files).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"

PROJECT = "bench"
DEPLOYMENT = "noop"

NOOP_DEPLOYMENT = '''
class Deployment:
    """No-op: structured input x:int, output x:int; returns its input."""

    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        return data
'''

STARTUP_DEADLINE_S = 60.0
STOP_GRACE_S = 30.0


# --- small helpers ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(math.ceil(q / 100.0 * len(sorted_values)), 1)
    return sorted_values[rank - 1]


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB (None when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The comm field is in parentheses and may hold spaces; fields after the last ')' are fixed.
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def descendants(root: int) -> list[int]:
    """Every live descendant of `root`, found by walking /proc for PPid links."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ppid = _ppid(int(entry))
            if ppid is not None:
                parents.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return sorted(found)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def system_busy_seconds() -> float:
    """CPU seconds all processes on the machine have used (user + nice + system, all cores), from /proc/stat.

    Interrupt time (loopback networking's softirqs among it) and steal are left out: they belong to no process."""
    user, nice, system = (int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:4])
    return (user + nice + system) / CLOCK_TICKS


def steal_seconds() -> float:
    """CPU seconds the hypervisor took from this machine (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / CLOCK_TICKS if len(fields) > 8 else 0.0


def all_process_cpu() -> dict[int, tuple[str, float]]:
    """pid -> (command name, CPU seconds so far) for every process now running."""
    out: dict[int, tuple[str, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                comm = stat[stat.index("(") + 1 : stat.rindex(")")]
                out[int(entry)] = (comm, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return out


def postgres_cpu_seconds() -> float:
    """CPU seconds PostgreSQL's processes have used so far (0 with the store on SQLite)."""
    return sum(cpu for name, cpu in all_process_cpu().values() if name.startswith("postgres"))


def segments_to_port(port: int) -> int:
    """TCP segments sent so far to `port` on loopback over the connections open now (`ss`'s
    `segs_out`). To PostgreSQL: about one per statement or commit its clients sent. 0 when `ss`
    (iproute2) is missing."""
    if shutil.which("ss") is None:
        return 0
    listed = subprocess.run(["ss", "-tinH", "state", "established", f"dport = :{port}"],
                            capture_output=True, text=True, check=False).stdout
    return sum(int(found) for found in re.findall(r"\bsegs_out:(\d+)", listed))


def top_others(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], ours: set[int], elapsed: float
) -> list[str]:
    """The busiest processes other than ours between two snapshots (those still running), in cores."""
    used = []
    for pid, (comm, cpu) in after.items():
        if pid in ours:
            continue
        delta = cpu - before.get(pid, (comm, 0.0))[1]
        if delta / elapsed >= 0.02:
            used.append((delta / elapsed, f"{comm}[{pid}] {delta / elapsed:.2f}"))
    return [text for _, text in sorted(used, reverse=True)[:5]]


def tree_cpu(root: int) -> dict[str, float]:
    return {"server": cpu_seconds(root), "workers": sum(cpu_seconds(pid) for pid in descendants(root))}


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return "?"
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)


def process_tree_rss(root: int) -> dict[str, Any]:
    """RSS of `root` and of each of its descendants (the worker processes, for modelbay)."""
    children = []
    for pid in descendants(root):
        rss = rss_kib(pid)
        if rss is not None:
            children.append({"pid": pid, "rss_kib": rss, "cmd": cmdline(pid)[:160]})
    return {
        "server_rss_kib": rss_kib(root),
        "children": children,
        "children_rss_kib": sum(child["rss_kib"] for child in children),
    }


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- servers ---------------------------------------------------------------------------------


@dataclass
class Proc:
    """A server we started: stopped with SIGTERM then SIGKILL, its leftover descendants killed by pid."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    known_children: dict[int, str] = field(default_factory=dict)  # pid -> start time, against pid reuse

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def remember_children(self) -> None:
        for pid in descendants(self.process.pid):
            started = _start_time(pid)
            if started is not None:
                self.known_children[pid] = started

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.remember_children()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not stop within {STOP_GRACE_S:.0f} s of SIGTERM; killing it")
                self.process.kill()
                self.process.wait()
        # Workers should be gone with their server; any that are not get killed, by pid.
        deadline = time.monotonic() + 5
        for pid, started in sorted(self.known_children.items()):
            while _alive_child_of_ours(pid, started) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive_child_of_ours(pid, started):
                log(f"{self.name}: leftover process {pid} still running; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return self.process.returncode


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]


def _alive_child_of_ours(pid: int, started: str) -> bool:
    """The same process (pid and start time) is still running and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19] == started and fields[0] != "Z"


def start_process(
    name: str,
    argv: list[str],
    workdir: Path,
    port: int,
    health_path: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    deadline_s: float = STARTUP_DEADLINE_S,
) -> Proc:
    """Start `argv` (its output in `workdir/<name>.log`) and wait until `health_path` answers 200."""
    log_path = workdir / f"{name}.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    proc = Proc(name, process, port, log_path)
    deadline = time.monotonic() + deadline_s
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{proc.url}{health_path}", timeout=1).status_code == 200:
                    return proc
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not become healthy within {deadline_s:.0f} s")
            time.sleep(0.05)
    except BaseException:
        proc.stop()
        raise


# --- requests --------------------------------------------------------------------------------


def request_path(project: str, deployment: str) -> str:
    return f"/v2.1/projects/{project}/deployments/{deployment}/requests"


def headers_for(token: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": f"Token {token}"}


def post_once(port: int, path: str, token: str, body: bytes = b'{"x": 1}') -> tuple[int, Any, float]:
    """One POST on a fresh connection: (status, parsed body, ms)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        start = time.perf_counter()
        conn.request("POST", path, body, headers_for(token))
        response = conn.getresponse()
        raw = response.read()
        elapsed_ms = (time.perf_counter() - start) * 1000
    finally:
        conn.close()
    return response.status, json.loads(raw), elapsed_ms


# --- modelbay and the baseline ------------------------------------------------------------------


def start_modelbay(
    workdir: Path, procs: list[Proc], name: str = "modelbay", env: dict[str, str] | None = None
) -> tuple[Proc, str, Path]:
    """`modelbay serve` on a free port with its data in `workdir/data`, and project `bench` made
    with the CLI: (server, project token, data dir). The server is appended to `procs` at once.
    `env` is added to this process's environment for the server and the CLI (e.g. `MODELBAY_SANDBOX`,
    `MODELBAY_DATABASE_URL`)."""
    data_dir = workdir / "data"
    port = free_port()
    log(f"starting {name} on 127.0.0.1:{port} (data in {data_dir})")
    server = start_process(
        name,
        [sys.executable, "-m", "modelbay.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)],
        workdir,
        port,
        "/health",
        env=dict(os.environ) | (env or {}),
    )
    procs.append(server)
    created = subprocess.run(
        [sys.executable, "-m", "modelbay.cli", "project", "create", PROJECT, "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ) | (env or {}),
    )
    if created.returncode != 0:
        raise RuntimeError(f"project create failed: {created.stderr}")
    return server, json.loads(created.stdout)["token"], data_dir


_POSTGRES_READERS: dict[str, Any] = {}


def read_store(store: Path | str, sql: str) -> Any:
    """The first column of the first row `sql` reads from a server's store: its SQLite file (read-only,
    while the server runs), or a PostgreSQL database by its URL."""
    if isinstance(store, str):
        conn = _POSTGRES_READERS.get(store)
        if conn is None:  # one connection per database for the run: polls read many times a second
            import psycopg

            conn = _POSTGRES_READERS[store] = psycopg.connect(
                store.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
        row = conn.execute(sql).fetchone()
    else:
        with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as conn:
            row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


#: A database that survives a crash of the machine, as a user's would (the tests' cluster does not);
#: a commit does not wait for its log to reach the disk, as SQLite's does not in WAL mode with
#: synchronous=NORMAL (a crash may lose the last commits, never the database).
POSTGRES_SETTINGS = {"fsync": "on", "full_page_writes": "on", "autovacuum": "on", "synchronous_commit": "off"}


def start_postgres() -> Any:
    """A PostgreSQL of the run's own, with `POSTGRES_SETTINGS`, in a temporary directory (stop it after)."""
    from tests.fixtures.postgres import Cluster

    log("starting PostgreSQL")
    return Cluster(POSTGRES_SETTINGS).start()


def bench_venv(venv: Path, *requirements: str) -> Path:
    """The Python of a virtualenv of the benchmarks' own (under `.venv-bench/`, git-ignored), made
    with `requirements` installed on first use and again when they change: a peer's packages never
    meet modelbay's."""
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    wanted = " ".join(requirements)
    if not marker.exists() or marker.read_text().strip() != wanted:
        log(f"installing {wanted} into {venv}")
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], check=True)
        marker.write_text(wanted + "\n")
    return python


def start_baseline(workdir: Path, procs: list[Proc], app: str = "bench.baseline_app:app",
                   name: str = "baseline") -> Proc:
    """bench/baseline_app.py (or another `app` of bench/) under uvicorn (one process, same options as
    modelbay's server)."""
    port = free_port()
    log(f"starting {name} ({app} under uvicorn) on 127.0.0.1:{port}")
    baseline = start_process(
        name,
        [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
            "--app-dir",
            str(ROOT),
        ],
        workdir,
        port,
        "/health",
        env=dict(os.environ),
        cwd=ROOT,
    )
    procs.append(baseline)
    return baseline


@contextlib.contextmanager
def ubiops_api(url: str, token: str) -> Iterator[Any]:
    """The official `ubiops` SDK's CoreApi against a modelbay server."""
    import ubiops

    configuration = ubiops.Configuration(host=f"{url}/v2.1", api_key={"Authorization": f"Token {token}"})
    client = ubiops.ApiClient(configuration)
    try:
        yield ubiops.CoreApi(client)
    finally:
        client.close()


def create_noop_deployment(api: Any) -> None:
    """The structured no-op deployment (input `x: int`, output `x: int`), with the SDK."""
    import ubiops

    fields = [{"name": "x", "data_type": "int"}]
    api.deployments_create(
        PROJECT,
        ubiops.DeploymentCreate(
            name=DEPLOYMENT,
            input_type="structured",
            output_type="structured",
            input_fields=fields,
            output_fields=fields,
        ),
    )


def create_noop_version(
    api: Any,
    workdir: Path,
    version: str,
    poll_s: float,
    deadline_s: float = 300.0,
    source: str = NOOP_DEPLOYMENT,
    **settings: Any,
) -> dict[str, Any]:
    """Create a version of the no-op deployment (SDK `DeploymentVersionCreate` settings), upload
    the package made by `ubiops.utils.zip_dir` (its `deployment.py` is `source`, by default the
    no-op), and poll until it is `available` (for up to `deadline_s` from the upload); timed."""
    import ubiops

    created = api.deployment_versions_create(
        PROJECT, DEPLOYMENT, ubiops.DeploymentVersionCreate(version=version, **settings)
    )
    package = workdir / f"package-{version}" / "src"
    package.mkdir(parents=True)
    (package / "deployment.py").write_text(textwrap.dedent(source))
    (package / "requirements.txt").write_text("")
    archive = ubiops.utils.zip_dir(str(package), str(package.parent / "noop.zip"))

    start = time.perf_counter()
    api.revisions_file_upload(PROJECT, DEPLOYMENT, version, file=archive)
    upload_returned = time.perf_counter()
    deadline = start + deadline_s
    polls = 0
    while True:
        status = api.deployment_versions_get(PROJECT, DEPLOYMENT, version).status
        polls += 1
        if status == "available":
            break
        if status not in ("building", "unavailable", "initialising", "processing"):
            raise RuntimeError(f"version ended up {status!r}; see the server log")
        if time.perf_counter() > deadline:
            raise RuntimeError(f"version did not become available within {deadline_s:.0f} s")
        time.sleep(poll_s)
    available = time.perf_counter()
    return {
        "version_id": getattr(created, "id", None),
        "upload_call_ms": (upload_returned - start) * 1000,
        "upload_to_available_ms": (available - start) * 1000,
        "status_polls": polls,
    }


# --- py-spy summaries -------------------------------------------------------------------------


_FRAME_FILE = re.compile(r"\((.*):\d+\)$")
_ROOT_FRAMES = (
    "threading.py",
    "<frozen runpy>",
    "typer/",
    "click/",
    "uvicorn/main.py",
    "uvicorn/server.py",
    "uvicorn/_compat.py",
    "asyncio/runners.py",
    "modelbay/cli.py",
    "concurrent/futures/thread.py",
)


def _package(frame: str) -> str:
    match = _FRAME_FILE.search(frame)
    path = match.group(1) if match else ""
    return path.split("/", 1)[0] if "/" in path else "stdlib/native"


def summarize_profile(raw: str, top: int = 20, which: str = "server") -> dict[str, Any]:
    """From py-spy's collapsed stacks: samples per thread, self time per package, and inclusive
    time of the request path's frames. `which` is "server" (the worker processes' samples left
    out) or "workers" (only theirs)."""
    per_thread: dict[str, int] = {}
    self_frame: dict[str, int] = {}
    self_package: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        in_worker = any(f.startswith("process ") and "worker.py" in f for f in frames)
        if in_worker != (which == "workers"):
            continue  # with "server", the worker's own samples: not the server's request path
        thread = next((f.split(": ", 1)[-1] for f in frames if f.startswith("thread (")), "?")
        frames = [f for f in frames if not f.startswith(("process ", "thread ("))]
        if not frames:
            continue
        count = int(count_text)
        total += count
        per_thread[thread] = per_thread.get(thread, 0) + count
        leaf = f"[{thread}] {frames[-1]}"
        self_frame[leaf] = self_frame.get(leaf, 0) + count
        package = f"[{thread}] {_package(frames[-1])}"
        self_package[package] = self_package.get(package, 0) + count
        for frame in set(frames):
            if not any(root in frame for root in _ROOT_FRAMES):
                key = f"[{thread}] {frame}"
                inclusive[key] = inclusive.get(key, 0) + count

    def ranked(counts: dict[str, int], n: int = top) -> list[tuple[str, float]]:
        ordered = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
        return [(key, round(100 * value / max(total, 1), 1)) for key, value in ordered]

    return {
        "server_samples" if which == "server" else "samples": total,
        "threads_pct": ranked(per_thread),
        "self_by_package_pct": ranked(self_package),
        "self_pct": ranked(self_frame),
        "inclusive_pct": ranked(inclusive, 40),
    }


# --- the machine and formatting ---------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "-"

    wrk_version = ""
    if shutil.which("wrk"):
        done = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        text = (done.stdout or done.stderr).strip()
        wrk_version = text.splitlines()[0].split(" Copyright")[0].strip() if text else ""
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "modelbay"], capture_output=True, text=True
        )
        commit = head.stdout.strip() + ("+uncommitted changes in modelbay/" if dirty.stdout.strip() else "")
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "modelbay_commit": commit,
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": {
            name: version(name) for name in ("modelbay", "uvicorn", "uvloop", "httptools", "fastapi", "ubiops")
        },
        "wrk": wrk_version,
    }


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f} MiB"


def _on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def bench_run(prefix: str, keep: bool) -> Iterator[tuple[Path, list[Proc]]]:
    """A temporary directory and the list of processes a run starts in it. When the run fails, the
    tail of each process's log is printed; in any case (SIGTERM included) every process is stopped
    and the directory removed, unless `keep`."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    procs: list[Proc] = []
    try:
        yield workdir, procs
    except BaseException:
        for proc in procs:
            with contextlib.suppress(Exception):
                print(f"--- last lines of the {proc.name} log ---", file=sys.stderr)
                print(proc.log_path.read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(Exception):
                proc.stop()
        if keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def save_results(results: dict[str, Any], name: str) -> None:
    """Write a run's figures to `bench/results/<name>-<time>.json` (git-ignored)."""
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nJSON: {out.relative_to(ROOT)}")
