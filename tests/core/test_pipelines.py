"""The DAG checks of a pipeline version, without a store."""

from __future__ import annotations

import pytest

from modelbay.core.errors import InvalidInput
from modelbay.core.operators import Io
from modelbay.core.pipeline_graph import END, START, Source, check_graph

X = ({"name": "x", "data_type": "int"},)
S = ({"name": "s", "data_type": "string"},)
INT_IO = Io("structured", X, "structured", X)
PIPELINE = Io("structured", X, "structured", X)


def x_to_x(source: str) -> Source:
    return Source(source, (("x", "x"),))


def test_a_chain_is_valid_and_ordered_from_start_to_end() -> None:
    order = check_graph(PIPELINE, {"a": INT_IO, "b": INT_IO},
                        [("b", [x_to_x("a")]), ("a", [x_to_x(START)]), (END, [x_to_x("b")])])
    assert order == ("a", "b")


def test_independent_branches_and_a_join_are_valid() -> None:
    order = check_graph(PIPELINE, {"a": INT_IO, "b": INT_IO, "j": INT_IO}, [
        ("a", [x_to_x(START)]), ("b", [x_to_x(START)]),
        ("j", [x_to_x("a"), Source("b", ())]), (END, [x_to_x("j")]),
    ])
    assert order[-1] == "j" and set(order) == {"a", "b", "j"}


@pytest.mark.parametrize(("objects", "attachments", "message"), [
    ({"a": INT_IO, "b": INT_IO}, [("a", [x_to_x(START), x_to_x("b")]), ("b", [x_to_x("a")]), (END, [x_to_x("a")])],
     "cycle"),
    ({"a": INT_IO}, [("a", [x_to_x("a")]), (END, [x_to_x(START)])], "Object 'a' is attached to itself"),
    ({"a": INT_IO}, [(END, [x_to_x(START)])], "Object 'a' cannot be reached from pipeline_start"),
    ({"a": INT_IO}, [("a", [x_to_x(START)]), (END, [x_to_x(START)])], "Object 'a' has no path to pipeline_end"),
    ({}, [(END, [Source(START, (("x", "y"),))])], "Object 'pipeline_end' has no input field 'y'"),
    ({"a": Io("structured", X, "structured", S)}, [("a", [x_to_x(START)]), (END, [Source("a", (("s", "x"),))])],
     "Field 's' of 'a' is string, but field 'x' of 'pipeline_end' is int"),
    ({"a": INT_IO}, [("a", [Source(START, ())]), (END, [x_to_x("a")])],
     "Input field 'x' of 'a' receives no data from any attachment"),
    ({}, [(END, [Source(END, ())])], "pipeline_end cannot be the source"),
    ({}, [("ghost", [x_to_x(START)])], "Attachment destination 'ghost' is not an object"),
    ({}, [], "pipeline_end cannot be reached"),
])
def test_a_faulty_graph_is_refused_naming_the_object(objects: dict[str, Io], attachments: list[tuple[str, list[Source]]],
                                                     message: str) -> None:
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(")):
        check_graph(PIPELINE, objects, attachments)


def test_a_plain_destination_takes_plain_output_with_a_trigger_only_attachment() -> None:
    plain = Io("plain", (), "plain", ())
    assert check_graph(plain, {"p": plain}, [("p", [Source(START, ())]), (END, [Source("p", ())])]) == ("p",)
    with pytest.raises(InvalidInput, match="gives structured output, but 'p' takes plain input"):
        check_graph(PIPELINE, {"p": plain}, [("p", [Source(START, ())]), (END, [Source("p", ())])])
