"""What ``graphrun params GRAPH``, ``graphrun run GRAPH --help``, ``graphrun graphs`` and ``graphrun nodes TYPE`` print.

A graph's params (type, default, description) and, for a ComfyUI workflow (or with ``--inputs``),
every node input ``--set NODE.INPUT=VALUE`` can change: node id, ComfyUI id, node type, input,
type and current value, one line per input under one line per node.
"""
from __future__ import annotations

import textwrap
from typing import Any

from .graph import Document, Link, Literal_, ParamRef, Template, parse_primitive
from .node import REQUIRED, InputSpec, NodeSpec, Registry
from .overrides import comfy_ids, settable

__all__ = ["param_rows", "input_rows", "format_params", "graph_rows", "format_graphs"]

_WIDTH = 60  # longest value shown before it is cut


def param_rows(doc: Document) -> list[dict[str, Any]]:
    return [{"name": p.name, "type": p.type, "default": p.default, "description": p.description}
            for p in doc.params.values()]


def _controls(doc: Document) -> dict[tuple[str, str], str]:
    from .comfy.seeds import seed_controls

    return {(c.node, c.input): c.mode for c in seed_controls(doc.problems) if c.node and c.input}


def input_rows(doc: Document, registry: Registry) -> list[dict[str, Any]]:
    """Every primitive input of every node: what ``--set NODE.INPUT=VALUE`` can change."""
    comfy_of = {name: comfy_id for comfy_id, name in comfy_ids(doc).items()}
    controls = _controls(doc)
    rows: list[dict[str, Any]] = []
    for node_id, entry in doc.nodes.items():
        spec = registry.get(entry.type)
        if spec is None:
            continue
        for ispec in settable(spec):
            state, value = _current(entry.inputs, ispec)
            row = {"set": f"{node_id}.{ispec.name}", "node": node_id, "comfy_id": comfy_of.get(node_id),
                   "node_type": spec.name, "input": ispec.name, "type": ispec.type_name, "state": state,
                   "value": value}
            if (node_id, ispec.name) in controls:
                row["control_after_generate"] = controls[(node_id, ispec.name)]
            rows.append(row)
    return rows


def _current(inputs: dict[str, Any], ispec: InputSpec) -> tuple[str, Any]:
    """(how the input gets its value: value, default, required, param, text, link; the value or reference)."""
    if ispec.name not in inputs:
        return ("required", None) if ispec.default is REQUIRED else ("default", ispec.default)
    parsed = parse_primitive(inputs[ispec.name])
    if isinstance(parsed, ParamRef):
        return "param", f"${parsed.name}"
    if isinstance(parsed, Template):
        return "text", "".join(p if isinstance(p, str) else f"${{{p.name}}}" for p in parsed.parts)
    if isinstance(parsed, Link):
        return "link", str(parsed)
    if isinstance(parsed, Literal_):
        return "value", parsed.value
    return "value", inputs[ispec.name]


