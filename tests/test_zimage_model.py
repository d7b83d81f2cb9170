"""Z-Image model layer: tiny model build, loaders (diffusers folder and ComfyUI files), prompt
encoding, the denoiser and the VAE — all on the tiny random-weight model, offline."""
from __future__ import annotations

import filecmp
import json
import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from graphrun.nodes import runtime
from graphrun.nodes.zimage import loading, network, sources, text, tiny, vae

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def components() -> dict:
    return tiny.build_components()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, components: dict) -> Path:
    return tiny.write_diffusers_folder(components, tmp_path_factory.mktemp("tiny") / "zimage")


@pytest.fixture(scope="module")
def comfy(tmp_path_factory: pytest.TempPathFactory, components: dict) -> dict[str, Path]:
    return tiny.write_comfy_files(components, tmp_path_factory.mktemp("comfy"))


@pytest.fixture(scope="module")
def parts(tiny_dir: Path) -> loading.ZImageParts:
    return loading.load_diffusers_folder(tiny_dir, "cpu", "fp32")


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------
# tiny build

def test_tiny_build_is_byte_identical(tmp_path: Path, tiny_dir: Path) -> None:
    other = tiny.build_tiny_model(tmp_path / "again")
    assert _files(other) == _files(tiny_dir)
    assert "transformer/diffusion_pytorch_model.safetensors" in _files(other)
    for rel in _files(other):
        assert filecmp.cmp(other / rel, tiny_dir / rel, shallow=False), rel


def test_tiny_weights_do_not_depend_on_global_rng(components: dict) -> None:
    torch.manual_seed(12345)
    again = tiny.build_components()
    for name in ("transformer", "text_encoder", "vae"):
        a, b = components[name].state_dict(), again[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_tiny_model_dir_builds_once_and_survives_a_race(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAPHRUN_CACHE", str(tmp_path / "cache"))
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(tiny.tiny_model_dir())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1]
    folder = results[0]
    assert folder.parent == tmp_path / "cache" and (folder / "model_index.json").is_file()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temp folders left
    stamp = (folder / "model_index.json").stat().st_mtime_ns
    assert tiny.tiny_model_dir() == folder
    assert (folder / "model_index.json").stat().st_mtime_ns == stamp


def test_tiny_comfy_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAPHRUN_CACHE", str(tmp_path))
    folder = tiny.tiny_comfy_dir()
    for rel in (tiny.COMFY_TRANSFORMER, tiny.COMFY_TEXT_ENCODER, tiny.COMFY_VAE):
        assert (folder / rel).is_file()
    assert any((folder / "loras").glob("*.safetensors"))
    assert tiny.tiny_comfy_dir() == folder


def test_tiny_folder_is_a_valid_zimage_pipeline(tiny_dir: Path) -> None:
    from diffusers import ZImagePipeline

    index = json.loads((tiny_dir / "model_index.json").read_text())
    assert index["_class_name"] == "ZImagePipeline"
    pipe = ZImagePipeline.from_pretrained(str(tiny_dir), local_files_only=True)
    assert pipe.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True, enable_thinking=True
    ) == text.format_prompt("hi")


# ---------------------------------------------------------------------------------------------
# loading

def test_load_diffusers_folder(parts: loading.ZImageParts) -> None:
    assert parts.device == torch.device("cpu") and parts.dtype == torch.float32
    assert type(parts.transformer).__name__ == "ZImageTransformer2DModel"
    assert type(parts.text_encoder).__name__ == "Qwen3Model"
    assert type(parts.vae).__name__ == "AutoencoderKL"
    assert parts.transformer.config.dim == 64 and parts.text_encoder.config.head_dim == 16
    assert not parts.transformer.training


