"""Turn a ComfyUI API-format prompt into a graphrun graph document (a plain dict, ready for YAML).

Each API node becomes one graphrun node:

* a class_type that a built-in or plugin node declares (``comfy=Comfy("KSampler", ...)``) becomes that node,
  its inputs renamed back to graphrun's names and the mapping's ``fixed`` values set
  (``EmptyLatentImage`` → ``EmptyLatent`` with ``channels: 4``);
* a class_type equal to a graphrun node type with no ComfyUI counterpart (``LoadZImage``, as written by
  ``graphrun export``) becomes that node, inputs taken by graphrun name;
* the shims of :mod:`.specs`: display-only nodes (``ImageCompare``, ``PreviewAny``, notes) are skipped with a
  notice; value nodes (``PrimitiveInt``…, ``ResolutionSelector``) are folded into their consumers as constants;
  aliases (``SaveImageAdvanced``) run as another node when their extra options are reproducible.

Links ``[id, slot]`` pick the source's output by position; ``{"__value__": [...]}`` is unwrapped; ``_meta.title``
becomes the node's ``description``; ``$`` in text is escaped as ``$$`` (graphrun reads ``$name`` as a param).
Node ids become readable names from ``_meta.graphrun`` (written by ``graphrun export``), else the title, else
the class_type (``stage_1_sampler``, ``load_vae``, ``ksampler_2``), unique and deterministic: nodes are named in
dependency order, ties broken by their order in the prompt.

ComfyUI inputs a node does not have are errors, except the frontend-only widget companions in
:data:`HARMLESS_INPUTS`, dropped with a warning. All problems are collected: the result is either a whole
document or one :class:`~graphrun.engine.diagnostics.GraphError` listing every error, with every class_type no
node declares in a single diagnostic (ids, titles and did-you-mean suggestions).
"""
from __future__ import annotations

import copy
import difflib
import heapq
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..diagnostics import Diagnostic, GraphError
from ..graph import NODE_ID
from ..node import Comfy, NodeSpec, Registry
from .specs import ALIASES, DISPLAY_ONLY, FOLDED, Alias, known_class_types

__all__ = ["Conversion", "HARMLESS_INPUTS", "api_to_document", "node_name_base"]

#: ComfyUI inputs dropped with a warning wherever they appear: the frontend's stored-only widget companions,
#: which some tools and old frontends leak into API prompts. They never change what a node computes.
HARMLESS_INPUTS: frozenset[str] = frozenset({"control_after_generate", "control_filter_list", "upload"})

# Stable diagnostic codes (the UI converter's codes share the "comfy_" prefix).
UNSUPPORTED = "comfy_unsupported_node"
UNKNOWN_INPUT = "comfy_unknown_input"
BAD_LINK = "comfy_bad_link"
BAD_VALUE = "comfy_bad_value"
DISPLAY_SKIPPED = "comfy_display_only"
DROPPED_INPUT = "comfy_dropped_input"
ALIASED = "comfy_alias"

_MAX_NAME = 40


@dataclass
class Conversion:
    """A converted workflow: the graph document, notices for the user, and ComfyUI id -> node name."""

    document: dict[str, Any]
    notes: list[Diagnostic] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)


# --- names -----------------------------------------------------------------------------------------------------------

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def _slug(text: str) -> str:
    """`Stage 1 sampler` -> `stage_1_sampler`; `EmptySD3LatentImage` -> `empty_sd3_latent_image`."""
    words = [w for w in re.split(r"[^0-9A-Za-z]+", text) if w]
    parts: list[str] = []
    for word in words:
        pieces = _CAMEL.split(word) if not word.isupper() and not word.islower() else [word]
        merged: list[str] = []
        for piece in pieces:
            # a lone capital joins the next piece (KSampler: ksampler) and a short capital tail the previous
            # one (LoRA: lora), not k_sampler and lo_ra
            if merged and len(merged[-1]) == 1 and merged[-1].isupper():
                merged[-1] += piece
            elif merged and piece is pieces[-1] and len(piece) <= 2 and piece.isupper() and merged[-1][-1].islower():
                merged[-1] += piece
            else:
                merged.append(piece)
        parts.extend(p.lower() for p in merged)
    slug = "_".join(parts)
    if len(slug) > _MAX_NAME:
        cut = slug[:_MAX_NAME]
        slug = cut[: cut.rfind("_")] if "_" in cut else cut
    return slug


