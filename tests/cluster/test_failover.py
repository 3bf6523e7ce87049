"""kill -9 of one node of three while batch items, runs and a batch job are all under way: nothing is
lost or left stuck, no code runs again once its result was committed, and each webhook arrives once
unless the dead node was making it when it died."""

from __future__ import annotations

import concurrent.futures
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from modelbay.core.deliveries import MAX_HANDED, MAX_IN_FLIGHT, MAX_SETTLING
from modelbay.core.job_items import ITEMS_IN_FLIGHT_PER_INSTANCE
from modelbay.core.stored_requests import MAX_BATCH
from modelbay.dialects.abeja.ids import core_run_id
from tests.fixtures.cluster import Cluster
from tests.cluster.test_batch_requests import submit
from tests.compat.datature.conftest import make_dataset, nexus_project, webhook_spec
from tests.compat.datature.receiver import running_receiver
from tests.fixtures.abeja_apps import deploy_handler
from tests.fixtures.databases import database_url_for
from tests.fixtures.server import Server, wait_until
from tests.integration.conftest import deploy, descendants, kill_leftovers, ubiops

pytestmark = pytest.mark.postgresql_only("a cluster is several servers on one PostgreSQL")

BATCH_ITEMS = 10_000
RUNS = 200
JOB_ITEMS = 2_000

#: Instances of each deployment the cluster may run (two cores run three nodes and their workers).
BATCH_INSTANCES, RUN_INSTANCES, JOB_INSTANCES = 3, 6, 2

#: How long a run's code takes: long enough that the victim is likely running some when it is killed.
RUN_MS = 400

#: How long the kill waits for a moment the victim runs runs: the other nodes claim them first
#: when it is the busiest (it runs the job), and under a heavy load it may run none at all.
WAIT_FOR_ITS_RUNS_S = 10.0

#: The lease of these nodes, the default one: on a busy 2-core machine three busy nodes missed their
#: heartbeats for 2 s, and under a load of 30 for 5 s (declared dead while alive: not this test's case).
LEASE_S = 10.0

#: How long after the lease the survivors may take to hold all the dead node's work: the recovery
#: pass runs every fifth of the lease, the claim of its job every 2 s, on a busy machine.
STUCK_MARGIN_S = 6.0

#: The batch and job items' code: waits for the gate, then appends the time it runs to a file
#: named by its item's `x`.
MARKS_ITEMS = '''
import os
import time


class Deployment:
    def __init__(self, base_directory, context):
        self.where = base_directory  # under the data directory of the node whose instance this is

    def request(self, data):
        while not os.path.exists({gate!r}):
            time.sleep(0.005)
        with open(os.path.join({marks!r}, str(data["x"])), "a") as marks:
            marks.write(f"{{time.time()}} {{self.where}}\\n")
        return dict(data)
'''

#: The runs' handler: the same, named by the run's MARK variable, and it takes `ms` milliseconds.
MARKS_RUNS = '''
import os
import time


def handler(request, context):
    while not os.path.exists({gate!r}):
        time.sleep(0.005)
    with open(os.path.join({marks!r}, os.environ["MARK"]), "a") as marks:
        marks.write(f"{{time.time()}}\\n")
    time.sleep({ms} / 1000)
    return {{"status_code": 200, "content_type": "text/plain", "content": "done"}}
'''

#: The receiver listens on loopback, which webhooks may reach only when allowed.
NODE_ENV = {"MODELBAY_NODE_LEASE_S": str(LEASE_S), "MODELBAY_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true"}

#: The statuses of work not ended yet, by table.
UNFINISHED = {
    "requests": ("pending", "processing", "cancelled_pending"),
    "runs": ("submitted", "pending", "runnable", "starting", "running"),
    "jobs": ("scheduled", "running"),
    "deliveries": ("pending",),
}


@dataclass
class Unit:
    """One batch item, run, job item or delivery as the store has it: `ended` is when its end was
    written (its result committed), as seconds since the epoch."""

    status: str
    owner: str | None
    ended: float | None


