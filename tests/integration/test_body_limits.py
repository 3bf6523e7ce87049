"""Every route that reads a body refuses one past `MODELBAY_MAX_REQUEST_BYTES` with a 413 in its
dialect's error shape, without reading it all.

One server with the smallest limit; each route is sent an oversized body two ways, over raw HTTP:
the head of a request whose `Content-Length` passes the limit and only a first piece of its body,
and a chunked body (no length given) streamed just past the limit; neither is ever finished. A
server that waited for the whole body would never answer, and the client's timeout fails the test.
(The direct route, which works on raw ASGI messages, reads the declared length once a second piece
is due; the others read it before any of the body: see the reader's own tests below.)
"""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from modelbay.core.errors import TooLarge
from modelbay.dialects.common.body import read_body
from tests.fixtures.packages import PLAIN
from tests.fixtures.server import Server
from tests.integration.conftest import deploy, error_of, ubiops

LIMIT = 1024  # the smallest limit the settings allow
MULTIPART_HEAD = (b'--xx\r\nContent-Disposition: form-data; name="file"; filename="p.zip"\r\n'
                  b"Content-Type: application/zip\r\n\r\n")


@dataclass
class Route:
    """One route that reads a body: how to call it, and the error shape its dialect answers."""

    name: str
    method: str
    path: str
    dialect: str  # "ubiops", "ubiops-stream", "abeja" or "datature"
    headers: dict[str, str] = field(default_factory=dict)
    body_start: bytes = b'{"x": "'  # what the oversized body begins with
    streamed: bool = True  # whether a chunked body just past the limit is refused (see the dataset upload)


@dataclass
class Setup:
    server: Server
    routes: dict[str, Route]


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """A server taking bodies of at most `LIMIT` bytes, with one thing of every kind to send bodies to."""
    root: Path = tmp_path_factory.mktemp("limited")
    server = Server(data_dir=root / "data").start({"MODELBAY_MAX_REQUEST_BYTES": str(LIMIT)})
    try:
        yield Setup(server, _routes(server))
    finally:
        server.stop()


