"""Quantized copies of the tiny Z-Image files, in the layouts ComfyUI 0.33 writes and loads.

The official int8 Z-Image templates (``image_z_image_int8.json``, ``image_z_image_turbo_int8.json``)
load ``z_image_int8_convrot.safetensors`` / ``z_image_turbo_int8_convrot.safetensors`` and, for
Turbo, the text encoder ``qwen_3_4b_fp8_mixed.safetensors``. This module derives those files (and
a few more layouts for tests) from the tiny float32 files, deterministically: the same input files
give the same bytes on every machine, so the tests can rebuild them and compare sha256 sums.

The file bytes are not reproducible as such (safetensors writes the header metadata in a random
order per process), so :func:`content_sha256` hashes what a file holds instead.

The layout is that of ComfyUI's mixed-precision state dicts: per quantized Linear layer
``<layer>.weight`` (int8, or float8_e4m3fn), ``<layer>.weight_scale`` (float32) and
``<layer>.comfy_quant`` (the layer's JSON config as uint8 bytes, written the way Python's
``json.dumps`` writes it). Quantization follows comfy-kitchen's own quantizers:

* ``int8_tensorwise``: one scale ``absmax / 127``, ``round(w / scale)`` clamped to [-128, 127];
* ``int8_tensorwise`` with ``convrot``: each row is cut into groups of ``convrot_groupsize`` inputs
  and every group multiplied by the transposed normalised regular Hadamard matrix of that size
  (ConvRot), then quantized per row (scale of shape ``(out, 1)``). At run time the activations get
  the same rotation, so the product is unchanged;
* ``float8_e4m3fn``: one scale ``absmax / 448``, ``w / scale`` cast to float8_e4m3fn.

* ``convrot_w4a4`` (4-bit, no template uses it for Z-Image, so the files are named after the format):
  the rotated weight quantized per row, ``scale = absmax / 7``, ``round(w / scale)`` in [-7, 7], two
  signed codes per int8 byte (even input in the low nibble); ``weight_scale`` float32 ``(out,)``;
* ``asym_w4a8_int8`` (symmetric, as ComfyUI's own quantizer writes it by default): the rotated weight in
  groups of ``group_size`` inputs; with a codebook (16 float32 levels, ``weight_codebook``) each value
  gets the nearest level of ``w / amax(|group|)``, else ``round(w / (amax / 7))`` in [-8, 7] stored as
  ``code + 8``; ``weight_s_channel = amax(|decoded row|) / 127`` (float32 ``(out,)``) and
  ``weight_s_rel = group scale / s_channel`` as float8_e4m3fn ``(out, in / group_size)``.

Layers whose input size the rotation group does not divide are quantized without rotation in int8
(the tiny model's ``feed_forward.w2`` has 170 inputs) and left float in the 4-bit files; embeddings
and norms stay float, as in the released files.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..quantized_int8 import hadamard

#: The file names the official int8 templates use, and the other tiny quantized files.
INT8_CONVROT_TURBO = "diffusion_models/z_image_turbo_int8_convrot.safetensors"
INT8_CONVROT_BASE = "diffusion_models/z_image_int8_convrot.safetensors"
INT8_TENSORWISE_TURBO = "diffusion_models/z_image_turbo_int8.safetensors"
FP8_MIXED_TEXT_ENCODER = "text_encoders/qwen_3_4b_fp8_mixed.safetensors"
INT8_CONVROT_TEXT_ENCODER = "text_encoders/qwen_3_4b_int8_convrot.safetensors"
W4A4_TURBO = "diffusion_models/z_image_turbo_convrot_w4a4.safetensors"
W4A8_TURBO = "diffusion_models/z_image_turbo_asym_w4a8.safetensors"
W4A4_TEXT_ENCODER = "text_encoders/qwen_3_4b_convrot_w4a4.safetensors"
W4A8_TEXT_ENCODER = "text_encoders/qwen_3_4b_asym_w4a8.safetensors"
#: The 16 codebook levels of the tiny W4A8 files (any sorted table of 16 values in [-1, 1] is valid).
W4A8_CODEBOOK = tuple(round(-1.0 + 2.0 * i / 15, 6) for i in range(16))

# Which 2-D weights get quantized: the transformer blocks' Linear layers and the timestep MLP
# (the text encoder: every projection of its decoder layers).
_TRANSFORMER_LAYERS = (".attention.qkv", ".attention.out", ".feed_forward.w1", ".feed_forward.w2",
                       ".feed_forward.w3", ".adaLN_modulation.0", "t_embedder.mlp.0", "t_embedder.mlp.2")
_TEXT_ENCODER_LAYERS = ("_proj",)


def comfy_quant(config: dict[str, object]) -> torch.Tensor:
    """A ``<layer>.comfy_quant`` tensor: the config's ``json.dumps`` text as uint8 bytes."""
    return torch.tensor(list(json.dumps(config).encode("utf-8")), dtype=torch.uint8)


