"""Overrides: ``--set NAME=VALUE`` sets a param, ``--set NODE.INPUT=VALUE`` sets a node's input.

A key with a dot names a node input of any graph, a YAML graph or a converted ComfyUI workflow
(param names are identifiers and node ids have no dots, so the two never mix). NODE is the
node's id, or, in a converted ComfyUI workflow, the ComfyUI node id (``6.text``, ``57:3.seed``);
INPUT is graphrun's input name or the ComfyUI one (``3.sampler_name``). The value is checked
like a param's: converted to the input's type (GR016), then its range and choices (GR009), and
it replaces whatever the input held, a literal, a ``$param`` or a ``{from: ...}`` link.
Socket inputs (MODEL, LATENT, ...) take links only, so setting one is an error.

:func:`apply_overrides` runs at the start of :func:`graphrun.engine.validate.check`, so every
way of binding a graph accepts both kinds: the CLI's ``run``/``validate``/``export``, batch rows
and ``graph.run(**{"ksampler.seed": 7})``.
"""
from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any, Mapping

from .comfy.seeds import SEED_CONTROL
from .diagnostics import Diagnostic, did_you_mean
from .graph import Document, NodeEntry, ParamRef, Template, coerce_param, parse_primitive
from .node import InputSpec, NodeSpec, Registry

__all__ = ["apply_overrides", "comfy_ids", "resolve_node", "resolve_input", "split_overrides"]

_COMFY_ORIGIN = re.compile(r"^ComfyUI node (\S+)")  # Document.origins, as engine/comfy_bridge.py writes them
_SYNONYMS = {"prompt": "text", "positive": "text", "negative": "text"}  # what users type for a text input


