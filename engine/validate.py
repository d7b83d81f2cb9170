"""Every check that runs before anything executes. Problems are collected, never fail-fast.

`check(document, registry, overrides)` returns the bound graph (all values resolved, all links
typed) and the full list of diagnostics. Each rule is a plain function appending Diagnostics.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .diagnostics import Diagnostic, GraphError, did_you_mean, hint_budget
from .graph import Document, Link, Literal_, ParamRef, Template, coerce_param, parse_link, parse_primitive
from .limits import short_repr, value_problems
from .node import CheckEnv, InputSpec, NodeSpec, Registry

if TYPE_CHECKING:
    import networkx as nx  # imported where used: it costs ~0.1-0.2 s, and validating needs it only for a cycle

# INT inputs take what a 64-bit integer holds, signed or unsigned (ComfyUI's seeds go up to 2**64 - 1):
# larger values cannot reach torch, numpy or a PNG's metadata intact.
INT_MIN, INT_MAX = -(2**63), 2**64 - 1


@dataclass(frozen=True)
class BoundNode:
    """A node with every input resolved: literal values and typed links."""

    id: str
    spec: NodeSpec
    literals: dict[str, Any]
    links: dict[str, tuple[str, str]]  # input name -> (source node id, output name)
    description: str = ""
    order: int = 0


@dataclass
class BoundGraph:
    """A validated graph with its param values applied: ready to plan and run."""

    name: str
    description: str
    nodes: dict[str, BoundNode]
    params: dict[str, Any]
    document: Document
    warnings: list[Diagnostic] = field(default_factory=list)

    def dependencies(self, node_id: str) -> set[str]:
        return {src for src, _ in self.nodes[node_id].links.values()}

    def to_networkx(self) -> nx.DiGraph:
        import networkx as nx

        g = nx.DiGraph()
        for node in self.nodes.values():
            g.add_node(node.id)
            for src, _ in node.links.values():
                g.add_edge(src, node.id)
        return g


def _type_compatible(out_type: str, in_type: str) -> bool:
    return out_type == in_type or in_type == "*" or out_type == "*" or (out_type == "INT" and in_type == "FLOAT")


def _value_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    msg = err.get("msg", str(exc))
    return msg[0].lower() + msg[1:] if msg else msg


def _describe(spec: InputSpec) -> str:
    parts = [spec.type_name]
    if spec.choices:
        parts.append("one of " + ", ".join(repr(c) for c in spec.choices))
    for key, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("multiple_of", "multiple of")):
        if key in spec.constraints:
            parts.append(f"{op} {spec.constraints[key]}")
    return ", ".join(parts)


_LONG_CHOICE_LIST = 8  # a longer list is not spelt out in the message (the hint still has it)


def _bad_value(
    spec: NodeSpec, ispec: InputSpec, value: Any, origin: str, exc: ValidationError, node_id: str, where: dict[str, Any]
) -> Diagnostic:
    """GR009 for a literal that fails its input's type, range or choices (a misspelt choice gets a
    did-you-mean)."""
    choices = ispec.choices
    message = f"value {short_repr(value)}{origin} is invalid: {_value_error(exc)}"
    hint = f"expected {_describe(ispec)}"
    if choices and exc.errors()[0].get("type") == "literal_error":
        if len(choices) > _LONG_CHOICE_LIST:
            where_from = f"{spec.name}.{ispec.name}"
            message = f"value {short_repr(value)}{origin} is not one of the {len(choices)} choices of {where_from}"
        close = did_you_mean(str(value), [str(c) for c in choices])
        if close:
            hint = f"{close} (`graphrun nodes {spec.name}` lists the choices)"
    return Diagnostic("GR009", message, node=node_id, input=ispec.name, hint=hint, **where)


def resolve_params(doc: Document, overrides: dict[str, Any], diags: list[Diagnostic]) -> dict[str, Any]:
    """Param values: declared defaults, then overrides coerced to each param's type."""
    values = {name: decl.default for name, decl in doc.params.items()}
    for name, raw in overrides.items():
        decl = doc.params.get(name)
        if decl is None:
            hint = did_you_mean(name, doc.params)
            known = ", ".join(doc.params) or "none"
            diags.append(
                Diagnostic("GR016", f"unknown param '{name}'", input=name, hint=hint or f"this graph's params: {known}")
            )
            continue
        problems = list(value_problems(raw, max_problems=1))  # batch rows and Python callers give any value
        if problems:
            diags.append(
                Diagnostic("GR016", f"param '{name}': {problems[0].where()}{problems[0].message}", input=name)
            )
            continue
        try:
            values[name] = coerce_param(raw, decl.type)
        except ValueError as exc:
            diags.append(
                Diagnostic(
                    "GR016",
                    f"param '{name}' is {decl.type}: {exc}",
                    input=name,
                    hint=f"write --set {name}=<{decl.type.lower()}>",
                )
            )
    return values