def _routes(server: Server) -> dict[str, Route]:
    project = server.create_project("limits")
    name, token = project["name"], project["token"]
    with ubiops(server, token) as client:
        deploy(client, name, "echo", PLAIN)  # a package well under the limit uploads as before
        pipelines = f"/projects/{name}/pipelines"
        assert client.post(pipelines, json={"name": "p", "input_type": "plain", "output_type": "plain"}).is_success
        attachment = {"destination_name": "pipeline_end", "sources": [{"source_name": "pipeline_start"}]}
        created = client.post(f"{pipelines}/p/versions", json={"version": "v1", "attachments": [attachment]})
        assert created.status_code == 201, created.text

    org = project["organization_id"]
    abeja = httpx.Client(base_url=f"{server.url}/organizations/{org}", headers={"Authorization": f"Bearer {token}"})
    with abeja:
        deployment = abeja.post("/deployments", json={"name": "handler"}).json()["deployment_id"]
        version = abeja.post(f"/deployments/{deployment}/versions", json={"version": "0.0.1", "handler": "main:handler"})
        assert version.is_success, version.text
        echo = next(d["deployment_id"] for d in abeja.get("/deployments").json()["entries"] if d["name"] == "echo")
        echo_version = abeja.get(f"/deployments/{echo}/versions").json()["entries"][0]["version_id"]
        service = abeja.post(f"/deployments/{echo}/services", json={"version_id": echo_version})
        assert service.is_success, service.text

    datature_id = project["datature_project_id"]
    nexus = httpx.Client(base_url=f"{server.url}/projects/{datature_id}", headers={"Secret-Key": token})
    with nexus:
        dataset = nexus.post("/batch/datasets", json={"name": "d", "spec": {"source": {
            "kind": "UploadedNewlineDelimitedJsonFile", "sizeBytes": 10, "crc32c": "AAAAAA=="}}})
        assert dataset.is_success, dataset.text

    u = {"Authorization": f"Token {token}"}
    d = f"/v2.1/projects/{name}/deployments/echo"
    p = f"/v2.1/projects/{name}/pipelines/p"
    a = {"Authorization": f"Bearer {token}"}
    n = {"Secret-Key": token}
    routes = [
        Route("ubiops project create", "POST", "/v2.1/projects", "ubiops", {"Authorization": f"Token {server.admin_token}"}),
        Route("ubiops deployment create", "POST", f"/v2.1/projects/{name}/deployments", "ubiops", u),
        Route("ubiops deployment update", "PATCH", d, "ubiops", u),
        Route("ubiops version create", "POST", f"{d}/versions", "ubiops", u),
        Route("ubiops revision upload", "POST", f"{d}/versions/v1/revisions", "ubiops",
              {**u, "Content-Type": "multipart/form-data; boundary=xx"}, MULTIPART_HEAD),
        Route("ubiops direct request", "POST", f"{d}/requests", "ubiops", u),
        Route("ubiops direct version request", "POST", f"{d}/versions/v1/requests", "ubiops", u),
        Route("ubiops batch requests", "POST", f"{d}/requests/batch", "ubiops", u),
        Route("ubiops request stream", "POST", f"{d}/requests/stream", "ubiops-stream", u),
        Route("ubiops requests collect", "POST", f"{d}/requests/collect", "ubiops", u),
        Route("ubiops requests cancel", "POST", f"{d}/requests/cancel", "ubiops", u),
        Route("ubiops pipeline create", "POST", f"/v2.1/projects/{name}/pipelines", "ubiops", u),
        Route("ubiops pipeline version create", "POST", f"{p}/versions", "ubiops", u),
        Route("ubiops pipeline request", "POST", f"{p}/requests", "ubiops", u),
        Route("ubiops pipeline batch requests", "POST", f"{p}/requests/batch", "ubiops", u),
        Route("ubiops pipeline request stream", "POST", f"{p}/requests/stream", "ubiops-stream", u),
        Route("ubiops pipeline requests collect", "POST", f"{p}/requests/collect", "ubiops", u),
        Route("abeja deployment create", "POST", f"/organizations/{org}/deployments", "abeja", a),
        Route("abeja run create", "POST", f"/organizations/{org}/deployments/{deployment}/runs", "abeja", a),
        Route("abeja archive upload", "PUT", httpx.URL(version.json()["upload_url"]).raw_path.decode(), "abeja"),
        Route("abeja service request", "POST", f"/deployments/{echo}/services/{service.json()['service_id']}",
              "abeja", {**a, "Host": f"{org}.localhost:{server.port}"}),
        Route("datature webhook create", "POST", f"/projects/{datature_id}/batch/webhooks", "datature", n),
        Route("datature dataset create", "POST", f"/projects/{datature_id}/batch/datasets", "datature", n),
        Route("datature job create", "POST", f"/projects/{datature_id}/batch/jobs", "datature", n),
        # The file streams to disk, checked against the size its dataset declared (tested with
        # datasets); only the hard maximum of a dataset is refused here, before any of it is read.
        Route("datature dataset upload", "PUT",
              httpx.URL(dataset.json()["status"]["source"]["uploadUrl"]["url"]).raw_path.decode(), "datature",
              streamed=False),
    ]
    return {route.name: route for route in routes}


ROUTE_NAMES = [
    "ubiops project create", "ubiops deployment create", "ubiops deployment update", "ubiops version create",
    "ubiops revision upload", "ubiops direct request", "ubiops direct version request", "ubiops batch requests",
    "ubiops request stream", "ubiops requests collect", "ubiops requests cancel", "ubiops pipeline create",
    "ubiops pipeline version create", "ubiops pipeline request", "ubiops pipeline batch requests",
    "ubiops pipeline request stream", "ubiops pipeline requests collect", "abeja deployment create",
    "abeja run create", "abeja archive upload", "abeja service request", "datature webhook create",
    "datature dataset create", "datature job create", "datature dataset upload",
]


# --- raw HTTP: a body that is never finished ---------------------------------------------


def _open(server: Server, route: Route) -> http.client.HTTPConnection:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.putrequest(route.method, route.path, skip_host="Host" in route.headers, skip_accept_encoding=True)
    for name, value in route.headers.items():
        connection.putheader(name, value)
    return connection


def _answer(connection: http.client.HTTPConnection) -> tuple[int, Any]:
    """The status and the JSON the server answered (its first line, for a stream's refusal)."""
    try:
        response = connection.getresponse()  # a server waiting for the rest of the body times out here
        return response.status, json.loads(response.read().split(b"\n")[0])
    finally:
        connection.close()


