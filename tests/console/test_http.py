"""The console's sign-in and its guard against cross-site requests, over plain HTTP."""

from __future__ import annotations

import html
import re
import socket
from typing import Any

import httpx

from tests.console.conftest import ECHO, Console
from tests.fixtures.server import Server, wait_until
from tests.integration.conftest import deploy, ubiops


def test_root_redirects_to_the_console(server: Server) -> None:
    response = httpx.get(f"{server.url}/", follow_redirects=False)
    assert response.status_code in (302, 307)
    assert response.headers["location"] == "/ui/"


def test_pages_ask_for_a_sign_in(server: Server) -> None:
    response = httpx.get(f"{server.url}/ui/", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/sign-in"


def test_the_vendored_assets_are_served(server: Server) -> None:
    script = httpx.get(f"{server.url}/ui/static/htmx.min.js")
    assert script.status_code == 200 and "htmx" in script.text and "Zero-Clause BSD" in script.text
    assert httpx.get(f"{server.url}/ui/static/console.css").status_code == 200


def test_a_wrong_token_gets_the_form_again(console: Console) -> None:
    response = console.sign_in("not-a-token")
    assert response.status_code == 401
    assert "not valid" in response.text and 'name="token"' in response.text
    assert "modelbay_console_token" not in response.headers.get("set-cookie", "")


def test_sign_in_keeps_the_token_in_a_strict_http_only_cookie(console: Console, deployed: dict[str, Any]) -> None:
    response = console.sign_in(deployed["a"]["token"])
    assert response.status_code == 303 and response.headers["location"] == "/ui/"
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("modelbay_console_token="))
    attributes = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "samesite=strict", "path=/ui"} <= attributes
    assert "secure" not in attributes  # plain http on loopback
    page = console.http.get("/ui/")
    assert page.status_code == 200 and deployed["a"]["name"] in page.text
    assert deployed["b"]["name"] not in page.text


def test_the_admin_token_sees_every_project(console: Console, server: Server, deployed: dict[str, Any]) -> None:
    assert console.sign_in(server.admin_token).status_code == 303
    page = console.http.get("/ui/").text
    assert deployed["a"]["name"] in page and deployed["b"]["name"] in page


def test_a_post_without_the_csrf_token_is_refused(console: Console, deployed: dict[str, Any]) -> None:
    console.sign_in(deployed["a"]["token"])
    path = f"/ui/projects/{deployed['a']['name']}/deployments/echo/versions/v1/playground"
    assert console.post(path, {"data": "x"}, csrf=False).status_code == 403
    forged = console.http.post(path, data={"data": "x", "csrf_token": "forged"}, headers={"Origin": console.server.url})
    assert forged.status_code == 403
    assert console.post(path, {"data": "abc"}).status_code == 200  # the same, from the console's page


def test_a_post_from_another_origin_is_refused(console: Console, deployed: dict[str, Any]) -> None:
    console.sign_in(deployed["a"]["token"])
    path = f"/ui/projects/{deployed['a']['name']}/deployments/echo/versions/v1/playground"
    assert console.post(path, {"data": "x"}, origin="http://evil.example").status_code == 403
    assert console.post(path, {"data": "x"}, origin=None).status_code == 403  # neither Origin nor Referer
    referer = console.http.post(path, data={"data": "abc", "csrf_token": console.csrf},
                                headers={"Referer": f"{console.server.url}/ui/"})
    assert referer.status_code == 200
    # The sign-in form is guarded too (a forged sign-in would put a victim in the attacker's project).
    assert console.post("/ui/sign-in", {"token": deployed["a"]["token"]}, csrf=False).status_code == 403


def test_a_form_past_the_body_limit_is_refused_unread(server: Server) -> None:
    host = server.url.removeprefix("http://")
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:  # headers only, no body
        sock.sendall(f"POST /ui/sign-in HTTP/1.1\r\nHost: {host}\r\nOrigin: {server.url}\r\n"
                     "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000000000000\r\n\r\n".encode())
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    assert status_line.split()[1] == b"413"


def test_sign_out_forgets_the_token(console: Console, deployed: dict[str, Any]) -> None:
    console.sign_in(deployed["a"]["token"])
    response = console.post("/ui/sign-out")
    assert response.status_code == 303
    assert console.http.get("/ui/").status_code == 303


