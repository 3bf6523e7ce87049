from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from abeja.exceptions import BadRequest, NotFound

from tests.fixtures.abeja_apps import GATED
from tests.fixtures.server import Server, wait_until

RUN_FIELDS = {
    "deployment_id", "models", "model_version", "model_version_id", "input_data", "output_template",
    "retry_count", "run_id", "status", "user_env_vars", "distribution", "created_at", "modified_at",
}

ENV_AND_INPUT = '''
import json
import os


def handler(request, context):
    print("GREETING=%s OTHER=%s" % (os.environ.get("GREETING"), os.environ.get("OTHER")))
    print("body=%s" % json.dumps(request["contents"], sort_keys=True))
    return {"status_code": 200, "content_type": "application/json", "content": {"ok": True}}
'''

# Fails until it has been called `SUCCEED_ON` times, counting in the file `COUNTER`.
FLAKY = '''
import os


def handler(request, context):
    path = os.environ["COUNTER"]
    count = int(open(path).read()) + 1 if os.path.exists(path) else 1
    open(path, "w").write(str(count))
    print("call %d" % count)
    if count < int(os.environ["SUCCEED_ON"]):
        raise RuntimeError("not yet (call %d)" % count)
    return {"status_code": 200, "content_type": "application/json", "content": {"calls": count}}
'''

NOISY = '''
def handler(request, context):
    for i in range(250):
        print("line %03d" % i)
    return {"status_code": 200, "content_type": "text/plain", "content": "ok"}
'''

NOOP = '''
def handler(request, context):
    return {"status_code": 200, "content_type": "text/plain", "content": ""}
'''


def status(runs: Any, o: str, d: str, r: str) -> str:
    return str(runs.get_run(o, d, r)["status"])


def finished(runs: Any, o: str, d: str, r: str, timeout: float = 60) -> dict[str, Any]:
    return wait_until(lambda: (run := runs.get_run(o, d, r))["status"] in ("SUCCEEDED", "FAILED") and run,
                      timeout=timeout)


def test_a_run_is_answered_at_once_with_every_field_then_succeeds_with_its_environment_and_input(
    runs: Any, org: dict[str, str], deploy: Callable[..., tuple[str, str]]
) -> None:
    o = org["organization_id"]
    d, v = deploy(ENV_AND_INPUT, user_parameters={"GREETING": "version", "OTHER": "kept"})
    started = time.monotonic()
    run = runs.create_run(o, d, v, input_data={"image": "cat.jpg"}, distribution=3, retry_count=0,
                          environment={"GREETING": "run"}, model_id="1111111111111")
    assert time.monotonic() - started < 1.0
    assert RUN_FIELDS <= set(run)
    assert re.fullmatch(r"run-[0-9a-f]{16}", run["run_id"])
    assert run["status"] == "SUBMITTED" and run["model_version_id"] == v and run["model_version"] == "0.0.1"
    assert run["models"] == {"alias": "1111111111111"} and run["distribution"] == 3 and run["retry_count"] == 0
    assert run["input_data"] == {"image": "cat.jpg"} and run["deployment_id"] == d
    assert run["user_env_vars"] == {"GREETING": "run", "OTHER": "kept"}

    done = finished(runs, o, d, run["run_id"])
    assert done["status"] == "SUCCEEDED"
    messages = [e["message"] for e in runs.get_run_logs(o, d, run["run_id"])["events"]]
    assert "GREETING=run OTHER=kept" in messages
    assert 'body={"image": "cat.jpg"}' in messages


def test_a_failing_attempt_is_retried_and_the_logs_show_each_attempt(
    runs: Any, org: dict[str, str], deploy: Callable[..., tuple[str, str]], shared_path: Path
) -> None:
    o = org["organization_id"]
    d, v = deploy(FLAKY)
    env = {"COUNTER": str(shared_path / "count"), "SUCCEED_ON": "3"}
    run = runs.create_run(o, d, v, environment=env)
    assert run["retry_count"] == 5  # the default
    done = finished(runs, o, d, run["run_id"])
    assert done["status"] == "SUCCEEDED" and done["attempts"] == 3
    messages = [e["message"] for e in runs.get_run_logs(o, d, run["run_id"])["events"]]
    assert [m for m in messages if m.startswith("call ")] == ["call 1", "call 2", "call 3"]
    assert any(m.startswith("Attempt 1 of 6 failed") for m in messages)
    assert any(m.startswith("Attempt 2 of 6 failed") for m in messages)
    assert "Attempt 3 of 6 succeeded" in messages
    assert any("not yet (call 2)" in m for m in messages)  # the traceback is in the log


