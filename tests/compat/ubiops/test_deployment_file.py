"""The official `ubiops` SDK, unchanged, against a real modelbay server: `SYS_DEPLOYMENT_FILE_NAME`
(what `ubiops deployments deploy --deployment_file` sets) names the file of `class Deployment`."""

from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path

import pytest
import ubiops

Env = ubiops.EnvironmentVariableCreate

MAIN_PY = '''
class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        return "main: " + data
'''

OTHER_PY = '''
class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        return "other: " + data
'''


def create_version(api: ubiops.CoreApi, project: str, name: str) -> None:
    api.deployments_create(project, ubiops.DeploymentCreate(name=name, input_type="plain", output_type="plain"))
    api.deployment_versions_create(project, name, ubiops.DeploymentVersionCreate(version="v1"))


def upload(api: ubiops.CoreApi, client: ubiops.ApiClient, project: str, name: str, tmp_path: Path,
           files: dict[str, str]) -> ubiops.DeploymentVersionDetail:
    """Upload a package of `files` (zipped from a folder, as the SDK does) and wait for its build to end."""
    package = tmp_path / name
    package.mkdir()
    for file, source in files.items():
        (package / file).write_text(textwrap.dedent(source))
    archive = ubiops.utils.zip_dir(str(package), str(tmp_path / f"{name}.zip"))
    api.revisions_file_upload(project, name, "v1", file=archive)
    with contextlib.suppress(ubiops.utils.exceptions.StatusError):  # a failed build: the caller reads why
        ubiops.utils.wait_for_deployment_version(client, project, name, "v1", quiet=True, timeout=120)
    return api.deployment_versions_get(project, name, "v1")


def test_a_version_whose_code_is_in_main_py_only_runs_it_once_the_variable_names_it(
    api: ubiops.CoreApi, client: ubiops.ApiClient, project: dict[str, str], tmp_path: Path
) -> None:
    p = project["name"]
    create_version(api, p, "main-file")
    # Given the variable set before the upload, as the CLI does (with or without ".py")
    api.deployment_version_environment_variables_create(
        p, "main-file", "v1", Env(name="SYS_DEPLOYMENT_FILE_NAME", value="main.py", secret=False))

    # When a package holding main.py and no deployment.py is uploaded
    version = upload(api, client, p, "main-file", tmp_path, {"main.py": MAIN_PY, "other.py": OTHER_PY})

    # Then it builds and its instances run main.py
    assert version.status == "available"
    assert api.deployment_requests_create(p, "main-file", "hi").result == "main: hi"

    # When the variable names another file of the package (at the deployment level, without ".py",
    # once the version's own is gone), the instances restart with it: no new build is needed
    own = {v.name: v for v in api.deployment_version_environment_variables_list(p, "main-file", "v1")}
    api.deployment_environment_variables_create(
        p, "main-file", Env(name="SYS_DEPLOYMENT_FILE_NAME", value="other", secret=False))
    api.deployment_version_environment_variables_delete(p, "main-file", own["SYS_DEPLOYMENT_FILE_NAME"].id, "v1")
    assert api.deployment_requests_create(p, "main-file", "hi").result == "other: hi"
    assert len(api.revisions_list(p, "main-file", "v1")) == 1

    # When it names a file the package does not hold, a request fails saying which file is missing
    api.deployment_environment_variables_update(
        p, "main-file", "SYS_DEPLOYMENT_FILE_NAME", Env(name="SYS_DEPLOYMENT_FILE_NAME", value="gone.py",
                                                        secret=False))
    failed = api.deployment_requests_create(p, "main-file", "hi")
    assert failed.status == "failed"
    assert "gone.py (named by SYS_DEPLOYMENT_FILE_NAME) was not found in the deployment package" in failed.error_message


def test_without_the_variable_a_package_without_deployment_py_fails_its_build_naming_the_file(
    api: ubiops.CoreApi, client: ubiops.ApiClient, project: dict[str, str], tmp_path: Path
) -> None:
    p = project["name"]
    create_version(api, p, "no-variable")

    version = upload(api, client, p, "no-variable", tmp_path, {"main.py": MAIN_PY})

    assert version.status == "failed"
    [revision] = api.revisions_list(p, "no-variable", "v1")
    assert revision.status == "failed"
    message = api.revisions_get(p, "no-variable", revision_id=revision.id, version="v1").error_message
    assert "deployment.py was not found" in message


def test_naming_the_file_after_a_failed_build_builds_the_same_upload_again(
    api: ubiops.CoreApi, client: ubiops.ApiClient, project: dict[str, str], tmp_path: Path
) -> None:
    p = project["name"]
    create_version(api, p, "named-later")
    assert upload(api, client, p, "named-later", tmp_path, {"main.py": MAIN_PY}).status == "failed"

    # When the variable is set afterwards (the CLI's order reversed), the upload builds again
    api.deployment_version_environment_variables_create(
        p, "named-later", "v1", Env(name="SYS_DEPLOYMENT_FILE_NAME", value="main.py", secret=False))
    ubiops.utils.wait_for_deployment_version(client, p, "named-later", "v1", quiet=True, timeout=120)

    # Then the version serves main.py from the one revision there is
    [revision] = api.revisions_list(p, "named-later", "v1")
    assert (revision.status, api.deployment_versions_get(p, "named-later", "v1").status) == ("success", "available")
    assert api.deployment_requests_create(p, "named-later", "hi").result == "main: hi"
    # Another variable leaves a build that failed as it is
    create_version(api, p, "unnamed")
    assert upload(api, client, p, "unnamed", tmp_path, {"main.py": MAIN_PY}).status == "failed"
    api.deployment_version_environment_variables_create(p, "unnamed", "v1", Env(name="OTHER", value="1", secret=False))
    assert api.deployment_versions_get(p, "unnamed", "v1").status == "failed"


@pytest.mark.parametrize("value", ["missing.py", "not a file"])
def test_a_variable_naming_no_file_of_the_package_fails_the_build_naming_it(
    api: ubiops.CoreApi, client: ubiops.ApiClient, project: dict[str, str], tmp_path: Path, value: str
) -> None:
    p = project["name"]
    create_version(api, p, "bad-file")
    api.project_environment_variables_create(p, Env(name="SYS_DEPLOYMENT_FILE_NAME", value=value, secret=False))

    version = upload(api, client, p, "bad-file", tmp_path, {"deployment.py": MAIN_PY})

    assert version.status == "failed"
    [revision] = api.revisions_list(p, "bad-file", "v1")
    message = api.revisions_get(p, "bad-file", revision_id=revision.id, version="v1").error_message
    assert ("missing.py was not found" if value == "missing.py" else "'not a file' does not name a Python file") \
        in message
