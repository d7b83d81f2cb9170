"""Link resolution: follow a consumer's input link to an emitted node's output, a constant, or nothing.

Reroutes pass through; PrimitiveNode and the Primitive* value nodes put their value into their consumers; notes
feed nothing; a muted source (mode 2) removes the consumer's input; a bypassed node (mode 4) connects the consumer
to one of its own inputs, matched by type like the frontend does; links crossing a subgraph boundary continue on
the other side (instance input ↔ subgraph input node, instance output ↔ subgraph output node).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping

from .diagnostics import BYPASS_UNMATCHED, DANGLING_LINK, EMPTY_PRIMITIVE, LINK_CYCLE, MUTED_SOURCE, Severity
from .subgraphs import SubgraphExpander, output_link
from .ui_context import Ctx
from .ui_graph import MODE_BYPASS, MODE_MUTED, SUBGRAPH_INPUT_NODE, Input, Node
from .value_transforms import apply_text_replacements
from .widgets import BUILTIN_SPECS, NOTE_TYPES, PRIMITIVE_NODE, PRIMITIVE_VALUE_TYPES, REROUTE

_WILDCARD_TYPES = ("*", "")


@dataclass(frozen=True)
class Ref:
    """A link to an emitted node's output."""

    node: str
    slot: int


@dataclass(frozen=True)
class Const:
    """A constant. via_widget: it sits in the consumer's widget (frontend transforms apply to it)."""

    value: Any
    via_widget: bool


class Nothing(Enum):
    """No value reaches the input."""

    UNCONNECTED = "unconnected"  # nothing feeds the input; a widget keeps its own value
    REMOVED = "removed"  # the source was muted: ComfyUI deletes the input, widget value included


Resolved = Ref | Const | Nothing


@dataclass(frozen=True)
class Site:
    """The consumer a resolution started from, for messages."""

    node: str
    input: str


def _types_compatible(a: str, b: str) -> bool:
    """litegraph's link type check: wildcards, case-insensitive equality, comma-separated unions."""
    if a in _WILDCARD_TYPES or b in _WILDCARD_TYPES:
        return True
    left = {t.strip().lower() for t in a.split(",")}
    right = {t.strip().lower() for t in b.split(",")}
    return bool(left & right)


def _bypass_input(node: Node, slot: int, consumer_type: str) -> Input | None:
    """The input a bypassed node's output `slot` stands for, per the frontend's matching order."""
    inputs = node.inputs
    if consumer_type in _WILDCARD_TYPES:
        if slot < len(inputs):
            return inputs[slot]
        return inputs[0] if inputs else None
    output_type = node.outputs[slot] if slot < len(node.outputs) else "*"
    if slot < len(inputs):
        same = inputs[slot]
        if _types_compatible(same.type, output_type) and _types_compatible(same.type, consumer_type):
            return same
    exact = next((i for i in inputs if i.type == consumer_type), None)
    if exact is not None:
        return exact
    return next((i for i in inputs if _types_compatible(i.type, consumer_type)), None)


