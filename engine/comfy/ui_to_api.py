"""Convert a ComfyUI UI-format workflow (litegraph serialisation) into the API ("prompt") format.

ComfyUI does this in the browser (`graphToPrompt`) on the live graph; graphrun reproduces it from the saved JSON,
following SEMANTICS.md §1.4:

* `widgets_values` are mapped through each node's widget order (`ComfyNodeSpec`), skipping the stored-only
  companions (`control_after_generate`, `control_filter_list`, `upload`); short lists keep defaults; dict-form
  values and `widgets_values_named` map by name.
* Links are resolved by the target input's *name* (never by slot index); a linked widget input takes the link.
* Reroutes pass through; PrimitiveNode and the Primitive* value nodes put their value into their consumers;
  notes are dropped; muted nodes (mode 2) are dropped and their consumers lose the input; bypassed nodes (mode 4)
  connect a consumer to one of their inputs by type.
* Subgraph instances are expanded with ids `instance:inner` (nested: `a:b:c`), including promoted widgets in both
  the `proxyWidgets` form and the io-widget form.
* The frontend's value transforms are applied: comment stripping in dynamic-prompt text, `{a|b}` choice groups
  (an error: ComfyUI would pick at random), `%date:…%` and `%Node.widget%` in save-node filename prefixes.

Problems are collected, not raised one by one: `ui_to_api` either returns the whole prompt plus warnings or raises
one `ComfyConversionError` carrying every error (nothing partially converted).

The work is split over this folder: diagnostics.py (codes and errors), ui_graph.py (the parsed UI JSON),
widget_values.py (`widgets_values` → named values), value_transforms.py (the frontend's value transforms),
ui_context.py (what the converter's layers share), subgraphs.py (instance expansion, promoted widgets) and links.py
(link resolution). This module emits the API nodes and still exports the public names it defined before the split.
"""
from __future__ import annotations

import copy
import difflib
from datetime import datetime
from typing import Any, Iterable, Mapping

from .diagnostics import (
    DYNAMIC_PROMPT_CHOICE,
    LEGACY_MODE,
    MALFORMED,
    UNSUPPORTED_NODE,
    ComfyConversionError,
    ComfyDiagnostic,
    ComfyFormatError,
)
from .links import Const, LinkResolver, Nothing, Ref, Site
from .ui_context import Ctx
from .ui_graph import MODE_ALWAYS, MODE_BYPASS, MODE_MUTED, Level, Node, Parser, Subgraph
from .value_transforms import (
    SAVE_NODE_TYPES,
    apply_text_replacements,
    expand_dynamic_prompt,
    format_date,
    strip_prompt_comments,
)
from .widget_values import CONTROL_MODES, map_widgets_values, stored_controls
from .widgets import (
    BUILTIN_SPECS,
    CONTROL_AFTER_GENERATE,
    NOTE_TYPES,
    PRIMITIVE_NODE,
    PRIMITIVE_VALUE_TYPES,
    REROUTE,
    ComfyNodeSpec,
    SpecLookup,
)

# Importable from here as before the split: the other diagnostic codes, `Severity`, `WidgetFinder` and its
# `NOT_FOUND`, and the subgraph pseudo node ids.
from .diagnostics import (  # noqa: F401
    BYPASS_UNMATCHED,
    DANGLING_LINK,
    EMPTY_PRIMITIVE,
    EXTRA_WIDGET_VALUES,
    LINK_CYCLE,
    MUTED_SOURCE,
    NULL_WIDGET_VALUE,
    SUBGRAPH_CYCLE,
    Severity,
)
from .ui_graph import SUBGRAPH_INPUT_NODE, SUBGRAPH_OUTPUT_NODE  # noqa: F401
from .value_transforms import NOT_FOUND, WidgetFinder  # noqa: F401

__all__ = [
    "ComfyDiagnostic",
    "ComfyFormatError",
    "ComfyConversionError",
    "ui_to_api",
    "map_widgets_values",
    "expand_dynamic_prompt",
    "strip_prompt_comments",
    "apply_text_replacements",
    "format_date",
    "SAVE_NODE_TYPES",
]


def _api_value(value: Any) -> Any:
    """A constant as the API prompt carries it: a copy, lists wrapped in {"__value__": …}."""
    value = copy.deepcopy(value)
    return {"__value__": value} if isinstance(value, list) else value


