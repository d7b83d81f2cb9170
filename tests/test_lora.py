"""LoRA loading, matching and patching on a tiny Z-Image transformer (graphrun.nodes.lora)."""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from diffusers import ZImageTransformer2DModel
from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers
from safetensors.torch import load_file, save_file

import graphrun.nodes.lora_patching as lora_module
from graphrun.nodes.lora import LoraError, LoraWarning, check_lora, load_lora, match_lora
from graphrun.nodes.lora_patching import patched
from graphrun.nodes.zimage import lora_keys
from graphrun.nodes.zimage.tiny_loras import LAYOUTS, canonical_pairs, write_test_loras

torch.set_num_threads(1)

# comfy_native_qkv holds bare `layers.N.attention.qkv` keys, which ComfyUI v0.18.1 ignores for Z-Image
MATCHING = [layout for layout in LAYOUTS if layout not in ("unmatched", "partial", "comfy_native_qkv")]
COMFY_WEIGHTS = 29  # weights ComfyUI v0.18.1 patches with these files (tests/data/comfy/v0.18.1/pipeline p6)
SEED = 20240607


def _tiny_transformer() -> ZImageTransformer2DModel:
    torch.manual_seed(0)
    return ZImageTransformer2DModel(
        all_patch_size=[2], all_f_patch_size=[1], in_channels=16, dim=64, n_layers=2, n_refiner_layers=1,
        n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=32, rope_theta=256.0,
        t_scale=1000.0, axes_dims=[8, 12, 12], axes_lens=[1536, 512, 512],
    ).eval()


@pytest.fixture(scope="module")
def transformer() -> ZImageTransformer2DModel:
    return _tiny_transformer()


@pytest.fixture(scope="module")
def lora_files(transformer, tmp_path_factory) -> dict[str, Path]:
    return write_test_loras(transformer, tmp_path_factory.mktemp("loras"), seed=SEED)


@pytest.fixture(scope="module")
def base_state(transformer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in transformer.state_dict().items()}


