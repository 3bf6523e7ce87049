"""Runs and services created right after the code upload, while the code still builds.

ABEJA users never wait for a build: the run or service is accepted at once and starts when the
build ends, or fails (stops) with the build's reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from tests.compat.abeja.conftest import upload
from tests.fixtures.server import wait_until

# The build's import check runs the module as `python -c …`; instances run it under worker.py.
# So only the build is slow (as one installing a real requirements.txt is), and may fail.
SLOW_BUILD = '''
import sys
import time

if sys.argv[0] == "-c":
    time.sleep(3)


def handler(request, context):
    return {"status_code": 200, "content_type": "application/json", "content": {"built": True}}
'''

FAILING_BUILD = '''
import sys
import time

if sys.argv[0] == "-c":
    time.sleep(3)
    raise RuntimeError("the model weights are missing")


def handler(request, context):
    return {"status_code": 200, "content_type": "application/json", "content": {"built": True}}
'''


def uploaded(deployments: Any, org: dict[str, str], tmp_path: Path, source: str) -> tuple[str, str]:
    """A deployment whose one version's code was just uploaded and builds; (deployment_id, version_id)."""
    o = org["organization_id"]
    d = deployments.create_deployment(o, "app")["deployment_id"]
    created = deployments.create_deployment_version(o, d, "0.0.1", "main:handler", "abeja-inc/all-cpu:19.10")
    answer: requests.Response = upload(created, source, tmp_path)
    assert answer.status_code == 200
    assert deployments.get_deployment_version(o, d, created["version_id"])["status"] == "BUILDING"
    return d, created["version_id"]


def test_a_run_created_while_the_code_builds_is_submitted_and_succeeds_once_built(
    deployments: Any, runs: Any, org: dict[str, str], tmp_path: Path
) -> None:
    o = org["organization_id"]
    d, v = uploaded(deployments, org, tmp_path, SLOW_BUILD)
    run = runs.create_run(o, d, v, input_data={"x": 1}, retry_count=0)
    assert run["status"] == "SUBMITTED"
    assert runs.get_run(o, d, run["run_id"])["status"] in ("SUBMITTED", "PENDING")
    ended = wait_until(lambda: (r := runs.get_run(o, d, run["run_id"]))["status"] in ("SUCCEEDED", "FAILED") and r,
                       timeout=90)
    assert ended["status"] == "SUCCEEDED", ended
    assert deployments.get_deployment_version(o, d, v)["status"] == "READY"


def test_a_run_created_while_the_code_builds_fails_with_the_builds_reason(
    deployments: Any, runs: Any, org: dict[str, str], tmp_path: Path
) -> None:
    o = org["organization_id"]
    d, v = uploaded(deployments, org, tmp_path, FAILING_BUILD)
    run = runs.create_run(o, d, v, retry_count=0)
    assert run["status"] == "SUBMITTED"
    ended = wait_until(lambda: (r := runs.get_run(o, d, run["run_id"]))["status"] in ("SUCCEEDED", "FAILED") and r,
                       timeout=90)
    assert ended["status"] == "FAILED"
    assert ended["attempts"] == 0
    assert "The build of version" in ended["error_message"]
    assert "the model weights are missing" in ended["error_message"]
    logs = runs.get_run_logs(o, d, run["run_id"])
    assert any("the model weights are missing" in event["message"] for event in logs["events"]), logs


def test_a_service_created_while_the_code_builds_is_in_progress_then_ready(
    deployments: Any, services: Any, org: dict[str, str], tmp_path: Path
) -> None:
    o = org["organization_id"]
    d, v = uploaded(deployments, org, tmp_path, SLOW_BUILD)
    service = services.create_service(o, d, v)
    assert service["status"] == "IN_PROGRESS"
    ready = wait_until(lambda: (s := services.get_service(o, d, service["service_id"]))["status"] != "IN_PROGRESS"
                       and s, timeout=90)
    assert ready["status"] == "READY", ready
    assert ready["error"] is None


def test_a_service_created_while_the_code_builds_stops_with_the_builds_reason(
    deployments: Any, services: Any, org: dict[str, str], tmp_path: Path
) -> None:
    o = org["organization_id"]
    d, v = uploaded(deployments, org, tmp_path, FAILING_BUILD)
    service = services.create_service(o, d, v)
    assert service["status"] == "IN_PROGRESS"
    stopped = wait_until(lambda: (s := services.get_service(o, d, service["service_id"]))["status"] != "IN_PROGRESS"
                         and s, timeout=90)
    assert stopped["status"] == "STOPPED", stopped
    assert "The build of version" in stopped["error"]
    assert "the model weights are missing" in stopped["error"]