def test_another_projects_objects_answer_404(console: Console, deployed: dict[str, Any]) -> None:
    a, b = deployed["a"], deployed["b"]
    console.sign_in(b["token"])
    for path in (
        f"/ui/projects/{a['name']}",
        f"/ui/projects/{a['name']}/requests",
        f"/ui/projects/{a['name']}/requests/{deployed['request_id']}",
        f"/ui/projects/{a['name']}/deployments/echo/versions/v1",
        f"/ui/projects/{b['name']}/requests/{deployed['request_id']}",  # A's request under B's name
        f"/ui/projects/{b['name']}/requests/{deployed['request_id']}/input",
    ):
        response = console.http.get(path)
        assert response.status_code == 404, path
        assert "olleh" not in response.text and "got hello" not in response.text
    cancel = console.post(f"/ui/projects/{b['name']}/requests/{deployed['request_id']}/cancel")
    assert cancel.status_code == 404
    # The owner sees it.
    console.sign_in(a["token"])
    page = console.http.get(f"/ui/projects/{a['name']}/requests/{deployed['request_id']}")
    assert page.status_code == 200 and "olleh" in page.text and "got hello" in page.text


def test_requests_are_paged_newest_first_and_filtered(console: Console, server: Server,
                                                      deployed: dict[str, Any]) -> None:
    project = deployed["b"]["name"]  # a project of its own: its list holds only these
    base = f"/projects/{project}/deployments/pager/versions/v1/requests"
    with ubiops(server, deployed["b"]["token"]) as client:
        deploy(client, project, "pager", ECHO)
        created = client.post(f"{base}/batch", json=[f"item {n}" for n in range(60)])
        assert created.status_code == 201, created.text
        ids = [item["id"] for item in created.json()]
        wait_until(lambda: all(r["status"] == "completed" for r in client.post(f"{base}/collect", json=ids).json()),
                   timeout=120)
    console.sign_in(deployed["b"]["token"])
    page = console.http.get(f"/ui{base}")
    shown = re.findall(r'class="request-link" href="[^"]*/requests/([0-9a-f-]{36})"', page.text)
    older = re.search(r'href="(\?[^"]*)" rel="next">Older<', page.text)
    assert len(shown) == 50 and older is not None
    rest = console.http.get(f"/ui{base}" + html.unescape(older[1]))
    shown += re.findall(r'class="request-link" href="[^"]*/requests/([0-9a-f-]{36})"', rest.text)
    assert sorted(shown) == sorted(ids) and 'rel="next"' not in rest.text
    # Filters: a status none has, a time range after them all, an origin, a wrong value.
    assert "No requests match these filters" in console.http.get(f"/ui{base}?status=failed").text
    assert "No requests match these filters" in console.http.get(f"/ui{base}?from=2999-01-01T00:00").text
    assert len(re.findall('class="request-link"', console.http.get(f"/ui{base}?origin=batch").text)) == 50
    assert "No requests match" in console.http.get(f"/ui{base}?origin=pipeline").text
    assert console.http.get(f"/ui{base}?status=nonsense").status_code == 400


def test_pipelines_deployments_and_jobs_pages(console: Console, server: Server, deployed: dict[str, Any]) -> None:
    a = deployed["a"]
    with ubiops(server, a["token"]) as client:
        created = client.post(f"/projects/{a['name']}/pipelines",
                              json={"name": "chain", "input_type": "plain", "output_type": "plain"})
        assert created.status_code == 201, created.text
        version = client.post(f"/projects/{a['name']}/pipelines/chain/versions", json={
            "version": "v1",
            "objects": [{"name": "first", "reference_name": "echo", "reference_type": "deployment"}],
            "attachments": [
                {"destination_name": "first", "sources": [{"source_name": "pipeline_start", "mapping": []}]},
                {"destination_name": "pipeline_end", "sources": [{"source_name": "first", "mapping": []}]},
            ]})
        assert version.status_code == 201, version.text
        walked = client.post(f"/projects/{a['name']}/pipelines/chain/requests", json="piped")
        assert walked.status_code == 200 and walked.json()["status"] == "completed", walked.text
        step = walked.json()["deployment_requests"][0]["id"]
    console.sign_in(a["token"])
    page = console.http.get(f"/ui/projects/{a['name']}/pipelines")
    assert page.status_code == 200
    assert "chain" in page.text and "pipeline_start → first" in page.text and "first → pipeline_end" in page.text
    step_page = console.http.get(f"/ui/projects/{a['name']}/requests/{step}")
    assert step_page.status_code == 200 and "its pipeline" in step_page.text and "got piped" in step_page.text
    listed = console.http.get(f"/ui/projects/{a['name']}/requests?origin=pipeline").text
    assert step in listed and deployed["request_id"] not in listed
    deployment = console.http.get(f"/ui/projects/{a['name']}/deployments/echo")
    assert deployment.status_code == 200 and "No services." in deployment.text and "No runs." in deployment.text
    jobs = console.http.get(f"/ui/projects/{a['name']}/jobs")
    assert jobs.status_code == 200 and "No batch jobs." in jobs.text
    # None of them opens for another project's token.
    console.sign_in(deployed["b"]["token"])
    for path in (f"/ui/projects/{a['name']}/pipelines", f"/ui/projects/{a['name']}/deployments/echo",
                 f"/ui/projects/{a['name']}/jobs", f"/ui/projects/{a['name']}/deployments/echo/runs/r1",
                 f"/ui/projects/{deployed['b']['name']}/jobs/no-such-job"):
        assert console.http.get(path).status_code == 404, path
    stop = console.post(f"/ui/projects/{a['name']}/deployments/echo/services/s1/stop")
    assert stop.status_code == 404


