"""The layout of a pipeline version's graph (`console.pipeline_drawing`): columns by longest path,
no box over another, edges from box to box."""

from __future__ import annotations

from itertools import combinations
from typing import Any

from modelbay.console.pipeline_drawing import BOX_HEIGHT, BOX_WIDTH, Box, Drawing, draw


def attach(destination: str, *sources: str | tuple[str, list[tuple[str, str]]]) -> dict[str, Any]:
    return {"destination_name": destination, "sources": [
        {"source_name": s, "mapping": []} if isinstance(s, str) else
        {"source_name": s[0], "mapping": [{"source_field_name": a, "destination_field_name": b} for a, b in s[1]]}
        for s in sources]}


#: A diamond with a skip: start → split (operator) → left (deployment), right (sub-pipeline) → join
#: (operator) → end, and start → join directly (a longer path must still win).
OBJECTS = [
    {"name": "split", "reference_type": "operator", "reference_name": "function"},
    {"name": "left", "reference_type": "deployment", "reference_name": "echo", "version": "v2"},
    {"name": "right", "reference_type": "pipeline", "reference_name": "chain"},
    {"name": "join", "reference_type": "operator", "reference_name": "collect-subrequests"},
]
ATTACHMENTS = [
    attach("split", ("pipeline_start", [("x", "x")])),
    attach("left", "split"),
    attach("right", ("split", [("y", "input")])),
    attach("join", "left", ("right", [("output", "z")]), "pipeline_start"),
    attach("pipeline_end", ("join", [("z", "result")])),
]


def boxes(drawing: Drawing) -> dict[str, Box]:
    return {box.name: box for box in drawing.boxes}


def overlap(a: Box, b: Box) -> bool:
    return a.x < b.x + BOX_WIDTH and b.x < a.x + BOX_WIDTH and a.y < b.y + BOX_HEIGHT and b.y < a.y + BOX_HEIGHT


def test_columns_follow_the_longest_path_from_the_start() -> None:
    drawn = boxes(draw(OBJECTS, ATTACHMENTS))
    assert {name: box.column for name, box in drawn.items()} == {
        "pipeline_start": 0, "split": 1, "left": 2, "right": 2, "join": 3, "pipeline_end": 4}
    assert [drawn[n].kind for n in ("pipeline_start", "split", "left", "right", "pipeline_end")] == [
        "start", "operator", "deployment", "pipeline", "end"]
    assert drawn["left"].sublabel == "deployment echo v2" and drawn["right"].sublabel == "pipeline chain"
    assert drawn["pipeline_start"].sublabel == ""
    # left to right by column
    assert drawn["pipeline_start"].x < drawn["split"].x < drawn["left"].x == drawn["right"].x < drawn["join"].x


def test_no_box_overlaps_another_and_all_fit() -> None:
    drawing = draw(OBJECTS, ATTACHMENTS)
    for a, b in combinations(drawing.boxes, 2):
        assert not overlap(a, b), (a.name, b.name)
    for box in drawing.boxes:
        assert 0 <= box.x and box.x + BOX_WIDTH <= drawing.width
        assert 0 <= box.y and box.y + BOX_HEIGHT <= drawing.height


def test_edges_join_their_boxes_with_their_mappings() -> None:
    drawing = draw(OBJECTS, ATTACHMENTS)
    drawn = boxes(drawing)
    assert len(drawing.edges) == 7
    for edge in drawing.edges:
        source, destination = drawn[edge.source], drawn[edge.destination]
        assert (edge.x1, edge.y1) == (source.x + BOX_WIDTH, source.y + BOX_HEIGHT // 2)
        assert (edge.x2, edge.y2) == (destination.x, destination.y + BOX_HEIGHT // 2)
        assert edge.path.startswith(f"M{edge.x1},{edge.y1} ") and edge.path.endswith(f" {edge.x2},{edge.y2}")
    right = next(e for e in drawing.edges if e.destination == "join" and e.source == "right")
    assert right.title == "right → join: output → z"
    assert next(e for e in drawing.edges if e.source == "left").title == "left → join"


def test_an_edge_that_skips_columns_runs_between_the_boxes() -> None:
    drawing = draw(OBJECTS, ATTACHMENTS)
    skip = next(e for e in drawing.edges if e.source == "pipeline_start" and e.destination == "join")
    drawn = boxes(drawing)
    assert [x for x, _ in skip.waypoints] == [drawn["split"].x, drawn["left"].x]  # columns 1 and 2
    for x, y in skip.waypoints:
        assert f" L{x + BOX_WIDTH},{y}" in skip.path
        for box in drawing.boxes:  # its straight run through a column touches no box there
            assert not (box.x == x and box.y <= y <= box.y + BOX_HEIGHT), box.name
    assert all(e.waypoints == () for e in drawing.edges if e is not skip)
    # a version still being built: its end stands last, the edge to it passes the loose object
    built = draw([{"name": "first", "reference_name": "echo"},
                  {"name": "constant", "reference_type": "operator", "reference_name": "pipeline-variable"}],
                 [attach("first", "pipeline_start"), attach("constant", "first"), attach("pipeline_end", "first")])
    [to_end] = [e for e in built.edges if e.destination == "pipeline_end"]
    [(x, y)] = to_end.waypoints
    constant = boxes(built)["constant"]
    assert x == constant.x and not constant.y <= y <= constant.y + BOX_HEIGHT


def test_a_version_being_built_is_drawn_too() -> None:
    # nothing attached yet: every object stands after the start, the end after them
    loose = draw([{"name": "a", "reference_name": "echo"}, {"name": "b", "reference_name": "echo"}], [])
    drawn = boxes(loose)
    assert (drawn["a"].column, drawn["b"].column, drawn["pipeline_end"].column) == (1, 1, 2)
    assert drawn["a"].kind == "deployment" and not overlap(drawn["a"], drawn["b"]) and loose.edges == ()
    empty = boxes(draw([], []))
    assert set(empty) == {"pipeline_start", "pipeline_end"} and empty["pipeline_end"].column == 1


def test_a_source_stands_beside_what_it_feeds() -> None:
    # two chains: the second column keeps the order of the first, so no edges cross
    objects = [{"name": n, "reference_name": "echo"} for n in ("a1", "a2", "b1", "b2")]
    drawn = boxes(draw(objects, [attach("a1", "pipeline_start"), attach("b1", "pipeline_start"),
                                 attach("b2", "a1"), attach("a2", "b1"), attach("pipeline_end", "a2", "b2")]))
    assert (drawn["a1"].y < drawn["b1"].y) == (drawn["b2"].y < drawn["a2"].y)


def test_long_names_are_cut_and_kept_whole_in_the_title() -> None:
    name = "a-very-long-object-name-that-goes-on"
    [box] = [b for b in draw([{"name": name, "reference_name": "echo"}], []).boxes if b.name == name]
    assert box.label.endswith("…") and len(box.label) <= 22
    assert box.title == f"{name}: deployment echo"