def _number_problem(ispec: InputSpec, value: Any) -> str | None:
    """What pydantic's lax mode lets through but a numeric input must refuse: booleans (True is an int
    in Python), NaN and infinities, integers beyond 64 bits."""
    if ispec.type_name not in ("INT", "FLOAT"):
        return None
    if isinstance(value, bool):
        return f"{value!r} is a boolean, and {ispec.type_name} input '{ispec.name}' takes a number"
    if isinstance(value, float) and not math.isfinite(value):
        return f"value {value!r} is not a finite number"
    if isinstance(value, str) and ispec.type_name == "FLOAT":  # 'nan', '1e999': text a FLOAT input would read
        try:
            number = float(value)
        except ValueError:
            return None
        if not math.isfinite(number):
            return f"value {short_repr(value)} is not a finite number"
    if isinstance(value, int) and not INT_MIN <= value <= INT_MAX:
        return f"value {short_repr(value)} does not fit in 64 bits"
    return None


def _bind_node(
    doc: Document,
    node_id: str,
    registry: Registry,
    params: dict[str, Any],
    used: set[str],
    diags: list[Diagnostic],
    order: int | None = None,
) -> BoundNode | None:
    entry = doc.nodes[node_id]
    loc = doc.source.locate
    spec = registry.get(entry.type)
    if spec is None:
        comfy = registry.comfy_spec(entry.type)
        if comfy is not None:
            hint = f"'{entry.type}' is the ComfyUI name; graphrun calls it '{comfy[0].name}'"
        else:
            hint = did_you_mean(entry.type, registry.names()) or "`graphrun nodes` lists the node types"
        diags.append(
            Diagnostic(
                "GR003", f"unknown node type '{entry.type}'", node=node_id, hint=hint, **loc(("nodes", node_id, "type"))
            )
        )
        return None
    literals: dict[str, Any] = {}
    links: dict[str, tuple[str, str]] = {}
    for name, raw in entry.inputs.items():
        where = loc(("nodes", node_id, name))
        ispec = spec.input(name)
        if ispec is None:
            renamed = next((c.our_name(name) for c in spec.comfy if c.our_name(name) != name), None)
            hint = (
                f"'{name}' is the ComfyUI name; graphrun calls it '{renamed}'"
                if renamed
                else did_you_mean(name, [i.name for i in spec.inputs])
                or f"{spec.name} takes: {', '.join(i.name for i in spec.inputs) or 'no inputs'}"
            )
            diags.append(
                Diagnostic("GR004", f"{spec.name} has no input '{name}'", node=node_id, input=name, hint=hint, **where)
            )
            continue
        if ispec.socket:
            link = parse_link(raw) if isinstance(raw, str) else None
            if link is None:
                diags.append(
                    Diagnostic(
                        "GR009",
                        f"{ispec.type_name} input takes a link, got {short_repr(raw)}",
                        node=node_id,
                        input=name,
                        hint="write the source node id, or node.output",
                        **where,
                    )
                )
                continue
            links[name] = (link.node, link.output or "")
            continue
        value = parse_primitive(raw)
        if value is None:
            diags.append(
                Diagnostic(
                    "GR009",
                    f"malformed value {short_repr(raw)}",
                    node=node_id,
                    input=name,
                    hint="a link to a primitive input is written {from: node.output}",
                    **where,
                )
            )
            continue
        if isinstance(value, Link):
            links[name] = (value.node, value.output or "")
            continue
        origin = ""
        if isinstance(value, ParamRef):
            if value.name not in doc.params:
                diags.append(
                    Diagnostic(
                        "GR010",
                        f"undefined param '${value.name}'",
                        node=node_id,
                        input=name,
                        hint=did_you_mean(value.name, doc.params) or f"declare it under params: with type {ispec.type_name}",
                        **where,
                    )
                )
                continue
            used.add(value.name)
            resolved = params.get(value.name)
            if resolved is None:
                if not ispec.required:
                    continue  # a param without a value leaves the node's default in force
                diags.append(
                    Diagnostic(
                        "GR010",
                        f"param '${value.name}' has no value",
                        node=node_id,
                        input=name,
                        hint=f"give it a default, or --set {value.name}=...",
                        **where,
                    )
                )
                continue
            origin = f" (from param '{value.name}')"
        elif isinstance(value, Template):
            undefined = [p for p in value.params() if p not in doc.params]
            for p in undefined:
                diags.append(
                    Diagnostic(
                        "GR010",
                        f"undefined param '${{{p}}}' in text",
                        node=node_id,
                        input=name,
                        hint=did_you_mean(p, doc.params) or "declare it under params:, or write $$ for a literal $",
                        **where,
                    )
                )
            if undefined:
                continue
            used.update(value.params())
            if ispec.type_name != "STRING":
                diags.append(
                    Diagnostic(
                        "GR009",
                        f"text with ${{...}} interpolation given to a {ispec.type_name} input",
                        node=node_id,
                        input=name,
                        hint="use a whole-value $param to keep the param's type",
                        **where,
                    )
                )
                continue
            missing = [p for p in value.params() if params.get(p) is None]
            if missing:
                diags.append(
                    Diagnostic(
                        "GR010", f"param '${missing[0]}' has no value", node=node_id, input=name, **where
                    )
                )
                continue
            resolved = value.render(params)
        else:
            assert isinstance(value, Literal_)
            resolved = value.value
        problem = _number_problem(ispec, resolved)
        if problem is None:
            try:
                literals[name] = ispec.adapter().validate_python(resolved)
            except ValidationError as exc:
                diags.append(_bad_value(spec, ispec, resolved, origin, exc, node_id, where))
                continue
            problem = _number_problem(ispec, literals[name])  # e.g. the text 'nan' read as a FLOAT
        if problem is not None:
            literals.pop(name, None)
            diags.append(
                Diagnostic(
                    "GR009", problem + origin, node=node_id, input=name, hint=f"expected {_describe(ispec)}", **where
                )
            )
    for ispec in spec.inputs:
        if ispec.name in literals or ispec.name in links or ispec.name in entry.inputs:
            continue
        if ispec.required:
            diags.append(
                Diagnostic(
                    "GR005",
                    f"missing required input '{ispec.name}' ({ispec.type_name})",
                    node=node_id,
                    input=ispec.name,
                    hint=(
                        f"add {ispec.name}: <node id> (a node with a {ispec.type_name} output)"
                        if ispec.socket
                        else f"add {ispec.name}: <{_describe(ispec)}>"
                    ),
                    **loc(("nodes", node_id)),
                )
            )
        elif not ispec.socket:
            literals[ispec.name] = ispec.default
    if order is None:
        order = list(doc.nodes).index(node_id)
    return BoundNode(node_id, spec, literals, links, entry.description, order)


