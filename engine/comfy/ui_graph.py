"""The UI workflow as typed structures: nodes, sockets, links, graph levels and subgraph definitions.

`Parser` reads litegraph's JSON (root graph and every, possibly nested, subgraph definition), normalising ids to
strings and recording every structural problem as a `MALFORMED` error instead of raising.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .diagnostics import MALFORMED, ComfyDiagnostic

#: Pseudo node ids of a subgraph's input and output nodes in its links.
SUBGRAPH_INPUT_NODE = "-10"
SUBGRAPH_OUTPUT_NODE = "-20"
#: Node modes: 0 always; 1 (on event) and 3 (on trigger) are legacy and run like 0.
MODE_ALWAYS = 0
MODE_MUTED = 2
MODE_BYPASS = 4


@dataclass
class Input:
    """An input socket. link: the id of the link into it; is_widget: a widget converted to an input."""

    name: str
    type: str
    link: str | None
    is_widget: bool


@dataclass
class Node:
    """A node as stored; widget values stay raw until the converter maps them through the node's spec."""

    id: str
    type: str
    mode: int
    title: str | None
    inputs: list[Input]
    outputs: list[str]  # output socket types, in slot order
    values: Any  # widgets_values: list, dict or None
    named: Any  # widgets_values_named
    properties: dict[str, Any]

    def input_named(self, name: str) -> Input | None:
        return next((i for i in self.inputs if i.name == name), None)


@dataclass
class Link:
    """A link from output `origin_slot` of node `origin` to input `target_slot` of node `target`."""

    id: str
    origin: str
    origin_slot: int
    target: str
    target_slot: int


@dataclass
class Level:
    """One graph: the root workflow or the inner graph of a subgraph definition."""

    nodes: dict[str, Node]
    links: dict[str, Link]


@dataclass
class SubgraphIO:
    """An input or output of a subgraph definition, with the ids of the inner links the file lists for it."""

    name: str
    link_ids: list[str]


@dataclass
class Subgraph:
    """A subgraph definition; instances are nodes whose `type` is its id."""

    id: str
    name: str
    level: Level
    inputs: list[SubgraphIO]
    outputs: list[SubgraphIO]


_ID_LIMIT = 2**63  # litegraph's ids are small integers; 1e300 is not an id (and would print 301 digits)


