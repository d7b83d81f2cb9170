"""ComfyUI 0.33's 4-bit checkpoints (``convrot_w4a4``, ``asym_w4a8_int8``) against real ComfyUI.

Reference data (``tests/data/comfy/v0.33/quantized_w4/``, see its README): the inputs and outputs of
ComfyUI 0.33's 4-bit layers during real runs on tiny 4-bit files, the weights ComfyUI patched with a
LoRA on them, and those runs' PNGs. The tiny files are rebuilt here with
``graphrun.nodes.zimage.tiny_quantized`` and checked against the recorded content hashes first.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from graphrun.engine.diagnostics import GraphError
from graphrun.nodes.lora import load_lora
from graphrun.nodes.lora_patching import patched
from graphrun.nodes.quantized_int8 import Int8Linear
from graphrun.nodes.quantized_w4 import W4A4Linear, pack_nibbles, unpack_nibbles
from graphrun.nodes.zimage.loading import load_text_encoder_file, load_transformer_file
from graphrun.nodes.zimage.tiny_quantized import W4A4_TEXT_ENCODER, W4A4_TURBO, W4A8_TEXT_ENCODER, W4A8_TURBO, comfy_quant

from test_quantized import refused
from test_quantized_int8 import assert_runs_like_comfyui, edited_file, int8_models_dir, layer_outputs, run

torch.set_num_threads(1)

DATA = Path(__file__).parent / "data" / "comfy"
REF = DATA / "v0.33" / "quantized_w4"
LORA = DATA / "v0.18.1" / "pipeline" / "models" / "loras" / "hollyjai.safetensors"
WORKFLOWS = sorted(p.parent.name for p in REF.glob("*/workflow.api.json"))
FILES = {"transformer": {"convrot_w4a4": W4A4_TURBO, "asym_w4a8": W4A8_TURBO},
         "text_encoder": {"convrot_w4a4": W4A4_TEXT_ENCODER, "asym_w4a8": W4A8_TEXT_ENCODER}}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = int8_models_dir(tmp_path_factory.mktemp("w4_models"), REF / "files.json")
    (root / "loras").mkdir()
    shutil.copyfile(LORA, root / "loras" / LORA.name)
    return root


def test_nibbles_round_trip():
    codes = torch.arange(-8, 8).repeat(3, 2)
    assert torch.equal(unpack_nibbles(pack_nibbles(codes), signed=True), codes)
    assert torch.equal(unpack_nibbles(pack_nibbles(codes + 8), signed=False), codes + 8)


# ---------------------------------------------------------------------------------------------
# Every layer, on the activations ComfyUI fed it
# ---------------------------------------------------------------------------------------------

def _load(models: Path, kind: str, fmt: str) -> torch.nn.Module:
    path = models / FILES[kind][fmt]
    if kind == "transformer":
        return load_transformer_file(path, "cpu", "fp32")
    return load_text_encoder_file(path, "cpu", "fp32").text_encoder


@pytest.mark.parametrize("fmt", ["convrot_w4a4", "asym_w4a8"])
@pytest.mark.parametrize("kind", ["transformer", "text_encoder"])
def test_every_4bit_layer_gives_comfyuis_output_on_comfyuis_activations(models, kind, fmt):
    """Through graphrun's loaders (the qkv split included), the activations ComfyUI 0.33 fed its 4-bit
    layers in a real run give exactly ComfyUI's outputs."""
    tensors = load_file(str(REF / f"layers_{kind}_{fmt}.safetensors"))
    calls = json.loads((REF / f"layers_{kind}_{fmt}.json").read_text())
    assert len(calls) == (25 if kind == "transformer" else 14)
    model = _load(models, kind, fmt)
    module_type = W4A4Linear if fmt == "convrot_w4a4" else Int8Linear
    for call in calls:
        layer = call["layer"].removeprefix("model.")
        with torch.no_grad():
            out = layer_outputs(model, layer, tensors[f"{call['index']}.x"], module_type)
        assert torch.equal(out, tensors[f"{call['index']}.out"]), layer
    formats = {m.format for m in model.modules() if isinstance(m, (W4A4Linear, Int8Linear))}
    assert formats == {"convrot_w4a4" if fmt == "convrot_w4a4" else "asym_w4a8_int8"}


