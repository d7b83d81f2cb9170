"""Write a ComfyUI API prompt as a UI-format workflow (litegraph serialisation, version 0.4) that ComfyUI opens.

The API prompt says what runs; the UI format also needs what the frontend draws: each node's widgets in widget
order (``widgets_values``, with the frontend's stored-only companions: ``control_after_generate`` after seeds,
``upload`` after LoadImage's image), its sockets with their links, a ``links`` table, positions and sizes. The
widget order comes from the same declarations the UI importer reads (:func:`.specs.spec_lookup`), so
``ui_to_api(api_to_ui(prompt))`` gives ``prompt`` back: that round trip is what the tests hold it to.

Two frontend transforms would change a value between the workflow and the prompt ComfyUI queues: comments and
``{a|b}`` groups in dynamic-prompt text (CLIPTextEncode), and ``%date:…%`` / ``%Node.widget%`` in save-node
filename prefixes. Text the frontend would change is escaped (``\\{``) where that is exact, else fed to the widget
from a ``PrimitiveString`` (``PrimitiveStringMultiline``) node, whose value ComfyUI passes through untouched.

Layout: one column per topological depth (sources left, outputs right), nodes stacked in each column in prompt
order with room for their title bars, so nothing overlaps. Torch-free.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

from ..graph import infer_type
from ..node import REQUIRED, Registry
from .specs import comfy_inputs, comfy_node_spec, shim_spec
from .value_transforms import SAVE_NODE_TYPES, apply_text_replacements, expand_dynamic_prompt
from .widgets import WIDGET_KINDS, ComfyNodeSpec, WidgetSlot

__all__ = ["api_to_ui", "TITLE_HEIGHT", "node_boxes"]

#: litegraph draws a node's title bar above its `pos`.
TITLE_HEIGHT = 30
_COLUMN_GAP = 80
_ROW_GAP = 40
_SLOT_HEIGHT = 20
_WIDGET_HEIGHT = 24
_TEXT_BOX_HEIGHT = 110
_MARGIN = 50


@dataclass(frozen=True)
class _Shape:
    """What the frontend needs to know about one class_type."""

    sockets: tuple[tuple[str, str], ...]  # (input name, type) for inputs that are not widgets
    widgets: tuple[WidgetSlot, ...]
    outputs: tuple[str, ...]  # output types in slot order
    spec: ComfyNodeSpec | None = None


class _Shapes:
    """class_type -> _Shape, from the registry's ComfyUI declarations, graphrun's own types and the shims."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.index = registry.comfy_index()
        self.cache: dict[str, _Shape | None] = {}

    def get(self, class_type: str) -> _Shape | None:
        if class_type not in self.cache:
            self.cache[class_type] = self._make(class_type)
        return self.cache[class_type]

    def _make(self, class_type: str) -> _Shape | None:
        if class_type in self.index:
            spec, comfy = self.index[class_type]
            comfy_spec = comfy_node_spec(spec, comfy)
            widgets = set(comfy_spec.widget_names)
            sockets = tuple((theirs, spec.input(ours).type_name)  # type: ignore[union-attr]
                            for ours, theirs in comfy_inputs(spec, comfy) if theirs not in widgets)
            return _Shape(sockets, comfy_spec.widgets, comfy_spec.outputs, comfy_spec)
        shim = shim_spec(class_type)
        if shim is not None:
            widgets = set(shim.widget_names)
            return _Shape(tuple((n, "*") for n in shim.inputs if n not in widgets), shim.widgets, shim.outputs, shim)
        spec = self.registry.get(class_type)
        if spec is not None:  # a graphrun type with no ComfyUI counterpart: its own inputs, declaration order
            widgets = tuple(
                WidgetSlot(i.name, i.type_name if i.type_name in WIDGET_KINDS else "STRING",
                           None if i.default is REQUIRED else i.default)
                for i in spec.inputs if not i.socket
            )
            sockets = tuple((i.name, i.type_name) for i in spec.inputs if i.socket)
            return _Shape(sockets, widgets, tuple(o.type_name for o in spec.outputs))
        return None


