"""The real abeja-sdk against a real server: error texts name the ids ABEJA users know (`ser-…`,
`run-…`, 13-digit deployment ids), never modelbay's own."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from abeja.exceptions import BadRequest, NotFound

from modelbay.core import errors
from modelbay.dialects.abeja import ids
from modelbay.dialects.abeja.errors import ERRORS
from tests.compat.abeja.test_building import FAILING_BUILD, uploaded
from tests.compat.abeja.test_runs import NOOP
from tests.fixtures.server import wait_until


def test_unknown_runs_and_services_are_named_by_their_abeja_ids(
    deployments: Any, runs: Any, services: Any, org: dict[str, str]
) -> None:
    o = org["organization_id"]
    d = deployments.create_deployment(o, "app")["deployment_id"]

    with pytest.raises(NotFound) as no_service:
        services.get_service(o, d, "ser-0123456789abcdef")
    with pytest.raises(NotFound) as no_run:
        runs.get_run(o, d, "run-0123456789abcdef")

    assert no_service.value.error_description == "Service 'ser-0123456789abcdef' was not found"
    assert no_run.value.error_description == "Run 'run-0123456789abcdef' was not found"


def test_starting_a_running_service_or_stopping_a_stopped_one_names_no_internal_id(
    deploy: Callable[..., tuple[str, str]], services: Any, org: dict[str, str]
) -> None:
    o = org["organization_id"]
    d, v = deploy(NOOP)
    s = services.create_service(o, d, v)["service_id"]
    core_id = s.removeprefix("ser-")

    with pytest.raises(BadRequest) as running:
        services.start_service(o, d, s)
    services.stop_service(o, d, s)
    with pytest.raises(BadRequest) as stopped:
        services.stop_service(o, d, s)

    assert running.value.error_description == "The service is already running"
    assert stopped.value.error_description == "The service is not running"
    assert core_id not in running.value.error_description + stopped.value.error_description


def test_a_failed_builds_reason_names_no_revision(
    deployments: Any, runs: Any, org: dict[str, str], tmp_path: Path
) -> None:
    o = org["organization_id"]
    d, v = uploaded(deployments, org, tmp_path, FAILING_BUILD)

    run = runs.create_run(o, d, v, retry_count=0)  # while it builds: the build's failure fails it
    ended = wait_until(lambda: (r := runs.get_run(o, d, run["run_id"]))["status"] == "FAILED" and r, timeout=90)
    with pytest.raises(BadRequest) as refused:  # once failed, a new run is refused at once
        runs.create_run(o, d, v, retry_count=0)

    assert ended["error_message"].startswith("The build of version '0.0.1' failed: ")
    assert "the model weights are missing" in ended["error_message"]
    assert "revision" not in ended["error_message"]
    assert refused.value.error_description == (
        "Version '0.0.1' of deployment 'app' has no successfully built code (status: failed)")


def test_core_ids_in_not_found_errors_become_abeja_ids() -> None:
    deployment, version = str(uuid.uuid4()), str(uuid.uuid4())

    assert ERRORS.message(errors.NotFound("deployment", deployment)) == (
        f"Deployment '{ids.deployment_id(deployment)}' was not found")
    assert ERRORS.message(errors.NotFound("version", version)) == f"Version '{ids.version_id(version)}' was not found"
    assert ERRORS.message(errors.NotFound("endpoint", "0123456789abcdef")) == (
        "Endpoint 'pnt-0123456789abcdef' was not found")
    # What the caller sent stays as sent
    assert ERRORS.message(errors.NotFound("service", "ser-nope")) == "Service 'ser-nope' was not found"
    assert ERRORS.message(errors.NotFound("version", "0.0.1")) == "Version '0.0.1' was not found"
