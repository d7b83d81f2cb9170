"""Quantized ComfyUI checkpoints: layout detection, exact dequantization, clean refusals.

Synthetic quantized versions of the tiny Z-Image files are written in ComfyUI's layouts (plain
fp8, legacy scaled fp8, mixed-precision ``comfy_quant`` layers in fp8 / nvfp4 / mxfp8, the later
int8 format) by the small quantizers below. Each loaded weight must equal ComfyUI v0.18.1's
dequantization formula, written out here independently of graphrun's code (no swizzled scales, no
packing), and a full tiny-image run from the quantized files must match the run from files holding
the reference dequantized weights. (These files were also loaded by real ComfyUI v0.18.1 with
comfy-kitchen 0.2.8 outside the test suite: every effective weight matched bit for bit.)
"""
from __future__ import annotations

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
from graphrun.nodes.quantized import QuantizedLinear
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
        q.tensors[f"{layer}.comfy_quant"] = comfy_quant("int8_tensorwise", **({"convrot": True, "convrot_groupsize": 256}
                                                                           if convrot else {}))
    return q
