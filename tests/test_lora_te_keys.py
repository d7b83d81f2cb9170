"""Kohya text-encoder LoRA keys (`lora_te_*`) on Z-Image's Qwen3 encoder, as ComfyUI 0.33 applies them.

ComfyUI 0.33 (commit 0a7d2ffd, PR #13847) maps `lora_te_<module with _>` to every weight of a text
encoder whose state dict has one top-level prefix (Z-Image's `qwen3_4b.`), the module named below
`qwen3_4b.transformer.model.`; LoraLoader patches it at `strength_clip`. ComfyUI v0.18.1 ignores
those keys ("lora key not loaded"). The reference data in tests/data/comfy/v0.33/te_lora/ comes from
real ComfyUI 0.33 and v0.18.1 on the tiny model (see its README): ComfyUI's key table for the tiny
encoder, the PNGs of the p2 turbo graph at 256x256 with the tiny `kohya_te` LoRA, and the positive
conditioning of each run.
"""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import graphrun
from graphrun.engine.context import RunOptions
from graphrun.engine.executor import Runner
from graphrun.nodes.lora import LoraWarning, check_lora, key_map, load_lora, match_lora
from graphrun.nodes.lora_patching import patched
from graphrun.nodes.zimage import loading
from graphrun.nodes.zimage.tiny_loras import RANK, TE_ALPHA, text_encoder_pairs, write_test_loras

torch.set_num_threads(1)

DATA = Path(__file__).parent / "data" / "comfy"
TE_LORA = DATA / "v0.33" / "te_lora"
PIPELINE_MODELS = DATA / "v0.18.1" / "pipeline" / "models"
LORA_FILE = TE_LORA / "models" / "loras" / "tiny_lora_kohya_te.safetensors"
TE_LINEARS = 14  # q/k/v/o and gate/up/down of the tiny encoder's two layers
IGNORED_BY_V0181 = 3 * TE_LINEARS  # lora_down, lora_up and alpha of each


@pytest.fixture(scope="module")
def parts() -> loading.ZImageParts:
    return loading.load_tiny("cpu", "fp32")


@pytest.fixture(scope="module")
def comfy_cond() -> dict[str, torch.Tensor]:
    """ComfyUI's positive conditioning: `v0.33_both`, `v0.33_te_only` and `none` (no LoRA, which is also
    v0.18.1's conditioning of both workflows)."""
    return load_file(str(TE_LORA / "conditioning.safetensors"))


def _workflow(name: str = "workflow.api.json", **lora_inputs: float) -> dict:
    workflow = json.loads((TE_LORA / name).read_text())
    workflow["11"]["inputs"].update(lora_inputs)
    return workflow


def _small(workflow: dict) -> dict:
    """The same graph at 64x64 and one step: for checks of the conditioning only."""
    workflow = copy.deepcopy(workflow)
    workflow["7"]["inputs"].update(width=64, height=64)
    workflow["8"]["inputs"]["steps"] = 1
    return workflow


