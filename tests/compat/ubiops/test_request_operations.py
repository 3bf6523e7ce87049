"""Request operations through the official `ubiops` SDK: the polling helper on failure, metadata only,
date windows, cancelling and deleting what is running."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import ubiops
from ubiops.utils.exceptions import StatusError

from tests.fixtures.packages import NOOP, RAISES
from tests.fixtures.server import wait_until

SLOW = '''
import time


class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        time.sleep(data["x"] / 1000)
        return dict(data)
'''


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def test_wait_for_deployment_request_raises_status_error_for_a_failed_batch_request(
    api: ubiops.CoreApi, client, project, deploy
) -> None:
    deploy("raises", RAISES)
    (created,) = api.batch_deployment_requests_create(project["name"], "raises", [{"x": 1}])
    # Wait here first: the helper polls only every 4 s, and the point is what it makes of `failed`.
    wait_until(
        lambda: api.deployment_requests_get(project["name"], "raises", created.id).status == "failed", timeout=60
    )
    error_message = api.deployment_requests_get(project["name"], "raises", created.id).error_message
    assert error_message

    with pytest.raises(StatusError) as failed:
        ubiops.utils.wait_for_deployment_request(client, project["name"], "raises", created.id, quiet=True, timeout=60)

    assert str(failed.value) == f"Deployment request: failed: {error_message}"


def test_metadata_only_true_leaves_out_the_data_and_the_result(api: ubiops.CoreApi, project, deploy) -> None:
    deploy("echo", NOOP)
    request_id = api.deployment_requests_create(project["name"], "echo", {"x": 5}).id

    meta = api.deployment_requests_get(project["name"], "echo", request_id, metadata_only=True)
    full = api.deployment_requests_get(project["name"], "echo", request_id, metadata_only=False)

    assert (meta.id, meta.status, meta.result, meta.request_data) == (request_id, "completed", None, None)
    assert meta.input_size == full.input_size > 0 and meta.output_size == full.output_size > 0
    assert meta.time_created == full.time_created and meta.error_message is None
    assert (full.result, full.request_data) == ({"x": 5}, {"x": 5})


def test_list_start_and_end_dates_select_requests_by_their_creation_time(api: ubiops.CoreApi, project, deploy) -> None:
    deploy("echo", NOOP)
    ids = {api.deployment_requests_create(project["name"], "echo", {"x": i}).id for i in range(3)}
    now = datetime.now(UTC)

    def listed(start: datetime, end: datetime) -> set[str]:
        found = api.deployment_requests_list(project["name"], "echo", start_date=iso(start), end_date=iso(end))
        return {r.id for r in found}

    assert listed(now - timedelta(hours=2), now - timedelta(hours=1)) == set()
    assert listed(now + timedelta(hours=1), now + timedelta(hours=2)) == set()
    assert listed(now - timedelta(minutes=5), now + timedelta(minutes=5)) == ids
    only_start = api.deployment_requests_list(project["name"], "echo", start_date=iso(now - timedelta(minutes=5)))
    assert {r.id for r in only_start} == ids
    zulu = (now - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert {r.id for r in api.deployment_requests_list(project["name"], "echo", start_date=zulu)} == ids
    assert api.deployment_requests_list(project["name"], "echo", end_date=iso(now - timedelta(hours=1))) == []


def status_of(api: ubiops.CoreApi, project: str, deployment: str, request_id: str) -> str:
    return str(api.deployment_requests_get(project, deployment, request_id, metadata_only=True).status)


def test_batch_cancel_of_an_empty_list_with_status_processing_cancels_the_running_request(
    api: ubiops.CoreApi, project, deploy
) -> None:
    name = project["name"]
    deploy("slow", SLOW, maximum_instances=1)
    running, waiting = api.batch_deployment_requests_create(name, "slow", [{"x": 30000}, {"x": 1}])
    wait_until(lambda: status_of(api, name, "slow", running.id) == "processing", timeout=30)

    api.deployment_requests_batch_cancel(name, "slow", [], status="processing")

    wait_until(lambda: status_of(api, name, "slow", running.id) == "cancelled", timeout=30)
    # Only the processing one: the pending one is left to run, and does.
    wait_until(lambda: status_of(api, name, "slow", waiting.id) == "completed", timeout=30)
    assert api.deployment_requests_get(name, "slow", waiting.id).result == {"x": 1}


def test_deleting_a_processing_request_stops_it_and_the_next_request_is_served(
    api: ubiops.CoreApi, project, deploy
) -> None:
    deploy("slow", SLOW, maximum_instances=1)
    (running,) = api.batch_deployment_requests_create(project["name"], "slow", [{"x": 30000}])
    wait_until(lambda: status_of(api, project["name"], "slow", running.id) == "processing", timeout=30)

    api.deployment_requests_delete(project["name"], "slow", running.id)

    with pytest.raises(ubiops.ApiException) as gone:
        api.deployment_requests_get(project["name"], "slow", running.id)
    assert gone.value.status == 404
    # The only instance was busy with it for 30 s more: served at once means it was stopped.
    answer = api.deployment_requests_create(project["name"], "slow", {"x": 1}, timeout=10)
    assert (answer.status, answer.result) == ("completed", {"x": 1})
    assert api.deployment_requests_list(project["name"], "slow", status="processing") == []
    assert [r.id for r in api.deployment_requests_list(project["name"], "slow")] == [answer.id]