def _outputs_missing_in(spec: Any, comfy_version: str) -> str | None:
    """The ComfyUI version that added the node's outputs when the run follows an older one, else None."""
    from .comfy.versions import comfy_at_least

    for comfy in spec.comfy:
        if comfy.outputs_since and not comfy_at_least(comfy_version, comfy.outputs_since):
            return comfy.outputs_since
    return None


def _check_links(doc: Document, bound: dict[str, BoundNode], diags: list[Diagnostic], comfy_version: str = ""
                 ) -> dict[str, BoundNode]:
    """Resolve default outputs and check every link's ends exist and their types agree (and, for nodes whose
    outputs came with a later ComfyUI, that the version followed has them)."""
    fixed: dict[str, BoundNode] = {}
    for node in bound.values():
        links: dict[str, tuple[str, str]] = {}
        ok = True
        for name, (src, out) in node.links.items():
            where = doc.source.locate(("nodes", node.id, name))
            if src not in doc.nodes:
                diags.append(
                    Diagnostic(
                        "GR006",
                        f"references node '{src}', which does not exist",
                        node=node.id,
                        input=name,
                        hint=did_you_mean(src, doc.nodes) or "check the node id",
                        **where,
                    )
                )
                ok = False
                continue
            source = bound.get(src)
            if source is None:
                continue  # the source node already has its own diagnostic
            outputs = source.spec.outputs
            since = _outputs_missing_in(source.spec, comfy_version)
            if outputs and since:
                diags.append(
                    Diagnostic(
                        "GR007", f"node '{src}' ({source.spec.name}) has no outputs in the ComfyUI version followed "
                        f"(they came with ComfyUI {since}; that ComfyUI refuses this link too)", node=node.id,
                        input=name, hint=f"run with --comfy {since}, or link from the node that feeds '{src}'",
                        **where,
                    )
                )
                ok = False
                continue
            if not outputs:
                diags.append(
                    Diagnostic(
                        "GR007", f"node '{src}' ({source.spec.name}) has no outputs", node=node.id, input=name, **where
                    )
                )
                ok = False
                continue
            if out:
                ospec = source.spec.output_named(out)
                if ospec is None:
                    names = ", ".join(o.name for o in outputs)
                    diags.append(
                        Diagnostic(
                            "GR007",
                            f"node '{src}' ({source.spec.name}) has no output '{out}'",
                            node=node.id,
                            input=name,
                            hint=(did_you_mean(out, [o.name for o in outputs]) or f"its outputs: {names}"),
                            **where,
                        )
                    )
                    ok = False
                    continue
            else:
                ispec = node.spec.input(name)
                assert ispec is not None
                typed = [o for o in outputs if _type_compatible(o.type_name, ispec.type_name)]
                ospec = typed[0] if typed else outputs[0]
            ispec = node.spec.input(name)
            assert ispec is not None
            if not _type_compatible(ospec.type_name, ispec.type_name):
                diags.append(
                    Diagnostic(
                        "GR008",
                        f"type mismatch: '{src}.{ospec.name}' is {ospec.type_name} but "
                        f"{node.spec.name}.{name} expects {ispec.type_name}",
                        node=node.id,
                        input=name,
                        hint=f"connect a node with a {ispec.type_name} output",
                        **where,
                    )
                )
                ok = False
                continue
            links[name] = (src, ospec.name)
        if ok:
            fixed[node.id] = BoundNode(node.id, node.spec, node.literals, links, node.description, node.order)
    return fixed


