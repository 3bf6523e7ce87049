"""The console's tests: a real server (the shared one), real deployments made through the UbiOps
HTTP API, and the console read with httpx or in a headless Chromium driven by Playwright."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.fixtures.server import Server
from tests.integration.conftest import deploy, ubiops, unique

#: Prints two lines, then answers its plain input reversed; "sleep" waits (for a request to cancel).
ECHO = '''
import time


class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        print("got", data)
        print("second line")
        if data.startswith("sleep"):
            time.sleep(60)
        return data[::-1]
'''

CSRF_COOKIE = "modelbay_console_csrf"


class Console:
    """A browser-less console session: httpx with the console's cookies, posting as its pages do."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.url, timeout=60, follow_redirects=False)
        self.http.get("/ui/sign-in").raise_for_status()  # the CSRF cookie

    @property
    def csrf(self) -> str:
        return str(self.http.cookies.get(CSRF_COOKIE, path="/ui"))

    def post(self, path: str, data: dict[str, Any] | None = None, *, csrf: bool = True,
             origin: str | None = "same") -> httpx.Response:
        headers = {} if origin is None else {"Origin": self.server.url if origin == "same" else origin}
        form = dict(data or {})
        if csrf:
            form["csrf_token"] = self.csrf
        return self.http.post(path, data=form, headers=headers)

    def sign_in(self, token: str) -> httpx.Response:
        return self.post("/ui/sign-in", {"token": token})

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def console(server: Server) -> Iterator[Console]:
    session = Console(server)
    yield session
    session.close()


@pytest.fixture(scope="module")
def deployed(server: Server) -> dict[str, Any]:
    """Two projects; the first with a built deployment `echo` (v1, plain input) and one finished request."""
    projects = [server.create_project(unique("console")) for _ in range(2)]
    first = projects[0]
    with ubiops(server, first["token"]) as client:
        deploy(client, first["name"], "echo", ECHO)
        response = client.post(f"/projects/{first['name']}/deployments/echo/versions/v1/requests", json="hello")
        assert response.status_code == 200, response.text
        request_id = response.json()["id"]
    return {"a": first, "b": projects[1], "request_id": request_id}


# --- pipelines ------------------------------------------------------------------------------


def pipeline(client: httpx.Client, project: str, name: str, objects: list[dict[str, Any]],
             attachments: list[dict[str, Any]], version: str = "v1") -> None:
    if client.get(f"/projects/{project}/pipelines/{name}").status_code == 404:
        created = client.post(f"/projects/{project}/pipelines",
                              json={"name": name, "input_type": "plain", "output_type": "plain"})
        assert created.status_code == 201, created.text
    made = client.post(f"/projects/{project}/pipelines/{name}/versions",
                       json={"version": version, "objects": objects, "attachments": attachments})
    assert made.status_code == 201, made.text


def attach(destination: str, source: str) -> dict[str, Any]:
    return {"destination_name": destination, "sources": [{"source_name": source, "mapping": []}]}


@pytest.fixture(scope="module")
def piped(server: Server, deployed: dict[str, Any]) -> dict[str, Any]:
    """In project A: `chain` (echo), `outer` v1 (echo, then `chain` as a sub-pipeline) with one
    request walked, and `outer` v2 still being built (an operator not yet attached to the end)."""
    project = deployed["a"]["name"]
    with ubiops(server, deployed["a"]["token"]) as client:
        pipeline(client, project, "chain", [{"name": "only", "reference_name": "echo"}],
                 [attach("only", "pipeline_start"), attach("pipeline_end", "only")])
        pipeline(client, project, "outer", [
            {"name": "first", "reference_type": "deployment", "reference_name": "echo"},
            {"name": "sub", "reference_type": "pipeline", "reference_name": "chain"},
        ], [attach("first", "pipeline_start"), attach("sub", "first"), attach("pipeline_end", "sub")])
        pipeline(client, project, "outer", [
            {"name": "first", "reference_name": "echo"},
            {"name": "constant", "reference_type": "operator", "reference_name": "pipeline-variable",
             "configuration": {"output_fields": [{"name": "x", "data_type": "string"}],
                               "output_values": [{"name": "x", "value": "k"}]}},
        ], [attach("first", "pipeline_start"), attach("constant", "first"), attach("pipeline_end", "first")],
            version="v2")
        walked = client.post(f"/projects/{project}/pipelines/outer/versions/v1/requests", json="piped")
        assert walked.status_code == 200 and walked.json()["status"] == "completed", walked.text
        body = walked.json()
    return {"id": body["id"], "step": body["deployment_requests"][0]["id"], "sub": body["pipeline_requests"][0]["id"]}


# --- in a real browser: the system's headless Chromium driven by Playwright ---------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

STATUS_ERROR = re.compile(r"^Failed to load resource: the server responded with a status of (\d{3})")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Tab:
    """A page of a fresh browser context, with what it logged as errors and screenshots by name."""

    def __init__(self, page: Page, server: Server, shots: Path) -> None:
        self.page = page
        self.server = server
        self.shots = shots
        self.errors: list[str] = []
        self.expected_statuses: set[int] = set()
        page.on("console", lambda message: self.errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def goto(self, path: str) -> Any:
        return self.page.goto(self.server.url + path)

    def shot(self, name: str, *, full_page: bool = True) -> None:
        self.page.screenshot(path=self.shots / f"{name}.png", full_page=full_page)

    def sign_in(self, token: str) -> None:
        self.goto("/ui/sign-in")
        self.page.fill("#token", token)
        self.page.click("button[type=submit]")

    def unexpected_errors(self) -> list[str]:
        def expected(text: str) -> bool:
            match = STATUS_ERROR.match(text)
            return match is not None and int(match[1]) in self.expected_statuses

        return [text for text in self.errors if not expected(text)]


@pytest.fixture
def tab(browser: Browser, server: Server, tmp_path: Path) -> Iterator[Tab]:
    context = browser.new_context()
    tab = Tab(context.new_page(), server, tmp_path)
    yield tab
    context.close()
    assert tab.unexpected_errors() == []
    assert list(tmp_path.glob("*.png")), "every test saves a screenshot of what it saw"
