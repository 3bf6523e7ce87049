from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import ubiops
from datature.nexus import Client

from tests.compat.datature.receiver import Receiver, running_receiver
from tests.compat.ubiops.conftest import sdk_client
from tests.fixtures.packages import NOOP, make_package_dir
from tests.fixtures.server import Server


def nexus_project(server: Server, key: str, project_id: str) -> Any:
    """The SDK's project handle, pointed at the server the way a user points it."""
    return Client(key, endpoint=server.url).get_project(project_id)


@pytest.fixture
def nexus(server: Server, project: dict[str, str]) -> Any:
    return nexus_project(server, project["token"], project["datature_project_id"])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


def webhook_spec(receiver: Receiver, *, max_retries: int = 3, max_backoff_ms: int = 100) -> dict[str, Any]:
    return {"endpoint": receiver.url, "secret": {"contents": receiver.secret},
            "retries": {"max_retries": max_retries, "max_retry_delay": max_backoff_ms}}


def deploy_with(server: Server, project: dict[str, str], tmp_path: Path, name: str, source: str = NOOP,
                **version: Any) -> str:
    """Make a deployment with the ubiops SDK (Datature cannot create one); returns its `deploy_…` id
    as the Datature SDK lists it."""
    fields = [{"name": "x", "data_type": "int"}]
    with sdk_client(server, project["token"]) as client:
        api = ubiops.CoreApi(client)
        api.deployments_create(project["name"], ubiops.DeploymentCreate(
            name=name, input_type="structured", output_type="structured", input_fields=fields, output_fields=fields))
        api.deployment_versions_create(project["name"], name, ubiops.DeploymentVersionCreate(version="v1", **version))
        package = make_package_dir(tmp_path / name, source, "")
        archive = ubiops.utils.zip_dir(str(package), str(tmp_path / f"{name}.zip"))
        api.revisions_file_upload(project["name"], name, "v1", file=archive)
        ubiops.utils.wait_for_deployment_version(client, project["name"], name, "v1", quiet=True, timeout=120)
    listed = nexus_project(server, project["token"], project["datature_project_id"]).deployments.list()
    return next(d.id for d in listed if d.name == name)


@pytest.fixture
def deploy(server: Server, project: dict[str, str], tmp_path: Path) -> Callable[..., str]:
    def _deploy(name: str, source: str = NOOP, **version: Any) -> str:
        return deploy_with(server, project, tmp_path, name, source, **version)

    return _deploy


def make_dataset(nexus: Any, path: Path, items: list[dict[str, Any]]) -> str:
    """Upload `items` as an NDJSON dataset with the SDK; its id once uploaded."""
    path.write_bytes(b"".join(orjson.dumps(item) + b"\n" for item in items))
    dataset_id = str(nexus.batch.datasets.create(path.stem, str(path)).id)
    assert nexus.batch.datasets.get(dataset_id).status.overview == "Uploaded"
    return dataset_id
