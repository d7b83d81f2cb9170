"""Importing ComfyUI workflows: API and UI formats, PNGs, names, shims, errors, model files, and real runs.

Runs use the tiny random-weight Z-Image in ComfyUI's file layout (`--models-dir tiny`). The official templates
live in tests/data/comfy/templates (see the README there); by default they run shrunk (small images, few steps)
after converting the untouched file; `pytest -m slow` runs them at full size from the JSON as shipped.
"""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image, PngImagePlugin

from graphrun.engine.cli import main
from graphrun.engine.comfy.api_to_graph import api_to_document, node_name_base
from graphrun.engine.comfy.specs import comfy_node_spec, resolution_selector, spec_lookup
from graphrun.engine.comfy_bridge import convert_file, document_yaml, load_any
from graphrun.engine.context import RunOptions
from graphrun.engine.diagnostics import GraphError
from graphrun.engine.executor import Runner
from graphrun.engine.graph import document_from_data, load_document
from graphrun.engine.node import CheckEnv, builtin_registry
from graphrun.engine.validate import check

COMFY = Path(__file__).parent / "data" / "comfy"
LEGACY = COMFY / "legacy-zimage-3stage.api.json"
TEMPLATES = COMFY / "templates"
TURBO = TEMPLATES / "image_z_image_turbo.json"
BASE = TEMPLATES / "image_z_image.json"
UPSCALER = TEMPLATES / "utility_z_image_turbo_2k_upscaler.app.json"
REG = builtin_registry()


def tiny_dir() -> Path:
    from graphrun.nodes.zimage.tiny import tiny_comfy_dir

    return tiny_comfy_dir()


def convert(prompt: dict[str, Any]):
    return api_to_document(prompt, REG)


def errors_of(exc: pytest.ExceptionInfo[GraphError]) -> list[str]:
    return [d.format() for d in exc.value.diagnostics if d.is_error]


def tiny_prompt(**ksampler: Any) -> dict[str, Any]:
    """A small single-stage Z-Image API prompt on the tiny model's ComfyUI file names (64x64, 2 steps)."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "z_image_turbo_bf16.safetensors",
                                                     "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2",
                                                     "device": "default"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "4": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["1", 0], "shift": 3.0}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "a fox"},
              "_meta": {"title": "Positive"}},
        "6": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["5", 0]}},
        "7": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "8": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "positive": ["5", 0], "negative": ["6", 0], "latent_image": ["7", 0], "seed": 1,
            "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0, **ksampler}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["3", 0]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "tiny"}},
    }


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def lora_dir(tmp_path: Path) -> Path:
    """A models dir holding a tiny LoRA under the legacy workflow's name, hollyjai.safetensors."""
    folder = tmp_path / "models"
    (folder / "loras").mkdir(parents=True)
    shutil.copy(tiny_dir() / "loras" / "tiny_lora_peft.safetensors", folder / "loras" / "hollyjai.safetensors")
    return folder


def run_document(data: dict[str, Any], out: Path, models_dirs: list[str], **extra: Any) -> list[Path]:
    """Validate (with file checks) and run a converted document in process; returns the written files."""
    options = {"models_dirs": models_dirs, **extra}
    graph, diags = check(document_from_data(data), REG, None, CheckEnv(options=options))
    assert graph is not None, [d.format() for d in diags]
    return Runner(RunOptions(output_dir=out, extra=options)).run(graph).files


def node_of_type(data: dict[str, Any], type_name: str) -> dict[str, Any]:
    found = [body for body in data["nodes"].values() if body["type"] == type_name]
    assert len(found) == 1, (type_name, found)
    return found[0]


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


# --- API format ------------------------------------------------------------------------------------------------------


