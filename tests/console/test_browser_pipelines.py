"""The pipeline pages in a real browser (the system's headless Chromium driven by Playwright): the
graph drawn, a node leading to its deployment, a pipeline request followed to a step's request."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.console.conftest import CHROMIUM, Tab

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Debian's chromium is not installed (make install-test)")


def test_a_pipeline_is_drawn_and_its_request_followed_to_a_step(tab: Tab, deployed: dict[str, Any],
                                                                 piped: dict[str, Any]) -> None:
    project = deployed["a"]["name"]
    page = tab.page
    tab.sign_in(deployed["a"]["token"])
    tab.goto(f"/ui/projects/{project}")
    page.click("text=Pipelines")
    expect(page.get_by_role("heading", name=f"Pipelines of {project}")).to_be_visible()
    graph = page.locator("#pipeline-outer svg.pipeline-graph").first
    expect(graph).to_be_visible()
    box = graph.locator('g.node[data-name="first"]')
    expect(box).to_be_visible()
    size = box.bounding_box()
    assert size is not None and size["width"] > 100 and size["height"] > 30  # drawn, not collapsed
    tab.shot("pipelines")

    box.click()  # a deployment's box leads to its page
    expect(page).to_have_url(re.compile(rf"/ui/projects/{project}/deployments/echo$"))
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    tab.shot("deployment")

    page.go_back()
    page.click("#pipeline-outer a.pipeline-requests")
    expect(page.get_by_role("heading", name="Requests of pipeline outer")).to_be_visible()
    tab.shot("pipeline-requests")
    page.click(f"a.pipeline-request-link >> text={piped['id']}")
    expect(page.locator("#status")).to_have_text("completed")
    expect(page.locator("#input")).to_have_text("piped")
    expect(page.locator("table.steps tr.step")).to_have_count(2)
    tab.shot("pipeline-request")

    page.click(f"a.step-link >> text={piped['step']}")  # the deployment step's own request
    expect(page).to_have_url(re.compile(rf"/requests/{piped['step']}$"))
    expect(page.locator("#logs")).to_contain_text("got piped")
    tab.shot("step-request")
    page.click("a.pipeline-request-link")  # and back to the pipeline request it was a step of
    expect(page).to_have_url(re.compile(rf"/pipeline-requests/{piped['id']}$"))
    page.click(f"a.step-link >> text={piped['sub']}")  # the sub-pipeline's request
    expect(page.get_by_text("the pipeline request it is a step of")).to_be_visible()
    tab.shot("sub-pipeline-request")
