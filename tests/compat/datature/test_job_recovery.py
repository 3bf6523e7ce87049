"""A job survives a server kill -9: it resumes, and nothing committed is predicted or delivered twice."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import pytest

from tests.compat.datature.conftest import deploy_with, make_dataset, nexus_project, webhook_spec
from tests.compat.datature.receiver import running_receiver
from tests.fixtures.server import Server, wait_until
from tests.integration.conftest import query

pytestmark = pytest.mark.single_server_only("kills and restarts a server of its own, not the shared one")

ITEMS = 40

# Appends each x it predicts to a file, so the test can count predictions per item.
COUNTING = '''
import time


class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        time.sleep(0.05)
        with open({path!r}, "a") as out:
            out.write(f"{{data['x']}}\\n")
        return data
'''


#: The receiver listens on loopback, which webhooks may reach only when allowed.
LOOPBACK_RECEIVERS = {"MODELBAY_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true"}


def committed(data_dir: Path) -> tuple[set[int], set[int], int]:
    """What the store holds: items with an outcome, items delivered, deliveries still pending."""
    outcomes = {i for (i,) in query(data_dir, "SELECT item_index FROM job_logs WHERE item_index IS NOT NULL")}
    delivered = {i for (i,) in query(data_dir, "SELECT item_index FROM deliveries WHERE status = 'delivered'")}
    [(pending,)] = query(data_dir, "SELECT count(*) FROM deliveries WHERE status = 'pending'")
    return outcomes, delivered, pending


def test_a_job_resumes_after_kill_9_without_repeating_committed_work(tmp_path: Path, shared_path: Path) -> None:
    server = Server(data_dir=tmp_path / "data").start(LOOPBACK_RECEIVERS)
    predictions = shared_path / "predicted.txt"  # the sandboxed code appends to it
    try:
        project = server.create_project("recovery")
        nexus = nexus_project(server, project["token"], project["datature_project_id"])
        deployment_id = deploy_with(server, project, tmp_path, "counting", COUNTING.format(path=str(predictions)),
                                    maximum_instances=2)
        dataset_id = make_dataset(nexus, tmp_path / "items.ndjson", [{"x": i} for i in range(ITEMS)])
        with running_receiver() as receiver:
            webhook_id = nexus.batch.webhooks.create(
                "results", webhook_spec(receiver, max_retries=10, max_backoff_ms=200)).id
            job_id = nexus.batch.jobs.create("survivor", {"dataset_id": dataset_id, "webhook_id": webhook_id,
                                                          "deployment_id": deployment_id}).id
            # Given a job part-way, with deliveries failing (so some are due for a retry) ...
            wait_until(lambda: len(receiver.delivered()) >= 5, timeout=60)
            receiver.fail_always = True
            wait_until(lambda: sum(r.answered == 500 for r in receiver.received) >= 3, timeout=30)
            # ... when the server is killed outright,
            server.stop(signal.SIGKILL)
            outcomes, delivered, pending = committed(server.data_dir)
            predicted_before = Counter(predictions.read_text().split())
            assert pending > 0 and 0 < len(outcomes) < ITEMS
            receiver.fail_always = False
            server.start(LOOPBACK_RECEIVERS)
            # then the job resumes and ends with every item delivered,
            done = nexus.batch.jobs.wait_until_done(job_id, interval=1)
            assert done.status.overview == "Reached" and done.status.items.delivered == ITEMS
            assert sorted({r.json["itemIndex"] for r in receiver.delivered()}) == list(range(ITEMS))
            # and no item whose outcome was committed was predicted, or delivered, again.
            predicted = Counter(predictions.read_text().split())
            again = {i: (predicted_before[str(i)], predicted[str(i)]) for i in outcomes
                     if predicted[str(i)] != predicted_before[str(i)]}
            assert not again, (again, sorted(outcomes))
            assert all(predicted[str(i)] >= 1 for i in range(ITEMS))
            arrivals = Counter(r.json["itemIndex"] for r in receiver.delivered())
            assert all(arrivals[i] == 1 for i in delivered)
    finally:
        server.stop()
