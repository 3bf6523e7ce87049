"""The fenced code blocks of the README, `docs/` and `examples/`, read as a user reads them.

A block a user cannot run as printed (it installs something, starts the server, or holds a
`<token>` to fill in) is marked on the line just before its fence:
`<!-- not run by the tests: <why> -->`. Every other `sh` or `python` block is either a command of
an example's README (which `test_examples.py` runs as printed) or an excerpt of a file in
`examples/` (which those commands run).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = ROOT / "examples"
UNTESTED = re.compile(r"^<!-- not run by the tests: .+ -->$")
FENCE = re.compile(r"^```(\S*)\s*$")

#: Languages a user runs; `text` blocks are what a command prints.
RUN_LANGUAGES = {"sh", "bash", "shell", "console", "python", "py"}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    untested: bool

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, in order."""
    found: list[Block] = []
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        untested = index > 0 and bool(UNTESTED.match(lines[index - 1].strip()))
        found.append(Block(path, index + 1, opening.group(1), "\n".join(lines[index + 1 : end]), untested))
        index = end + 1
    return found


def commands(readme: Path) -> list[str]:
    """The `sh` blocks of an example's README that the tests run as printed."""
    return [b.text for b in blocks(readme) if b.language == "sh" and not b.untested]


def outputs(readme: Path) -> list[str]:
    """The `text` blocks of an example's README: what its commands print."""
    return [b.text for b in blocks(readme) if b.language == "text"]


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(EXAMPLES.rglob("README.md"))]


def significant_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def is_excerpt(text: str, of: str) -> bool:
    """Whether the lines of `text` (indentation aside) come one after another in `of`."""
    part, whole = significant_lines(text), significant_lines(of)
    return bool(part) and any(whole[i : i + len(part)] == part for i in range(len(whole) - len(part) + 1))


def matches_output(expected: str, printed: str) -> bool:
    """Whether each line of `expected` (`…` standing for anything) is printed, in that order."""
    remaining = printed.splitlines()
    for line in significant_lines(expected):
        pattern = re.compile(".*".join(re.escape(part) for part in line.split("…")))
        while remaining and not pattern.fullmatch(remaining[0].strip()):
            remaining.pop(0)
        if not remaining:
            return False
        remaining.pop(0)
    return True