def test_a_service_is_stopped_and_started_and_a_run_has_its_page(console: Console, server: Server,
                                                                  deployed: dict[str, Any]) -> None:
    a = deployed["a"]
    abeja = httpx.Client(base_url=f"{server.url}/organizations/{a['organization_id']}",
                         headers={"Authorization": f"Bearer {a['token']}"}, timeout=60)
    with abeja:
        found = abeja.get("/deployments").json()["entries"]
        deployment_id = next(d["deployment_id"] for d in found if d["name"] == "echo")
        version_id = abeja.get(f"/deployments/{deployment_id}/versions").json()["entries"][0]["version_id"]
        service = abeja.post(f"/deployments/{deployment_id}/services", json={"version_id": version_id})
        assert service.status_code == 200, service.text
        service_id = service.json()["service_id"]
        run = abeja.post(f"/deployments/{deployment_id}/runs", json={"version_id": version_id, "input_data": "ran"})
        assert run.status_code == 200, run.text
        run_id = run.json()["run_id"]
        console.sign_in(a["token"])
        page = console.http.get(f"/ui/projects/{a['name']}/deployments/echo")
        core_service = re.search(r'id="service-([^"]+)"', page.text)
        assert core_service is not None and core_service[1] in service_id
        # ABEJA's metrics_url of the service is that page, at the service
        assert service.json()["metrics_url"] == \
            f"{server.url}/ui/projects/{a['name']}/deployments/echo#service-{core_service[1]}"
        core_run = re.search(r'/runs/([^"]+)"', page.text)
        assert core_run is not None and core_run[1] in run_id
        stopped = console.post(f"/ui/projects/{a['name']}/deployments/echo/services/{core_service[1]}/stop")
        assert stopped.status_code == 303
        assert abeja.get(f"/deployments/{deployment_id}/services/{service_id}").json()["status"] == "STOPPED"
        assert ">Start<" in console.http.get(f"/ui/projects/{a['name']}/deployments/echo").text
        started = console.post(f"/ui/projects/{a['name']}/deployments/echo/services/{core_service[1]}/start")
        assert started.status_code == 303
        assert abeja.get(f"/deployments/{deployment_id}/services/{service_id}").json()["status"] != "STOPPED"
        run_page = console.http.get(f"/ui/projects/{a['name']}/deployments/echo/runs/{core_run[1]}")
        assert run_page.status_code == 200 and core_run[1] in run_page.text and "Attempts" in run_page.text


def test_a_large_input_and_output_are_downloads(console: Console, server: Server, deployed: dict[str, Any]) -> None:
    a = deployed["a"]
    large = "x" * 70_000 + "end"  # past what a request row keeps inline: a blob
    with ubiops(server, a["token"]) as client:
        response = client.post(f"/projects/{a['name']}/deployments/echo/versions/v1/requests", json=large)
        assert response.status_code == 200 and response.json()["status"] == "completed", response.text
        request_id = response.json()["id"]
    console.sign_in(a["token"])
    page = console.http.get(f"/ui/projects/{a['name']}/requests/{request_id}")
    assert page.status_code == 200
    assert "Download the input" in page.text and "Download the output" in page.text
    assert 'id="input"' not in page.text and 'id="output"' not in page.text  # (its logs print the input)
    output = console.http.get(f"/ui/projects/{a['name']}/requests/{request_id}/output")
    assert output.status_code == 200 and output.json() == large[::-1]
    assert "attachment" in output.headers["content-disposition"]
