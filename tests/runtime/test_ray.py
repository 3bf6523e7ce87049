"""RayRuntime on a real Ray cluster of two nodes (a head and a second node, two CPUs each), running
real packages in real sandboxed workers on the nodes."""

from __future__ import annotations

import asyncio
import textwrap
import time
import uuid
import zipfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from modelbay.core.node_packages import NodePackages
from modelbay.runtime.base import Call, CallTimedOut, Code, InstanceLost, InstanceSpec, InstanceStartFailed, InstanceState
from modelbay.runtime.ray_instance import NodeSetup
from modelbay.runtime.ray_runtime import Placement, RayRuntime, connect
from tests.fixtures import ray_cluster
from tests.integration.conftest import cmdline, descendants

import ray  # noqa: E402  (the `ray` extra, which `make test` installs)

T = TypeVar("T")

ECHO = """
import time

class Deployment:
    def __init__(self, base_directory, context):
        print("loaded")

    def request(self, data, context):
        print("got", data)
        for word in data.get("stream", []):
            context["streaming_update"](word)
        time.sleep(data.get("sleep", 0))
        if data.get("exit"):
            import os
            os._exit(3)
        return {"y": data.get("x", 0) + 1}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Two nodes of two CPUs each; this test process joins it as the servers do."""
    started = ray_cluster.start(cpus=(2, 2))
    connect(started.address, f"test-{uuid.uuid4().hex[:8]}")
    yield started
    ray.shutdown()
    started.shutdown()


def archive(tmp_path: Path, source: str = ECHO) -> Path:
    path = tmp_path / f"{uuid.uuid4().hex}.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("package/deployment.py", textwrap.dedent(source))
    return path


def spec_for(path: Path, instance_type: str | None = None) -> InstanceSpec:
    code = Code(revision_id=path.stem, archive_key=path.name, cache_key="project")
    return InstanceSpec("v1", None, None, {"deployment": "d", "version": "v1"}, code=code, instance_type=instance_type)


def runtime_for(tmp_path: Path, **kwargs: Any) -> RayRuntime:
    """A runtime whose archives are the files in tmp_path."""
    root = tmp_path / "node"
    return RayRuntime(node=NodeSetup(root=root), preparer=NodePackages(root / "code", "bwrap"),
                      archive_path=lambda key: tmp_path / key, **kwargs)


def with_runtime(tmp_path: Path, scenario: Callable[[RayRuntime], Awaitable[T]], **kwargs: Any) -> T:
    """Run `scenario` on a fresh loop against `runtime_for(tmp_path, **kwargs)`."""

    async def main() -> T:
        runtime = runtime_for(tmp_path, **kwargs)
        try:
            return await scenario(runtime)
        finally:
            await runtime.close()

    return asyncio.run(main())


def actor_processes(cluster: Any) -> set[int]:
    """The processes of this cluster that hold an instance's actor."""
    raylets = [info.process.pid for node in cluster.list_all_nodes() for info in node.all_processes["raylet"]]
    return {pid for raylet in raylets for pid in descendants(raylet) if "InstanceActor" in cmdline(pid)}


def wait_until(condition: Callable[[], bool], deadline_s: float = 30.0) -> bool:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_instances_run_the_code_and_spread_over_both_nodes_past_one_nodes_cpus(cluster: Any, tmp_path: Path) -> None:
    code = archive(tmp_path)

    async def scenario(runtime: RayRuntime) -> tuple[list[Any], set[str]]:
        instances = await asyncio.gather(*(runtime.start(spec_for(code)) for _ in range(3)))
        outcomes = [await runtime.call(instance, Call(f"r{i}", {"x": i}), 30) for i, instance in enumerate(instances)]
        return outcomes, {runtime.node_of(instance) for instance in instances}

    outcomes, nodes = with_runtime(tmp_path, scenario)
    assert [o.result for o in outcomes] == [{"y": 1}, {"y": 2}, {"y": 3}]
    assert all(o.logs.startswith("got {") for o in outcomes)
    assert len(nodes) == 2  # one CPU each: a node of two CPUs holds two of the three


def test_partial_results_stream_in_order(cluster: Any, tmp_path: Path) -> None:
    code = archive(tmp_path)
    partials: list[str] = []

    async def scenario(runtime: RayRuntime) -> Any:
        instance = await runtime.start(spec_for(code))
        return await runtime.call(instance, Call("s", {"x": 1, "stream": ["a", "b", "c"]}), 30, partials.append)

    assert with_runtime(tmp_path, scenario).result == {"y": 2}
    assert partials == ["a", "b", "c"]


def test_a_request_past_its_timeout_fails_with_its_logs_so_far_and_the_next_instance_serves(
    cluster: Any, tmp_path: Path
) -> None:
    code = archive(tmp_path)

    async def scenario(runtime: RayRuntime) -> Any:
        instance = await runtime.start(spec_for(code))
        with pytest.raises(CallTimedOut) as timed_out:
            await runtime.call(instance, Call("t", {"sleep": 60}), 1)
        assert "got {'sleep': 60}" in timed_out.value.logs
        assert instance.state is InstanceState.STOPPED
        again = await runtime.start(spec_for(code))
        return await runtime.call(again, Call("n", {"x": 1}), 30)

    assert with_runtime(tmp_path, scenario).result == {"y": 2}


