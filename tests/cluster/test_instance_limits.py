"""A version's limits count across the cluster: `maximum_instances`, `minimum_instances` and the
runs it runs at once, whichever node a call comes through (real nodes on one PostgreSQL)."""

from __future__ import annotations

import concurrent.futures
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.fixtures.cluster import LEASE_S, Cluster
from tests.fixtures.abeja_apps import deploy_gated, deploy_handler
from tests.fixtures.server import Server, wait_until
from tests.integration.conftest import deploy, descendants, is_worker, kill_leftovers, query, ubiops

pytestmark = pytest.mark.postgresql_only("a cluster is several servers on one PostgreSQL")

#: Answers with the id of the instance that ran it (made when the instance loads); input "wait:<path>"
#: writes to <path> every 20 ms until it is stopped; input "big:<n>" adds n characters to the id.
NAMES_ITS_INSTANCE = """
import time
import uuid


class Deployment:
    def __init__(self, base_directory, context):
        self.id = uuid.uuid4().hex

    def request(self, data):
        if data.startswith("wait:"):
            while True:
                with open(data[5:], "a") as out:
                    out.write("x")
                time.sleep(0.02)
        if data.startswith("big:"):
            return self.id + "x" * int(data[4:])
        return self.id
"""

#: How long after a change the nodes have all learnt the cluster's count: a start refused once is
#: tried again after `scheduler.FULL_RECHECK_S` (2 s); then an instance loads.
SETTLES_S = 30.0


def slots(cluster: Cluster) -> list[dict[str, str]]:
    """The instances the cluster's ledger counts, on live nodes."""
    return [dict(row) for row in query(cluster.nodes[0].data_dir, """
        SELECT s.pool, s.node_id, n.name FROM instance_slots s JOIN nodes n ON n.id = s.node_id
        WHERE n."end" IS NULL""")]


def workers(cluster: Cluster) -> int:
    """The worker processes of every running node."""
    return sum(is_worker(pid) for node in cluster.nodes if node.process is not None and node.process.poll() is None
               for pid in descendants(node.process.pid))


def call(node: Server, token: str, data: str, timeout: float = 60) -> httpx.Response:
    with ubiops(node, token) as client:
        return client.post("/projects/work/deployments/who/requests", json=data, timeout=timeout)


def test_one_instance_at_most_serves_a_version_with_a_maximum_of_one_through_every_node(cluster: Cluster) -> None:
    nodes = cluster.start(3)
    project = nodes[0].create_project("work")
    with ubiops(nodes[0], project["token"]) as client:
        deploy(client, "work", "who", NAMES_ITS_INSTANCE, maximum_instances=1)

    # Requests through all three nodes at once, a few at a time each
    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        answers = list(pool.map(lambda i: call(nodes[i % 3], project["token"], "who"), range(60)))

    assert all(a.status_code == 200 and a.json()["status"] == "completed" for a in answers), \
        [a.text for a in answers if a.status_code != 200 or a.json()["status"] != "completed"][:3]
    assert len({a.json()["result"] for a in answers}) == 1  # one instance ran them all
    assert len(slots(cluster)) == 1 and workers(cluster) == 1
    # ... though each node accepted and recorded its share
    owners = Counter(row["owner"] for row in query(nodes[0].data_dir, "SELECT owner FROM requests"))
    assert len(owners) == 3 and sum(owners.values()) == 60


def test_a_large_result_of_a_call_another_node_runs_comes_back_whole(cluster: Cluster) -> None:
    a, b = cluster.start(2)
    project = a.create_project("work")
    with ubiops(a, project["token"]) as client:
        deploy(client, "work", "who", NAMES_ITS_INSTANCE, maximum_instances=1)
    instance = call(a, project["token"], "who").json()["result"]  # node A holds the one instance

    answer = call(b, project["token"], "big:3000000")  # its outcome is one line of ~3 MB between the nodes

    assert answer.status_code == 200 and answer.json()["status"] == "completed", answer.text[:300]
    assert answer.json()["result"] == instance + "x" * 3_000_000
    assert len(slots(cluster)) == 1