def test_legacy_api_workflow_becomes_a_readable_graph():
    doc = convert_file(LEGACY, REG).document
    nodes = doc["nodes"]
    assert doc["graph"] == "legacy_zimage_3stage"
    assert list(nodes)[:3] == ["load_diffusion_model", "load_clip", "load_vae"]  # dependency order, then file order
    assert nodes["load_vae"] == {"type": "LoadVAE", "name": "ae.safetensors", "description": "Load VAE"}
    assert nodes["lora"] == {"type": "LoadLora", "model": "load_diffusion_model", "name": "hollyjai.safetensors",
                             "strength_model": 0.8, "description": "LoRA"}
    assert nodes["model_sampling_aura_flow"] == {"type": "ModelSampling", "model": "lora.model", "shift": 3.0}
    stage1 = nodes["stage_1_sampler"]
    assert stage1["type"] == "SamplerCustom" and stage1["description"] == "Stage 1 sampler"
    assert stage1["latent"] == "stage_1_latent_176x224" and stage1["sigmas"] == "flow_match_euler_sigmas"
    assert (stage1["noise_seed"], stage1["cfg"], stage1["add_noise"]) == (42, 2.0, True)
    assert nodes["flow_match_euler_sigmas"]["type"] == "FlowMatchSigmas"  # a plugin-style node declares it
    assert nodes["stage_2_upscale_to_336x432"]["latent"] == "stage_1_sampler.output"  # slot 0 of two outputs
    assert nodes["stage_2_sampler"] == {
        "type": "Sampler", "model": "model_sampling_aura_flow", "positive": "positive", "negative": "negative",
        "latent": "stage_2_upscale_to_336x432", "seed": 42, "steps": 16, "cfg": 1.0, "sampler": "euler_ancestral",
        "scheduler": "simple", "denoise": 0.7, "description": "Stage 2 sampler"}
    # CLIPLoader's `type` is graphrun's `clip_type` ('type' is the document's node-type key)
    assert nodes["load_clip"] == {"type": "LoadTextEncoder", "name": "qwen_3_4b.safetensors", "clip_type": "lumina2",
                                  "device": "default", "description": "Load CLIP"}
    graph, diags = check(document_from_data(doc), REG, None, CheckEnv(options={"models_dirs": ["tiny"]}))
    assert graph is None and [d.input for d in diags if d.is_error] == ["name"]  # only the missing LoRA file


def test_conversion_is_deterministic_and_names_are_unique():
    prompt = tiny_prompt()
    prompt["11"] = copy.deepcopy(prompt["8"])  # a second untitled KSampler
    prompt["12"] = {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["3", 0]}}
    prompt["13"] = {"class_type": "SaveImage", "inputs": {"images": ["12", 0]}, "_meta": {"title": "Save Image"}}
    first, second = convert(prompt).document, convert(copy.deepcopy(prompt)).document
    assert first == second
    names = list(first["nodes"])
    assert {"ksampler", "ksampler_2", "vae_decode", "vae_decode_2", "save_image", "save_image_2"} <= set(names)
    assert len(names) == len(set(names)) == 13
    assert node_name_base("KSampler", "Stage 1 sampler", None) == "stage_1_sampler"
    assert node_name_base("VAELoader", "Load VAE", None) == "load_vae"
    assert node_name_base("EmptySD3LatentImage", None, None) == "empty_sd3_latent_image"
    assert node_name_base("KSampler", "KSampler", "stage1") == "stage1"  # graphrun export keeps its ids
    assert node_name_base("X", "!!!", None) == "x"


def test_renames_fixed_values_value_wrapping_and_dollar_escaping():
    prompt = tiny_prompt()
    prompt["7"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    prompt["5"]["inputs"]["text"] = "costs $5 and ${name} and $HOME"
    prompt["10"]["inputs"]["filename_prefix"] = {"__value__": ["a", "b"]}
    nodes = convert(prompt).document["nodes"]
    assert nodes["empty_latent_image"] == {"type": "EmptyLatent", "width": 64, "height": 64, "batch_size": 1,
                                           "channels": 4}
    assert nodes["ksampler"]["latent"] == "empty_latent_image" and nodes["ksampler"]["sampler"] == "euler"
    assert nodes["positive"]["text"] == "costs $$5 and $${name} and $$HOME"
    assert nodes["save_image"]["filename_prefix"] == ["a", "b"]
    nodes["save_image"]["filename_prefix"] = "tiny"
    graph, diags = check(document_from_data({"nodes": nodes}), REG, None, CheckEnv(options={"models_dirs": ["tiny"]}))
    assert graph is not None, diags
    assert graph.nodes["positive"].literals["text"] == "costs $5 and ${name} and $HOME"


def test_value_nodes_are_folded_into_their_consumers():
    prompt = tiny_prompt(seed=["20", 0])
    prompt["7"]["inputs"].update(width=["21", 0], height=["21", 1])
    prompt["20"] = {"class_type": "PrimitiveInt", "inputs": {"value": 77}}
    prompt["21"] = {"class_type": "ResolutionSelector",
                    "inputs": {"aspect_ratio": "16:9 (Widescreen)", "megapixels": 0.5, "multiple": 16}}
    prompt["22"] = {"class_type": "PrimitiveString", "inputs": {"value": ["23", 0]}}
    prompt["23"] = {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "line one\nline two"}}
    prompt["5"]["inputs"]["text"] = ["22", 0]
    nodes = convert(prompt).document["nodes"]
    assert len(nodes) == 10  # the value nodes are not nodes of the graph
    assert nodes["ksampler"]["seed"] == 77
    assert (nodes["empty_sd3_latent_image"]["width"], nodes["empty_sd3_latent_image"]["height"]) == (960, 544)
    assert nodes["positive"]["text"] == "line one\nline two"


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ({"aspect_ratio": "1:1 (Square)", "megapixels": 1.0, "multiple": 8, "minimum": 256}, (1024, 1024)),
        ({"aspect_ratio": "16:9 (Widescreen)", "megapixels": 1.0, "multiple": 8, "minimum": 256}, (1368, 768)),
        ({"aspect_ratio": "2:3 (Portrait Photo)", "megapixels": 2.0, "multiple": 64, "minimum": 256}, (1152, 1792)),
        # below the minimum: the smallest (16k, 9k) with both sides >= 256 and multiples of 8
        ({"aspect_ratio": "16:9 (Widescreen)", "megapixels": 0.01, "multiple": 8, "minimum": 256}, (512, 288)),
    ],
)
def test_resolution_selector(inputs, expected):
    assert resolution_selector(inputs) == expected