# ---------------------------------------------------------------------------------------------
# Whole workflows, against real ComfyUI 0.33's PNGs
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_matches_comfyui_033(models, name, tmp_path):
    assert_runs_like_comfyui(REF / name, models, tmp_path)


@pytest.mark.parametrize("comfy", ["0.18.1", "2025.10"])
@pytest.mark.parametrize("name, file, fmt", [
    ("w1_convrot_w4a4", "z_image_turbo_convrot_w4a4.safetensors", "convrot_w4a4"),
    ("w4_text_encoder_asym_w4a8", "qwen_3_4b_asym_w4a8.safetensors", "asym_w4a8_int8"),
])
def test_older_settings_refuse_4bit_files_as_those_versions_fail_on_them(models, name, file, fmt, comfy, tmp_path):
    """Refused at validation, before anything loads: one GR018 error naming the loader's input and the file."""
    with pytest.raises(GraphError) as err:
        run(REF / name / "workflow.api.json", models, tmp_path, comfy=comfy)
    message = str(err.value)
    for word in (file, f"'{fmt}'", "KeyError", "--comfy 0.33", "layer '"):
        assert word in message, (word, message)
    assert "Traceback" not in message


# ---------------------------------------------------------------------------------------------
# Refusals: one message naming the file, the layer and the format
# ---------------------------------------------------------------------------------------------

LAYER = "layers.0.attention.out"


def _edited(models: Path, tmp_path: Path, source: str, edit) -> Path:
    return edited_file(models, tmp_path, edit, source)


def _set(key: str, value):
    return lambda s: s.__setitem__(f"{LAYER}.{key}", value)


def _conf(**conf):
    return _set("comfy_quant", comfy_quant(conf))


@pytest.mark.parametrize("source, edit, words", [
    (W4A4_TURBO, _set("weight_scale", torch.ones(3)), ("'convrot_w4a4'", "'weight_scale' of shape (3,)",
                                                       "one floating-point scale per output row (64)")),
    (W4A4_TURBO, lambda s: s.pop(f"{LAYER}.weight_scale"), ("'convrot_w4a4'", "no 'layers.0.attention.out.weight_scale'")),
    (W4A4_TURBO, _conf(format="convrot_w4a4", convrot_groupsize=32), ("'convrot_w4a4'", "ConvRot groups of 32")),
    (W4A4_TURBO, _conf(format="convrot_w4a4"), ("'convrot_w4a4'", "ConvRot groups of 256", "64")),
    (W4A4_TURBO, _conf(format="convrot_w4a4", convrot_groupsize=64, linear_dtype="fp4"), ("linear_dtype 'fp4'",)),
    (W4A4_TURBO, lambda s: s.__setitem__(f"{LAYER}.weight", s[f"{LAYER}.weight"].view(torch.uint8)),
     ("'convrot_w4a4'", "torch.uint8, not int8")),
    (W4A8_TURBO, _conf(format="asym_w4a8_int8", group_size=8, convrot_groupsize=64),
     ("'asym_w4a8_int8'", "'weight_s_rel' of shape (64, 4)", "(64, 8)")),
    (W4A8_TURBO, _conf(format="asym_w4a8_int8", group_size=24, convrot_groupsize=64),
     ("'asym_w4a8_int8'", "groups of 24 inputs")),
    (W4A8_TURBO, lambda s: s.pop(f"{LAYER}.weight_s_channel"), ("'asym_w4a8_int8'", "no 'layers.0.attention.out.weight_s_channel'")),
    (W4A8_TURBO, _set("weight_codebook", torch.zeros(8)), ("'asym_w4a8_int8'", "'weight_codebook' of shape (8,)")),
    (W4A8_TURBO, _set("weight_correction", torch.zeros(4, 64)), ("'asym_w4a8_int8'", "'weight_correction'",
                                                                  "does not read")),
    (W4A8_TURBO, _set("weight_scale", torch.ones(64)), ("'weight_scale' tensor", "'asym_w4a8_int8' does not use")),
    (W4A8_TURBO, _conf(format="asym_w4a8_int8", group_size=16, convrot_groupsize=16 * 2),
     ("'asym_w4a8_int8'", "ConvRot groups of 32")),
])
def test_malformed_4bit_layers_are_refused(models, tmp_path, source, edit, words):
    path = _edited(models, tmp_path, source, edit)
    refused(load_transformer_file, path, f"layer '{LAYER}'", "edited.safetensors", *words)


