"""`ubiops-cli` 2.32.0, unchanged, against a real modelbay server: what a UbiOps user types.

The CLI keeps its configuration (the API, the token, the current project) in a file next to its own
code, not in HOME: each module runs its own copy of the CLI's package (on the CLI's interpreter, with
the CLI's SDK), so that its sign-in is its own, in its temporary directory.
"""

from __future__ import annotations

import json
import shutil
import textwrap
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
import ubiops

from tests.clients.conftest import Client, Run, clean_env, runner
from tests.compat.ubiops.conftest import sdk_client
from tests.fixtures.server import Server

#: The first run installs the CLI (a minute or more) in its first test's setup.
pytestmark = pytest.mark.timeout(900)

#: What the `ubiops` command runs (its console script), on the copy of the package PYTHONPATH names.
ENTRY_POINT = "import sys; sys.argv[0] = 'ubiops'; from ubiops_cli.main import main; main()"

#: The deployment's code, in the file the user names with `--deployment_file` (no deployment.py).
MAIN_PY = '''
import os


class Deployment:
    def __init__(self, base_directory, context):
        self.context = context["environment_variables"]

    def request(self, data):
        return {"y": data["x"] * 2,
                "file": os.environ.get("SYS_DEPLOYMENT_FILE_NAME", ""),
                "greeting": os.environ.get("GREETING", ""),
                "secret_seen": self.context.get("API_KEY") == "s3cret"}
'''

DEPLOYMENT_YAML = """
deployment_name: cli-double
deployment_description: Deployment created via command line.
input_type: structured
input_fields:
  - name: x
    data_type: int
output_type: structured
output_fields:
  - name: y
    data_type: int
  - name: file
    data_type: string
  - name: greeting
    data_type: string
  - name: secret_seen
    data_type: bool
"""


@dataclass
class Cli:
    """The CLI signed in to a project of its own on the shared server."""

    run: Run
    project: str
    token: str
    api: str  # the API endpoint it was given
    workdir: Path
    signin: CompletedProcess[str]


def ok(done: CompletedProcess[str]) -> str:
    """The output of a command that succeeded."""
    assert done.returncode == 0, f"exit code {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


def json_output(done: CompletedProcess[str]) -> Any:
    return json.loads(ok(done))