@dataclass
class Store:
    """The test's work in the cluster's store, read at one instant."""

    items: dict[str, Unit]  # batch request id ->
    runs: dict[str, Unit]  # run id ->
    job: Unit
    job_items: dict[int, Unit]  # item index -> its log entry (the record that its outcome is committed)
    deliveries: dict[int, Unit]  # item index -> its delivery
    nodes: dict[str, tuple[str, str | None]]  # node id -> (name, how it ended)


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))


def read_store(url: str, job_id: str) -> Store:
    """Everything at one instant: one repeatable-read transaction."""
    with connect(url) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ

        def units(sql: str, *params: str) -> dict[str, Unit]:
            return {key: Unit(*rest) for key, *rest in conn.execute(sql, params)}

        items = units("SELECT r.id, r.status, r.owner, extract(epoch FROM r.finished_at)::float FROM requests r"
                      " JOIN deployments d ON d.id = r.deployment_id WHERE d.name = 'counter'")
        runs = units("SELECT id, status, owner, extract(epoch FROM modified_at)::float FROM runs")
        (job,) = units("SELECT id, status, owner, NULL::float FROM jobs WHERE id = %s", job_id).values()
        # A log entry's time is the millisecond its outcome was known in, floored: a no-op item can
        # begin in that same millisecond, so its end is taken as the millisecond's end.
        job_items = units("SELECT item_index, status, NULL, (created_ms + 1) / 1000.0 FROM job_logs"
                          " WHERE job_id = %s AND item_index IS NOT NULL", job_id)
        deliveries = units("SELECT item_index, status, owner, extract(epoch FROM finished_at)::float"
                           " FROM deliveries WHERE job_id = %s", job_id)
        nodes = {node: (name, end) for node, name, end in conn.execute('SELECT id, name, "end" FROM nodes')}
    return Store(items, runs, job, job_items, deliveries, nodes)


def progress(url: str, job_id: str, node_pid: int) -> dict[str, int]:
    """Batch items completed, runs succeeded, job items committed, and runs running on the node
    of the server with pid `node_pid`."""
    with connect(url) as conn:
        ((items, runs, job, running),) = conn.execute(
            "SELECT (SELECT count(*) FROM requests r JOIN deployments d ON d.id = r.deployment_id"
            "        WHERE d.name = 'counter' AND r.status = 'completed'),"
            "       (SELECT count(*) FROM runs WHERE status = 'succeeded'),"
            "       (SELECT count(*) FROM job_logs WHERE job_id = %s AND item_index IS NOT NULL),"
            "       (SELECT count(*) FROM runs WHERE status = 'running' AND owner ="
            "        (SELECT id FROM nodes WHERE name LIKE %s AND \"end\" IS NULL))", (job_id, f"%:{node_pid}"))
    return {"items": items, "runs": runs, "job": job, "running on it": running}


def unfinished(url: str) -> tuple[int, int]:
    """How many rows of work (batch items and the requests of runs and job items, runs, jobs,
    deliveries) have not ended, and how many of those a dead node holds."""
    left = held = 0
    with connect(url) as conn:
        for table, statuses in UNFINISHED.items():
            ((rows, of_dead),) = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE owner IN (SELECT id FROM nodes WHERE \"end\" = 'dead'))"
                f" FROM {table} WHERE status = ANY(%s)", (list(statuses),))
            left, held = left + rows, held + of_dead
    return left, held


def has_ended(url: str, node: str) -> bool:
    with connect(url) as conn:
        ((end,),) = conn.execute('SELECT "end" FROM nodes WHERE id = %s', (node,))
    return end is not None


def shared_dir(shared_path: Path, name: str) -> Path:
    """A directory of `shared_path` that the sandboxed code may write into."""
    path = shared_path / name
    path.mkdir(mode=0o777)
    path.chmod(0o777)  # mkdir's mode is cut by the umask
    return path


def marks(directory: Path) -> dict[str, list[float]]:
    """When each item (or run) began to run, every time it did, by the name of its marks file."""
    return {path.name: [float(line.split()[0]) for line in path.read_text().splitlines()]
            for path in directory.iterdir()}


