"""Benchmark: the batch re-run window. How long before a `kill -9` may a batch item's code have ended
and still run again after the restart?

Run `.venv/bin/python bench/rerun_window.py`; see bench/README.md ("Batch re-run window").

Each round: one direct request (the instance is warm), then 4 batch creates of 250 items back to
back on a deployment whose code returns at once; SIGKILL the server `delay` ms after the last 201
(the rounds spread `delay` evenly over 0–250 ms); read which items the store held as finished at the
kill; restart the server on the same data and wait until every item is finished. The code sends one
UDP datagram `<request id> <wall time>` to a recorder in this script as it ends (so the measure
needs nothing of the code but the network, as a sandboxed instance has), which tells how many times
each item ran and when. An item that ran before the kill and again after it was re-run; its
**age** is the time from the end of its first run to the kill. The re-run window is the largest
age seen. An item the store held as finished at the kill must never run again.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `bench.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    DEPLOYMENT,
    PROJECT,
    Proc,
    bench_run,
    create_noop_deployment,
    create_noop_version,
    free_port,
    headers_for,
    log,
    machine,
    percentile,
    post_once,
    save_results,
    start_modelbay,
    start_process,
    ubiops_api,
)

BATCH_SIZE = 250
CALLS = 4
MAX_DELAY_MS = 250.0
FINISHED = ("completed", "failed", "cancelled")
RECOVERY_DEADLINE_S = 60.0

#: The no-op deployment (x: int in and out) that reports the end of its code to the recorder.
REPORTING_DEPLOYMENT = '''
import socket
import time

RECORDER = ("127.0.0.1", {port})


class Deployment:
    def __init__(self, base_directory, context):
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def request(self, data, context):
        self._socket.sendto(("%s %r" % (context["id"], time.time())).encode(), RECORDER)
        return data
'''


class Recorder:
    """Receives `<request id> <wall time>` datagrams on 127.0.0.1: when each run of an item ended."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(0.1)
        self.port = int(self._socket.getsockname()[1])
        self.received = 0
        self._runs: dict[str, list[float]] = defaultdict(list)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="recorder", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stopped.is_set():
            try:
                datagram = self._socket.recv(512)
            except TimeoutError:
                continue
            request_id, ended = datagram.decode().split()
            with self._lock:
                self._runs[request_id].append(float(ended))
                self.received += 1

    def runs(self, ids: list[str]) -> dict[str, list[float]]:
        with self._lock:
            return {i: sorted(self._runs.get(i, [])) for i in ids}

    def settle(self, quiet_s: float = 0.3) -> None:
        """Wait until no datagram has come for `quiet_s`."""
        seen = -1
        while seen != self.received:
            seen = self.received
            time.sleep(quiet_s)

    def close(self) -> None:
        self._stopped.set()
        self._thread.join()
        self._socket.close()


