"""Write a validated graph as a ComfyUI API-format prompt (what ``graphrun export`` prints and SaveImage embeds).

Every node is written with the ComfyUI class_type its declaration names, inputs renamed to ComfyUI's names,
params already resolved. When a node type declares several ComfyUI counterparts, the narrowest one that
represents the node exactly is chosen: its ``fixed`` values must match (``EmptyLatent`` with ``channels: 4``
→ ``EmptyLatentImage``), and every link and non-default value must have a ComfyUI input there (``LoadLora``
without a clip → ``LoraLoaderModelOnly``, with one → ``LoraLoader``).

A node type with no ComfyUI counterpart of its own is written as the ComfyUI nodes that do the same where
:data:`EXPANSIONS` knows them: ``LoadZImage`` becomes ``UNETLoader`` + ``CLIPLoader`` (type ``lumina2``) +
``VAELoader`` with the file names of ComfyUI's Z-Image Turbo release (``z_image_turbo_bf16.safetensors``,
``qwen_3_4b.safetensors``, ``ae.safetensors``). Those are the names graphrun itself resolves to the tiny model
when no models folder is configured, so ``path: tiny`` exports exactly; a diffusers folder cannot be named in
ComfyUI (its loaders read single files), so for one the export says which files ComfyUI needs instead. Any other
node is written under its graphrun name with graphrun's input names: ComfyUI shows it as a missing node, graphrun
imports it back unchanged, and ``notes`` names it.

Node ids are ``"1"``, ``"2"``, … in document order (an expanded node takes several consecutive ids);
``_meta.title`` is the node's description (else its id) and ``_meta.graphrun`` its graphrun id, which the
importer uses to restore the names. Torch-free.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

from ..node import REQUIRED, Comfy, NodeSpec
from ..validate import BoundGraph, BoundNode
from .specs import comfy_inputs

__all__ = ["graph_to_api", "choose_mapping", "Expansion", "EXPANSIONS", "ZIMAGE_FILES", "missing_nodes_note"]


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


# --- expansions: one graphrun node as several ComfyUI nodes ------------------------------------------------------


@dataclass(frozen=True)
class Expansion:
    """The ComfyUI nodes that stand for one graphrun node.

    nodes: ``(graphrun id suffix, title suffix, class_type, ComfyUI inputs)`` per ComfyUI node, in order; inputs
        hold literals only (an expansion has no links of its own).
    outputs: graphrun output name -> (index into ``nodes``, output slot of that ComfyUI node).
    note: what a user should know about the translation (printed by ``graphrun export``), or None.
    """

    nodes: tuple[tuple[str, str, str, dict[str, Any]], ...]
    outputs: dict[str, tuple[int, int]]
    note: str | None = None


#: The files of ComfyUI's Z-Image Turbo release (Comfy-Org/z_image_turbo split_files), by ComfyUI models folder.
ZIMAGE_FILES: dict[str, str] = {
    "diffusion_models": "z_image_turbo_bf16.safetensors",
    "text_encoders": "qwen_3_4b.safetensors",
    "vae": "ae.safetensors",
}


def _expand_load_zimage(node: BoundNode) -> Expansion | None:
    """LoadZImage -> UNETLoader + CLIPLoader (lumina2) + VAELoader on Z-Image Turbo's ComfyUI file names."""
    if "path" in node.links:
        return None  # a path computed by another node cannot be translated to file names
    path = _value(node, "path")
    note = None
    if path != "tiny":
        note = (f"node '{node.id}' (LoadZImage, path {path!r}) is written as UNETLoader + CLIPLoader + VAELoader with "
                f"ComfyUI's Z-Image Turbo files {ZIMAGE_FILES['diffusion_models']}, {ZIMAGE_FILES['text_encoders']} "
                f"and {ZIMAGE_FILES['vae']}: ComfyUI loads no diffusers folders, so put those files in its models "
                "folders (diffusion_models/, text_encoders/, vae/)")
    return Expansion(
        nodes=(
            ("model", "diffusion model", "UNETLoader",
             {"unet_name": ZIMAGE_FILES["diffusion_models"], "weight_dtype": "default"}),
            ("clip", "text encoder", "CLIPLoader",
             {"clip_name": ZIMAGE_FILES["text_encoders"], "type": "lumina2", "device": "default"}),
            ("vae", "VAE", "VAELoader", {"vae_name": ZIMAGE_FILES["vae"]}),
        ),
        outputs={"model": (0, 0), "clip": (1, 0), "vae": (2, 0)},
        note=note,
    )


