"""Jobs on instances of their own (`NewEphemeralDeployment`) through the official `datature` SDK:
the job names an artifact (a version's built code) and how many instances it wants; they start
with the job, serve only its items, and stop once its items have run."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ubiops
from datature.nexus import error
from datature.nexus.api.batch import models as batch_models

from tests.compat.datature.conftest import make_dataset, webhook_spec
from tests.compat.datature.receiver import Receiver
from tests.compat.ubiops.conftest import sdk_client
from tests.fixtures.server import Server, wait_until
from tests.integration.conftest import descendants, is_worker

#: Each instance names itself in what each item prints; items take a while, so both instances serve.
NAMED = """
import time
import uuid


class Deployment:
    def __init__(self, base_directory, context):
        self.name = uuid.uuid4().hex

    def request(self, data):
        print("instance", self.name)
        time.sleep(0.2)
        return data
"""


#: Each item waits at a gate (a socket of the test's, whose port is the item's `x`) until the test closes it.
GATED = """
import socket


class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        try:
            with socket.create_connection(("127.0.0.1", data["x"]), timeout=120) as gate:
                gate.recv(1)
        except OSError:  # closed: go on
            pass
        return data
"""


#: Each item says how much memory its instance may take.
LIMITED = """
import resource


class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        print("limit", resource.getrlimit(resource.RLIMIT_DATA)[0])
        return data
