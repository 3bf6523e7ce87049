"""The console's pages of work in a real browser: an ABEJA service stopped and started with its
button, an ABEJA run followed to its log, Datature jobs with their deliveries (one cancelled with its
button); and the API reference (/docs, /redoc) in a browser that reaches nothing but the server.

As in `test_browser`, each test saves screenshots under its `tmp_path` and fails on any error the
page logs. The pages of work under way refresh themselves: the tests wait for what they show."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Locator, Page, Route, expect

from tests.compat.datature.conftest import deploy_with, make_dataset, nexus_project, webhook_spec
from tests.compat.datature.receiver import Receiver, running_receiver
from tests.console.conftest import CHROMIUM, Tab
from tests.fixtures.abeja_apps import deploy_handler
from tests.fixtures.packages import NOOP
from tests.fixtures.server import Server
from tests.integration.conftest import unique

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Debian's chromium is not installed (make install-test)")

#: An ABEJA handler that prints what its run was given.
PRINTS = '''
def handler(request, context):
    print("printing %s" % request["contents"])
    return {"status_code": 200, "content_type": "application/json", "content": {"ok": True}}
'''

#: A structured deployment whose every item takes a second: a job of 200 is cancelled while it runs.
SLOW = '''
import time


class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        time.sleep(1)
        return data
'''


#: How long a page that refreshes itself while something is under way may take to show its end.
LIVE_WITHIN_MS = 120_000


def press(page: Page, button: Locator) -> None:
    """Click a button of a form and wait for the server's answer to its post (a reload before it
    would leave the post behind)."""
    with page.expect_response(lambda response: response.request.method == "POST"):
        button.click()


# --- ABEJA: services and runs ----------------------------------------------------------------


@pytest.fixture(scope="module")
def abeja(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A project with an ABEJA deployment `printer` (built, its code prints what a run gives it), and
    an httpx client of its organization's API."""
    project = server.create_project(unique("console-abeja"))
    client = httpx.Client(base_url=f"{server.url}/organizations/{project['organization_id']}",
                          headers={"Authorization": f"Bearer {project['token']}"}, timeout=60)
    with client:
        deployment_id, version_id = deploy_handler(client, tmp_path_factory.mktemp("abeja"), "printer", PRINTS)
        yield {"project": project, "client": client, "deployment_id": deployment_id, "version_id": version_id}


def test_a_service_is_stopped_and_started_with_its_button(tab: Tab, abeja: dict[str, Any]) -> None:
    project, client, d = abeja["project"], abeja["client"], abeja["deployment_id"]
    created = client.post(f"/deployments/{d}/services", json={"version_id": abeja["version_id"]})
    assert created.status_code == 200, created.text
    service_id = created.json()["service_id"]
    page = tab.page
    tab.sign_in(project["token"])
    tab.goto(f"/ui/projects/{project['name']}/deployments/printer")
    row = page.locator(f"#service-{service_id.removeprefix('ser-')}")
    expect(row.locator(".status")).to_have_text("ready", timeout=LIVE_WITHIN_MS)
    expect(row).to_contain_text("1 of 1")  # its instance
    tab.shot("service-ready")

    press(page, row.get_by_role("button", name="Stop"))
    expect(row.locator(".status")).to_have_text("stopped", timeout=LIVE_WITHIN_MS)
    expect(row.get_by_role("button", name="Start")).to_be_visible()
    tab.shot("service-stopped")
    assert client.get(f"/deployments/{d}/services/{service_id}").json()["status"] == "STOPPED"

    press(page, row.get_by_role("button", name="Start"))
    expect(row.locator(".status")).to_have_text("ready", timeout=LIVE_WITHIN_MS)  # the page refreshes itself
    expect(row.get_by_role("button", name="Stop")).to_be_visible()
    tab.shot("service-started")
    assert client.get(f"/deployments/{d}/services/{service_id}").json()["status"] == "READY"


def test_a_run_is_followed_from_its_deployment_to_its_log(tab: Tab, abeja: dict[str, Any]) -> None:
    project, client, d = abeja["project"], abeja["client"], abeja["deployment_id"]
    created = client.post(f"/deployments/{d}/runs", json={"version_id": abeja["version_id"],
                                                          "input_data": {"page": "run"}})
    assert created.status_code == 200, created.text
    run_id = created.json()["run_id"].removeprefix("run-")
    page = tab.page
    tab.sign_in(project["token"])
    tab.goto(f"/ui/projects/{project['name']}/deployments/printer")
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    tab.shot("deployment-runs")
    page.get_by_role("link", name=run_id).click()
    expect(page).to_have_url(re.compile(f"/runs/{run_id}$"))
    expect(page.locator("h1 .status")).to_have_text("succeeded", timeout=LIVE_WITHIN_MS)  # refreshed by itself
    expect(page.locator("#logs")).to_contain_text("printing {'page': 'run'}")
    expect(page.locator("pre.payload")).to_contain_text('"page"')  # its input
    tab.shot("run")


# --- Datature: jobs ----------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


def fits_the_window(page: Page) -> bool:
    """No part of the page is wider than the window (nothing to scroll sideways to)."""
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


def counter(page: Page, label: str) -> Locator:
    """The value of a job's counter by its label."""
    return page.locator(".counters div").filter(has=page.get_by_text(label, exact=True)).locator("dd")


