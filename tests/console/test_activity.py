"""A version's live activity over plain HTTP: the samples show the requests it served, and only
the project's own callers may read them."""

from __future__ import annotations

from typing import Any

import httpx

from modelbay.core.activity_history import COLUMNS
from tests.console.conftest import Console
from tests.fixtures.server import Server, wait_until
from tests.integration.conftest import ubiops

#: Samples are taken every 5 s: a few periods, on a loaded machine.
SAMPLED_WITHIN_S = 60.0


def activity_path(project: str) -> str:
    return f"/ui/projects/{project}/deployments/echo/versions/v1/activity"


def requests_counted(series: dict[str, list[Any]], period_s: float) -> float:
    """About how many requests ended in the samples: each rate times its interval (the first one's
    taken as a period)."""
    times = series["time"]
    intervals = [period_s, *(after - before for before, after in zip(times, times[1:], strict=False))][:len(times)]
    return sum(rate * interval for rate, interval in zip(series["requests_per_s"], intervals, strict=True))


def test_the_activity_shows_the_versions_requests(console: Console, server: Server, deployed: dict[str, Any]) -> None:
    project = deployed["a"]
    assert console.sign_in(project["token"]).status_code == 303
    path = f"/projects/{project['name']}/deployments/echo/versions/v1/requests"
    with ubiops(server, project["token"]) as client:
        for text in ("one", "two", "three"):
            response = client.post(path, json=text)
            assert response.status_code == 200 and response.json()["status"] == "completed", response.text

    def sampled() -> dict[str, Any] | None:
        response = console.http.get(activity_path(project["name"]))
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        body: dict[str, Any] = response.json()
        # The fixture's own request may have been sampled before these three.
        return body if round(requests_counted(body["series"], body["period_s"])) >= 3 else None

    body = wait_until(sampled, timeout=SAMPLED_WITHIN_S, interval=0.5)
    assert body["period_s"] == 5.0 and body["window_s"] == 3600.0
    series = body["series"]
    assert set(series) == set(COLUMNS)
    assert len({len(column) for column in series.values()}) == 1  # columns of one length each
    assert series["time"] == sorted(series["time"])
    served = [n for n, rate in enumerate(series["requests_per_s"]) if rate > 0]
    assert all(series["latency_p50_s"][n] is not None for n in served)
    assert all(0 < series["latency_p50_s"][n] <= series["latency_p95_s"][n] <= series["latency_p99_s"][n] < 60
               for n in served)
    assert all(rate == 0 for rate in series["failures_per_s"])
    last = len(series["time"]) - 1  # the instance that answered stays up, idle
    assert series["instances_idle"][last] + series["instances_busy"][last] >= 1


def test_another_projects_activity_reads_as_missing(console: Console, deployed: dict[str, Any]) -> None:
    assert console.sign_in(deployed["b"]["token"]).status_code == 303
    response = console.http.get(activity_path(deployed["a"]["name"]))
    assert response.status_code == 404 and "application/json" not in response.headers["content-type"]
    assert "requests_per_s" not in response.text


def test_the_activity_asks_for_a_sign_in(server: Server, deployed: dict[str, Any]) -> None:
    response = httpx.get(server.url + activity_path(deployed["a"]["name"]), follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/ui/sign-in"


def test_the_chart_library_is_served_with_its_licence(server: Server) -> None:
    script = httpx.get(f"{server.url}/ui/static/uPlot.iife.min.js")
    assert script.status_code == 200 and "uPlot" in script.text and "uPlot.LICENSE" in script.text
    licence = httpx.get(f"{server.url}/ui/static/uPlot.LICENSE")
    assert licence.status_code == 200 and "MIT License" in licence.text
    for asset in ("uPlot.min.css", "charts.js"):
        assert httpx.get(f"{server.url}/ui/static/{asset}").status_code == 200
