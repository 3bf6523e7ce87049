"""Streaming requests through `ubiops.utils.stream_deployment_request` against a real server.

The SDK 4.15 has no `stream_deployment_version_request`: `stream_deployment_request(..., version=...)`
calls the version path. It splits the response on line breaks, so a partial with a newline in it arrives
as several chunks (the server sends one `data:` line per line of the partial).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
import ubiops
from ubiops.utils import stream_deployment_request

from tests.fixtures.server import Server, wait_until
from tests.integration.conftest import query

STREAMS = '''
class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data, context):
        for word in ("one", "two", "three"):
            context["streaming_update"](word)
        return {"x": data["x"] + 1}
'''

STREAMS_LINES = '''
class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data, context):
        context["streaming_update"]("first line\\nsecond line")
        context["streaming_update"]("")
        return data
'''

BREAKS_MIDWAY = '''
class Broken(Exception):
    public_error_message = "the model broke halfway"


class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data, context):
        context["streaming_update"]("partial")
        raise Broken()
'''

WAITS_FOR_FILE = '''
import os
import time


class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data, context):
        context["streaming_update"]("started")
        deadline = time.monotonic() + 60
        while not os.path.exists(data["path"]):
            if time.monotonic() > deadline:
                raise TimeoutError("the test never released the request")
            time.sleep(0.01)
        context["streaming_update"]("after the client left")
        return {"x": data["x"]}
'''


def _requests_of(server: Server, project: str, deployment: str) -> list[Any]:
    return query(
        server.data_dir,
        "SELECT r.id, r.mode, r.status FROM requests r JOIN deployments d ON d.id = r.deployment_id "
        "JOIN projects p ON p.id = d.project_id WHERE p.name = ? AND d.name = ?",
        project, deployment,
    )


def test_the_sdk_yields_each_partial_in_order_and_then_nothing_more(
    client: ubiops.ApiClient, project: dict[str, str], deploy
) -> None:
    deploy("streams", STREAMS)
    chunks = list(stream_deployment_request(client, project_name=project["name"], deployment_name="streams",
                                            data={"x": 1}, full_response=False))
    assert chunks == ["one", "two", "three"]


def test_with_full_response_the_last_item_is_the_completed_request(
    client: ubiops.ApiClient, project: dict[str, str], deploy
) -> None:
    deploy("streams", STREAMS)
    items = list(stream_deployment_request(client, project_name=project["name"], deployment_name="streams",
                                           data={"x": 1}, full_response=True))
    assert items[:3] == ["one", "two", "three"]
    final = items[3]
    assert isinstance(final, ubiops.DeploymentRequestCreateResponse)
    assert (final.status, final.result, final.error_message) == ("completed", {"x": 2}, None)
    assert (final.deployment, final.version, final.timeout) == ("streams", "v1", 3600)
    assert final.id and len(items) == 4


def test_the_version_path_streams_that_version(client: ubiops.ApiClient, project: dict[str, str], deploy) -> None:
    deploy("streams", STREAMS)
    items = list(stream_deployment_request(client, project_name=project["name"], deployment_name="streams",
                                           version="v1", data={"x": 5}, timeout=300, full_response=True))
    assert items[:3] == ["one", "two", "three"]
    assert (items[3].status, items[3].version, items[3].result, items[3].timeout) == ("completed", "v1", {"x": 6}, 300)


def test_a_partial_with_a_newline_reaches_the_sdk_as_one_chunk_per_line(
    client: ubiops.ApiClient, project: dict[str, str], deploy
) -> None:
    deploy("lines", STREAMS_LINES, plain=True)
    items = list(stream_deployment_request(client, project_name=project["name"], deployment_name="lines",
                                           data="plain text in", full_response=True))
    assert items[:3] == ["first line", "second line", ""]  # the empty partial is an empty chunk
    assert (items[3].status, items[3].result) == ("completed", "plain text in")


def test_a_deployment_that_raises_midway_makes_the_sdk_raise_with_its_message_after_the_partials(
    client: ubiops.ApiClient, project: dict[str, str], deploy
) -> None:
    deploy("broken", BREAKS_MIDWAY)
    seen: list[Any] = []
    with pytest.raises(ubiops.UbiOpsException, match="the model broke halfway"):
        for item in stream_deployment_request(client, project_name=project["name"], deployment_name="broken",
                                              data={"x": 1}):
            seen.append(item)
    assert seen == ["partial"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "Missing input field: x"),
        ({"x": 1, "y": 2}, "Unexpected input field: y"),
        ({"x": "one"}, "'x' must be of type int"),
    ],
)
def test_input_that_does_not_match_the_fields_makes_the_sdk_raise_naming_the_field(
    client: ubiops.ApiClient, project: dict[str, str], deploy, server: Server, data: dict[str, Any], message: str
) -> None:
    deploy("streams", STREAMS)
    with pytest.raises(ubiops.UbiOpsException, match=message):
        list(stream_deployment_request(client, project_name=project["name"], deployment_name="streams", data=data))
    assert _requests_of(server, project["name"], "streams") == []  # refused before anything was recorded


def test_an_unknown_deployment_makes_the_sdk_raise_not_found(
    client: ubiops.ApiClient, project: dict[str, str]
) -> None:
    with pytest.raises(ubiops.UbiOpsException, match="not found"):
        list(stream_deployment_request(client, project_name=project["name"], deployment_name="nope", data={"x": 1}))


def test_a_timeout_above_the_maximum_makes_the_sdk_raise(
    client: ubiops.ApiClient, project: dict[str, str], deploy
) -> None:
    deploy("streams", STREAMS)
    with pytest.raises(ubiops.UbiOpsException, match="3600"):
        list(stream_deployment_request(client, project_name=project["name"], deployment_name="streams",
                                       data={"x": 1}, timeout=3601))


def test_a_streamed_request_is_recorded_like_a_direct_request(
    client: ubiops.ApiClient, project: dict[str, str], deploy, server: Server
) -> None:
    deploy("streams", STREAMS)
    final = list(stream_deployment_request(client, project_name=project["name"], deployment_name="streams",
                                           data={"x": 1}, full_response=True))[-1]
    rows = _requests_of(server, project["name"], "streams")
    assert [(r["id"], r["mode"], r["status"]) for r in rows] == [(final.id, "direct", "completed")]


def test_the_raw_stream_is_framed_as_events_and_errors_are_one_json_line(
    server: Server, project: dict[str, str], deploy
) -> None:
    deploy("streams", STREAMS)
    url = f"{server.url}/v2/projects/{project['name']}/deployments/streams/requests/stream"
    headers = {"Authorization": f"Token {project['token']}", "Accept": "text/event-stream"}
    response = requests.post(f"{url}?timeout=soon&timeout=42", json={"x": 3}, headers=headers, timeout=60)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = response.text.split("\n\n")
    assert events[:3] == ["event: update\ndata:one", "event: update\ndata:two", "event: update\ndata:three"]
    assert events[3].startswith("event: result\n{") and "\n" not in events[3][len("event: result\n"):]
    assert events[4:] == [""]
    assert '"timeout":42' in events[3] and '"status":"completed"' in events[3]

    refused = requests.post(url, json={"x": 3}, headers={"Authorization": "Token wrong"}, timeout=60)
    assert refused.status_code == 401
    assert refused.text.count("\n") == 1 and refused.json()["error_message"] == refused.json()["error"]


def test_a_client_that_leaves_midway_leaves_the_request_to_finish_and_be_recorded(
    server: Server, project: dict[str, str], deploy, shared_path: Path
) -> None:
    fields = [{"name": "x", "data_type": "int"}, {"name": "path", "data_type": "string"}]
    deploy("waits", WAITS_FOR_FILE, fields=fields, output_fields=[{"name": "x", "data_type": "int"}])
    release = shared_path / "release"
    url = f"{server.url}/v2.1/projects/{project['name']}/deployments/waits/requests/stream"
    headers = {"Authorization": f"Token {project['token']}"}
    with requests.post(url, json={"x": 7, "path": str(release)}, headers=headers, stream=True, timeout=60) as response:
        for line in response.iter_lines():
            if line == b"data:started":
                break

    def statuses() -> list[str]:
        return [r["status"] for r in _requests_of(server, project["name"], "waits")]

    # the client has gone; the request is still running, recorded as processing
    wait_until(lambda: statuses() == ["processing"])
    release.touch()
    wait_until(lambda: statuses() == ["completed"], timeout=30)
    # the instance is free again: a second stream runs to its end
    release2 = shared_path / "release2"
    release2.touch()
    again = requests.post(url, json={"x": 8, "path": str(release2)}, headers=headers, timeout=60)
    assert again.text.startswith("event: update\ndata:started\n\n") and '"status":"completed"' in again.text