def _short(value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= _WIDTH else text[: _WIDTH - 2] + "…" + text[0]


def _shown(row: dict[str, Any]) -> str:
    state, value = row["state"], row["value"]
    if state == "required":
        return "(required, not set)"
    if state == "link":
        return f"<- {value} (linked; --set replaces the link)"
    if state == "param":
        return f"{value} (param)"
    text = _short(value) + (" (default)" if state == "default" else "")
    mode = row.get("control_after_generate")
    if mode:
        text += f"  (ComfyUI: {mode} after each run; see --count)"
    return text


def format_params(doc: Document, registry: Registry, *, inputs: bool, file: str = "GRAPH") -> str:
    """The text ``graphrun params`` prints."""
    comfy = bool(comfy_ids(doc))
    lines = [doc.name + (f": {doc.description}" if doc.description else "")]
    if doc.params:
        lines += ["", "params (--set NAME=VALUE):"]
        rows = param_rows(doc)
        name_w = max(len(r["name"]) for r in rows)
        type_w = max(len(r["type"]) for r in rows)
        for r in rows:
            default = "(no default)" if r["default"] is None else _short(r["default"])
            line = f"  {r['name']:<{name_w}}  {r['type']:<{type_w}}  = {default}"
            lines.append(line + (f"  {r['description']}" if r["description"] else ""))
    else:
        lines += ["", "params: none" + (" (a ComfyUI workflow: set its node inputs below)" if comfy else "")]
    if inputs or comfy or not doc.params:
        where = "NODE is the node id" + (", or the ComfyUI id in [brackets]" if comfy else "")
        lines += ["", f"node inputs (--set NODE.INPUT=VALUE; {where}):"]
        lines += _input_lines(input_rows(doc, registry))
    else:
        lines += ["", f"Any node input can be set too: --set NODE.INPUT=VALUE (`graphrun params {file} --inputs` "
                  "lists them)."]
    return "\n".join(lines)


def _input_lines(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["  (none)"]
    lines: list[str] = []
    name_w = max(len(r["input"]) for r in rows)
    type_w = max(len(r["type"]) for r in rows)
    node = None
    for r in rows:
        if r["node"] != node:
            node = r["node"]
            comfy = f" [{r['comfy_id']}]" if r["comfy_id"] is not None else ""
            lines.append(f"  {node}{comfy}  {r['node_type']}")
        lines.append(f"    {r['input']:<{name_w}}  {r['type']:<{type_w}}  {_shown(r)}")
    return lines


def graph_rows() -> list[dict[str, Any]]:
    """The shipped graphs: name, file, description and params (a graph that fails to load says why)."""
    from .diagnostics import GraphError
    from .graph import load_document
    from .shipped import shipped_graphs

    rows = []
    for name, path in shipped_graphs().items():
        try:
            doc = load_document(path)
        except GraphError as exc:
            rows.append({"name": name, "file": str(path), "description": f"(unreadable: {exc})", "params": []})
            continue
        rows.append({"name": name, "file": str(path), "description": " ".join(doc.description.split()),
                     "params": param_rows(doc)})
    return rows


def format_graphs() -> str:
    """The text ``graphrun graphs`` prints."""
    from .shipped import graphs_dir

    rows = graph_rows()
    if not rows:
        return f"no graphs are shipped in {graphs_dir()}"
    lines = [f"Graphs shipped with graphrun ({graphs_dir()}); run one by name, e.g. "
             f"graphrun {rows[0]['name']} --set prompt=\"a red fox\" --out out/", ""]
    for r in rows:
        lines.append(r["name"])
        if r["description"]:
            lines += textwrap.wrap(r["description"], width=100, initial_indent="    ", subsequent_indent="    ")
        params = ", ".join(p["name"] for p in r["params"]) or "none"
        lines += textwrap.wrap(f"params: {params}", width=100, initial_indent="    ", subsequent_indent="        ")
    lines += ["", "`graphrun params NAME` shows a graph's params with types, defaults and descriptions."]
    return "\n".join(lines)


def _format_input(spec: InputSpec) -> str:
    from .validate import _describe

    if spec.socket:
        text = f"  {spec.name}: {spec.type_name}" + (" (optional)" if spec.optional else "")
    else:
        import textwrap

        default = "" if spec.required else f" = {spec.default!r}"
        # A long choice list (every registered sampler) wraps under the input instead of one endless line.
        text = textwrap.fill(f"{spec.name}: {_describe(spec)}{default}", width=100, initial_indent="  ",
                             subsequent_indent="      ", break_long_words=False, break_on_hyphens=False)
    if spec.description:
        text += f"\n      {spec.description}"
    return text


def describe_node(spec: NodeSpec) -> str:
    """``graphrun nodes TYPE``: a node type's docs, inputs (types, ranges, defaults), outputs and origin."""
    lines = [f"{spec.name}  [{spec.category}]" + ("  (output node)" if spec.output else "")]
    if spec.doc:
        lines += ["", *("  " + line if line else "" for line in spec.doc.splitlines())]
    lines += ["", "inputs:"] + ([_format_input(i) for i in spec.inputs] or ["  (none)"])
    lines += ["outputs:"] + ([f"  {o.name}: {o.type_name}" for o in spec.outputs] or ["  (none)"])
    if spec.comfy:
        lines.append("ComfyUI: " + ", ".join(c.class_type for c in spec.comfy))
    lines.append(f"version {spec.version}; defined in {spec.origin}")
    return "\n".join(lines)
