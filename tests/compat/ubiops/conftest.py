from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ubiops

from tests.fixtures.packages import make_package_dir
from tests.fixtures.server import Server


def sdk_client(server: Server, token: str) -> ubiops.ApiClient:
    configuration = ubiops.Configuration(host=f"{server.url}/v2.1", api_key={"Authorization": f"Token {token}"})
    return ubiops.ApiClient(configuration)


@pytest.fixture
def client(server: Server, project: dict[str, str]) -> Iterator[ubiops.ApiClient]:
    api_client = sdk_client(server, project["token"])
    yield api_client
    api_client.close()


@pytest.fixture
def api(client: ubiops.ApiClient) -> ubiops.CoreApi:
    return ubiops.CoreApi(client)


@pytest.fixture
def deploy(api: ubiops.CoreApi, client: ubiops.ApiClient, project: dict[str, str], tmp_path: Path) -> Any:
    """Create a deployment with one version running `source`, the way a UbiOps user does."""

    def _deploy(name: str, source: str, *, plain: bool = False, fields: list[dict[str, str]] | None = None,
                output_fields: list[dict[str, str]] | None = None, requirements: str = "", **version: Any) -> str:
        fields = fields if fields is not None else [{"name": "x", "data_type": "int"}]
        api.deployments_create(
            project["name"],
            ubiops.DeploymentCreate(
                name=name,
                input_type="plain" if plain else "structured",
                output_type="plain" if plain else "structured",
                input_fields=None if plain else fields,
                output_fields=None if plain else (output_fields if output_fields is not None else fields),
            ),
        )
        api.deployment_versions_create(project["name"], name, ubiops.DeploymentVersionCreate(version="v1", **version))
        package = make_package_dir(tmp_path / name, source, requirements)
        archive = ubiops.utils.zip_dir(str(package), str(tmp_path / f"{name}.zip"))
        api.revisions_file_upload(project["name"], name, "v1", file=archive)
        ubiops.utils.wait_for_deployment_version(client, project["name"], name, "v1", quiet=True, timeout=120)
        return name

    return _deploy
