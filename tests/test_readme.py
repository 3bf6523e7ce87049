"""The README's settings table is complete: every setting a user can set is there, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from modelbay.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_lists_every_setting() -> None:
    text = README.read_text()
    table = text[text.index("## Settings") :]
    table = table[: table.index("\n## ", 1)]
    listed = set(re.findall(r"^\| `(MODELBAY_[A-Z0-9_]+)` \|", table, flags=re.MULTILINE))
    expected = {f"MODELBAY_{name.upper()}" for name in Settings.model_fields}
    assert listed == expected, f"missing: {sorted(expected - listed)}, unknown: {sorted(listed - expected)}"
