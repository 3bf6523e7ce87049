"""What user code prints, read back with `logs_list`; and the request retention modes."""

from __future__ import annotations

import pytest
import ubiops

from tests.fixtures.packages import NOOP

PRINTS = '''
class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        print(f"working on {data['x']}")
        print("done")
        return dict(data)
'''


def test_what_a_request_printed_is_listed_by_its_request_id(api: ubiops.CoreApi, project, deploy) -> None:
    deploy("talker", PRINTS)
    first = api.deployment_requests_create(project["name"], "talker", {"x": 1}).id
    api.deployment_requests_create(project["name"], "talker", {"x": 2})
    logs = api.logs_list(project["name"], query=f"| deployment_request_id=`{first}`")
    assert [entry.log for entry in logs] == ["working on 1", "done"]
    assert logs[0].metadata.deployment_name == "talker" and logs[0].metadata.deployment_request_id == first
    every = api.logs_list(project["name"], query="| deployment_name=`talker` and deployment_version=`v1`")
    assert [entry.log for entry in every].count("done") == 2
    later = api.logs_list(project["name"], query=f"| deployment_request_id=`{first}`", start=str(logs[-1].timestamp + 1))
    assert later == []


def test_a_malformed_log_query_is_a_400(api: ubiops.CoreApi, project) -> None:
    with pytest.raises(ubiops.ApiException) as bad:
        api.logs_list(project["name"], query="| deployment_name")
    assert bad.value.status == 400


@pytest.mark.parametrize(("mode", "stored"), [("full", True), ("metadata", False)])
def test_retention_full_keeps_input_and_output_and_metadata_keeps_neither(
    api: ubiops.CoreApi, project, deploy, mode: str, stored: bool
) -> None:
    deploy("kept", NOOP, request_retention_mode=mode)
    request_id = api.deployment_requests_create(project["name"], "kept", {"x": 3}).id
    got = api.deployment_requests_get(project["name"], "kept", request_id)
    assert got.status == "completed" and got.input_size > 0
    assert (got.request_data, got.result) == (({"x": 3}, {"x": 3}) if stored else (None, None))


def test_retention_none_keeps_no_direct_request(api: ubiops.CoreApi, project, deploy) -> None:
    deploy("forgetful", NOOP, request_retention_mode="none")
    response = api.deployment_requests_create(project["name"], "forgetful", {"x": 4})
    assert (response.status, response.result) == ("completed", {"x": 4})
    with pytest.raises(ubiops.ApiException) as gone:
        api.deployment_requests_get(project["name"], "forgetful", response.id)
    assert gone.value.status == 404
