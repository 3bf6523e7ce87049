"""Writers racing for the same name: one wins, the others are told 409, never 500."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.fixtures.server import Server
from tests.integration.conftest import ubiops, unique

RACERS = 8
ROUNDS = 10


def test_deployments_created_with_one_name_at_the_same_moment_give_one_201_and_409s(
    server: Server, project: dict[str, str]
) -> None:
    with ubiops(server, project["token"]) as client, ThreadPoolExecutor(RACERS) as pool:
        for _ in range(ROUNDS):
            name = unique("race")
            body = {"name": name, "input_type": "plain", "output_type": "plain"}
            statuses = sorted(
                pool.map(lambda _: client.post(f"/projects/{project['name']}/deployments", json=body).status_code,
                         range(RACERS))
            )
            assert statuses == [201] + [409] * (RACERS - 1), statuses
            listed = client.get(f"/projects/{project['name']}/deployments").json()
            assert [d["name"] for d in listed].count(name) == 1
