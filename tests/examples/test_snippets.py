"""Every command or piece of code the README and docs show runs in the tests as printed.

A `sh`/`python` block is either marked as not run (with why, see `snippets.py`), or a command of an
example's README, which `test_examples.py` runs, or an excerpt of a file of `examples/`, which those
commands run.
"""

from __future__ import annotations

import pytest

from tests.examples.snippets import EXAMPLES, RUN_LANGUAGES, Block, blocks, commands, documents, is_excerpt

#: The examples' files that their commands run (code and shell), and the commands themselves.
SOURCES = {path: path.read_text() for path in sorted(EXAMPLES.rglob("*")) if path.suffix in (".py", ".sh")}
COMMANDS = {text for readme in EXAMPLES.glob("*/README.md") for text in commands(readme)}

RUNNABLE = [b for doc in documents() for b in blocks(doc) if b.language in RUN_LANGUAGES and not b.untested]


def test_the_docs_are_found() -> None:
    assert {d.name for d in documents()} >= {"README.md", "ubiops.md", "abeja.md", "datature.md", "operations.md"}
    assert len(COMMANDS) == 4  # ubiops, abeja, and datature's receiver and job: test_examples.py runs each


@pytest.mark.parametrize("block", RUNNABLE, ids=str)
def test_a_block_is_a_tested_command_or_an_excerpt_of_an_example(block: Block) -> None:
    if block.language in ("sh", "bash", "shell", "console") and block.text in COMMANDS:
        return
    sources = [path for path, text in SOURCES.items() if is_excerpt(block.text, text)]
    assert sources, (
        f"{block}: this {block.language} block is neither a command of an example's README nor an excerpt "
        "of a file in examples/; make it one, or mark it `<!-- not run by the tests: <why> -->`"
    )


def test_untested_blocks_say_why() -> None:
    for doc in documents():
        for block in blocks(doc):
            if block.untested:
                assert block.language in RUN_LANGUAGES, f"{block}: only commands and code need the mark"
