"""ComfyUI 0.33's int8 checkpoints (``int8_tensorwise``, with and without ConvRot) against real ComfyUI.

Reference data (``tests/data/comfy/v0.33/quantized/``, see its README): comfy-kitchen 0.2.31's
``int8_linear`` on small inputs, the inputs and outputs of ComfyUI 0.33's int8 layers during a real
run on the tiny int8 files, and that run's PNGs. The tiny int8 files are rebuilt here with
``graphrun.nodes.zimage.tiny_quantized`` and checked against the recorded content hashes first.
"""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import graphrun
from graphrun.engine.context import RunOptions
from graphrun.engine.diagnostics import GraphError
from graphrun.engine.executor import Runner
from graphrun.nodes.quantized_int8 import Int8Linear, int8_linear
from graphrun.nodes.zimage.loading import load_text_encoder_file, load_transformer_file
from graphrun.nodes.zimage.tiny import COMFY_TEXT_ENCODER, COMFY_TRANSFORMER, COMFY_VAE, tiny_comfy_dir
from graphrun.nodes.zimage.tiny_quantized import comfy_quant, content_sha256, write_quantized_files

from test_quantized import refused

torch.set_num_threads(1)

REF = Path(__file__).parent / "data" / "comfy" / "v0.33" / "quantized"
TEMPLATES = Path(__file__).parent / "data" / "comfy" / "templates"
WORKFLOWS = sorted(p.parent.name for p in REF.glob("*/workflow.api.json"))


def int8_models_dir(root: Path, files: Path = REF / "files.json") -> Path:
    """``root`` as a ComfyUI models folder with the tiny float files and their quantized copies, checked
    against the content hashes of the files ComfyUI ran."""
    for rel in (COMFY_TRANSFORMER, COMFY_TEXT_ENCODER, COMFY_VAE):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tiny_comfy_dir() / rel, root / rel)
    write_quantized_files(root)
    recorded = json.loads(files.read_text())
    for rel, digest in recorded.items():
        assert content_sha256(root / rel) == digest, f"{rel} differs from the files ComfyUI ran"
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return int8_models_dir(tmp_path_factory.mktemp("int8_models"))


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def run(workflow: Path, models: Path, out: Path, comfy: str | None = None) -> list[Path]:
    options = RunOptions(output_dir=out, comfy=comfy, extra={"models_dirs": [str(models)]})
    return graphrun.load(workflow, runner=Runner(options)).run().files


# ---------------------------------------------------------------------------------------------
# The arithmetic, against comfy-kitchen's own numbers
# ---------------------------------------------------------------------------------------------

def test_int8_linear_equals_comfy_kitchen_bit_for_bit():
    tensors = load_file(str(REF / "int8_linear_cases.safetensors"))
    cases = json.loads((REF / "int8_linear_cases.json").read_text())["cases"]
    assert len(cases) == 6
    for case in cases:
        name = case["name"]
        out = int8_linear(tensors[f"{name}.x"], tensors[f"{name}.weight"], tensors[f"{name}.weight_scale"],
                          tensors.get(f"{name}.bias"), convrot=case["convrot"], group_size=case["convrot_groupsize"])
        assert out.dtype == tensors[f"{name}.out"].dtype and torch.equal(out, tensors[f"{name}.out"]), name
        # A float linear on the dequantized weight is not what ComfyUI computes.
        assert case["max_abs_diff_vs_float_linear_on_dequantized_weight"] > 0.05


def layer_outputs(model: torch.nn.Module, layer: str, x: torch.Tensor, kind: type = Int8Linear) -> torch.Tensor:
    """The model's output for a file layer: the layer itself, or its split parts side by side."""
    modules = dict(model.named_modules())
    if layer in modules:
        parts = [modules[layer]]
    else:  # Z-Image's fused qkv is to_q, to_k, to_v in diffusers; attention.out is to_out.0
        base = layer.rsplit(".", 1)[0]
        parts = ([modules[f"{base}.to_{p}"] for p in "qkv"] if layer.endswith(".qkv")
                 else [modules[f"{base}.to_out.0"]])
    assert all(isinstance(m, kind) for m in parts), layer
    return torch.cat([m(x) for m in parts], dim=-1)


@pytest.mark.parametrize("kind", ["transformer", "text_encoder"])
def test_every_int8_layer_gives_comfyuis_output_on_comfyuis_activations(models, kind):
    """The loaded layers (through graphrun's loaders, the qkv split included) turn the activations
    ComfyUI 0.33 fed its int8 layers in a real run into exactly ComfyUI's outputs."""
    tensors = load_file(str(REF / f"layers_{kind}_int8_convrot.safetensors"))
    calls = json.loads((REF / f"layers_{kind}_int8_convrot.json").read_text())
    if kind == "transformer":
        model = load_transformer_file(models / "diffusion_models/z_image_turbo_int8_convrot.safetensors", "cpu", "fp32")
    else:
        model = load_text_encoder_file(models / "text_encoders/qwen_3_4b_int8_convrot.safetensors", "cpu",
                                       "fp32").text_encoder
    groups = set()
    for call in calls:
        layer = call["layer"].removeprefix("model.")
        with torch.no_grad():
            out = layer_outputs(model, layer, tensors[f"{call['index']}.x"])
        assert torch.equal(out, tensors[f"{call['index']}.out"]), layer
        groups.add(call["convrot_groupsize"] if call["convrot"] else 0)
    assert groups == ({0, 64, 256} if kind == "transformer" else {16})


