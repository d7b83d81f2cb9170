"""The Z-Image transformer forward in ComfyUI 0.33's order of operations (its ``NextDiT``).

Why own code: diffusers' ``ZImageTransformer2DModel.forward`` computes the same function, but not the
same floating-point operations: it puts the image tokens before the caption tokens, applies RoPE as a
complex multiply, normalises with its own RMSNorm (variance then ``rsqrt``) and attends with
``scaled_dot_product_attention``. ComfyUI's result differs from it in the last bits (4e-7 relative on
the tiny model), which is invisible for float layers but not for ComfyUI 0.33's int8 layers
(:mod:`graphrun.nodes.quantized_int8`): they quantize each activation row to int8, a last-bit change
flips codes, and images from an int8 model then agree with ComfyUI on only ~77 % of pixel values.

This forward uses the diffusers model's own modules and parameters (so LoRA weight patches, the
installed ``Int8Linear``/``QuantizedLinear`` layers and the q/k norm weights all apply) and computes
in ComfyUI's order, on the CPU in float32 bit for bit:

- timestep: ``t = 1 - sigma``, sinusoidal embedding of ``1000 t`` as ``[cos, sin]`` in float32, cast
  to the model dtype, then the MLP;
- caption: the embedder's RMSNorm (fused ``rms_norm``) and Linear, then padded with the caption pad
  token to a multiple of 32; RoPE positions ``(1..padded, 0, 0)``, all of them, pads included;
- image: patchified as ``(ph, pw, c)`` features, embedded, padded with the image pad token to a
  multiple of 32; positions ``(padded caption + 1, row, col)``, pads at ``(0, 0, 0)``;
- RoPE: ComfyUI's real 2x2 rotation tables (angles from a float64 ``linspace`` of exponents, cos/sin,
  stored in float32), applied as ``f0 * x0`` then ``addcmul(f1, x1)`` in float32;
- q/k: fused ``rms_norm`` with eps ``finfo(float32).eps`` (ComfyUI's ``rms_rope``), then RoPE;
- attention: on the CPU ComfyUI's "sub-quadratic" attention (``baddbmm`` with ``alpha = d**-0.5``,
  ``softmax``, ``bmm``; query chunks of 4096 rows, ComfyUI's choice when memory is ample); elsewhere
  ``scaled_dot_product_attention`` as ComfyUI uses on GPUs;
- sequence ``[caption, image]``; blocks with ``x * (1 + scale)`` and ``tanh(gate) * norm(...)``;
  final LayerNorm (eps 1e-6), modulation and Linear; unpatchify, crop, and the negation.

The q/k/v projections run as three Linear layers: on the CPU this gives the same bits as ComfyUI's
fused ``qkv`` matmul (checked with MKL for the tiny and full sizes), and an int8 qkv is exact when
split by rows.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

# ComfyUI pads caption and image tokens to a multiple of this (NextDiT's pad_tokens_multiple).
PAD_MULTIPLE = 32
# Query rows per attention chunk of ComfyUI's CPU attention (its first choice, given enough memory).
_QUERY_CHUNK = 4096


def _rms_norm(norm: Any, x: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """``torch.nn.functional.rms_norm`` with a norm module's weight (ComfyUI's ``RMSNorm`` op)."""
    weight = getattr(norm, "weight", None)
    if weight is not None:
        weight = weight.to(dtype=x.dtype, device=x.device)
    return F.rms_norm(x, (x.shape[-1],), weight, norm.eps if eps is None else eps)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t f), sin(t f)]`` in float32, ``f = exp(-ln(max_period) k / half)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def _rope_axis(pos: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    """``[..., n, dim/2, 2, 2]`` float32 rotation matrices for positions ``pos`` on one axis."""
    exponents = torch.linspace(0, (dim - 2) / dim, steps=dim // 2, dtype=torch.float64, device=pos.device)
    omega = 1.0 / (theta ** exponents)
    angles = torch.einsum("...n,d->...nd", pos.to(torch.float32), omega)
    table = torch.stack([torch.cos(angles), -torch.sin(angles), torch.sin(angles), torch.cos(angles)], dim=-1)
    return table.reshape(*table.shape[:-1], 2, 2).to(torch.float32)


def rope_table(ids: torch.Tensor, axes_dims: Sequence[int], theta: float) -> torch.Tensor:
    """RoPE tables for position ids ``[B, n, 3]``: ``[B, n, 1, head_dim/2, 2, 2]`` float32."""
    if ids.device.type == "mps":  # no float64 there; ComfyUI computes the tables on the CPU then
        return rope_table(ids.cpu(), axes_dims, theta).to(ids.device)
    parts = [_rope_axis(ids[..., i], int(d), theta) for i, d in enumerate(axes_dims)]
    return torch.cat(parts, dim=-3).unsqueeze(2)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[B, n, heads, head_dim]`` (interleaved pairs) by ``table``, in float32."""
    pairs = x.to(table.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    out = table[..., 0] * pairs[..., 0]
    out.addcmul_(table[..., 1], pairs[..., 1])
    return out.reshape(*x.shape).type_as(x)


def _attention_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """ComfyUI's sub-quadratic attention without key chunking: ``[B*h, n, d]`` inputs, ``k`` transposed."""
    scale = q.shape[-1] ** -0.5
    chunks = []
    for start in range(0, q.shape[1], _QUERY_CHUNK):
        query = q[:, start:start + _QUERY_CHUNK]
        scores = torch.baddbmm(torch.empty(1, 1, 1, device=q.device, dtype=q.dtype), query, k, alpha=scale, beta=0)
        probs = scores.softmax(dim=-1)
        chunks.append(torch.bmm(probs.to(v.dtype), v))
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)


