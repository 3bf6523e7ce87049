"""New code and new versions made through one node of three are what every node serves, at once
(real nodes on one PostgreSQL; tests/cluster/test_messages.py has the same with two engines in one process)."""

from __future__ import annotations

import pytest

from tests.fixtures.cluster import Cluster
from tests.fixtures.server import Server, wait_until
from tests.integration.conftest import create_version, deploy, package_zip, ubiops, upload, wait_built

pytestmark = pytest.mark.postgresql_only("a cluster is several servers on one PostgreSQL")

#: How long "at once" may take: a notification's round trip and an instance of the new code
#: started, with room for a busy machine.
AT_ONCE_S = 15.0

ANSWERS = '''
class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        return "{answer}"
'''


def answer(node: Server, token: str, version: str) -> str:
    """What version `version` of deployment "greeter" answers to a direct request through `node`."""
    with ubiops(node, token) as client:
        response = client.post(f"/projects/work/deployments/greeter/versions/{version}/requests", content=b"hi",
                               headers={"content-type": "text/plain"})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed", response.text
    return str(response.json()["result"])


def test_code_uploaded_and_a_version_made_through_one_node_are_served_by_every_node(cluster: Cluster) -> None:
    nodes = cluster.start(3)
    token = nodes[0].create_project("work")["token"]
    # Given a version every node serves (each has an instance of its code)
    with ubiops(nodes[0], token) as client:
        deploy(client, "work", "greeter", ANSWERS.format(answer="old"))
    assert [answer(node, token, "v1") for node in nodes] == ["old"] * 3

    # When new code for it is uploaded through the second node and built
    with ubiops(nodes[1], token) as client:
        revision = upload(client, "work", "greeter", "v1", package_zip(ANSWERS.format(answer="new")))
        wait_until(lambda: client.get(f"/projects/work/deployments/greeter/versions/v1/revisions/{revision}")
                   .json()["status"] in ("success", "failed"), timeout=120, interval=0.1)
        described = client.get(f"/projects/work/deployments/greeter/versions/v1/revisions/{revision}").json()
        assert described["status"] == "success", described

    # Then every node serves the new code at once
    for node in nodes:
        wait_until(lambda node=node: answer(node, token, "v1") == "new", timeout=AT_ONCE_S, interval=0.1)

    # And a new version made through the third node is served by every node too
    with ubiops(nodes[2], token) as client:
        create_version(client, "work", "greeter", "v2")
        upload(client, "work", "greeter", "v2", package_zip(ANSWERS.format(answer="second")))
        assert wait_built(client, "work", "greeter", "v2") == "available"
    assert [answer(node, token, "v2") for node in nodes] == ["second"] * 3
    assert [answer(node, token, "v1") for node in nodes] == ["new"] * 3
