"""What every layer of the UI→API conversion shares: where a node sits (`Ctx`) and the state (`ConverterBase`).

The converter is built in layers, each a class in its own module: `ConverterBase` (here: spec lookup, diagnostics,
a node's widget values as seen from its context) ← `SubgraphExpander` (subgraphs.py) ← `LinkResolver` (links.py)
← the emitting converter (ui_to_api.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from .diagnostics import ComfyDiagnostic, Severity
from .ui_graph import Level, Node, Subgraph
from .value_transforms import NOT_FOUND, WidgetFinder
from .widget_values import map_widgets_values
from .widgets import ComfyNodeSpec, SpecLookup, builtin_spec


@dataclass
class Ctx:
    """One instance of a graph level: the root graph or an expanded subgraph instance."""

    level: Level
    prefix: str  # API id prefix of nodes in this level: "" or "57:" or "57:12:"
    parent: Ctx | None = None
    instance: Node | None = None
    subgraph: Subgraph | None = None
    chain: tuple[str, ...] = ()  # subgraph ids from the root, to detect recursive definitions
    promoted: dict[str, Any] = field(default_factory=dict)  # subgraph input name -> promoted widget value
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # inner node id -> widget -> value
    children: dict[str, Ctx | None] = field(default_factory=dict)

    def api_id(self, node: Node) -> str:
        return self.prefix + node.id

    def root(self) -> Ctx:
        ctx = self
        while ctx.parent is not None:
            ctx = ctx.parent
        return ctx


class ConverterBase:
    """The state of one conversion: subgraph definitions, the spec lookup, the clock and the diagnostics found."""

    def __init__(self, subgraphs: dict[str, Subgraph], lookup: SpecLookup, now: datetime) -> None:
        self.subgraphs = subgraphs
        self.lookup = lookup
        self.now = now
        self.diagnostics: list[ComfyDiagnostic] = []
        self._specs: dict[str, ComfyNodeSpec | None] = {}

    def spec(self, class_type: str) -> ComfyNodeSpec | None:
        if class_type not in self._specs:
            self._specs[class_type] = builtin_spec(class_type) or self.lookup(class_type)
        return self._specs[class_type]

    def report(self, code: str, message: str, severity: Severity = "warning", **where: Any) -> None:
        self.diagnostics.append(ComfyDiagnostic(code, message, severity, **where))

    def widget_values(self, ctx: Ctx, node: Node, spec: ComfyNodeSpec) -> dict[str, Any]:
        """The node's widget values: its stored ones, then the values promoted onto it from subgraph instances."""
        values, problems = map_widgets_values(spec, node.values, node.named)
        self.diagnostics.extend(replace(p, node=ctx.api_id(node)) for p in problems)
        for name, value in ctx.overrides.get(node.id, {}).items():
            if name in values:
                values[name] = value
        return values

    def widget_finder(self, ctx: Ctx) -> WidgetFinder:
        """Looks up `%Node.widget%` targets in the node's own graph level, then in the root graph."""
        levels = [ctx] if ctx.parent is None else [ctx, ctx.root()]

        def find(node_name: str, widget_name: str) -> Any:
            for level_ctx in levels:
                nodes = list(level_ctx.level.nodes.values())
                matches = [n for n in nodes if n.properties.get("Node name for S&R") == node_name]
                matches = matches or [n for n in nodes if n.title == node_name]
                if not matches:
                    continue
                spec = self.spec(matches[0].type)
                if spec is None:
                    return NOT_FOUND
                values, _ = map_widgets_values(spec, matches[0].values, matches[0].named)
                values.update(level_ctx.overrides.get(matches[0].id, {}))
                return values.get(widget_name, NOT_FOUND)
            return NOT_FOUND

        return find