def as_id(value: Any) -> str | None:
    """Node and link ids: ints (or integral floats) and non-empty strings, normalised to strings."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value) if -_ID_LIMIT < value < _ID_LIMIT else None
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if -_ID_LIMIT < value < _ID_LIMIT else None
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _as_index(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and value >= 0 else None


def _type_name(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "COMBO"  # old serialisations wrote the option list as the socket type
    return "*"  # litegraph treats 0/None as "any"


class Parser:
    """Turns the raw JSON into typed structures, recording every structural problem as an error."""

    def __init__(self) -> None:
        self.errors: list[ComfyDiagnostic] = []

    def error(self, message: str, node: str | None = None, hint: str | None = None) -> None:
        self.errors.append(ComfyDiagnostic(MALFORMED, message, node=node, hint=hint))

    def level(self, raw_nodes: Any, raw_links: Any, where: str) -> Level:
        nodes: dict[str, Node] = {}
        if not isinstance(raw_nodes, list):
            self.error(f"{where}: 'nodes' must be a list, got {type(raw_nodes).__name__}")
            raw_nodes = []
        for index, raw in enumerate(raw_nodes):
            node = self.node(raw, f"{where} nodes[{index}]")
            if node is None:
                continue
            if node.id in nodes:
                self.error(f"{where}: two nodes have id {node.id}", node=node.id)
                continue
            nodes[node.id] = node
        return Level(nodes, self.links(raw_links, where))

    def node(self, raw: Any, where: str) -> Node | None:
        if not isinstance(raw, Mapping):
            self.error(f"{where} must be an object, got {type(raw).__name__}")
            return None
        node_id = as_id(raw.get("id"))
        class_type = raw.get("type")
        if node_id is None or not isinstance(class_type, str) or not class_type:
            self.error(f"{where} needs an integer 'id' and a non-empty string 'type'")
            return None
        where = f"{where} (id {node_id}, {class_type})"
        mode = raw.get("mode", 0)
        if mode is None:
            mode = 0
        if isinstance(mode, bool) or not isinstance(mode, int):
            self.error(f"{where}: 'mode' must be an integer, got {mode!r}", node=node_id)
            return None
        values = raw.get("widgets_values")
        if values is not None and not isinstance(values, (list, Mapping)):
            self.error(f"{where}: 'widgets_values' must be a list or an object", node=node_id)
            return None
        title = raw.get("title")
        properties = raw.get("properties")
        inputs = self.sockets(raw.get("inputs"), where, node_id, self.input)
        outputs = self.sockets(raw.get("outputs"), where, node_id, self.output)
        if inputs is None or outputs is None:
            return None
        return Node(
            id=node_id,
            type=class_type,
            mode=mode,
            title=title if isinstance(title, str) else None,
            inputs=inputs,
            outputs=outputs,
            values=values,
            named=raw.get("widgets_values_named"),
            properties=dict(properties) if isinstance(properties, Mapping) else {},
        )

    def sockets(self, raw: Any, where: str, node_id: str, make: Callable[[Mapping[str, Any]], Any]) -> list | None:
        if raw is None:
            return []
        if not isinstance(raw, list) or not all(isinstance(s, Mapping) for s in raw):
            self.error(f"{where}: 'inputs' and 'outputs' must be lists of objects", node=node_id)
            return None
        made = [make(s) for s in raw]
        if any(m is None for m in made):
            self.error(f"{where}: a socket has a non-string 'name' or a bad 'link'", node=node_id)
            return None
        return made

    @staticmethod
    def input(raw: Mapping[str, Any]) -> Input | None:
        name = raw.get("name", "")
        link = raw.get("link")
        link_id = as_id(link)
        if not isinstance(name, str) or (link is not None and link_id is None):
            return None
        widget = raw.get("widget")
        return Input(name, _type_name(raw.get("type")), link_id, bool(widget))

    @staticmethod
    def output(raw: Mapping[str, Any]) -> str | None:
        """An output socket's type; None when its name is not a string."""
        name = raw.get("name", "")
        if not isinstance(name, str):
            return None
        return _type_name(raw.get("type"))

    def links(self, raw: Any, where: str) -> dict[str, Link]:
        if raw is None:
            return {}
        if not isinstance(raw, list):
            self.error(f"{where}: 'links' must be a list, got {type(raw).__name__}")
            return {}
        links: dict[str, Link] = {}
        for index, item in enumerate(raw):
            link = self.link(item)
            if link is None:
                self.error(
                    f"{where} links[{index}] is malformed",
                    hint="a link is [id, origin_id, origin_slot, target_id, target_slot, type] "
                    "or an object with those keys",
                )
                continue
            links[link.id] = link
        return links

    @staticmethod
    def link(item: Any) -> Link | None:
        if isinstance(item, Mapping):
            fields = [item.get(k) for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot")]
        elif isinstance(item, list) and len(item) >= 5:
            fields = item[:5]
        else:
            return None
        link_id, origin, target = as_id(fields[0]), as_id(fields[1]), as_id(fields[3])
        origin_slot, target_slot = _as_index(fields[2]), _as_index(fields[4])
        if None in (link_id, origin, target, origin_slot, target_slot):
            return None
        return Link(link_id, origin, origin_slot, target, target_slot)  # type: ignore[arg-type]

    def subgraphs(self, workflow: Mapping[str, Any]) -> dict[str, Subgraph]:
        """Every subgraph definition, including ones nested in other definitions."""
        found: dict[str, Subgraph] = {}
        pending = [(workflow.get("definitions"), "workflow")]
        while pending:
            definitions, where = pending.pop()
            if definitions is None:
                continue
            raw_list = definitions.get("subgraphs") if isinstance(definitions, Mapping) else None
            if raw_list is None and isinstance(definitions, Mapping):
                continue
            if not isinstance(raw_list, list):
                self.error(f"{where}: 'definitions.subgraphs' must be a list")
                continue
            for index, raw in enumerate(raw_list):
                sub = self.subgraph(raw, f"{where} subgraph[{index}]")
                if sub is None:
                    continue
                found.setdefault(sub.id, sub)
                pending.append((raw.get("definitions"), f"subgraph '{sub.name}'"))
        return found

    def subgraph(self, raw: Any, where: str) -> Subgraph | None:
        if not isinstance(raw, Mapping) or not isinstance(raw.get("id"), str) or not raw["id"]:
            self.error(f"{where} must be an object with a string 'id'")
            return None
        name = raw.get("name") if isinstance(raw.get("name"), str) else raw["id"]
        where = f"subgraph '{name}'"
        inputs = self.subgraph_io(raw.get("inputs"), f"{where} inputs")
        outputs = self.subgraph_io(raw.get("outputs"), f"{where} outputs")
        level = self.level(raw.get("nodes"), raw.get("links"), where)
        if inputs is None or outputs is None:
            return None
        return Subgraph(raw["id"], name, level, inputs, outputs)

    def subgraph_io(self, raw: Any, where: str) -> list[SubgraphIO] | None:
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.error(f"{where} must be a list")
            return None
        result = []
        for item in raw:
            if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
                self.error(f"{where}: each entry needs a string 'name'")
                return None
            link_ids = item.get("linkIds")
            ids = [i for i in (as_id(x) for x in link_ids) if i] if isinstance(link_ids, list) else []
            result.append(SubgraphIO(item["name"], ids))
        return result