def announced_past_limit(server: Server, route: Route, declared: int) -> tuple[int, Any]:
    """Send the head of a request announcing `declared` bytes, and only the first 256 of them."""
    connection = _open(server, route)
    connection.putheader("Content-Length", str(declared))
    connection.endheaders()
    connection.send(route.body_start + b"x" * (256 - len(route.body_start)))
    return _answer(connection)


def chunked_past_limit(server: Server, route: Route) -> tuple[int, Any]:
    """Stream a chunked body (no length given) until just past `LIMIT` bytes, and never end it."""
    connection = _open(server, route)
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    body = route.body_start + b"x" * (LIMIT + 1 - len(route.body_start))
    for start in range(0, len(body), 256):
        chunk = body[start:start + 256]
        connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    return _answer(connection)


def assert_too_large(route: Route, status: int, body: Any) -> None:
    assert status == 413, (route.name, status, body)
    if route.dialect == "ubiops":
        assert set(body) == {"error"} and "larger than" in body["error"], body
    elif route.dialect == "ubiops-stream":  # a refused stream is one JSON line the SDK reads `error_message` of
        assert "larger than" in body["error_message"], body
    elif route.dialect == "abeja":
        assert set(body) == {"error", "error_description"} and body["error"] == "payload_too_large", body
        assert "larger than" in body["error_description"], body
    else:
        assert set(body) == {"message"} and "larger than" in body["message"], body


# --- the tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ROUTE_NAMES)
def test_a_body_announced_past_the_limit_is_refused_before_it_is_sent(limited: Setup, name: str) -> None:
    route = limited.routes[name]
    declared = 100 * LIMIT if route.streamed else 11 << 30  # a dataset may be up to 10 GiB
    assert_too_large(route, *announced_past_limit(limited.server, route, declared))


@pytest.mark.parametrize("name", [n for n in ROUTE_NAMES if n != "datature dataset upload"])
def test_a_streamed_body_is_refused_as_soon_as_it_passes_the_limit(limited: Setup, name: str) -> None:
    route = limited.routes[name]
    assert_too_large(route, *chunked_past_limit(limited.server, route))


def test_a_refused_body_changes_nothing_and_a_body_within_the_limit_is_served(limited: Setup) -> None:
    server = limited.server
    token = server.create_project("limits-after")["token"]
    with ubiops(server, token) as client:
        response = client.post("/projects/limits-after/deployments", content=b'{"name": "' + b"d" * LIMIT + b'"}')
        assert response.status_code == 413 and "larger than" in error_of(response)
        assert client.get("/projects/limits-after/deployments").json() == []
    direct = limited.routes["ubiops direct request"]
    fits = "y" * (LIMIT - 2)  # a JSON string of exactly LIMIT bytes
    answer = httpx.post(f"{server.url}{direct.path}", content=json.dumps(fits), headers=direct.headers, timeout=60)
    assert answer.status_code == 200 and answer.json()["result"] == fits, answer.text


# --- the reader, without a server --------------------------------------------------------


def _request(chunks: list[bytes], headers: list[tuple[bytes, bytes]] | None = None) -> tuple[Request, list[bytes]]:
    """A request whose body arrives in `chunks`; the list left holds those never read."""
    left = list(chunks)

    async def receive() -> dict[str, Any]:
        chunk = left.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(left)}

    return Request({"type": "http", "method": "POST", "headers": headers or []}, receive), left


def test_a_body_within_the_limit_is_read_whole() -> None:
    request, _ = _request([b"ab", b"cd"])
    assert asyncio.run(read_body(request, 4)) == b"abcd"


def test_a_body_past_the_limit_is_refused_before_it_is_all_read() -> None:
    request, left = _request([b"x" * 10] * 5)
    with pytest.raises(TooLarge):
        asyncio.run(read_body(request, 15))
    assert len(left) == 3  # the third chunk was never asked for


def test_a_body_declared_past_the_limit_is_refused_before_any_of_it_is_read() -> None:
    request, left = _request([b"x" * 10] * 5, [(b"content-length", b"50")])
    with pytest.raises(TooLarge):
        asyncio.run(read_body(request, 49))
    assert len(left) == 5
    request, _ = _request([b"x" * 10] * 5, [(b"content-length", b"9" * 40)])  # past any integer column
    with pytest.raises(TooLarge):
        asyncio.run(read_body(request, 49))