def test_display_only_nodes_are_skipped_with_a_notice_and_harmless_knobs_dropped():
    prompt = tiny_prompt(control_after_generate="randomize")
    prompt["30"] = {"class_type": "ImageCompare", "inputs": {"image_a": ["9", 0], "image_b": ["9", 0]}}
    prompt["31"] = {"class_type": "PreviewAny", "inputs": {"source": ["8", 0]}}
    prompt["32"] = {"class_type": "MarkdownNote", "inputs": {"text": "hello"}}
    conversion = convert(prompt)
    assert len(conversion.document["nodes"]) == 10
    notes = [d.format() for d in conversion.notes]
    assert all(d.severity == "warning" for d in conversion.notes)
    assert sum("only displays in ComfyUI" in n for n in notes) == 3
    assert any("ComfyUI node 8 (KSampler): dropped input 'control_after_generate'" in n for n in notes)
    assert "control_after_generate" not in conversion.document["nodes"]["ksampler"]


def test_unsupported_types_are_one_error_listing_every_node_and_suggestion():
    prompt = tiny_prompt()
    prompt["8"]["class_type"] = "KSamplr"
    prompt["40"] = {"class_type": "FancyUpscaler", "inputs": {"image": ["9", 0]}, "_meta": {"title": "Big"}}
    prompt["41"] = {"class_type": "FancyUpscaler", "inputs": {"image": ["40", 0]}}
    with pytest.raises(GraphError) as exc:
        convert(prompt)
    errors = [d for d in exc.value.diagnostics if d.is_error]
    assert len(errors) == 1  # the links into and out of unsupported nodes add no noise
    text = errors[0].format()
    assert "2 ComfyUI node types not supported by graphrun" in text
    assert "'KSamplr' (node 8)" in text and "'FancyUpscaler' (nodes 40 'Big', 41)" in text
    assert "'KSamplr' -> 'KSampler'" in text


def test_every_broken_input_is_reported_at_once_naming_the_node():
    prompt = tiny_prompt(bogus=1)
    prompt["9"]["inputs"]["samples"] = ["99", 0]
    prompt["6"]["inputs"]["conditioning"] = ["5", 3]
    prompt["4"]["inputs"]["model"] = 3
    prompt["50"] = {"class_type": "ImageCompare", "inputs": {}}
    prompt["10"]["inputs"]["images"] = ["50", 0]
    prompt["51"] = {"class_type": "SaveImageAdvanced", "inputs": {"images": ["9", 0], "filename_prefix": "x",
                                                                  "format": "exr"}}
    with pytest.raises(GraphError) as exc:
        convert(prompt)
    text = "\n".join(errors_of(exc))
    assert "ComfyUI node 8 (KSampler) has input 'bogus', which graphrun's Sampler does not support" in text
    assert "ComfyUI node 9 (VAEDecode) input 'samples' links to node 99, which is not in the workflow" in text
    assert "links to output 3 of ComfyUI node 5 (CLIPTextEncode 'Positive')" in text
    assert "input 'model' is MODEL and needs a link, got the value 3" in text
    assert "links to ComfyUI node 50 (ImageCompare), which only displays in ComfyUI" in text
    assert "input 'format' is 'exr'; graphrun runs SaveImageAdvanced only with format = 'png'" in text
    assert len(errors_of(exc)) == 6