def test_a_minimum_of_one_is_one_instance_in_the_cluster_and_comes_back_on_another_node_when_its_node_dies(
    cluster: Cluster,
) -> None:
    nodes = cluster.start(3)
    project = nodes[0].create_project("work")
    with ubiops(nodes[0], project["token"]) as client:
        deploy(client, "work", "who", NAMES_ITS_INSTANCE, minimum_instances=1, maximum_instances=3)

    # One warm instance for the whole cluster, not one per node
    wait_until(lambda: workers(cluster) == 1, timeout=SETTLES_S, interval=0.1)
    deadline = time.monotonic() + 2 * 2.0  # every node has retried its refused start at least once
    while time.monotonic() < deadline:
        assert len(slots(cluster)) == 1 and workers(cluster) <= 1
        time.sleep(0.1)
    (held,) = slots(cluster)
    holder = next(n for n in nodes if n.process is not None and held["name"].endswith(f":{n.process.pid}"))

    # When the node running it dies
    assert holder.process is not None
    orphans = descendants(holder.process.pid)
    holder.stop(signal.SIGKILL)
    kill_leftovers(orphans)

    # Then another node starts the minimum, once the dead one's lease has run out
    wait_until(lambda: len(slots(cluster)) == 1 and workers(cluster) == 1, timeout=LEASE_S + SETTLES_S, interval=0.1)
    survivor = next(n for n in nodes if n is not holder)
    answer = call(survivor, project["token"], "who")
    assert answer.json()["status"] == "completed", answer.text


def test_a_cancel_through_any_node_stops_a_call_another_node_runs_for_the_node_that_accepted_it(
    cluster: Cluster, shared_path: Path
) -> None:
    a, b, c = cluster.start(3)
    project = a.create_project("work")
    with ubiops(a, project["token"]) as client:
        deploy(client, "work", "who", NAMES_ITS_INSTANCE, maximum_instances=1)
    first = call(a, project["token"], "who").json()["result"]  # the one instance runs on node A
    assert a.process is not None
    assert [s["name"].rsplit(":", 1)[1] for s in slots(cluster)] == [str(a.process.pid)]

    # Given a call accepted by node B, running on node A's instance
    out = shared_path / "out"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(call, b, project["token"], f"wait:{out}")
        wait_until(lambda: out.exists() and out.stat().st_size > 3, timeout=30)
        with ubiops(c, project["token"]) as client:
            listed = wait_until(lambda: client.get("/projects/work/deployments/who/requests",
                                                   params={"status": "processing"}).json(), timeout=10)
            (running,) = listed

            # When it is cancelled through node C
            response = client.patch(f"/projects/work/deployments/who/requests/{running['id']}",
                                    json={"status": "cancelled"})
            assert response.status_code == 200, response.text

        # Then node B answers "cancelled", and the code on node A stops
        assert answer.result(timeout=30).json()["status"] == "cancelled"
    size = out.stat().st_size
    wait_until(lambda: call(a, project["token"], "who").json()["result"] != first, timeout=30)  # replaced
    assert out.stat().st_size == size


def test_the_cluster_runs_no_more_runs_of_a_version_at_once_than_its_maximum_instances(
    cluster: Cluster, tmp_path: Path, shared_path: Path
) -> None:
    nodes = cluster.start(3)
    org = nodes[0].create_project("runs")
    headers = {"Authorization": f"Bearer {org['token']}"}

    def api(node: Server) -> httpx.Client:
        return httpx.Client(base_url=f"{node.url}/organizations/{org['organization_id']}", headers=headers,
                            timeout=30)

    with api(nodes[0]) as client:
        d, v, gate = deploy_gated(client, tmp_path, shared_path)  # 5 instances at most, ABEJA's default
    ids = []
    for i in range(12):  # accepted by every node
        with api(nodes[i % 3]) as client:
            ids.append(client.post(f"/deployments/{d}/runs",
                                   json={"version_id": v, "environment": {"GATE": str(gate)}}).json()["run_id"])

    def claimed() -> int:
        return len(query(nodes[0].data_dir, "SELECT id FROM runs WHERE status IN ('runnable', 'starting', 'running')"))

    wait_until(lambda: claimed() == 5, timeout=SETTLES_S, interval=0.1)
    deadline = time.monotonic() + 2 * 2.0  # every node's pick-up pass has tried the queued ones
    while time.monotonic() < deadline:
        assert claimed() <= 5
        time.sleep(0.1)

    gate.write_text("open")
    with api(nodes[1]) as client:
        wait_until(lambda: all(client.get(f"/deployments/{d}/runs/{r}").json()["status"] == "SUCCEEDED"
                               for r in ids), timeout=120, interval=0.2)