def node_name_base(class_type: str, title: str | None, graphrun_id: str | None) -> str:
    """The readable name a node gets before de-duplication."""
    if graphrun_id and NODE_ID.match(graphrun_id):
        return graphrun_id
    for text in (title, class_type):
        slug = _slug(text or "")
        if slug:
            return slug
    return "node"


def _unique_names(order: list[str], bases: dict[str, str]) -> dict[str, str]:
    taken: set[str] = set()
    names: dict[str, str] = {}
    counters: dict[str, int] = {}  # per base, the last suffix tried: keeps 20k same-type nodes linear
    for comfy_id in order:
        base = bases[comfy_id]
        name = base
        if name in taken:
            n = counters.get(base, 1)
            while name in taken:
                n += 1
                name = f"{base}_{n}"
            counters[base] = n
        taken.add(name)
        names[comfy_id] = name
    return names


# --- the prompt, classified --------------------------------------------------------------------------------------


@dataclass
class _Node:
    id: str
    class_type: str
    inputs: dict[str, Any]
    title: str | None
    graphrun_id: str | None
    position: int
    kind: str  # "comfy" | "native" | "alias" | "folded" | "display" | "unsupported"
    spec: NodeSpec | None = None
    comfy: Comfy | None = None
    alias: Alias | None = None
    controls: dict[str, Any] = field(default_factory=dict)  # _meta.control_after_generate (UI import)

    @property
    def label(self) -> str:
        """`ComfyUI node 57:3 (KSampler 'Stage 1 sampler')` — how messages name the node."""
        title = f" '{self.title}'" if self.title and self.title != self.class_type else ""
        return f"ComfyUI node {self.id} ({self.class_type}{title})"

    @property
    def description(self) -> str:
        if not self.title or self.title in (self.class_type, self.graphrun_id):
            return ""
        return self.title


@dataclass(frozen=True)
class _Ref:
    node: str  # ComfyUI id of an emitted node
    slot: int


@dataclass(frozen=True)
class _Const:
    value: Any


class _Failed(Exception):
    """An input could not be resolved; the diagnostic is already recorded."""


def _meta(node: Mapping[str, Any]) -> tuple[str | None, str | None]:
    meta = node.get("_meta")
    if not isinstance(meta, Mapping):
        return None, None
    title, gid = meta.get("title"), meta.get("graphrun")
    return (title if isinstance(title, str) else None), (gid if isinstance(gid, str) else None)


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], (str, int))
        and not isinstance(value[0], bool)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _unwrap(value: Any) -> Any:
    if isinstance(value, Mapping) and set(value) == {"__value__"}:
        return copy.deepcopy(value["__value__"])
    return copy.deepcopy(value)


def _escape(value: Any) -> Any:
    """ComfyUI text is literal; graphrun reads `$name` in text as a param, so `$` is written `$$`."""
    return value.replace("$", "$$") if isinstance(value, str) else value