def _round_int8(scaled: torch.Tensor) -> torch.Tensor:
    return scaled.round().clamp(-128.0, 127.0).to(torch.int8)


def quantize_int8_tensorwise(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes and the float32 scalar scale (``absmax / 127``)."""
    scale = (weight.abs().max().float() / 127.0).clamp(min=1e-30)
    return _round_int8(weight / scale.to(weight.dtype)), scale


def quantize_int8_convrot(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes of the group-wise rotated weight and its per-row float32 scales, shape (out, 1)."""
    rows, cols = weight.shape
    # In float64 the rotation is exact (the entries are ±2**-k), so the codes do not depend on the
    # matmul's summation order (thread count, machine).
    h = hadamard(group_size, torch.float64)
    rotated = torch.matmul(weight.double().reshape(rows, cols // group_size, group_size), h.T).reshape(rows, cols)
    scale = (rotated.abs().amax(dim=-1, keepdim=True).float() / 127.0).clamp(min=1e-30)
    return _round_int8(rotated / scale.double()), scale


def _rotated(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """The weight rotated group-wise in float64 (exact: the entries are ±2**-k)."""
    rows, cols = weight.shape
    h = hadamard(group_size, torch.float64)
    return torch.matmul(weight.double().reshape(rows, cols // group_size, group_size), h.T).reshape(rows, cols)


def quantize_w4a4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``convrot_w4a4`` packed codes (int8, ``(out, in / 2)``) and the float32 row scales ``(out,)``."""
    from ..quantized_w4 import pack_nibbles

    rotated = _rotated(weight, group_size)
    scale = (rotated.abs().amax(dim=-1, keepdim=True).float() / 7.0).clamp(min=1e-10)
    codes = (rotated / scale.double()).round().clamp(-7, 7).to(torch.int32)
    return pack_nibbles(codes), scale.reshape(-1)


def quantize_w4a8(weight: torch.Tensor, group_size: int, convrot_groupsize: int,
                  codebook: bool) -> dict[str, torch.Tensor]:
    """``asym_w4a8_int8`` tensors (suffixes ``""``, ``_s_rel``, ``_s_channel`` and, with a codebook,
    ``_codebook``) of the symmetric layout, see the module docstring."""
    from ..quantized_w4 import pack_nibbles

    rotated = _rotated(weight, convrot_groupsize)
    rows, cols = rotated.shape
    grouped = rotated.reshape(rows, cols // group_size, group_size)
    amax = grouped.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8)
    if codebook:
        levels = torch.tensor(W4A8_CODEBOOK, dtype=torch.float64)
        codes = (grouped / amax).unsqueeze(-1).sub(levels).abs().argmin(dim=-1)
        group_scale = amax
        decoded = levels[codes] * group_scale
        unsigned = codes
    else:
        group_scale = (amax / 7.0).clamp(min=1e-8)
        signed = (grouped / group_scale).round().clamp(-8, 7)
        decoded = signed * group_scale
        unsigned = signed + 8
    s_channel = (decoded.abs().amax(dim=(1, 2)) / 127.0).clamp(min=1e-8).float()
    s_rel = (group_scale.squeeze(-1) / s_channel.double().unsqueeze(1)).float().to(torch.float8_e4m3fn)
    out = {"": pack_nibbles(unsigned.reshape(rows, cols)), "_s_rel": s_rel.contiguous(),
           "_s_channel": s_channel.contiguous()}
    if codebook:
        out["_codebook"] = torch.tensor(W4A8_CODEBOOK, dtype=torch.float32)
    return out


def quantize_fp8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float8_e4m3fn values and the float32 per-tensor scale (``absmax / 448``)."""
    scale = weight.abs().max().float() / torch.finfo(torch.float8_e4m3fn).max
    return (weight / scale.to(weight.dtype)).to(torch.float8_e4m3fn), scale


def _selected(key: str, value: torch.Tensor, layers: tuple[str, ...]) -> bool:
    layer = key.removesuffix(".weight")
    return key.endswith(".weight") and value.dim() == 2 and any(part in layer for part in layers)


def quantize_state(state: dict[str, torch.Tensor], fmt: str, layers: tuple[str, ...],
                   group_size: int = 256) -> dict[str, torch.Tensor]:
    """A float state dict with its selected Linear weights quantized.

    ``fmt`` is ``"int8_tensorwise"``, ``"int8_convrot"`` (int8_tensorwise with ConvRot in groups of
    ``group_size``, falling back to the largest power of 4 that divides the layer's inputs, or no
    rotation when none does), ``"float8_e4m3fn"``, ``"convrot_w4a4"``, ``"asym_w4a8_codebook"`` or
    ``"asym_w4a8"`` (the 4-bit ones with the same choice of rotation group, leaving layers float that no
    group fits; W4A8 in groups of 16 inputs).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in sorted(state.items()):
        if not _selected(key, value, layers):
            out[key] = value
            continue
        layer = key.removesuffix(".weight")
        size = _group_for(value.shape[1], group_size)
        if fmt in ("convrot_w4a4", "asym_w4a8", "asym_w4a8_codebook"):
            if not size or value.shape[1] % 16:
                out[key] = value
                continue
            if fmt == "convrot_w4a4":
                data, scale = quantize_w4a4(value, size)
                out[key], out[f"{layer}.weight_scale"] = data.contiguous(), scale.contiguous()
                out[f"{layer}.comfy_quant"] = comfy_quant({"format": "convrot_w4a4", "convrot_groupsize": size})
            else:
                for suffix, tensor in quantize_w4a8(value, 16, size, fmt == "asym_w4a8_codebook").items():
                    out[f"{key}{suffix}"] = tensor
                out[f"{layer}.comfy_quant"] = comfy_quant({"format": "asym_w4a8_int8", "group_size": 16,
                                                           "convrot_groupsize": size})
            continue
        if fmt == "float8_e4m3fn":
            data, scale = quantize_fp8(value)
            config: dict[str, object] = {"format": "float8_e4m3fn"}
        elif fmt == "int8_convrot" and _group_for(value.shape[1], group_size):
            size = _group_for(value.shape[1], group_size)
            data, scale = quantize_int8_convrot(value, size)
            config = {"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": size}
        elif fmt in ("int8_tensorwise", "int8_convrot"):
            data, scale = quantize_int8_tensorwise(value)
            config = {"format": "int8_tensorwise"}
        else:
            raise ValueError(f"unknown format {fmt!r}")
        out[key] = data.contiguous()
        out[f"{layer}.weight_scale"] = scale.contiguous()
        out[f"{layer}.comfy_quant"] = comfy_quant(config)
    return out


def _group_for(features: int, preferred: int) -> int:
    """The largest power of 4 (at most ``preferred``, at least 4) dividing ``features``; 0 if none."""
    size = preferred
    while size >= 4:
        if features % size == 0:
            return size
        size //= 4
    return 0


def _rewrite(source: Path, target: Path, fmt: str, layers: tuple[str, ...], group_size: int) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), "pt") as handle:
        metadata = dict(handle.metadata() or {})
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(quantize_state(state, fmt, layers, group_size), str(target), metadata=metadata)
    return target


def write_quantized_files(comfy_dir: str | Path) -> list[Path]:
    """Write the tiny quantized files into a ComfyUI models folder that holds the tiny float files
    (``diffusion_models/z_image_turbo_bf16.safetensors``, ``text_encoders/qwen_3_4b.safetensors``).

    The transformer's ConvRot groups are 256 inputs where they fit (the timestep MLP), else 64 (the
    blocks, whose inputs are 64 wide); the text encoder's 16 (its inputs are 32 and 64 wide). The 4-bit
    files: W4A4 and W4A8 (with a codebook) transformers, W4A4 and W4A8 (without) text encoders.
    """
    root = Path(comfy_dir)
    transformer = root / "diffusion_models/z_image_turbo_bf16.safetensors"
    text_encoder = root / "text_encoders/qwen_3_4b.safetensors"
    written = [
        _rewrite(transformer, root / INT8_CONVROT_TURBO, "int8_convrot", _TRANSFORMER_LAYERS, 256),
        _rewrite(transformer, root / INT8_CONVROT_BASE, "int8_convrot", _TRANSFORMER_LAYERS, 256),
        _rewrite(transformer, root / INT8_TENSORWISE_TURBO, "int8_tensorwise", _TRANSFORMER_LAYERS, 256),
        _rewrite(text_encoder, root / FP8_MIXED_TEXT_ENCODER, "float8_e4m3fn", _TEXT_ENCODER_LAYERS, 256),
        _rewrite(text_encoder, root / INT8_CONVROT_TEXT_ENCODER, "int8_convrot", _TEXT_ENCODER_LAYERS, 16),
        _rewrite(transformer, root / W4A4_TURBO, "convrot_w4a4", _TRANSFORMER_LAYERS, 256),
        _rewrite(transformer, root / W4A8_TURBO, "asym_w4a8_codebook", _TRANSFORMER_LAYERS, 256),
        _rewrite(text_encoder, root / W4A4_TEXT_ENCODER, "convrot_w4a4", _TEXT_ENCODER_LAYERS, 16),
        _rewrite(text_encoder, root / W4A8_TEXT_ENCODER, "asym_w4a8", _TEXT_ENCODER_LAYERS, 16),
    ]
    return written


def content_sha256(path: str | Path) -> str:
    """sha256 of a safetensors file's content: its metadata (sorted JSON), then per key in sorted
    order the key, dtype, shape and the tensor's bytes. Independent of the header's order."""
    from safetensors import safe_open

    digest = hashlib.sha256()
    with safe_open(str(path), "pt") as handle:
        digest.update(json.dumps(handle.metadata() or {}, sort_keys=True).encode())
        for key in sorted(handle.keys()):
            tensor = handle.get_tensor(key).contiguous()
            digest.update(f"{key}|{tensor.dtype}|{list(tensor.shape)}|".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
