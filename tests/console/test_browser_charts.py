"""A version's live charts in a real browser: the system's headless Chromium driven by Playwright.

The page draws its five charts, loads the samples on its own and draws the requests it served; a
screenshot is saved under the test's `tmp_path`, and any error the page logs or throws fails it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.console.conftest import CHROMIUM, Tab
from tests.fixtures.server import Server
from tests.integration.conftest import ubiops

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make install-test)")

#: Samples are taken every 5 s and the page polls every 5 s: a few of each, on a loaded machine.
DRAWN_WITHIN_MS = 60_000

#: Whether the requests chart has pixels of its line's colour (#1f5fbf), anti-aliasing allowed for.
REQUESTS_LINE_DRAWN = """() => {
  const canvas = document.querySelector('#activity figure[data-chart="requests"] canvas');
  if (canvas === null || !(Number(document.getElementById("activity").dataset.samples) > 0)) return false;
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 0; i < pixels.length; i += 4) {
    const [r, g, b, a] = [pixels[i], pixels[i + 1], pixels[i + 2], pixels[i + 3]];
    if (a > 128 && Math.abs(r - 31) < 40 && Math.abs(g - 95) < 40 && Math.abs(b - 191) < 40) return true;
  }
  return false;
}"""


def test_the_version_page_draws_its_activity(tab: Tab, server: Server, deployed: dict[str, Any]) -> None:
    project = deployed["a"]
    with ubiops(server, project["token"]) as client:
        for text in ("one", "two", "three"):
            response = client.post(f"/projects/{project['name']}/deployments/echo/versions/v1/requests", json=text)
            assert response.status_code == 200, response.text
    page = tab.page
    tab.sign_in(project["token"])
    expect(page.get_by_role("heading", name="Projects")).to_be_visible()
    tab.goto(f"/ui/projects/{project['name']}/deployments/echo/versions/v1")
    charts = page.locator("#activity figure.chart")
    expect(charts).to_have_count(5)
    expect(page.locator("#activity figure.chart canvas")).to_have_count(5)  # drawn before any data
    expect(charts.filter(has_text="Latency (ms)").locator(".u-legend")).to_contain_text("p99")
    page.wait_for_function(REQUESTS_LINE_DRAWN, timeout=DRAWN_WITHIN_MS)  # polled on its own
    expect(page.locator("#activity-note")).to_contain_text("One sample every 5")
    page.set_viewport_size({"width": 900, "height": 1200})  # the charts follow the page's width
    tab.shot("version-activity")