def test_resolve_device_dtype() -> None:
    dev, dt = runtime.resolve_device_dtype(None, None)
    if torch.cuda.is_available():
        assert dev.type == "cuda"
    else:
        assert (dev, dt) == (torch.device("cpu"), torch.float32)
    assert runtime.resolve_device_dtype("cpu", "bf16") == (torch.device("cpu"), torch.bfloat16)
    assert runtime.resolve_device_dtype("cpu", "float16")[1] == torch.float16
    with pytest.raises(ValueError, match="Unknown dtype"):
        runtime.resolve_device_dtype("cpu", "int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            runtime.resolve_device_dtype("cuda", None)


def test_offload_is_a_noop_on_cpu(parts: loading.ZImageParts) -> None:
    assert loading.enable_offload(parts) is parts


def test_comfy_files_use_the_original_key_layouts(comfy: dict[str, Path]) -> None:
    assert comfy["transformer"].as_posix().endswith("diffusion_models/z_image_turbo_bf16.safetensors")
    with safe_open(str(comfy["transformer"]), "pt") as f:
        keys = set(f.keys())
        assert f.get_slice("layers.0.attention.qkv.weight").get_shape() == [192, 64]
    assert {"x_embedder.weight", "final_layer.linear.weight", "cap_pad_token",
            "layers.1.attention.out.weight", "context_refiner.0.attention.q_norm.weight"} <= keys
    assert not any("to_q" in k or "all_x_embedder" in k for k in keys)
    with safe_open(str(comfy["text_encoder"]), "pt") as f:
        assert all(k.startswith("model.") for k in f.keys())
        assert "model.layers.1.self_attn.k_norm.weight" in set(f.keys())
    with safe_open(str(comfy["vae"]), "pt") as f:
        keys = set(f.keys())
        assert f.get_slice("encoder.mid.attn_1.q.weight").get_shape() == [16, 16, 1, 1]
    assert {"encoder.down.0.block.0.conv1.weight", "encoder.down.0.downsample.conv.weight",
            "decoder.up.3.upsample.conv.weight", "decoder.up.0.block.1.conv2.weight",
            "encoder.down.2.block.0.nin_shortcut.weight", "decoder.norm_out.weight"} <= keys
    assert "decoder.up.0.upsample.conv.weight" not in keys and not any("quant_conv" in k for k in keys)


def test_inverse_conversions_round_trip_through_diffusers(components: dict) -> None:
    from diffusers.loaders.single_file_utils import (
        convert_ldm_vae_checkpoint,
        convert_z_image_transformer_checkpoint_to_diffusers,
    )

    sd = components["transformer"].state_dict()
    back = convert_z_image_transformer_checkpoint_to_diffusers(tiny.transformer_to_original(sd))
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    vae_model = components["vae"]
    sd = vae_model.state_dict()
    back = convert_ldm_vae_checkpoint(tiny.vae_to_bfl(sd, 4), dict(vae_model.config))
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def test_configs_are_inferred_for_real_size_models() -> None:
    """Shapes of the real Z-Image Turbo / Qwen3-4B / Flux VAE (built on the meta device) map back to
    the shipped configs, so real ComfyUI files get the right architecture."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    def shapes(sd: dict) -> dict:
        return {k: tuple(v.shape) for k, v in sd.items()}

    base = json.loads((loading.CONFIG_DIR / "z_image_turbo_transformer.json").read_text())
    base.pop("_class_name")
    with init_empty_weights():
        model = ZImageTransformer2DModel.from_config(base)
    original = {f"model.diffusion_model.{k}": v
                for k, v in tiny.transformer_to_original(model.state_dict()).items()}
    assert len(original) == 453  # the key count of the released z_image_turbo_bf16.safetensors
    assert loading.infer_transformer_config(shapes(original)) == base

    qwen = json.loads((loading.CONFIG_DIR / "qwen3_4b.json").read_text())
    with init_empty_weights():
        te = Qwen3Model(Qwen3Config(**qwen))
    inferred = loading.infer_text_encoder_config(shapes(tiny.text_encoder_to_hf(te.state_dict())))
    assert inferred == qwen

    flux = json.loads((loading.CONFIG_DIR / "flux_vae.json").read_text())
    flux.pop("_class_name")
    with init_empty_weights():
        ae = AutoencoderKL.from_config(flux)
    bfl = tiny.vae_to_bfl(ae.state_dict(), 4)
    assert loading.infer_vae_config(shapes(bfl)) == flux
    assert loading.infer_vae_config(shapes(ae.state_dict())) == flux  # diffusers-layout file


def test_comfy_files_match_the_diffusers_folder(parts: loading.ZImageParts, comfy: dict[str, Path]) -> None:
    transformer = loading.load_transformer_file(comfy["transformer"], "cpu", "fp32")
    te = loading.load_text_encoder_file(comfy["text_encoder"], "cpu", "fp32")
    ae = loading.load_vae_file(comfy["vae"], "cpu", "fp32")
    public = lambda cfg: {k: v for k, v in dict(cfg).items() if not k.startswith("_")}  # noqa: E731
    assert public(transformer.config) == public(parts.transformer.config)
    assert ae.config.norm_num_groups == 4 and ae.config.block_out_channels == parts.vae.config.block_out_channels

    prompt = "a lighthouse at dusk"
    cond = text.encode_prompt(parts, prompt)
    assert torch.equal(text.encode_prompt(te, prompt), cond)

    x = torch.randn(1, 16, 8, 6, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.6])
    d_folder = network.ZImageDenoiser(parts.transformer).apply_model(x, sigma, cond)
    assert torch.equal(network.ZImageDenoiser(transformer).apply_model(x, sigma, cond), d_folder)

    assert torch.equal(vae.decode(ae, x), vae.decode(parts.vae, x))
    image = torch.rand(1, 32, 24, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(vae.encode(ae, image), vae.encode(parts.vae, image))


def test_single_file_with_diffusers_prefix_and_layout(tmp_path: Path, parts: loading.ZImageParts,
                                                      comfy: dict[str, Path]) -> None:
    prefixed = tmp_path / "ckpt.safetensors"
    sd = load_file(str(comfy["transformer"]))
    save_file({f"model.diffusion_model.{k}": v for k, v in sd.items()}, str(prefixed))
    model = loading.load_transformer_file(prefixed, "cpu", "fp32")
    ref = parts.transformer.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    diffusers_layout = tmp_path / "vae_diffusers.safetensors"
    save_file({k: v.contiguous() for k, v in parts.vae.state_dict().items()}, str(diffusers_layout),
              metadata={"graphrun_config": json.dumps({"norm_num_groups": 4})})
    ae = loading.load_vae_file(diffusers_layout, "cpu", "fp32")
    assert all(torch.equal(v, parts.vae.state_dict()[k]) for k, v in ae.state_dict().items())


def test_bf16_text_encoder_computes_in_float32(parts: loading.ZImageParts, comfy: dict[str, Path]) -> None:
    te_bf16 = loading.load_text_encoder_file(comfy["text_encoder"], "cpu", "bf16")
    assert next(te_bf16.text_encoder.parameters()).dtype == torch.bfloat16
    # Reference: the same bf16-rounded weights held in float32.
    te_ref = loading.load_text_encoder_file(comfy["text_encoder"], "cpu", "fp32").text_encoder
    with torch.no_grad():
        for p in te_ref.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    out = text.encode_prompt(te_bf16, "fp32 compute")
    assert out.dtype == torch.float32
    assert torch.equal(out, text.encode_prompt((te_ref, parts.tokenizer), "fp32 compute"))
    assert next(te_bf16.text_encoder.parameters()).dtype == torch.bfloat16  # storage unchanged


# ---------------------------------------------------------------------------------------------
# prompt encoding

def test_encode_prompt_shape_template_and_hidden_state(parts: loading.ZImageParts) -> None:
    prompt = "a cat"
    ids = text.tokenize_prompt(parts.tokenizer, prompt)
    assert parts.tokenizer.decode(ids) == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"
    assert ids.count(257) == 2 and ids.count(258) == 1  # <|im_start|> x2, <|im_end|> x1
    cond = text.encode_prompt(parts, prompt)
    assert cond.shape == (1, len(ids), 32) and cond.dtype == torch.float32 and cond.device.type == "cpu"

    # Hand computation: the output of the second-to-last decoder layer, before the final norm.
    captured = {}
    layer = parts.text_encoder.layers[-2]
    handle = layer.register_forward_hook(lambda m, a, out: captured.update(h=out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            last = parts.text_encoder(input_ids=torch.tensor([ids])).last_hidden_state
    finally:
        handle.remove()
    # transformers' forward computes the same layer with other operations (encode_prompt follows ComfyUI's
    # order bit for bit: tests/test_text_encoder_exact.py); they agree to float32 rounding.
    torch.testing.assert_close(cond, captured["h"].reshape(cond.shape), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(cond, last)


def test_encode_prompt_unescapes_parentheses(parts: loading.ZImageParts) -> None:
    assert text.unescape_prompt(r"\(a\) \\b \x") == r"(a) \\b \x"  # ComfyUI keeps "\\"
    assert torch.equal(text.encode_prompt(parts, r"\(big\) cat"), text.encode_prompt(parts, "(big) cat"))


def test_encode_prompt_too_long(parts: loading.ZImageParts) -> None:
    limit = parts.text_encoder.config.max_position_embeddings
    with pytest.raises(ValueError, match=rf"{limit + 100 + 19} tokens long.*at most {limit}.*Shorten"):
        text.encode_prompt(parts, "x" * (limit + 100))


# ---------------------------------------------------------------------------------------------
# denoiser

def _hand_denoise(transformer, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = transformer(list(x.unsqueeze(2).unbind(0)), 1.0 - sigma, list(cond.unbind(0)), return_dict=False)[0]
    v = -torch.stack(out).squeeze(2)
    return x - sigma.view(-1, 1, 1, 1) * v


def test_denoiser_matches_hand_computation(parts: loading.ZImageParts) -> None:
    cond = text.encode_prompt(parts, "hand check")
    den = network.ZImageDenoiser.from_parts(parts)
    x = torch.randn(1, 16, 28, 22, generator=torch.Generator().manual_seed(3))
    sigma = torch.tensor([0.75])
    d = den.apply_model(x, sigma, cond)
    assert d.shape == x.shape and d.dtype == torch.float32
    # graphrun computes in ComfyUI's op order (comfy_forward; bit-exact to ComfyUI in
    # test_zimage_forward_exact.py), diffusers' forward in its own: equal up to float32 rounding.
    torch.testing.assert_close(d, _hand_denoise(parts.transformer, x, sigma, cond), rtol=1e-5, atol=1e-5)
    assert den.forward_count == 1


def test_denoiser_pads_odd_sizes_circularly(parts: loading.ZImageParts) -> None:
    cond = text.encode_prompt(parts, "odd")
    den = network.ZImageDenoiser(parts.transformer)
    x = torch.randn(1, 16, 7, 5, generator=torch.Generator().manual_seed(4))
    sigma = torch.tensor([0.5])
    d = den.apply_model(x, sigma, cond)
    assert d.shape == x.shape
    padded = torch.nn.functional.pad(x, (0, 1, 0, 1), mode="circular")
    with torch.no_grad():
        out = parts.transformer([padded[0].unsqueeze(1)], 1.0 - sigma, [cond[0]], return_dict=False)[0]
    expected = x + sigma * out[0].squeeze(1)[:, :7, :5].unsqueeze(0)
    torch.testing.assert_close(d, expected, rtol=1e-5, atol=1e-5)


def test_denoiser_batch_copies_and_counter(parts: loading.ZImageParts) -> None:
    from graphrun.nodes.sampling.schedules import FlowModelSampling

    cond = text.encode_prompt(parts, "batch")
    den = network.ZImageDenoiser(parts.transformer)
    assert den.model_sampling.shift == 3.0 and den.latent_format.latent_channels == 16
    seen = []
    den.forward_hooks.append(lambda d, x, s, c: seen.append(tuple(x.shape)))
    x = torch.randn(2, 16, 6, 8, generator=torch.Generator().manual_seed(5))
    sigma = torch.tensor([0.9, 0.3])
    batch = den.apply_model(x, sigma, cond.expand(2, -1, -1))
    singles = torch.cat([den.apply_model(x[i:i + 1], sigma[i:i + 1], cond) for i in range(2)])
    torch.testing.assert_close(batch, singles, rtol=1e-5, atol=1e-5)

    shifted = den.with_model_sampling(FlowModelSampling(shift=6.0))
    assert shifted.transformer is den.transformer and shifted.model_sampling.shift == 6.0
    assert den.model_sampling.shift == 3.0
    shifted.apply_model(x[:1], sigma[:1], cond)
    assert den.forward_count == shifted.forward_count == 4 and len(seen) == 4


def test_denoiser_rejects_sizes_beyond_rope(parts: loading.ZImageParts) -> None:
    den = network.ZImageDenoiser(parts.transformer)
    x = torch.zeros(1, 16, 4, 4)
    with pytest.raises(ValueError, match="tokens; the Z-Image transformer accepts at most 1504"):
        den.apply_model(x, torch.tensor([0.5]), torch.zeros(1, 1600, 32))
    with pytest.raises(ValueError, match="supports at most 512x512 patches"):
        den.apply_model(torch.zeros(1, 16, 1026, 4), torch.tensor([0.5]), torch.zeros(1, 10, 32))


# ---------------------------------------------------------------------------------------------
# VAE

def test_vae_decode_and_encode(parts: loading.ZImageParts) -> None:
    latent = torch.randn(2, 16, 5, 4, generator=torch.Generator().manual_seed(6))
    image = vae.decode(parts.vae, latent)
    assert image.shape == (2, 40, 32, 3) and image.dtype == torch.float32
    assert image.min() >= 0.0 and image.max() <= 1.0 and image.std() > 0
    with torch.no_grad():
        raw = parts.vae.decode(latent[:1]).sample  # raw latents go straight into the VAE
    # graphrun computes in ComfyUI's op order and batch (nodes/zimage/vae_forward.py, bit-equal to
    # ComfyUI: tests/test_vae_exact.py); diffusers' own forward is ~1e-6 off from that.
    torch.testing.assert_close(image[:1], ((raw + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1), rtol=0, atol=1e-5)

    rgba = torch.rand(1, 45, 38, 4, generator=torch.Generator().manual_seed(7))
    z = vae.encode(parts.vae, rgba)
    assert z.shape == (1, 16, 5, 4) and z.dtype == torch.float32
    # Center crop 45x38 -> 40x32 at offsets (45 % 8) // 2 = 2 and (38 % 8) // 2 = 3; alpha dropped.
    cropped = rgba[:, 2:42, 3:35, :3]
    with torch.no_grad():
        mode = parts.vae.encode(cropped.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode()
    torch.testing.assert_close(z, mode, rtol=0, atol=1e-5)  # diffusers' forward: ~1e-6 off ComfyUI's order
    assert torch.equal(vae.encode(parts.vae, rgba), z)  # posterior mode: deterministic


# ---------------------------------------------------------------------------------------------
# load errors

def test_error_missing_folder_and_file(tmp_path: Path) -> None:
    with pytest.raises(loading.ModelLoadError, match="not found.*model_index.json"):
        loading.load_diffusers_folder(tmp_path / "nope")
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "model_index.json").write_text("{}")
    with pytest.raises(loading.ModelLoadError, match="missing transformer, text_encoder, tokenizer, vae"):
        loading.load_diffusers_folder(tmp_path / "partial")
    with pytest.raises(loading.ModelLoadError, match="not found.*z_image_turbo_bf16.safetensors"):
        loading.load_transformer_file(tmp_path / "missing.safetensors")


def test_error_corrupt_file(tmp_path: Path, comfy: dict[str, Path]) -> None:
    broken = tmp_path / "ae.safetensors"
    data = comfy["vae"].read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(loading.ModelLoadError, match="ae.safetensors is truncated: its tensors need"):
        loading.load_vae_file(broken)


def test_error_pickle_refused(tmp_path: Path) -> None:
    for name in ("model.ckpt", "model.pt", "model.pth", "pytorch_model.bin"):
        (tmp_path / name).write_bytes(b"\x80\x02}q\x00.")
        with pytest.raises(loading.ModelLoadError, match="safetensors only"):
            loading.load_transformer_file(tmp_path / name)
    disguised = tmp_path / "disguised.safetensors"
    torch.save({"w": torch.zeros(1)}, str(disguised))
    with pytest.raises(loading.ModelLoadError, match="PyTorch checkpoint.*renamed to .safetensors.*pickle-based"):
        loading.load_vae_file(disguised)


def test_error_wrong_kind_of_file(comfy: dict[str, Path]) -> None:
    with pytest.raises(loading.ModelLoadError,
                       match="not a Z-Image transformer: it looks like a Flux VAE.*cap_embedder"):
        loading.load_transformer_file(comfy["vae"])
    with pytest.raises(loading.ModelLoadError, match="not a Qwen3 text encoder: it looks like a Z-Image transformer"):
        loading.load_text_encoder_file(comfy["transformer"])
    with pytest.raises(loading.ModelLoadError, match="not a Flux VAE.*encoder.down.0.block.0.conv1.weight"):
        loading.load_vae_file(comfy["text_encoder"])


def test_error_incomplete_file(tmp_path: Path, comfy: dict[str, Path]) -> None:
    sd = load_file(str(comfy["transformer"]))
    del sd["layers.1.feed_forward.w2.weight"]
    path = tmp_path / "partial.safetensors"
    save_file(sd, str(path))
    with pytest.raises(loading.ModelLoadError, match="incomplete.*layers.1.feed_forward.w2.weight"):
        loading.load_transformer_file(path)


def test_real_text_encoder_needs_a_tokenizer(tmp_path: Path, tiny_dir: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import Qwen3Config, Qwen3Model

    config = dict(tiny.TEXT_ENCODER_CONFIG, vocab_size=600)
    with torch.random.fork_rng(devices=[]):
        model = Qwen3Model(Qwen3Config(**config))
    path = tmp_path / "text_encoders" / "qwen_3_4b.safetensors"
    path.parent.mkdir()
    save_file(tiny.text_encoder_to_hf(model.state_dict()), str(path))
    monkeypatch.delenv(sources.TOKENIZER_ENV, raising=False)
    with pytest.raises(loading.ModelLoadError, match=r"needs its tokenizer.*GRAPHRUN_TOKENIZER"):
        loading.load_text_encoder_file(path)
    monkeypatch.setenv(sources.TOKENIZER_ENV, str(tiny_dir / "tokenizer"))
    te = loading.load_text_encoder_file(path, "cpu", "fp32")
    assert te.text_encoder.config.vocab_size == 600 and len(te.tokenizer) == 261