# ---------------------------------------------------------------------------------------------
# Whole workflows, against real ComfyUI 0.33's PNGs
# ---------------------------------------------------------------------------------------------

def assert_runs_like_comfyui(folder: Path, models: Path, out: Path) -> None:
    """The folder's workflow run by graphrun gives the folder's PNG within the pixel criterion. It holds for
    int8 and 4-bit transformers too: graphrun's Z-Image forwards compute in ComfyUI's order of operations
    (nodes/zimage/comfy_forward.py, ...), so every quantized layer sees ComfyUI's activations bit for bit."""
    [png] = run(folder / "workflow.api.json", models, out)
    [reference] = sorted(folder.glob("*.png"))
    assert png.name == reference.name
    diff = np.abs(pixels(reference) - pixels(png))
    identical, worst = float((diff == 0).mean()), int(diff.max())
    assert identical >= 0.999 and worst <= 2, f"{folder.name}: {identical:.4%} identical, max diff {worst}"


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_matches_comfyui_033(models, name, tmp_path):
    assert_runs_like_comfyui(REF / name, models, tmp_path)


@pytest.mark.parametrize("comfy", ["0.18.1", "2025.10"])
@pytest.mark.parametrize("name", ["q1_int8_convrot", "q3_text_encoder_int8_convrot"])
def test_older_settings_refuse_int8_files_as_those_versions_fail_on_them(models, name, comfy, tmp_path):
    """Refused at validation, before anything loads: one GR018 error naming the loader's input and the file."""
    with pytest.raises(GraphError) as err:
        run(REF / name / "workflow.api.json", models, tmp_path, comfy=comfy)
    message = str(err.value)
    file = "z_image_turbo_int8_convrot.safetensors" if name.startswith("q1") else "qwen_3_4b_int8_convrot.safetensors"
    for word in (file, "'int8_tensorwise' with ConvRot rotation", "KeyError", "--comfy 0.33", "layer '"):
        assert word in message, (word, message)
    assert "Traceback" not in message


# ---------------------------------------------------------------------------------------------
# Refusals: one message naming the file, the layer and the format
# ---------------------------------------------------------------------------------------------

def edited_file(models: Path, tmp_path: Path, edit, source: str = "diffusion_models/z_image_turbo_int8.safetensors") -> Path:
    state = load_file(str(models / source))
    edit(state)
    path = tmp_path / "edited.safetensors"
    save_file(state, str(path), metadata={"graphrun_config": json.dumps({"axes_dims": [8, 12, 12],
                                                                         "axes_lens": [1536, 512, 512]})})
    return path


def _refused(path: Path, *words: str, comfy: str | None = None) -> str:
    load = functools.partial(load_transformer_file, comfy_version=comfy) if comfy else load_transformer_file
    return refused(load, path, *words)


LAYER = "layers.0.attention.out"


@pytest.mark.parametrize("fmt, words", [  # the 4-bit formats load: tests/test_quantized_w4.py
    ("int3_made_up", ("does not know", "int8_tensorwise")),
])
def test_other_formats_are_refused(models, tmp_path, fmt, words):
    path = edited_file(models, tmp_path, lambda s: s.__setitem__(f"{LAYER}.comfy_quant", comfy_quant({"format": fmt})))
    _refused(path, f"layer '{LAYER}'", f"'{fmt}'", *words)


@pytest.mark.parametrize("problem, edit, words", [
    ("scale_shape", lambda s: s.__setitem__(f"{LAYER}.weight_scale", torch.full((2, 3), 0.01)),
     ("'weight_scale' of shape (2, 3)", "one per output row (64)")),
    ("missing_scale", lambda s: s.pop(f"{LAYER}.weight_scale"), ("no 'layers.0.attention.out.weight_scale'",)),
    ("float_weight", lambda s: s.__setitem__(f"{LAYER}.weight", s[f"{LAYER}.weight"].float()), ("not int8",)),
    ("group_not_power_of_4", lambda s: s.__setitem__(f"{LAYER}.comfy_quant", comfy_quant(
        {"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": 32})), ("ConvRot groups of 32",)),
    ("group_too_wide", lambda s: s.__setitem__(f"{LAYER}.comfy_quant", comfy_quant(
        {"format": "int8_tensorwise", "convrot": True})), ("ConvRot groups of None", "64 inputs")),
    ("input_scale", lambda s: s.__setitem__(f"{LAYER}.input_scale", torch.tensor(1.0)),
     ("'input_scale' tensor", "'int8_tensorwise' does not use")),
])
def test_malformed_int8_layers_are_refused(models, tmp_path, problem, edit, words):
    _refused(edited_file(models, tmp_path, edit), f"layer '{LAYER}'", *words)