def test_native_graphrun_types_and_export_ids_import_directly():
    prompt = {
        "1": {"class_type": "LoadZImage", "inputs": {"path": "tiny"}, "_meta": {"title": "zimage", "graphrun": "zimage"}},
        "2": {"class_type": "TextEncode", "inputs": {"clip": ["1", 1], "text": "x"}, "_meta": {"title": "My prompt"}},
    }
    nodes = convert(prompt).document["nodes"]
    assert nodes == {"zimage": {"type": "LoadZImage", "path": "tiny"},
                     "my_prompt": {"type": "TextEncode", "clip": "zimage.clip", "text": "x", "description": "My prompt"}}


def test_widget_layout_comes_from_the_declarations():
    lookup = spec_lookup(REG)
    ksampler = lookup("KSampler")
    assert [w.name for w in ksampler.widgets] == ["seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"]
    assert ksampler.widget("seed").has_int_control
    assert [s.name for s in lookup("LoadImage").widgets_values_layout()] == ["image", "upload"]
    assert lookup("CLIPTextEncode").widget("text").dynamic_prompts
    assert [w.name for w in lookup("EmptyLatentImage").widgets] == ["width", "height", "batch_size"]
    assert [w.name for w in lookup("EmptySD3LatentImage").widgets] == ["width", "height", "batch_size"]
    assert [w.name for w in lookup("LoraLoaderModelOnly").widgets] == ["lora_name", "strength_model"]
    assert lookup("LoraLoaderModelOnly").inputs == ("model", "lora_name", "strength_model")
    assert [w.name for w in lookup("LoraLoader").widgets] == ["lora_name", "strength_model", "strength_clip"]
    assert lookup("VAELoader").widget("vae_name").default is None  # required: stays missing if not stored
    assert lookup("ImageCompare") is not None and lookup("ResolutionSelector").outputs == ("INT", "INT")
    assert lookup("NoSuchNode") is None
    spec, comfy = REG.comfy_index()["SamplerCustom"]
    assert comfy_node_spec(spec, comfy).widget_names == ("add_noise", "noise_seed", "cfg")


# --- UI format and the official templates ----------------------------------------------------------------------------


def test_turbo_template_ui_matches_the_api_form():
    doc = convert_file(TURBO, REG).document
    nodes = doc["nodes"]
    assert sorted(body["type"] for body in nodes.values()) == sorted([
        "LoadTextEncoder", "LoadVAE", "LoadDiffusionModel", "TextEncode", "ConditioningZeroOut", "EmptyLatent",
        "ModelSampling", "Sampler", "VAEDecode", "SaveImage"])
    assert nodes["ksampler"] == {
        "type": "Sampler", "model": "model_sampling_aura_flow", "positive": "clip_text_encode",
        "negative": "conditioning_zero_out", "latent": "empty_sd3_latent_image", "seed": 0, "steps": 8, "cfg": 1,
        "sampler": "res_multistep", "scheduler": "simple", "denoise": 1}
    assert nodes["save_image"] == {"type": "SaveImage", "images": "vae_decode", "filename_prefix": "z-image-turbo"}


def test_base_template_folds_the_resolution_selector_and_aliases_save_image_advanced():
    conversion = convert_file(BASE, REG)
    nodes = conversion.document["nodes"]
    latent = node_of_type(conversion.document, "EmptyLatent")
    assert (latent["width"], latent["height"]) == (1024, 1024)
    sampler = node_of_type(conversion.document, "Sampler")
    assert (sampler["steps"], sampler["cfg"], sampler["sampler"]) == (25, 4, "res_multistep")
    assert node_of_type(conversion.document, "SaveImage")["filename_prefix"] == "Z_image_base"
    assert nodes["unet_loader"]["name"] == "z_image_bf16.safetensors"
    assert [d.code for d in conversion.notes] == ["comfy_alias", "comfy_seed_control"]  # its seed: randomize


