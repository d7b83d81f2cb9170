"""The graph as text for a diagram renderer: Mermaid or Graphviz DOT."""
from __future__ import annotations

from .graph import Document, Link, parse_link, parse_primitive
from .node import Registry


def _edges(doc: Document, registry: Registry) -> list[tuple[str, str, str]]:
    edges = []
    for node in doc.nodes.values():
        spec = registry.get(node.type)
        for name, raw in node.inputs.items():
            ispec = spec.input(name) if spec else None
            link = None
            if ispec is not None and ispec.socket and isinstance(raw, str):
                link = parse_link(raw)
            elif isinstance(raw, dict):
                parsed = parse_primitive(raw)
                link = parsed if isinstance(parsed, Link) else None
            if link is not None and link.node in doc.nodes:
                edges.append((link.node, node.id, name))
    return edges


def to_mermaid(doc: Document, registry: Registry) -> str:
    lines = ["flowchart LR"]
    for node in doc.nodes.values():
        lines.append(f'  {_mid(node.id)}["{node.id}<br/><i>{node.type}</i>"]')
    for src, dst, name in _edges(doc, registry):
        lines.append(f"  {_mid(src)} -- {name} --> {_mid(dst)}")
    return "\n".join(lines) + "\n"


def to_dot(doc: Document, registry: Registry) -> str:
    lines = [f'digraph "{doc.name}" {{', "  rankdir=LR;", "  node [shape=box];"]
    for node in doc.nodes.values():
        lines.append(f'  "{node.id}" [label="{node.id}\\n{node.type}"];')
    for src, dst, name in _edges(doc, registry):
        lines.append(f'  "{src}" -> "{dst}" [label="{name}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mid(node_id: str) -> str:
    return "n_" + node_id.replace("-", "_")
