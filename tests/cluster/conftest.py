"""Several real `modelbay serve` processes on one throwaway PostgreSQL: a cluster on one machine.

Each node has its own data dir and port and shares the test's database; the lease is short so a
killed node's work comes back within seconds.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.server import Server
from tests.integration.conftest import descendants, kill_leftovers

#: The lease of the cluster's nodes: a killed node is declared dead this long after its last beat.
LEASE_S = 2.0


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: list[Server] = []
        self.seen: dict[int, int] = {}  # every process a node started, for the teardown
        self._names = itertools.count()

    def start(self, count: int = 1, extra_env: dict[str, str] | None = None) -> list[Server]:
        env = {"MODELBAY_NODE_LEASE_S": str(LEASE_S), **(extra_env or {})}
        started = []
        for _ in range(count):
            data_dir = self.root / f"node-{next(self._names)}"
            data_dir.mkdir(parents=True)
            node = Server(data_dir=data_dir)
            self.nodes.append(node)  # first: the teardown stops it even if it never comes up
            started.append(node.start(env))
        return started

    def remember_children(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                self.seen.update(descendants(node.process.pid))

    def round_robin(self, token: str, nodes: list[Server] | None = None) -> Callable[[], httpx.Client]:
        """A client factory that spreads calls over the nodes (by default all) still running, one
        after the other."""
        nodes = nodes or self.nodes
        turns = itertools.cycle(nodes)

        def client() -> httpx.Client:
            for _ in range(len(nodes)):
                node = next(turns)
                if node.process is not None and node.process.poll() is None:
                    return httpx.Client(base_url=f"{node.url}/v2.1", headers={"Authorization": f"Token {token}"},
                                        timeout=120)
            raise RuntimeError("no node is running")

        return client


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(tmp_path)
    yield made
    made.remember_children()
    for node in made.nodes:
        if node.process is not None:
            node.stop()
    kill_leftovers(made.seen)
