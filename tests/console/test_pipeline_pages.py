"""The console's pipeline pages (the graph drawn, a pipeline's requests, a pipeline request with its
steps), a run's attempts and a project's webhooks, over plain HTTP against a real server; every
object made through the dialects' HTTP APIs."""

from __future__ import annotations

import base64
import html
import re
from typing import Any

import httpx
import pytest

from tests.console.conftest import Console
from tests.fixtures.server import Server, wait_until
from tests.integration.conftest import ubiops

SECRET = base64.b64encode(b"s" * 32).decode()


def test_the_pipelines_page_draws_each_versions_graph(console: Console, deployed: dict[str, Any],
                                                      piped: dict[str, Any]) -> None:
    project = deployed["a"]["name"]
    console.sign_in(deployed["a"]["token"])
    page = console.http.get(f"/ui/projects/{project}/pipelines")
    assert page.status_code == 200
    assert page.text.count('<svg class="pipeline-graph"') == 3  # chain v1, outer v1 and v2
    outer = page.text[page.text.index('id="pipeline-outer"'):]
    v1 = outer[:outer.index("<h3>v2")]
    for name in ("pipeline_start", "first", "sub", "pipeline_end"):
        assert f'data-name="{name}"' in v1, name
    assert f'href="/ui/projects/{project}/deployments/echo"><g class="node node-deployment" data-name="first"' \
        in re.sub(r">\s+<", "><", v1)
    assert f'href="/ui/projects/{project}/pipelines#pipeline-chain"' in v1
    assert "<title>first → sub</title>" in v1 and "<title>sub: pipeline chain</title>" in v1
    v2 = outer[outer.index("<h3>v2"):]
    assert 'class="node node-operator" data-name="constant"' in v2 and "operator pipeline-variable" in v2
    # the tables stay below the drawing, and the requests are a link away
    assert "first → sub" in v1[v1.index("<table>"):] and "pipeline_start → first" in v1
    assert f'href="/ui/projects/{project}/pipelines/outer/requests"' in outer


def test_a_pipelines_requests_and_a_pipeline_requests_steps(console: Console, deployed: dict[str, Any],
                                                            piped: dict[str, Any]) -> None:
    project = deployed["a"]["name"]
    console.sign_in(deployed["a"]["token"])
    listed = console.http.get(f"/ui/projects/{project}/pipelines/outer/requests")
    assert listed.status_code == 200
    assert f'href="/ui/projects/{project}/pipeline-requests/{piped["id"]}"' in listed.text
    assert piped["sub"] not in listed.text  # a request of chain, listed there
    sub_listed = console.http.get(f"/ui/projects/{project}/pipelines/chain/requests").text
    assert piped["sub"] in sub_listed and "(a sub-pipeline's)" in sub_listed

    page = console.http.get(f"/ui/projects/{project}/pipeline-requests/{piped['id']}")
    assert page.status_code == 200
    assert 'id="status">completed<' in page.text
    assert '<pre class="payload" id="input">piped</pre>' in page.text
    assert '<pre class="payload" id="output">piped</pre>' in page.text  # reversed twice
    steps = page.text[page.text.index('<table class="steps">'):]
    assert f'href="/ui/projects/{project}/requests/{piped["step"]}"' in steps
    assert f'href="/ui/projects/{project}/pipeline-requests/{piped["sub"]}"' in steps
    assert steps.count(" UTC</td>") == 4  # each step's start and end
    assert len(re.findall(r"<td>\d+\.\d{3} s", steps)) == 2  # and how long each took
    assert "(no longer kept)" not in steps

    sub = console.http.get(f"/ui/projects/{project}/pipeline-requests/{piped['sub']}")
    assert sub.status_code == 200 and f'href="/ui/projects/{project}/pipeline-requests/{piped["id"]}"' in sub.text
    step = console.http.get(f"/ui/projects/{project}/requests/{piped['step']}")
    assert step.status_code == 200
    assert f'href="/ui/projects/{project}/pipeline-requests/{piped["id"]}">its pipeline request' in step.text
    assert f'href="/ui/projects/{project}/pipelines#pipeline-outer">its pipeline' in step.text
    assert console.http.get(f"/ui/projects/{project}/pipeline-requests/{piped['id']}/input").json() == "piped"
    assert console.http.get(f"/ui/projects/{project}/pipeline-requests/{piped['id']}/nonsense").status_code == 404


def test_a_pipelines_requests_are_paged_newest_first(console: Console, server: Server,
                                                     deployed: dict[str, Any], piped: dict[str, Any]) -> None:
    project = deployed["a"]["name"]
    with ubiops(server, deployed["a"]["token"]) as client:
        made = client.post(f"/projects/{project}/pipelines/chain/requests/batch", json=[f"n{n}" for n in range(55)])
        assert made.status_code == 201, made.text
        ids = [r["id"] for r in made.json()]
    console.sign_in(deployed["a"]["token"])
    link = r'class="pipeline-request-link" href="[^"]*/pipeline-requests/([0-9a-f-]{36})"'
    first = console.http.get(f"/ui/projects/{project}/pipelines/chain/requests")
    shown = re.findall(link, first.text)
    older = re.search(r'href="(\?[^"]*)" rel="next">Older<', first.text)
    assert len(shown) == 50 and older is not None
    rest = console.http.get(f"/ui/projects/{project}/pipelines/chain/requests" + html.unescape(older[1]))
    shown += re.findall(link, rest.text)
    assert set(ids) <= set(shown) and len(shown) == len(set(shown)) == 55 + 1  # and the sub-pipeline's
    assert 'rel="next"' not in rest.text
    assert console.http.get(f"/ui/projects/{project}/pipelines/chain/requests?before_time=never").status_code == 400