def start_job(server: Server, project: dict[str, str], tmp_path: Path, receiver: Receiver, name: str,
              source: str, items: int) -> None:
    """A job of `items` items on a fresh deployment running `source`, delivered to `receiver`."""
    deployment_id = deploy_with(server, project, tmp_path, f"{name}-deployment", source)
    nexus = nexus_project(server, project["token"], project["datature_project_id"])
    dataset_id = make_dataset(nexus, tmp_path / f"{name}.ndjson", [{"x": i} for i in range(items)])
    webhook_id = nexus.batch.webhooks.create(f"{name}-hook", webhook_spec(receiver)).id
    nexus.batch.jobs.create(name, {"dataset_id": dataset_id, "webhook_id": webhook_id, "deployment_id": deployment_id})


def test_a_job_is_followed_to_its_counters_and_deliveries(tab: Tab, server: Server, project: dict[str, str],
                                                          receiver: Receiver, tmp_path: Path) -> None:
    start_job(server, project, tmp_path, receiver, "three", NOOP, 3)
    page = tab.page
    tab.sign_in(project["token"])
    tab.goto(f"/ui/projects/{project['name']}/jobs")
    expect(page.get_by_role("heading", name=f"Batch jobs of {project['name']}")).to_be_visible()
    tab.shot("jobs")
    page.get_by_role("link", name="three").click()
    expect(page.get_by_role("heading", name=re.compile("^Job three"))).to_be_visible()
    expect(page.locator("h1 .status")).to_have_text("finished", timeout=LIVE_WITHIN_MS)  # refreshed by itself
    for label, value in (("Items", "3"), ("Predicted", "3"), ("Delivered", "3"), ("Failed to deliver", "0")):
        expect(counter(page, label)).to_have_text(value)
    deliveries = page.locator("h2:has-text('Deliveries') + table tbody tr")
    expect(deliveries).to_have_count(3)
    for i in range(3):
        expect(deliveries.nth(i).locator(".status")).to_have_text("delivered")
        expect(deliveries.nth(i).locator("td").nth(4)).to_have_text("200")  # the receiver's answer
    expect(page.get_by_role("button", name="Cancel this job")).to_have_count(0)  # done: nothing to cancel
    assert fits_the_window(page)  # its nine counters wrap
    tab.shot("job")
    assert len(receiver.delivered()) == 3


def test_a_long_job_is_cancelled_with_its_button(tab: Tab, server: Server, project: dict[str, str],
                                                 receiver: Receiver, tmp_path: Path) -> None:
    start_job(server, project, tmp_path, receiver, "long", SLOW, 200)
    page = tab.page
    tab.sign_in(project["token"])
    tab.goto(f"/ui/projects/{project['name']}/jobs")
    page.get_by_role("link", name="long").click()
    expect(page.get_by_role("heading", name=re.compile("^Job long"))).to_be_visible()
    expect(page.locator("h1 .status")).to_have_text("running", timeout=LIVE_WITHIN_MS)
    tab.shot("long-running")
    press(page, page.get_by_role("button", name="Cancel this job"))
    expect(page.locator("h1 .status")).to_have_text("stopped", timeout=LIVE_WITHIN_MS)
    expect(page.locator("table.settings")).to_contain_text("Cancelled")
    expect(page.get_by_role("button", name="Cancel this job")).to_have_count(0)
    tab.shot("long-cancelled")
    assert len(receiver.delivered()) < 200


# --- the API reference, offline ----------------------------------------------------------------


@pytest.fixture
def offline(tab: Tab) -> Iterator[list[str]]:
    """The tab reaches the server only: every other request is aborted, and listed."""
    own = urlsplit(tab.server.url).netloc
    blocked: list[str] = []

    def only_the_server(route: Route) -> None:
        url = urlsplit(route.request.url)
        if url.scheme in ("data", "blob") or url.netloc == own:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort("internetdisconnected")

    tab.page.context.route("**/*", only_the_server)
    yield blocked


def test_swagger_ui_works_offline(tab: Tab, offline: list[str]) -> None:
    page = tab.page
    tab.goto("/docs")
    # A large document: Swagger UI takes a while to draw it on a loaded machine.
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("modelbay", timeout=60_000)
    tag = page.locator(".opblock-tag", has_text="ABEJA · runs")
    expect(tag).to_be_visible()
    tab.shot("docs")
    tag.click()  # folded at first: its operations open
    expect(page.locator(".opblock-summary-path", has_text="/runs").first).to_be_visible()
    expect(page.get_by_role("button", name="Authorize")).to_be_visible()
    tab.shot("docs-runs")
    assert offline == []


def test_redoc_works_offline(tab: Tab, offline: list[str]) -> None:
    page = tab.page
    tab.goto("/redoc")
    menu = page.locator(".menu-content")
    for name in ("UbiOps", "ABEJA", "Datature", "ABEJA · runs", "Datature · jobs"):
        expect(menu).to_contain_text(name, timeout=60_000)  # a large document: ReDoc takes a while
    expect(page.get_by_role("heading", level=1)).to_contain_text("modelbay")
    expect(menu).to_contain_text("API docs by Redocly")
    expect(menu.locator("img")).to_have_count(0)  # its logo, from Redocly's CDN, is left out
    tab.shot("redoc", full_page=False)  # the window only: the whole reference is a very long page
    assert offline == []