@pytest.fixture(scope="module")
def cli(ubiops_cli: Client, server: Server, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    workdir = tmp_path_factory.mktemp("ubiops-cli")
    installed = Path(ubiops_cli.python("import os, ubiops_cli; print(os.path.dirname(ubiops_cli.__file__))"))
    own = workdir / "cli"
    # a fresh user, never signed in: the copy leaves out the installed package's configuration
    shutil.copytree(installed, own / "ubiops_cli", ignore=shutil.ignore_patterns("__pycache__", ".config"))
    env = {**clean_env(workdir / "home"), "PYTHONPATH": str(own)}
    run = runner([str(ubiops_cli.interpreter), "-c", ENTRY_POINT], workdir, env)
    project = server.create_project(f"cli-{uuid.uuid4().hex[:8]}")
    api = f"{server.url}/v2.1"
    signin = run("signin", "--token", "--password", f"Token {project['token']}", "--api", api)
    assert (own / "ubiops_cli" / ".config").exists(), signin  # the sign-in went to this module's copy
    return Cli(run, project["name"], project["token"], api, workdir, signin)


@pytest.fixture(scope="module")
def deployed(cli: Cli, server: Server) -> CompletedProcess[str]:
    """`cli-double` created and deployed with the CLI, with variables on the project and the
    deployment, and built: what `ubiops deployments deploy` printed."""
    (cli.workdir / "deployment.yaml").write_text(DEPLOYMENT_YAML)
    ok(cli.run("deployments", "create", "-f", "deployment.yaml"))
    ok(cli.run("environment_variables", "create", "API_KEY", "--value", "s3cret", "--secret"))
    ok(cli.run("environment_variables", "create", "GREETING", "--value", "hello", "-d", "cli-double"))
    package = cli.workdir / "package"
    package.mkdir()
    (package / "main.py").write_text(textwrap.dedent(MAIN_PY))
    (package / "requirements.txt").write_text("")
    deploy = cli.run("deployments", "deploy", "cli-double", "-v", "v1", "-dir", str(package),
                     "--deployment_file", "main.py", "-y")
    ok(deploy)
    with sdk_client(server, cli.token) as client:
        ubiops.utils.wait_for_deployment_version(client, cli.project, "cli-double", "v1", quiet=True, timeout=180)
    return deploy


def test_signin_with_a_token_then_status_shows_the_user_api_and_project(cli: Cli) -> None:
    signin = ok(cli.signin)
    assert "Welcome to UbiOps!" in signin
    assert f"Selected project: {cli.project}" in signin

    status = ok(cli.run("status")).splitlines()

    assert status == ["Authorized", f"email: {cli.project}@modelbay.local", f"api: {cli.api}",
                      f"project: {cli.project}"]


def test_environment_variables_create_then_list_never_showing_a_secret(cli: Cli) -> None:
    created = json_output(cli.run("environment_variables", "create", "MODE", "--value", "fast", "-fmt", "json"))
    assert (created["name"], created["value"], created["secret"]) == ("MODE", "fast", False)
    secret = json_output(cli.run("env", "create", "PASSWORD", "--value", "hunter2", "--secret", "-fmt", "json"))
    assert (secret["value"], secret["secret"]) == (None, True)

    listed = json_output(cli.run("environment_variables", "list", "-fmt", "json"))
    assert {(v["name"], v["value"]) for v in listed} >= {("MODE", "fast"), ("PASSWORD", None)}
    table = ok(cli.run("environment_variables", "list"))
    assert "MODE" in table and "fast" in table and "PASSWORD" in table and "hunter2" not in table

    # A second of one name is refused with UbiOps's error line; `--overwrite` updates it instead
    again = cli.run("environment_variables", "create", "MODE", "--value", "slow")
    assert again.returncode == 1 and "Error" in again.stdout and "MODE" in again.stdout
    ok(cli.run("environment_variables", "create", "MODE", "--value", "slow", "--overwrite"))
    assert ("MODE", "slow") in {(v["name"], v["value"])
                                for v in json_output(cli.run("env", "list", "-fmt", "json"))}
    bad = cli.run("environment_variables", "create", "NOT-A-NAME", "--value", "x")
    assert bad.returncode == 1 and "Environment variable name 'NOT-A-NAME' is invalid" in bad.stdout


def test_deploy_with_a_deployment_file_stores_it_as_a_variable_the_instance_sees(
    cli: Cli, deployed: CompletedProcess[str]
) -> None:
    assert "Deployment was successfully deployed" in deployed.stdout
    listed = json_output(cli.run("environment_variables", "list", "-d", "cli-double", "-v", "v1", "-fmt", "json"))
    by_name = {v["name"]: v for v in listed}
    assert (by_name["SYS_DEPLOYMENT_FILE_NAME"]["value"], by_name["SYS_DEPLOYMENT_FILE_NAME"]["inheritance_type"]) == (
        "main.py", None)
    assert (by_name["GREETING"]["inheritance_type"], by_name["GREETING"]["inheritance_name"]) == (
        "deployment", "cli-double")
    assert (by_name["API_KEY"]["value"], by_name["API_KEY"]["inheritance_type"]) == (None, "project")

    answer = json_output(cli.run("deployments", "requests", "create", "cli-double", "--data", '{"x": 5}',
                                 "-fmt", "json"))

    request = answer[0] if isinstance(answer, list) else answer
    assert request["status"] == "completed", request
    # the CLI sends a structured input as a list of one: one result per item
    assert request["result"] == [{"y": 10, "file": "main.py", "greeting": "hello", "secret_seen": True}]


def test_a_pipeline_request_from_the_cli_runs_the_list_it_sends(cli: Cli, server: Server,
                                                                deployed: CompletedProcess[str]) -> None:
    x, y = [{"name": "x", "data_type": "int"}], [{"name": "y", "data_type": "int"}]
    with sdk_client(server, cli.token) as client:
        api = ubiops.CoreApi(client)
        api.pipelines_create(cli.project, ubiops.PipelineCreate(name="cli-pipe", input_type="structured",
                                                                input_fields=x, output_type="structured",
                                                                output_fields=y))
        api.pipeline_versions_create(cli.project, "cli-pipe", ubiops.PipelineVersionCreate(
            version="v1", objects=[{"name": "double", "reference_name": "cli-double"}],
            attachments=[
                {"destination_name": "double", "sources": [{"source_name": "pipeline_start", "mapping": [
                    {"source_field_name": "x", "destination_field_name": "x"}]}]},
                {"destination_name": "pipeline_end", "sources": [{"source_name": "double", "mapping": [
                    {"source_field_name": "y", "destination_field_name": "y"}]}]},
            ]))

    answer = json_output(cli.run("pipelines", "requests", "create", "cli-pipe", "--data", '{"x":5}', "-fmt", "json"))

    request = answer[0] if isinstance(answer, list) else answer
    assert request["status"] == "completed", request
    assert request["result"] == [{"y": 10}]  # the CLI sends a list: one result per item


def test_deployments_download_and_revisions_download_give_back_the_uploaded_archive(
    cli: Cli, deployed: CompletedProcess[str]
) -> None:
    out = cli.workdir / "downloads"
    out.mkdir()
    stored = ok(cli.run("deployments", "download", "cli-double", "-v", "v1", "-o", str(out)))
    first = Path(stored.strip().removeprefix("Archive stored in: "))
    assert first.parent == out and zipfile.is_zipfile(first)
    names = zipfile.ZipFile(first).namelist()
    assert any(name.endswith("main.py") for name in names) and any(name.endswith("requirements.txt") for name in names)

    revisions = json_output(cli.run("revisions", "list", "-d", "cli-double", "-v", "v1", "-fmt", "json"))
    again = ok(cli.run("revisions", "download", revisions[0]["id"], "-d", "cli-double", "-v", "v1",
                       "-o", str(out / "again.zip")))
    second = Path(again.strip().removeprefix("Archive stored in: "))
    assert second.read_bytes() == first.read_bytes()
