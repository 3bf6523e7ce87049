"""Batch requests and the request operations, through the official `ubiops` SDK."""

from __future__ import annotations

import pytest
import ubiops

from tests.fixtures.packages import NOOP, PLAIN
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


def test_a_batch_is_accepted_at_once_and_collected_when_done(api: ubiops.CoreApi, client, project, deploy) -> None:
    deploy("echo", NOOP)
    created = api.batch_deployment_requests_create(project["name"], "echo", [{"x": i} for i in range(20)])
    assert [r.status for r in created] == ["pending"] * 20
    assert all(r.time_created is not None and r.version == "v1" for r in created)
    ids = [r.id for r in created]
    for request_id in ids[:2]:
        ubiops.utils.wait_for_deployment_request(client, project["name"], "echo", request_id, quiet=True, timeout=60)
    wait_until(lambda: all(r.status == "completed" for r in api.deployment_requests_batch_get(project["name"], "echo", ids)), timeout=60)
    collected = api.deployment_requests_batch_get(project["name"], "echo", ids)
    assert sorted(r.result["x"] for r in collected) == list(range(20))
    assert all(r.request_data == {"x": r.result["x"]} for r in collected)


def test_one_faulty_item_rejects_the_whole_batch_and_stores_nothing(api: ubiops.CoreApi, project, deploy) -> None:
    deploy("echo", NOOP)
    with pytest.raises(ubiops.ApiException) as bad:
        api.batch_deployment_requests_create(project["name"], "echo", [{"x": 1}, {"x": "two"}, {"x": 3}])
    assert bad.value.status == 400 and "Request 1 of the batch" in bad.value.body
    assert api.deployment_requests_list(project["name"], "echo", status="pending") == []
    assert api.deployment_requests_list(project["name"], "echo") == []


def test_item_251_rejects_the_batch(api: ubiops.CoreApi, project, deploy) -> None:
    deploy("echo", NOOP)
    with pytest.raises(ubiops.ApiException) as bad:
        api.batch_deployment_requests_create(project["name"], "echo", [{"x": 1}] * 251)
    assert bad.value.status == 400 and "250" in bad.value.body


def test_plain_batches_and_the_version_path(api: ubiops.CoreApi, client, project, deploy) -> None:
    deploy("plain", PLAIN, plain=True)
    created = api.batch_deployment_version_requests_create(project["name"], "plain", "v1", ["a", "b"], timeout=60)
    for r in created:
        ubiops.utils.wait_for_deployment_version_request(
            client, project["name"], "plain", version="v1", request_id=r.id, quiet=True, timeout=60)
    got = api.deployment_version_requests_get(project["name"], "plain", request_id=created[0].id, version="v1")
    assert (got.status, got.result, got.timeout) == ("completed", "a", 60)
    meta = api.deployment_version_requests_get(project["name"], "plain", request_id=created[0].id, version="v1",
                                               metadata_only=True)
    assert meta.result is None and meta.request_data is None and meta.input_size > 0


def test_list_filters_newest_first_and_rejects_bad_status(api: ubiops.CoreApi, client, project, deploy) -> None:
    deploy("echo", NOOP)
    direct = api.deployment_requests_create(project["name"], "echo", {"x": 1})
    batch = api.batch_deployment_requests_create(project["name"], "echo", [{"x": 2}])[0]
    ubiops.utils.wait_for_deployment_request(client, project["name"], "echo", batch.id, quiet=True, timeout=60)
    listed = api.deployment_requests_list(project["name"], "echo")
    assert [r.id for r in listed] == [batch.id, direct.id]
    assert [r.id for r in api.deployment_requests_list(project["name"], "echo", limit=1, offset=1)] == [direct.id]
    # an id's tail: its head is the time it was made, shared by requests made close together
    assert [r.id for r in api.deployment_requests_list(project["name"], "echo", search_id=batch.id[-12:])] == [batch.id]
    assert api.deployment_requests_list(project["name"], "echo", status="failed,cancelled") == []
    with pytest.raises(ubiops.ApiException) as bad:
        api.deployment_requests_list(project["name"], "echo", status="pending,completed")
    assert bad.value.status == 400