class LinkResolver(SubgraphExpander):
    """Resolves linked inputs across reroutes, primitives, muted and bypassed nodes and subgraph boundaries.

    `visiting` holds the outputs already followed from the current consumer, to detect cycles; `site` names that
    consumer in diagnostics.
    """

    def unconnected(self, site: Site, code: str, message: str, severity: Severity = "warning") -> Resolved:
        """Report a problem found while resolving the consumer's input at `site`; the input stays unconnected."""
        self.report(code, message, severity, node=site.node, input=site.input)
        return Nothing.UNCONNECTED

    def resolve_input(self, ctx: Ctx, node: Node, inp: Input) -> Resolved:
        site = Site(ctx.api_id(node), inp.name)
        return self.resolve_link(ctx, inp.link, inp.type, frozenset(), site)  # type: ignore[arg-type]

    def resolve_link(
        self, ctx: Ctx, link_id: str, consumer_type: str, visiting: frozenset, site: Site
    ) -> Resolved:
        link = ctx.level.links.get(link_id)
        if link is None:
            return self.unconnected(
                site, DANGLING_LINK, f"link {link_id} does not exist; the input is left unconnected",
            )
        return self.resolve_output(ctx, link.origin, link.origin_slot, consumer_type, visiting, site)

    def resolve_output(
        self, ctx: Ctx, origin: str, slot: int, consumer_type: str, visiting: frozenset, site: Site
    ) -> Resolved:
        key = (ctx.prefix, origin, slot)
        if key in visiting:
            return self.unconnected(
                site, LINK_CYCLE, "links through reroutes or bypassed nodes form a cycle", "error",
            )
        visiting = visiting | {key}
        if origin == SUBGRAPH_INPUT_NODE:
            return self.resolve_subgraph_input(ctx, slot, consumer_type, visiting, site)
        node = ctx.level.nodes.get(origin)
        if node is None:
            return self.unconnected(
                site, DANGLING_LINK, f"the link's source node {ctx.prefix}{origin} does not exist",
            )
        return self.resolve_node_output(ctx, node, slot, consumer_type, visiting, site)

    def resolve_node_output(
        self, ctx: Ctx, node: Node, slot: int, consumer_type: str, visiting: frozenset, site: Site
    ) -> Resolved:
        if node.type in NOTE_TYPES:
            return Nothing.UNCONNECTED
        if node.type == REROUTE:
            source = next((i for i in node.inputs if i.link is not None), None)
            if source is None:
                return Nothing.UNCONNECTED
            return self.resolve_link(ctx, source.link, consumer_type, visiting, site)  # type: ignore[arg-type]
        if node.type == PRIMITIVE_NODE:
            return self.primitive_node_value(ctx, node, site)
        if node.mode == MODE_MUTED:
            self.report(
                MUTED_SOURCE,
                f"the source node {ctx.api_id(node)} ({node.type}) is muted; the input is removed like ComfyUI does",
                node=site.node, input=site.input,
            )
            return Nothing.REMOVED
        if node.mode == MODE_BYPASS:
            return self.resolve_bypass(ctx, node, slot, consumer_type, visiting, site)
        if node.type in PRIMITIVE_VALUE_TYPES:
            return self.primitive_value(ctx, node, visiting, site)
        if node.type in self.subgraphs:
            return self.resolve_subgraph_output(ctx, node, slot, consumer_type, visiting, site)
        return Ref(ctx.api_id(node), slot)

    def resolve_bypass(
        self, ctx: Ctx, node: Node, slot: int, consumer_type: str, visiting: frozenset, site: Site
    ) -> Resolved:
        chosen = _bypass_input(node, slot, consumer_type)
        if chosen is None:
            return self.unconnected(
                site,
                BYPASS_UNMATCHED,
                f"bypassed node {ctx.api_id(node)} ({node.type}) has no input of type {consumer_type}; "
                "the input is left unconnected",
            )
        if chosen.link is None:
            return Nothing.UNCONNECTED
        return self.resolve_link(ctx, chosen.link, consumer_type, visiting, site)

    def primitive_node_value(self, ctx: Ctx, node: Node, site: Site) -> Resolved:
        """PrimitiveNode: widgets_values = [value, control, filter]; the value is pushed into each target widget."""
        overrides = ctx.overrides.get(node.id)
        if overrides:
            value = next(iter(overrides.values()))
        elif isinstance(node.named, Mapping) and node.named:
            value = next(iter(node.named.values()))
        elif isinstance(node.values, list) and node.values:
            value = node.values[0]
        elif isinstance(node.values, Mapping) and node.values:
            value = next(iter(node.values.values()))
        else:
            return self.unconnected(
                site, EMPTY_PRIMITIVE, f"PrimitiveNode {ctx.api_id(node)} stores no value; the target keeps its own"
            )
        if isinstance(value, str) and node.properties.get("Run widget replace on values"):
            value = apply_text_replacements(value, self.now, self.widget_finder(ctx))
        return Const(value, via_widget=True)

    def primitive_value(self, ctx: Ctx, node: Node, visiting: frozenset, site: Site) -> Resolved:
        """Primitive* backend nodes output their `value` input; the value is not a widget of the consumer."""
        source = node.input_named("value")
        if source is not None and source.link is not None:
            result = self.resolve_link(ctx, source.link, source.type, visiting, site)
            if isinstance(result, Const):
                return Const(result.value, via_widget=False)
            if result is not Nothing.UNCONNECTED:
                return result
        spec = BUILTIN_SPECS[node.type]
        values = self.widget_values(ctx, node, spec)
        return Const(values["value"], via_widget=False)

    def resolve_subgraph_input(
        self, ctx: Ctx, slot: int, consumer_type: str, visiting: frozenset, site: Site
    ) -> Resolved:
        """A link from the subgraph input node: whatever feeds the instance there, else its promoted widget."""
        sub, instance, parent = ctx.subgraph, ctx.instance, ctx.parent
        if sub is None or instance is None or parent is None or slot >= len(sub.inputs):
            return self.unconnected(
                site, DANGLING_LINK, f"link from subgraph input {slot}, which does not exist here",
            )
        name = sub.inputs[slot].name
        outer = instance.input_named(name)
        if outer is not None and outer.link is not None:
            return self.resolve_link(parent, outer.link, consumer_type, visiting, site)
        if name in ctx.promoted:
            return Const(ctx.promoted[name], via_widget=True)
        return Nothing.UNCONNECTED

    def resolve_subgraph_output(
        self, ctx: Ctx, node: Node, slot: int, consumer_type: str, visiting: frozenset, site: Site
    ) -> Resolved:
        child = self.child(ctx, node)
        if child is None or child.subgraph is None:
            return Nothing.UNCONNECTED
        link = output_link(child.subgraph, slot)
        if link is None:
            return self.unconnected(
                site, DANGLING_LINK, f"output {slot} of subgraph instance {ctx.api_id(node)} is not connected inside"
            )
        return self.resolve_output(child, link.origin, link.origin_slot, consumer_type, visiting, site)