def attention(block: Any, x: torch.Tensor, table: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """One block's self-attention (ComfyUI's ``JointAttention``) on ``x`` ``[B, n, dim]``; ``mask``
    ``[B, n]`` (True = a real token) only for :func:`forward_mixed`'s batches of different caption lengths."""
    attn = block.attention
    bsz, seq, _ = x.shape
    heads = int(attn.heads)
    q = attn.to_q(x)
    k = attn.to_k(x)
    v = attn.to_v(x)
    head_dim = q.shape[-1] // heads
    q = q.view(bsz, seq, heads, head_dim)
    k = k.view(bsz, seq, -1, head_dim)
    v = v.view(bsz, seq, -1, head_dim)
    eps = torch.finfo(torch.float32).eps  # ComfyUI's q/k RMSNorm has no eps of its own
    if attn.norm_q is not None:
        q = _rms_norm(attn.norm_q, q, eps)
    if attn.norm_k is not None:
        k = _rms_norm(attn.norm_k, k, eps)
    q, k = apply_rope(q, table), apply_rope(k, table)
    if k.shape[2] != heads:  # grouped-query attention: repeat the key/value heads
        rep = heads // k.shape[2]
        k = k.unsqueeze(3).repeat(1, 1, 1, rep, 1).flatten(2, 3)
        v = v.unsqueeze(3).repeat(1, 1, 1, rep, 1).flatten(2, 3)
    q, k, v = q.movedim(1, 2), k.movedim(1, 2), v.movedim(1, 2)  # [B, heads, n, d]
    if mask is not None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :], dropout_p=0.0)
        out = out.transpose(1, 2).reshape(bsz, -1, heads * head_dim)
    elif x.device.type == "cpu":
        out = _attention_cpu(q.reshape(bsz * heads, -1, head_dim), k.reshape(bsz * heads, -1, head_dim).movedim(1, 2),
                             v.reshape(bsz * heads, -1, head_dim))
        out = out.to(q.dtype).unflatten(0, (-1, heads)).transpose(1, 2).flatten(start_dim=2)
    else:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(bsz, -1, heads * head_dim)
    return attn.to_out[0](out)


def _clamp_fp16(x: torch.Tensor) -> torch.Tensor:
    """ComfyUI's guard against float16 overflow (a no-op in other dtypes)."""
    return torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504) if x.dtype == torch.float16 else x


def _feed_forward(block: Any, x: torch.Tensor) -> torch.Tensor:
    ffn = block.feed_forward
    return ffn.w2(_clamp_fp16(F.silu(ffn.w1(x)) * ffn.w3(x)))