def _forward(model: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = [torch.randn(16, 1, 16, 16, generator=g)]
    cap = [torch.randn(8, 32, generator=g)]
    with torch.no_grad():
        return model(x, torch.tensor([0.4]), cap).sample[0]


def _linear_names(model: torch.nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def _assert_state_equal(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), f"{key} differs from the base weights"


# --- key mapping -----------------------------------------------------------------------------


def test_key_mapping_agrees_with_diffusers_converter(transformer):
    """Writing the model's weights under native names (via diffusers_to_native) and running diffusers'
    own single-file converter gives back exactly the diffusers state dict."""
    diffusers_sd = transformer.state_dict()
    native: dict[str, torch.Tensor] = {}
    fused: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for key, value in diffusers_sd.items():
        module, _, param = key.rpartition(".")
        name, third = lora_keys.diffusers_to_native(module) if module else (key, None)
        native_key = f"{name}.{param}" if module else key
        if third is None:
            native[native_key] = value
        else:
            fused.setdefault(native_key, []).append((third, value))
        # the parameter-level helper inverts it
        assert (key, third) in lora_keys.native_key_to_diffusers("model.diffusion_model." + native_key)
    for key, parts in fused.items():
        native[key] = torch.cat([v for _, v in sorted(parts, key=lambda p: p[0])])
    assert "layers.0.attention.qkv.weight" in native and "x_embedder.weight" in native
    assert "final_layer.adaLN_modulation.1.weight" in native and "layers.1.attention.out.weight" in native

    converted = convert_z_image_transformer_checkpoint_to_diffusers(dict(native))
    assert set(converted) == set(diffusers_sd)
    for key, value in converted.items():
        assert torch.equal(value, diffusers_sd[key]), key


def test_native_names_round_trip():
    assert lora_keys.native_to_diffusers("layers.3.attention.qkv") == [
        ("layers.3.attention.to_q", 0), ("layers.3.attention.to_k", 1), ("layers.3.attention.to_v", 2),
    ]
    assert lora_keys.native_to_diffusers("context_refiner.0.attention.out") == [("context_refiner.0.attention.to_out.0", None)]
    assert lora_keys.native_to_diffusers("x_embedder") == [("all_x_embedder.2-1", None)]
    assert lora_keys.native_to_diffusers("final_layer.linear") == [("all_final_layer.2-1.linear", None)]
    # diffusers names and shared names pass through untouched
    for name in ("all_x_embedder.2-1", "layers.0.attention.to_out.0", "layers.0.feed_forward.w1", "t_embedder.mlp.0"):
        assert lora_keys.native_to_diffusers(name) == [(name, None)]
        assert not lora_keys.is_native_name(name)
    assert lora_keys.native_to_diffusers("norm_final") == []


# --- loading and matching ----------------------------------------------------------------------


@pytest.mark.parametrize("layout", MATCHING)
def test_every_layout_matches_and_changes_output(transformer, lora_files, base_state, layout):
    lora = load_lora(lora_files[layout])
    with warnings.catch_warnings():
        warnings.simplefilter("error", LoraWarning)
        (match,) = check_lora(lora, [transformer])
    assert match.used_keys == set(lora.keys)
    assert len(match.weights) == COMFY_WEIGHTS
    assert set(match.params) == {f"{n}.weight" for n in _linear_names(transformer)}

    base_out = _forward(transformer)
    with patched(transformer, [(lora, 1.0)]):
        lora_out = _forward(transformer)
    assert (lora_out - base_out).abs().max() > 0.05, f"{layout} did not visibly change the output"
    _assert_state_equal(transformer, base_state)
    assert torch.equal(_forward(transformer), base_out)


def test_equivalent_layouts_give_identical_weights(transformer, lora_files, base_state):
    """All layouts carry the same update: every patched weight is bit-identical to PEFT's, and PEFT's
    equals W + up @ down computed here."""
    pairs = canonical_pairs(transformer, SEED)
    weight_keys = [f"{n}.weight" for n in _linear_names(transformer)]
    with patched(transformer, [(load_lora(lora_files["peft"]), 1.0)]):
        reference = {k: transformer.state_dict()[k].clone() for k in weight_keys}
    for name, (down, up) in pairs.items():
        expected = base_state[f"{name}.weight"] + torch.mm(up, down)
        torch.testing.assert_close(reference[f"{name}.weight"], expected, rtol=0, atol=1e-6)

    for layout in MATCHING:
        with patched(transformer, [(load_lora(lora_files[layout]), 1.0)]):
            state = transformer.state_dict()
            for key in weight_keys:
                assert torch.equal(state[key], reference[key]), f"{layout}: {key} differs from the PEFT layout"


def test_peft_layout_agrees_with_diffusers_loader(transformer, lora_files):
    """Cross-check the patch formula against diffusers + peft running the same file as an adapter."""
    pytest.importorskip("peft")
    with patched(transformer, [(load_lora(lora_files["peft"]), 1.0)]):
        ours = _forward(transformer)
    reference = copy.deepcopy(transformer)
    reference.load_lora_adapter(str(lora_files["peft"]), prefix="transformer")
    torch.testing.assert_close(_forward(reference), ours, rtol=0, atol=1e-3)


def test_kohya_names_resolve_against_the_model(transformer, lora_files):
    """kohya keys are ComfyUI's own module names flattened: the fused qkv is one weight whose rows
    split over diffusers' to_q/to_k/to_v, all three sharing the pair's down matrix."""
    lora = load_lora(lora_files["kohya"])
    assert "kohya" in lora.layout
    match = match_lora(transformer, lora)
    params = set(match.params)
    # underscores inside module names (feed_forward, noise_refiner, adaLN_modulation) and native spellings
    for name in ("noise_refiner.0.feed_forward.w2", "layers.1.adaLN_modulation.0", "layers.0.attention.to_v",
                 "context_refiner.0.attention.to_out.0", "all_x_embedder.2-1", "all_final_layer.2-1.adaLN_modulation.1"):
        assert f"{name}.weight" in params
    qkv = next(p for p in match.patches if p.weight == "diffusion_model.layers.0.attention.qkv.weight")
    assert qkv.keys[0] == "lora_unet_layers_0_attention_qkv.lora_down.weight"
    assert qkv.target.params == (("layers.0.attention.to_q.weight", slice(0, 64)),
                                 ("layers.0.attention.to_k.weight", slice(64, 128)),
                                 ("layers.0.attention.to_v.weight", slice(128, 192)))


def test_split_qkv_keys_patch_thirds_of_comfys_fused_weight(transformer, lora_files):
    """diffusers' to_k is, to ComfyUI, rows [dim, 2·dim) of the fused qkv weight."""
    match = match_lora(transformer, load_lora(lora_files["peft"]))
    to_k = next(p for p in match.patches if p.params == ("layers.1.attention.to_k.weight",))
    assert to_k.weight == "diffusion_model.layers.1.attention.qkv.weight"
    assert to_k.target.offset == (64, 64) and to_k.target.params == (("layers.1.attention.to_k.weight", None),)


# --- strengths, stacking, restoring ------------------------------------------------------------


def test_strength_zero_is_bit_identical(transformer, lora_files, base_state):
    lora = load_lora(lora_files["peft"])
    with patched(transformer, [(lora, 0.0)]):
        _assert_state_equal(transformer, base_state)
    with patched(transformer, [(lora, 0.0), (load_lora(lora_files["kohya"]), 0)]):
        _assert_state_equal(transformer, base_state)


def test_restores_bit_exactly_in_bf16_and_after_errors(transformer, lora_files):
    model = copy.deepcopy(transformer).to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lora = load_lora(lora_files["diffusion_model_updown"])
    with patched(model, [(lora, 0.8)]):
        w = model.layers[0].attention.to_k.weight
        assert w.dtype == torch.bfloat16 and not torch.equal(w, before["layers.0.attention.to_k.weight"])
    _assert_state_equal(model, before)

    with pytest.raises(RuntimeError, match="boom"):
        with patched(model, [(lora, 1.0)]):
            raise RuntimeError("boom")
    _assert_state_equal(model, before)


def test_stacked_loras_sum_their_deltas(transformer, lora_files, base_state, tmp_path):
    second = write_test_loras(transformer, tmp_path, seed=SEED + 99)["peft"]
    a, b = load_lora(lora_files["peft"]), load_lora(second)
    pa, pb = canonical_pairs(transformer, SEED), canonical_pairs(transformer, SEED + 99)
    with patched(transformer, [(a, 0.7), (b, -0.4)]):
        state = transformer.state_dict()
        for name in pa:
            total = base_state[f"{name}.weight"].to(torch.float32, copy=True)
            total += 0.7 * torch.mm(pa[name][1], pa[name][0])
            total += -0.4 * torch.mm(pb[name][1], pb[name][0])
            assert torch.equal(state[f"{name}.weight"], total), name
    _assert_state_equal(transformer, base_state)


def test_nested_blocks(transformer, lora_files, base_state, monkeypatch):
    a, b = load_lora(lora_files["peft"]), load_lora(lora_files["lycoris"])
    applied = []
    real_apply = lora_module._apply
    monkeypatch.setattr(lora_module, "_apply", lambda *args: applied.append(args[3]) or real_apply(*args))
    key = "layers.0.feed_forward.w1.weight"
    with patched(transformer, [(b, 0.5)]):
        b_alone = transformer.state_dict()[key].clone()
    with patched(transformer, [(a, 1.0)]):
        outer = transformer.state_dict()[key].clone()
        with patched(transformer, [(a, 1.0)]):  # same set: nothing to do
            assert torch.equal(transformer.state_dict()[key], outer)
        assert len(applied) == 2  # b alone, then a; the nested same-set block applied nothing
        assert torch.equal(transformer.state_dict()[key], outer)
        with patched(transformer, [(b, 0.5)]):  # a different set replaces it for the inner block
            assert torch.equal(transformer.state_dict()[key], b_alone)
        assert torch.equal(transformer.state_dict()[key], outer)
    _assert_state_equal(transformer, base_state)


# --- errors and warnings -----------------------------------------------------------------------


@pytest.mark.parametrize("comfy, name", [(None, "ComfyUI 0.33"), ("0.18.1", "ComfyUI v0.18.1")])
def test_unmatched_lora_is_an_error(transformer, lora_files, base_state, comfy, name):
    """The message names the ComfyUI version followed (the default, 0.33, or the one chosen)."""
    lora = load_lora(lora_files["unmatched"], comfy_version=comfy)
    with pytest.raises(LoraError) as err:
        check_lora(lora, [transformer])
    message = str(err.value)
    assert "tiny_lora_unmatched.safetensors" in message and "matched none" in message
    assert f"{name} would ignore every key of it too" in message
    assert "lora_te1_text_model_encoder_layers_0" in message and "Accepted layouts" in message
    with patched(transformer, [(lora, 1.0)]):  # nothing applies: the weights stay as they are
        _assert_state_equal(transformer, base_state)
    _assert_state_equal(transformer, base_state)


def test_partial_match_warns_once_with_keys(transformer, lora_files):
    lora = load_lora(lora_files["partial"])
    with pytest.warns(LoraWarning, match=r"tiny_lora_partial\.safetensors.*ComfyUI 0\.33 ignores them too.*"
                                         r"layers\.40\.attention\.to_q") as record:
        (match,) = check_lora(lora, [transformer])
    assert len(record) == 1 and "more)" in str(record[0].message)
    n_half = len(_linear_names(transformer)) // 2
    assert len(match.params) == n_half
    assert len(lora.keys) - len(match.used_keys) == 2 * n_half
    with warnings.catch_warnings():  # matching alone (what sampling does) never warns
        warnings.simplefilter("error", LoraWarning)
        assert match_lora(transformer, lora) is match


def test_fused_and_split_keys_both_apply_as_in_comfyui(transformer, lora_files, base_state, tmp_path):
    """A file with split to_q/to_k/to_v keys and fused `diffusion_model.…attention.qkv` keys for the same
    update: ComfyUI patches the fused weight once whole and once per third, so the update lands twice."""
    fused = {k: v for k, v in load_file(str(lora_files["diffusion_model_ab"])).items() if ".attention.qkv." in k}
    path = tmp_path / "dup.safetensors"
    save_file({**load_file(str(lora_files["peft"])), **fused}, str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", LoraWarning)  # every key is used
        (match,) = check_lora(load_lora(path), [transformer])
    pairs = canonical_pairs(transformer, SEED)
    with patched(transformer, [(load_lora(path), 1.0)]):
        state = transformer.state_dict()
        for name, (down, up) in pairs.items():
            total = base_state[f"{name}.weight"].to(torch.float32, copy=True)
            total += torch.mm(up, down)
            if name.rsplit(".", 1)[1] in ("to_q", "to_k", "to_v"):
                total += torch.mm(up, down)  # the fused pair, applied first (ComfyUI's order) and equal
            assert torch.equal(state[f"{name}.weight"], total), name
    _assert_state_equal(transformer, base_state)
    assert len(match.weights) == COMFY_WEIGHTS


def test_wrong_shapes_are_an_error(transformer, tmp_path):
    path = tmp_path / "big.safetensors"
    save_file({"transformer.layers.0.attention.to_q.lora_A.weight": torch.zeros(4, 3840),
               "transformer.layers.0.attention.to_q.lora_B.weight": torch.zeros(3840, 4)}, str(path))
    with pytest.raises(LoraError, match=r"does not fit 'layers\.0\.attention\.to_q\.weight'"):
        match_lora(transformer, load_lora(path))


def test_pickle_files_are_refused(tmp_path):
    state = {"transformer.layers.0.attention.to_q.lora_A.weight": torch.zeros(4, 64)}
    for name in ("lora.pt", "lora.ckpt", "disguised.safetensors"):
        torch.save(state, tmp_path / name)
        with pytest.raises(LoraError, match="pickle"):
            load_lora(tmp_path / name)


def test_corrupt_and_odd_files_give_clear_errors(transformer, lora_files, tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x12\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(LoraError, match="not a valid safetensors"):
        load_lora(garbage)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(lora_files["peft"].read_bytes()[:-200])
    with pytest.raises(LoraError, match="not a valid safetensors"):
        load_lora(truncated)
    with pytest.raises(LoraError, match="not found"):
        load_lora(tmp_path / "missing.safetensors")

    not_lora = tmp_path / "checkpoint.safetensors"
    save_file({"layers.0.attention.to_q.weight": torch.zeros(4, 4)}, str(not_lora))
    with pytest.raises(LoraError, match="no LoRA weights.*ComfyUI 0.33 would ignore.*Accepted layouts"):
        load_lora(not_lora)
    with pytest.raises(LoraError, match="no LoRA weights.*ComfyUI v0.18.1 would ignore.*Accepted layouts"):
        load_lora(not_lora, comfy_version="0.18.1")
    half = tmp_path / "half.safetensors"  # an up matrix without its down one (ComfyUI fails on it too)
    save_file({"transformer.layers.0.attention.to_q.lora_B.weight": torch.zeros(64, 4)}, str(half))
    with pytest.raises(LoraError, match="incomplete.*fails on it too"):
        match_lora(transformer, load_lora(half))
    down_only = tmp_path / "down_only.safetensors"  # ComfyUI reads a pair from its up matrix: ignored
    save_file({"transformer.layers.0.attention.to_q.lora_A.weight": torch.zeros(4, 64)}, str(down_only))
    with pytest.raises(LoraError, match="matched none.*ComfyUI 0.33 would ignore"):
        check_lora(load_lora(down_only), [transformer])
    rows = transformer.layers[0].feed_forward.w1.weight.shape[0]
    for suffix, what in ((".dora_scale", "DoRA"), (".lora_mid.weight", "LoCon")):
        refused = tmp_path / f"refused{suffix}.safetensors"
        save_file({"diffusion_model.layers.0.feed_forward.w1.lora_down.weight": torch.zeros(4, 64),
                   "diffusion_model.layers.0.feed_forward.w1.lora_up.weight": torch.zeros(rows, 4),
                   f"diffusion_model.layers.0.feed_forward.w1{suffix}": torch.ones(rows, 1)}, str(refused))
        with pytest.raises(LoraError, match=f"{what}.*ComfyUI 0.33 applies it, graphrun does not"):
            match_lora(transformer, load_lora(refused))
    loha = tmp_path / "loha.safetensors"
    save_file({f"diffusion_model.layers.0.feed_forward.w1.hada_{p}": torch.zeros(4, 4)
               for p in ("w1_a", "w1_b", "w2_a", "w2_b")}, str(loha))
    with pytest.raises(LoraError, match="LoHa"):
        match_lora(transformer, load_lora(loha))


# --- ComfyUI's float16 LoRA math on GPUs -------------------------------------------------------


def test_lora_compute_dtype_follows_comfyui():
    """float32 on the CPU and for float32 models (ComfyUI --cpu / --force-fp32); on GPUs ComfyUI (v0.18.1
    and 0.33) patches in float16, which is decided per device (not testable without one)."""
    assert lora_module.lora_compute_dtype(torch.zeros(1, dtype=torch.bfloat16)) == torch.float32
    assert lora_module.lora_compute_dtype(torch.zeros(1), "cuda") == torch.float32  # a float32 model


def test_float16_lora_math_matches_comfyuis_gpu_formula(transformer, lora_files, monkeypatch):
    """Where ComfyUI computes in float16: the weight is cast to float16, the float32 update (scaled) is cast
    to float16 and added in float16, and the sum cast back to the weight's dtype."""
    model = copy.deepcopy(transformer).to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(lora_module, "lora_compute_dtype", lambda weight, device=None: torch.float16)
    pairs = canonical_pairs(transformer, SEED)
    with patched(model, [(load_lora(lora_files["peft"]), 0.8)]):
        state = model.state_dict()
        for name, (down, up) in pairs.items():
            expected = before[f"{name}.weight"].to(torch.float16) + (0.8 * torch.mm(up, down)).to(torch.float16)
            assert torch.equal(state[f"{name}.weight"], expected.to(torch.bfloat16)), name
    _assert_state_equal(model, before)