#: graphrun node type -> how to write it as ComfyUI nodes (None from the function: not possible for this node).
EXPANSIONS: dict[str, Callable[[BoundNode], Expansion | None]] = {"LoadZImage": _expand_load_zimage}


# --- writing ------------------------------------------------------------------------------------------------------


def _api_value(value: Any) -> Any:
    value = copy.deepcopy(value)
    if isinstance(value, tuple):
        value = list(value)
    return {"__value__": value} if isinstance(value, list) else value


def _output_index(spec: NodeSpec, output: str) -> int:
    return next(i for i, o in enumerate(spec.outputs) if o.name == output)


@dataclass
class _Plan:
    """What one graphrun node becomes: its ComfyUI mapping (None: graphrun's own type) or an expansion."""

    node: BoundNode
    ids: list[str]
    comfy: Comfy | None = None
    expansion: Expansion | None = None


def _plan(graph: BoundGraph) -> tuple[list[_Plan], dict[tuple[str, str], list[Any]]]:
    """Ids in document order (an expansion takes several) and where each graphrun output lands."""
    plans: list[_Plan] = []
    sources: dict[tuple[str, str], list[Any]] = {}
    next_id = 1
    for node in sorted(graph.nodes.values(), key=lambda n: n.order):
        comfy = choose_mapping(node)
        expand = EXPANSIONS.get(node.spec.name) if comfy is None else None
        expansion = expand(node) if expand is not None else None
        count = len(expansion.nodes) if expansion is not None else 1
        plan = _Plan(node, [str(next_id + i) for i in range(count)], comfy, expansion)
        next_id += count
        if expansion is not None:
            for output, (index, slot) in expansion.outputs.items():
                sources[(node.id, output)] = [plan.ids[index], slot]
        else:
            for slot, output in enumerate(node.spec.outputs):
                sources[(node.id, output.name)] = [plan.ids[0], slot]
        plans.append(plan)
    return plans, sources


def _inputs(node: BoundNode, comfy: Comfy | None, sources: dict[tuple[str, str], list[Any]]) -> dict[str, Any]:
    pairs = comfy_inputs(node.spec, comfy) if comfy else [(i.name, i.name) for i in node.spec.inputs]
    inputs: dict[str, Any] = {}
    for ours, theirs in pairs:
        if ours in node.links:
            inputs[theirs] = list(sources[node.links[ours]])
            continue
        spec = node.spec.input(ours)
        if spec is None or spec.socket:
            continue  # an unconnected optional socket
        value = _value(node, ours)
        if value is not None:
            inputs[theirs] = _api_value(value)
    return inputs


def missing_nodes_note(nodes: list[BoundNode]) -> str:
    """One line naming the nodes written under their graphrun type (ComfyUI shows them as missing nodes)."""
    listing = ", ".join(f"'{n.id}' ({n.spec.name})" for n in nodes)
    many = len(nodes) > 1
    return (f"{len(nodes)} node{'s' if many else ''} ha{'ve' if many else 's'} no ComfyUI counterpart and "
            f"{'are' if many else 'is'} written under graphrun's type name, which ComfyUI shows as a missing node: "
            f"{listing}")


def graph_to_api(graph: BoundGraph, notes: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The ComfyUI API prompt of a validated graph (params resolved).

    ``notes``, when given, receives one line per thing a ComfyUI user should know: the nodes written under their
    graphrun type name (no ComfyUI counterpart), and expansions that cannot carry the node's exact setting.
    """
    plans, sources = _plan(graph)
    prompt: dict[str, dict[str, Any]] = {}
    missing: list[BoundNode] = []
    for plan in plans:
        node = plan.node
        title = node.description or node.id
        if plan.expansion is not None:
            for api_id, (suffix, part, class_type, inputs) in zip(plan.ids, plan.expansion.nodes):
                prompt[api_id] = {
                    "inputs": {k: _api_value(v) for k, v in inputs.items()},
                    "class_type": class_type,
                    "_meta": {"title": f"{title}: {part}", "graphrun": f"{node.id}_{suffix}"},
                }
            if plan.expansion.note and notes is not None:
                notes.append(plan.expansion.note)
            continue
        if plan.comfy is None:
            missing.append(node)
        prompt[plan.ids[0]] = {
            "inputs": _inputs(node, plan.comfy, sources),
            "class_type": plan.comfy.class_type if plan.comfy else node.spec.name,
            "_meta": {"title": title, "graphrun": node.id},
        }
    if missing and notes is not None:
        notes.append(missing_nodes_note(missing))
    return prompt
