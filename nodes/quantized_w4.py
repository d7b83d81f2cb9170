"""ComfyUI 0.33's 4-bit Linear layers (``convrot_w4a4``, ``asym_w4a8_int8``), computed as ComfyUI computes
them on the CPU.

ComfyUI 0.33 keeps these layers' weights packed, two 4-bit codes per int8 byte (the even input column in
the low nibble), and at every call runs comfy-kitchen's portable "eager" kernels on them; it never
computes a float linear on a dequantized weight. The results differ from such a linear by the rounding
of the activations, so graphrun reproduces each step in its own code (only the semantics are taken
from ComfyUI / comfy-kitchen 0.2.31, whose CPU path graphrun was checked against bit for bit):

``convrot_w4a4`` (``<layer>.weight`` int8 ``(out, in / 2)``, signed nibbles in [-8, 7];
``<layer>.weight_scale`` float32, one per output row; config ``convrot_groupsize``, default 256, and
``linear_dtype`` ``"int4"``/``"int8"``, which the CPU path ignores):

1. the input (any leading shape, flattened to rows) is rotated like ConvRot's int8 layers: each run of
   ``convrot_groupsize`` features times the normalised regular Hadamard matrix, in the input's dtype;
2. per row: ``scale = max(amax(|x|), 1e-10) / 7`` in the input's dtype, ``q = round(x / scale)``
   clamped to [-7, 7];
3. ``q @ codes.T`` as a matrix product in the input's dtype (exact in float32: small integers);
4. times the row scales, then times the weight's row scales (two multiplications, in the input's
   dtype), then plus the bias. The output dtype is the input's.

``asym_w4a8_int8`` (``<layer>.weight`` int8 ``(out, in / 2)``, unsigned nibbles; ``weight_s_rel`` the
per-group scale ``(out, in / group_size)``, float8_e4m3fn (or its uint8 bytes) or float32;
``weight_s_channel`` float32 ``(out,)``; optionally ``weight_codebook``, 16 float32 levels; config
``group_size`` (default 16) and ``convrot_groupsize`` (default 256)): ComfyUI decodes every code to
the int8 grid, ``round(level * s_rel)`` clamped to [-127, 127] with ``level = codebook[code]`` or
``code - 8``, and runs that as an ``int8_tensorwise`` layer with ConvRot and the per-row scale
``s_channel`` (:func:`graphrun.nodes.quantized_int8.int8_linear`). graphrun decodes once, on load
(:func:`decode_w4a8`; the decoding does not depend on the input), and installs the layer as an
:class:`~graphrun.nodes.quantized_int8.Int8Linear` tagged with the format. A ``weight_correction``
(the asymmetric zero point) is refused by the loader: ComfyUI 0.33's loader does not read it.

A LoRA on such a layer (:func:`dequantize_w4a4_for_patch`, :func:`requantize_w4a4`,
:func:`requantize_w4a8`, used by ``graphrun.nodes.lora``) is applied as ComfyUI 0.33 applies it when it
loads the patched model on the CPU, like an int8 layer's (see :mod:`graphrun.nodes.quantized_int8`): the
weight is dequantized (codes times scales, rotated back with the float32 Hadamard matrix), the LoRA added
in the LoRA compute dtype, and the sum quantized again into the same layout with recalculated scales and
stochastic rounding seeded by the weight's ComfyUI key:

* ``convrot_w4a4``: rotated again (Hadamard matrix in the weight's dtype), per row
  ``scale = max(amax, 1e-10) / 7``, codes ``floor(w / scale + u)`` clamped to [-7, 7], ``u`` from
  ``torch.rand`` on a generator seeded with the key's seed. ComfyUI's quantizer also wants the inputs to
  be a multiple of 64 (its int4 group size); a patch of a layer without is refused.
* ``asym_w4a8_int8``: rotated again, in row chunks of ``2**22 // inputs`` rows (the seed offset by the
  chunk's first row), per group of ``group_size``: with a codebook (the layer's own, kept) the codes are
  the nearest levels of ``w / amax``, refined by two alternating least-squares passes over the group
  scale; without, ``floor(w / (amax / 7) + u)`` in [-8, 7]. Then ``s_channel = max(amax(|decoded row|),
  1e-8) / 127``, ``s_rel = group scale / s_channel`` in the layer's scale dtype, and with a codebook each
  code is drawn again stochastically between the two int8 grid levels ``round(level * s_rel)`` that
  bracket ``w / s_channel``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .quantized_int8 import Int8Weight, _rotate_weight, hadamard, rotate

CONVROT_W4A4 = "convrot_w4a4"
ASYM_W4A8 = "asym_w4a8_int8"
#: ``linear_dtype`` values ComfyUI 0.33 accepts for ``convrot_w4a4`` (the CPU path computes both alike).
W4A4_LINEAR_DTYPES = ("int4", "int8")


def unpack_nibbles(packed: torch.Tensor, signed: bool) -> torch.Tensor:
    """The 4-bit codes of an int8 ``(rows, cols)`` tensor as int32 ``(rows, 2 * cols)``: the low nibble
    is the even column; ``signed`` reads a nibble of 8 or more as that minus 16."""
    bits = packed.to(torch.int32) & 0xFF
    codes = torch.stack((bits & 0x0F, (bits >> 4) & 0x0F), dim=-1).reshape(*packed.shape[:-1], -1)
    return torch.where(codes >= 8, codes - 16, codes) if signed else codes


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`unpack_nibbles` (either reading): ``(rows, 2 * cols)`` codes to int8 bytes."""
    codes = codes.to(torch.int32)
    return ((codes[..., 0::2] & 0x0F) | ((codes[..., 1::2] & 0x0F) << 4)).to(torch.uint8).view(torch.int8)