def _check_cycles(doc: Document, bound: dict[str, BoundNode], diags: list[Diagnostic]) -> bool:
    # Peel off nodes whose inputs are all resolved (Kahn's algorithm, linear); only what is left lies
    # on or behind a cycle, and only that goes to the (costlier) cycle enumeration.
    waiting = {node_id: 0 for node_id in bound}
    feeds: dict[str, list[str]] = {node_id: [] for node_id in bound}
    for node in bound.values():
        for src, _ in node.links.values():
            if src in bound:
                feeds[src].append(node.id)
                waiting[node.id] += 1
    ready = deque(node_id for node_id, count in waiting.items() if count == 0)
    while ready:
        for target in feeds[ready.popleft()]:
            waiting[target] -= 1
            if waiting[target] == 0:
                ready.append(target)
    if not any(waiting.values()):
        return False
    import networkx as nx  # only for a graph that has a cycle: its enumeration order is the reported one

    g = nx.DiGraph()
    for node in bound.values():
        if waiting[node.id]:
            for src, _ in node.links.values():
                if src in bound and waiting[src]:
                    g.add_edge(src, node.id)
    found = False
    order = {node_id: i for i, node_id in enumerate(doc.nodes)}
    for cycle in nx.simple_cycles(g):
        found = True
        start = min(range(len(cycle)), key=lambda i: order[cycle[i]])
        cycle = cycle[start:] + cycle[:start]  # start at the first node in the document: stable text
        ring = " -> ".join(cycle + [cycle[0]])
        diags.append(
            Diagnostic(
                "GR012",
                f"cycle: {ring}",
                node=cycle[0],
                hint="a graph must be acyclic; remove one of these links",
                **doc.source.locate(("nodes", cycle[0])),
            )
        )
        if sum(d.code == "GR012" for d in diags) >= 5:
            break
    return found


def needed_nodes(bound: dict[str, BoundNode]) -> set[str]:
    """Output nodes and everything that feeds them (one walk from all outputs at once: linear)."""
    needed = {node.id for node in bound.values() if node.spec.output}
    queue = deque(needed)
    while queue:
        for src, _ in bound[queue.popleft()].links.values():
            if src in bound and src not in needed:
                needed.add(src)
                queue.append(src)
    return needed


def _with_comfy_version(env: CheckEnv, doc: Document) -> CheckEnv:
    """``env`` with the ComfyUI version the run follows; an unknown name is reported elsewhere (GR002 for
    the graph's key, a usage error for ``--comfy``), so the checks then see the default."""
    from dataclasses import replace

    from .comfy.versions import resolve_comfy_version

    for name in (env.comfy_version, getattr(doc, "comfy", "")):
        if name:
            try:
                return replace(env, comfy_version=resolve_comfy_version(name))
            except ValueError:
                continue
    return replace(env, comfy_version=resolve_comfy_version(None))