#: Streams its instance's id word by word.
STREAMS_ITS_INSTANCE = """
import uuid


class Deployment:
    def __init__(self, base_directory, context):
        self.id = uuid.uuid4().hex

    def request(self, data, context):
        for word in ("one", "two", self.id):
            context["streaming_update"](word)
        return self.id
"""


def test_a_streaming_request_through_a_node_without_an_instance_streams_from_the_node_that_has_it(
    cluster: Cluster,
) -> None:
    a, b = cluster.start(2)
    project = a.create_project("work")
    with ubiops(a, project["token"]) as client:
        deploy(client, "work", "who", STREAMS_ITS_INSTANCE, maximum_instances=1)
    instance = call(a, project["token"], "who").json()["result"]  # node A holds the one instance

    with ubiops(b, project["token"]) as client, client.stream(
            "POST", "/projects/work/deployments/who/requests/stream", json="who") as response:
        assert response.status_code == 200
        partials = [line[5:] for line in response.iter_lines() if line.startswith("data:")]

    assert partials[:3] == ["one", "two", instance]  # then the outcome, as the dialect sends it
    assert len(slots(cluster)) == 1


#: Answers with the id of the instance that ran it.
HANDLER_NAMES_ITS_INSTANCE = '''
import uuid

INSTANCE = uuid.uuid4().hex


def handler(request, context):
    return {"status_code": 200, "content_type": "text/plain", "content": INSTANCE}
'''


def test_a_service_runs_its_instance_number_in_the_whole_cluster_and_answers_through_every_node(
    cluster: Cluster, tmp_path: Path
) -> None:
    nodes = cluster.start(3)
    org = nodes[0].create_project("services")
    o, headers = org["organization_id"], {"Authorization": f"Bearer {org['token']}"}

    def api(node: Server) -> httpx.Client:
        return httpx.Client(base_url=f"{node.url}/organizations/{o}", headers=headers, timeout=30)

    with api(nodes[0]) as client:
        d, v = deploy_handler(client, tmp_path, "svc", HANDLER_NAMES_ITS_INSTANCE)
        s = client.post(f"/deployments/{d}/services", json={"version_id": v, "instance_number": 2}).json()["service_id"]
    with api(nodes[1]) as client:
        wait_until(lambda: client.get(f"/deployments/{d}/services/{s}").json()["status"] == "READY",
                   timeout=SETTLES_S)

    deadline = time.monotonic() + 2 * 2.0  # every node has tried to start the service's instances
    while time.monotonic() < deadline:
        assert workers(cluster) <= 2
        time.sleep(0.1)
    wait_until(lambda: workers(cluster) == 2, timeout=SETTLES_S)
    answered = set()
    for node in nodes * 4:
        response = httpx.post(f"{node.url}/deployments/{d}/services/{s}", json={},
                              headers={**headers, "Host": f"{o}.localhost:{node.port}"}, timeout=30)
        assert response.status_code == 200, response.text
        answered.add(response.text)
    assert len(answered) <= 2  # the service's two instances answered, wherever they run
    for node in nodes:
        with api(node) as client:
            assert client.get(f"/deployments/{d}/services/{s}").json()["running_instance_number"] == 2
