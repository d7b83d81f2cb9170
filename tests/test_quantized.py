"""Quantized ComfyUI checkpoints: layout detection, exact dequantization, clean refusals.

Synthetic quantized versions of the tiny Z-Image files are written in ComfyUI's layouts (plain
fp8, legacy scaled fp8, mixed-precision ``comfy_quant`` layers in fp8 / nvfp4 / mxfp8, ComfyUI
0.33's int8 format, refused under the v0.18.1 setting) by the small quantizers below. Each loaded weight must equal ComfyUI v0.18.1's
dequantization formula, written out here independently of graphrun's code (no swizzled scales, no
packing), and a full tiny-image run from the quantized files must match the run from files holding
the reference dequantized weights. (These files were also loaded by real ComfyUI v0.18.1 with
comfy-kitchen 0.2.8 outside the test suite: every effective weight matched bit for bit.)
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
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import graphrun
from graphrun.engine.context import RunOptions
from graphrun.engine.executor import NodeFailed, Runner
from graphrun.nodes.quantized_layers import QuantizedLinear
from graphrun.nodes.zimage.loading import ModelLoadError, load_text_encoder_file, load_transformer_file, load_vae_file
from graphrun.nodes.zimage.tiny import COMFY_TEXT_ENCODER, COMFY_TRANSFORMER, COMFY_VAE, tiny_comfy_dir

torch.set_num_threads(1)

FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}
E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])


# ---------------------------------------------------------------------------------------------
# Quantizers: ComfyUI's on-disk layouts, and the reference dequantization of each
# ---------------------------------------------------------------------------------------------

def comfy_quant(fmt: str, **extra) -> torch.Tensor:
    """A ``<layer>.comfy_quant`` tensor: the layer's JSON config as uint8 bytes."""
    return torch.tensor(list(json.dumps({"format": fmt, **extra}).encode()), dtype=torch.uint8)