def _is_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and not isinstance(value[0], bool) and isinstance(value[1], int) and not isinstance(value[1], bool))


def _unwrap(value: Any) -> Any:
    if isinstance(value, Mapping) and set(value) == {"__value__"}:
        return copy.deepcopy(value["__value__"])
    return copy.deepcopy(value)


def _guessed_shape(node: Mapping[str, Any]) -> _Shape:
    """A class_type nobody declares: linked inputs become sockets, literals widgets in the order given."""
    inputs = node.get("inputs") or {}
    sockets = tuple((name, "*") for name, value in inputs.items() if _is_link(value))
    widgets = tuple(WidgetSlot(name, infer_type(_unwrap(value)) or "STRING", None)
                    for name, value in inputs.items() if not _is_link(value))
    return _Shape(sockets, widgets, ())


# --- frontend transforms ------------------------------------------------------------------------------------------

_FIXED_NOW = datetime(2000, 1, 1)


def _survives_dynamic_prompt(text: str) -> bool:
    return expand_dynamic_prompt(text) == (text, [])


def _escaped_dynamic_prompt(text: str) -> str | None:
    """The text as a dynamic-prompt widget must hold it to send ``text``; None when no escaping does."""
    if _survives_dynamic_prompt(text):
        return text
    escaped = re.sub(r"([{}|])", r"\\\1", text)
    return escaped if expand_dynamic_prompt(escaped) == (text, []) else None


def _survives_text_replacements(text: str) -> bool:
    return apply_text_replacements(text, _FIXED_NOW, lambda node, widget: "\x00") == text


# --- the workflow -------------------------------------------------------------------------------------------------


@dataclass
class _UiNode:
    id: int
    type: str
    title: str
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    widgets_values: list[Any] = field(default_factory=list)
    text_boxes: int = 0
    wide: bool = False
    sources: set[int] = field(default_factory=set)
    shape: _Shape | None = None

    def size(self) -> list[int]:
        widgets = len(self.widgets_values)
        slots = max(len([i for i in self.inputs if "widget" not in i]), len(self.outputs), 1)
        height = 10 + slots * _SLOT_HEIGHT + widgets * _WIDGET_HEIGHT + self.text_boxes * _TEXT_BOX_HEIGHT
        return [420 if self.wide else 320, height]