def test_cancelling_pending_and_processing_requests(api: ubiops.CoreApi, project, deploy) -> None:
    deploy("slow", SLOW, maximum_instances=1)
    first, second = api.batch_deployment_requests_create(project["name"], "slow", [{"x": 30000}, {"x": 1}])
    wait_until(lambda: api.deployment_requests_get(project["name"], "slow", first.id).status == "processing", timeout=120)
    api.deployment_requests_update(project["name"], "slow", second.id, ubiops.DeploymentRequestUpdate(status="cancelled"))
    assert api.deployment_requests_get(project["name"], "slow", second.id).status == "cancelled"
    api.deployment_requests_update(project["name"], "slow", first.id, ubiops.DeploymentRequestUpdate(status="cancelled"))
    wait_until(lambda: api.deployment_requests_get(project["name"], "slow", first.id).status == "cancelled", timeout=30)
    # The instance was stopped and replaced: the next request is served by a new one.
    assert api.deployment_requests_create(project["name"], "slow", {"x": 1}, timeout=300).status == "completed"


def test_cancel_all_pending_with_an_empty_list(api: ubiops.CoreApi, project, deploy) -> None:
    deploy("slow", SLOW, maximum_instances=1)
    created = api.batch_deployment_requests_create(project["name"], "slow", [{"x": 30000}] + [{"x": 1}] * 5)
    wait_until(lambda: api.deployment_requests_get(project["name"], "slow", created[0].id).status == "processing", timeout=120)
    api.deployment_requests_batch_cancel(project["name"], "slow", [], status="pending")
    statuses = [r.status for r in api.deployment_requests_batch_get(project["name"], "slow", [r.id for r in created[1:]])]
    assert statuses == ["cancelled"] * 5
    api.deployment_requests_batch_cancel(project["name"], "slow", [created[0].id])
    wait_until(lambda: api.deployment_requests_get(project["name"], "slow", created[0].id).status == "cancelled", timeout=30)


def test_delete_is_all_or_nothing_and_a_deleted_request_is_gone(api: ubiops.CoreApi, client, project, deploy) -> None:
    deploy("echo", NOOP)
    ids = [r.id for r in api.batch_deployment_requests_create(project["name"], "echo", [{"x": 1}, {"x": 2}])]
    for request_id in ids:
        ubiops.utils.wait_for_deployment_request(client, project["name"], "echo", request_id, quiet=True, timeout=60)
    with pytest.raises(ubiops.ApiException) as unknown:
        api.deployment_requests_batch_delete(project["name"], "echo", [ids[0], "00000000-0000-0000-0000-000000000000"])
    assert unknown.value.status == 404
    assert len(api.deployment_requests_batch_get(project["name"], "echo", ids)) == 2
    api.deployment_requests_delete(project["name"], "echo", ids[0])
    api.deployment_requests_batch_delete(project["name"], "echo", [ids[1]])
    for request_id in ids:
        with pytest.raises(ubiops.ApiException) as gone:
            api.deployment_requests_get(project["name"], "echo", request_id)
        assert gone.value.status == 404
    assert api.deployment_requests_list(project["name"], "echo") == []


def test_collect_with_one_unknown_id_is_a_404(api: ubiops.CoreApi, project, deploy) -> None:
    deploy("echo", NOOP)
    request_id = api.deployment_requests_create(project["name"], "echo", {"x": 1}).id
    with pytest.raises(ubiops.ApiException) as unknown:
        api.deployment_requests_batch_get(project["name"], "echo", [request_id, "nope"])
    assert unknown.value.status == 404 and "nope" in unknown.value.body


def test_input_and_output_download_as_files(api: ubiops.CoreApi, project, deploy) -> None:
    deploy("echo", NOOP)
    request_id = api.deployment_requests_create(project["name"], "echo", {"x": 7}).id
    output = api.deployment_requests_output_get(project["name"], "echo", request_id, _preload_content=False)
    assert output.status_code == 200 and b'"x":7' in output.content.replace(b" ", b"")
    assert "attachment" in output.headers["Content-Disposition"]
    data = api.deployment_requests_input_get(project["name"], "echo", request_id, _preload_content=False)
    assert b'"x":7' in data.content.replace(b" ", b"")
