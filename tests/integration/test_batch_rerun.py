"""Which batch items run again after the server is killed with SIGKILL, and how long before the kill
their code may have ended (the re-run window).

The deployment reports the end of every run of its code in one UDP datagram `<request id> <wall
time>` to a recorder in the test: all the code needs is the network, which a sandboxed instance
keeps. The store is read read-only with the stdlib, as in the other integration tests.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from modelbay.core.requests import MAX_UNCOMMITTED_RESULTS, MAX_UNCOMMITTED_RESULTS_POSTGRESQL
from modelbay.core.scheduler import QUICK_BATCH_DEPTH_FACTOR
from modelbay.settings import Settings
from tests.fixtures.server import Server, wait_until
from tests.fixtures.databases import database_url_for
from tests.integration.conftest import deploy, ubiops, writes_stalled
from tests.integration.test_batch_queue import all_terminal, batch, direct, rows, statuses

#: Structured deployment (field `x`, int): sleeps `x` milliseconds, reports its end, echoes its input.
REPORTS_ITS_END = """
import socket
import time

RECORDER = ("127.0.0.1", {port})


class Deployment:
    def __init__(self, base_directory, context):
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def request(self, data, context):
        time.sleep(data["x"] / 1000)
        self._socket.sendto(("%s %r" % (context["id"], time.time())).encode(), RECORDER)
        return data
"""

RECOVERY_DEADLINE_S = 60.0


class Recorder:
    """Collects the datagrams: request id -> wall times at which a run of its code ended."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(0.05)
        self.port = int(self._socket.getsockname()[1])
        self.received = 0
        self._ends: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                request_id, ended = self._socket.recv(512).decode().split()
            except TimeoutError:
                continue
            with self._lock:
                self._ends.setdefault(request_id, []).append(float(ended))
                self.received += 1

    def ends(self, request_id: str) -> list[float]:
        with self._lock:
            return sorted(self._ends.get(request_id, []))

    def settled(self, quiet_s: float = 0.5) -> int:
        """Wait until no run has ended for `quiet_s`; returns how many runs ended in all."""
        seen = -1
        while seen != self.received:
            seen = self.received
            time.sleep(quiet_s)  # what is awaited is an absence: no poll can tell it sooner
        return seen

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._socket.close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    found = Recorder()
    yield found
    found.close()


def deploy_reporter(server: Server, recorder: Recorder) -> httpx.Client:
    """Project `rerun` with deployment `reporter` (one instance, already started); a client of it."""
    credentials = server.create_project("rerun")
    with ubiops(server, credentials["token"]) as client:
        deploy(client, "rerun", "reporter", REPORTS_ITS_END.format(port=recorder.port), plain=False,
               maximum_instances=1)
        warm = direct(client, "rerun", "reporter", {"x": 0})
        assert warm.status_code == 200 and warm.json()["status"] == "completed", warm.text
    return ubiops(server, credentials["token"])


def uncommitted_bound(server: Server) -> int:
    """Most batch results the server lets wait for their commit, on its store."""
    return MAX_UNCOMMITTED_RESULTS if database_url_for(server.data_dir) is None else MAX_UNCOMMITTED_RESULTS_POSTGRESQL


def kill(server: Server, own_server: Callable[..., Server]) -> float:
    """SIGKILL the server; returns the wall time just before. Its orphaned worker is ended by the fixture."""
    own_server.remember_children()  # type: ignore[attr-defined]
    killed_at = time.time()
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    return killed_at


def test_results_not_yet_committed_are_bounded_and_only_those_run_again_after_a_kill(
    own_server: Callable[..., Server], recorder: Recorder
) -> None:
    first = own_server()
    with deploy_reporter(first, recorder) as client:
        # One item of 1 s, then quick ones queued behind it.
        ids = batch(client, "rerun", "reporter", [{"x": 1000}] + [{"x": 0}] * 249)
    # Once the long item's start is committed, the store stops committing (another connection
    # holds its write lock), as a starved or stalled committer would: the queue must not run
    # further ahead of it than the bound (the server, alone, claimed the items as it stored them).
    wait_until(lambda: statuses(first.data_dir, ids)[0] == "processing", timeout=30)
    with writes_stalled(first.data_dir):
        wait_until(lambda: recorder.ends(ids[0]), timeout=30)
        recorder.settled()
        ran = [i for i in ids if recorder.ends(i)]
        # + the calls its one instance holds: the one running and those waiting in it.
        assert 1 < len(ran) <= uncommitted_bound(first) + Settings().instance_call_depth, len(ran)
        kill(first, own_server)
    assert set(statuses(first.data_dir, ids)) <= {"pending", "processing"}  # nothing of them was committed

    second = own_server(first.data_dir)

    wait_until(lambda: all_terminal(second.data_dir, ids), timeout=RECOVERY_DEADLINE_S, interval=0.05)
    recorder.settled()
    found = rows(second.data_dir, ids)
    for request_id in ids:
        if found[request_id]["status"] == "failed":  # only the 1 s item, if its claim was committed in time
            assert request_id == ids[0] and "server stopped" in str(found[request_id]["error_message"])
            assert len(recorder.ends(request_id)) == 1
        else:
            assert found[request_id]["status"] == "completed", found[request_id]
            assert len(recorder.ends(request_id)) == (2 if request_id in ran else 1), request_id


def test_under_load_a_kill_reruns_only_results_not_yet_committed(
    own_server: Callable[..., Server], recorder: Recorder
) -> None:
    first = own_server()
    with deploy_reporter(first, recorder) as client:
        ids: list[str] = []
        # 8 x 250 items of 1 ms back to back: once 500 have completed, plenty are left for the kill
        # to land in the middle of the drain (some 2 s long), however fast the machine drains them
        # and however slowly a busy one polls their statuses.
        for _ in range(8):
            ids += batch(client, "rerun", "reporter", [{"x": 1}] * 250)
    # Killed in the middle of the drain: some results committed, some ended but not yet.
    wait_until(lambda: statuses(first.data_dir, ids).count("completed") >= 500, timeout=30, interval=0.002)
    killed_at = kill(first, own_server)
    at_kill = rows(first.data_dir, ids)
    committed = [i for i in ids if at_kill[i]["status"] == "completed"]
    assert len(committed) < len(ids), "the drain ended before the kill: nothing to measure"

    second = own_server(first.data_dir)

    wait_until(lambda: all_terminal(second.data_dir, ids), timeout=RECOVERY_DEADLINE_S, interval=0.05)
    recorder.settled()
    assert statuses(second.data_dir, ids) == ["completed"] * len(ids)
    assert [len(recorder.ends(i)) for i in committed] == [1] * len(committed)  # committed: never again
    reran = {i: recorder.ends(i) for i in ids if len(recorder.ends(i)) > 1}
    assert all(len(ends) == 2 for ends in reran.values()), reran
    # The window: how long before the kill the code of an item that ran again had ended.
    window_ms = max(((killed_at - ends[0]) * 1000 for ends in reran.values()), default=0.0)
    print(f"{len(reran)} of {len(ids)} ran again; the oldest had ended {window_ms:.1f} ms before the kill")
    # At most the results waiting for their commit, and the calls its one instance held: the one
    # running and those it had answered, unread, or had waiting (quick batch calls: more of them).
    held = Settings().instance_call_depth * QUICK_BATCH_DEPTH_FACTOR
    assert len(reran) <= uncommitted_bound(first) + held, (len(reran), window_ms)