def test_a_cancelled_call_stops_its_instance_and_its_actor(cluster: Any, tmp_path: Path) -> None:
    code = archive(tmp_path)

    async def scenario(runtime: RayRuntime) -> Any:
        instance = await runtime.start(spec_for(code))
        before = actor_processes(cluster)
        task = asyncio.ensure_future(runtime.call(instance, Call("c", {"sleep": 600}), 600))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert instance.state is InstanceState.STOPPED
        await runtime.stop(instance)
        assert await asyncio.to_thread(wait_until, lambda: len(actor_processes(cluster)) < len(before))
        return await runtime.call(await runtime.start(spec_for(code)), Call("n", {"x": 2}), 30)

    assert with_runtime(tmp_path, scenario).result == {"y": 3}


def test_a_killed_actor_loses_its_request_naming_the_node_and_the_next_instance_serves(
    cluster: Any, tmp_path: Path
) -> None:
    code = archive(tmp_path)

    async def scenario(runtime: RayRuntime) -> Any:
        instance = await runtime.start(spec_for(code))
        call = asyncio.ensure_future(runtime.call(instance, Call("k", {"sleep": 600}), 600))
        await asyncio.sleep(0.5)
        ray.kill(instance._actor)
        with pytest.raises(InstanceLost) as lost:
            await call
        assert runtime.node_of(instance) in lost.value.message
        assert not await runtime.healthy(instance)
        return await runtime.call(await runtime.start(spec_for(code)), Call("n", {"x": 3}), 30)

    assert with_runtime(tmp_path, scenario).result == {"y": 4}


def test_a_crashed_worker_loses_its_request_with_what_it_printed_and_the_next_instance_serves(
    cluster: Any, tmp_path: Path
) -> None:
    code = archive(tmp_path)

    async def scenario(runtime: RayRuntime) -> Any:
        instance = await runtime.start(spec_for(code))
        with pytest.raises(InstanceLost) as lost:
            await runtime.call(instance, Call("x", {"exit": True}), 30)
        assert "exit code 3" in lost.value.message
        assert "loaded" in lost.value.logs
        return await runtime.call(await runtime.start(spec_for(code)), Call("n", {"x": 4}), 30)

    assert with_runtime(tmp_path, scenario).result == {"y": 5}


def test_code_that_fails_to_load_fails_the_start_with_its_error(cluster: Any, tmp_path: Path) -> None:
    code = archive(tmp_path, "raise ValueError('no model file')\n")

    async def scenario(runtime: RayRuntime) -> InstanceStartFailed:
        with pytest.raises(InstanceStartFailed) as failed:
            await runtime.start(spec_for(code))
        return failed.value

    failed = with_runtime(tmp_path, scenario)
    assert "no model file" in failed.message + failed.logs


def test_an_instance_type_no_node_can_hold_fails_at_once_saying_what_it_needs(cluster: Any, tmp_path: Path) -> None:
    code = archive(tmp_path)

    async def scenario(runtime: RayRuntime) -> tuple[InstanceStartFailed, float]:
        began = time.monotonic()
        with pytest.raises(InstanceStartFailed) as failed:
            await runtime.start(spec_for(code, instance_type="gpu"))
        return failed.value, time.monotonic() - began

    failed, took = with_runtime(tmp_path, scenario, placements={"gpu": Placement(num_gpus=1)})
    assert "can run an instance of type 'gpu'" in failed.message and "GPU 1" in failed.message
    assert took < 10


def test_an_instance_waiting_for_capacity_fails_after_the_start_timeout(cluster: Any, tmp_path: Path) -> None:
    code = archive(tmp_path)
    whole_node = {"node": Placement(num_cpus=2)}

    async def scenario(runtime: RayRuntime) -> InstanceStartFailed:
        # Each node has two CPUs: the first two take a whole node each, the third must wait.
        held = await asyncio.gather(*(runtime.start(spec_for(code, instance_type="node")) for _ in range(2)))
        impatient = runtime_for(tmp_path, placements=whole_node, start_timeout=3)
        with pytest.raises(InstanceStartFailed) as failed:
            await impatient.start(spec_for(code, instance_type="node"))
        await impatient.close()
        assert all(instance.state is InstanceState.IDLE for instance in held)
        return failed.value

    failed = with_runtime(tmp_path, scenario, placements=whole_node)
    assert "free within 3 s" in failed.message


def test_nothing_runs_once_the_runtime_closed(cluster: Any, tmp_path: Path) -> None:
    code = archive(tmp_path)
    before = actor_processes(cluster)

    async def scenario(runtime: RayRuntime) -> int:
        await asyncio.gather(*(runtime.start(spec_for(code)) for _ in range(2)))
        return len(actor_processes(cluster) - before)

    assert with_runtime(tmp_path, scenario) == 2
    assert wait_until(lambda: not actor_processes(cluster) - before)
    assert not list((tmp_path / "node" / "actors").iterdir())  # their logs and scratch went with them