class _Converter(LinkResolver):
    """Expands subgraphs, resolves every linked input to a node output or a constant, and emits API nodes."""

    def __init__(
        self,
        root: Level,
        subgraphs: dict[str, Subgraph],
        lookup: SpecLookup,
        known: Iterable[str],
        now: datetime,
    ) -> None:
        super().__init__(subgraphs, lookup, now)
        self.root = Ctx(root, "")
        self.known = sorted(set(known) | set(BUILTIN_SPECS))
        self.prompt: dict[str, dict[str, Any]] = {}
        self.unsupported: dict[str, list[str]] = {}

    def run(self) -> dict[str, dict[str, Any]]:
        self.emit_level(self.root)
        self.report_unsupported()
        return self.prompt

    def emit_level(self, ctx: Ctx) -> None:
        for node in ctx.level.nodes.values():
            if node.type in NOTE_TYPES or node.type in (REROUTE, PRIMITIVE_NODE) or node.type in PRIMITIVE_VALUE_TYPES:
                continue  # never emitted: their values reach consumers through resolution
            if node.mode in (MODE_MUTED, MODE_BYPASS):
                continue
            if node.mode != MODE_ALWAYS:  # 1 (on event), 3 (on trigger) and unknown modes
                self.report(
                    LEGACY_MODE, f"mode {node.mode} is treated as 'always' (mode 0)", node=ctx.api_id(node)
                )
            if node.type in self.subgraphs:
                child = self.child(ctx, node)
                if child is not None:
                    self.emit_level(child)
                continue
            self.emit_node(ctx, node)

    def emit_node(self, ctx: Ctx, node: Node) -> None:
        api_id = ctx.api_id(node)
        spec = self.spec(node.type)
        if spec is None:
            label = f"{api_id} '{node.title}'" if node.title else api_id
            self.unsupported.setdefault(node.type, []).append(label)
            return
        values = self.widget_values(ctx, node, spec)
        resolved = [(inp.name, self.resolve_input(ctx, node, inp)) for inp in node.inputs if inp.link is not None]
        replaced: set[str] = set()  # widget values the prompt will not carry: links and removals win
        for name, result in resolved:
            if isinstance(result, Const) and result.via_widget and name in values:
                values[name] = result.value
                replaced.discard(name)
            elif result is not Nothing.UNCONNECTED:
                replaced.add(name)
        self.transform_widget_values(ctx, node, spec, values, skip=replaced)
        inputs = {name: _api_value(value) for name, value in values.items()}
        for name, result in resolved:
            if isinstance(result, Ref):
                inputs[name] = [result.node, result.slot]
            elif isinstance(result, Const) and not (result.via_widget and name in values):
                inputs[name] = _api_value(result.value)
            elif result is Nothing.REMOVED:
                inputs.pop(name, None)
        meta: dict[str, Any] = {"title": node.title or node.type}
        controls = self.seed_controls(ctx, node, spec, dict(resolved))
        if controls:  # not part of ComfyUI's API format: graphrun's importer reads it (engine/comfy/seeds.py)
            meta[CONTROL_AFTER_GENERATE] = controls
        self.prompt[api_id] = {"inputs": inputs, "class_type": node.type, "_meta": meta}

    def seed_controls(
        self, ctx: Ctx, node: Node, spec: ComfyNodeSpec, resolved: dict[str, Any]
    ) -> dict[str, dict[str, str]]:
        """`{widget: {"mode": "randomize", "group": ...}}` for the INT widgets the frontend changes after each run.

        The mode is the widget's own stored `control_after_generate`, or, when a PrimitiveNode or PrimitiveInt
        feeds the widget (through reroutes), that node's: it then drives every widget it feeds, which share one
        `group` (the primitive's API id). A value computed by another node has no control.
        """
        own = stored_controls(spec, node.values)
        controls: dict[str, dict[str, str]] = {}
        for widget in spec.widgets:
            if not widget.has_int_control:
                continue
            result = resolved.get(widget.name, Nothing.UNCONNECTED)
            if result is Nothing.UNCONNECTED:
                if widget.name in own:
                    controls[widget.name] = {"mode": own[widget.name], "group": f"{ctx.api_id(node)}.{widget.name}"}
                continue
            source = node.input_named(widget.name)
            found = self.source_control(ctx, source.link) if isinstance(result, Const) and source else None
            if found is not None:
                controls[widget.name] = {"mode": found[0], "group": found[1]}
        return controls

    def source_control(self, ctx: Ctx, link_id: str | None) -> tuple[str, str] | None:
        """(mode, API id) of the PrimitiveNode/PrimitiveInt at the start of a link (through reroutes), when its
        `control_after_generate` changes its value after each run."""
        for _ in range(1000):  # a reroute chain; cycles are reported by the link resolver
            link = ctx.level.links.get(link_id) if link_id is not None else None
            source = ctx.level.nodes.get(link.origin) if link is not None else None
            if source is None:
                return None
            if source.type == REROUTE:
                link_id = next((i.link for i in source.inputs if i.link is not None), None)
                continue
            mode = None
            if source.type == PRIMITIVE_NODE and isinstance(source.values, list) and len(source.values) > 1:
                mode = source.values[1]  # widgets_values = [value, control, filter]
            elif source.type == "PrimitiveInt":
                mode = stored_controls(BUILTIN_SPECS["PrimitiveInt"], source.values).get("value")
            return (mode, ctx.api_id(source)) if mode in CONTROL_MODES else None
        return None

    def transform_widget_values(
        self, ctx: Ctx, node: Node, spec: ComfyNodeSpec, values: dict[str, Any], skip: set[str]
    ) -> None:
        """The frontend's serializeValue hooks: dynamic prompts, and text replacements in save-node prefixes."""
        for widget in spec.widgets:
            value = values.get(widget.name)
            if not isinstance(value, str) or widget.name in skip:
                continue
            if widget.dynamic_prompts:
                value = self.dynamic_prompt(value, Site(ctx.api_id(node), widget.name))
            if node.type in SAVE_NODE_TYPES and widget.name == "filename_prefix":
                value = apply_text_replacements(value, self.now, self.widget_finder(ctx))
            values[widget.name] = value

    def dynamic_prompt(self, text: str, site: Site) -> str:
        processed, choices = expand_dynamic_prompt(text)
        if choices:
            self.report(
                DYNAMIC_PROMPT_CHOICE,
                f"the prompt contains the choice group(s) {', '.join(choices)}: ComfyUI replaces each with a "
                "randomly chosen option on every run, so the result cannot be reproduced",
                "error",
                node=site.node,
                input=site.input,
                hint="keep the option you want and delete the braces; write literal braces as \\{ \\}",
            )
        return processed

    def report_unsupported(self) -> None:
        if not self.unsupported:
            return
        listing = "; ".join(f"'{t}' (node {', '.join(ids)})" for t, ids in self.unsupported.items())
        suggestions = []
        for class_type in self.unsupported:
            close = _close_matches(class_type, self.known)
            if close:
                suggestions.append(f"'{class_type}' -> " + " or ".join(f"'{c}'" for c in close))
        hint = "did you mean " + "; ".join(suggestions) if suggestions else (
            "install a graphrun plugin that declares these ComfyUI types, or replace the nodes in ComfyUI"
        )
        if any(t.startswith(("workflow>", "workflow/")) for t in self.unsupported):
            hint += "; legacy group nodes: convert them to subgraphs in ComfyUI first"
        count = len(self.unsupported)
        self.report(
            UNSUPPORTED_NODE,
            f"{count} node type{'s' if count > 1 else ''} not supported by graphrun: {listing}",
            "error",
            hint=hint,
        )