def test_upscaler_template_needs_the_upscale_nodes():
    if "ImageUpscaleWithModel" not in REG.comfy_index():
        pytest.skip("no node declares ImageUpscaleWithModel/UpscaleModelLoader/ImageScaleBy/ImageScaleToTotalPixels")
    conversion = convert_file(UPSCALER, REG)
    types = sorted(body["type"] for body in conversion.document["nodes"].values())
    assert types.count("TextEncode") == 2 and "LoadUpscaleModel" in types and "VAEEncode" in types
    assert [d.code for d in conversion.notes] == ["comfy_display_only", "comfy_seed_control"]  # ImageCompare; seed


def zimage_base_dir(tmp_path: Path) -> Path:
    """The base template loads z_image_bf16.safetensors: the tiny transformer under that name."""
    folder = tmp_path / "base_models" / "diffusion_models"
    folder.mkdir(parents=True)
    shutil.copy(tiny_dir() / "diffusion_models" / "z_image_turbo_bf16.safetensors", folder / "z_image_bf16.safetensors")
    return folder.parent


def upscaler_inputs(tmp_path: Path, size: int) -> tuple[Path, Path]:
    """A models dir with a tiny x4 upscale model as RealESRGAN_x4plus, and a folder with fighter_jet.png."""
    from graphrun.nodes.upscale import write_tiny_upscale_model

    models = tmp_path / "up_models"
    write_tiny_upscale_model(models / "upscale_models" / "RealESRGAN_x4plus.safetensors")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.new("RGB", (size, size), (200, 120, 40)).save(inputs / "fighter_jet.png")
    return models, inputs


def test_official_templates_run_shrunk_on_the_tiny_model(tmp_path):
    """Convert each untouched template, shrink only the image size and step count, and run it."""
    turbo = convert_file(TURBO, REG).document
    node_of_type(turbo, "EmptyLatent").update(width=64, height=64)
    node_of_type(turbo, "Sampler")["steps"] = 2
    [png] = run_document(turbo, tmp_path / "turbo", ["tiny"])
    assert png.name == "z-image-turbo_00001_.png" and png_size(png) == (64, 64)

    base = convert_file(BASE, REG).document
    node_of_type(base, "EmptyLatent").update(width=64, height=48)
    node_of_type(base, "Sampler")["steps"] = 2
    [png] = run_document(base, tmp_path / "base", ["tiny", str(zimage_base_dir(tmp_path))])
    assert png.name == "Z_image_base_00001_.png" and png_size(png) == (64, 48)

    if "ImageUpscaleWithModel" not in REG.comfy_index():
        pytest.skip("the upscaler template needs the ImageUpscaleWithModel/UpscaleModelLoader nodes")
    upscaler = convert_file(UPSCALER, REG).document
    node_of_type(upscaler, "ImageScaleToTotalPixels")["megapixels"] = 0.01  # 102x102 -> x4 -> x0.5: 204x204
    node_of_type(upscaler, "Sampler")["steps"] = 2
    models, inputs = upscaler_inputs(tmp_path, 48)
    [png] = run_document(upscaler, tmp_path / "up", ["tiny", str(models)], input_dirs=[str(inputs)])
    assert png.name == "z-image-upscaled_00001_.png" and png_size(png) == (200, 200)