def test_a_run_fails_once_its_retries_are_used_up(
    runs: Any, org: dict[str, str], deploy: Callable[..., tuple[str, str]], shared_path: Path
) -> None:
    o = org["organization_id"]
    d, v = deploy(FLAKY)
    run = runs.create_run(o, d, v, retry_count=1, environment={"COUNTER": str(shared_path / "c"), "SUCCEED_ON": "9"})
    done = finished(runs, o, d, run["run_id"])
    assert done["status"] == "FAILED" and done["attempts"] == 2
    assert (shared_path / "c").read_text() == "2"  # exactly 1 + retry_count executions


def test_retry_count_out_of_range_is_a_400_and_creates_nothing(
    runs: Any, org: dict[str, str], deploy: Callable[..., tuple[str, str]]
) -> None:
    o = org["organization_id"]
    d, v = deploy(NOOP)
    for bad in (10, -1):
        with pytest.raises(BadRequest) as refused:
            runs.create_run(o, d, v, retry_count=bad)
        assert "retry_count" in refused.value.error_description
    with pytest.raises(BadRequest):
        runs.create_run(o, d, v, environment={"X": {"nested": True}})
    assert runs.get_runs(o, d)["entries"] == []


def test_a_run_of_a_deployment_deleted_since_or_of_another_deployments_version_is_a_404(
    runs: Any, deployments: Any, org: dict[str, str], deploy: Callable[..., tuple[str, str]]
) -> None:
    o = org["organization_id"]
    d, v = deploy(NOOP)
    other, other_version = deploy(NOOP, name="other")
    assert finished(runs, o, d, runs.create_run(o, d, v)["run_id"])["status"] == "SUCCEEDED"  # both ids known now

    with pytest.raises(NotFound) as refused:
        runs.create_run(o, d, other_version)
    assert other_version in refused.value.error_description
    with pytest.raises(BadRequest):
        runs.create_run(o, d, None)
    deployments.delete_deployment(o, d)
    with pytest.raises(NotFound) as refused:
        runs.create_run(o, d, v)
    assert refused.value.error_description == f"Deployment '{d}' was not found"
    assert runs.create_run(o, other, other_version)["status"] == "SUBMITTED"


def test_statuses_follow_the_run_queued_running_and_finished(
    runs: Any, org: dict[str, str], deploy: Callable[..., tuple[str, str]], shared_path: Path, abeja_server: Server
) -> None:
    # Given a version that runs one thing at a time (set through the UbiOps API: same deployment)
    o = org["organization_id"]
    d, v = deploy(GATED, name="gated")
    answer = httpx.patch(f"{abeja_server.url}/v2.1/projects/{org['name']}/deployments/gated/versions/0.0.1",
                         json={"maximum_instances": 1}, headers={"Authorization": f"Token {org['token']}"})
    assert answer.status_code == 200, answer.text
    gate = shared_path / "gate"
    # When two runs wait on a closed gate
    started = time.monotonic()
    first = runs.create_run(o, d, v, environment={"GATE": str(gate)})["run_id"]
    second = runs.create_run(o, d, v, environment={"GATE": str(gate)})["run_id"]
    # each answered at once, whatever the code does: a create that waited for its run would not
    # return before the gate opens (the bound leaves room for a loaded machine, a cluster's store)
    assert time.monotonic() - started < 10.0
    # Then the first runs and the second waits its turn
    wait_until(lambda: status(runs, o, d, first) == "RUNNING", timeout=120)
    assert status(runs, o, d, second) == "PENDING"
    gate.write_text("open")
    assert finished(runs, o, d, first)["status"] == "SUCCEEDED"
    assert finished(runs, o, d, second)["status"] == "SUCCEEDED"