def _run(workflow: dict, out: Path, comfy: str | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """Run an API workflow on the tiny models and this folder's LoRA; its PNG and positive conditioning."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "workflow.api.json").write_text(json.dumps(workflow))
    options = RunOptions(output_dir=out, comfy=comfy,
                         extra={"models_dirs": [str(PIPELINE_MODELS), str(TE_LORA / "models")]})
    runner = Runner(options)
    result = graphrun.load(out / "workflow.api.json", runner=runner).run()
    (png,) = result.files
    image = np.asarray(Image.open(png).convert("RGB"))
    return image, runner.cache.get(result.keys["positive"])[0].entries[0].tensor


def _assert_pixels(image: np.ndarray, reference: Path) -> None:
    """The pixel criterion of the reference data: >= 99.9 % identical uint8 values, none off by more than 2."""
    expected = np.asarray(Image.open(reference).convert("RGB"))
    assert image.shape == expected.shape
    diff = np.abs(image.astype(np.int16) - expected.astype(np.int16))
    identical, worst = float((diff == 0).mean()), int(diff.max())
    assert identical >= 0.999 and worst <= 2, f"{reference.name}: {identical:.4%} identical, max diff {worst}"


def _assert_close(cond: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    assert cond.shape == reference.shape, what
    relative = float((cond - reference).abs().max() / reference.abs().max())
    assert relative <= 1e-5, f"{what}: {relative:.2e} relative"


# --- ComfyUI's key table ----------------------------------------------------------------------------


@pytest.mark.parametrize("comfy", ["0.33", "0.18.1"])
def test_text_encoder_table_is_comfyuis_entry_for_entry(parts, comfy):
    """graphrun's prefixes, in order, name the same state-dict keys as real ComfyUI's
    model_lora_keys_clip for the tiny encoder (0.33: 72 entries, the last 24 `lora_te_*`; v0.18.1: 48)."""
    expected = json.loads((TE_LORA / "clip_key_map.json").read_text())[comfy]
    table = key_map(parts.text_encoder, comfy).prefixes
    assert [[prefix, target.weight] for prefix, target in table.items()] == expected
    if comfy == "0.33":
        q_proj = table["lora_te_layers_0_self_attn_q_proj"]
        assert q_proj.weight == "qwen3_4b.transformer.model.layers.0.self_attn.q_proj.weight"
        assert q_proj.params == (("layers.0.self_attn.q_proj.weight", None),)
        assert "lora_te_model_layers_0_self_attn_q_proj" not in table and "lora_te1_layers_0_self_attn_q_proj" not in table


def test_tiny_kohya_te_lora_is_write_test_loras_output(parts, tmp_path):
    """The stored file is `write_test_loras(..., text_encoder=...)`'s `kohya_te` layout (so `tiny:kohya_te`
    is the same LoRA): the `kohya` transformer update plus `lora_te_*` pairs with alpha for every Linear."""
    paths = write_test_loras(parts.transformer, tmp_path, text_encoder=parts.text_encoder)
    written, stored = load_file(str(paths["kohya_te"])), load_file(str(LORA_FILE))
    assert sorted(written) == sorted(stored)
    assert all(torch.equal(written[k], stored[k]) for k in stored)
    te_keys = [k for k in stored if k.startswith("lora_te_")]
    assert len(te_keys) == IGNORED_BY_V0181
    kohya = load_file(str(paths["kohya"]))
    assert sorted(k for k in stored if not k.startswith("lora_te_")) == sorted(kohya)


def test_kohya_te_patch_is_comfyuis_formula(parts):
    """W + strength·(alpha/rank)·(up @ down) in float32 for every Linear of the encoder, put back after."""
    lora = load_lora(LORA_FILE)
    assert len(match_lora(parts.text_encoder, lora).weights) == TE_LINEARS
    params = dict(parts.text_encoder.named_parameters())
    before = {name: p.detach().clone() for name, p in params.items()}
    pairs = text_encoder_pairs(parts.text_encoder)
    with patched(parts.text_encoder, [(lora, 0.9)]):
        for module, (down, up) in pairs.items():
            weight = f"{module}.weight"
            expected = before[weight] + (0.9 * (TE_ALPHA / RANK)) * torch.mm(up, down)
            assert torch.equal(params[weight], expected), module
    assert all(torch.equal(params[name], before[name]) for name in params)


# --- against real ComfyUI ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, png, cond", [
    ("workflow.api.json", "v0.33_both.png", "v0.33_both"),  # strength_model 0.7, strength_clip 0.9
    ("workflow_te_only.api.json", "v0.33_te_only.png", "v0.33_te_only"),  # 0 / 1: the encoder alone
])
def test_default_follows_comfyui_0_33(tmp_path, comfy_cond, name, png, cond):
    with warnings.catch_warnings():
        warnings.simplefilter("error", LoraWarning)  # every key of the file applies
        image, positive = _run(_workflow(name), tmp_path)
    _assert_pixels(image, TE_LORA / png)
    _assert_close(positive, comfy_cond[cond], cond)
    assert float((positive - comfy_cond["none"]).abs().max()) > 0.1 * float(comfy_cond["none"].abs().max())


def test_v0_18_1_ignores_the_kohya_te_keys_with_a_warning(tmp_path, comfy_cond):
    """`--comfy 0.18.1`: the picture is v0.18.1's (the transformer part alone), the conditioning the
    no-LoRA one, and the warning names the 42 keys v0.18.1 logs as 'lora key not loaded'."""
    with pytest.warns(UserWarning, match=rf"LoRA 'tiny_lora_kohya_te.safetensors': {IGNORED_BY_V0181} of \d+ keys are "
                                         r"not applied, and ComfyUI v0.18.1 ignores them too.*"
                                         r"lora_te_layers_0_mlp_down_proj\.alpha.*Note: kohya `lora_te\*` keys are not "
                                         rf"read .*\(ComfyUI 0.33 reads {IGNORED_BY_V0181} of these keys: run with "
                                         r"--comfy 0.33") as caught:
        image, positive = _run(_workflow(), tmp_path, comfy="0.18.1")
    assert len([w for w in caught if "tiny_lora_kohya_te" in str(w.message)]) == 1
    _assert_pixels(image, TE_LORA / "v0.18.1_both.png")
    _assert_close(positive, comfy_cond["none"], "v0.18.1")


@pytest.mark.parametrize("comfy", [None, "0.18.1"])
def test_strength_clip_zero_gives_the_no_lora_conditioning(tmp_path, comfy_cond, comfy):
    workflow = _small(_workflow(strength_clip=0.0))
    if comfy is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error", LoraWarning)
            _, positive = _run(workflow, tmp_path, comfy)
    else:
        with pytest.warns(UserWarning, match="lora_te_layers_0"):
            _, positive = _run(workflow, tmp_path, comfy)
    _assert_close(positive, comfy_cond["none"], "strength_clip 0")
    del workflow["11"]
    workflow["4"]["inputs"]["model"], workflow["5"]["inputs"]["clip"] = ["1", 0], ["2", 0]
    assert torch.equal(positive, _run(workflow, tmp_path / "plain", comfy)[1])


# --- keys 0.33 still ignores ------------------------------------------------------------------------


def test_other_kohya_spellings_stay_ignored_in_0_33(parts, tmp_path):
    """`lora_te1_*` and `lora_te_model_*` (transformers' `model.` wrapper kept) name no weight in 0.33's
    table: ignored, named in the warning with the spelling 0.33 reads; the `lora_te_*` keys still apply."""
    tensors = load_file(str(LORA_FILE))
    renamed = {}
    for key, value in tensors.items():
        if key.startswith("lora_te_layers_0_self_attn_"):
            key = "lora_te1_" + key[len("lora_te_"):]
        elif key.startswith("lora_te_layers_0_mlp_"):
            key = "lora_te_model_" + key[len("lora_te_"):]
        renamed[key] = value
    path = tmp_path / "spellings.safetensors"
    save_file(renamed, str(path))
    lora = load_lora(path)
    with pytest.warns(LoraWarning, match=r"21 of \d+ keys are not applied, and ComfyUI 0.33 ignores them too.*"
                                         r"lora_te1_layers_0_self_attn.*ComfyUI 0.33 reads kohya keys only as "
                                         r"`lora_te_<module>`") as caught:
        _, te_match = check_lora(lora, [parts.transformer, parts.text_encoder])
    assert len(caught) == 1
    assert sorted(te_match.weights) == sorted(f"qwen3_4b.transformer.model.layers.1.{m}.weight" for m in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))


def test_kohya_te_keys_need_a_clip(parts):
    """LoraLoaderModelOnly: no text encoder, so 0.33's `lora_te_*` keys are not loaded either."""
    with pytest.warns(LoraWarning, match=rf"{IGNORED_BY_V0181} of \d+ keys are not applied.*apply only with a CLIP"):
        (match,) = check_lora(load_lora(LORA_FILE), [parts.transformer])
    assert match.patches


def test_kohya_spelling_wins_over_text_encoders_spelling_in_0_33(parts, tmp_path):
    """One weight under `text_encoders.transformer.model.X` and `lora_te_X`: ComfyUI 0.33 lists the kohya
    prefix last, so its patch is the one applied (both count as loaded); v0.18.1 applies the other."""
    down, up = torch.ones(2, 32), torch.full((32, 2), 0.5)
    path = tmp_path / "twice.safetensors"
    save_file({"text_encoders.transformer.model.layers.0.self_attn.o_proj.lora_A.weight": down,
               "text_encoders.transformer.model.layers.0.self_attn.o_proj.lora_B.weight": up,
               "lora_te_layers_0_self_attn_o_proj.lora_down.weight": down.clone(),
               "lora_te_layers_0_self_attn_o_proj.lora_up.weight": (2 * up).contiguous()}, str(path))
    new = match_lora(parts.text_encoder, load_lora(path))
    assert len(new.patches) == 1 and new.patches[0].keys[1] == "lora_te_layers_0_self_attn_o_proj.lora_up.weight"
    assert len(new.used_keys) == 4
    old = match_lora(parts.text_encoder, load_lora(path, comfy_version="0.18.1"))
    assert len(old.patches) == 1 and old.patches[0].keys[1].startswith("text_encoders.") and len(old.used_keys) == 2