def test_the_v0181_setting_names_the_format_and_the_fix(models):
    _refused(models / "diffusion_models/z_image_turbo_int8.safetensors", "'int8_tensorwise'",
             "ComfyUI v0.18.1 does not support", "--comfy 0.33", "(and 24 more layers like it)", comfy="0.18.1")


# ---------------------------------------------------------------------------------------------
# nvfp4's pre_quant_scale (ComfyUI 0.33)
# ---------------------------------------------------------------------------------------------

def test_nvfp4_pre_quant_scale_multiplies_the_input_under_033_and_is_refused_under_0181(models, tmp_path):
    """An nvfp4 layer with a pre_quant_scale computes ``linear(x * pre_quant_scale)`` with the
    dequantized weight (ComfyUI 0.33 on the CPU); v0.18.1 does not read it, so that setting refuses."""
    layer = "layers.0.feed_forward.w1"  # 64 inputs: four nvfp4 blocks
    src = load_file(str(models / COMFY_TRANSFORMER))
    w = src[f"{layer}.weight"]
    rows, cols = w.shape
    tensor_scale = w.abs().max().float() / (448.0 * 6.0)
    blocks = w.reshape(rows, cols // 16, 16)
    block = (blocks.abs().amax(-1) / 6.0 / tensor_scale).clamp(max=448.0).to(torch.float8_e4m3fn)
    e2m1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])
    scaled = blocks / (tensor_scale * block.float()).unsqueeze(-1)
    codes = (scaled.unsqueeze(-1) - e2m1).abs().argmin(-1).to(torch.uint8).reshape(rows, cols)
    # cuBLAS' block-scale tiles: 128x4, each stored as 32 runs of rows r, r+32, r+64, r+96.
    row_tiles = -(-rows // 128)
    padded = torch.zeros((row_tiles * 128, 4), dtype=torch.uint8)
    padded[:rows] = block.view(torch.uint8)
    swizzled = padded.reshape(row_tiles, 4, 32, 1, 4).permute(0, 3, 2, 1, 4).reshape(row_tiles * 128, 4)
    pre = torch.linspace(0.5, 1.5, cols)

    def edit(state):
        state[f"{layer}.weight"] = (codes[:, 0::2] << 4) | codes[:, 1::2]
        state[f"{layer}.weight_scale"] = swizzled.contiguous().view(torch.float8_e4m3fn)
        state[f"{layer}.weight_scale_2"] = tensor_scale
        state[f"{layer}.pre_quant_scale"] = pre
        state[f"{layer}.comfy_quant"] = comfy_quant({"format": "nvfp4"})

    path = edited_file(models, tmp_path, edit, COMFY_TRANSFORMER)
    model = load_transformer_file(path, "cpu", "fp32")
    module = model.get_submodule(layer)
    weight = (e2m1[codes.long()].reshape(rows, cols // 16, 16) * (tensor_scale * block.float()).unsqueeze(-1)).reshape(rows, cols)
    x = torch.randn(3, cols, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(module.weight, weight)
        assert torch.equal(module(x), torch.nn.functional.linear(x * pre, weight))
    _refused(path, f"layer '{layer}'", "'pre_quant_scale' tensor", comfy="0.18.1")


# ---------------------------------------------------------------------------------------------
# The official int8 Z-Image templates, converted and run shrunk on the tiny int8 files
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("template, prefix", [("image_z_image_turbo_int8.json", "z-image-turbo"),
                                              ("image_z_image_int8.json", "Z_image_base_int8")])
def test_official_int8_templates_run_shrunk_on_the_tiny_int8_files(models, template, prefix, tmp_path):
    from graphrun.engine.comfy_bridge import convert_file
    from graphrun.engine.graph import document_from_data
    from graphrun.engine.node import CheckEnv, builtin_registry
    from graphrun.engine.validate import check

    registry = builtin_registry()
    doc = convert_file(TEMPLATES / template, registry).document
    loaders = [body for body in doc["nodes"].values() if body["type"] == "LoadDiffusionModel"]
    assert [body["name"] for body in loaders] == [
        "z_image_turbo_int8_convrot.safetensors" if "turbo" in template else "z_image_int8_convrot.safetensors"]
    [latent] = [body for body in doc["nodes"].values() if body["type"] == "EmptyLatent"]
    latent.update(width=64, height=48)
    [sampler] = [body for body in doc["nodes"].values() if body["type"] == "Sampler"]
    sampler["steps"] = 2
    options = {"models_dirs": [str(models)]}
    graph, diags = check(document_from_data(doc), registry, None, CheckEnv(options=options))
    assert graph is not None, [d.format() for d in diags]
    [png] = Runner(RunOptions(output_dir=tmp_path, extra=options)).run(graph).files
    assert png.name == f"{prefix}_00001_.png" and Image.open(png).size == (64, 48)