def w4a4_linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                group_size: int) -> torch.Tensor:
    """ComfyUI 0.33's ``convrot_w4a4`` Linear on ``x`` (see the module docstring for the steps)."""
    dtype = x.dtype
    lead = x.shape[:-1]
    rows = rotate(x.reshape(-1, x.shape[-1]).contiguous(), group_size)
    x_scale = rows.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10) / 7
    codes = (rows / x_scale).round().clamp(-7, 7)
    weight = unpack_nibbles(packed.to(x.device), signed=True).to(dtype)
    out = codes.to(dtype) @ weight.t()
    out = out * x_scale.to(torch.float32).reshape(-1, 1).to(dtype)
    out = out * scale.to(device=x.device, dtype=torch.float32).reshape(1, -1).to(dtype)
    if bias is not None:
        out = out + bias.to(device=out.device, dtype=dtype).reshape(1, -1)
    return out.reshape(*lead, packed.shape[0])


@dataclass(frozen=True)
class W4A4Weight:
    """One Linear layer's ``convrot_w4a4`` weight: packed signed codes ``(out, in / 2)``, the float32
    row scales ``(out,)`` and the ConvRot group size."""

    layer: str
    data: torch.Tensor
    scale: torch.Tensor
    group_size: int
    format: str = CONVROT_W4A4

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.data.shape[0]), int(self.data.shape[1]) * 2)

    def rows(self, start: int, stop: int) -> W4A4Weight:
        """Output rows ``start:stop`` (each output depends on its own row and row scale only)."""
        return W4A4Weight(self.layer, self.data[start:stop].contiguous(), self.scale[start:stop].contiguous(),
                          self.group_size)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight as floats, rotated back (for building the model and inspection; ComfyUI never
        computes with it)."""
        w = unpack_nibbles(self.data, signed=True).float() * self.scale.float().reshape(-1, 1)
        rows, cols = w.shape
        h = hadamard(self.group_size, torch.float32, w.device)
        w = torch.matmul(w.reshape(rows, cols // self.group_size, self.group_size), h.t()).reshape(rows, cols)
        return w.to(dtype)


class W4A4Linear(torch.nn.Module):
    """A Linear layer computed with :func:`w4a4_linear` at every call (ComfyUI 0.33's ``convrot_w4a4``).

    The packed codes are a buffer and the float32 scales are kept as their int32 bit pattern, so casting
    the model's dtype changes neither; the bias is an ordinary parameter.
    """

    def __init__(self, weight: W4A4Weight, bias: torch.nn.Parameter | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.layer = weight.layer
        self.format = weight.format
        self.group_size = weight.group_size
        self.register_buffer("q_data", weight.data.contiguous(), persistent=False)
        self.register_buffer("q_scale", weight.scale.to(torch.float32).reshape(-1).contiguous().view(torch.int32),
                             persistent=False)
        self.bias = bias

    @property
    def weight(self) -> torch.Tensor:
        """The packed codes (int8: code asking a Linear for its dtype falls back to :attr:`compute_dtype`)."""
        return self.q_data

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.bias.dtype if self.bias is not None else torch.float32

    def w4a4_weight(self) -> W4A4Weight:
        return W4A4Weight(self.layer, self.q_data, self.q_scale.view(torch.float32), self.group_size)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.w4a4_weight().dequantize(dtype)

    def int8_buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The tensors holding the packed codes and the scales (their int32 bit pattern), which a LoRA
        patch overwrites in place, as for an int8 layer (``graphrun.nodes.lora`` backs them up)."""
        return self.q_data, self.q_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return w4a4_linear(x, self.q_data, self.q_scale.view(torch.float32), self.bias, self.group_size)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, format={self.format}, "
                f"convrot={self.group_size}")


