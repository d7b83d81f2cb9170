"""Exporting graphs as ComfyUI API prompts: `graphrun export`, the PNG `prompt` chunk, and import(export(g)) == g."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from graphrun.engine.cli import main
from graphrun.engine.comfy.api_to_graph import api_to_document
from graphrun.engine.comfy.export import _value, choose_mapping, graph_to_api
from graphrun.engine.comfy.formats import detect_format
from graphrun.engine.comfy.png import read_png_chunks
from graphrun.engine.comfy_bridge import convert_file, load_any, without_file_checks
from graphrun.engine.graph import document_from_data, load_document
from graphrun.engine.node import builtin_registry
from graphrun.engine.validate import BoundGraph, check

ROOT = Path(__file__).parent.parent
GRAPHS = ROOT / "graphs"
LEGACY = ROOT / "tests" / "data" / "comfy" / "legacy-zimage-3stage.api.json"
REG = builtin_registry()
NO_FILE_CHECKS = without_file_checks(REG)  # export needs no model files


def bind(doc, **params: Any) -> BoundGraph:
    graph, diags = check(doc, NO_FILE_CHECKS, params)
    assert graph is not None, [d.format() for d in diags if d.is_error]
    return graph


def signature(graph: BoundGraph) -> dict[str, tuple]:
    """What must survive a round trip: each node's type, every primitive's value, every link."""
    out = {}
    for node in graph.nodes.values():
        values = {i.name: _value(node, i.name) for i in node.spec.inputs if not i.socket and i.name not in node.links}
        out[node.id] = (node.spec.name, values, dict(node.links))
    return out


ZIMAGE_PARTS = {  # LoadZImage is exported as ComfyUI's three loaders on Z-Image Turbo's file names
    "model": ("LoadDiffusionModel", {"name": "z_image_turbo_bf16.safetensors", "weight_dtype": "default"}),
    "clip": ("LoadTextEncoder", {"name": "qwen_3_4b.safetensors", "clip_type": "lumina2", "device": "default"}),
    "vae": ("LoadVAE", {"name": "ae.safetensors"}),
}


def exported_signature(graph: BoundGraph) -> dict[str, tuple]:
    """The signature import(export(graph)) must have: each LoadZImage split into its three ComfyUI loaders."""
    split = {n.id for n in graph.nodes.values() if n.spec.name == "LoadZImage"}
    out = {}
    for node_id, (kind, values, links) in signature(graph).items():
        if node_id in split:
            out.update({f"{node_id}_{part}": (t, v, {}) for part, (t, v) in ZIMAGE_PARTS.items()})
            continue
        out[node_id] = (kind, values, {k: (f"{s}_{o}", o) if s in split else (s, o) for k, (s, o) in links.items()})
    return out


def reimport(prompt: dict[str, Any]) -> BoundGraph:
    """import(prompt) after a trip through JSON text, as a file would make it."""
    conversion = api_to_document(json.loads(json.dumps(prompt)), REG)
    return bind(document_from_data(conversion.document))


@pytest.mark.parametrize("path", sorted(GRAPHS.glob("*.yaml")), ids=lambda p: p.name)
def test_import_of_export_reproduces_every_shipped_graph(path):
    graph = bind(load_document(path))
    prompt = graph_to_api(graph)
    assert detect_format(prompt) == "api"
    assert signature(reimport(prompt)) == exported_signature(graph)


def test_export_of_imported_legacy_workflow_gives_back_its_comfyui_types():
    original = json.loads(LEGACY.read_text())
    graph = bind(document_from_data(convert_file(LEGACY, REG).document))
    prompt = graph_to_api(graph)
    assert sorted(n["class_type"] for n in prompt.values()) == sorted(n["class_type"] for n in original.values())
    by_title = {n["_meta"]["title"]: n for n in prompt.values()}
    assert by_title["Stage 1 sampler"]["inputs"] == {
        "model": [_id(prompt, "model_sampling_aura_flow"), 0], "positive": [_id(prompt, "positive"), 0],
        "negative": [_id(prompt, "negative"), 0], "sampler": [_id(prompt, "euler_ancestral"), 0],
        "sigmas": [_id(prompt, "flow_match_euler_sigmas"), 0], "latent_image": [_id(prompt, "stage_1_latent_176x224"), 0],
        "add_noise": True, "noise_seed": 42, "cfg": 2.0}
    assert by_title["LoRA"]["inputs"] == {"model": [_id(prompt, "load_diffusion_model"), 0],
                                          "lora_name": "hollyjai.safetensors", "strength_model": 0.8}
    assert by_title["Load CLIP"]["inputs"] == {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2",
                                               "device": "default"}
    assert signature(reimport(prompt)) == signature(graph)


def _id(prompt: dict[str, Any], graphrun_id: str) -> str:
    return next(k for k, n in prompt.items() if n["_meta"]["graphrun"] == graphrun_id)


def small_graph(**nodes: dict[str, Any]) -> BoundGraph:
    base = {
        "zimage": {"type": "LoadZImage"},
        "positive": {"type": "TextEncode", "clip": "zimage.clip", "text": "a fox"},
        "empty": {"type": "EmptyLatent", "width": 64, "height": 64},
        "sample": {"type": "Sampler", "model": "zimage.model", "positive": "positive", "negative": "positive",
                   "latent": "empty", "steps": 2},
        "decode": {"type": "VAEDecode", "vae": "zimage.vae", "latent": "sample"},
        "save": {"type": "SaveImage", "images": "decode"},
    }
    return bind(document_from_data({"nodes": {**base, **nodes}}))


def test_the_narrowest_exact_comfyui_counterpart_is_chosen():
    graph = small_graph(
        lora1={"type": "LoadLora", "model": "zimage.model", "name": "tiny:peft", "strength_model": 0.5},
        lora2={"type": "LoadLora", "model": "zimage.model", "clip": "zimage.clip", "name": "tiny:peft"},
        lora3={"type": "LoadLora", "model": "zimage.model", "name": "tiny:peft", "strength_clip": 0.3},
        empty4={"type": "EmptyLatent", "width": 64, "height": 64, "channels": 4},
    )
    prompt = graph_to_api(graph)
    kinds = {n["_meta"]["graphrun"]: n["class_type"] for n in prompt.values()}
    assert kinds["lora1"] == "LoraLoaderModelOnly" and kinds["lora2"] == kinds["lora3"] == "LoraLoader"
    assert kinds["empty"] == "EmptySD3LatentImage" and kinds["empty4"] == "EmptyLatentImage"
    # no ComfyUI counterpart of its own: written as the ComfyUI loaders that do the same
    assert "zimage" not in kinds and [kinds[f"zimage_{p}"] for p in ("model", "clip", "vae")] == [
        "UNETLoader", "CLIPLoader", "VAELoader"]
    assert kinds["sample"] == "KSampler" and kinds["positive"] == "CLIPTextEncode"
    inputs = {n["_meta"]["graphrun"]: n["inputs"] for n in prompt.values()}
    assert inputs["empty"] == {"width": 64, "height": 64, "batch_size": 1}  # channels is graphrun-only
    assert inputs["empty4"] == {"width": 64, "height": 64, "batch_size": 1}
    assert inputs["lora1"] == {"model": [_id(prompt, "zimage_model"), 0], "lora_name": "tiny:peft",
                               "strength_model": 0.5}
    assert inputs["lora2"]["clip"] == [_id(prompt, "zimage_clip"), 0]
    assert inputs["sample"]["latent_image"] == [_id(prompt, "empty"), 0] and inputs["sample"]["sampler_name"] == "euler"
    assert inputs["save"] == {"images": [_id(prompt, "decode"), 0], "filename_prefix": "ComfyUI"}
    assert choose_mapping(graph.nodes["decode"]).class_type == "VAEDecode"
    assert signature(reimport(prompt)) == exported_signature(graph)


def test_titles_ids_and_descriptions_survive():
    graph = small_graph(save={"type": "SaveImage", "images": "decode", "description": "Final image"})
    prompt = graph_to_api(graph)
    assert list(prompt) == [str(i) for i in range(1, 9)]  # LoadZImage takes three ids (its three loaders)
    assert prompt[_id(prompt, "save")]["_meta"] == {"title": "Final image", "graphrun": "save"}
    assert prompt[_id(prompt, "sample")]["_meta"] == {"title": "sample", "graphrun": "sample"}
    nodes = api_to_document(prompt, REG).document["nodes"]
    assert list(nodes) == ["zimage_model", "zimage_clip", "zimage_vae", "positive", "empty", "sample", "decode",
                           "save"]
    assert nodes["zimage_clip"]["description"] == "zimage: text encoder"
    assert nodes["save"]["description"] == "Final image" and "description" not in nodes["sample"]


def test_export_cli_resolves_params_applies_set_and_never_overwrites(tmp_path, capsys):
    out = tmp_path / "turbo.api.json"
    assert main(["export", str(GRAPHS / "zimage_turbo.yaml"), "--set", "seed=7", "--set", "width=512",
                 "-o", str(out)]) == 0
    prompt = json.loads(out.read_text())
    sampler = prompt[_id(prompt, "sample")]
    assert sampler["class_type"] == "KSampler" and sampler["inputs"]["seed"] == 7
    assert prompt[_id(prompt, "empty")]["inputs"]["width"] == 512
    assert prompt[_id(prompt, "positive")]["inputs"]["text"].startswith("A lighthouse")
    capsys.readouterr()
    before = out.read_text()
    assert main(["export", str(GRAPHS / "zimage_3stage.yaml"), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == before
    assert main(["export", str(GRAPHS / "zimage_turbo.yaml"), "--set", "steps=0"]) == 2
    assert "node 'sample' input 'steps'" in capsys.readouterr().err
    assert main(["export", str(LEGACY)]) == 0  # a ComfyUI workflow exports too, without its model files
    assert json.loads(capsys.readouterr().out)


def test_saved_png_carries_a_prompt_chunk_that_reimports_to_the_same_graph(tmp_path, capsys):
    settings = ["--set", "width=64", "--set", "height=64", "--set", "steps=2", "--set", "prefix=turbo"]
    assert main([str(GRAPHS / "zimage_turbo.yaml"), *settings, "--out", str(tmp_path / "a"), "--progress", "none"]) == 0
    png = Path(capsys.readouterr().out.strip())
    chunks = read_png_chunks(png)
    assert {"prompt", "graphrun"} <= set(chunks)
    assert detect_format(json.loads(chunks["prompt"])) == "api"
    original = bind(load_document(GRAPHS / "zimage_turbo.yaml"), width=64, height=64, steps=2, prefix="turbo")
    assert signature(bind(load_any(png, REG))) == signature(original)
    # and `graphrun IMAGE.png` runs it again, to the same pixels
    assert main([str(png), "--out", str(tmp_path / "b"), "--progress", "none"]) == 0
    again = Path(capsys.readouterr().out.strip())
    assert again.name == png.name
    with Image.open(png) as a, Image.open(again) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert json.loads(read_png_chunks(again)["prompt"]) == json.loads(chunks["prompt"])
