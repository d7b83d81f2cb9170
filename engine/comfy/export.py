"""Write a validated graph as a ComfyUI API-format prompt (what ``graphrun export`` prints and SaveImage embeds).

Every node is written with the ComfyUI class_type its declaration names, inputs renamed to ComfyUI's names,
params already resolved. When a node type declares several ComfyUI counterparts, the narrowest one that
represents the node exactly is chosen: its ``fixed`` values must match (``EmptyLatent`` with ``channels: 4``
→ ``EmptyLatentImage``), and every link and non-default value must have a ComfyUI input there (``LoadLora``
without a clip → ``LoraLoaderModelOnly``, with one → ``LoraLoader``). A node no ComfyUI counterpart can
represent (``LoadZImage``) is written under its graphrun name with graphrun's input names: ComfyUI shows it as
a missing node, and graphrun imports it back unchanged.

Node ids are ``"1"``, ``"2"``, … in document order; ``_meta.title`` is the node's description (else its id) and
``_meta.graphrun`` its graphrun id, which the importer uses to restore the names. Torch-free.
"""
from __future__ import annotations

import copy
from typing import Any

from ..node import REQUIRED, Comfy, NodeSpec
from ..validate import BoundGraph, BoundNode
from .specs import comfy_inputs

__all__ = ["graph_to_api", "choose_mapping"]


def _value(node: BoundNode, name: str) -> Any:
    """The literal an input runs with (a param left without a value keeps the node's default)."""
    if name in node.literals:
        return node.literals[name]
    spec = node.spec.input(name)
    return None if spec is None or spec.default is REQUIRED else spec.default


def _needed(node: BoundNode) -> set[str]:
    """Inputs a ComfyUI counterpart must carry: links, and literals that differ from the default."""
    needed = set(node.links)
    for inp in node.spec.inputs:
        if inp.socket or inp.name in node.links:
            continue
        if inp.default is REQUIRED or _value(node, inp.name) != inp.default:
            needed.add(inp.name)
    return needed


def choose_mapping(node: BoundNode) -> Comfy | None:
    """The narrowest ComfyUI counterpart that represents ``node`` exactly, or None."""
    needed = _needed(node)
    best: tuple[int, int, Comfy] | None = None
    for order, comfy in enumerate(node.spec.comfy):
        if any(k in node.links or _value(node, k) != v for k, v in comfy.fixed.items()):
            continue
        carried = {ours for ours, _ in comfy_inputs(node.spec, comfy)} | set(comfy.fixed)
        if not needed <= carried:
            continue
        key = (len(carried) - len(comfy.fixed), order)
        if best is None or key < best[:2]:
            best = (*key, comfy)
    return best[2] if best else None


def _api_value(value: Any) -> Any:
    value = copy.deepcopy(value)
    if isinstance(value, tuple):
        value = list(value)
    return {"__value__": value} if isinstance(value, list) else value


def _output_index(spec: NodeSpec, output: str) -> int:
    return next(i for i, o in enumerate(spec.outputs) if o.name == output)


def _inputs(node: BoundNode, comfy: Comfy | None, ids: dict[str, str], graph: BoundGraph) -> dict[str, Any]:
    pairs = comfy_inputs(node.spec, comfy) if comfy else [(i.name, i.name) for i in node.spec.inputs]
    inputs: dict[str, Any] = {}
    for ours, theirs in pairs:
        if ours in node.links:
            source, output = node.links[ours]
            inputs[theirs] = [ids[source], _output_index(graph.nodes[source].spec, output)]
            continue
        spec = node.spec.input(ours)
        if spec is None or spec.socket:
            continue  # an unconnected optional socket
        value = _value(node, ours)
        if value is not None:
            inputs[theirs] = _api_value(value)
    return inputs


def graph_to_api(graph: BoundGraph) -> dict[str, dict[str, Any]]:
    """The ComfyUI API prompt of a validated graph (params resolved)."""
    ordered = sorted(graph.nodes.values(), key=lambda n: n.order)
    ids = {node.id: str(index) for index, node in enumerate(ordered, start=1)}
    prompt: dict[str, dict[str, Any]] = {}
    for node in ordered:
        comfy = choose_mapping(node)
        prompt[ids[node.id]] = {
            "inputs": _inputs(node, comfy, ids, graph),
            "class_type": comfy.class_type if comfy else node.spec.name,
            "_meta": {"title": node.description or node.id, "graphrun": node.id},
        }
    return prompt