def test_get_runs_pages_through_every_run_exactly_once_in_both_orders(
    runs: Any, org: dict[str, str], deploy: Callable[..., tuple[str, str]], abeja_server: Server
) -> None:
    o = org["organization_id"]
    d, v = deploy(NOOP)
    created = [runs.create_run(o, d, v, retry_count=0)["run_id"] for _ in range(41)]

    def all_pages(scan_forward: bool | None) -> list[str]:
        seen, token, pages = [], None, 0
        while True:
            page = runs.get_runs(o, d, next_page_token=token, scan_forward=scan_forward)
            seen += [e["run_id"] for e in page["entries"]]
            pages += 1
            token = page.get("next_page_token")
            if not token:
                return seen

    newest_first = all_pages(None)
    assert sorted(newest_first) == sorted(created) and len(set(newest_first)) == 41
    assert newest_first == list(reversed(created))
    assert all_pages(True) == created
    assert all_pages(False) == newest_first
    with pytest.raises(BadRequest):
        runs.get_runs(o, d, next_page_token="garbage!")
    # The spec's spelling, with a trailing slash, answers the same page without a redirect
    slash = httpx.get(f"{abeja_server.url}/organizations/{o}/deployments/{d}/runs/",
                      headers={"Authorization": f"Bearer {org['token']}"}, follow_redirects=False)
    assert slash.status_code == 200
    assert [e["run_id"] for e in slash.json()["entries"]] == newest_first[:20]


def test_run_logs_page_up_in_order_and_recent_logs_page_down_to_an_empty_end(
    runs: Any, org: dict[str, str], deploy: Callable[..., tuple[str, str]]
) -> None:
    o = org["organization_id"]
    d, v = deploy(NOISY)
    r = runs.create_run(o, d, v)["run_id"]
    assert finished(runs, o, d, r)["status"] == "SUCCEEDED"

    ascending, token, pages = [], None, 0
    while True:
        page = runs.get_run_logs(o, d, r, next_token=token)
        ascending += page["events"]
        pages += 1
        if "next_token" not in page:
            break
        token = page["next_token"]
    lines = [e["message"] for e in ascending if e["message"].startswith("line ")]
    assert lines == [f"line {i:03d}" for i in range(250)] and pages == 3
    assert all(e["timestamp"].endswith("Z") for e in ascending)

    descending, backward = [], None
    while True:
        page = runs.get_run_recent_logs(o, d, r, next_backward_token=backward)
        assert "next_forward_token" in page and "next_backward_token" in page
        if not page["events"]:
            break
        descending += page["events"]
        backward = page["next_backward_token"]
    assert descending == list(reversed(ascending))
    end = runs.get_run_recent_logs(o, d, r, next_backward_token="0")  # before the first line: the end
    assert end["events"] == []
    newer = runs.get_run_recent_logs(o, d, r, next_forward_token=end["next_forward_token"])  # a token it takes
    assert [e["message"] for e in newer["events"]][-1] == ascending[0]["message"]

    now = datetime.now(UTC).replace(tzinfo=None)  # the SDK formats naive UTC times
    assert runs.get_run_logs(o, d, r, start_time=now + timedelta(hours=1))["events"] == []
    assert runs.get_run_logs(o, d, r, end_time=now - timedelta(hours=1))["events"] == []
    window = runs.get_run_logs(o, d, r, start_time=now - timedelta(hours=1), end_time=now + timedelta(hours=1))
    assert len(window["events"]) == 100


CRASHES = '''
import os
import sys


def handler(request, context):
    kind = request["contents"]["kind"]
    if kind == "exit":
        os._exit(3)
    if kind == "print":
        for _ in range(5 * 1024):
            sys.stdout.write("x" * 1023 + "\\n")
    return {"status_code": 500, "content_type": "text/plain", "content": "said no"}
'''


def test_code_that_exits_prints_too_much_or_answers_500_fails_only_its_own_run(
    runs: Any, org: dict[str, str], deploy: Callable[..., tuple[str, str]]
) -> None:
    o = org["organization_id"]
    d, v = deploy(CRASHES)
    ids = {kind: runs.create_run(o, d, v, input_data={"kind": kind}, retry_count=0)["run_id"]
           for kind in ("exit", "print", "status")}
    ended = {kind: finished(runs, o, d, r) for kind, r in ids.items()}
    assert {kind: run["status"] for kind, run in ended.items()} == dict.fromkeys(ids, "FAILED")
    assert "stopped unexpectedly" in ended["exit"]["error_message"]
    assert "printed more than" in ended["print"]["error_message"]
    assert ended["status"]["error_message"] == "The handler answered with status 500"
    ok = runs.create_run(o, d, v, input_data={"kind": "none"}, retry_count=0)  # the server is fine
    assert ok["status"] == "SUBMITTED"