def ran_under(directory: Path, data_dir: Path) -> set[str]:
    """The items whose code ran (at least once) on an instance of the node with this data directory."""
    return {path.name for path in directory.iterdir() if f" {data_dir}/" in path.read_text()}


def ran_after_its_end(ran: dict[str, list[float]], ended: dict[str, float | None]) -> dict[str, list[float]]:
    """The units whose code began to run after their end was committed."""
    return {name: times for name, times in ran.items()
            if (end := ended[name]) is not None and max(times) > end}


def create_runs(nodes: list[Server], org: dict[str, str], deployment: str, version: str) -> list[str]:
    """RUNS runs, the nth through node n % len(nodes) and marking the file named n; their ids in order."""

    def create(i: int) -> str:
        answer = httpx.post(f"{nodes[i % len(nodes)].url}/organizations/{org['organization_id']}/deployments/"
                            f"{deployment}/runs", json={"version_id": version, "environment": {"MARK": str(i)}},
                            headers={"Authorization": f"Bearer {org['token']}"}, timeout=60)
        assert answer.status_code == 200, answer.text
        return core_run_id(answer.json()["run_id"])

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return list(pool.map(create, range(RUNS)))


# Its own waits add up to over 450 s on a loaded machine (under way 120, recovered 16, ended 300, delivered 30).
@pytest.mark.timeout(600)
def test_a_node_killed_mid_way_through_items_runs_and_a_job_loses_nothing_and_repeats_nothing_committed(
    cluster: Cluster, shared_path: Path, tmp_path: Path
) -> None:
    began = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        first, victim, _ = pool.map(lambda _: cluster.start(1, NODE_ENV)[0], range(3))
    project = first.create_project("work")
    url = database_url_for(first.data_dir)
    assert url is not None

    # Given deployments for batch items, a job's items and runs, whose code waits for a gate
    gate = shared_path / "gate"
    item_marks, job_marks, run_marks = (shared_dir(shared_path, name) for name in ("items", "job", "runs"))
    with ubiops(first, project["token"]) as client:
        deploy(client, "work", "counter", MARKS_ITEMS.format(gate=str(gate), marks=str(item_marks)), plain=False,
               maximum_instances=BATCH_INSTANCES)
        deploy(client, "work", "scorer", MARKS_ITEMS.format(gate=str(gate), marks=str(job_marks)), plain=False,
               maximum_instances=JOB_INSTANCES)
    with httpx.Client(base_url=f"{first.url}/organizations/{project['organization_id']}",
                      headers={"Authorization": f"Bearer {project['token']}"}, timeout=60) as client:
        run_deployment, run_version = deploy_handler(
            client, tmp_path, "runner", MARKS_RUNS.format(gate=str(gate), marks=str(run_marks), ms=RUN_MS))
    with ubiops(first, project["token"]) as client:
        answer = client.patch("/projects/work/deployments/runner/versions/1", json={"maximum_instances": RUN_INSTANCES})
        assert answer.status_code == 200, answer.text
    nexus = nexus_project(victim, project["token"], project["datature_project_id"])
    dataset = make_dataset(nexus, tmp_path / "items.ndjson", [{"x": i} for i in range(JOB_ITEMS)])
    scorer = next(d.id for d in nexus.deployments.list() if d.name == "scorer")

    with running_receiver() as receiver:
        webhook = nexus.batch.webhooks.create("results", webhook_spec(receiver, max_retries=10, max_backoff_ms=200)).id
        # When batch items and runs arrive through every node, and a job runs on the victim ...
        submitting = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            batches = pool.submit(submit, cluster, project["token"], BATCH_ITEMS // MAX_BATCH, MAX_BATCH)
            runs = pool.submit(create_runs, cluster.nodes, project, run_deployment, run_version)
            job_id = nexus.batch.jobs.create("survivor", {"dataset_id": dataset, "webhook_id": webhook,
                                                          "deployment_id": scorer}).id.removeprefix("batchjob_")
            item_ids, run_ids = batches.result(), runs.result()
        submitted_in = time.monotonic() - submitting
        gate.write_text("open")
        # ... and it is killed with SIGKILL, with its workers, while all three are part-way there
        assert victim.process is not None
        cluster.remember_children()
        workers = descendants(victim.process.pid)  # its instances are up: they wait for the gate
        deadline, all_under_way = time.monotonic() + 120, None
        while True:  # once all three are under way; best while it runs some runs, if it gets any
            under_way = progress(url, job_id, victim.process.pid)
            if min(under_way["items"], under_way["runs"], under_way["job"]) > 0:
                all_under_way = all_under_way or time.monotonic()
                # (Not waiting for its runs past half of the items or the job: they must be part-way.)
                if under_way["running on it"] or time.monotonic() - all_under_way > WAIT_FOR_ITS_RUNS_S \
                        or under_way["items"] > BATCH_ITEMS // 2 or under_way["job"] > JOB_ITEMS // 2:
                    break
            assert time.monotonic() < deadline, f"not all under way in time: {under_way}"
            time.sleep(0.05)
        assert victim.stop(signal.SIGKILL) == -signal.SIGKILL
        killed_at = time.monotonic()
        kill_leftovers(workers)  # as a crash of its machine would end them
        at_kill = read_store(url, job_id)
        (dead,) = [node for node, (name, end) in at_kill.nodes.items()
                   if name.endswith(f":{victim.process.pid}") and end is None]  # not recovered yet
        mid_way = {"items": sum(u.status == "completed" for u in at_kill.items.values()),
                   "runs": sum(u.status == "succeeded" for u in at_kill.runs.values()), "job": len(at_kill.job_items)}
        assert 0 < mid_way["items"] < BATCH_ITEMS and 0 < mid_way["runs"] < RUNS, mid_way
        assert 0 < mid_way["job"] < JOB_ITEMS and at_kill.job.owner == dead, (mid_way, at_kill.job)

        # Then within the lease and a margin the others hold all it held (0 stuck) ...
        wait_until(lambda: has_ended(url, dead) and unfinished(url)[1] == 0,
                   timeout=LEASE_S + STUCK_MARGIN_S, interval=0.1)
        recovered_in = time.monotonic() - killed_at
        # ... and everything ends (0 lost)
        wait_until(lambda: unfinished(url)[0] == 0, timeout=300, interval=0.25)
        ended_in = time.monotonic() - killed_at
        wait_until(lambda: len({r.json["itemIndex"] for r in receiver.delivered()}) == JOB_ITEMS, timeout=30)
        end = read_store(url, job_id)
        arrivals: dict[int, list[float]] = {}
        for received in receiver.delivered():
            arrivals.setdefault(received.json["itemIndex"], []).append(received.at)

    # Only the victim died (a live node that missed its heartbeats for a lease gives its work back too)
    declared_dead = [name for node, (name, how) in end.nodes.items() if how == "dead" and node != dead]
    assert not declared_dead, f"live nodes missed their heartbeats for {LEASE_S} s: {declared_dead}"

    # Batch items: none lost; what failed was running on the dead node; none ran once committed
    assert sorted(end.items) == sorted(item_ids)
    held_items = {rid for rid, u in at_kill.items.items() if u.owner == dead and u.status in UNFINISHED["requests"]}
    failed = {rid for rid, u in end.items.items() if u.status != "completed"}
    with connect(url) as conn:  # a live node's item its instance ran for it fails with the dead node
        ran_there = {rid for rid, error in conn.execute("SELECT id, error_message FROM requests WHERE status = 'failed'")
                     if rid in failed - held_items and error.startswith("The node running this request stopped")}
    assert failed <= held_items | ran_there and len(failed) <= 2 * BATCH_INSTANCES, failed
    id_of = dict(zip(map(str, range(BATCH_ITEMS)), item_ids, strict=True))  # x -> request id
    items_ran = {id_of[x]: times for x, times in marks(item_marks).items()}
    completed = {rid for rid, u in end.items.items() if u.status == "completed"}
    assert completed <= set(items_ran) <= set(item_ids)  # a failed one may have died before its code began
    assert not ran_after_its_end(items_ran, {rid: u.ended for rid, u in end.items.items()})
    items_twice = {rid for rid, times in items_ran.items() if len(times) > 1}
    # An item a live node held may have run on the dead node's instance (sent there, the cluster being
    # full): killed before its start was told, it is sent again, as one that had not started would be.
    ran_on_dead = {id_of[x] for x in ran_under(item_marks, victim.data_dir)}
    assert items_twice <= held_items | ran_on_dead and max(map(len, items_ran.values())) <= 2, items_twice

    # Runs: every run succeeded; none ran once committed; only those the dead node held ran again
    assert sorted(end.runs) == sorted(run_ids)
    assert {u.status for u in end.runs.values()} == {"succeeded"}
    runs_ran = {run_ids[int(n)]: times for n, times in marks(run_marks).items()}
    assert set(runs_ran) == set(run_ids)
    assert not ran_after_its_end(runs_ran, {rid: u.ended for rid, u in end.runs.items()})
    held_runs = {rid for rid, u in at_kill.runs.items() if u.owner == dead and u.status in UNFINISHED["runs"]}
    runs_twice = {rid for rid, times in runs_ran.items() if len(times) > 1}
    assert runs_twice <= held_runs and len(runs_twice) <= RUN_INSTANCES, (held_runs, runs_twice)

    # The job: every item predicted and delivered; none committed before the kill predicted again
    assert end.job.status == "finished", end.job
    assert set(end.job_items) == set(range(JOB_ITEMS)) and {u.status for u in end.job_items.values()} == {"delivered"}
    job_ran = {int(i): times for i, times in marks(job_marks).items()}
    assert set(job_ran) == set(range(JOB_ITEMS))
    assert not ran_after_its_end(job_ran, {i: u.ended for i, u in end.job_items.items()})
    predicted_twice = {i for i, times in job_ran.items() if len(times) > 1}
    assert not predicted_twice & set(at_kill.job_items), predicted_twice & set(at_kill.job_items)
    assert len(predicted_twice) <= JOB_INSTANCES * ITEMS_IN_FLIGHT_PER_INSTANCE, len(predicted_twice)

    # Webhooks: each item's delivery arrived, twice only if the dead node was making it, never once recorded
    assert set(arrivals) == set(range(JOB_ITEMS))
    assert {u.status for u in end.deliveries.values()} == {"delivered"}
    assert not ran_after_its_end(arrivals, {i: u.ended for i, u in end.deliveries.items()})
    held_deliveries = {i for i, u in at_kill.deliveries.items() if u.owner == dead and u.status == "pending"}
    delivered_twice = {i for i, times in arrivals.items() if len(times) > 1}
    # (A node holds those it makes, those made waiting for their commit, and those handed to it as
    # committed, waiting for a place.)
    assert delivered_twice <= held_deliveries, delivered_twice
    assert len(held_deliveries) <= MAX_IN_FLIGHT + MAX_SETTLING + MAX_HANDED, len(held_deliveries)

    print(f"\nkill -9 of one node of three: {BATCH_ITEMS} batch items, {RUNS} runs and a {JOB_ITEMS}-item job "
          f"submitted in {submitted_in:.1f} s; killed at {mid_way} done; it held {len(held_items)} items, "
          f"{len(held_runs)} runs, the job and {len(held_deliveries)} deliveries; all given back "
          f"{recovered_in:.1f} s after the kill (lease {LEASE_S} s), all ended {ended_in:.1f} s after it; "
          f"ran again: {len(items_twice)} items ({len(items_twice - held_items)} held by a live node, run on its "
          f"instance; {len(failed)} failed), {len(runs_twice)} runs, "
          f"{len(predicted_twice)} job items; {len(delivered_twice)} deliveries made twice; "
          f"test {time.monotonic() - began:.0f} s")