def test_a_4bit_text_encoder_layer_is_checked_too(models, tmp_path):
    layer = "model.layers.0.self_attn.o_proj"
    state = load_file(str(models / W4A8_TEXT_ENCODER))
    state[f"{layer}.weight_s_rel"] = state[f"{layer}.weight_s_rel"][:, :1].contiguous()
    path = tmp_path / "te.safetensors"
    save_file(state, str(path))
    refused(load_text_encoder_file, path, "layers.0.self_attn.o_proj", "'asym_w4a8_int8'", "'weight_s_rel' of shape")


# ---------------------------------------------------------------------------------------------
# LoRA: dequantize, patch, requantize with stochastic rounding, as ComfyUI 0.33 does
# ---------------------------------------------------------------------------------------------

def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


@pytest.mark.parametrize("run_name, fmt", [("x1_convrot_w4a4_lora", "convrot_w4a4"), ("x2_asym_w4a8_lora", "asym_w4a8")])
def test_a_lora_patches_4bit_weights_as_comfyui_does_and_is_undone(models, run_name, fmt):
    """Every 4-bit weight ComfyUI 0.33 patched (the fused qkv as one weight) equals graphrun's, bit for bit:
    W4A4 codes and row scales; W4A8 the int8 grid it computes with and its row scales."""
    recorded = json.loads((REF / "patched_weights.json").read_text())[run_name]
    model = _load(models, "transformer", fmt)
    modules = dict(model.named_modules())
    before = {name: m.q_data.clone() for name, m in modules.items() if isinstance(m, (W4A4Linear, Int8Linear))}
    checked = 0
    with patched(model, ((load_lora(models / "loras" / LORA.name), 0.8),)):
        for key, entry in recorded.items():
            if "codes_sha256" not in entry:
                continue
            layer = key.removeprefix("diffusion_model.").removesuffix(".weight")
            base = layer.rsplit(".", 1)[0]
            parts = ([modules[layer]] if layer in modules else
                     [modules[f"{base}.to_{p}"] for p in "qkv"] if layer.endswith(".qkv") else [modules[f"{base}.to_out.0"]])
            codes = torch.cat([m.q_data for m in parts])
            scale = torch.cat([m.q_scale.view(torch.float32).reshape(-1) for m in parts])
            if fmt == "convrot_w4a4":
                assert (_sha(codes), _sha(scale)) == (entry["codes_sha256"], entry["scale_sha256"]), key
            else:
                assert (_sha(codes), _sha(scale)) == (entry["int8_grid_sha256"], entry["s_channel_sha256"]), key
            checked += 1
    assert checked == 21
    assert all(torch.equal(modules[name].q_data, data) for name, data in before.items())


def test_a_lora_on_a_w4a4_layer_comfyui_cannot_requantize_is_refused(models, tmp_path):
    """ComfyUI 0.33's 4-bit quantizer needs the inputs to be a multiple of 64 (its int4 group)."""
    from graphrun.nodes.lora import LoraError

    model = load_text_encoder_file(models / W4A4_TEXT_ENCODER, "cpu", "fp32").text_encoder
    layer, module = next((name, m) for name, m in model.named_modules()
                         if isinstance(m, W4A4Linear) and m.in_features % 64)
    rank = 2
    lora_path = tmp_path / "te_lora.safetensors"
    save_file({f"text_encoders.qwen3_4b.transformer.model.{layer}.lora_down.weight": torch.full((rank, module.in_features), 0.01),
               f"text_encoders.qwen3_4b.transformer.model.{layer}.lora_up.weight": torch.full((module.out_features, rank), 0.01)},
              str(lora_path))
    with pytest.raises(LoraError) as err:
        with patched(model, ((load_lora(lora_path), 1.0),)):
            pass
    for word in ("te_lora.safetensors", "convrot_w4a4", f"'{layer}'", "multiple of 64"):
        assert word in str(err.value), (word, str(err.value))
