"""Quantized single-file checkpoints, read the way ComfyUI reads them (0.33 by default, v0.18.1 selectable).

ComfyUI's model files come in several precisions. This module recognises each layout from the
safetensors keys, dtypes and header metadata, and turns the weights back into ordinary tensors in
the compute dtype with exactly the arithmetic ComfyUI uses on the CPU (comfy-kitchen's eager
kernels: the same dtype conversions, the same multiplication order), so the weights match
ComfyUI's bit for bit. Scale tensors and per-layer metadata are consumed here and never reach the
model's key mapping. Which formats load depends on the ComfyUI setting (``ctx.comfy_version``,
passed down by the loaders as ``comfy_version``).

Layouts that load under every setting:

* **plain fp8** (``*_fp8_e4m3fn.safetensors``): weights stored as ``float8_e4m3fn`` or
  ``float8_e5m2`` with no scales. They are cast to the compute dtype, which is exact.
* **scaled fp8, legacy** (``*_fp8_scaled.safetensors``): a ``scaled_fp8`` marker tensor plus
  ``<layer>.scale_weight`` (and optionally ``<layer>.scale_input``). ComfyUI converts these to
  mixed-precision layers of format ``float8_e4m3fn`` (whatever the marker's dtype), and so does
  graphrun.
* **mixed precision** (``*_fp8_mixed``, ``*_fp4_mixed``, ``*_nvfp4``, ``*_mxfp8`` files): a
  ``<layer>.comfy_quant`` tensor (JSON bytes, e.g. ``{"format": "float8_e4m3fn"}``) per quantized
  layer, or the same per-layer configs in the header's ``_quantization_metadata``. The formats
  ComfyUI v0.18.1 knows (its ``QUANT_ALGOS``), and how each dequantizes to dtype ``d``:

  - ``float8_e4m3fn`` / ``float8_e5m2``: ``weight.to(d) * weight_scale.to(float32).to(d)`` with one
    scale per tensor;
  - ``nvfp4``: 4-bit E2M1 codes, two per byte (high nibble first), in blocks of 16 with a
    float8_e4m3fn scale per block (``weight_scale``, in cuBLAS' swizzled tile layout) and a
    float32 per-tensor scale (``weight_scale_2``): ``code_value * (weight_scale_2.to(d) *
    block_scale.to(d))``;
  - ``mxfp8``: float8_e4m3fn values in blocks of 32 with a power-of-two E8M0 scale per block
    (swizzled the same way), multiplied in float32 and then cast to ``d``.

  ``input_scale`` only matters for fp8 matrix multiplication on GPUs, which ComfyUI does not use
  on the CPU; it is read and ignored.

Added under the ComfyUI 0.33 setting (the default):

* ``int8_tensorwise`` (``*_int8.safetensors``; with ``"convrot": true`` the ``*_int8_convrot`` files
  of the official ``image_z_image_int8`` / ``image_z_image_turbo_int8`` templates): int8 weights
  with a float32 ``weight_scale`` (one per tensor, or one per output row), optionally stored
  rotated in groups of ``convrot_groupsize`` inputs by a Hadamard matrix. ComfyUI 0.33 never
  dequantizes them: every call runs comfy-kitchen's int8 matmul, which also quantizes the
  activations per row (after rotating them). graphrun does the same
  (:mod:`graphrun.nodes.quantized_int8`), in the transformer and in the text encoder.
* ``convrot_w4a4`` and ``asym_w4a8_int8`` (4-bit weights, two codes per int8 byte): computed at every
  call as ComfyUI 0.33 computes them on the CPU (:mod:`graphrun.nodes.quantized_w4`): W4A4 rotates the
  activations and quantizes them to 4 bits per row; W4A8 decodes its grouped codes (Lloyd-Max codebook
  or ``code - 8``, times the per-group ``weight_s_rel``) to int8 once and runs as an int8 ConvRot
  layer with the per-row ``weight_s_channel``. In the transformer and in the text encoder.
* nvfp4 layers with a ``pre_quant_scale`` (AWQ smoothing): the layer's input is multiplied by it,
  in the input's dtype, before the (dequantized) matrix product, as ComfyUI 0.33 does.

Refused, with one error that names the file, a layer and the format: under the v0.18.1 and
2025.10 settings, the int8 and 4-bit formats (``int8_tensorwise``, with or without ``convrot``;
``convrot_w4a4``; ``asym_w4a8_int8``), which those versions fail to load too (KeyError; the message
suggests ``--comfy 0.33``), and a ``pre_quant_scale``, which they do not read; under 0.33, int8 and
4-bit layers ComfyUI could not run (a scale of another shape, ConvRot groups that are not a power of 4
or do not divide the inputs, W4A8 groups ComfyUI rejects, codes not stored as int8) and a W4A8
``weight_correction`` (ComfyUI 0.33's loader ignores it and would compute the layer without it);
under every setting, any other format; scales of a shape ComfyUI cannot apply; scale tensors
without the ``scaled_fp8`` marker or a ``comfy_quant`` config (ComfyUI would ignore them and load
the weights wrong); 8-bit integer weights without a config; and any quantized tensor in a VAE file
(ComfyUI's VAE loader applies no scales). A quantized layer must be a Linear layer, the only kind
ComfyUI quantizes.

How the weights are held: the transformer's quantized layers (except int8 ones) are dequantized
once, on load, into the compute dtype, which is what ComfyUI computes with (so a quantized file
needs as much memory as a bf16 one; keeping fp8 weights with fp8 matrix multiplication is not
implemented). The text encoder computes in float32 while its other weights are stored in a lower
precision, so its quantized layers keep their compact form and are dequantized in float32 at each
call (:class:`~graphrun.nodes.quantized_layers.QuantizedLinear`), exactly as ComfyUI does, without rounding them to the storage
dtype. int8 and 4-bit layers stay so in both (:class:`graphrun.nodes.quantized_int8.Int8Linear`,
:class:`graphrun.nodes.quantized_w4.W4A4Linear`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..engine.comfy.versions import DEFAULT_COMFY_VERSION, comfy_at_least
from .quantized_int8 import Int8Weight
from .quantized_w4 import ASYM_W4A8, CONVROT_W4A4, W4A4_LINEAR_DTYPES, W4A4Weight, decode_w4a8
from .zimage.loading import ModelLoadError

#: The ``comfy_quant`` formats ComfyUI v0.18.1 can load (under every setting); graphrun dequantizes all of them.
SUPPORTED_FORMATS = ("float8_e4m3fn", "float8_e5m2", "nvfp4", "mxfp8")

#: Formats ComfyUI added after v0.18.1 (int8 support arrived in June 2026, ComfyUI PR #14636).
LATER_FORMATS = ("int8_tensorwise", "convrot_w4a4", "asym_w4a8_int8")

#: The formats graphrun loads under the ComfyUI 0.33 setting (computed as ComfyUI 0.33 does on the CPU).
SUPPORTED_FORMATS_033 = SUPPORTED_FORMATS + LATER_FORMATS

#: ``weight_dtype`` values of ComfyUI's UNETLoader and the storage dtype each one rounds to.
WEIGHT_DTYPES = {
    "default": None,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e4m3fn_fast": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}

_FP8_STORAGE = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
# Per-layer tensors each format reads besides the weight (ComfyUI's QUANT_ALGOS "parameters").
_LAYER_TENSORS = {
    "float8_e4m3fn": ("weight_scale", "input_scale"),
    "float8_e5m2": ("weight_scale", "input_scale"),
    "nvfp4": ("weight_scale", "weight_scale_2", "input_scale"),
    "mxfp8": ("weight_scale", "input_scale"),
    "int8_tensorwise": ("weight_scale",),
}
# The tensors ComfyUI 0.33's loader reads for its 4-bit formats (a W4A8 'weight_correction' is taken
# here only to be refused with a clear message).
_W4A8_TENSORS = ("weight_s_rel", "weight_s_channel", "weight_codebook", "weight_correction")
# ComfyUI 0.33 also reads an nvfp4 layer's AWQ-style ``pre_quant_scale``.
_LAYER_TENSORS_033 = {**_LAYER_TENSORS, "nvfp4": _LAYER_TENSORS["nvfp4"] + ("pre_quant_scale",),
                      CONVROT_W4A4: ("weight_scale",), ASYM_W4A8: _W4A8_TENSORS}
# Key suffixes that belong to a quantization layout, never to the model itself.
_QUANT_SUFFIXES = ("comfy_quant", "weight_scale", "weight_scale_2", "input_scale", "scale_weight",
                   "scale_input", "pre_quant_scale") + _W4A8_TENSORS
_MARKER = "scaled_fp8"
# Where ComfyUI's loaders look for the legacy marker (original file keys): the diffusion-model loader
# at the top level and under the unet prefix, the text-encoder loader at the top level only.
_MARKER_KEYS = {"transformer": ("scaled_fp8", "model.diffusion_model.scaled_fp8"),
                "text_encoder": ("scaled_fp8",), "vae": ()}
_METADATA_KEY = "_quantization_metadata"
_NVFP4_BLOCK = 16
_MXFP8_BLOCK = 32
# The 16 values of a 4-bit E2M1 code (sign bit first).
_E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
_PLAIN_FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


# ---------------------------------------------------------------------------------------------
# One quantized weight
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class QuantizedWeight:
    """One Linear layer's weight in a ComfyUI quantized format, with everything dequantizing needs.

    ``data`` is in the format's storage dtype (float8 for the fp8 formats and mxfp8, packed uint8
    for nvfp4); ``scale`` is the float32 per-tensor scale (fp8 formats, nvfp4's ``weight_scale_2``);
    ``block_scale`` holds nvfp4's float8_e4m3fn or mxfp8's E8M0 (uint8) block scales in the
    swizzled layout they are stored in. ``shape`` is the weight's logical (out, in) shape.
    """

    layer: str
    format: str
    data: torch.Tensor
    scale: torch.Tensor | None
    block_scale: torch.Tensor | None
    shape: tuple[int, int]

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight in ``dtype``, computed as ComfyUI v0.18.1 computes it on the CPU."""
        return dequantize(self, dtype)


def dequantize(weight: QuantizedWeight, dtype: torch.dtype) -> torch.Tensor:
    """Dequantize one weight to ``dtype`` with ComfyUI's operation order (see the module doc)."""
    if weight.format in _FP8_STORAGE:
        # Both factors in dtype first (the fp8 values exactly, the scale rounded), then one product.
        return weight.data.to(dtype) * weight.scale.to(dtype)
    if weight.format == "nvfp4":
        return _dequantize_nvfp4(weight, dtype)
    if weight.format == "mxfp8":
        return _dequantize_mxfp8(weight, dtype)
    raise ValueError(weight.format)


def _unswizzle(blocked: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """A (rows, cols) block-scale matrix from cuBLAS' tiled layout.

    The padded matrix is cut into 128x4 tiles; each tile is stored as 32 runs of 16 values, run
    ``r`` holding rows r, r+32, r+64, r+96 of the tile (4 columns each).
    """
    row_tiles, col_tiles = -(-rows // 128), -(-cols // 4)
    tiles = blocked.reshape(row_tiles, col_tiles, 32, 4, 4)  # (tile row, tile col, r % 32, r // 32, col)
    return tiles.permute(0, 3, 2, 1, 4).reshape(row_tiles * 128, col_tiles * 4)[:rows, :cols]


def _dequantize_nvfp4(weight: QuantizedWeight, dtype: torch.dtype) -> torch.Tensor:
    packed = weight.data
    table = torch.tensor(_E2M1_VALUES, dtype=dtype, device=packed.device)
    codes = torch.stack([packed >> 4, packed & 0x0F], dim=-1).reshape(packed.shape[0], -1)
    values = table[codes.long()]
    rows, cols = values.shape
    blocks = values.reshape(rows, cols // _NVFP4_BLOCK, _NVFP4_BLOCK)
    block_scale = _unswizzle(weight.block_scale, rows, cols // _NVFP4_BLOCK)
    total = weight.scale.to(dtype) * block_scale.to(dtype)
    return (blocks * total.unsqueeze(-1)).reshape(rows, cols).to(dtype)[: weight.shape[0], : weight.shape[1]]


def _dequantize_mxfp8(weight: QuantizedWeight, dtype: torch.dtype) -> torch.Tensor:
    rows, cols = weight.data.shape
    exponents = _unswizzle(weight.block_scale, rows, cols // _MXFP8_BLOCK).to(torch.int32)
    # E8M0 is a bare float32 exponent; code 0 is read as 0.0, as comfy-kitchen does.
    scales = torch.where(exponents == 0, torch.zeros_like(exponents), exponents << 23).view(torch.float32)
    blocks = weight.data.to(torch.float32).reshape(rows, cols // _MXFP8_BLOCK, _MXFP8_BLOCK)
    out = (blocks * scales.unsqueeze(-1)).reshape(rows, cols).to(dtype)
    return out[: weight.shape[0], : weight.shape[1]]


# ---------------------------------------------------------------------------------------------
# Reading a file's layout
# ---------------------------------------------------------------------------------------------

@dataclass
class QuantizedCheckpoint:
    """A state dict split into ordinary tensors and quantized Linear weights (keyed by layer)."""

    tensors: dict[str, torch.Tensor]
    quantized: dict[str, QuantizedWeight]
    layout: str  # "plain", "fp8", "scaled_fp8" or "mixed"
    # Whether ComfyUI builds the model with its mixed-precision ops (any layer has a config).
    mixed: bool = False
    # Layers ComfyUI 0.33 computes in int8 or 4 bits at every call (never dequantized), keyed by layer
    # (asym_w4a8_int8 layers as the int8 layers they run as).
    int8: dict[str, Int8Weight | W4A4Weight] = field(default_factory=dict)
    # nvfp4 layers' pre_quant_scale (ComfyUI 0.33 multiplies the layer's input by it), keyed by layer.
    pre_scales: dict[str, torch.Tensor] = field(default_factory=dict)


def _refuse(what: str, path: Path, layer: str, problem: str, more: int = 0) -> ModelLoadError:
    others = f" (and {more} more layer{'s' if more > 1 else ''} like it)" if more else ""
    return ModelLoadError(f"{what} {path}: layer '{layer}'{others} {problem}")


def _layer_of(key: str) -> tuple[str, str]:
    layer, _, suffix = key.rpartition(".")
    return layer, suffix


def _parse_config(raw: Any, layer: str, path: Path, what: str) -> dict[str, Any]:
    try:
        if isinstance(raw, torch.Tensor):
            raw = json.loads(raw.cpu().numpy().tobytes())
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError, TypeError) as exc:
        raise _refuse(what, path, layer, f"has an unreadable 'comfy_quant' config ({exc}); ComfyUI v0.18.1 "
                      f"cannot load it either.") from exc
    return raw


def _layer_configs(state: dict[str, torch.Tensor], metadata: dict[str, str], prefix: str, path: Path,
                   what: str, marker_honoured: bool) -> tuple[dict[str, dict[str, Any]], str]:
    """Per-layer quantization configs, normalised the way ComfyUI's loader normalises them.

    Legacy scaled-fp8 keys are renamed in ``state`` (``scale_weight`` -> ``weight_scale``,
    ``scale_input`` -> ``input_scale``) and the marker removed; ``comfy_quant`` tensors are removed.
    Returns the configs and the layout name.
    """
    configs: dict[str, dict[str, Any]] = {}
    layout = "plain"
    if _METADATA_KEY in metadata:
        try:
            layers = json.loads(metadata[_METADATA_KEY])["layers"]
            if not isinstance(layers, dict):
                raise ValueError("'layers' is not an object")
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"{what} {path}: its '{_METADATA_KEY}' header is unreadable ({exc}); "
                                 f"ComfyUI v0.18.1 cannot load it either.") from exc
        for name, conf in layers.items():
            name = name[len(prefix):] if prefix and name.startswith(prefix) else name
            configs[name] = _parse_config(conf, name, path, what)
        layout = "mixed"
    elif _MARKER in state and marker_honoured:
        # ComfyUI reads every layer with a scale_weight as float8_e4m3fn, whatever the marker's dtype.
        del state[_MARKER]
        for key in list(state):
            layer, suffix = _layer_of(key)
            if suffix == "scale_weight":
                state[f"{layer}.weight_scale"] = state.pop(key)
                configs[layer] = {"format": "float8_e4m3fn"}
            elif suffix == "scale_input":
                state[f"{layer}.input_scale"] = state.pop(key)
        layout = "scaled_fp8"
    # Configs from the header or the legacy conversion take precedence over comfy_quant tensors.
    decided = set(configs)
    for key in [k for k in state if k.endswith(".comfy_quant")]:
        raw = state.pop(key)
        layer = key[: -len(".comfy_quant")]
        if layer not in decided:
            configs[layer] = _parse_config(raw, layer, path, what)
        layout = "mixed" if layout == "plain" else layout
    if layout == "plain" and any(v.dtype in _PLAIN_FP8 for v in state.values()):
        layout = "fp8"
    return configs, layout


def format_problem(path: str | Path, what: str, comfy_version: str) -> str | None:
    """Why the ``comfy_version`` setting refuses the quantized layers of a safetensors file (a format that
    setting's ComfyUI does not know, e.g. int8 under v0.18.1), read from the header and the small
    ``comfy_quant`` tensors only, or None: the validation-time form of the loader's format check."""
    from safetensors import safe_open

    path = Path(path)
    configs: dict[str, dict[str, Any]] = {}
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
            if _METADATA_KEY in metadata:
                layers = json.loads(metadata[_METADATA_KEY])["layers"]
                configs = {name: _parse_config(conf, name, path, what) for name, conf in layers.items()}
            else:
                for key in handle.keys():
                    if key.endswith(".comfy_quant"):
                        layer = key[: -len(".comfy_quant")]
                        configs[layer] = _parse_config(handle.get_tensor(key), layer, path, what)
        _check_format(configs, path, what, comfy_version)
    except ModelLoadError as exc:
        return str(exc)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # damage the header check reports, or that loading reports with its context
    return None


def _comfy_name(comfy_version: str) -> str:
    return {"0.18.1": "ComfyUI v0.18.1", "2025.10": "ComfyUI of October 2025"}.get(comfy_version,
                                                                                 f"ComfyUI {comfy_version}")


def _check_format(configs: dict[str, dict[str, Any]], path: Path, what: str, comfy_version: str) -> None:
    new = comfy_at_least(comfy_version, "0.33")
    known = SUPPORTED_FORMATS_033 if new else SUPPORTED_FORMATS
    unknown: dict[str, list[str]] = {}
    for layer, conf in sorted(configs.items()):
        if conf.get("format") not in known:
            unknown.setdefault(str(conf.get("format")), []).append(layer)
    if not unknown:
        return
    fmt, layers = min(unknown.items())
    comfy = _comfy_name(comfy_version)
    extra = " with ConvRot rotation" if configs[layers[0]].get("convrot") else ""
    if fmt in LATER_FORMATS and not new:
        problem = (f"uses the quantization format '{fmt}'{extra}, which {comfy} does not support (its int8 "
                   f"and 4-bit formats came with ComfyUI 0.33; {comfy} fails to load this file too, with KeyError "
                   f"'{fmt}'). graphrun refuses it rather than load it wrong: run with the ComfyUI 0.33 setting "
                   f"(--comfy 0.33, the default) or use the bf16 or an fp8 version of the model.")
    elif fmt == "None":
        problem = f"has a 'comfy_quant' config without a 'format'; {comfy} cannot load it either."
    else:
        problem = (f"uses the quantization format '{fmt}', which graphrun does not know ({comfy} "
                   f"knows {', '.join(known)}). graphrun refuses it rather than load it wrong.")
    raise _refuse(what, path, layers[0], problem, len(layers) - 1)


def _int8_weight(layer: str, conf: dict[str, Any], weight: torch.Tensor, scale: torch.Tensor | None, path: Path,
                 what: str) -> Int8Weight:
    """An ``int8_tensorwise`` layer, checked the way ComfyUI 0.33's int8 matmul would use it."""
    fmt = "'int8_tensorwise'"
    if weight.dtype != torch.int8:
        raise _refuse(what, path, layer, f"is {fmt} but its weight is {weight.dtype}, not int8. graphrun refuses "
                      f"it rather than load it wrong.")
    rows, cols = weight.shape
    if scale is None:
        raise _refuse(what, path, layer, f"is {fmt} but has no '{layer}.weight_scale'; ComfyUI 0.33 cannot load "
                      f"it either (Missing INT8 weight scale).")
    if not scale.is_floating_point() or scale.numel() not in (1, rows):
        raise _refuse(what, path, layer, f"is {fmt} with a 'weight_scale' of shape {tuple(scale.shape)} and dtype "
                      f"{scale.dtype}; ComfyUI 0.33's int8 matmul takes one floating-point scale per tensor or "
                      f"one per output row ({rows}). graphrun refuses it rather than load it wrong.")
    params = conf.get("params", {})
    params = params if isinstance(params, dict) else {}
    convrot = bool(conf.get("convrot", params.get("convrot", False)))
    try:
        group = int(conf.get("convrot_groupsize", params.get("convrot_groupsize", 256)))
    except (TypeError, ValueError):
        group = 0
    if convrot and (group < 4 or group & (group - 1) or (group.bit_length() - 1) % 2 or cols % group):
        raise _refuse(what, path, layer, f"is {fmt} with ConvRot groups of "
                      f"{conf.get('convrot_groupsize', params.get('convrot_groupsize'))!r} inputs, which its "
                      f"{cols} inputs and ConvRot's Hadamard matrices (a power of 4 in size) do not fit; ComfyUI "
                      f"0.33 cannot run it either.")
    return Int8Weight(layer, weight.contiguous(), scale.to(torch.float32).reshape(-1).contiguous(), convrot,
                      group if convrot else 256)


def _conf_int(conf: dict[str, Any], name: str, default: int) -> int | None:
    """A layer config's integer setting as ComfyUI 0.33 reads it (top level, else under ``params``)."""
    params = conf.get("params", {})
    params = params if isinstance(params, dict) else {}
    try:
        return int(conf.get(name, params.get(name, default)))
    except (TypeError, ValueError):
        return None


def _is_power_of_4(size: int | None) -> bool:
    return size is not None and size >= 4 and not size & (size - 1) and (size.bit_length() - 1) % 2 == 0


def _w4_weight(layer: str, conf: dict[str, Any], own: dict[str, torch.Tensor], path: Path,
               what: str) -> Int8Weight | W4A4Weight:
    """A ``convrot_w4a4`` or ``asym_w4a8_int8`` layer, checked the way ComfyUI 0.33's CPU kernels would
    use it (everything they would reject, and everything that would make them compute something else,
    is refused naming the file, the layer and the format)."""
    fmt = conf["format"]
    weight = own["weight"]
    if weight.dim() != 2:
        raise _refuse(what, path, layer, f"is quantized ('{fmt}') but its weight has shape {tuple(weight.shape)}: "
                      f"graphrun computes 4-bit Linear layers only.")
    if weight.dtype != torch.int8:
        raise _refuse(what, path, layer, f"is '{fmt}' but its weight is {weight.dtype}, not int8 (two 4-bit codes "
                      f"per byte). graphrun refuses it rather than load it wrong.")
    rows, cols = weight.shape[0], weight.shape[1] * 2
    group = _conf_int(conf, "convrot_groupsize", 256)
    if not _is_power_of_4(group) or cols % group:
        raise _refuse(what, path, layer, f"is '{fmt}' with ConvRot groups of {group!r} inputs, which its {cols} "
                      f"inputs and ConvRot's Hadamard matrices (a power of 4 in size) do not fit; ComfyUI 0.33 "
                      f"cannot run it either.")
    if fmt == CONVROT_W4A4:
        scale = own.get("weight_scale")
        if scale is None:
            raise _refuse(what, path, layer, f"is '{fmt}' but has no '{layer}.weight_scale'; ComfyUI 0.33 cannot "
                          f"load it either (Missing ConvRot W4A4 weight scale).")
        if not scale.is_floating_point() or scale.numel() != rows:
            raise _refuse(what, path, layer, f"is '{fmt}' with a 'weight_scale' of shape {tuple(scale.shape)} and "
                          f"dtype {scale.dtype}; its 4-bit matmul takes one floating-point scale per output row "
                          f"({rows}). graphrun refuses it rather than load it wrong.")
        params = conf.get("params", {})
        params = params if isinstance(params, dict) else {}
        linear_dtype = conf.get("linear_dtype", params.get("linear_dtype", "int4"))
        if linear_dtype not in W4A4_LINEAR_DTYPES:
            raise _refuse(what, path, layer, f"is '{fmt}' with linear_dtype {linear_dtype!r}; ComfyUI 0.33 accepts "
                          f"only 'int4' or 'int8' and cannot load it either.")
        return W4A4Weight(layer, weight.contiguous(), scale.to(torch.float32).reshape(-1).contiguous(), group)
    if "weight_correction" in own:
        raise _refuse(what, path, layer, f"is '{fmt}' with a 'weight_correction' (asymmetric zero points), which "
                      f"ComfyUI 0.33's loader does not read: it would compute the layer without it, i.e. wrongly. "
                      f"graphrun refuses it; re-export the layer symmetric (with or without a codebook).")
    size = _conf_int(conf, "group_size", 16)
    if size is None or size < 4 or cols % 16 or cols % size or (16 % size and size % 16):
        raise _refuse(what, path, layer, f"is '{fmt}' with groups of {size!r} inputs for its {cols} inputs; "
                      f"ComfyUI 0.33 needs the inputs to be a multiple of 16 and of the group size, and a group "
                      f"size of at least 4 that divides 16 or is a multiple of 16, and cannot run it either.")
    groups = cols // size
    s_rel, s_channel, codebook = (own.get(f"weight_{name}") for name in ("s_rel", "s_channel", "codebook"))
    if s_rel is not None and s_rel.dtype == torch.uint8:
        s_rel = s_rel.view(torch.float8_e4m3fn)  # as ComfyUI reads fp8 bytes stored as uint8
    checks = (("s_rel", s_rel, (rows, groups), "one scale per row and group"),
              ("s_channel", s_channel, (rows,), "one scale per output row"))
    for name, value, shape, meaning in checks:
        if value is None:
            raise _refuse(what, path, layer, f"is '{fmt}' but has no '{layer}.weight_{name}'; ComfyUI 0.33 cannot "
                          f"load it either.")
        if not value.is_floating_point() or tuple(value.shape) != shape:
            raise _refuse(what, path, layer, f"is '{fmt}' with a 'weight_{name}' of shape {tuple(value.shape)} and "
                          f"dtype {value.dtype}; ComfyUI 0.33 needs {shape} ({meaning}) and cannot run it either.")
    if codebook is not None and (not codebook.is_floating_point() or tuple(codebook.shape) != (16,)):
        raise _refuse(what, path, layer, f"is '{fmt}' with a 'weight_codebook' of shape {tuple(codebook.shape)} "
                      f"and dtype {codebook.dtype}; ComfyUI 0.33 needs 16 floating-point levels and cannot run "
                      f"it either.")
    assert s_rel is not None and s_channel is not None
    return decode_w4a8(layer, weight, s_rel, s_channel, codebook, size, group)


def _single_scale(value: torch.Tensor | None, name: str, layer: str, fmt: str, path: Path,
                  what: str) -> torch.Tensor:
    if value is None:
        raise _refuse(what, path, layer, f"is '{fmt}' but has no '{layer}.{name}'; ComfyUI v0.18.1 cannot "
                      f"run it either.")
    if value.numel() != 1 or not value.is_floating_point():
        raise _refuse(what, path, layer, f"is '{fmt}' with a '{name}' of shape {tuple(value.shape)} and dtype "
                      f"{value.dtype}; ComfyUI v0.18.1 applies one floating-point scale per tensor only. "
                      f"graphrun refuses it rather than load it wrong.")
    # ComfyUI keeps scales in float32; the product happens later in the compute dtype.
    return value.to(torch.float32)


def _block_scale(value: torch.Tensor | None, layer: str, fmt: str, rows: int, blocks: int, path: Path,
                 what: str) -> torch.Tensor:
    expected = -(-rows // 128) * 128 * -(-blocks // 4) * 4
    if value is None or value.element_size() != 1 or value.numel() != expected:
        got = "none" if value is None else f"{value.numel()} values of {value.dtype}"
        raise _refuse(what, path, layer, f"is '{fmt}' but its block scales ('{layer}.weight_scale') do not fit "
                      f"its weight: expected {expected} one-byte values, got {got}. graphrun refuses it rather "
                      f"than load it wrong.")
    return value


def _quantized_weight(layer: str, conf: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path,
                      what: str) -> QuantizedWeight:
    fmt = conf["format"]
    weight = tensors.pop("weight")
    if weight.dim() != 2:
        raise _refuse(what, path, layer, f"is quantized ('{fmt}') but its weight has shape {tuple(weight.shape)}: "
                      f"ComfyUI v0.18.1 dequantizes Linear layers only. graphrun refuses it rather than load it wrong.")
    if fmt in _FP8_STORAGE:
        scale = _single_scale(tensors.get("weight_scale"), "weight_scale", layer, fmt, path, what)
        # Stored weights are converted to the format's fp8 type first, as ComfyUI does.
        return QuantizedWeight(layer, fmt, weight.to(_FP8_STORAGE[fmt]), scale, None, tuple(weight.shape))
    if fmt == "nvfp4":
        if weight.dtype != torch.uint8:
            raise _refuse(what, path, layer, f"is 'nvfp4' but its weight is {weight.dtype}, not packed uint8.")
        scale = _single_scale(tensors.get("weight_scale_2"), "weight_scale_2", layer, fmt, path, what)
        rows, cols = weight.shape[0], weight.shape[1] * 2
        if cols % _NVFP4_BLOCK:
            raise _refuse(what, path, layer, f"is 'nvfp4' with {cols} columns, not a multiple of {_NVFP4_BLOCK}.")
        blocks = _block_scale(tensors.get("weight_scale"), layer, fmt, rows, cols // _NVFP4_BLOCK, path, what)
        return QuantizedWeight(layer, fmt, weight, scale, blocks.view(torch.float8_e4m3fn), (rows, cols))
    # mxfp8
    rows, cols = weight.shape
    if cols % _MXFP8_BLOCK:
        raise _refuse(what, path, layer, f"is 'mxfp8' with {cols} columns, not a multiple of {_MXFP8_BLOCK}.")
    blocks = _block_scale(tensors.get("weight_scale"), layer, fmt, rows, cols // _MXFP8_BLOCK, path, what)
    return QuantizedWeight(layer, fmt, weight.to(torch.float8_e4m3fn), None, blocks.view(torch.uint8),
                           (rows, cols))


def read_checkpoint(state: dict[str, torch.Tensor], info: Any, what: str, kind: str,
                    prefix: str = "", comfy_version: str = DEFAULT_COMFY_VERSION) -> QuantizedCheckpoint:
    """Split a (prefix-stripped) state dict into ordinary tensors and quantized Linear weights.

    ``info`` describes the file: ``.path``, ``.metadata`` (the safetensors header metadata) and
    ``.shapes`` (keyed by the file's own key names); ``kind`` is ``"transformer"``,
    ``"text_encoder"`` or ``"vae"`` (ComfyUI's loaders differ in where they look for the legacy
    marker); ``prefix`` is the key prefix that was stripped (names in ``_quantization_metadata``
    may carry it). No scale or config tensor is left in ``tensors``; every unsupported or
    inconsistent layout raises one :class:`ModelLoadError`. Plain fp8 tensors stay as they are.
    ``comfy_version`` is the ComfyUI setting: from 0.33 on, ``int8_tensorwise`` layers load (into
    ``int8``) and nvfp4 layers may carry a ``pre_quant_scale`` (into ``pre_scales``).
    """
    path = Path(info.path)
    if kind == "vae":
        scaled = sorted(k for k in state if _layer_of(k)[1] in _QUANT_SUFFIXES or k == _MARKER)
        if scaled or _METADATA_KEY in (info.metadata or {}):
            layer = _layer_of(scaled[0])[0] or scaled[0] if scaled else _METADATA_KEY
            raise _refuse(what, path, layer, "is quantized (scale tensors or a quantization config); ComfyUI v0.18.1 "
                          "applies no scales to VAE weights and would decode wrongly, so graphrun refuses it. Use "
                          "the plain ae.safetensors.", max(len({_layer_of(k)[0] for k in scaled}) - 1, 0))
    marker_keys = [k for k in _MARKER_KEYS[kind] if k in info.shapes]
    if _MARKER in state and not marker_keys and kind != "vae":
        where = next(k for k in info.shapes if k.endswith(_MARKER))
        raise _refuse(what, path, where, f"is a 'scaled_fp8' marker where ComfyUI v0.18.1's loader does not look for "
                      f"it (it expects {' or '.join(repr(k) for k in _MARKER_KEYS[kind])}), so ComfyUI would use the "
                      f"fp8 weights unscaled. graphrun refuses it rather than load it wrong.")
    state = dict(state)
    configs, layout = _layer_configs(state, dict(info.metadata or {}), prefix, path, what, bool(marker_keys))
    mixed = bool(configs)
    configs = {layer: conf for layer, conf in configs.items() if f"{layer}.weight" in state}
    _check_format(configs, path, what, comfy_version)
    tables = _LAYER_TENSORS_033 if comfy_at_least(comfy_version, "0.33") else _LAYER_TENSORS
    quantized: dict[str, QuantizedWeight] = {}
    int8: dict[str, Int8Weight | W4A4Weight] = {}
    pre_scales: dict[str, torch.Tensor] = {}
    for layer, conf in sorted(configs.items()):
        allowed = ("weight",) + tables[conf["format"]]
        own = {name: state.pop(f"{layer}.{name}") for name in allowed if f"{layer}.{name}" in state}
        if "pre_quant_scale" in own:
            pre_scales[layer] = _pre_scale(own.pop("pre_quant_scale"), layer, own["weight"], path, what)
        if conf["format"] == "int8_tensorwise":
            weight = own["weight"]
            if weight.dim() != 2:
                raise _refuse(what, path, layer, f"is quantized ('int8_tensorwise') but its weight has shape "
                              f"{tuple(weight.shape)}: graphrun computes int8 Linear layers only.")
            int8[layer] = _int8_weight(layer, conf, weight, own.get("weight_scale"), path, what)
        elif conf["format"] in (CONVROT_W4A4, ASYM_W4A8):
            int8[layer] = _w4_weight(layer, conf, own, path, what)
        else:
            quantized[layer] = _quantized_weight(layer, conf, own, path, what)
    # Weight scales first: they are what makes a file load wrong when ignored.
    leftovers = sorted((k for k in state if _layer_of(k)[1] in _QUANT_SUFFIXES or k == _MARKER),
                       key=lambda k: (_layer_of(k)[1] not in ("scale_weight", "weight_scale"), k))
    if leftovers:
        layer, suffix = _layer_of(leftovers[0])
        if layer in configs:
            how = f"that its format '{configs[layer]['format']}' does not use"
        else:
            how = ("without the 'scaled_fp8' marker or a 'comfy_quant' config for the layer, so ComfyUI v0.18.1 "
                   "would ignore it (and use any fp8 weight unscaled)")
        raise _refuse(what, path, layer or leftovers[0], f"has a '{suffix}' tensor {how}. graphrun refuses it "
                      f"rather than load it wrong.", len(leftovers) - 1)
    integers = sorted(k for k, v in state.items() if v.dtype in (torch.int8, torch.uint8))
    if integers:
        raise _refuse(what, path, _layer_of(integers[0])[0], f"has 8-bit integer weights "
                      f"({state[integers[0]].dtype}) without a quantization config, which ComfyUI v0.18.1 "
                      f"cannot dequantize. graphrun refuses it rather than load it wrong.", len(integers) - 1)
    odd = sorted(k for k, v in state.items() if v.dtype.is_floating_point and v.element_size() == 1
                 and v.dtype not in _PLAIN_FP8)
    if odd:
        raise _refuse(what, path, _layer_of(odd[0])[0], f"is stored as {state[odd[0]].dtype}, which ComfyUI "
                      f"v0.18.1 does not load as a weight.", len(odd) - 1)
    return QuantizedCheckpoint(state, quantized, layout, mixed, int8, pre_scales)


def _pre_scale(value: torch.Tensor, layer: str, weight: torch.Tensor, path: Path, what: str) -> torch.Tensor:
    # nvfp4 packs two inputs per byte: the layer has twice the stored columns.
    inputs = weight.shape[-1] * 2
    if not value.is_floating_point() or value.numel() != inputs or value.shape[-1] != inputs:
        raise _refuse(what, path, layer, f"has a 'pre_quant_scale' of shape {tuple(value.shape)} and dtype "
                      f"{value.dtype}, but its {inputs} inputs need one floating-point factor each. graphrun "
                      f"refuses it rather than load it wrong.")
    return value.reshape(inputs).contiguous()


# ---------------------------------------------------------------------------------------------
# What the loaders call
# ---------------------------------------------------------------------------------------------

def _is_linear_param(key: str, tensors: dict[str, torch.Tensor], quantized: dict[str, Any]) -> bool:
    """Whether ``key`` is the weight or bias of a Linear layer (2-D weight) in ComfyUI's model."""
    layer, suffix = _layer_of(key)
    if layer in quantized:
        return True
    weight = tensors.get(f"{layer}.weight")
    return suffix in ("weight", "bias") and weight is not None and weight.dim() == 2


def load_checkpoint(state: dict[str, torch.Tensor], info: Any, what: str, kind: str, dtype: torch.dtype, *,
                    prefix: str = "", weight_dtype: str = "default",
                    comfy_version: str = DEFAULT_COMFY_VERSION) -> tuple[dict[str, torch.Tensor], QuantizedCheckpoint]:
    """A quantized file's state dict as ordinary tensors, and the checkpoint it was read from (the
    transformer and the VAE; arguments as for :func:`read_checkpoint`).

    Quantized layers are dequantized to ``dtype`` and plain fp8 tensors cast to it (both as
    ComfyUI computes them); other tensors are returned unchanged. ``weight_dtype`` is the
    UNETLoader option: ``fp8_e4m3fn``/``fp8_e4m3fn_fast``/``fp8_e5m2`` first round the file's
    weights to that fp8 type, as ComfyUI does by storing the model in it (a mixed-precision file
    keeps its Linear layers, which ComfyUI keeps in the compute dtype). A VAE file may hold plain
    fp8 weights but nothing scaled: ComfyUI's VAE loader applies no scales.

    The layers ComfyUI computes at every call (``checkpoint.int8``; the inputs of
    ``checkpoint.pre_scales``) get their dequantized weight here too, only so that the model can be
    built: the loader then installs them with :func:`~graphrun.nodes.quantized_layers.install_quantized_linears`.
    """
    checkpoint = read_checkpoint(state, info, what, kind, prefix, comfy_version)
    storage = WEIGHT_DTYPES.get(weight_dtype, "unknown")
    if storage == "unknown":
        raise ValueError(f"weight_dtype must be one of {', '.join(WEIGHT_DTYPES)}, got {weight_dtype!r}")
    mixed = checkpoint.mixed
    out: dict[str, torch.Tensor] = {}
    for key, value in checkpoint.tensors.items():
        if storage is not None and value.is_floating_point() and not (
                mixed and _is_linear_param(key, checkpoint.tensors, {**checkpoint.quantized, **checkpoint.int8})):
            value = value.to(storage)
        out[key] = value.to(dtype) if value.dtype in _PLAIN_FP8 else value
    for layer, weight in checkpoint.quantized.items():
        out[f"{layer}.weight"] = weight.dequantize(dtype)
    for layer, weight in checkpoint.int8.items():
        out[f"{layer}.weight"] = weight.dequantize(dtype)
    return out, checkpoint


def dequantize_checkpoint(state: dict[str, torch.Tensor], info: Any, what: str, kind: str, dtype: torch.dtype, *,
                          prefix: str = "", weight_dtype: str = "default",
                          comfy_version: str = DEFAULT_COMFY_VERSION) -> dict[str, torch.Tensor]:
    """:func:`load_checkpoint` for a model without compute-time quantized layers (the VAE, whose
    quantized files are refused); such layers would be wrong as plain weights, so they raise."""
    out, checkpoint = load_checkpoint(state, info, what, kind, dtype, prefix=prefix, weight_dtype=weight_dtype,
                                      comfy_version=comfy_version)
    live = sorted(checkpoint.int8) + sorted(checkpoint.pre_scales)
    if live:
        raise _refuse(what, Path(info.path), live[0], "is computed in int8, in 4 bits or with a pre_quant_scale by ComfyUI; this "
                      "model's loader cannot hold such layers. graphrun refuses it rather than load it wrong.",
                      len(live) - 1)
    return out


def split_checkpoint(state: dict[str, torch.Tensor], info: Any, what: str, dtype: torch.dtype, *,
                     prefix: str = "", comfy_version: str = DEFAULT_COMFY_VERSION) -> QuantizedCheckpoint:
    """:func:`read_checkpoint` for the text encoder, with plain fp8 tensors cast to ``dtype``
    (exact); the quantized weights stay quantized for :func:`~graphrun.nodes.quantized_layers.install_quantized_linears`."""
    checkpoint = read_checkpoint(state, info, what, "text_encoder", prefix, comfy_version)
    checkpoint.tensors = {k: (v.to(dtype) if v.dtype in _PLAIN_FP8 else v) for k, v in checkpoint.tensors.items()}
    return checkpoint


def packed_int4_layers(path: str | Path, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, str],
                       metadata: dict[str, str] | None) -> set[str]:
    """The layers of a file whose int8 weight holds two 4-bit codes per byte (``convrot_w4a4`` and
    ``asym_w4a8_int8``), from the header and the small ``comfy_quant`` tensors only (an int8 weight
    with a ``weight_scale`` may also be ``int8_tensorwise``, so the config decides)."""
    candidates = {key[: -len(".weight")] for key, dtype in dtypes.items()
                  if dtype == "I8" and key.endswith(".weight") and len(shapes.get(key, ())) == 2}
    packed = {layer for layer in candidates if f"{layer}.weight_s_rel" in shapes}
    formats: dict[str, Any] = {}
    try:
        layers = json.loads((metadata or {}).get(_METADATA_KEY, "{}")).get("layers", {})
        formats.update({name: conf.get("format") for name, conf in layers.items() if isinstance(conf, dict)})
    except (ValueError, AttributeError):
        pass  # read_checkpoint reports an unreadable header
    pending = [layer for layer in candidates - packed
               if layer not in formats and f"{layer}.comfy_quant" in shapes]
    if pending:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            for layer in pending:
                try:
                    conf = json.loads(handle.get_tensor(f"{layer}.comfy_quant").numpy().tobytes())
                except (ValueError, UnicodeDecodeError):
                    continue  # read_checkpoint reports it
                if isinstance(conf, dict):
                    formats[layer] = conf.get("format")
    packed |= {layer for layer in candidates if formats.get(layer) in (CONVROT_W4A4, ASYM_W4A8)}
    return packed


def logical_shapes(shapes: dict[str, tuple[int, ...]], dtypes: dict[str, str],
                   packed: set[str] | frozenset[str] = frozenset()) -> dict[str, tuple[int, ...]]:
    """Tensor shapes as the model sees them: an nvfp4 weight (packed uint8 with a
    ``weight_scale_2`` beside it) and the int8 weights of the ``packed`` layers (4-bit codes, see
    :func:`packed_int4_layers`) have twice the columns they are stored with. ``dtypes`` are
    safetensors dtype names (``"U8"``, ...)."""
    out = dict(shapes)
    for key, shape in shapes.items():
        layer, suffix = _layer_of(key)
        if suffix != "weight" or len(shape) != 2:
            continue
        if (dtypes.get(key) == "U8" and f"{layer}.weight_scale_2" in shapes) or layer in packed:
            out[key] = (shape[0], shape[1] * 2)
    return out