class _Converter:
    def __init__(self, prompt: Mapping[str, Any], registry: Registry, file: str | None) -> None:
        self.registry = registry
        self.file = file
        self.index = registry.comfy_index()
        self.errors: list[Diagnostic] = []
        self.notes: list[Diagnostic] = []
        self.unsupported: dict[str, list[str]] = {}
        self.nodes = {str(k): self.classify(str(k), v, i) for i, (k, v) in enumerate(prompt.items())}
        self.folded: dict[str, tuple[Any, ...]] = {}
        self.folding: set[str] = set()
        self.fold_failed: set[str] = set()

    def diag(self, code: str, message: str, severity: str = "error", hint: str | None = None) -> None:
        target = self.errors if severity == "error" else self.notes
        target.append(Diagnostic(code, message, severity=severity, hint=hint, file=self.file))  # type: ignore[arg-type]

    # -- classification

    def classify(self, node_id: str, raw: Mapping[str, Any], position: int) -> _Node:
        class_type = raw["class_type"]
        title, gid = _meta(raw)
        inputs = dict(raw.get("inputs") or {})
        node = _Node(node_id, class_type, inputs, title, gid, position, "unsupported")
        meta = raw.get("_meta")
        controls = meta.get("control_after_generate") if isinstance(meta, Mapping) else None
        if isinstance(controls, Mapping):  # written by the UI importer (ui_to_api), not by ComfyUI
            node.controls = dict(controls)
        if class_type in self.index:
            node.kind, (node.spec, node.comfy) = "comfy", self.index[class_type]
        elif class_type in ALIASES and ALIASES[class_type].target in self.index:
            node.kind, node.alias = "alias", ALIASES[class_type]
            node.spec, node.comfy = self.index[node.alias.target]
        elif class_type in FOLDED:
            node.kind = "folded"
        elif class_type in DISPLAY_ONLY:
            node.kind = "display"
        elif self.registry.get(class_type) is not None:
            node.kind, node.spec = "native", self.registry.get(class_type)
        else:
            label = node_id + (f" '{title}'" if title and title != class_type else "")
            self.unsupported.setdefault(class_type, []).append(label)
        return node

    # -- value resolution

    def resolve(self, value: Any, where: str) -> _Ref | _Const:
        """A ComfyUI input value as a link to an emitted node or a constant; raises _Failed."""
        if not _is_link(value):
            return _Const(_unwrap(value))
        source_id, slot = str(value[0]), value[1]
        source = self.nodes.get(source_id)
        if source is None:
            self.diag(BAD_LINK, f"{where} links to node {source_id}, which is not in the workflow",
                      hint="re-export the workflow from ComfyUI (Export (API))")
            raise _Failed
        if source.kind == "unsupported":
            raise _Failed  # already part of the unsupported-types error
        if source.kind == "display":
            self.diag(BAD_LINK, f"{where} links to {source.label}, which only displays in ComfyUI",
                      hint="connect the input to the node that produces the value")
            raise _Failed
        if source.kind == "folded":
            outputs = self.fold(source)
            if not 0 <= slot < len(outputs):
                self.diag(BAD_LINK, f"{where} links to output {slot} of {source.label}, which has {len(outputs)}")
                raise _Failed
            return _Const(outputs[slot])
        assert source.spec is not None
        outputs = source.spec.outputs
        if not 0 <= slot < len(outputs):
            have = ", ".join(f"{i}: {o.name}" for i, o in enumerate(outputs)) or "none"
            self.diag(BAD_LINK, f"{where} links to output {slot} of {source.label}; graphrun's "
                      f"{source.spec.name} has outputs {have}")
            raise _Failed
        return _Ref(source_id, slot)

    def fold(self, node: _Node) -> tuple[Any, ...]:
        """The outputs of a value node, computed from its (constant) inputs."""
        if node.id in self.folded:
            return self.folded[node.id]
        if node.id in self.folding:
            self.diag(BAD_LINK, f"{node.label} is part of a link cycle")
            raise _Failed
        if node.id in self.fold_failed:
            raise _Failed  # reported once, when first folded
        shim = FOLDED[node.class_type]
        self.folding.add(node.id)
        self.fold_failed.add(node.id)  # until it succeeds
        try:
            values = dict(shim.defaults)
            for name, raw in node.inputs.items():
                if raw is None or name in HARMLESS_INPUTS:
                    continue
                resolved = self.resolve(raw, f"{node.label} input '{name}'")
                if isinstance(resolved, _Ref):
                    self.diag(BAD_VALUE, f"{node.label} input '{name}' comes from another node; graphrun folds "
                              f"{node.class_type} into constants only when its inputs are constants",
                              hint="type the value into the widget instead of linking it")
                    raise _Failed
                values[name] = resolved.value
            try:
                outputs = shim.compute(values)
            except (ValueError, KeyError) as exc:
                self.diag(BAD_VALUE, f"{node.label}: {exc}")
                raise _Failed from None
        finally:
            self.folding.discard(node.id)
        self.fold_failed.discard(node.id)
        self.folded[node.id] = outputs
        return outputs

    # -- inputs of emitted nodes

    def our_input(self, node: _Node, theirs: str, value: Any) -> str | None:
        """The graphrun input a ComfyUI input feeds; None when it is dropped (the reason is recorded)."""
        spec = node.spec
        assert spec is not None
        if node.kind == "alias":
            alias = node.alias
            assert alias is not None
            if theirs in alias.required:
                if value != alias.required[theirs]:
                    self.diag(BAD_VALUE, f"{node.label} input '{theirs}' is {value!r}; graphrun runs "
                              f"{node.class_type} only with {theirs} = {alias.required[theirs]!r}",
                              hint=f"set {theirs} to {alias.required[theirs]!r} in ComfyUI, or use {alias.target}")
                return None
            if theirs in alias.dropped:
                return None
            if theirs in alias.inputs:
                theirs = alias.inputs[theirs]
            else:
                return self.unknown_input(node, theirs)
        ours = node.comfy.our_name(theirs) if node.comfy is not None else theirs
        if spec.input(ours) is None or (node.comfy is not None and ours in node.comfy.fixed):
            return self.unknown_input(node, theirs)
        return ours

    def unknown_input(self, node: _Node, theirs: str) -> None:
        assert node.spec is not None
        if theirs in HARMLESS_INPUTS:
            self.diag(DROPPED_INPUT, f"{node.label}: dropped input '{theirs}' (a ComfyUI frontend setting that "
                      "does not change the result)", severity="warning")
            return None
        takes = ", ".join(node.comfy.comfy_name(i.name) if node.comfy else i.name for i in node.spec.inputs)
        close = difflib.get_close_matches(theirs, takes.split(", "), n=1)
        self.diag(UNKNOWN_INPUT, f"{node.label} has input '{theirs}', which graphrun's {node.spec.name} does not "
                  f"support (it takes: {takes or 'no inputs'})",
                  hint=(f"did you mean '{close[0]}'? " if close else "")
                  + "remove the input in ComfyUI, or load a plugin whose node declares it")
        return None

    def node_inputs(self, node: _Node) -> dict[str, _Ref | _Const]:
        resolved: dict[str, _Ref | _Const] = {}
        for theirs, raw in node.inputs.items():
            if raw is None:
                continue  # a widget with no value: graphrun's default (or a missing-input error) applies
            ours = self.our_input(node, theirs, _unwrap(raw) if not _is_link(raw) else raw)
            if ours is None:
                continue
            try:
                value = self.resolve(raw, f"{node.label} input '{theirs}'")
            except _Failed:
                continue
            inp = node.spec.input(ours) if node.spec is not None else None
            if inp is not None and inp.socket and isinstance(value, _Const):
                self.diag(BAD_VALUE, f"{node.label} input '{theirs}' is {inp.type_name} and needs a link, "
                          f"got the value {value.value!r}", hint=f"connect a node with a {inp.type_name} output")
                continue
            resolved[ours] = value
        return resolved

    # -- assembly

    def run(self) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        emitted = [n for n in self.nodes.values() if n.kind in ("comfy", "native", "alias")]
        for node in self.nodes.values():
            if node.kind == "display":
                self.diag(DISPLAY_SKIPPED, f"{node.label} only displays in ComfyUI's browser tab; skipped",
                          severity="warning")
            elif node.kind == "alias":
                assert node.alias is not None
                self.diag(ALIASED, f"{node.label} runs as {node.alias.target}: {node.alias.note}",
                          severity="warning")
            elif node.kind == "folded":
                try:
                    self.fold(node)
                except _Failed:
                    pass
        inputs = {n.id: self.node_inputs(n) for n in emitted}
        self.report_unsupported()
        order = _topological([n.id for n in emitted], inputs, {n.id: n.position for n in emitted})
        bases = {n.id: node_name_base(n.class_type, n.title, n.graphrun_id) for n in emitted}
        names = _unique_names(order, bases)
        nodes = {names[i]: self.render(self.nodes[i], inputs[i], names) for i in order}
        for comfy_id in order:
            self.seed_notes(self.nodes[comfy_id], names[comfy_id], nodes[names[comfy_id]])
        return nodes, names

    def seed_notes(self, node: _Node, name: str, body: Mapping[str, Any]) -> None:
        """A SeedControl notice for each seed the UI workflow changes after each run (see :mod:`.seeds`)."""
        from .seeds import seed_note
        from .widget_values import CONTROL_MODES

        for theirs, control in node.controls.items():
            mode = control.get("mode") if isinstance(control, Mapping) else None
            ours = node.comfy.our_name(theirs) if node.comfy is not None else theirs
            value = body.get(ours)
            if mode not in CONTROL_MODES or not isinstance(value, int) or isinstance(value, bool):
                continue  # linked to a computed value, or not a seed graphrun can change
            group = str(control.get("group") or f"{node.id}.{theirs}")
            self.notes.append(seed_note(name, ours, mode, group, value, self.file))

    def render(self, node: _Node, inputs: dict[str, _Ref | _Const], names: dict[str, str]) -> dict[str, Any]:
        spec = node.spec
        assert spec is not None
        body: dict[str, Any] = {"type": spec.name}
        fixed = dict(node.comfy.fixed) if node.comfy is not None else {}
        for inp in spec.inputs:
            if inp.name in fixed:
                body[inp.name] = fixed[inp.name]
            elif inp.name in inputs:
                body[inp.name] = self.render_value(node, inp.name, inputs[inp.name], names)
        if node.description:
            body["description"] = node.description
        return body

    def render_value(self, node: _Node, ours: str, value: _Ref | _Const, names: dict[str, str]) -> Any:
        """A resolved input as the document writes it: `node`, `node.output`, `{from: ...}` or a literal."""
        assert node.spec is not None
        inp = node.spec.input(ours)
        assert inp is not None
        if isinstance(value, _Const):
            return _escape(value.value)
        source = self.nodes[value.node]
        assert source.spec is not None
        outputs = source.spec.outputs
        ref = names[value.node] if len(outputs) == 1 else f"{names[value.node]}.{outputs[value.slot].name}"
        return ref if inp.socket else {"from": ref}

    def report_unsupported(self) -> None:
        if not self.unsupported:
            return
        known = known_class_types(self.registry)
        listing = "; ".join(
            f"'{t}' (node{'s' if len(ids) > 1 else ''} {', '.join(ids)})" for t, ids in self.unsupported.items()
        )
        suggestions = []
        for class_type in self.unsupported:
            close = _close_matches(class_type, known)
            if close:
                suggestions.append(f"'{class_type}' -> " + " or ".join(f"'{c}'" for c in close))
        hint = ("did you mean " + "; ".join(suggestions) + "? " if suggestions else "") + (
            "graphrun runs the ComfyUI types its nodes declare (`graphrun nodes NAME` shows them); "
            "load a plugin that declares the others, or replace those nodes in ComfyUI"
        )
        count = len(self.unsupported)
        self.diag(UNSUPPORTED, f"{count} ComfyUI node type{'s' if count > 1 else ''} not supported by graphrun: "
                  f"{listing}", hint=hint)