class _Builder:
    def __init__(self, prompt: Mapping[str, Mapping[str, Any]], registry: Registry) -> None:
        self.prompt = prompt
        self.shapes = _Shapes(registry)
        self.ids = _numeric_ids(list(prompt))
        self.nodes: dict[int, _UiNode] = {}
        self.links: list[list[Any]] = []
        self.next_id = max(self.ids.values(), default=0) + 1

    def build(self) -> dict[str, Any]:
        for api_id, raw in self.prompt.items():
            self.add_node(api_id, raw)
        for api_id, raw in self.prompt.items():
            self.connect(api_id, raw)
        positions = _layout(self.nodes)
        order = _topological_order(self.nodes)
        nodes = []
        for node_id in sorted(self.nodes):
            node = self.nodes[node_id]
            entry: dict[str, Any] = {
                "id": node.id,
                "type": node.type,
                "pos": positions[node.id],
                "size": node.size(),
                "flags": {},
                "order": order[node.id],
                "mode": 0,
                "inputs": node.inputs,
                "outputs": node.outputs,
                "properties": {"Node name for S&R": node.type},
                "widgets_values": node.widgets_values,
            }
            if node.title != node.type:
                entry["title"] = node.title
            nodes.append(entry)
        text = json.dumps(self.prompt, sort_keys=True, default=str)
        return {
            "id": str(uuid.UUID(bytes=hashlib.sha256(text.encode()).digest()[:16], version=4)),
            "revision": 0,
            "last_node_id": max(self.nodes, default=0),
            "last_link_id": len(self.links),
            "nodes": nodes,
            "links": self.links,
            "groups": [],
            "config": {},
            "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}},
            "version": 0.4,
        }

    def shape(self, raw: Mapping[str, Any]) -> _Shape:
        return self.shapes.get(str(raw.get("class_type"))) or _guessed_shape(raw)

    def add_node(self, api_id: str, raw: Mapping[str, Any]) -> None:
        class_type = str(raw.get("class_type"))
        shape = self.shape(raw)
        meta = raw.get("_meta") if isinstance(raw.get("_meta"), Mapping) else {}
        title = meta.get("title") if isinstance(meta.get("title"), str) and meta.get("title") else class_type
        node = _UiNode(self.ids[api_id], class_type, title, shape=shape)
        inputs = raw.get("inputs") or {}
        node.inputs = [{"name": name, "type": kind, "link": None} for name, kind in shape.sockets]
        node.outputs = [{"name": kind, "type": kind, "links": [], "slot_index": slot}
                        for slot, kind in enumerate(shape.outputs)]
        for widget in shape.widgets:
            value = inputs.get(widget.name)
            stored = widget.default if value is None or _is_link(value) else _unwrap(value)
            if widget.kind == "STRING" and isinstance(stored, str):
                node.wide = node.wide or len(stored) > 40 or widget.dynamic_prompts
                node.text_boxes += 1 if (widget.dynamic_prompts or "\n" in stored) else 0
            node.widgets_values.append(stored)
            for companion in widget.stored_slots()[1:]:
                node.widgets_values.append({"control_after_generate": "fixed", "control_filter_list": "",
                                            "upload": "image"}[companion])
        extra = [n for n in inputs if n not in {s for s, _ in shape.sockets} | {w.name for w in shape.widgets}]
        for name in extra:  # an input the declaration does not know: keep it when it is a link
            if _is_link(inputs[name]):
                node.inputs.append({"name": name, "type": "*", "link": None})
        self.nodes[node.id] = node

    def connect(self, api_id: str, raw: Mapping[str, Any]) -> None:
        node = self.nodes[self.ids[api_id]]
        shape = self.shape(raw)
        widgets = {w.name: w for w in shape.widgets}
        for name, value in (raw.get("inputs") or {}).items():
            if _is_link(value) and str(value[0]) in self.ids:
                source = self.nodes[self.ids[str(value[0])]]
                self.link(source, int(value[1]), node, name, widgets.get(name))
            elif name in widgets and isinstance(_unwrap(value), str):
                self.protect_text(node, widgets[name], _unwrap(value))

    def socket(self, node: _UiNode, name: str, widget: WidgetSlot | None, kind: str) -> int:
        for index, entry in enumerate(node.inputs):
            if entry["name"] == name:
                return index
        node.inputs.append({"name": name, "type": widget.kind if widget else kind, "widget": {"name": name},
                            "link": None})
        return len(node.inputs) - 1

    def link(self, source: _UiNode, slot: int, target: _UiNode, name: str, widget: WidgetSlot | None) -> None:
        while len(source.outputs) <= slot:  # a source whose outputs nobody declared
            source.outputs.append({"name": "*", "type": "*", "links": [], "slot_index": len(source.outputs)})
        kind = source.outputs[slot]["type"]
        index = self.socket(target, name, widget, kind)
        link_id = len(self.links) + 1
        target.inputs[index]["link"] = link_id
        source.outputs[slot]["links"].append(link_id)
        target.sources.add(source.id)
        self.links.append([link_id, source.id, slot, target.id, index, kind])

    def protect_text(self, node: _UiNode, widget: WidgetSlot, text: str) -> None:
        """Keep the frontend from changing this text on its way to the prompt (see the module docstring)."""
        position = self.widget_position(node, widget.name)
        if widget.dynamic_prompts:
            escaped = _escaped_dynamic_prompt(text)
            if escaped is not None:
                node.widgets_values[position] = escaped
                return
        elif not (node.type in SAVE_NODE_TYPES and widget.name == "filename_prefix"
                  and not _survives_text_replacements(text)):
            return
        primitive_type = "PrimitiveStringMultiline" if "\n" in text else "PrimitiveString"
        primitive = _UiNode(self.next_id, primitive_type, f"{node.title}: {widget.name}", widgets_values=[text],
                            wide=True, text_boxes=1 if "\n" in text else 0)
        primitive.outputs = [{"name": "STRING", "type": "STRING", "links": [], "slot_index": 0}]
        primitive.inputs = []
        self.next_id += 1
        self.nodes[primitive.id] = primitive
        self.link(primitive, 0, node, widget.name, widget)

    def widget_position(self, node: _UiNode, name: str) -> int:
        position = 0
        for widget in node.shape.widgets if node.shape else ():
            if widget.name == name:
                return position
            position += len(widget.stored_slots())
        raise KeyError(name)


