"""Subgraph expansion: each subgraph instance becomes a child `Ctx` whose nodes get ids `instance:inner`.

Promoted widgets come in two forms: the `proxyWidgets` property (entries `[innerNodeId | "-1", widgetName]`,
values positional in the instance's `widgets_values`) and the older io-widget form (values of the subgraph inputs
that feed a widget inside, positional or by name). Values promoted through several levels are passed down as
overrides.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

from .diagnostics import SUBGRAPH_CYCLE
from .ui_context import ConverterBase, Ctx
from .ui_graph import SUBGRAPH_INPUT_NODE, SUBGRAPH_OUTPUT_NODE, Link, Node, Subgraph, SubgraphIO, as_id
from .widgets import CONTROL_AFTER_GENERATE, CONTROL_FILTER_LIST, SpecLookup

_MAX_SUBGRAPH_DEPTH = 64


class SubgraphExpander(ConverterBase):
    """Creates the expanded context of each subgraph instance, with its promoted widget values."""

    def __init__(self, subgraphs: dict[str, Subgraph], lookup: SpecLookup, now: datetime) -> None:
        super().__init__(subgraphs, lookup, now)
        self._backed: dict[str, list[str]] = {}

    def child(self, ctx: Ctx, node: Node) -> Ctx | None:
        """The expanded context of subgraph instance `node` (created once per instance)."""
        if node.id in ctx.children:
            return ctx.children[node.id]
        sub = self.subgraphs[node.type]
        child: Ctx | None = None
        if sub.id in ctx.chain:
            self.report(
                SUBGRAPH_CYCLE, f"subgraph '{sub.name}' contains itself", "error", node=ctx.api_id(node),
            )
        elif len(ctx.chain) >= _MAX_SUBGRAPH_DEPTH:
            self.report(
                SUBGRAPH_CYCLE,
                f"subgraphs nest deeper than {_MAX_SUBGRAPH_DEPTH} levels (subgraph '{sub.name}' here)",
                "error",
                node=ctx.api_id(node) if len(ctx.prefix) <= 80 else f"...{ctx.api_id(node)[-40:]}",
            )
        else:
            promoted, overrides = self.promoted_values(ctx, node, sub)
            child = Ctx(
                level=sub.level,
                prefix=f"{ctx.api_id(node)}:",
                parent=ctx,
                instance=node,
                subgraph=sub,
                chain=ctx.chain + (sub.id,),
                promoted=promoted,
                overrides=overrides,
            )
        ctx.children[node.id] = child
        return child

    def promoted_values(
        self, ctx: Ctx, node: Node, sub: Subgraph
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """Values of an instance's promoted widgets: by subgraph input name, and by inner node and widget."""
        promoted: dict[str, Any] = {}
        overrides: dict[str, dict[str, Any]] = {}
        from_parent = ctx.overrides.get(node.id, {})  # the instance's own widgets promoted one level further up
        proxies = node.properties.get("proxyWidgets")
        if isinstance(proxies, list):
            entries = [_proxy_entry(p) for p in proxies]
            if isinstance(node.values, list):
                for entry, value in zip(entries, node.values):
                    if entry is not None and value is not None:
                        _set_promoted(entry, value, promoted, overrides)
            for name, value in from_parent.items():
                entry = next((e for e in entries if e is not None and e[1] == name), ("-1", name))
                _set_promoted(entry, value, promoted, overrides)
            return promoted, overrides
        backed = self.widget_backed_inputs(sub)
        if isinstance(node.values, list):
            promoted.update((n, v) for n, v in zip(backed, node.values) if v is not None)
        for by_name in (node.values, node.named, from_parent):
            if isinstance(by_name, Mapping):
                promoted.update((n, by_name[n]) for n in backed if by_name.get(n) is not None)
        return promoted, overrides

    def widget_backed_inputs(self, sub: Subgraph) -> list[str]:
        """Subgraph inputs that feed a widget inside: the positions of an io-widget-era instance's values."""
        if sub.id not in self._backed:
            self._backed[sub.id] = [
                sin.name for index, sin in enumerate(sub.inputs) if self.feeds_widget(sub, index, sin)
            ]
        return self._backed[sub.id]

    def feeds_widget(self, sub: Subgraph, index: int, sin: SubgraphIO) -> bool:
        """True when subgraph input `sin` (slot `index`) is linked inside to a widget input."""
        links = sub.level.links
        ids = set(sin.link_ids) | {
            lk.id for lk in links.values() if lk.origin == SUBGRAPH_INPUT_NODE and lk.origin_slot == index
        }
        for link_id in ids:
            link = links.get(link_id)
            if link is None or link.origin != SUBGRAPH_INPUT_NODE:
                continue
            target = sub.level.nodes.get(link.target)
            if target is None:
                continue
            inp = next((i for i in target.inputs if i.link == link_id), None)
            if inp is None:
                continue
            spec = None if target.type in self.subgraphs else self.spec(target.type)
            if inp.is_widget or (spec is not None and spec.widget(inp.name) is not None):
                return True
        return False


def _proxy_entry(raw: Any) -> tuple[str, str] | None:
    """A proxyWidgets entry [innerNodeId | "-1", widgetName], normalised; None when malformed."""
    if isinstance(raw, list) and len(raw) >= 2 and isinstance(raw[1], str):
        node_id = as_id(raw[0])
        if node_id is not None:
            return node_id, raw[1]
    return None


def _set_promoted(
    entry: tuple[str, str], value: Any, promoted: dict[str, Any], overrides: dict[str, dict[str, Any]]
) -> None:
    node_id, widget = entry
    if widget in (CONTROL_AFTER_GENERATE, CONTROL_FILTER_LIST):
        return  # frontend-only companions; the run uses the stored value as "fixed"
    if node_id == "-1":
        promoted[widget] = value
    else:
        overrides.setdefault(node_id, {})[widget] = value


def output_link(sub: Subgraph, slot: int) -> Link | None:
    """The link into the subgraph output node at `slot` (the most recent one if the file lists several)."""
    links = sub.level.links
    ids = sub.outputs[slot].link_ids if slot < len(sub.outputs) else []
    for link_id in reversed(ids):
        link = links.get(link_id)
        if link is not None and link.target == SUBGRAPH_OUTPUT_NODE and link.target_slot == slot:
            return link
    candidates = [lk for lk in links.values() if lk.target == SUBGRAPH_OUTPUT_NODE and lk.target_slot == slot]
    return candidates[-1] if candidates else None

