"""Batch jobs through the official `datature` SDK: items fanned out as requests, results to webhooks."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ubiops
from datature.nexus import error
from datature.nexus.api.batch import models as batch_models

from tests.compat.datature.conftest import deploy_with, make_dataset, webhook_spec
from tests.compat.datature.receiver import Receiver, running_receiver
from tests.compat.ubiops.conftest import sdk_client
from tests.fixtures.packages import RAISES
from tests.fixtures.server import Server, free_port

SLOW = """
import time


class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        time.sleep(0.3)
        return data
"""


def items_of(job: Any) -> dict[str, int]:
    counts = job.status.items
    return {name: getattr(counts, name) for name in ("gathered", "failed_preprocess", "predicted", "failed_predict",
                                                     "delivered", "failed_deliver")}


def test_a_job_predicts_every_item_and_delivers_each_result_signed(
    nexus: Any, deploy: Callable[..., str], receiver: Receiver, tmp_path: Path, server: Server,
    project: dict[str, str],
) -> None:
    deployment_id = deploy("echo")
    dataset_id = make_dataset(nexus, tmp_path / "items.ndjson", [{"x": i} for i in range(12)])
    webhook_id = nexus.batch.webhooks.create("results", webhook_spec(receiver)).id
    created = nexus.batch.jobs.create("run", {"dataset_id": dataset_id, "webhook_id": webhook_id,
                                              "deployment_id": deployment_id})
    assert created.id.startswith("batchjob_") and created.object == "batch_job"
    assert created.spec.deployment.deployment_id == deployment_id

    done = nexus.batch.jobs.wait_until_done(created.id, interval=1)
    assert done.status.overview == "Reached"
    assert items_of(done) == {"gathered": 12, "failed_preprocess": 0, "predicted": 12, "failed_predict": 0,
                              "delivered": 12, "failed_deliver": 0}
    delivered = receiver.delivered()
    assert all(r.signature_ok for r in delivered)
    assert sorted(r.json["itemIndex"] for r in delivered) == list(range(12))
    assert all(r.json["result"] == r.json["item"] and r.json["jobId"] == created.id for r in delivered)
    assert [j.id for j in nexus.batch.jobs.list().data] == [created.id]
    # Each item was one core request: the UbiOps request list of the version shows them.
    with sdk_client(server, project["token"]) as client:
        api = ubiops.CoreApi(client)
        listed = api.deployment_requests_list(project["name"], "echo", limit=50)
        one = api.deployment_requests_get(project["name"], "echo", listed[0].id)
    assert len(listed) == 12 and one.origin["created_by"] == f"batch job {created.id.removeprefix('batchjob_')}"


def test_failed_predictions_and_deliveries_still_count_so_waiting_ends(
    nexus: Any, deploy: Callable[..., str], receiver: Receiver, tmp_path: Path
) -> None:
    deployment_id = deploy("fails", RAISES)
    dataset_id = make_dataset(nexus, tmp_path / "items.ndjson", [{"x": 1}, {"y": "no such field"}, {"x": 3}])
    receiver.fail_always = True
    webhook_id = nexus.batch.webhooks.create("down", webhook_spec(receiver, max_retries=1, max_backoff_ms=50)).id
    job_id = nexus.batch.jobs.create("doomed", {"dataset_id": dataset_id, "webhook_id": webhook_id,
                                                "deployment_id": deployment_id}).id
    done = nexus.batch.jobs.wait_until_done(job_id, interval=1)
    assert items_of(done) == {"gathered": 3, "failed_preprocess": 1, "predicted": 0, "failed_predict": 2,
                              "delivered": 0, "failed_deliver": 3}
    assert len(receiver.received) == 6  # each item: the first try and one retry
    reasons = {r.json["itemIndex"]: r.json["reason"] for r in receiver.received}
    assert "exception" in reasons[0] and "field" in reasons[1]

    entries = list(nexus.batch.jobs.get_all_log_entries(job_id))
    item_entries = [e for e in entries if e.kind == "ItemPredicted"]
    assert sorted(e.status for e in item_entries) == ["FailedDeliver"] * 3
    assert all(e.level == "Error" and e.reason for e in item_entries)


def test_a_failed_delivery_says_why_in_the_job_log(
    nexus: Any, deploy: Callable[..., str], receiver: Receiver, tmp_path: Path
) -> None:
    deployment_id = deploy("echo")
    dataset_id = make_dataset(nexus, tmp_path / "items.ndjson", [{"x": 1}, {"x": 2}])
    receiver.fail_always = True
    webhook_id = nexus.batch.webhooks.create("down", webhook_spec(receiver, max_retries=1, max_backoff_ms=50)).id
    job_id = nexus.batch.jobs.create("undelivered", {"dataset_id": dataset_id, "webhook_id": webhook_id,
                                                     "deployment_id": deployment_id}).id
    done = nexus.batch.jobs.wait_until_done(job_id, interval=1)
    assert items_of(done)["predicted"] == 2 and items_of(done)["failed_deliver"] == 2
    item_entries = [e for e in nexus.batch.jobs.get_all_log_entries(job_id) if e.kind == "ItemPredicted"]
    assert [e.reason for e in item_entries] == ["Delivery failed after 2 attempts: The endpoint answered 500"] * 2
    assert [e.level for e in item_entries] == ["Error"] * 2  # the prediction worked, its delivery did not


def test_a_delivery_to_a_receiver_that_refuses_the_connection_says_so(
    nexus: Any, deploy: Callable[..., str], receiver: Receiver, tmp_path: Path
) -> None:
    deployment_id = deploy("echo")
    dataset_id = make_dataset(nexus, tmp_path / "items.ndjson", [{"x": 1}])
    closed = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there: every connection is refused
    spec = {**webhook_spec(receiver, max_retries=2, max_backoff_ms=50), "endpoint": closed}
    webhook_id = nexus.batch.webhooks.create("closed", spec).id
    job_id = nexus.batch.jobs.create("unreachable", {"dataset_id": dataset_id, "webhook_id": webhook_id,
                                                     "deployment_id": deployment_id}).id
    done = nexus.batch.jobs.wait_until_done(job_id, interval=1)
    assert items_of(done)["predicted"] == 1 and items_of(done)["failed_deliver"] == 1
    [entry] = [e for e in nexus.batch.jobs.get_all_log_entries(job_id) if e.kind == "ItemPredicted"]
    assert entry.status == "FailedDeliver" and entry.level == "Error"
    assert entry.reason == "Delivery failed after 3 attempts: ConnectError: Connection refused"


def test_a_cancelled_job_settles_every_item(
    nexus: Any, deploy: Callable[..., str], receiver: Receiver, tmp_path: Path
) -> None:
    deployment_id = deploy("later")
    dataset_id = make_dataset(nexus, tmp_path / "items.ndjson", [{"x": i} for i in range(5)])
    webhook_id = nexus.batch.webhooks.create("results", webhook_spec(receiver)).id
    job_id = nexus.batch.jobs.create("tomorrow", {
        "dataset_id": dataset_id, "webhook_id": webhook_id, "deployment_id": deployment_id,
        "start_at_time": int(time.time() * 1000) + 3_600_000,
    }).id
    assert nexus.batch.jobs.get(job_id).status.overview == "Waiting"
    cancelled = nexus.batch.jobs.cancel(job_id)
    assert cancelled.status.cancelled_at is not None and cancelled.status.reason == "Cancelled"
    done = nexus.batch.jobs.wait_until_done(job_id, interval=1)  # returns: the counts add up
    assert done.status.items.failed_deliver == 5 and done.status.overview == "Failed"
    assert receiver.received == []


def test_a_job_past_its_stop_time_settles_what_remains(
    nexus: Any, deploy: Callable[..., str], receiver: Receiver, tmp_path: Path
) -> None:
    deployment_id = deploy("slow", SLOW, maximum_instances=1)  # one item at a time, 0.3 s each
    dataset_id = make_dataset(nexus, tmp_path / "items.ndjson", [{"x": i} for i in range(20)])
    webhook_id = nexus.batch.webhooks.create("results", webhook_spec(receiver)).id
    job_id = nexus.batch.jobs.create("short", {
        "dataset_id": dataset_id, "webhook_id": webhook_id, "deployment_id": deployment_id,
        "stop_at_time": int(time.time() * 1000) + 1500,
    }).id
    done = nexus.batch.jobs.wait_until_done(job_id, interval=1)  # returns: the counts add up
    assert done.status.reason == "StopTimeReached" and done.status.cancelled_at is None
    counts = done.status.items
    assert counts.failed_deliver > 0 and counts.delivered + counts.failed_deliver == 20
    # Every item counted delivered reached the receiver; a POST on its way when the stop time passed
    # may reach it too, though counted FailedDeliver (items run one at a time: one such POST, or a retry)
    assert counts.delivered <= len(receiver.delivered()) <= counts.delivered + 2


def test_get_logs_pages_newest_first_and_every_entry_comes_once(
    nexus: Any, deploy: Callable[..., str], receiver: Receiver, tmp_path: Path
) -> None:
    deployment_id = deploy("logged")
    dataset_id = make_dataset(nexus, tmp_path / "items.ndjson", [{"x": i} for i in range(10)])
    webhook_id = nexus.batch.webhooks.create("results", webhook_spec(receiver)).id
    job_id = nexus.batch.jobs.create("logs", {"dataset_id": dataset_id, "webhook_id": webhook_id,
                                              "deployment_id": deployment_id}).id
    nexus.batch.jobs.wait_until_done(job_id, interval=1)
    everything = nexus.batch.jobs.get_logs(job_id).entries
    assert len(everything) == 11  # one per item, and the start
    times = [e.create_time for e in everything]
    assert times == sorted(times, reverse=True) and len(set(times)) == len(times)
    assert all(isinstance(t, int) for t in times) and all(isinstance(e.reason, str) for e in everything)
    page = nexus.batch.jobs.get_logs(job_id, {"max_entries": 4, "before_time": times[2]})
    assert [e.id for e in page.entries] == [e.id for e in everything[3:7]]
    assert [e.id for e in nexus.batch.jobs.get_logs(job_id, {"after_time": times[2]}).entries] == \
        [e.id for e in everything[:2]]
    assert all(e.level == "Error" for e in nexus.batch.jobs.get_logs(job_id, {"min_level": "Error"}).entries)
    assert len({e.id for e in nexus.batch.jobs.get_all_log_entries(job_id)}) == 11


def test_a_bad_job_is_refused_and_not_stored(
    nexus: Any, deploy: Callable[..., str], receiver: Receiver, tmp_path: Path, server: Any, project: Any
) -> None:
    deployment_id = deploy("real")
    dataset_id = make_dataset(nexus, tmp_path / "items.ndjson", [{"x": 1}])
    webhook_id = nexus.batch.webhooks.create("results", webhook_spec(receiver)).id
    good = {"dataset_id": dataset_id, "webhook_id": webhook_id, "deployment_id": deployment_id}
    for bad, raised in (
        ({**good, "deployment_id": "deploy_00000000-0000-0000-0000-000000000000"}, error.NotFoundError),
        ({**good, "deployment_id": "nope"}, error.NotFoundError),
        ({**good, "dataset_id": "dataset_00000000-0000-0000-0000-000000000000"}, error.NotFoundError),
        ({**good, "webhook_id": "webhook_00000000-0000-0000-0000-000000000000"}, error.NotFoundError),
    ):
        with pytest.raises(raised):
            nexus.batch.jobs.create("bad", bad)
    # Another project's deployment is not there for this one.
    other = server.create_project(project["name"] + "-other")
    theirs = deploy_with(server, other, tmp_path, "theirs")
    with pytest.raises(error.NotFoundError):
        nexus.batch.jobs.create("bad", {**good, "deployment_id": theirs})
    with pytest.raises(error.NotFoundError):  # no such artifact (test_ephemeral_jobs.py: jobs on their own instances)
        nexus.batch.jobs.create("eph", {"dataset_id": dataset_id, "webhook_id": webhook_id,
                                        "artifact_id": "artifact_1", "deployment_metadata": {"instance_id": "x"}})
    assert nexus.batch.jobs.list().data == []
    with pytest.raises(error.NotFoundError):
        nexus.batch.jobs.get("batchjob_00000000-0000-0000-0000-000000000000")


def test_deployments_made_elsewhere_are_listed_in_datatures_shape(nexus: Any, deploy: Callable[..., str]) -> None:
    deployment_id = deploy("listed")
    [listed] = nexus.deployments.list()
    assert listed.id == deployment_id and listed.status.overview == "Available"
    assert nexus.deployments.get(deployment_id).name == "listed"


def test_delete_a_job(nexus: Any, deploy: Callable[..., str], receiver: Receiver, tmp_path: Path) -> None:
    deployment_id = deploy("gone")
    dataset_id = make_dataset(nexus, tmp_path / "items.ndjson", [{"x": 1}])
    webhook_id = nexus.batch.webhooks.create("results", webhook_spec(receiver)).id
    job_id = nexus.batch.jobs.create("j", {"dataset_id": dataset_id, "webhook_id": webhook_id,
                                           "deployment_id": deployment_id}).id
    assert nexus.batch.jobs.delete(job_id).deleted is True
    with pytest.raises(error.NotFoundError):
        nexus.batch.jobs.get(job_id)


def test_an_item_with_two_destinations_is_delivered_once_both_took_it(
    nexus: Any, deploy: Callable[..., str], receiver: Receiver, tmp_path: Path
) -> None:
    deployment_id = deploy("echo")
    dataset_id = make_dataset(nexus, tmp_path / "items.ndjson", [{"x": i} for i in range(6)])
    with running_receiver(fail_always=True) as down:
        destinations = [nexus.batch.webhooks.create("up", webhook_spec(receiver)).id,
                        nexus.batch.webhooks.create("down", webhook_spec(down, max_retries=1, max_backoff_ms=50)).id]
        body = {"name": "both", "spec": {
            "datasetId": dataset_id, "deployment": {"kind": "ExistingDeployment", "deploymentId": deployment_id},
            "resultDelivery": {"destinations": [{"kind": "Webhook", "webhookId": w} for w in destinations]}}}
        job = nexus.batch.jobs.requester.POST(f"/projects/{nexus.project_id}/batch/jobs", request_body=body,
                                              response_type=batch_models.Job)
        done = nexus.batch.jobs.wait_until_done(job.id, interval=1)
        assert items_of(done) == {"gathered": 6, "failed_preprocess": 0, "predicted": 6, "failed_predict": 0,
                                  "delivered": 0, "failed_deliver": 6}
        assert sorted(r.json["itemIndex"] for r in receiver.delivered()) == list(range(6))
        assert len(down.received) == 12  # each item: the first try and one retry
    item_entries = [e for e in nexus.batch.jobs.get_all_log_entries(job.id) if e.kind == "ItemPredicted"]
    assert [e.reason for e in item_entries] == ["Delivery failed after 2 attempts: The endpoint answered 500"] * 6

    both_up = {**body, "name": "both up", "spec": {**body["spec"], "resultDelivery": {"destinations": [
        {"kind": "Webhook", "webhookId": destinations[0]},
        {"kind": "Webhook", "webhookId": nexus.batch.webhooks.create("up too", webhook_spec(receiver)).id}]}}}
    job = nexus.batch.jobs.requester.POST(f"/projects/{nexus.project_id}/batch/jobs", request_body=both_up,
                                          response_type=batch_models.Job)
    done = nexus.batch.jobs.wait_until_done(job.id, interval=1)
    assert items_of(done)["delivered"] == 6 and items_of(done)["failed_deliver"] == 0
    mine = [r.json["itemIndex"] for r in receiver.delivered() if r.json["jobId"] == job.id]
    assert sorted(mine) == sorted(list(range(6)) * 2)
