"""ABEJA ids derived from core ids, without a server."""

from __future__ import annotations

import pytest

from modelbay.core.errors import NotFound
from modelbay.dialects.abeja import ids


def test_derived_ids_have_the_abeja_shapes_and_are_stable() -> None:
    core = "0f1e2d3c-4b5a-4969-8877-665544332211"
    assert ids.deployment_id(core) == ids.deployment_id(core) and ids.DEPLOYMENT_ID.fullmatch(ids.deployment_id(core))
    assert ids.version_id(core) == "ver-0f1e2d3c4b5a4969"
    assert ids.core_run_id(ids.run_id("00112233aabbccdd")) == "00112233aabbccdd"
    for bad in ("ser-00112233aabbccdd", "run-xyz", "run-00112233AABBCCDD", "run-00112233aabbccdd\n"):
        with pytest.raises(NotFound):
            ids.core_run_id(bad)
