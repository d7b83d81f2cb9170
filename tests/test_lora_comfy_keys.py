"""LoRA keys exactly as ComfyUI reads them for Z-Image, and LoRA on the Qwen3 text encoder.

ComfyUI's rules (comfy/lora.py model_lora_keys_unet / model_lora_keys_clip, comfy/utils.py
z_image_to_diffusers) are restated in graphrun.nodes.lora; these tests pin the consequences: which
spellings apply, that the ignored ones change nothing (with one warning), that every applied layout
gives the same picture, and that `strength_clip` patches the encoder with W + s·(α/r)·up@down.
The transformer's table is the same in ComfyUI v0.18.1 and 0.33 (the default); tests of the text
encoder that rely on v0.18.1 ignoring kohya `lora_te_*` keys run with `comfy: 0.18.1` (0.33's kohya
keys: tests/test_lora_te_keys.py).
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import graphrun
from graphrun.engine.context import RunOptions
from graphrun.engine.executor import NodeFailed, Runner
from graphrun.nodes.lora import LoraError, LoraWarning, check_lora, key_map, load_lora, match_lora
from graphrun.nodes.lora_patching import patched
from graphrun.nodes.zimage import loading, lora_keys, text
from graphrun.nodes.zimage.tiny_loras import IGNORED_LAYOUTS, canonical_pairs, write_comfy_ignored_loras, write_test_loras

torch.set_num_threads(1)

SEED = 20240607
APPLIED = ["peft", "peft_bare_default", "kohya", "lycoris", "diffusion_model_ab", "diffusion_model_updown",
           "diffusion_model_diffusers_names"]
PROMPT = "a red fox in the snow"


@pytest.fixture(scope="module")
def parts() -> loading.ZImageParts:
    return loading.load_tiny("cpu", "fp32")


@pytest.fixture(scope="module")
def lora_dir(parts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("loras")
    write_test_loras(parts.transformer, out, seed=SEED)
    write_comfy_ignored_loras(parts.transformer, out, seed=SEED)
    return out


def _path(lora_dir: Path, layout: str) -> str:
    return str(lora_dir / f"tiny_lora_{layout}.safetensors")


def _graph(lora: str, strength_model: float = 1.0, strength_clip: float | None = None, prompt: str = PROMPT,
           comfy: str | None = None) -> dict:
    """64x64, one step; LoadLora on the model, and on the clip when strength_clip is given; `comfy`: the
    ComfyUI version followed (None: the default)."""
    lora_node = {"type": "LoadLora", "model": "zimage.model", "name": lora, "strength_model": strength_model}
    clip = "zimage.clip"
    if strength_clip is not None:
        lora_node |= {"clip": "zimage.clip", "strength_clip": strength_clip}
        clip = "lora.clip"
    return {
        "graph": "lora_keys",
        **({"comfy": comfy} if comfy else {}),
        "nodes": {
            "zimage": {"type": "LoadZImage", "path": "tiny"},
            "lora": lora_node,
            "positive": {"type": "TextEncode", "clip": clip, "text": prompt},
            "negative": {"type": "ConditioningZeroOut", "conditioning": "positive"},
            "empty": {"type": "EmptyLatent", "width": 64, "height": 64},
            "sample": {"type": "Sampler", "model": "lora.model", "positive": "positive", "negative": "negative",
                       "latent": "empty", "seed": 1, "steps": 1, "cfg": 1.0, "sampler": "euler"},
            "decode": {"type": "VAEDecode", "vae": "zimage.vae", "latent": "sample"},
            "save": {"type": "SaveImage", "images": "decode", "filename_prefix": "k"},
        },
    }


def _run(doc: dict, out: Path, runner: Runner | None = None):
    runner = runner or Runner(RunOptions(output_dir=out))
    result = graphrun.load(doc, runner=runner).run()
    with Image.open(result.files[0]) as img:
        image = np.asarray(img.convert("RGB"))
    cond = runner.cache.get(result.keys["positive"])[0].entries[0].tensor
    return image, cond


@pytest.fixture(scope="module")
def base(tmp_path_factory, lora_dir):
    """Image and conditioning with a LoRA that changes nothing (strength 0 everywhere)."""
    return _run(_graph(_path(lora_dir, "peft"), 0.0), tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def peft_image(tmp_path_factory, lora_dir):
    return _run(_graph(_path(lora_dir, "peft")), tmp_path_factory.mktemp("peft"))[0]


# --- ComfyUI's prefix table ----------------------------------------------------------------------


def test_prefix_table_is_comfyuis(parts):
    """The forms ComfyUI v0.18.1 maps for Z-Image (model_lora_keys_unet: diffusion_model./lora_unet_ over
    its own state dict; the Lumina2 branch: bare, transformer., diffusion_model., lycoris_ over
    z_image_to_diffusers) and nothing else."""
    table = key_map(parts.transformer).prefixes
    present = [
        "diffusion_model.layers.0.attention.qkv", "lora_unet_layers_0_attention_qkv",  # ComfyUI's own names
        "diffusion_model.layers.0.attention.out", "lora_unet_x_embedder", "diffusion_model.final_layer.linear",
        "layers.0.attention.to_q", "transformer.layers.0.attention.to_k", "diffusion_model.layers.0.attention.to_v",
        "lycoris_layers_0_attention_to_out_0", "all_x_embedder.2-1", "transformer.all_final_layer.2-1.linear",
        "layers.0.feed_forward.w1", "noise_refiner.0.adaLN_modulation.0", "t_embedder.mlp.2", "cap_embedder.1",
        "diffusion_model.x_embedder.bias", "diffusion_model.x_pad_token",  # non-weight keys under their own name
    ]
    absent = [
        "layers.0.attention.qkv", "layers.0.attention.out", "x_embedder", "final_layer.linear",  # bare native
        "transformer.layers.0.attention.qkv", "lycoris_layers_0_attention_qkv", "lora_unet_layers_0_attention_to_q",
        "base_model.model.layers.0.attention.to_q", "model.diffusion_model.layers.0.attention.qkv",
        "unet.layers.0.attention.to_q", "lora_transformer_layers_0_attention_to_q",
        "context_refiner.0.adaLN_modulation.0",  # listed by ComfyUI, but the context refiner has no such weight
    ]
    assert [p for p in present if p not in table] == []
    assert [p for p in absent if p in table] == []
    assert table["layers.0.attention.to_k"].offset == (64, 64)
    assert table["layers.0.attention.to_k"].weight == "diffusion_model.layers.0.attention.qkv.weight"
    # every weight of ComfyUI's model (65 for the tiny one) under two names, plus the diffusers aliases
    assert len(key_map(parts.transformer).weights) == 65


def test_text_encoder_table_is_comfyuis(parts):
    """model_lora_keys_clip for Z-Image's Qwen3 in v0.18.1: `text_encoders.<state dict key>` and the same
    without the `qwen3_4b.` wrapper; no kohya `lora_te_*` keys (0.33 adds them: test_lora_te_keys.py)."""
    table = key_map(parts.text_encoder, "0.18.1").prefixes
    te_weights = [n for n, _ in parts.text_encoder.named_parameters()]
    assert len(table) == 2 * len(te_weights)
    for name in ("layers.0.self_attn.q_proj", "layers.1.mlp.down_proj", "embed_tokens", "norm"):
        assert f"text_encoders.transformer.model.{name}" in table
        assert f"text_encoders.qwen3_4b.transformer.model.{name}" in table
    assert not any(p.startswith(("lora_te", "text_encoders.model.", "text_encoder.")) for p in table)
    assert key_map(parts.text_encoder, "2025.10").prefixes == table


def test_transformer_table_is_the_same_in_0_33(parts):
    """ComfyUI 0.33 changed model_lora_keys_unet only for other families (Krea2, ErnieImage, LTXV)."""
    assert key_map(parts.transformer, "0.33") is key_map(parts.transformer, "0.18.1")


# --- keys ComfyUI ignores ------------------------------------------------------------------------


def _comfy_applies(module: str) -> bool:
    """Bare, transformer., kohya and lycoris spellings only reach the weights whose original and diffusers
    names agree (feed_forward, adaLN_modulation, t_embedder, cap_embedder)."""
    return not lora_keys.is_native_name(lora_keys.diffusers_to_native(module)[0]) and lora_keys.diffusers_to_native(module)[1] is None


@pytest.mark.parametrize("layout", IGNORED_LAYOUTS)
def test_keys_comfyui_ignores_are_ignored_with_one_warning(parts, lora_dir, layout, tmp_path):
    lora = load_lora(_path(lora_dir, layout))
    linear = [n for n, m in parts.transformer.named_modules() if isinstance(m, torch.nn.Linear)]
    expected = [] if layout in ("peft_base_model", "model_diffusion_model") else [n for n in linear if _comfy_applies(n)]
    if not expected:
        with pytest.raises(LoraError, match="matched none.*ComfyUI 0.33 would ignore every key of it too"):
            check_lora(lora, [parts.transformer])
        return
    with pytest.warns(LoraWarning, match="keys are not applied, and ComfyUI 0.33 ignores them too") as record:
        (match,) = check_lora(lora, [parts.transformer])
    assert len(record) == 1
    assert sorted(match.params) == sorted(f"{n}.weight" for n in expected)
    assert "layers.0.feed_forward.w1.weight" in match.params and "layers.0.attention.to_q.weight" not in match.params
    ignored = [k for k in lora.keys if k not in match.used_keys]
    assert any(".qkv" in k or "_qkv" in k or "to_q" in k for k in ignored)
    # the ignored keys change nothing: the weights equal those of a file holding only the used keys
    used_only = tmp_path / "used.safetensors"
    save_file({k: v for k, v in load_file(_path(lora_dir, layout)).items() if k in match.used_keys}, str(used_only))
    with patched(parts.transformer, [(lora, 1.0)]):
        full = {k: v.clone() for k, v in parts.transformer.state_dict().items()}
    with patched(parts.transformer, [(load_lora(used_only), 1.0)]):
        for key, value in parts.transformer.state_dict().items():
            assert torch.equal(value, full[key]), key


def test_bare_native_qkv_lora_matches_nothing_as_in_comfyui(lora_dir, tmp_path):
    """The tiny `comfy_native_qkv` file (bare `layers.0.attention.qkv.lora_A.weight`): ComfyUI (v0.18.1 and
    0.33) logs 'lora key not loaded' for every key and renders the plain image; graphrun refuses the file."""
    with pytest.raises(NodeFailed, match="matched none.*ComfyUI 0.33 would ignore every key of it too"):
        _run(_graph(_path(lora_dir, "comfy_native_qkv")), tmp_path)
    with pytest.raises(NodeFailed, match="matched none.*ComfyUI v0.18.1 would ignore every key of it too"):
        _run(_graph(_path(lora_dir, "comfy_native_qkv"), comfy="0.18.1"), tmp_path)


def test_bare_native_keys_leave_the_image_unchanged(lora_dir, base, tmp_path):
    """Bare native qkv keys next to one key ComfyUI does read (a zero update): the run warns once, naming
    the ignored keys, and the image is exactly the one without a LoRA."""
    tensors = load_file(_path(lora_dir, "comfy_native_qkv"))
    tensors["diffusion_model.layers.0.feed_forward.w1.lora_A.weight"] = torch.ones(4, 64)
    tensors["diffusion_model.layers.0.feed_forward.w1.lora_B.weight"] = torch.zeros(170, 4)
    path = tmp_path / "bare_plus_zero.safetensors"
    save_file(tensors, str(path))
    with pytest.warns(UserWarning, match=r"node 'lora' \(LoadLora\): LoRA 'bare_plus_zero.safetensors': 8 of 10 keys "
                                         r"are not applied, and ComfyUI 0.33 ignores them too.*layers\.0\.attention\.qkv"):
        image, _ = _run(_graph(str(path)), tmp_path)
    assert np.array_equal(image, base[0])


# --- supported layouts ----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", [layout for layout in APPLIED if layout != "peft"])
def test_every_applied_layout_gives_the_peft_image(lora_dir, peft_image, base, layout, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", LoraWarning)
        image, _ = _run(_graph(_path(lora_dir, layout)), tmp_path)
    assert np.array_equal(image, peft_image), layout
    assert not np.array_equal(image, base[0])


def test_diff_keys_are_applied(parts, tmp_path):
    """`.diff` (full weight difference) and `.diff_b` (bias difference) keys, which ComfyUI applies."""
    w = parts.transformer.layers[0].adaLN_modulation[0]
    diff, diff_b = torch.randn(w.weight.shape, generator=torch.Generator().manual_seed(0)), torch.full_like(w.bias, 0.5)
    path = tmp_path / "diff.safetensors"
    save_file({"diffusion_model.layers.0.adaLN_modulation.0.diff": diff,
               "diffusion_model.layers.0.adaLN_modulation.0.diff_b": diff_b}, str(path))
    before = w.weight.detach().clone(), w.bias.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error", LoraWarning)
        check_lora(load_lora(path), [parts.transformer])
    with patched(parts.transformer, [(load_lora(path), 0.5)]):
        assert torch.equal(w.weight, before[0] + 0.5 * diff)
        assert torch.equal(w.bias, before[1] + 0.5 * diff_b)
    assert torch.equal(w.weight, before[0]) and torch.equal(w.bias, before[1])


def test_last_listed_prefix_wins_for_one_weight(parts, lora_dir, tmp_path):
    """Two spellings of the same weight in one file (`diffusion_model.D` and bare `D`): ComfyUI keeps the
    patch of the prefix its table lists later (bare) and counts both as loaded."""
    pairs = canonical_pairs(parts.transformer, SEED)
    down, up = pairs["layers.0.feed_forward.w2"]
    path = tmp_path / "twice.safetensors"
    save_file({"diffusion_model.layers.0.feed_forward.w2.lora_A.weight": down.clone(),
               "diffusion_model.layers.0.feed_forward.w2.lora_B.weight": (3 * up).contiguous(),
               "layers.0.feed_forward.w2.lora_A.weight": down.clone(),
               "layers.0.feed_forward.w2.lora_B.weight": up.contiguous()}, str(path))
    match = match_lora(parts.transformer, load_lora(path))
    assert len(match.patches) == 1 and match.patches[0].keys[1] == "layers.0.feed_forward.w2.lora_B.weight"
    assert len(match.used_keys) == 4


# --- LoRA on the text encoder ----------------------------------------------------------------------


def _te_lora(parts, path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor, float | None]]:
    """A text-encoder LoRA over every Linear of the Qwen3 encoder, alternating ComfyUI's two prefixes
    and lora_A/B vs lora_down/up (+alpha) spellings; plus kohya `lora_te_*` keys ComfyUI v0.18.1 ignores
    (with a shape that does not fit: ComfyUI 0.33 would try to apply them, graphrun refuses them there).
    Returns {parameter: (down, up, alpha)}."""
    gen = torch.Generator().manual_seed(5)
    tensors: dict[str, torch.Tensor] = {}
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor, float | None]] = {}
    linears = [n for n, m in parts.text_encoder.named_modules() if isinstance(m, torch.nn.Linear)]
    for i, name in enumerate(linears):
        out_f, in_f = parts.text_encoder.get_submodule(name).weight.shape
        down, up = torch.randn(4, in_f, generator=gen) * 0.3, torch.randn(out_f, 4, generator=gen) * 0.3
        if i % 2:
            prefix = f"text_encoders.qwen3_4b.transformer.model.{name}"
            tensors |= {f"{prefix}.lora_down.weight": down, f"{prefix}.lora_up.weight": up,
                        f"{prefix}.alpha": torch.tensor(2.0)}
            pairs[f"{name}.weight"] = (down, up, 2.0)
        else:
            prefix = f"text_encoders.transformer.model.{name}"
            tensors |= {f"{prefix}.lora_A.weight": down, f"{prefix}.lora_B.weight": up}
            pairs[f"{name}.weight"] = (down, up, None)
    tensors["lora_te_layers_0_self_attn_q_proj.lora_down.weight"] = torch.ones(4, 32)
    tensors["lora_te_layers_0_self_attn_q_proj.lora_up.weight"] = torch.ones(64, 4)
    save_file(tensors, str(path))
    return pairs


def _formula_encoder(parts, pairs, strength: float) -> torch.nn.Module:
    """A copy of the encoder patched by hand: W + s·(α/r)·(up @ down) in float32, cast back."""
    encoder = copy.deepcopy(parts.text_encoder)
    params = dict(encoder.named_parameters())
    with torch.no_grad():
        for name, (down, up, alpha) in pairs.items():
            scale = 1.0 if alpha is None else alpha / down.shape[0]
            w = params[name]
            w.copy_((w.detach().float() + (strength * scale) * torch.mm(up, down)).to(w.dtype))
    return encoder


def test_strength_clip_patches_the_text_encoder_exactly(parts, base, tmp_path):
    """v0.18.1 (the kohya key is ignored there); 0.33's arithmetic is the same (test_lora_te_keys.py)."""
    path = tmp_path / "te_lora.safetensors"
    pairs = _te_lora(parts, path)
    original = {k: v.clone() for k, v in parts.text_encoder.state_dict().items()}
    runner = Runner(RunOptions(output_dir=tmp_path))
    conds = {}
    for strength in (0.7, -1.5):
        with pytest.warns(UserWarning, match=r"2 of \d+ keys are not applied, and ComfyUI v0.18.1 ignores them too.*: "
                                             r"lora_te_layers_0.*kohya `lora_te\*` keys are not read"):
            _, conds[strength] = _run(_graph(str(path), 1.0, strength, comfy="0.18.1"), tmp_path, runner)
        expected = text.encode_prompt((_formula_encoder(parts, pairs, strength), parts.tokenizer), PROMPT)
        assert torch.equal(conds[strength], expected), strength
    assert not torch.equal(conds[0.7], conds[-1.5])  # another strength re-encoded (not served from cache)
    assert (conds[0.7] - base[1]).abs().max() > 1e-2
    with pytest.warns(UserWarning, match="lora_te_layers_0"):
        _, zero = _run(_graph(str(path), 1.0, 0.0, comfy="0.18.1"), tmp_path, runner)
    assert torch.equal(zero, base[1])  # strength_clip 0 is no LoRA on the encoder
    for key, value in parts.text_encoder.state_dict().items():  # the shared encoder is left as it was
        assert torch.equal(value, original[key]), key