def _numeric_ids(api_ids: list[str]) -> dict[str, int]:
    """UI node ids are numbers: API ids that are positive integers stay, otherwise all are renumbered 1, 2, …"""
    if all(i.isdigit() and int(i) > 0 for i in api_ids) and len({int(i) for i in api_ids}) == len(api_ids):
        return {i: int(i) for i in api_ids}
    return {api_id: index for index, api_id in enumerate(api_ids, start=1)}


def _depths(nodes: Mapping[int, _UiNode]) -> dict[int, int]:
    """Longest path from a source; nodes on a cycle (a malformed prompt) stay at depth 0."""
    depth = {node_id: 0 for node_id in nodes}
    for node_id in _topological_ids(nodes):
        sources = [s for s in nodes[node_id].sources if s in nodes]
        if sources:
            depth[node_id] = 1 + max(depth[s] for s in sources)
    return depth


def _topological_ids(nodes: Mapping[int, _UiNode]) -> list[int]:
    remaining = {node_id: {s for s in node.sources if s in nodes} for node_id, node in nodes.items()}
    ordered: list[int] = []
    while remaining:
        ready = sorted(node_id for node_id, sources in remaining.items() if not sources & set(remaining))
        if not ready:  # a cycle: take the rest in id order
            ready = sorted(remaining)
        for node_id in ready:
            ordered.append(node_id)
            del remaining[node_id]
    return ordered


def _topological_order(nodes: Mapping[int, _UiNode]) -> dict[int, int]:
    return {node_id: index for index, node_id in enumerate(_topological_ids(nodes))}


def _layout(nodes: Mapping[int, _UiNode]) -> dict[int, list[int]]:
    """Columns by depth, left to right; in a column, nodes top to bottom in id order, title bars included."""
    depth = _depths(nodes)
    columns: dict[int, list[int]] = {}
    for node_id in sorted(nodes):
        columns.setdefault(depth[node_id], []).append(node_id)
    positions: dict[int, list[int]] = {}
    x = _MARGIN
    for column in sorted(columns):
        y = _MARGIN + TITLE_HEIGHT
        width = 0
        for node_id in columns[column]:
            w, h = nodes[node_id].size()
            positions[node_id] = [x, y]
            y += h + TITLE_HEIGHT + _ROW_GAP
            width = max(width, w)
        x += width + _COLUMN_GAP
    return positions


def node_boxes(workflow: Mapping[str, Any]) -> dict[Any, tuple[float, float, float, float]]:
    """Each node's box as drawn, title bar included: ``(left, top, right, bottom)``."""
    boxes = {}
    for node in workflow.get("nodes", []):
        (x, y), (w, h) = node["pos"], node["size"]
        boxes[node["id"]] = (x, y - TITLE_HEIGHT, x + w, y + h)
    return boxes


def api_to_ui(prompt: Mapping[str, Mapping[str, Any]], registry: Registry) -> dict[str, Any]:
    """The UI-format workflow of an API prompt, as ComfyUI saves it (nodes, links, groups, extra, version 0.4).

    ``registry`` supplies the widget order of every class_type (the declarations ``graphrun nodes`` shows);
    a class_type it does not know keeps its inputs in the order the prompt lists them. The prompt is not changed.
    """
    return _Builder(prompt, registry).build()