@pytest.fixture(scope="module")
def ran(server: Server, deployed: dict[str, Any]) -> str:
    """The core id of an ABEJA run of echo in project A, succeeded."""
    a = deployed["a"]
    abeja = httpx.Client(base_url=f"{server.url}/organizations/{a['organization_id']}",
                         headers={"Authorization": f"Bearer {a['token']}"}, timeout=60)
    with abeja:
        found = abeja.get("/deployments").json()["entries"]
        deployment_id = next(d["deployment_id"] for d in found if d["name"] == "echo")
        version_id = abeja.get(f"/deployments/{deployment_id}/versions").json()["entries"][0]["version_id"]
        run = abeja.post(f"/deployments/{deployment_id}/runs", json={"version_id": version_id, "input_data": "ran"})
        assert run.status_code == 200, run.text
        run_id = run.json()["run_id"]
        wait_until(lambda: abeja.get(f"/deployments/{deployment_id}/runs/{run_id}").json()["status"]
                   in ("SUCCEEDED", "FAILED"), timeout=120)
        assert abeja.get(f"/deployments/{deployment_id}/runs/{run_id}").json()["status"] == "SUCCEEDED"
    return str(run_id).removeprefix("run-")


def test_a_runs_page_lists_its_attempts(console: Console, deployed: dict[str, Any], ran: str) -> None:
    a = deployed["a"]
    console.sign_in(a["token"])
    page = console.http.get(f"/ui/projects/{a['name']}/deployments/echo/runs/{ran}")
    assert page.status_code == 200
    attempts = page.text[page.text.index('<table class="attempts">'):]
    [attempt] = re.findall(r'href="/ui/projects/[^/]+/requests/([0-9a-f-]{36})"', attempts[:attempts.index("</table>")])
    assert "status-completed" in attempts
    request = console.http.get(f"/ui/projects/{a['name']}/requests/{attempt}")
    assert request.status_code == 200 and "got ran" in request.text
    assert f'/deployments/echo/runs/{ran}">its run' in request.text


def test_the_webhooks_page_shows_no_secret(console: Console, server: Server, deployed: dict[str, Any]) -> None:
    a = deployed["a"]
    created = httpx.post(f"{server.url}/projects/{a['datature_project_id']}/batch/webhooks",
                         headers={"Secret-Key": a["token"]}, timeout=60, json={
                             "name": "results-hook", "spec": {"endpoint": "http://127.0.0.1:9/hook",
                                                         "secret": {"contents": SECRET},
                                                         "retries": {"maxRetries": 4, "maxBackoffMs": 2500}}})
    assert created.status_code in (200, 201), created.text
    console.sign_in(a["token"])
    jobs = console.http.get(f"/ui/projects/{a['name']}/jobs")
    assert f'href="/ui/projects/{a["name"]}/webhooks"' in jobs.text
    assert f'href="/ui/projects/{a["name"]}/webhooks"' in console.http.get(f"/ui/projects/{a['name']}").text
    page = console.http.get(f"/ui/projects/{a['name']}/webhooks")
    assert page.status_code == 200
    assert "results-hook" in page.text and "http://127.0.0.1:9/hook" in page.text
    assert "<td>4 <small>(waiting at most 2500 ms)</small></td>" in page.text and "none yet" in page.text
    assert SECRET not in page.text


def test_another_projects_pipelines_runs_and_webhooks_answer_404(console: Console, deployed: dict[str, Any],
                                                                 piped: dict[str, Any], ran: str) -> None:
    a, b = deployed["a"], deployed["b"]
    console.sign_in(b["token"])
    for path in (
        f"/ui/projects/{a['name']}/pipelines",
        f"/ui/projects/{a['name']}/pipelines/outer/requests",
        f"/ui/projects/{a['name']}/pipeline-requests/{piped['id']}",
        f"/ui/projects/{a['name']}/pipeline-requests/{piped['id']}/input",
        f"/ui/projects/{a['name']}/webhooks",
        f"/ui/projects/{a['name']}/deployments/echo/runs/{ran}",
        f"/ui/projects/{b['name']}/pipelines/outer/requests",  # A's pipeline under B's name
        f"/ui/projects/{b['name']}/pipeline-requests/{piped['id']}",  # A's request under B's name
        f"/ui/projects/{b['name']}/pipeline-requests/{piped['id']}/output",
    ):
        response = console.http.get(path)
        assert response.status_code == 404, path
        assert "piped" not in response.text and "got ran" not in response.text, path
    own = console.http.get(f"/ui/projects/{b['name']}/webhooks").text
    assert "No webhooks." in own and "results-hook" not in own
