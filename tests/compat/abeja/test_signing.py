"""Signed archive URLs, without a server."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlparse

import pytest

from modelbay.core.errors import Forbidden, NotFound
from modelbay.dialects.abeja import ids
from modelbay.dialects.abeja.signing import Signer


def _parts(url: str) -> tuple[str, str, str]:
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    return parsed.path, query["expires"][0], query["signature"][0]


def test_a_signed_url_checks_for_its_method_and_path_only() -> None:
    signer = Signer("secret")
    path, expires, signature = _parts(signer.sign("PUT", "http://h:1/", "/a/b"))
    assert path == "/a/b"
    signer.check("PUT", path, expires, signature)
    for method, other_path in (("GET", path), ("PUT", "/a/c")):
        with pytest.raises(Forbidden):
            signer.check(method, other_path, expires, signature)
    with pytest.raises(Forbidden):
        Signer("another secret").check("PUT", path, expires, signature)


def test_an_expired_or_unsigned_url_is_refused() -> None:
    signer = Signer("secret")
    path, _, _ = _parts(signer.sign("PUT", "http://h", "/a", lifetime_s=-5))
    _, expires, signature = _parts(signer.sign("PUT", "http://h", "/a", lifetime_s=-5))
    with pytest.raises(Forbidden, match="expired"):
        signer.check("PUT", path, expires, signature)
    with pytest.raises(Forbidden, match="not signed"):
        signer.check("PUT", path, None, None)
    assert int(expires) < time.time()


def test_derived_ids_have_the_abeja_shapes_and_are_stable() -> None:
    core = "0f1e2d3c-4b5a-4969-8877-665544332211"
    assert ids.deployment_id(core) == ids.deployment_id(core) and ids.DEPLOYMENT_ID.match(ids.deployment_id(core))
    assert ids.version_id(core) == "ver-0f1e2d3c4b5a4969"
    assert ids.core_run_id(ids.run_id("00112233aabbccdd")) == "00112233aabbccdd"
    for bad in ("ser-00112233aabbccdd", "run-xyz", "run-00112233AABBCCDD"):
        with pytest.raises(NotFound):
            ids.core_run_id(bad)
