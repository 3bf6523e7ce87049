"""The core names the inputs it refuses in its own words; Datature's answers name them as its API does."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from modelbay.core.datasets import MAX_SIZE_BYTES
from modelbay.core.webhooks import MAX_BACKOFF_LIMIT_MS, MAX_RETRIES_LIMIT
from tests.compat.datature.receiver import Receiver
from tests.fixtures.server import Server

SOURCE = "UploadedNewlineDelimitedJsonFile"


def post(server: Server, project: dict[str, str], path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/projects/{project['datature_project_id']}/batch/{path}", json=body,
                      headers={"Secret-Key": project["token"]})


@pytest.mark.parametrize(
    ("retries", "message"),
    [
        ({"maxRetries": -1}, f"maxRetries must be an integer from 0 to {MAX_RETRIES_LIMIT}"),
        ({"maxBackoffMs": MAX_BACKOFF_LIMIT_MS + 1},
         f"maxBackoffMs must be an integer from 0 to {MAX_BACKOFF_LIMIT_MS}"),
    ],
)
def test_bad_retries_are_named_as_datature_names_them(
    server: Server, project: dict[str, str], receiver: Receiver, retries: dict[str, int], message: str
) -> None:
    spec = {"endpoint": receiver.url, "secret": {"contents": receiver.secret}, "retries": retries}
    answer = post(server, project, "webhooks", {"name": "w", "spec": spec})
    assert (answer.status_code, answer.json()) == (400, {"message": message})


def test_a_bad_dataset_size_is_named_as_datature_names_it(server: Server, project: dict[str, str]) -> None:
    spec = {"source": {"kind": SOURCE, "sizeBytes": 0, "crc32c": "VYiezg=="}}
    answer = post(server, project, "datasets", {"name": "d", "spec": spec})
    assert (answer.status_code, answer.json()) == (400, {"message": f"sizeBytes must be an integer from 1 to "
                                                                     f"{MAX_SIZE_BYTES}"})


def test_a_stop_time_before_the_start_is_named_as_datature_names_it(server: Server, project: dict[str, str]) -> None:
    unknown = "00000000-0000-0000-0000-000000000000"  # the times are checked before the ids are looked up
    spec = {"startAtTime": 2_000_000_000_000, "stopAtTime": 1_900_000_000_000, "datasetId": f"dataset_{unknown}",
            "deployment": {"kind": "ExistingDeployment", "deploymentId": f"deploy_{unknown}"},
            "resultDelivery": {"destinations": [{"kind": "Webhook", "webhookId": f"webhook_{unknown}"}]}}
    answer = post(server, project, "jobs", {"name": "j", "spec": spec})
    assert (answer.status_code, answer.json()) == (400, {"message": "stopAtTime must be after startAtTime"})