"""


def printed(server: Server, project: dict[str, str], deployment: str, word: str) -> set[str]:
    """What the items of `deployment` printed after `word`."""
    with sdk_client(server, project["token"]) as client:
        lines = ubiops.CoreApi(client).logs_list(project["name"], query=f"| deployment_name=`{deployment}`",
                                                 limit=1000)
    return {line.log.split()[1] for line in lines if line.log.startswith(f"{word} ")}


def test_a_job_runs_on_instances_of_its_own_from_an_artifact(
    nexus: Any, deploy: Callable[..., str], receiver: Receiver, tmp_path: Path, server: Server,
    project: dict[str, str],
) -> None:
    # Given a deployment whose own version runs one instance at most
    deployment_id = deploy("named", NAMED, maximum_instances=1)
    artifact_id = nexus.deployments.get(deployment_id).artifact_id
    assert artifact_id.startswith("artifact_")
    dataset_id = make_dataset(nexus, tmp_path / "items.ndjson", [{"x": i} for i in range(30)])
    webhook_id = nexus.batch.webhooks.create("results", webhook_spec(receiver)).id
    # When a job asks for two instances of its code (the SDK looks up the instance types first)
    created = nexus.batch.jobs.create("own", {
        "dataset_id": dataset_id, "webhook_id": webhook_id, "artifact_id": artifact_id,
        "deployment_metadata": {"replicas": 2},
    })
    template = created.spec.deployment.template
    assert (template.artifact_id, template.scaling.replicas, template.instance_id) == \
        (artifact_id, 2, "instance_x1cpu-standard")
    done = nexus.batch.jobs.wait_until_done(created.id, interval=1)
    # Then every item ran and was delivered, on two instances
    assert (done.status.overview, done.status.items.delivered) == ("Reached", 30)
    assert sorted(r.json["itemIndex"] for r in receiver.delivered()) == list(range(30))
    assert len(printed(server, project, "named", "instance")) == 2


@pytest.mark.single_server_only("counts the worker processes of its own server")
def test_the_jobs_instances_stop_once_its_items_have_run(
    nexus: Any, deploy: Callable[..., str], receiver: Receiver, tmp_path: Path, server: Server,
) -> None:
    assert server.process is not None
    deployment_id = deploy("brief", GATED)

    def workers() -> set[int]:
        return {pid for pid in descendants(server.process.pid) if is_worker(pid)}

    before = workers()  # of earlier tests on this server (they may stop meanwhile: the job's are told by pid)
    gate = socket.create_server(("127.0.0.1", 0), backlog=16)  # items wait on it: the job cannot end early
    port = gate.getsockname()[1]
    dataset_id = make_dataset(nexus, tmp_path / "items.ndjson", [{"x": port}] * 10)
    webhook_id = nexus.batch.webhooks.create("results", webhook_spec(receiver)).id
    job_id = nexus.batch.jobs.create("brief", {
        "dataset_id": dataset_id, "webhook_id": webhook_id,
        "artifact_id": nexus.deployments.get(deployment_id).artifact_id,
        "deployment_metadata": {"instance_id": "instance_x1cpu-standard", "replicas": 3},
    }).id
    try:
        wait_until(lambda: len(workers() - before) >= 3, timeout=120)  # all three start with the job
        ours = workers() - before
    finally:
        gate.close()
    items = nexus.batch.jobs.wait_until_done(job_id, interval=1).status.items
    assert (items.predicted, items.delivered) == (10, 10)  # each ran: it waited at the gate
    wait_until(lambda: not workers() & ours, timeout=60)


def test_a_template_deployment_and_memory_in_mb_name_the_instances(
    nexus: Any, deploy: Callable[..., str], receiver: Receiver, tmp_path: Path, server: Server,
    project: dict[str, str],
) -> None:
    deployment_id = deploy("templated", LIMITED)
    dataset_id = make_dataset(nexus, tmp_path / "items.ndjson", [{"x": 1}, {"x": 2}])
    webhook_id = nexus.batch.webhooks.create("results", webhook_spec(receiver)).id
    body = {"name": "templated", "spec": {
        "datasetId": dataset_id,
        "deployment": {"kind": "NewEphemeralDeployment",
                       "template": {"id": deployment_id, "resources": {"cpu": 1, "ram": 1024},
                                    "scaling": {"replicas": 1, "mode": "FixedReplicaCount"}}},
        "resultDelivery": {"destinations": [{"kind": "Webhook", "webhookId": webhook_id}]},
    }}
    # (The SDK sends a template by artifact only: the spec's own example names a template deployment.)
    job = nexus.batch.jobs.requester.POST(f"/projects/{nexus.project_id}/batch/jobs", request_body=body,
                                          response_type=batch_models.Job)
    done = nexus.batch.jobs.wait_until_done(job.id, interval=1)
    assert done.status.items.delivered == 2
    assert done.spec.deployment.template.id == deployment_id
    assert printed(server, project, "templated", "limit") == {str(1024 << 20)}


def test_a_bad_template_is_refused_and_no_job_is_stored(
    nexus: Any, deploy: Callable[..., str], receiver: Receiver, tmp_path: Path,
) -> None:
    artifact_id = nexus.deployments.get(deploy("plain")).artifact_id
    dataset_id = make_dataset(nexus, tmp_path / "items.ndjson", [{"x": 1}])
    webhook_id = nexus.batch.webhooks.create("results", webhook_spec(receiver)).id
    good = {"dataset_id": dataset_id, "webhook_id": webhook_id, "artifact_id": artifact_id}
    for metadata, raised, said in (
        ({"replicas": 0, "instance_id": "instance_x1cpu-standard"}, error.BadRequestError, "replicas"),
        ({"replicas": 17, "instance_id": "instance_x1cpu-standard"}, error.BadRequestError, "replicas"),
        ({"instance_id": "instance_t4-standard-1g"}, error.BadRequestError, "instance_x1cpu-standard"),
        ({"resources": {"GPU_T4": 1}}, error.BadRequestError, "GPU"),
    ):
        with pytest.raises(raised, match=said):
            nexus.batch.jobs.create("bad", {**good, "deployment_metadata": metadata})
    with pytest.raises(error.NotFoundError):
        nexus.batch.jobs.create("bad", {**good, "artifact_id": "artifact_00000000-0000-0000-0000-000000000000",
                                        "deployment_metadata": {"instance_id": "instance_x1cpu-standard"}})
    assert nexus.batch.jobs.list().data == []
