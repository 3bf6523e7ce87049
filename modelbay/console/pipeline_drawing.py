"""The layout of a pipeline version's graph, for the console to draw as SVG on the server.

Boxes are the version's objects with `pipeline_start` and `pipeline_end`; edges are its
attachments (source to destination, with their field mappings). Boxes stand in columns, left to
right, by the longest path from `pipeline_start` (an object nothing feeds, as in a version still
being built, stands in the first column after it; `pipeline_end` always stands last). An edge
that skips columns takes a place in each it crosses, as a box would (Sugiyama's dummy nodes), so
no edge runs over a box. Within a column, boxes and crossings are ordered by the mean row of what
feeds them, so most edges run straight.

Pure: it reads a version's stored `objects` and `attachments` and returns coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelbay.core.pipeline_graph import END, START

BOX_WIDTH = 170
BOX_HEIGHT = 44
COLUMN_GAP = 60
ROW_GAP = 20
MARGIN = 10

#: Most characters of a box's line; longer names are cut (the box's tooltip gives them whole).
LINE_CHARACTERS = 22


@dataclass(frozen=True)
class Box:
    """An object of the version (or its start or end) and where it stands."""

    name: str
    kind: str  # start, end, deployment, operator or pipeline
    reference_name: str | None  # what a deployment, operator or sub-pipeline object refers to
    version: str | None  # the version it names (None: the default one)
    column: int
    x: int
    y: int

    width = BOX_WIDTH
    height = BOX_HEIGHT

    @property
    def title(self) -> str:
        return self.name if self.reference_name is None else f"{self.name}: {self.kind} {self.detail}"

    @property
    def detail(self) -> str:
        """What it refers to, as its second line says it."""
        if self.reference_name is None:
            return ""
        return self.reference_name + (f" {self.version}" if self.version else "")

    @property
    def label(self) -> str:
        return _cut(self.name)

    @property
    def sublabel(self) -> str:
        return _cut(f"{self.kind} {self.detail}" if self.reference_name is not None else "")


@dataclass(frozen=True)
class Edge:
    """An attachment's source feeding its destination: from the right side of one box to the left
    side of the other."""

    source: str
    destination: str
    mapping: tuple[tuple[str, str], ...]  # (source field, destination field)
    x1: int
    y1: int
    x2: int
    y2: int
    #: Where it enters each column it crosses between its boxes (it crosses them straight).
    waypoints: tuple[tuple[int, int], ...] = ()

    @property
    def path(self) -> str:
        """An SVG path: curves that leave and enter boxes and columns horizontally."""
        path, (x, y) = f"M{self.x1},{self.y1}", (self.x1, self.y1)
        for wx, wy in self.waypoints:
            path += _curve(x, y, wx, wy) + f" L{wx + BOX_WIDTH},{wy}"
            x, y = wx + BOX_WIDTH, wy
        return path + _curve(x, y, self.x2, self.y2)

    @property
    def title(self) -> str:
        fields = ", ".join(f"{a} → {b}" for a, b in self.mapping)
        return f"{self.source} → {self.destination}" + (f": {fields}" if fields else "")


@dataclass(frozen=True)
class Drawing:
    boxes: tuple[Box, ...]
    edges: tuple[Edge, ...]
    width: int
    height: int


def _curve(x1: int, y1: int, x2: int, y2: int) -> str:
    middle = (x1 + x2) // 2
    return f" C{middle},{y1} {middle},{y2} {x2},{y2}"


def _cut(text: str) -> str:
    return text if len(text) <= LINE_CHARACTERS else text[:LINE_CHARACTERS - 1] + "…"


#: A box, or where an edge crosses a column between its boxes: (the edge's index, the column).
Node = str | tuple[int, int]


def draw(objects: list[dict[str, Any]], attachments: list[dict[str, Any]]) -> Drawing:
    """Lay out a version from its stored `objects` and `attachments`."""
    kinds = {START: "start", END: "end"} | {o["name"]: o.get("reference_type") or "deployment" for o in objects}
    refers = {o["name"]: (o.get("reference_name"), o.get("version")) for o in objects}
    links = [(str(source.get("source_name")), str(attachment.get("destination_name")),
              tuple((m["source_field_name"], m["destination_field_name"]) for m in source.get("mapping") or []))
             for attachment in attachments for source in attachment.get("sources") or []]
    links = [link for link in links if link[0] in kinds and link[1] in kinds]  # a stored version names only these
    column: dict[Node, int] = dict(_columns([o["name"] for o in objects], [(s, d) for s, d, _ in links]))
    # An edge that skips columns takes a place in each column it crosses (as a box would), so it
    # runs between the boxes there, never over one.
    chains: list[list[Node]] = []
    for index, (source, destination, _) in enumerate(links):
        crossed = [(index, c) for c in range(column[source] + 1, column[destination])]
        column.update({waypoint: waypoint[1] for waypoint in crossed})
        chains.append([source, *crossed, destination])
    rows = _rows(column, [(a, b) for chain in chains for a, b in zip(chain, chain[1:], strict=False)])
    tallest = max(len(names) for names in rows)
    at: dict[Node, tuple[int, int]] = {}
    for index, names in enumerate(rows):
        top = MARGIN + (tallest - len(names)) * (BOX_HEIGHT + ROW_GAP) // 2  # each column centred
        for row, name in enumerate(names):
            at[name] = (MARGIN + index * (BOX_WIDTH + COLUMN_GAP), top + row * (BOX_HEIGHT + ROW_GAP))
    boxes = []
    for name, (x, y) in at.items():
        if isinstance(name, str):
            reference_name, version = refers.get(name, (None, None))
            boxes.append(Box(name, kinds[name], reference_name, version, column[name], x, y))
    middle = BOX_HEIGHT // 2
    edges = tuple(
        Edge(s, d, mapping, at[s][0] + BOX_WIDTH, at[s][1] + middle, at[d][0], at[d][1] + middle,
             tuple((at[w][0], at[w][1] + middle) for w in chain[1:-1]))
        for (s, d, mapping), chain in zip(links, chains, strict=True))
    return Drawing(tuple(boxes), edges,
                   width=2 * MARGIN + len(rows) * BOX_WIDTH + (len(rows) - 1) * COLUMN_GAP,
                   height=2 * MARGIN + tallest * BOX_HEIGHT + (tallest - 1) * ROW_GAP)


def _columns(names: list[str], links: list[tuple[str, str]]) -> dict[str, int]:
    """The column of every box: the longest path to it from `pipeline_start` (an object nothing
    feeds counts as fed by it); `pipeline_end` after every other."""
    sources: dict[str, set[str]] = {name: set() for name in names}
    for source, destination in links:
        if destination in sources and source != END:
            sources[destination].add(source)
    column = {START: 0}
    todo = list(names)
    while todo:  # Kahn's order: a box is placed once every source of it is
        ready = [name for name in todo if sources[name] <= column.keys()]
        if not ready:  # a cycle (never stored: a version is checked for them); place what is left
            ready = todo
        for name in ready:
            column[name] = 1 + max((column.get(s, 0) for s in sources[name]), default=0)
        todo = [name for name in todo if name not in column]
    column[END] = 1 + max(column.values())
    return column


def _rows(column: dict[Node, int], links: list[tuple[Node, Node]]) -> list[list[Node]]:
    """What stands in each column, top to bottom: by the mean row of what feeds it (the barycentre
    heuristic, one pass left to right), then by name."""
    sources: dict[Node, list[Node]] = {}
    for source, destination in links:
        sources.setdefault(destination, []).append(source)
    rows: list[list[Node]] = [[] for _ in range(max(column.values()) + 1)]
    row_of: dict[Node, float] = {}
    for index in range(len(rows)):
        names = [name for name, c in column.items() if c == index]

        def place(name: Node) -> tuple[float, str]:
            placed = [row_of[s] for s in sources.get(name, ()) if s in row_of]
            return (sum(placed) / len(placed) if placed else 0.0, str(name))

        rows[index] = sorted(names, key=place)
        for row, name in enumerate(rows[index]):
            row_of[name] = row - (len(rows[index]) - 1) / 2  # centred, as the columns are drawn
    return rows
