"""The graph of a pipeline version: its attachments (which object feeds which, through which field
mappings) parsed from a body, and checked with the fields of its objects for known names, matching
fields, cycles and, once the version is complete, a path from `pipeline_start` to `pipeline_end`
through every object with every structured input fed.

Pure: what the objects take and give (`Io`) is resolved by the caller.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from modelbay.core.errors import InvalidInput
from modelbay.core.operators import Io

START = "pipeline_start"
END = "pipeline_end"


@dataclass(frozen=True)
class Source:
    """One source of an attachment: the object it comes from and which fields feed which."""

    name: str
    mapping: tuple[tuple[str, str], ...]  # (source field, destination field); empty: a trigger only


def check_graph(io: Io, objects: dict[str, Io], attachments: list[tuple[str, list[Source]]],
                complete: bool = True) -> tuple[str, ...]:
    """Validate the DAG: known names, matching fields, no cycle, and (when `complete`) every object
    on a path from start to end with every structured input fed. Returns the objects in topological
    order; raises `InvalidInput` naming the object and field at fault."""
    inputs_of: dict[str, dict[str, str]] = {name: {f["name"]: f["data_type"] for f in spec.input_fields}
                                             for name, spec in objects.items()}
    inputs_of[END] = {f["name"]: f["data_type"] for f in io.output_fields}
    outputs_of: dict[str, dict[str, str]] = {name: {f["name"]: f["data_type"] for f in spec.output_fields}
                                              for name, spec in objects.items()}
    outputs_of[START] = {f["name"]: f["data_type"] for f in io.input_fields}
    type_in = {name: spec.input_type for name, spec in objects.items()} | {END: io.output_type}
    type_out = {name: spec.output_type for name, spec in objects.items()} | {START: io.input_type}
    edges: dict[str, set[str]] = {name: set() for name in [START, *objects]}
    for destination, sources in attachments:
        if destination == START:
            raise InvalidInput("pipeline_start cannot be the destination of an attachment")
        if destination not in inputs_of:
            raise InvalidInput(f"Attachment destination '{destination}' is not an object of this version")
        for source in sources:
            if source.name == END:
                raise InvalidInput("pipeline_end cannot be the source of an attachment")
            if source.name not in outputs_of:
                raise InvalidInput(f"Attachment source '{source.name}' (to '{destination}') is not an object "
                                   "of this version")
            if source.name == destination:
                raise InvalidInput(f"Object '{destination}' is attached to itself")
            if type_in[destination] != type_out[source.name] and (
                type_in[destination] == "plain" or (type_out[source.name] == "plain" and source.mapping)
            ):
                raise InvalidInput(f"Object '{source.name}' gives {type_out[source.name]} output, but "
                                   f"'{destination}' takes {type_in[destination]} input")
            for source_field, destination_field in source.mapping:
                given = outputs_of[source.name].get(source_field)
                wanted = inputs_of[destination].get(destination_field)
                if given is None:
                    raise InvalidInput(f"Object '{source.name}' has no output field '{source_field}' "
                                       f"(mapped to '{destination}')")
                if wanted is None:
                    raise InvalidInput(f"Object '{destination}' has no input field '{destination_field}' "
                                       f"(mapped from '{source.name}')")
                if given != wanted:
                    raise InvalidInput(f"Field '{source_field}' of '{source.name}' is {given}, but field "
                                       f"'{destination_field}' of '{destination}' is {wanted}")
            edges[source.name].add(destination)
    # a cycle, found by Kahn's algorithm
    indegree = {name: 0 for name in [START, *objects]}
    for targets in edges.values():
        for target in targets:
            if target in indegree:
                indegree[target] += 1
    ready = sorted(name for name, n in indegree.items() if n == 0)
    order: list[str] = []
    while ready:
        name = ready.pop()
        order.append(name)
        for target in sorted(edges.get(name, ())):
            if target in indegree:
                indegree[target] -= 1
                if indegree[target] == 0:
                    ready.append(target)
    order.remove(START)
    if len(order) < len(objects):
        cyclic = sorted(name for name, n in indegree.items() if n > 0)
        raise InvalidInput(f"The attachments form a cycle through object '{cyclic[0]}'")
    if not complete:
        return tuple(order)
    # reachable from start, and reaching end
    reached = _reach(START, edges)
    for name in objects:
        if name not in reached:
            raise InvalidInput(f"Object '{name}' cannot be reached from pipeline_start")
    back: dict[str, set[str]] = {}
    for source, targets in edges.items():
        for target in targets:
            back.setdefault(target, set()).add(source)
    reaching_end = _reach(END, back)
    for name in objects:
        if name not in reaching_end:
            raise InvalidInput(f"Object '{name}' has no path to pipeline_end")
    if END not in reached:
        raise InvalidInput("pipeline_end cannot be reached from pipeline_start")
    # every field of a structured input must be fed by some mapping
    fed: dict[str, set[str]] = {}
    for destination, sources in attachments:
        for source in sources:
            fed.setdefault(destination, set()).update(d for _, d in source.mapping)
    for destination, fields in fed.items():
        missing = [f for f in inputs_of[destination] if f not in fields]
        if missing and type_in[destination] == "structured":
            raise InvalidInput(f"Input field '{missing[0]}' of '{destination}' receives no data from any attachment")
    return tuple(order)


def _reach(start: str, edges: dict[str, set[str]]) -> set[str]:
    seen = {start}
    stack = [start]
    while stack:
        for nxt in edges.get(stack.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def parse_attachments(raw: Any) -> list[tuple[str, list[Source]]]:
    """The attachments of a version body, checked for shape; raises `InvalidInput`."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidInput("attachments must be a list")
    result = []
    for i, attachment in enumerate(raw):
        if not isinstance(attachment, dict) or not isinstance(attachment.get("destination_name"), str):
            raise InvalidInput(f"attachments[{i}] needs a 'destination_name'")
        sources = attachment.get("sources")
        if not isinstance(sources, list) or not sources:
            raise InvalidInput(f"attachments[{i}] (to '{attachment['destination_name']}') needs a list of sources")
        parsed = []
        for source in sources:
            if not isinstance(source, dict) or not isinstance(source.get("source_name"), str):
                raise InvalidInput(f"attachments[{i}]: every source needs a 'source_name'")
            mapping = source.get("mapping") or []
            if not isinstance(mapping, list):
                raise InvalidInput(f"attachments[{i}]: mapping must be a list")
            pairs = []
            for m in mapping:
                if not isinstance(m, dict) or not isinstance(m.get("source_field_name"), str) or not isinstance(
                    m.get("destination_field_name"), str
                ):
                    raise InvalidInput(f"attachments[{i}]: every mapping needs 'source_field_name' and "
                                       "'destination_field_name'")
                pairs.append((m["source_field_name"], m["destination_field_name"]))
            parsed.append(Source(source["source_name"], tuple(pairs)))
        result.append((attachment["destination_name"], parsed))
    return result


def stored_attachments(attachments: list[tuple[str, list[Source]]]) -> list[dict[str, Any]]:
    """Parsed attachments as a version stores them, each with a new id."""
    return [
        {
            "id": str(uuid.uuid4()),
            "destination_name": destination,
            "sources": [
                {"source_name": s.name,
                 "mapping": [{"source_field_name": a, "destination_field_name": b} for a, b in s.mapping]}
                for s in sources
            ],
        }
        for destination, sources in attachments
    ]