def serve(workdir: Path, data_dir: Path, procs: list[Proc]) -> Proc:
    """`modelbay serve` on `data_dir` (made by `start_modelbay`), appended to `procs`."""
    port = free_port()
    server = start_process(
        f"modelbay-{len(procs)}",
        [sys.executable, "-m", "modelbay.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)],
        workdir,
        port,
        "/health",
        env=dict(os.environ),
    )
    procs.append(server)
    return server


def statuses(data_dir: Path, ids: list[str]) -> dict[str, str]:
    """The stored status of each of `ids`, read read-only with the stdlib."""
    conn = sqlite3.connect(f"file:{data_dir / 'modelbay.db'}?mode=ro", uri=True, timeout=10)
    try:
        found: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(conn.execute(f"SELECT id, status FROM requests WHERE id IN ({marks})", chunk).fetchall())
        return found
    finally:
        conn.close()


def kill(server: Proc) -> float:
    """SIGKILL the server (its workers, orphaned, are ended by pid too); returns the wall time of the kill."""
    server.remember_children()
    killed_at = time.time()
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    server.stop()  # only ends the leftover workers now
    return killed_at


def one_round(
    server: Proc, token: str, data_dir: Path, workdir: Path, procs: list[Proc], recorder: Recorder, delay_s: float
) -> tuple[dict[str, Any], Proc]:
    path = f"/v2.1/projects/{PROJECT}/deployments/{DEPLOYMENT}/requests"
    status, body, _ = post_once(server.port, path, token)  # the instance is up: the items run at once
    assert status == 200 and body["status"] == "completed", body
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    ids: list[str] = []
    try:
        for call in range(CALLS):
            items = [{"x": call * BATCH_SIZE + i} for i in range(BATCH_SIZE)]
            conn.request("POST", f"{path}/batch", json.dumps(items).encode(), headers_for(token))
            response = conn.getresponse()
            created = json.loads(response.read())
            assert response.status == 201, created
            ids += [item["id"] for item in created]
    finally:
        conn.close()
    time.sleep(delay_s)
    killed_at = kill(server)
    at_kill = statuses(data_dir, ids)
    server = serve(workdir, data_dir, procs)
    deadline = time.monotonic() + RECOVERY_DEADLINE_S
    while not all(s in FINISHED for s in statuses(data_dir, ids).values()):
        if time.monotonic() > deadline:
            raise RuntimeError("the restarted server did not finish every item in time")
        time.sleep(0.05)
    recorder.settle()
    after = statuses(data_dir, ids)
    runs = recorder.runs(ids)
    reran = [i for i in ids if len(runs[i]) > 1]
    ages_ms = sorted((killed_at - runs[i][0]) * 1000 for i in reran)
    finished_at_kill = [i for i in ids if at_kill[i] in FINISHED]
    ran_before_kill = [i for i in ids if runs[i] and runs[i][0] < killed_at]
    return {
        "delay_ms": delay_s * 1000,
        "items": len(ids),
        "ran_before_kill": len(ran_before_kill),
        "finished_in_store_at_kill": len(finished_at_kill),
        "ran_but_not_finished_at_kill": len([i for i in ran_before_kill if at_kill[i] not in FINISHED]),
        "status_at_kill": _count(at_kill.values()),
        "status_after_restart": _count(after.values()),
        "reran": len(reran),
        "reran_after_finished_in_store": len([i for i in finished_at_kill if len(runs[i]) > 1]),
        "ran_more_than_twice": len([i for i in ids if len(runs[i]) > 2]),
        "never_ran": len([i for i in ids if not runs[i] and after[i] == "completed"]),
        "window_ms": ages_ms[-1] if ages_ms else 0.0,
        "reran_age_p50_ms": percentile(ages_ms, 50) if ages_ms else 0.0,
    }, server


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for value in values:
        counts[value] += 1
    return dict(sorted(counts.items()))


def run(args: argparse.Namespace, workdir: Path, procs: list[Proc], recorder: Recorder) -> dict[str, Any]:
    server, token, data_dir = start_modelbay(workdir, procs)
    with ubiops_api(server.url, token) as api:
        create_noop_deployment(api)
        create_noop_version(
            api, workdir, "v1", 0.01, source=REPORTING_DEPLOYMENT.format(port=recorder.port), maximum_instances=1
        )
    rounds = []
    for index in range(args.rounds):
        delay_s = MAX_DELAY_MS / 1000 * index / max(args.rounds - 1, 1)
        result, server = one_round(server, token, data_dir, workdir, procs, recorder, delay_s)
        rounds.append(result)
        log(
            f"round {index + 1}: kill {result['delay_ms']:.0f} ms after the last 201; "
            f"{result['ran_before_kill']} ran, {result['finished_in_store_at_kill']} finished in the store, "
            f"{result['reran']} ran again (oldest ended {result['window_ms']:.1f} ms before the kill); "
            f"at the kill {result['status_at_kill']}, after {result['status_after_restart']}"
        )
    windows = sorted(r["window_ms"] for r in rounds)
    return {
        "machine": machine(),
        "rounds": rounds,
        "window_ms_max": windows[-1],
        "window_ms_p50_of_rounds": percentile(windows, 50),
        "reran_total": sum(r["reran"] for r in rounds),
        "reran_after_finished_in_store_total": sum(r["reran_after_finished_in_store"] for r in rounds),
        "ran_more_than_twice_total": sum(r["ran_more_than_twice"] for r in rounds),
        "never_ran_total": sum(r["never_ran"] for r in rounds),
    }


def report(results: dict[str, Any]) -> None:
    print(f"\n{'delay ms':>9} {'ran':>5} {'finished':>9} {'ran, not finished':>18} {'re-ran':>7} {'window ms':>10}")
    for r in results["rounds"]:
        print(
            f"{r['delay_ms']:9.0f} {r['ran_before_kill']:5d} {r['finished_in_store_at_kill']:9d} "
            f"{r['ran_but_not_finished_at_kill']:18d} {r['reran']:7d} {r['window_ms']:10.1f}"
        )
    print(
        f"\nre-run window under load: {results['window_ms_max']:.1f} ms at most "
        f"(p50 of the rounds' largest {results['window_ms_p50_of_rounds']:.1f} ms); "
        f"{results['reran_total']} items ran twice, {results['ran_more_than_twice_total']} more than twice, "
        f"{results['reran_after_finished_in_store_total']} ran again after their result was committed, "
        f"{results['never_ran_total']} completed without running"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="kills (default 10)")
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results/*.json")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (server logs)")
    args = parser.parse_args(argv)
    recorder = Recorder()
    try:
        with bench_run("modelbay-bench-rerun-", args.keep) as (workdir, procs):
            results = run(args, workdir, procs, recorder)
    finally:
        recorder.close()
    report(results)
    if not args.no_json:
        save_results(results, "rerun_window")
    bad = results["reran_after_finished_in_store_total"] + results["never_ran_total"]
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