def split_overrides(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(param overrides, node-input overrides): a key with a dot is ``node.input``."""
    params: dict[str, Any] = {}
    inputs: dict[str, Any] = {}
    for key, value in overrides.items():
        (inputs if "." in key else params)[key] = value
    return params, inputs


def comfy_ids(doc: Document) -> dict[str, str]:
    """ComfyUI node id -> graphrun node id, for a converted ComfyUI workflow (empty otherwise)."""
    found: dict[str, str] = {}
    for node_id, origin in doc.origins.items():
        match = _COMFY_ORIGIN.match(origin)
        if match:
            found[match.group(1)] = node_id
    return found


def resolve_node(doc: Document, name: str) -> str | None:
    """The node id ``name`` means: a node id, else a ComfyUI node id of a converted workflow."""
    return name if name in doc.nodes else comfy_ids(doc).get(name)


def resolve_input(spec: NodeSpec, name: str) -> InputSpec | None:
    """The input ``name`` means: graphrun's name, else the ComfyUI name the node declares."""
    found = spec.input(name)
    for comfy in spec.comfy:
        if found is None:
            found = spec.input(comfy.our_name(name))
    return found


def settable(spec: NodeSpec) -> list[InputSpec]:
    """The inputs ``--set`` can give a value: every primitive input."""
    return [i for i in spec.inputs if not i.socket]


def apply_overrides(
    doc: Document, registry: Registry, overrides: Mapping[str, Any]
) -> tuple[Document, dict[str, Any], list[Diagnostic]]:
    """Apply the node-input overrides to a copy of the document.

    Returns (the document, the param overrides to resolve, diagnostics). Unknown params are
    reported here (with a hint towards NODE.INPUT), so the returned params are all declared.
    """
    params, inputs = split_overrides(overrides)
    diags: list[Diagnostic] = []
    known: dict[str, Any] = {}
    for name, value in params.items():
        if name in doc.params:
            known[name] = value
        else:
            diags.append(_unknown_param(doc, registry, name))
    if not inputs:
        return doc, known, diags
    nodes = dict(doc.nodes)
    raw = copy.deepcopy(doc.raw)
    raw_nodes = raw.get("nodes") if isinstance(raw, dict) else None
    replaced_params: set[str] = set()
    done: set[tuple[str, str]] = set()
    for key, value in inputs.items():
        target = _target(doc, registry, key, diags)
        if target is None:
            continue
        node_id, spec, ispec = target
        checked = _checked_value(spec, ispec, value, node_id, key, diags)
        if checked is _INVALID:
            continue
        stored = checked.replace("$", "$$") if isinstance(checked, str) else checked  # literal, never a $param
        entry = nodes[node_id]
        previous = parse_primitive(entry.inputs[ispec.name]) if ispec.name in entry.inputs else None
        if isinstance(previous, ParamRef):
            replaced_params.add(previous.name)
        elif isinstance(previous, Template):
            replaced_params.update(previous.params())
        nodes[node_id] = NodeEntry(entry.id, entry.type, {**entry.inputs, ispec.name: stored}, entry.description)
        if isinstance(raw_nodes, dict) and isinstance(raw_nodes.get(node_id), dict):
            raw_nodes[node_id][ispec.name] = stored  # the PNG's `graphrun` record shows what ran
        done.add((node_id, ispec.name))
    new_params = dict(doc.params)
    for name in replaced_params - set(known):
        if not any(name in _params_of(v) for n in nodes.values() for v in n.inputs.values()):
            # Every use of the param was overridden: drop it rather than warn that it is unused.
            new_params.pop(name, None)
            diags.append(Diagnostic(
                "GR016", f"every input that used param '{name}' is set by --set, so the param has no effect",
                severity="warning", input=name, hint=f"--set {name}=VALUE sets the param itself",
            ))
    # A seed given with --set is not the saved one any more: its control_after_generate notice goes.
    problems = [d for d in doc.problems if not (d.code == SEED_CONTROL and (d.node, d.input) in done)]
    updated = dataclasses.replace(doc, nodes=nodes, raw=raw, params=new_params, problems=problems)
    return updated, known, diags


def _params_of(raw: Any) -> list[str]:
    """The params a raw input value refers to."""
    value = parse_primitive(raw)
    if isinstance(value, ParamRef):
        return [value.name]
    if isinstance(value, Template):
        return value.params()
    return []


_INVALID = object()


def _target(
    doc: Document, registry: Registry, key: str, diags: list[Diagnostic]
) -> tuple[str, NodeSpec, InputSpec] | None:
    """(node id, node spec, input spec) that ``node.input`` names, or None with a GR016 recorded."""
    node_name, _, input_name = key.partition(".")
    where = f"--set {key}"
    node_id = resolve_node(doc, node_name)
    if node_id is None:
        ids = comfy_ids(doc)
        hint = did_you_mean(node_name, list(doc.nodes) + list(ids))
        listing = ", ".join(doc.nodes) or "none"
        diags.append(Diagnostic(
            "GR016", f"{where}: the graph has no node '{node_name}'", input=key,
            hint=hint or f"its nodes: {listing}" + (" (or their ComfyUI ids)" if ids else ""),
        ))
        return None
    spec = registry.get(doc.nodes[node_id].type)
    if spec is None:
        return None  # the unknown node type has its own diagnostic (GR003)
    ispec = resolve_input(spec, input_name)
    if ispec is None:
        names = [i.name for i in settable(spec)]
        hint = did_you_mean(input_name, names) or f"{spec.name}'s settable inputs: {', '.join(names) or 'none'}"
        diags.append(Diagnostic(
            "GR016", f"{where}: {spec.name} has no input '{input_name}'", node=node_id, input=input_name, hint=hint,
        ))
        return None
    if ispec.socket:
        diags.append(Diagnostic(
            "GR016",
            f"{where}: '{ispec.name}' is a {ispec.type_name} input, fed by a link from another node; "
            "--set gives values to primitive inputs (numbers, text, choices)",
            node=node_id, input=ispec.name,
            hint="to connect it differently, edit the graph (`graphrun convert` writes a ComfyUI workflow as YAML)",
        ))
        return None
    return node_id, spec, ispec


def _checked_value(
    spec: NodeSpec, ispec: InputSpec, value: Any, node_id: str, key: str, diags: list[Diagnostic]
) -> Any:
    """The value converted to the input's type and validated, or _INVALID with the diagnostic recorded."""
    from pydantic import ValidationError

    from .validate import _bad_value

    try:
        converted = _convert(ispec, value)
    except ValueError as exc:
        diags.append(Diagnostic(
            "GR016", f"--set {key}: {spec.name}.{ispec.name} is {ispec.type_name}: {exc}", node=node_id,
            input=ispec.name, hint=f"write --set {key}=<{ispec.type_name.lower()}>",
        ))
        return _INVALID
    try:
        return ispec.adapter().validate_python(converted)
    except ValidationError as exc:
        diags.append(_bad_value(spec, ispec, converted, f" (from --set {key})", exc, node_id, {}))
        return _INVALID


def _convert(ispec: InputSpec, value: Any) -> Any:
    """A ``--set`` string as the input's type (other Python values pass as they are)."""
    if not isinstance(value, str):
        return value
    if ispec.type_name in ("INT", "FLOAT", "BOOLEAN", "STRING"):
        return coerce_param(value, ispec.type_name)
    for choice in ispec.choices:  # a choice list of numbers: "2" means 2
        if not isinstance(choice, str) and str(choice) == value:
            return choice
    return value


def _unknown_param(doc: Document, registry: Registry, name: str) -> Diagnostic:
    """GR016 for ``--set NAME=...`` naming no param: did-you-mean over params, then node inputs."""
    hint = did_you_mean(name, doc.params)
    if hint is None:
        matches = _inputs_like(doc, registry, _SYNONYMS.get(name.lower(), name))
        params = ", ".join(doc.params)
        head = f"this graph's params: {params}" if params else "this graph has no params"
        if matches:
            shown = " or ".join(f"--set {m}=..." for m in matches[:3])
            hint = f"{head}; a node input is set as NODE.INPUT=VALUE: did you mean {shown}?"
        else:
            hint = f"{head}; a node input is set as --set NODE.INPUT=VALUE"
        hint += f"; `graphrun params {doc.file or 'GRAPH'}` lists what can be set"
    return Diagnostic("GR016", f"unknown param '{name}'", input=name, hint=hint)


def _inputs_like(doc: Document, registry: Registry, name: str) -> list[str]:
    """``node.input`` of the primitive inputs called ``name`` (graphrun's or ComfyUI's name), else close to it."""
    exact: list[str] = []
    close: list[str] = []
    for node_id, entry in doc.nodes.items():
        spec = registry.get(entry.type)
        if spec is None:
            continue
        names = {i.name for i in settable(spec)}
        ispec = resolve_input(spec, name)
        if ispec is not None and not ispec.socket:
            exact.append(f"{node_id}.{ispec.name}")
        elif did_you_mean(name, names):
            close += [f"{node_id}.{n}" for n in sorted(names) if did_you_mean(name, [n])]
    return exact or close