def _run_node_checks(doc: Document, bound: dict[str, BoundNode], env: CheckEnv, diags: list[Diagnostic]) -> None:
    """Each node type's own cheap pre-run checks (files exist, ...), on fully bound literals."""
    for node in bound.values():
        if node.spec.check is None:
            continue
        try:
            problems = node.spec.check(node.literals, env)
        except Exception as exc:  # a broken check must not hide the graph's other diagnostics
            problems = []
            diags.append(
                Diagnostic("GR018", f"check of {node.spec.name} failed: {type(exc).__name__}: {exc}", node=node.id)
            )
        for problem in problems:
            diags.append(
                Diagnostic(
                    "GR018",
                    problem.message,
                    node=node.id,
                    input=problem.input,
                    hint=problem.hint,
                    **doc.source.locate(("nodes", node.id, problem.input)),
                )
            )


def check(
    doc: Document, registry: Registry, overrides: dict[str, Any] | None = None, env: CheckEnv | None = None
) -> tuple[BoundGraph | None, list[Diagnostic]]:
    """Validate a document against a registry with param overrides applied.

    ``env`` tells node checks where the graph file lives and how model files are searched.
    Returns (bound graph or None when there are errors, every diagnostic found).
    """
    with hint_budget():  # did-you-mean hints cost names x candidates: bounded, so validation stays linear
        return _check(doc, registry, overrides, env)


def _check(
    doc: Document, registry: Registry, overrides: dict[str, Any] | None, env: CheckEnv | None
) -> tuple[BoundGraph | None, list[Diagnostic]]:
    from .overrides import apply_overrides

    # `--set NODE.INPUT=VALUE` edits a copy of the document; the rest are params (unknown ones reported there).
    doc, overrides, override_diags = apply_overrides(doc, registry, overrides or {})
    diags: list[Diagnostic] = list(doc.problems) + override_diags
    params = resolve_params(doc, overrides, diags)
    used: set[str] = set()
    bound: dict[str, BoundNode] = {}
    for order, node_id in enumerate(doc.nodes):
        node = _bind_node(doc, node_id, registry, params, used, diags, order)
        if node is not None:
            bound[node_id] = node
    if env is None:
        env = CheckEnv(graph_dir=Path(doc.file).parent if doc.file else None)
    env = _with_comfy_version(env, doc)
    _run_node_checks(doc, bound, env, diags)
    bound = _check_links(doc, bound, diags, env.comfy_version)
    has_cycle = _check_cycles(doc, bound, diags)
    if doc.nodes and not any(n.spec.output for n in bound.values()) and len(bound) == len(doc.nodes):
        outputs = sorted({s.name for s in registry if s.output})
        diags.append(
            Diagnostic(
                "GR013",
                "the graph has no output node, so nothing would run",
                hint=f"add an output node such as {', '.join(outputs[:4]) or 'SaveImage'}",
                file=doc.file,
            )
        )
    elif not has_cycle and bound and not any(d.is_error for d in diags):
        needed = needed_nodes(bound)
        for node_id in bound:
            if node_id not in needed:
                diags.append(
                    Diagnostic(
                        "GR014",
                        "does not feed any output node and will not run",
                        severity="warning",
                        node=node_id,
                        **doc.source.locate(("nodes", node_id)),
                    )
                )
    for name in doc.params:
        if name not in used:
            diags.append(
                Diagnostic(
                    "GR011",
                    f"param '{name}' is declared but never used",
                    severity="warning",
                    input=name,
                    **doc.source.locate(("params", name)),
                )
            )
    if doc.origins:  # a converted workflow: name the node as the user knows it too
        diags = [
            replace(d, message=f"{d.message} [{doc.origins[d.node]}]") if d.node in doc.origins else d for d in diags
        ]
    diags.sort(key=lambda d: (d.line is None, d.line or 0, d.column or 0))
    if any(d.is_error for d in diags):
        return None, diags
    graph = BoundGraph(
        doc.name, doc.description, bound, params, doc, warnings=[d for d in diags if not d.is_error]
    )
    return graph, diags


def bind(
    doc: Document, registry: Registry, overrides: dict[str, Any] | None = None, env: CheckEnv | None = None
) -> BoundGraph:
    """Like :func:`check`, but raise GraphError when there are errors."""
    graph, diags = check(doc, registry, overrides, env)
    if graph is None:
        raise GraphError(diags)
    return graph
