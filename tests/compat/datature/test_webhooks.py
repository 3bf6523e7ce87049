"""Webhooks through the official `datature` SDK: CRUD, the signed test call, errors and auth."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest
from datature.nexus import error

from tests.compat.datature.conftest import nexus_project, webhook_spec
from tests.compat.datature.receiver import Receiver
from tests.fixtures.server import Server


def test_create_get_list_update_and_delete_a_webhook(nexus: Any, receiver: Receiver) -> None:
    created = nexus.batch.webhooks.create("results", webhook_spec(receiver, max_retries=5, max_backoff_ms=2000))
    assert created.id.startswith("webhook_") and created.object == "webhook"
    assert created.endpoint == receiver.url and created.name == "results"
    assert (created.retries.max_retries, created.retries.max_retry_delay) == (5, 2000)
    assert isinstance(created.create_date, int) and created.project_id == nexus.project_id

    assert nexus.batch.webhooks.get(created.id).endpoint == receiver.url
    assert [w.id for w in nexus.batch.webhooks.list().data] == [created.id]

    # A dict spec: the SDK strips the secret and always sends the default retries (3 / 15000).
    updated = nexus.batch.webhooks.update(created.id, {"endpoint": receiver.url + "?v=2"})
    assert updated.endpoint == receiver.url + "?v=2"
    assert (updated.retries.max_retries, updated.retries.max_retry_delay) == (3, 15000)
    assert updated.update_date >= created.update_date

    assert nexus.batch.webhooks.delete(created.id).deleted is True
    with pytest.raises(error.NotFoundError):
        nexus.batch.webhooks.get(created.id)


def test_the_secret_is_never_returned(server: Server, project: dict[str, str], receiver: Receiver) -> None:
    nexus = nexus_project(server, project["token"], project["datature_project_id"])
    created = nexus.batch.webhooks.create("quiet", webhook_spec(receiver))
    headers = {"Secret-Key": project["token"]}
    base = f"{server.url}/projects/{project['datature_project_id']}/batch/webhooks"
    for answer in (httpx.get(f"{base}/{created.id}", headers=headers), httpx.get(base, headers=headers)):
        assert answer.status_code == 200
        assert receiver.secret not in answer.text and "secret" not in answer.text


def test_test_sends_one_signed_sample_and_reports_it(nexus: Any, receiver: Receiver) -> None:
    created = nexus.batch.webhooks.create("sampled", webhook_spec(receiver))
    report = nexus.batch.webhooks.test(created.id)
    assert (report.status, report.response_code, report.attempt_count) == ("Ok", 200, 1)
    assert isinstance(report.latency_ms, int) and report.body is None  # the receiver's "ok" is not echoed
    [sample] = receiver.received
    assert sample.signature_ok and sample.json["webhookId"] == created.id


def test_test_of_a_failing_endpoint_reports_the_failure(nexus: Any, receiver: Receiver) -> None:
    receiver.fail_always = True
    created = nexus.batch.webhooks.create("broken", webhook_spec(receiver))
    report = nexus.batch.webhooks.test(created.id)
    assert (report.status, report.response_code) == ("Failed", 500)
    assert "500" in report.reason


def test_a_new_secret_signs_what_follows(nexus: Any, receiver: Receiver) -> None:
    created = nexus.batch.webhooks.create("rotated", webhook_spec(receiver))
    new_secret = base64.b64encode(b"n" * 32).decode()
    nexus.batch.webhooks.update_secret(created.id, new_secret)
    nexus.batch.webhooks.test(created.id)
    assert receiver.received[-1].signature_ok is False  # the receiver still holds the old secret
    receiver.secret = new_secret
    nexus.batch.webhooks.test(created.id)
    assert receiver.received[-1].signature_ok is True


def test_list_pages_with_url_safe_tokens(nexus: Any, receiver: Receiver) -> None:
    ids = [nexus.batch.webhooks.create(f"w{i}", webhook_spec(receiver)).id for i in range(3)]
    first = nexus.batch.webhooks.list({"limit": 2})
    assert [w.id for w in first.data] == ids[:2] and first.next_page
    second = nexus.batch.webhooks.list({"page": first.next_page, "limit": 2})
    assert [w.id for w in second.data] == ids[2:] and second.next_page is None


@pytest.mark.parametrize(
    "spec",
    [
        None,  # the SDK then sends only a name
        {"endpoint": "not a url", "secret": {"contents": base64.b64encode(b"s" * 32).decode()}},
        {"endpoint": "http://127.0.0.1:9/x", "secret": {"contents": "not base64!"}},
    ],
)
def test_a_bad_create_is_a_400_and_stores_nothing(nexus: Any, spec: Any) -> None:
    with pytest.raises(error.BadRequestError):
        nexus.batch.webhooks.create("bad", spec)
    assert nexus.batch.webhooks.list().data == []


def test_bad_retries_are_a_400(nexus: Any, receiver: Receiver) -> None:
    created = nexus.batch.webhooks.create("r", webhook_spec(receiver))
    with pytest.raises(error.BadRequestError):
        nexus.batch.webhooks.update(created.id, {"retries": {"max_retries": -1, "max_retry_delay": 10}})
    assert nexus.batch.webhooks.get(created.id).retries.max_retries == 3


def test_a_bad_key_is_refused(server: Server, project: dict[str, str]) -> None:
    nexus = nexus_project(server, "not-a-key", project["datature_project_id"])
    with pytest.raises(error.BadRequestError):  # the SDK shows a 401 as BadRequestError
        nexus.batch.webhooks.list()
    answer = httpx.get(f"{server.url}/projects/{project['datature_project_id']}/batch/webhooks",
                       headers={"Secret-Key": "not-a-key"})
    assert answer.status_code == 401 and "message" in answer.json()


def test_another_projects_id_is_forbidden(server: Server, project: dict[str, str], receiver: Receiver) -> None:
    other = server.create_project(project["name"] + "-other")
    theirs = nexus_project(server, other["token"], other["datature_project_id"])
    webhook_id = theirs.batch.webhooks.create("theirs", webhook_spec(receiver)).id
    mine_in_theirs = nexus_project(server, project["token"], other["datature_project_id"])
    with pytest.raises(error.ForbiddenError):
        mine_in_theirs.batch.webhooks.list()
    with pytest.raises(error.ForbiddenError):
        mine_in_theirs.batch.webhooks.get(webhook_id)
    # Their webhook id in my project is simply not there.
    with pytest.raises(error.NotFoundError):
        nexus_project(server, project["token"], project["datature_project_id"]).batch.webhooks.get(webhook_id)


@pytest.mark.parametrize("webhook_id", ["webhook_nope", "abc", "webhook_00000000-0000-0000-0000-000000000000"])
def test_unknown_ids_are_404(nexus: Any, webhook_id: str) -> None:
    with pytest.raises(error.NotFoundError) as raised:
        nexus.batch.webhooks.get(webhook_id)
    assert f"'{webhook_id}'" in raised.value.message  # the id as the caller gave it
