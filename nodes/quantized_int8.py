"""ComfyUI 0.33's int8 Linear layers, computed the way ComfyUI computes them on the CPU.

ComfyUI 0.33 keeps an ``int8_tensorwise`` layer's weight in int8 and, at every call, runs
comfy-kitchen's ``int8_linear`` on it (its portable "eager" backend on the CPU): the activations are
quantized to int8 too, one scale per row, and multiplied with the int8 weight in exact integer
arithmetic. The result is *not* a float linear on the dequantized weight (the activation rounding
alone changes outputs by up to a few percent of a value), so graphrun reproduces the computation
step by step, in its own code:

1. with ``convrot``, the input is rotated: each run of ``convrot_groupsize`` features is multiplied
   by the normalised regular Hadamard matrix of that size (in the input's dtype), the rotation the
   weight was stored with;
2. per row: ``scale = amax(|x|) / 127`` in float32 (at least 1e-30), ``q = round(x / scale)``
   clamped to [-128, 127], with the division done in the input's dtype (a zero scale divides by the
   dtype's smallest normal number instead);
3. ``q @ weight.T`` accumulated in int32 (exact);
4. ``acc.float() * (row_scale * weight_scale)`` (the scales multiplied first, in float32; the
   weight scale is one value or one per output row), cast to the input's dtype, then the bias
   added in that dtype.

The output dtype is the input's. ``pre_quant_scale`` (nvfp4 files, AWQ-style smoothing) multiplies
the input, in its dtype, before anything else (:func:`add_pre_scale`, also for the layers graphrun
otherwise dequantizes once).

A LoRA on an int8 layer (:func:`dequantize_for_patch`, :func:`requantize_patched`, used by
``graphrun.nodes.lora``) is applied as ComfyUI 0.33 applies it when it loads the patched model
(``ModelPatcher.patch_weight_to_device`` with the mixed-precision Linear's ``convert_weight`` /
``set_weight``, comfy-kitchen's eager quantizers): the int8 weight is dequantized (``codes * scale``,
with ConvRot rotated back), the LoRA is added in the LoRA compute dtype, and the sum is quantized
again into the same layout with a *recalculated* scale and *stochastic rounding* seeded by the
weight's ComfyUI key (:func:`comfy_seed`, a CRC-32): ``floor(w / scale + u)``, ``u`` from
``torch.rand`` on a generator seeded with that number. The layer keeps computing in int8 with the
new codes and scale. Every code can move, not only those of the patched rows.
"""
from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .quantized_w4 import W4A8Params


@functools.lru_cache(maxsize=16)
def _hadamard_f64(size: int) -> torch.Tensor:
    if size < 4 or size & (size - 1) or (size.bit_length() - 1) % 2:
        raise ValueError(f"a regular Hadamard matrix needs a power of 4 as size, got {size}")
    h4 = torch.tensor([[1, 1, 1, -1], [1, 1, -1, 1], [1, -1, 1, 1], [-1, 1, 1, 1]], dtype=torch.float64)
    h = h4
    while h.shape[0] < size:
        h = torch.kron(h, h4)
    return h


