"""The metrics page of an engine (no server): runs and their attempts counted by version, instances
read from the scheduler, the store's commits timed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from modelbay import metrics
from modelbay.core.projects import Caller
from modelbay.core.runs import NewRun
from modelbay.core.states import RUN, RunStatus
from modelbay.engine import Engine
from modelbay.settings import Settings
from tests.core.test_runs import ScriptedRuntime, handler_version


def page(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every modelbay sample of a metrics page: (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("modelbay_")}


def test_runs_and_their_attempts_are_counted_by_version(tmp_path: Path) -> None:
    async def scenario() -> tuple[str, str]:
        engine = Engine(Settings(data_dir=tmp_path / "data"), runtime=ScriptedRuntime([True, False]))
        await engine.start()
        try:
            target = handler_version(engine, tmp_path)
            ended: asyncio.Queue[RunStatus] = asyncio.Queue()

            def seen(_run_id: str, status: RunStatus) -> None:
                if status in RUN.terminal:
                    ended.put_nowait(status)

            engine.runs.status_changed.add(seen)
            for _ in range(2):  # the first succeeds, the second fails (no retry)
                await engine.runs.create(target, NewRun({"a": 1}, None, 0, None, {}, None))
                await asyncio.wait_for(ended.get(), 10)
            before = (await metrics.render(engine)).decode()
            engine.deployments.delete(engine.projects.get(Caller(None), "runs"), "d")
            return before, (await metrics.render(engine)).decode()
        finally:
            await engine.close()

    text, after_delete = asyncio.run(scenario())
    samples = page(text)
    version = (("deployment", "d"), ("project", "runs"), ("version", "1"))

    def of(name: str, **labels: str) -> Any:
        return samples.get((name, tuple(sorted({**dict(version), **labels}.items()))))

    assert of("modelbay_runs_total", status="succeeded") == 1
    assert of("modelbay_runs_total", status="failed") == 1
    assert of("modelbay_requests_total", origin="run", status="completed") == 1
    assert of("modelbay_requests_total", origin="run", status="failed") == 1
    assert of("modelbay_request_duration_seconds_count") == 2
    assert of("modelbay_instances", state="idle") == 1
    assert of("modelbay_instances", state="busy") == 0 and of("modelbay_requests_running") == 0
    assert samples[("modelbay_store_commit_seconds_count", ())] > 0
    assert "process_cpu_seconds_total" in text or "python_gc_objects_collected_total" in text
    # The deleted version leaves the page, and its counts go.
    assert not any(dict(labels).get("deployment") == "d" for _, labels in page(after_delete))