def block_forward(block: Any, x: torch.Tensor, table: torch.Tensor, adaln: torch.Tensor | None,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """One transformer block (ComfyUI's ``JointTransformerBlock``), with or without modulation."""
    if getattr(block, "modulation", False):
        scale_msa, gate_msa, scale_mlp, gate_mlp = block.adaLN_modulation(adaln).chunk(4, dim=1)
        h = attention(block, _rms_norm(block.attention_norm1, x) * (1 + scale_msa.unsqueeze(1)), table, mask)
        x = x + gate_msa.unsqueeze(1).tanh() * _rms_norm(block.attention_norm2, _clamp_fp16(h))
        h = _feed_forward(block, _rms_norm(block.ffn_norm1, x) * (1 + scale_mlp.unsqueeze(1)))
        return x + gate_mlp.unsqueeze(1).tanh() * _rms_norm(block.ffn_norm2, _clamp_fp16(h))
    x = x + _rms_norm(block.attention_norm2,
                      _clamp_fp16(attention(block, _rms_norm(block.attention_norm1, x), table, mask)))
    return x + _rms_norm(block.ffn_norm2, _feed_forward(block, _rms_norm(block.ffn_norm1, x)))


def _pad_tokens(feats: torch.Tensor, pad_token: torch.Tensor) -> tuple[torch.Tensor, int]:
    extra = (-feats.shape[1]) % PAD_MULTIPLE
    if not extra:
        return feats, 0
    pad = pad_token.to(device=feats.device, dtype=feats.dtype).unsqueeze(0).repeat(feats.shape[0], extra, 1)
    return torch.cat((feats, pad), dim=1), extra


def _timestep(transformer: Any, sigma: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    t = 1.0 - sigma.to(device=device, dtype=torch.float32)
    embedder = transformer.t_embedder
    frequencies = timestep_embedding(t * float(transformer.config.t_scale), int(embedder.frequency_embedding_size))
    return embedder.mlp(frequencies.to(dtype))


def _caption(transformer: Any, context: torch.Tensor) -> torch.Tensor:
    """Caption features embedded and padded with the pad token to a multiple of 32: ``[B, P, dim]``."""
    cap = transformer.cap_embedder[1](_rms_norm(transformer.cap_embedder[0], context))
    return _pad_tokens(cap, transformer.cap_pad_token)[0]


def _positions(count: int, device: torch.device) -> torch.Tensor:
    ids = torch.zeros(1, count, 3, dtype=torch.float32, device=device)
    ids[:, :, 0] = torch.arange(count, dtype=torch.float32, device=device) + 1.0
    return ids


def _image(transformer: Any, x: torch.Tensor, key: str, patch: int, cap_lens: Sequence[int]
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch tokens ``[B, N, dim]`` padded to a multiple of 32, and their position ids ``[B or 1, N, 3]``:
    ``(caption length + 1, row, col)``, pads at ``(0, 0, 0)``; one row of ids per caption length given."""
    bsz, channels, height, width = x.shape
    rows, cols = height // patch, width // patch
    patches = x.view(bsz, channels, rows, patch, cols, patch).permute(0, 2, 4, 3, 5, 1).flatten(3).flatten(1, 2)
    img = transformer.all_x_embedder[key](patches)
    ids = torch.zeros(len(cap_lens), rows * cols, 3, dtype=torch.float32, device=x.device)
    ids[:, :, 0] = torch.tensor(cap_lens, dtype=torch.float32, device=x.device).view(-1, 1) + 1
    ids[:, :, 1] = torch.arange(rows, dtype=torch.float32, device=x.device).view(-1, 1).repeat(1, cols).flatten()
    ids[:, :, 2] = torch.arange(cols, dtype=torch.float32, device=x.device).view(1, -1).repeat(rows, 1).flatten()
    img, extra = _pad_tokens(img, transformer.x_pad_token)
    if extra:
        ids = F.pad(ids, (0, 0, 0, extra))
    return img, ids


def _final(transformer: Any, key: str, hidden: torch.Tensor, adaln: torch.Tensor, start: int,
           shape: torch.Size, patch: int) -> torch.Tensor:
    """The final layer on the image tokens from ``start`` on, unpatchified and negated: ``[B, C, H, W]``."""
    bsz, channels, height, width = shape
    rows, cols = height // patch, width // patch
    final = transformer.all_final_layer[key]
    scale = final.adaLN_modulation(adaln)
    hidden = F.layer_norm(hidden, (hidden.shape[-1],), None, None, final.norm_final.eps) * (1 + scale.unsqueeze(1))
    hidden = final.linear(hidden)
    out = (hidden[:, start:start + rows * cols]
           .reshape(bsz, rows, cols, patch, patch, channels)
           .permute(0, 5, 1, 3, 2, 4).flatten(4, 5).flatten(2, 3))
    return -out


def _config(transformer: Any) -> tuple[int, str, list[int], float]:
    patch = int(transformer.config.all_patch_size[0])
    f_patch = int(transformer.config.all_f_patch_size[0])
    return patch, f"{patch}-{f_patch}", list(transformer.config.axes_dims), float(transformer.config.rope_theta)


def forward(transformer: Any, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """ComfyUI's model output ``-net(x, 1 - sigma, context)`` for one batch (equal caption lengths).

    Args:
        transformer: a diffusers ``ZImageTransformer2DModel`` (only its modules and parameters are used).
        x: ``[B, C, H, W]`` latents in the model dtype, H and W multiples of the patch size.
        sigma: ``[B]`` float32 noise levels.
        context: ``[B, L, D]`` caption features in the model dtype.

    Returns:
        ``[B, C, H, W]`` in the model dtype.
    """
    patch, key, axes_dims, theta = _config(transformer)
    adaln = _timestep(transformer, sigma, x.dtype, x.device)
    cap = _caption(transformer, context)
    cap_len = cap.shape[1]
    cap_table = rope_table(_positions(cap_len, x.device), axes_dims, theta)
    img, img_ids = _image(transformer, x, key, patch, [cap_len])
    img_table = rope_table(img_ids, axes_dims, theta)

    for block in transformer.context_refiner:
        cap = block_forward(block, cap, cap_table, None)
    for block in transformer.noise_refiner:
        img = block_forward(block, img, img_table, adaln)
    hidden = torch.cat((cap, img), dim=1)
    table = torch.cat((cap_table, img_table), dim=1)
    for block in transformer.layers:
        hidden = block_forward(block, hidden, table, adaln)
    return _final(transformer, key, hidden, adaln, cap_len, x.shape, patch)


def forward_mixed(transformer: Any, x: torch.Tensor, sigma: torch.Tensor, contexts: Sequence[torch.Tensor]
                  ) -> torch.Tensor:
    """:func:`forward` for rows whose captions differ in length, in one batched forward (for throughput;
    ComfyUI never batches such rows, so there is no ComfyUI batch to reproduce bit for bit).

    Each row's caption is embedded and padded to a multiple of 32 as alone, then to the batch's longest
    with masked slots; its image tokens take the positions they have alone. Each row equals its own
    :func:`forward` up to float rounding (attention runs as masked ``scaled_dot_product_attention``).
    ``contexts`` holds one ``[L_i, D]`` tensor per row, in the model dtype.
    """
    patch, key, axes_dims, theta = _config(transformer)
    adaln = _timestep(transformer, sigma, x.dtype, x.device)
    caps = [_caption(transformer, c.unsqueeze(0)) for c in contexts]
    cap_lens = [c.shape[1] for c in caps]
    longest = max(cap_lens)
    cap = torch.cat([F.pad(c, (0, 0, 0, longest - c.shape[1])) for c in caps], dim=0)
    cap_mask = torch.arange(longest, device=x.device)[None] < torch.tensor(cap_lens, device=x.device)[:, None]
    cap_table = rope_table(_positions(longest, x.device), axes_dims, theta).expand(len(caps), -1, -1, -1, -1, -1)
    img, img_ids = _image(transformer, x, key, patch, cap_lens)
    img_table = rope_table(img_ids, axes_dims, theta)

    for block in transformer.context_refiner:
        cap = block_forward(block, cap, cap_table, None, cap_mask)
    for block in transformer.noise_refiner:
        img = block_forward(block, img, img_table, adaln)
    hidden = torch.cat((cap, img), dim=1)
    table = torch.cat((cap_table, img_table), dim=1)
    mask = torch.cat((cap_mask, cap_mask.new_ones(len(caps), img.shape[1])), dim=1)
    for block in transformer.layers:
        hidden = block_forward(block, hidden, table, adaln, mask)
    return _final(transformer, key, hidden, adaln, longest, x.shape, patch)


def before_use(transformer: Any) -> None:
    """What calling the transformer would trigger before its forward, which :func:`forward` bypasses:
    its forward pre-hooks (offload sends the other components to the CPU) and accelerate's offload
    hook (moves the transformer to its execution device)."""
    for hook in list(transformer._forward_pre_hooks.values()):
        hook(transformer, ())
    offload_hook = getattr(transformer, "_hf_hook", None)
    if offload_hook is not None:
        offload_hook.pre_forward(transformer)