def test_text_encoder_keys_need_a_clip(parts, base, tmp_path):
    """LoraLoaderModelOnly (no clip): ComfyUI's table has no text-encoder prefixes, so a text-encoder-only
    LoRA changes nothing ("lora key not loaded", the workflow still runs); graphrun warns and the image
    is the no-LoRA image."""
    path = tmp_path / "te_only.safetensors"
    _te_lora(parts, path)
    with pytest.warns(UserWarning, match="none of its 37 text-encoder keys is applied.*apply only with a CLIP connected"):
        image, cond = _run(_graph(str(path)), tmp_path)
    assert np.array_equal(image, base[0]) and torch.equal(cond, base[1])


@pytest.mark.parametrize("comfy, note", [
    ("0.18.1", "kohya `lora_te\\*` keys are not read for Z-Image's Qwen3 encoder by ComfyUI v0.18.1"),
    (None, "ComfyUI 0.33 reads kohya keys only as `lora_te_<module>`.*`lora_te_model_\\*`"),
])
def test_kohya_text_encoder_only_lora_is_a_no_op_as_in_comfyui(parts, base, tmp_path, comfy, note):
    """Only kohya `lora_te_model_*` keys (the module path with transformers' `model.` wrapper): neither
    ComfyUI v0.18.1 nor 0.33 reads them for Qwen3 (0.33 names the weights below `...transformer.model.`,
    see tests/data/comfy/v0.33/te_lora), and the workflow runs unchanged, so graphrun warns (naming them)
    and gives the no-LoRA image and conditioning."""
    path = tmp_path / "kohya_te.safetensors"
    save_file({"lora_te_model_layers_0_self_attn_q_proj.lora_down.weight": torch.ones(2, 32),
               "lora_te_model_layers_0_self_attn_q_proj.lora_up.weight": torch.ones(32, 2),
               "lora_te_model_layers_0_self_attn_q_proj.alpha": torch.tensor(2.0)}, str(path))
    with pytest.warns(UserWarning, match=f"lora_te_model_layers_0_self_attn_q_proj.*{note}"):
        image, cond = _run(_graph(str(path), 1.0, 1.0, comfy=comfy), tmp_path)
    assert np.array_equal(image, base[0]) and torch.equal(cond, base[1])


def test_model_and_text_encoder_patches_together(parts, lora_dir, peft_image, tmp_path):
    """One file with transformer and text-encoder keys: both apply, each at its own strength (v0.18.1,
    which ignores the file's mis-shaped kohya key)."""
    te_path = tmp_path / "te.safetensors"
    pairs = _te_lora(parts, te_path)
    both = tmp_path / "both.safetensors"
    save_file({**load_file(_path(lora_dir, "peft")), **load_file(str(te_path))}, str(both))
    with pytest.warns(UserWarning, match="lora_te_layers_0"):
        _, cond = _run(_graph(str(both), 1.0, 0.25, comfy="0.18.1"), tmp_path)
    assert torch.equal(cond, text.encode_prompt((_formula_encoder(parts, pairs, 0.25), parts.tokenizer), PROMPT))
    with pytest.warns(UserWarning, match="lora_te_layers_0"):
        image, _ = _run(_graph(str(both), 1.0, 0.0, comfy="0.18.1"), tmp_path)
    assert np.array_equal(image, peft_image)  # strength_clip 0: the model part alone