def hadamard(size: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """The normalised regular Hadamard matrix of ``size`` (a power of 4): Kronecker powers of the
    4x4 matrix with -1 on the anti-diagonal, divided by ``sqrt(size)``.

    Built as comfy-kitchen builds it: the ±1 matrix in ``dtype``, then one division by
    ``size ** 0.5`` in ``dtype`` (so in bfloat16 the entries round the same way).
    """
    return _hadamard_f64(size).to(dtype=dtype, device=device) / (size ** 0.5)


def rotate(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """ConvRot's online rotation of activations: ``x`` in groups of ``group_size`` features, each
    group multiplied by the Hadamard matrix (one batched matmul in ``x``'s dtype)."""
    features = x.shape[-1]
    grouped = x.reshape(-1, features // group_size, group_size)
    return torch.matmul(grouped, hadamard(group_size, x.dtype, x.device)).reshape(x.shape)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row int8 codes of a 2-D ``x`` and the float32 row scales, shape (rows, 1)."""
    scale = (x.abs().amax(dim=-1, keepdim=True).float() / 127.0).clamp(min=1e-30)
    divisor = scale.to(x.dtype)
    divisor = torch.where(divisor == 0, torch.full_like(divisor, torch.finfo(x.dtype).tiny), divisor)
    return (x / divisor).round().clamp(-128.0, 127.0).to(torch.int8), scale


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of int8 matrices with exact int32 accumulation."""
    if a.device.type == "cpu" or a.shape[0] == 0:
        # Exact in any summation order: int8 products summed in int32 cannot overflow for the
        # inner sizes of real models (< 2**17 terms).
        return torch.matmul(a.to(torch.int32), b.to(torch.int32))
    # torch._int_mm needs more than 16 rows and a multiple of 8 for the inner and outer sizes on CUDA.
    m, k = a.shape
    n = b.shape[1]
    pad_m, pad_k, pad_n = max(17, m) - m, (-k) % 8, (-n) % 8
    if pad_m or pad_k or pad_n:
        a = torch.nn.functional.pad(a, (0, pad_k, 0, pad_m))
        b = torch.nn.functional.pad(b, (0, pad_n, 0, pad_k))
    return torch._int_mm(a, b)[:m, :n]


def int8_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None,
                *, convrot: bool = False, group_size: int = 256) -> torch.Tensor:
    """ComfyUI 0.33's int8 Linear (comfy-kitchen ``int8_linear``) on ``x`` (any leading shape).

    ``weight`` is the int8 (out, in) matrix, ``weight_scale`` its float32 scale (one value, or one
    per output row); see the module docstring for the order of operations.
    """
    out_dtype = x.dtype
    if convrot:
        x = rotate(x, group_size)
    lead = x.shape[:-1]
    x_q, x_scale = quantize_rows(x.reshape(-1, x.shape[-1]))
    acc = int8_matmul(x_q, weight.t())
    scales = x_scale * weight_scale.to(device=x.device, dtype=torch.float32).reshape(1, -1)
    out = (acc.float() * scales).to(out_dtype)
    if bias is not None:
        out = out + bias.to(device=out.device, dtype=out.dtype)
    return out.reshape(*lead, weight.shape[0])


@dataclass(frozen=True)
class Int8Weight:
    """One Linear layer's ``int8_tensorwise`` weight: int8 (out, in) codes, the float32 scale (one
    value or one per row, flattened) and the ConvRot setting. ``format`` is the file's format: an
    ``asym_w4a8_int8`` layer runs as an int8 ConvRot layer too (``graphrun.nodes.quantized_w4``)."""

    layer: str
    data: torch.Tensor
    scale: torch.Tensor
    convrot: bool
    group_size: int
    format: str = "int8_tensorwise"
    # For an asym_w4a8_int8 layer, what requantizing it after a LoRA patch needs.
    w4a8: W4A8Params | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    def rows(self, start: int, stop: int) -> Int8Weight:
        """The weight of output rows ``start:stop`` (a fused projection split into its parts: each
        output only depends on its own row, so the parts compute exactly what the whole does)."""
        scale = self.scale if self.scale.numel() == 1 else self.scale[start:stop]
        return Int8Weight(self.layer, self.data[start:stop].contiguous(), scale.contiguous(), self.convrot,
                          self.group_size, self.format, self.w4a8)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight as floats (for inspection and LoRA math; ComfyUI never computes with it)."""
        w = self.data.float() * self.scale.reshape(-1, 1)
        if self.convrot:
            h = hadamard(self.group_size, torch.float32, w.device)
            rows, cols = w.shape
            w = torch.matmul(w.reshape(rows, cols // self.group_size, self.group_size), h).reshape(rows, cols)
        return w.to(dtype)


class Int8Linear(torch.nn.Module):
    """A Linear layer computed with :func:`int8_linear` at every call (ComfyUI's int8 layer).

    The int8 codes are a buffer (dtype casts of the model leave integer tensors alone); the float32
    scale is kept as its int32 bit pattern so that casting the model to bf16 cannot round it. The
    bias is an ordinary parameter, cast to the input's dtype at each call as ComfyUI casts it.
    """

    def __init__(self, weight: Int8Weight, bias: torch.nn.Parameter | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.layer = weight.layer
        self.convrot = weight.convrot
        self.group_size = weight.group_size
        self.format = weight.format
        self.w4a8 = weight.w4a8
        self.register_buffer("q_data", weight.data.contiguous(), persistent=False)
        self.register_buffer("q_scale", weight.scale.to(torch.float32).contiguous().view(torch.int32),
                             persistent=False)
        self.bias = bias

    @property
    def weight(self) -> torch.Tensor:
        """The int8 codes (read-only view; code that asks a Linear for its weight dtype sees int8 and
        falls back to :attr:`compute_dtype`, as diffusers' Z-Image timestep embedder does)."""
        return self.q_data

    @property
    def compute_dtype(self) -> torch.dtype:
        """The model's dtype (its bias's), which inputs are cast to before this layer."""
        return self.bias.dtype if self.bias is not None else torch.float32

    def int8_weight(self) -> Int8Weight:
        return Int8Weight(self.layer, self.q_data, self.q_scale.view(torch.float32), self.convrot, self.group_size,
                          self.format, self.w4a8)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.int8_weight().dequantize(dtype)

    def int8_buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The tensors holding the codes and the scale (its int32 bit pattern), which a LoRA patch
        overwrites in place (``graphrun.nodes.lora`` backs them up and restores them)."""
        return self.q_data, self.q_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.q_data, self.q_scale.view(torch.float32), self.bias, convrot=self.convrot,
                           group_size=self.group_size)

    def extra_repr(self) -> str:
        rot = f", convrot={self.group_size}" if self.convrot else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.format}{rot}"


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def add_pre_scale(module: torch.nn.Module, scale: torch.Tensor) -> None:
    """Multiply ``module``'s input by ``scale`` (a file's ``pre_quant_scale``), in the input's dtype,
    before every call, as ComfyUI 0.33's mixed-precision Linear does for every format.

    The scale is kept as its bit pattern (a non-persistent buffer) so model dtype casts cannot round
    it before that cast; the module itself and its parameter names stay as they are.
    """
    dtype = scale.dtype
    module.register_buffer("pre_quant_scale_bits", scale.contiguous().view(_BITS[scale.element_size()]),
                           persistent=False)

    def pre_scale(mod: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = args[0]
        factor = mod.pre_quant_scale_bits.view(dtype).to(device=x.device, dtype=x.dtype)
        return (x * factor, *args[1:])

    module.register_forward_pre_hook(pre_scale)


# ---------------------------------------------------------------------------------------------
# LoRA patching of int8 weights (ComfyUI 0.33's dequantize -> patch -> requantize)


def comfy_seed(key: str) -> int:
    """ComfyUI's ``string_to_seed`` of a weight key: the CRC-32 of its characters (each character's
    code point as one byte, which is plain CRC-32 for the ASCII keys of state dicts)."""
    if key.isascii():
        return zlib.crc32(key.encode("ascii"))
    crc = 0xFFFFFFFF
    for char in key:
        crc ^= ord(char)
        for _ in range(8):
            crc = (crc >> 1) ^ 0xEDB88320 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def _rotate_weight(weight: torch.Tensor, h: torch.Tensor, group_size: int) -> torch.Tensor:
    """``weight`` in groups of ``group_size`` input features, each group times ``h``'s transpose
    (comfy-kitchen rotates weights with the transposed matrix; the transpose changes which BLAS path
    runs, so it is kept even though the regular Hadamard matrix is symmetric)."""
    rows, cols = weight.shape
    grouped = weight.reshape(rows, cols // group_size, group_size)
    return torch.matmul(grouped, h.t().to(dtype=weight.dtype, device=weight.device)).reshape(rows, cols)


def dequantize_for_patch(weight: Int8Weight, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """The float weight ComfyUI 0.33 patches: ``codes.float() * scale`` (the scale per tensor or per
    row) in float32, rotated back with the float32 Hadamard matrix for ConvRot, then cast to
    ``dtype`` (the LoRA compute dtype)."""
    data = weight.data.to(device=device)
    scale = weight.scale.to(device=device, dtype=torch.float32).reshape(-1, 1)
    w = data.float() * scale
    if weight.convrot:
        w = _rotate_weight(w, hadamard(weight.group_size, torch.float32, w.device), weight.group_size)
    return w.to(dtype)


def requantize_patched(w: torch.Tensor, *, convrot: bool, group_size: int, per_row: bool,
                       seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a patched float weight back to int8 as ComfyUI 0.33's ``set_weight`` does
    (``requantize_from_float(scale="recalculate", stochastic_rounding=seed)``, comfy-kitchen's eager
    quantizers); returns the int8 codes and the new float32 scale, flattened (one value, or one per row).

    With ConvRot the weight is rotated again (Hadamard matrix in ``w``'s dtype) and scaled per row;
    without, one scale for the tensor, or one per row when the file had per-row scales (``per_row``).
    The scale is ``amax(|w|) / 127`` in float32 (at least 1e-30); the division is done in ``w``'s
    dtype; with ``seed > 0`` the codes are ``floor(w / scale + u)``, ``u`` uniform in [0, 1) from
    ``torch.rand`` in ``w``'s dtype on a generator of ``w``'s device seeded with ``seed``, else
    ``round(w / scale)``; both clamped to [-128, 127].
    """
    if convrot:
        w = _rotate_weight(w, hadamard(group_size, w.dtype, w.device), group_size)
    amax = w.abs().amax(dim=-1, keepdim=True) if (convrot or per_row) else w.abs().max()
    scale = (amax.float() / 127.0).clamp(min=1e-30)
    divisor = scale.to(w.dtype)
    divisor = torch.where(divisor == 0, torch.full_like(divisor, torch.finfo(w.dtype).tiny), divisor)
    scaled = w / divisor
    if seed > 0:
        generator = torch.Generator(device=w.device)
        generator.manual_seed(seed)
        scaled = (scaled + torch.rand(scaled.shape, dtype=scaled.dtype, device=scaled.device,
                                      generator=generator)).floor()
    else:
        scaled = scaled.round()
    return scaled.clamp(-128.0, 127.0).to(torch.int8), scale.reshape(-1)