def swizzle(scales: torch.Tensor) -> torch.Tensor:
    """cuBLAS' block-scale tile layout: 128x4 tiles, each as 32 runs of rows r, r+32, r+64, r+96."""
    rows, cols = scales.shape
    rt, ct = -(-rows // 128), -(-cols // 4)
    padded = torch.zeros((rt * 128, ct * 4), dtype=scales.dtype)
    padded[:rows, :cols] = scales
    return padded.reshape(rt, 4, 32, ct, 4).permute(0, 3, 2, 1, 4).reshape(rt * 128, ct * 4).contiguous()


def quantize_fp8(w: torch.Tensor, storage: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    scale = w.abs().max().float() / FP8_MAX[storage]
    return (w.float() / scale).clamp(-FP8_MAX[storage], FP8_MAX[storage]).to(storage), scale


def reference_fp8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return q.to(dtype) * scale.to(torch.float32).to(dtype)


def quantize_nvfp4(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """4-bit E2M1 codes in blocks of 16, fp8 block scales, a float32 tensor scale."""
    rows, cols = w.shape
    tensor_scale = w.abs().max().float() / (448.0 * 6.0)
    blocks = w.float().reshape(rows, cols // 16, 16)
    block_scale = (blocks.abs().amax(-1) / 6.0 / tensor_scale).clamp(max=448.0).to(torch.float8_e4m3fn)
    total = tensor_scale * block_scale.float()
    scaled = blocks / torch.where(total == 0, torch.ones_like(total), total).unsqueeze(-1)
    codes = (scaled.unsqueeze(-1) - E2M1).abs().argmin(-1).to(torch.uint8).reshape(rows, cols)
    return {"codes": codes, "block_scale": block_scale, "tensor_scale": tensor_scale,
            "weight": (codes[:, 0::2] << 4) | codes[:, 1::2],
            "weight_scale": swizzle(block_scale), "weight_scale_2": tensor_scale}


def reference_nvfp4(q: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    rows, cols = q["codes"].shape
    values = E2M1.to(dtype)[q["codes"].long()].reshape(rows, cols // 16, 16)
    total = q["tensor_scale"].to(dtype) * q["block_scale"].to(dtype)
    return (values * total.unsqueeze(-1)).reshape(rows, cols).to(dtype)


def quantize_mxfp8(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """float8_e4m3fn values in blocks of 32 with power-of-two (E8M0) block scales."""
    rows, cols = w.shape
    blocks = w.float().reshape(rows, cols // 32, 32)
    amax = blocks.abs().amax(-1)
    exponent = (torch.ceil(torch.log2((amax / 448.0).clamp(min=2.0 ** -127))).to(torch.int32) + 127).clamp(1, 254)
    exponent = torch.where(amax == 0, torch.zeros_like(exponent), exponent)
    scale = torch.exp2(exponent.float() - 127)
    data = (blocks / scale.unsqueeze(-1)).clamp(-448, 448).reshape(rows, cols).to(torch.float8_e4m3fn)
    return {"data": data, "exponent": exponent, "weight": data, "weight_scale": swizzle(exponent.to(torch.uint8))}


def reference_mxfp8(q: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    rows, cols = q["data"].shape
    scale = torch.where(q["exponent"] == 0, torch.zeros(()), torch.exp2(q["exponent"].float() - 127))
    return (q["data"].float().reshape(rows, cols // 32, 32) * scale.unsqueeze(-1)).reshape(rows, cols).to(dtype)


class QuantizedFile:
    """A state dict being rewritten into a quantized layout, with the reference weights beside it."""

    def __init__(self, source: Path, prefix: str = "") -> None:
        self.tensors = load_file(str(source))
        with safe_open(str(source), "pt") as handle:
            self.metadata = dict(handle.metadata() or {})
        self.prefix = prefix
        self.reference: dict[str, torch.Tensor] = {}  # layer (prefixed) -> dequantized weight (float32)
        self.formats: dict[str, str] = {}  # layer -> comfy_quant format

    def linear_layers(self) -> list[str]:
        return sorted(k[: -len(".weight")] for k, v in self.tensors.items() if k.endswith(".weight") and v.dim() == 2
                      and "embed_tokens" not in k)

    def plain_fp8(self, layer: str, storage: torch.dtype = torch.float8_e4m3fn) -> None:
        q = self.tensors[f"{layer}.weight"].to(storage)
        self.tensors[f"{layer}.weight"] = q
        self.reference[layer] = q.to(torch.float32)

    def scaled_fp8(self, layer: str, scale_input: bool = False) -> None:
        """The legacy layout (needs ``mark_scaled_fp8``)."""
        q, scale = quantize_fp8(self.tensors[f"{layer}.weight"], torch.float8_e4m3fn)
        self.tensors[f"{layer}.weight"] = q
        self.tensors[f"{layer}.scale_weight"] = scale.reshape(1)
        if scale_input:
            self.tensors[f"{layer}.scale_input"] = torch.ones(1)
        self.reference[layer] = reference_fp8(q, scale, torch.float32)

    def mark_scaled_fp8(self, key: str = "scaled_fp8") -> None:
        """The legacy marker; ComfyUI looks for it at the top level of the file."""
        self.tensors[key] = torch.empty(0, dtype=torch.float8_e4m3fn)

    def mixed(self, layer: str, fmt: str, *, header: bool = False, input_scale: bool = False) -> None:
        """A ``comfy_quant`` layer (or, with ``header``, its config in ``_quantization_metadata``)."""
        w = self.tensors.pop(f"{layer}.weight")
        self.formats[layer] = fmt
        if fmt in ("float8_e4m3fn", "float8_e5m2"):
            storage = getattr(torch, fmt)
            q, scale = quantize_fp8(w, storage)
            self.tensors.update({f"{layer}.weight": q, f"{layer}.weight_scale": scale})
            self.reference[layer] = reference_fp8(q, scale, torch.float32)
        elif fmt == "nvfp4":
            q = quantize_nvfp4(w)
            for name in ("weight", "weight_scale", "weight_scale_2"):
                self.tensors[f"{layer}.{name}"] = q[name]
            self.reference[layer] = reference_nvfp4(q, torch.float32)
        else:
            q = quantize_mxfp8(w)
            self.tensors.update({f"{layer}.weight": q["weight"], f"{layer}.weight_scale": q["weight_scale"]})
            self.reference[layer] = reference_mxfp8(q, torch.float32)
        if input_scale:
            self.tensors[f"{layer}.input_scale"] = torch.tensor(0.5)
        if header:
            layers = json.loads(self.metadata.get("_quantization_metadata", '{"layers": {}}'))
            layers["layers"][layer] = {"format": fmt}
            self.metadata["_quantization_metadata"] = json.dumps({"format_version": "1.0", **layers})
        else:
            self.tensors[f"{layer}.comfy_quant"] = comfy_quant(fmt)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(path), metadata=self.metadata)
        return path

    def save_reference(self, source: Path, path: Path) -> Path:
        """The source file with the reference dequantized weights in place of the quantized layers."""
        tensors = load_file(str(source))
        for layer, weight in self.reference.items():
            tensors[f"{layer}.weight"] = weight
        path.parent.mkdir(parents=True, exist_ok=True)
        with safe_open(str(source), "pt") as handle:
            save_file(tensors, str(path), metadata=dict(handle.metadata() or {}))
        return path


def tiny(kind: str) -> Path:
    return tiny_comfy_dir() / {"transformer": COMFY_TRANSFORMER, "te": COMFY_TEXT_ENCODER, "vae": COMFY_VAE}[kind]


def fits(weight: torch.Tensor, block: int) -> bool:
    """Whether nvfp4/mxfp8 store this weight without padding (the tiny model's 170-wide FFN does not)."""
    return weight.shape[0] % block == 0 and weight.shape[1] % block == 0


def mixed_transformer(header: bool = False) -> QuantizedFile:
    """Every Linear layer of the tiny transformer in one of the four formats, one left in fp32.

    The embedders feed the architecture inference: as nvfp4, x_embedder's stored width is halved.
    """
    q = QuantizedFile(tiny("transformer"))
    chosen = {"x_embedder": "nvfp4", "cap_embedder.1": "mxfp8", "t_embedder.mlp.2": None}
    for i, layer in enumerate(q.linear_layers()):
        w = q.tensors[f"{layer}.weight"]
        fmt = chosen.get(layer, ("float8_e4m3fn", "float8_e5m2", "nvfp4", "mxfp8")[i % 4])
        if fmt == "nvfp4" and not fits(w, 16) or fmt == "mxfp8" and not fits(w, 32):
            fmt = "float8_e4m3fn"
        if fmt is not None:
            q.mixed(layer, fmt, header=header and i % 2 == 0, input_scale=i % 3 == 0)
    return q


def mixed_text_encoder() -> QuantizedFile:
    """The tiny Qwen3 as a '*_fp8_mixed'-style file: projections in all four formats, layer 1's MLP fp32."""
    q = QuantizedFile(tiny("te"), prefix="model.")
    formats = {"q_proj": "float8_e4m3fn", "k_proj": "float8_e5m2", "v_proj": "nvfp4", "o_proj": "mxfp8",
               "gate_proj": "float8_e4m3fn", "up_proj": "nvfp4", "down_proj": "mxfp8"}
    for layer in q.linear_layers():
        if layer.startswith("model.layers.1.mlp"):
            continue
        q.mixed(layer, formats[layer.rsplit(".", 1)[1]], input_scale=layer.endswith("q_proj"))
    return q


def plain_fp8_transformer(storage: torch.dtype = torch.float8_e4m3fn) -> QuantizedFile:
    """A '*_fp8_e4m3fn' file: the Linear weights stored in fp8 with no scales, the rest fp32."""
    q = QuantizedFile(tiny("transformer"))
    for layer in q.linear_layers():
        q.plain_fp8(layer, storage)
    return q


def scaled_fp8_transformer() -> QuantizedFile:
    """A legacy '*_fp8_scaled' file: the 'scaled_fp8' marker, scale_weight (and some scale_input)."""
    q = QuantizedFile(tiny("transformer"))
    for i, layer in enumerate(q.linear_layers()):
        if layer != "t_embedder.mlp.2":
            q.scaled_fp8(layer, scale_input=i % 2 == 0)
    q.mark_scaled_fp8()
    return q


def scaled_fp8_text_encoder() -> QuantizedFile:
    q = QuantizedFile(tiny("te"), prefix="model.")
    for layer in q.linear_layers():
        q.scaled_fp8(layer)
    q.mark_scaled_fp8()
    return q


def int8_transformer(convrot: bool = True) -> QuantizedFile:
    """The layout of later ComfyUI's int8 files (e.g. z_image_turbo_int8_convrot.safetensors)."""
    q = QuantizedFile(tiny("transformer"))
    for layer in q.linear_layers():
        w = q.tensors[f"{layer}.weight"]
        scale = w.abs().max() / 127
        q.tensors[f"{layer}.weight"] = (w / scale).round().clamp(-127, 127).to(torch.int8)
        q.tensors[f"{layer}.weight_scale"] = scale.reshape(1)
        extra = {"convrot": True, "convrot_groupsize": 256} if convrot else {}
        q.tensors[f"{layer}.comfy_quant"] = comfy_quant("int8_tensorwise", **extra)
    return q


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def comfy_names(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A loaded diffusers transformer's weights under ComfyUI's names (to_q/k/v fused back into qkv)."""
    from graphrun.nodes.zimage.tiny import transformer_to_original

    return transformer_to_original(transformer.state_dict())


def assert_weights(loaded: dict[str, torch.Tensor], q: QuantizedFile, original: dict[str, torch.Tensor]) -> None:
    """Quantized layers equal the reference dequantization bit for bit; everything else the original."""
    assert set(loaded) == set(original)
    for key, value in loaded.items():
        layer = key[: -len(".weight")] if key.endswith(".weight") else None
        expected = q.reference[layer] if layer in q.reference else original[key].to(torch.float32)
        assert value.dtype == torch.float32 and torch.equal(value, expected), key


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("quantized")


def refused(load, path: Path, *words: str) -> str:
    with pytest.raises(ModelLoadError) as err:
        load(path, "cpu", "fp32")
    message = str(err.value)
    for word in (str(path), *words):
        assert word in message, (word, message)
    return message


# ---------------------------------------------------------------------------------------------
# Weights equal ComfyUI's dequantization
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("header", [False, True], ids=["comfy_quant_tensors", "quantization_metadata_header"])
def test_mixed_transformer_dequantizes_every_format_exactly(files, header):
    q = mixed_transformer(header)
    assert set(q.formats.values()) == {"float8_e4m3fn", "float8_e5m2", "nvfp4", "mxfp8"}
    assert q.formats["x_embedder"] == "nvfp4"  # its stored width is half the model's
    model = load_transformer_file(q.save(files / f"mixed_{header}.safetensors"), "cpu", "fp32")
    assert_weights(comfy_names(model), q, load_file(str(tiny("transformer"))))
    # Scales, configs and input scales never reach the model.
    assert not [k for k in model.state_dict() if "scale" in k or "comfy_quant" in k]


@pytest.mark.parametrize("build", [plain_fp8_transformer, lambda: plain_fp8_transformer(torch.float8_e5m2),
                                   scaled_fp8_transformer], ids=["fp8_e4m3fn", "fp8_e5m2", "fp8_scaled_legacy"])
def test_fp8_transformers_load_exactly(files, build):
    q = build()
    model = load_transformer_file(q.save(files / "fp8.safetensors"), "cpu", "fp32")
    assert_weights(comfy_names(model), q, load_file(str(tiny("transformer"))))


def test_transformer_in_bf16_multiplies_in_bf16(files):
    """ComfyUI multiplies in the compute dtype: weight.to(bf16) * scale.to(float32).to(bf16)."""
    q = mixed_transformer()
    loaded = comfy_names(load_transformer_file(q.save(files / "mixed_bf16.safetensors"), "cpu", "bf16"))
    fp8_layers = [k[: -len(".weight_scale")] for k in q.tensors if k.endswith(".weight_scale")
                  and q.tensors[k].dtype == torch.float32 and q.tensors[k].dim() == 0]
    assert len(fp8_layers) > 5
    for layer in fp8_layers:
        weight, scale = q.tensors[f"{layer}.weight"], q.tensors[f"{layer}.weight_scale"]
        expected = weight.to(torch.bfloat16) * scale.to(torch.bfloat16)
        assert torch.equal(loaded[f"{layer}.weight"], expected), layer


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("build", [mixed_text_encoder, scaled_fp8_text_encoder], ids=["fp8_mixed", "fp8_scaled"])
def test_text_encoder_keeps_quantized_layers_and_dequantizes_in_float32(files, build, dtype):
    q = build()
    parts = load_text_encoder_file(q.save(files / "te.safetensors"), "cpu", dtype)
    layers = {name: m for name, m in parts.text_encoder.named_modules() if isinstance(m, QuantizedLinear)}
    assert sorted(f"model.{name}" for name in layers) == sorted(q.reference)
    for name, module in layers.items():
        # Computed in float32 at every call, like ComfyUI's text encoder: storing the encoder in bf16
        # rounds neither the quantized values nor their scales.
        assert torch.equal(module.dequantized_weight(torch.float32), q.reference[f"model.{name}"]), name
    original = load_file(str(tiny("te")))
    for name, param in parts.text_encoder.named_parameters():
        assert torch.equal(param, original[f"model.{name}"].to(param.dtype)), name


def test_quantized_text_encoder_output_equals_the_reference_weights(files):
    q = mixed_text_encoder()
    quant = load_text_encoder_file(q.save(files / "te_q.safetensors"), "cpu", "fp32")
    ref = load_text_encoder_file(q.save_reference(tiny("te"), files / "te_ref.safetensors"), "cpu", "fp32")
    tokens = quant.tokenizer("a red fox in the snow", return_tensors="pt")
    with torch.no_grad():
        out_q = quant.text_encoder(**tokens, output_hidden_states=True).hidden_states[-2]
        out_r = ref.text_encoder(**tokens, output_hidden_states=True).hidden_states[-2]
    # Equal weights; the fp8 layers multiply with ComfyUI's transposed weight layout, another matmul kernel
    # than a float Linear's, so the last bits may differ (as they do in ComfyUI between the two files).
    torch.testing.assert_close(out_q, out_r, rtol=1e-6, atol=1e-6)


def test_vae_with_plain_fp8_weights_loads_cast(files):
    q = QuantizedFile(tiny("vae"))
    for key in [k for k, v in q.tensors.items() if k.endswith(".weight") and v.dim() == 4]:
        q.plain_fp8(key[: -len(".weight")])
    vae = load_vae_file(q.save(files / "vae_fp8.safetensors"), "cpu", "fp32")
    conv = vae.decoder.conv_in.weight
    assert torch.equal(conv, q.reference["decoder.conv_in"])


# ---------------------------------------------------------------------------------------------
# weight_dtype (UNETLoader)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("weight_dtype,storage", [("fp8_e4m3fn", torch.float8_e4m3fn),
                                                  ("fp8_e4m3fn_fast", torch.float8_e4m3fn),
                                                  ("fp8_e5m2", torch.float8_e5m2)])
def test_weight_dtype_rounds_every_weight_to_fp8_as_comfyui_stores_it(weight_dtype, storage):
    model = load_transformer_file(tiny("transformer"), "cpu", "fp32", weight_dtype=weight_dtype)
    original = load_file(str(tiny("transformer")))
    for key, value in comfy_names(model).items():
        assert torch.equal(value, original[key].to(storage).to(torch.float32)), key


def test_weight_dtype_on_a_mixed_file_keeps_its_linear_layers(files):
    """ComfyUI's mixed-precision Linear layers stay in the compute dtype; only the rest is stored in fp8."""
    q = mixed_transformer()
    model = load_transformer_file(q.save(files / "mixed_wd.safetensors"), "cpu", "fp32", weight_dtype="fp8_e4m3fn")
    original = load_file(str(tiny("transformer")))
    loaded = comfy_names(model)
    for key, value in loaded.items():
        layer, _, suffix = key.rpartition(".")
        if layer in q.reference and suffix == "weight":
            expected = q.reference[layer]
        elif f"{layer}.weight" in original and original[f"{layer}.weight"].dim() == 2:  # Linear weight or bias
            expected = original[key]
        else:  # norms, pad tokens
            expected = original[key].to(torch.float8_e4m3fn).to(torch.float32)
        assert torch.equal(value, expected), key
    assert not torch.equal(loaded["layers.0.attention_norm1.weight"], original["layers.0.attention_norm1.weight"])


# ---------------------------------------------------------------------------------------------
# Whole images: a ComfyUI API workflow run on a models folder (as with --models-dir)
# ---------------------------------------------------------------------------------------------

def api_workflow(weight_dtype: str = "default") -> dict:
    """ComfyUI's Z-Image Turbo text-to-image graph, 64x64 with 2 steps."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "z_image_turbo_bf16.safetensors",
                                                      "weight_dtype": weight_dtype}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2",
                                                      "device": "default"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "4": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["1", 0], "shift": 3.0}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "a red fox in the snow"}},
        "6": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["5", 0]}},
        "7": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "8": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": 42, "steps": 2, "cfg": 1.0,
                                                   "sampler_name": "res_multistep", "scheduler": "simple",
                                                   "positive": ["5", 0], "negative": ["6", 0],
                                                   "latent_image": ["7", 0], "denoise": 1.0}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["3", 0]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "quantized"}},
    }


def models_folder(root: Path, transformer: Path | None = None, text_encoder: Path | None = None) -> Path:
    """A ComfyUI models folder with the tiny files, some replaced."""
    for name, source in ((COMFY_TRANSFORMER, transformer or tiny("transformer")),
                         (COMFY_TEXT_ENCODER, text_encoder or tiny("te")), (COMFY_VAE, tiny("vae"))):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, root / name)
    return root


def image(models: Path, out: Path, weight_dtype: str = "default") -> np.ndarray:
    out.mkdir(parents=True, exist_ok=True)
    (out / "workflow.api.json").write_text(json.dumps(api_workflow(weight_dtype)))
    runner = Runner(RunOptions(output_dir=out, extra={"models_dirs": [str(models)]}))
    result = graphrun.load(out / "workflow.api.json", runner=runner).run()
    with Image.open(result.files[0]) as img:
        return np.asarray(img.convert("RGB")).astype(np.int16)


@pytest.mark.parametrize("build", [(mixed_transformer, mixed_text_encoder),
                                   (scaled_fp8_transformer, scaled_fp8_text_encoder)], ids=["mixed", "fp8_scaled"])
def test_quantized_files_give_the_image_of_their_dequantized_weights(tmp_path, build):
    transformer, text_encoder = build[0](), build[1]()
    quant = models_folder(tmp_path / "quant", transformer.save(tmp_path / "t.safetensors"),
                          text_encoder.save(tmp_path / "te.safetensors"))
    ref = models_folder(tmp_path / "ref",
                        transformer.save_reference(tiny("transformer"), tmp_path / "t_ref.safetensors"),
                        text_encoder.save_reference(tiny("te"), tmp_path / "te_ref.safetensors"))
    quantized = image(quant, tmp_path / "out_q")
    difference = np.abs(quantized - image(ref, tmp_path / "out_r"))
    # Measured: identical (the weights are equal bit for bit).
    assert difference.mean() <= 3 and difference.max() <= 2
    # The quantization itself does change the picture (about 5/255 mean on the tiny model).
    assert np.abs(quantized - image(models_folder(tmp_path / "original"), tmp_path / "out_o")).mean() > 1


def test_weight_dtype_in_a_comfyui_workflow_rounds_to_fp8(tmp_path):
    original = load_file(str(tiny("transformer")))
    rounded = {k: v.to(torch.float8_e4m3fn).to(torch.float32) for k, v in original.items()}
    with safe_open(str(tiny("transformer")), "pt") as handle:
        save_file(rounded, str(tmp_path / "rounded.safetensors"), metadata=handle.metadata())
    fp8 = image(models_folder(tmp_path / "base"), tmp_path / "out_fp8", "fp8_e4m3fn")
    ref = image(models_folder(tmp_path / "ref", tmp_path / "rounded.safetensors"), tmp_path / "out_ref")
    assert np.array_equal(fp8, ref)
    assert not np.array_equal(fp8, image(tmp_path / "base", tmp_path / "out_default"))


# ---------------------------------------------------------------------------------------------
# Layouts graphrun does not load: one clear error naming file, layer and format
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("convrot", [True, False], ids=["int8_convrot", "int8_tensorwise"])
def test_int8_files_are_refused_under_the_v0181_setting_as_comfyui_v0181_cannot_load_them(files, convrot):
    path = int8_transformer(convrot).save(files / "int8.safetensors")
    old = functools.partial(load_transformer_file, comfy_version="0.18.1")
    message = refused(old, path, "layer 'cap_embedder.1'", "(and 28 more layers like it)",
                      "'int8_tensorwise'", "ComfyUI v0.18.1 does not support", "KeyError", "--comfy 0.33")
    assert ("ConvRot" in message) == convrot


def test_int8_files_load_under_the_default_setting(files):
    """ComfyUI 0.33 (the default) loads int8 layers; tests/test_quantized_int8.py checks how they compute."""
    from graphrun.nodes.quantized_int8 import Int8Linear

    model = load_transformer_file(int8_transformer(False).save(files / "int8_tw.safetensors"), "cpu", "fp32")
    assert any(isinstance(m, Int8Linear) for m in model.modules())
    # ConvRot groups of 256 do not fit the tiny model's 32-wide cap_embedder: refused, as ComfyUI fails on it.
    refused(load_transformer_file, int8_transformer(True).save(files / "int8_cr.safetensors"),
            "layer 'cap_embedder.1'", "ConvRot groups of 256", "32 inputs")


def test_an_unknown_format_is_refused(files):
    q = mixed_transformer()
    q.tensors["layers.0.attention.out.comfy_quant"] = comfy_quant("float7_made_up")
    refused(load_transformer_file, q.save(files / "made_up.safetensors"), "layer 'layers.0.attention.out'",
            "'float7_made_up'", "float8_e4m3fn, float8_e5m2, nvfp4, mxfp8")


def test_a_config_without_format_is_refused(files):
    q = mixed_transformer()
    q.tensors["layers.0.attention.out.comfy_quant"] = torch.tensor(list(b'{"fmt": "x"}'), dtype=torch.uint8)
    refused(load_transformer_file, q.save(files / "no_format.safetensors"), "'layers.0.attention.out'",
            "without a 'format'")


@pytest.mark.parametrize("shape", [(64,), (64, 1), (2,)])
def test_a_scale_of_the_wrong_shape_is_refused(files, shape):
    q = scaled_fp8_transformer()
    q.tensors["layers.1.attention.out.scale_weight"] = torch.full(shape, 0.01)
    refused(load_transformer_file, q.save(files / "bad_scale.safetensors"), "layer 'layers.1.attention.out'",
            "'float8_e4m3fn'", f"'weight_scale' of shape {shape}", "one floating-point scale per tensor")


def test_a_missing_scale_is_refused(files):
    q = mixed_transformer()
    del q.tensors["layers.0.attention.out.weight_scale"]
    refused(load_transformer_file, q.save(files / "no_scale.safetensors"), "'layers.0.attention.out'",
            "'float8_e5m2'", "no 'layers.0.attention.out.weight_scale'")


def test_scales_without_the_marker_are_refused(files):
    """Without 'scaled_fp8' ComfyUI ignores the scales and would run the weights unscaled."""
    q = scaled_fp8_transformer()
    del q.tensors["scaled_fp8"]
    refused(load_transformer_file, q.save(files / "no_marker.safetensors"), "'scale_weight'",
            "without the 'scaled_fp8' marker")


def test_a_text_encoder_marker_where_comfyui_does_not_look_is_refused(files):
    q = scaled_fp8_text_encoder()
    q.tensors["model.scaled_fp8"] = q.tensors.pop("scaled_fp8")
    refused(load_text_encoder_file, q.save(files / "te_marker.safetensors"), "'model.scaled_fp8'",
            "where ComfyUI v0.18.1's loader does not look")


def test_broken_block_scales_are_refused(files):
    q = mixed_transformer()
    layer = next(k[: -len(".weight_scale_2")] for k in q.tensors if k.endswith(".weight_scale_2"))
    q.tensors[f"{layer}.weight_scale"] = q.tensors[f"{layer}.weight_scale"][:64]
    refused(load_transformer_file, q.save(files / "bad_blocks.safetensors"), f"'{layer}'", "'nvfp4'", "block scales")


def test_quantized_layers_that_are_not_linear_are_refused(files):
    te = QuantizedFile(tiny("te"), prefix="model.")
    te.mixed("model.embed_tokens", "float8_e4m3fn")
    refused(load_text_encoder_file, te.save(files / "te_embed.safetensors"), "'embed_tokens'", "Embedding",
            "Linear layers only")
    t = QuantizedFile(tiny("transformer"))
    t.tensors["layers.0.attention_norm1.comfy_quant"] = comfy_quant("float8_e4m3fn")
    t.tensors["layers.0.attention_norm1.weight_scale"] = torch.tensor(1.0)
    refused(load_transformer_file, t.save(files / "norm.safetensors"), "'layers.0.attention_norm1'", "shape (64,)",
            "Linear layers only")


def test_integer_weights_without_a_config_are_refused(files):
    q = QuantizedFile(tiny("transformer"))
    q.tensors["layers.0.attention.out.weight"] = q.tensors["layers.0.attention.out.weight"].mul(100).to(torch.int8)
    refused(load_transformer_file, q.save(files / "int8_bare.safetensors"), "'layers.0.attention.out'",
            "8-bit integer weights")


def test_a_scaled_vae_is_refused(files):
    q = QuantizedFile(tiny("vae"))
    q.scaled_fp8("decoder.conv_in")
    q.mark_scaled_fp8()
    refused(load_vae_file, q.save(files / "vae_scaled.safetensors"), "'decoder.conv_in'", "applies no scales to VAE")


def test_the_node_reports_the_refusal_without_a_traceback(tmp_path):
    models = models_folder(tmp_path / "models", int8_transformer().save(tmp_path / "int8.safetensors"))
    (tmp_path / "workflow.api.json").write_text(json.dumps(api_workflow()))
    graph = graphrun.load(tmp_path / "workflow.api.json",
                          runner=Runner(RunOptions(output_dir=tmp_path / "out", extra={"models_dirs": [str(models)]})))
    with pytest.raises(NodeFailed) as err:
        graph.run()
    message = str(err.value)
    assert "int8_tensorwise" in message and "z_image_turbo_bf16.safetensors" in message and "Traceback" not in message