def _close_matches(class_type: str, known: list[str]) -> list[str]:
    lowered = {k.lower(): k for k in known}
    same_case = [lowered[class_type.lower()]] if class_type.lower() in lowered else []
    return same_case or difflib.get_close_matches(class_type, known, n=3, cutoff=0.6)


# --- entry point ----------------------------------------------------------------------------------------------------


def ui_to_api(
    workflow: Mapping[str, Any],
    spec: SpecLookup,
    *,
    known: Iterable[str] = (),
    now: datetime | None = None,
) -> tuple[dict[str, dict[str, Any]], list[ComfyDiagnostic]]:
    """Convert a UI-format workflow into an API-format prompt, as ComfyUI's frontend would queue it.

    spec: looks up each ComfyUI class_type; None means graphrun cannot run that type.
    known: every class_type graphrun supports, used for did-you-mean suggestions.
    now: the local time for `%date:…%` in filename prefixes (default: now).

    Returns `(prompt, warnings)`. Raises `ComfyConversionError` with every error at once (unsupported node types
    in one diagnostic, `{a|b}` choice groups, malformed structure, recursive subgraphs, cycles). The input is never
    modified and the prompt shares no objects with it.
    """
    if not isinstance(workflow, Mapping):
        raise ComfyConversionError(
            [ComfyDiagnostic(MALFORMED, f"a UI workflow is a JSON object, got {type(workflow).__name__}")]
        )
    parser = Parser()
    root = parser.level(workflow.get("nodes"), workflow.get("links"), "workflow")
    subgraphs = parser.subgraphs(workflow)
    if parser.errors:
        raise ComfyConversionError(parser.errors)
    converter = _Converter(root, subgraphs, spec, known, now or datetime.now())
    try:
        prompt = converter.run()
    except RecursionError:
        converter.report(MALFORMED, "the workflow nests reroutes, bypasses or subgraphs too deeply", "error")
        prompt = {}
    diagnostics = list(dict.fromkeys(converter.diagnostics))  # a source reached by several consumers reports once
    if any(d.severity == "error" for d in diagnostics):
        raise ComfyConversionError(diagnostics, {t: tuple(ids) for t, ids in converter.unsupported.items()})
    return prompt, diagnostics
