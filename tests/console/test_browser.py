"""The console in a real browser: the system's headless Chromium driven by Playwright.

Each test signs in, opens pages as a person would and saves a screenshot of each under its
`tmp_path`; a test fails on any error the page logs or throws, but the status errors it expects
(a 401 or 404 it asked for)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.console.conftest import CHROMIUM, Tab
from tests.fixtures.server import Server, wait_until
from tests.integration.conftest import ubiops

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make install-test)")


def test_sign_in_and_open_every_page(tab: Tab, deployed: dict[str, Any]) -> None:
    project = deployed["a"]["name"]
    page = tab.page
    tab.goto("/")  # redirected to the console, then to its sign-in
    expect(page).to_have_url(re.compile(r"/ui/sign-in$"))
    tab.shot("sign-in")
    tab.sign_in(deployed["a"]["token"])
    expect(page.get_by_role("heading", name="Projects")).to_be_visible()
    tab.shot("projects")
    page.click(f"text={project}")
    expect(page.get_by_role("heading", name=project)).to_be_visible()
    expect(page.locator(".status-available")).to_be_visible()
    tab.shot("project")
    with page.expect_response(lambda r: r.url.endswith("/versions/v1/instances"), timeout=10_000) as polled:
        page.click("text=v1")
        expect(page.locator("details.build pre.log")).to_be_visible()
    assert polled.value.status == 200  # the live part polls on its own
    tab.shot("version")
    page.click("text=Requests of this version")
    expect(page.get_by_role("heading", name="Requests of echo v1")).to_be_visible()
    tab.shot("version-requests")
    tab.goto(f"/ui/projects/{project}/requests")
    expect(page.locator(f"a.request-link >> text={deployed['request_id']}")).to_be_visible()
    tab.shot("project-requests")
    tab.goto(f"/ui/projects/{project}")
    page.click("text=Pipelines")
    expect(page.get_by_role("heading", name=f"Pipelines of {project}")).to_be_visible()
    tab.shot("pipelines")
    tab.goto(f"/ui/projects/{project}")
    page.click("text=Batch jobs")
    expect(page.get_by_role("heading", name=f"Batch jobs of {project}")).to_be_visible()
    tab.shot("jobs")
    tab.goto(f"/ui/projects/{project}")
    page.click("a >> text=echo")
    expect(page.get_by_role("heading", name="Services")).to_be_visible()
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    tab.shot("deployment")


def test_follow_a_request_from_the_list_to_its_logs(tab: Tab, deployed: dict[str, Any]) -> None:
    project = deployed["a"]["name"]
    page = tab.page
    tab.sign_in(deployed["a"]["token"])
    tab.goto(f"/ui/projects/{project}/deployments/echo/versions/v1/requests")
    page.select_option("select[name=status]", "completed")
    page.select_option("select[name=origin]", "direct")
    page.click("text=Filter")
    expect(page).to_have_url(re.compile(r"status=completed"))
    tab.shot("filtered")
    page.click(f"a.request-link >> text={deployed['request_id']}")
    expect(page.locator("#status")).to_have_text("completed")
    expect(page.locator("#input")).to_have_text("hello")
    expect(page.locator("#output")).to_have_text("olleh")
    expect(page.locator("#logs")).to_contain_text("got hello")
    expect(page.locator("#logs")).to_contain_text("second line")
    tab.shot("request")
    tab.goto(f"/ui/projects/{project}/deployments/echo/versions/v1/requests?status=failed")
    expect(page.get_by_text("No requests match these filters")).to_be_visible()
    tab.shot("no-match")


def test_cancel_a_processing_request(tab: Tab, server: Server, deployed: dict[str, Any]) -> None:
    project = deployed["a"]["name"]
    page = tab.page
    base = f"/projects/{project}/deployments/echo/versions/v1/requests"
    with ubiops(server, deployed["a"]["token"]) as client:
        response = client.post(f"{base}/batch", json=["sleep please"])
        assert response.status_code == 201, response.text
        request_id = response.json()[0]["id"]
        wait_until(lambda: client.get(f"{base}/{request_id}").json()["status"] == "processing", timeout=60)
        tab.sign_in(deployed["a"]["token"])
        tab.goto(f"/ui/projects/{project}/requests/{request_id}")
        expect(page.locator("#status")).to_have_text("processing")
        tab.shot("processing")
        page.click("text=Cancel this request")
        expect(page.locator("#status")).to_have_text(re.compile("cancelled"))
        tab.shot("cancelled")
        wait_until(lambda: client.get(f"{base}/{request_id}").json()["status"] == "cancelled", timeout=60)


def test_the_playground_runs_a_request(tab: Tab, deployed: dict[str, Any]) -> None:
    project = deployed["a"]["name"]
    page = tab.page
    tab.sign_in(deployed["a"]["token"])
    tab.goto(f"/ui/projects/{project}/deployments/echo/versions/v1")
    page.fill("#data", "playground")
    page.click("text=Send a request")
    result = page.locator("#playground-result")
    expect(result.locator("pre.output")).to_have_text("dnuorgyalp")
    expect(result.locator(".status")).to_have_text("completed")
    tab.shot("playground")
    result.locator("a").click()
    expect(page.locator("#logs")).to_contain_text("got playground")
    expect(page.get_by_text("(created by console)")).to_be_visible()  # where it came from
    tab.shot("playground-request")


def test_a_wrong_token_gets_the_form_again(tab: Tab) -> None:
    tab.expected_statuses.add(401)
    tab.sign_in("not-a-token")
    expect(tab.page.get_by_role("alert")).to_contain_text("not valid")
    expect(tab.page.locator("#token")).to_be_visible()
    tab.shot("wrong-token")


def test_a_token_of_one_project_cannot_open_anothers_request(tab: Tab, deployed: dict[str, Any]) -> None:
    tab.expected_statuses.add(404)
    a, b = deployed["a"], deployed["b"]
    tab.sign_in(b["token"])
    expect(tab.page.get_by_role("heading", name="Projects")).to_be_visible()
    assert a["name"] not in tab.page.content()
    response = tab.goto(f"/ui/projects/{a['name']}/requests/{deployed['request_id']}")
    assert response.status == 404
    tab.shot("other-project")
    response = tab.goto(f"/ui/projects/{b['name']}/requests/{deployed['request_id']}")
    assert response.status == 404
    assert "olleh" not in tab.page.content()


def test_a_post_without_the_csrf_token_is_refused(tab: Tab, deployed: dict[str, Any]) -> None:
    tab.expected_statuses.add(403)
    project = deployed["a"]["name"]
    tab.sign_in(deployed["a"]["token"])
    tab.goto(f"/ui/projects/{project}/deployments/echo/versions/v1")
    status = tab.page.evaluate(
        """async (url) => (await fetch(url, {method: "POST", body: new URLSearchParams({data: "x"})})).status""",
        f"/ui/projects/{project}/deployments/echo/versions/v1/playground")
    assert status == 403
    tab.shot("csrf")