def test_legacy_workflow_runs_from_its_json(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main([str(LEGACY), "--models-dir", "tiny", "--models-dir", str(lora_dir(tmp_path)), "--out", str(out),
               "--progress", "none"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    png = out / "zimage" / "tweet_00001_.png"
    assert captured.out.strip() == str(png) and png_size(png) == (672, 864)


@pytest.mark.slow
@pytest.mark.parametrize("template", ["turbo", "base", "upscaler"])
def test_official_templates_run_full_size_from_their_json(template, tmp_path, capsys):
    source = {"turbo": TURBO, "base": BASE, "upscaler": UPSCALER}[template]
    args = ["--models-dir", "tiny", "--out", str(tmp_path / "out"), "--progress", "none"]
    if template == "base":
        args += ["--models-dir", str(zimage_base_dir(tmp_path))]
    if template == "upscaler":
        if "ImageUpscaleWithModel" not in REG.comfy_index():
            pytest.skip("the upscaler template needs the ImageUpscaleWithModel/UpscaleModelLoader nodes")
        models, inputs = upscaler_inputs(tmp_path, 256)
        source = Path(shutil.copy(source, inputs))  # LoadImage finds fighter_jet.png beside the workflow
        args += ["--models-dir", str(models)]
    rc = main([str(source), *args])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert Path(captured.out.strip()).is_file()


# --- model files -----------------------------------------------------------------------------------------------------


def test_missing_model_file_lists_where_it_looked(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc = main([str(LEGACY), "--models-dir", "tiny", "--models-dir", str(tmp_path / "empty"), "--out",
               str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "hollyjai.safetensors" in err and "looked in" in err
    assert str(tiny_dir() / "loras" / "hollyjai.safetensors") in err
    assert str(tmp_path / "empty" / "loras" / "hollyjai.safetensors") in err
    assert not (tmp_path / "out").exists()


def test_extra_model_paths_yaml_finds_the_files(tmp_path, capsys):
    root = tmp_path / "comfy"
    for kind, name in [("unet", "z_image_turbo_bf16.safetensors"), ("clip", "qwen_3_4b.safetensors"),
                       ("vae", "ae.safetensors")]:
        source = {"unet": "diffusion_models", "clip": "text_encoders", "vae": "vae"}[kind]
        (root / "models" / kind).mkdir(parents=True)
        (root / "models" / kind / name).symlink_to(tiny_dir() / source / name)
    (root / "more_loras").mkdir()
    shutil.copy(tiny_dir() / "loras" / "tiny_lora_kohya.safetensors", root / "more_loras" / "style.safetensors")
    extra = tmp_path / "extra_model_paths.yaml"
    extra.write_text(yaml.safe_dump({"comfyui": {
        "base_path": str(root), "unet": "models/unet", "clip": "models/clip", "vae": "models/vae",
        "loras": "models/loras\nmore_loras\n"}}))
    prompt = tiny_prompt(model=["20", 0])
    prompt["20"] = {"class_type": "LoraLoaderModelOnly",
                    "inputs": {"model": ["4", 0], "lora_name": "style.safetensors", "strength_model": 0.5}}
    workflow = write_json(tmp_path / "wf.json", prompt)
    rc = main([str(workflow), "--extra-model-paths", str(extra), "--out", str(tmp_path / "out"), "--progress", "none"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert png_size(tmp_path / "out" / "tiny_00001_.png") == (64, 64)


def test_relative_base_path_in_extra_model_paths_is_relative_to_the_yaml(tmp_path):
    from graphrun.nodes.model_files import extra_model_paths, resolve_model_file

    (tmp_path / "cfg" / "m" / "vae").mkdir(parents=True)
    (tmp_path / "cfg" / "m" / "vae" / "ae.safetensors").write_bytes(b"")
    extra = tmp_path / "cfg" / "extra_model_paths.yaml"
    extra.write_text("a111:\n  base_path: m\n  vae: vae\n  checkpoints: ckpt\n")
    assert extra_model_paths(extra) == {"vae": [tmp_path / "cfg" / "m" / "vae"]}
    assert resolve_model_file("ae.safetensors", "vae", [], str(extra)) == tmp_path / "cfg" / "m" / "vae" / "ae.safetensors"


# --- the CLI ---------------------------------------------------------------------------------------------------------


def test_convert_writes_yaml_that_loads_as_the_same_graph_and_never_overwrites(tmp_path, capsys):
    out = tmp_path / "legacy.yaml"
    assert main(["convert", str(LEGACY), "-o", str(out)]) == 0
    text = out.read_text()
    assert "  load_vae: {type: LoadVAE, name: ae.safetensors, description: Load VAE}\n" in text
    assert yaml.safe_load(text) == convert_file(LEGACY, REG).document
    assert load_document(out).nodes["stage_3_sampler"].type == "SamplerCustom"
    capsys.readouterr()
    assert main(["convert", str(TURBO), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_text() == text
    assert main(["convert", str(BASE)]) == 0
    captured = capsys.readouterr()
    assert "text: |-\n      A fashion photography work" in captured.out  # multi-line prompts as a block
    assert "SaveImageAdvanced) runs as SaveImage" in captured.err


def test_convert_failure_writes_nothing_and_exits_2(tmp_path, capsys):
    prompt = tiny_prompt()
    prompt["8"]["class_type"] = "KSamplerFancy"
    out = tmp_path / "out.yaml"
    assert main(["convert", str(write_json(tmp_path / "wf.json", prompt)), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error[comfy_unsupported_node]" in err and "'KSamplerFancy' (node 8)" in err and "Traceback" not in err
    assert not out.exists()
    prompt["8"]["class_type"] = "KSampler"
    prompt["8"]["inputs"]["steps"] = 0
    assert main(["convert", str(write_json(tmp_path / "wf2.json", prompt)), "-o", str(out)]) == 2
    assert "node 'ksampler' input 'steps'" in capsys.readouterr().err
    assert not out.exists()
    assert main(["convert", str(Path(__file__).parent.parent / "graphs" / "zimage_turbo.yaml")]) == 2
    assert "is not a ComfyUI workflow" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["convert", str(tmp_path / "bad.json")]) == 2


def test_png_prompt_chunk_is_preferred_over_workflow(tmp_path):
    api = tiny_prompt()
    api["5"]["inputs"]["text"] = "from the prompt chunk"
    info = PngImagePlugin.PngInfo()
    info.add_text("workflow", TURBO.read_text())
    info.add_text("prompt", json.dumps(api))
    png = tmp_path / "made_by_comfyui.png"
    Image.new("RGB", (8, 8)).save(png, pnginfo=info)
    doc = load_any(png, REG)
    assert doc.nodes["positive"].inputs["text"] == "from the prompt chunk"
    assert doc.file == str(png)


def test_validate_prints_conversion_notices_and_a_graphrun_json_stays_a_graph(tmp_path, capsys):
    prompt = tiny_prompt()
    prompt["30"] = {"class_type": "ImageCompare", "inputs": {"image_a": ["9", 0], "image_b": ["9", 0]}}
    rc = main(["validate", str(write_json(tmp_path / "wf.json", prompt)), "--models-dir", "tiny"])
    err = capsys.readouterr().err
    assert rc == 0 and "warning[comfy_display_only]" in err and ": valid (0 errors, 1 warning)" in err
    graph_json = write_json(tmp_path / "g.json", {"nodes": {"s": {"type": "SaveImage", "images": "d"},
                                                             "d": {"type": "LoadImage", "image": "x.png"}}})
    assert load_any(graph_json, REG).nodes["s"].type == "SaveImage"


def test_convert_and_validate_do_not_import_torch():
    code = (
        "import sys\nfrom graphrun.engine.cli import main\n"
        f"rc = main(['convert', {str(LEGACY)!r}])\n"
        f"rc2 = main(['convert', {str(BASE)!r}])\n"
        "print('torch' in sys.modules, rc, rc2, file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stderr.strip().splitlines()[-1] == "False 0 0", out.stderr


def test_document_yaml_round_trips_awkward_names_and_text():
    data = {"graph": "g", "nodes": {
        "true": {"type": "TextEncode", "clip": "x", "text": "a: b # c\n  indented\ttab "},
        "123": {"type": "TextEncode", "clip": "x", "text": "'quoted' {braces}"}}}
    assert yaml.safe_load(document_yaml(data)) == data


def test_value_node_problems_are_reported_once():
    prompt = tiny_prompt(seed=["20", 0], steps=["20", 0])
    prompt["20"] = {"class_type": "PrimitiveInt", "inputs": {"value": ["21", 0]}}
    prompt["21"] = {"class_type": "PrimitiveInt", "inputs": {"value": ["20", 0]}}
    prompt["7"]["inputs"]["width"] = ["22", 0]
    prompt["22"] = {"class_type": "ResolutionSelector", "inputs": {"aspect_ratio": "5:4", "megapixels": 1.0}}
    with pytest.raises(GraphError) as exc:
        convert(prompt)
    errors = errors_of(exc)
    assert len(errors) == 2, errors
    assert "is part of a link cycle" in errors[0] and "aspect_ratio '5:4' is not one of" in errors[1]


PLUGIN = '''
from typing import Annotated
from pydantic import Field
from graphrun import Comfy, node
from graphrun.nodes.types import Conditioning


@node("Shout", category="test", comfy=Comfy("ShoutEncode", inputs={"text": "words"}, widgets=("words", "times"),
                                            control_after_generate=("times",), dynamic_prompts=("words",)))
def shout(conditioning: Conditioning, text: str = "", times: Annotated[int, Field(ge=1)] = 1) -> Conditioning:
    """Test node."""
    return conditioning
'''


def test_a_plugin_declaring_a_comfyui_type_imports_from_the_ui_format(tmp_path):
    from graphrun.engine.node import make_registry

    plugin = tmp_path / "shout.py"
    plugin.write_text(PLUGIN)
    registry = make_registry([plugin])
    ui = {
        "nodes": [
            {"id": 1, "type": "CLIPLoader", "widgets_values": ["qwen_3_4b.safetensors", "lumina2", "default"],
             "outputs": [{"name": "CLIP", "type": "CLIP", "links": [1]}]},
            {"id": 2, "type": "CLIPTextEncode", "widgets_values": ["a fox"], "title": "Prompt",
             "inputs": [{"name": "clip", "type": "CLIP", "link": 1}],
             "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [2]}]},
            {"id": 3, "type": "ShoutEncode", "widgets_values": ["loud /* not this */", 3, "increment"],
             "inputs": [{"name": "conditioning", "type": "CONDITIONING", "link": 2}]},
        ],
        "links": [[1, 1, 0, 2, 0, "CLIP"], [2, 2, 0, 3, 0, "CONDITIONING"]],
    }
    nodes = convert_file(write_json(tmp_path / "ui.json", ui), registry).document["nodes"]
    assert nodes["shout_encode"] == {"type": "Shout", "conditioning": "prompt", "text": "loud ", "times": 3}
    assert nodes["prompt"] == {"type": "TextEncode", "clip": "clip_loader", "text": "a fox", "description": "Prompt"}


def test_python_load_accepts_comfy_workflows(tmp_path):
    import graphrun
    from graphrun.engine.context import RunOptions
    from graphrun.engine.executor import Runner

    graph = graphrun.load(LEGACY, runner=Runner(RunOptions(output_dir=tmp_path, extra={"models_dirs": ["tiny"]})))
    assert graph.document.nodes["stage_1_sampler"].type == "SamplerCustom"
    errors = [d for d in graph.validate() if d.is_error]
    assert [(d.node, d.input) for d in errors] == [("lora", "name")]  # hollyjai.safetensors is not in the tiny dir


def test_convert_promotes_inputs_to_params(tmp_path, capsys):
    from graphrun.engine.cli import main

    out = tmp_path / "legacy.yaml"
    assert main(["convert", str(LEGACY), "-o", str(out), "--param", "prompt=positive.text",
                 "--param", "seed=stage_1_sampler.noise_seed,stage_2_sampler.seed,stage_3_sampler.noise_seed"]) == 0
    doc = yaml.safe_load(out.read_text())
    assert doc["params"]["seed"] == {"type": "INT", "default": 42}
    assert doc["params"]["prompt"]["default"].startswith("sunway, A young woman")
    assert (doc["nodes"]["stage_2_sampler"]["seed"], doc["nodes"]["positive"]["text"]) == ("$seed", "$prompt")
    graph = load_document(out)
    _, diags = check(graph, REG, {"seed": "7", "prompt": "a fox"}, CheckEnv(options={"models_dirs": ["tiny"]}))
    assert [(d.node, d.input) for d in diags if d.is_error] == [("lora", "name")]  # only the LoRA file is missing
    capsys.readouterr()
    assert main(["convert", str(LEGACY), "--param", "seed=stage_1_sampler.noise_seed,stage_2_sampler.cfg"]) == 2
    assert "the inputs differ (42, 1.0)" in capsys.readouterr().err


def test_problems_in_converted_workflows_name_the_comfy_node(tmp_path):
    import graphrun
    from graphrun.engine.context import RunOptions
    from graphrun.engine.executor import NodeFailed, Runner

    graph = graphrun.load(LEGACY, runner=Runner(RunOptions(output_dir=tmp_path, extra={"models_dirs": ["tiny"]})))
    [error] = [d for d in graph.validate() if d.is_error]
    assert error.message.endswith("[ComfyUI node 340 'LoRA']")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    # A damaged file is found at validation now, still named by its ComfyUI node.
    with pytest.raises(GraphError) as caught:
        graphrun.load(_with_lora(tmp_path, broken), runner=graph.runner).run()
    [error] = [d for d in caught.value.diagnostics if d.is_error]
    assert error.message.endswith("[ComfyUI node 340 'LoRA']") and "not a safetensors file" in error.message


def _with_lora(tmp_path, lora_path):
    """The legacy workflow with its LoRA pointing at ``lora_path``."""
    prompt = json.loads(LEGACY.read_text())
    prompt["340"]["inputs"]["lora_name"] = str(lora_path)
    path = tmp_path / "legacy_with_lora.json"
    path.write_text(json.dumps(prompt))
    return path