@dataclass(frozen=True)
class W4A8Params:
    """What an ``asym_w4a8_int8`` layer keeps besides its decoded int8 grid: the group size, the codebook
    (or ``None``) and the dtype of its ``s_rel`` scales (a LoRA patch requantizes with these)."""

    group_size: int
    codebook: torch.Tensor | None
    scale_dtype: torch.dtype


def decode_w4a8(layer: str, packed: torch.Tensor, s_rel: torch.Tensor, s_channel: torch.Tensor,
                codebook: torch.Tensor | None, group_size: int, convrot_groupsize: int) -> Int8Weight:
    """An ``asym_w4a8_int8`` weight as the int8 ConvRot layer ComfyUI 0.33 runs it as: codes decoded to
    ``round(level * s_rel)`` (float32) clamped to [-127, 127], with ``s_channel`` as per-row scale."""
    codes = unpack_nibbles(packed, signed=False)
    rows, cols = codes.shape
    if codebook is not None:
        levels = codebook.to(torch.float32)[codes.long()]
    else:
        levels = codes.float() - 8.0
    grid = levels.view(rows, cols // group_size, group_size) * s_rel.float().unsqueeze(-1)
    data = grid.view(rows, cols).round().clamp(-127, 127).to(torch.int8)
    table = None if codebook is None else codebook.to(torch.float32).contiguous()
    return Int8Weight(layer, data.contiguous(), s_channel.to(torch.float32).reshape(-1).contiguous(), True,
                      convrot_groupsize, ASYM_W4A8, W4A8Params(group_size, table, s_rel.dtype))


# ---------------------------------------------------------------------------------------------
# LoRA patching of 4-bit weights (ComfyUI 0.33's dequantize -> patch -> requantize)

#: comfy-kitchen's int4 group size, which its W4A4 quantizer requires the inputs to be a multiple of.
W4A4_QUANT_GROUP = 64
# Rows per chunk of comfy-kitchen's W4A8 quantizer: about 2**22 values.
_W4A8_CHUNK_VALUES = 1 << 22


def _uniform(shape: torch.Size, dtype: torch.dtype, device: torch.device, seed: int) -> torch.Tensor:
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return torch.rand(shape, dtype=dtype, device=device, generator=generator)


def dequantize_w4a4_for_patch(weight: W4A4Weight, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """The float weight ComfyUI 0.33 patches: codes times row scales in float32, rotated back with the
    float32 Hadamard matrix, cast to ``dtype`` (the LoRA compute dtype)."""
    w = unpack_nibbles(weight.data.to(device), signed=True).float()
    w = w * weight.scale.to(device=device, dtype=torch.float32).reshape(-1, 1)
    w = _rotate_weight(w, hadamard(weight.group_size, torch.float32, w.device), weight.group_size)
    return w.to(dtype)


def requantize_w4a4(w: torch.Tensor, group_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A patched float weight back to ``convrot_w4a4``: packed codes and float32 row scales ``(out,)``."""
    rotated = _rotate_weight(w, hadamard(group_size, w.dtype, w.device), group_size)
    scale = rotated.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10) / 7
    scaled = rotated / scale
    if seed > 0:
        scaled = (scaled + _uniform(scaled.shape, scaled.dtype, scaled.device, seed)).floor()
    else:
        scaled = scaled.round()
    return pack_nibbles(scaled.clamp(-7, 7).to(torch.int32)), scale.reshape(-1).to(torch.float32)


def _nearest_level(values: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest level of the sorted ``codebook`` (ties to the lower index)."""
    last = codebook.numel() - 1
    pos = torch.searchsorted(codebook, values.contiguous())
    lo, hi = (pos - 1).clamp(0, last), pos.clamp(0, last)
    return torch.where((values - codebook[hi]).abs() < (values - codebook[lo]).abs(), hi, lo)


def _w4a8_rows(rotated: torch.Tensor, group_size: int, codebook: torch.Tensor | None, scale_dtype: torch.dtype,
               seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk of rotated rows quantized to W4A8: unsigned codes (int32), s_rel, s_channel."""
    rows, cols = rotated.shape
    groups = cols // group_size
    grouped = rotated.float().view(rows, groups, group_size)
    if codebook is not None:
        group_scale = grouped.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8)
        codes = _nearest_level(grouped / group_scale, codebook)
        for _ in range(2):  # alternating least squares on the group scale
            chosen = codebook[codes]
            group_scale = ((grouped * chosen).sum(-1, keepdim=True)
                           / (chosen * chosen).sum(-1, keepdim=True).clamp(min=1e-8)).clamp(min=1e-8)
            codes = _nearest_level(grouped / group_scale, codebook)
        decoded = codebook[codes] * group_scale
    else:
        group_scale = (grouped.abs().amax(dim=-1, keepdim=True) / 7.0).clamp(min=1e-8)
        scaled = grouped / group_scale
        if seed > 0:
            scaled = torch.floor(scaled + _uniform(scaled.shape, scaled.dtype, scaled.device, seed))
        else:
            scaled = scaled.round()
        signed = scaled.clamp(-8, 7)
        codes = signed.to(torch.int64) + 8
        decoded = signed * group_scale
    s_channel = (decoded.abs().amax(dim=(1, 2)) / 127.0).clamp(min=1e-8)
    s_rel = (group_scale.squeeze(-1) / s_channel.unsqueeze(1)).float()
    if scale_dtype != torch.float32:
        s_rel = s_rel.to(scale_dtype)
    if codebook is not None:
        levels = (codebook.view(1, 1, 16) * s_rel.float().unsqueeze(-1)).round().clamp(-127, 127)
        levels = levels.reshape(rows * groups, 16).contiguous()
        target = (grouped / s_channel.view(-1, 1, 1)).reshape(rows * groups, group_size).contiguous()
        pos = torch.searchsorted(levels, target)
        if seed > 0:
            lo = (pos - 1).clamp(0, 14)
            low = torch.gather(levels, 1, lo)
            width = torch.gather(levels, 1, lo + 1) - low
            threshold = _uniform(target.shape, target.dtype, target.device, seed) * width + low
            codes = (lo + (target > threshold)).clamp(0, 15)
        else:
            lo, hi = (pos - 1).clamp(0, 15), pos.clamp(0, 15)
            dlo = (target - torch.gather(levels, 1, lo)).abs()
            dhi = (target - torch.gather(levels, 1, hi)).abs()
            codes = torch.where(dhi < dlo, hi, lo)
    return codes.to(torch.int32).reshape(rows, cols), s_rel.contiguous(), s_channel.float().contiguous()


def requantize_w4a8(w: torch.Tensor, *, group_size: int, convrot_groupsize: int, codebook: torch.Tensor | None,
                    scale_dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A patched float weight back to ``asym_w4a8_int8`` (symmetric, the layer's codebook kept): packed
    codes, ``s_rel`` (in ``scale_dtype``) and ``s_channel``."""
    rows, cols = w.shape
    block = max(1, _W4A8_CHUNK_VALUES // max(cols, 1))
    table = None if codebook is None else codebook.to(device=w.device, dtype=torch.float32)
    h = hadamard(convrot_groupsize, w.dtype, w.device)
    parts = []
    for start in range(0, rows, block):
        rotated = _rotate_weight(w[start:start + block].contiguous(), h, convrot_groupsize)
        part_seed = seed + start if seed > 0 and rows > block else seed
        parts.append(_w4a8_rows(rotated, group_size, table, scale_dtype, part_seed))
    codes, s_rel, s_channel = (torch.cat([p[i] for p in parts]) for i in range(3))
    return pack_nibbles(codes), s_rel, s_channel