def _close_matches(class_type: str, known: list[str]) -> list[str]:
    lowered = {k.lower(): k for k in known}
    if class_type.lower() in lowered:
        return [lowered[class_type.lower()]]
    return difflib.get_close_matches(class_type, known, n=3, cutoff=0.6)


def _topological(ids: list[str], inputs: dict[str, dict[str, _Ref | _Const]], position: dict[str, int]) -> list[str]:
    """Dependency order, ties broken by prompt position; nodes on a cycle follow in prompt order."""
    deps = {i: {v.node for v in inputs[i].values() if isinstance(v, _Ref) and v.node in inputs} for i in ids}
    users: dict[str, list[str]] = {i: [] for i in ids}
    for node_id, sources in deps.items():
        for source in sources:
            users[source].append(node_id)
    waiting = {i: len(deps[i]) for i in ids}
    ready = [(position[i], i) for i in ids if waiting[i] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, node_id = heapq.heappop(ready)
        order.append(node_id)
        for user in users[node_id]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, (position[user], user))
    placed = set(order)
    order += sorted((i for i in ids if i not in placed), key=position.__getitem__)
    return order


def api_to_document(
    prompt: Mapping[str, Any],
    registry: Registry,
    *,
    name: str = "comfyui_workflow",
    description: str = "",
    file: str | None = None,
    notes: list[Diagnostic] | None = None,
) -> Conversion:
    """Convert an API-format prompt (already checked by :func:`.formats.detect_format`) to a graph document.

    ``notes`` are earlier notices (e.g. from the UI conversion) to carry along. Raises GraphError with every
    error and notice when anything cannot be converted.
    """
    converter = _Converter(prompt, registry, file)
    nodes, names = converter.run()
    all_notes = list(notes or []) + converter.notes
    if converter.errors:
        raise GraphError(converter.errors + all_notes)
    document: dict[str, Any] = {"graph": _slug(name) or "comfyui_workflow"}
    if description:
        document["description"] = description
    document["nodes"] = nodes
    return Conversion(document, all_notes, names)
