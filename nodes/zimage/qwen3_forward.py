"""The Qwen3 text encoder's forward pass in ComfyUI's exact operation order.

Why own code: transformers' ``Qwen3Model`` computes the same function as ComfyUI's Qwen3
(``comfy/text_encoders/llama.py``) but with other operations: a hand-written RMSNorm (ComfyUI calls
``torch.nn.functional.rms_norm``), RoPE as ``q * cos + rotate_half(q) * sin`` (ComfyUI multiplies and
then ``addcmul``s each half), and ``scaled_dot_product_attention`` with a causal flag (ComfyUI on the
CPU uses its "basic" attention: ``einsum`` products, an additive float mask, ``softmax``). The results
agree to about 5e-7 relative, which is not enough: ComfyUI 0.33's int8 layers quantize activations
per row, so a last-bit difference in the conditioning can move an activation to the other int8 code in
the diffusion model. This forward reproduces ComfyUI's operations one by one, so the CPU float32
conditioning is bit-identical to ComfyUI's.

It runs on the modules of the loaded transformers model: every Linear/Embedding layer is *called*
(not read), so quantized layers (``QuantizedLinear``, ``Int8Linear``), LoRA patches and layerwise
casting hooks keep working. Only the layers up to the one whose output is the conditioning run (the
last layer and the final norm do not contribute to it).

On a CUDA (or other non-CPU) device ComfyUI uses PyTorch attention instead of the basic one; so does
this forward there (``scaled_dot_product_attention`` with the same additive mask).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

#: ComfyUI's pad token for Qwen3 (``<|endoftext|>``): from its first occurrence on, keys are masked.
PAD_TOKEN = 151643


def supports(text_encoder: Any) -> bool:
    """Whether :func:`hidden_state` can run this model (a Qwen3 decoder with default RoPE and no
    sliding window); other models keep transformers' own forward."""
    config = getattr(text_encoder, "config", None)
    if config is None or not all(hasattr(text_encoder, a) for a in ("embed_tokens", "layers")):
        return False
    if getattr(config, "use_sliding_window", False):
        return False
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return rope.get("rope_type", rope.get("type", "default")) == "default" and _rope_theta(config) is not None


def _rope_theta(config: Any) -> float | None:
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    theta = getattr(config, "rope_theta", None)
    return None if theta is None else float(theta)


def _rms_norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ComfyUI's RMSNorm: the fused ``rms_norm`` with the weight cast to the activations' dtype."""
    weight = norm.weight.to(dtype=x.dtype, device=x.device)
    eps = getattr(norm, "variance_epsilon", None)
    if eps is None:
        eps = norm.eps
    return F.rms_norm(x, weight.shape, weight=weight, eps=float(eps))


def _rope(head_dim: int, length: int, theta: float, device: torch.device
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(cos, sin of the second half, -sin of the first half)``, shaped ``[1, 1, L, ...]``, computed
    with ComfyUI's operations (a matmul of the frequencies and the positions)."""
    exponents = torch.arange(0, head_dim, 2, device=device).float()
    inv_freq = 1.0 / (theta ** (exponents / head_dim))
    positions = torch.arange(0, length, device=device).unsqueeze(0)
    freqs = (inv_freq[None, :, None].float().expand(1, -1, 1) @ positions[:, None, :].float()).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos = emb.cos().unsqueeze(1)
    sin = emb.sin().unsqueeze(1)
    half = sin.shape[-1] // 2
    return cos, sin[..., :half], -sin[..., half:]


def _apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    cos, sin, nsin = rope
    out = x * cos
    half = out.shape[-1] // 2
    out[..., :half].addcmul_(x[..., half:], nsin)
    out[..., half:].addcmul_(x[..., :half], sin)
    return out.to(x.dtype)


def _attention_mask(key_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """ComfyUI's additive mask ``[B, 1, L, L]``: a quarter of the dtype's minimum at masked keys and
    above the diagonal, 0 elsewhere."""
    batch, length = key_mask.shape
    low = torch.finfo(dtype).min / 4
    mask = 1.0 - key_mask.to(dtype).reshape(batch, 1, -1, length).expand(batch, 1, length, length)
    mask = mask.masked_fill(mask.to(torch.bool), low)
    causal = torch.empty(length, length, dtype=dtype, device=key_mask.device).fill_(low).triu_(1)
    return mask + causal


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention over ``[B, heads, L, d]`` queries and ``[B, kv_heads, L, d]`` keys/values, output
    ``[B, L, heads * d]``: ComfyUI's basic attention on the CPU, PyTorch's elsewhere."""
    batch, heads, _, dim = q.shape
    repeat = heads // k.shape[-3]
    if q.device.type != "cpu":
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False,
                                             enable_gqa=repeat > 1)
        return out.transpose(1, 2).reshape(batch, -1, heads * dim)
    if repeat > 1:
        k = k.repeat_interleave(repeat, dim=-3)
        v = v.repeat_interleave(repeat, dim=-3)
    q, k, v = (t.reshape(batch * heads, -1, dim) for t in (q, k, v))
    sim = torch.einsum("b i d, b j d -> b i j", q, k) * (dim ** -0.5)
    length = mask.shape[-1]
    sim.add_(mask.reshape(mask.shape[0], -1, mask.shape[-2], length).expand(batch, heads, -1, -1)
             .reshape(-1, mask.shape[-2], length))
    sim = sim.softmax(dim=-1)
    out = torch.einsum("b i j, b j d -> b i d", sim.to(v.dtype), v)
    return out.unsqueeze(0).reshape(batch, heads, -1, dim).permute(0, 2, 1, 3).reshape(batch, -1, heads * dim)


def _layer(layer: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor,
           rope: tuple[torch.Tensor, torch.Tensor, torch.Tensor], heads: int, kv_heads: int, head_dim: int
           ) -> torch.Tensor:
    attn = layer.self_attn
    batch, length, _ = x.shape
    residual = x
    h = _rms_norm(layer.input_layernorm, x)
    q = attn.q_proj(h).view(batch, length, heads, head_dim).transpose(1, 2)
    k = attn.k_proj(h).view(batch, length, kv_heads, head_dim).transpose(1, 2)
    v = attn.v_proj(h).view(batch, length, kv_heads, head_dim).transpose(1, 2)
    q = _apply_rope(_rms_norm(attn.q_norm, q), rope)
    k = _apply_rope(_rms_norm(attn.k_norm, k), rope)
    x = residual + attn.o_proj(_attention(q, k, v, mask))
    mlp = layer.mlp
    h = _rms_norm(layer.post_attention_layernorm, x)
    return x + mlp.down_proj(F.silu(mlp.gate_proj(h)) * mlp.up_proj(h))


def key_mask_for(items: Sequence[Any]) -> list[int]:
    """ComfyUI's attention mask for one prompt's items (token ids, and embedding vectors as tensors):
    1, except that the first pad token (``<|endoftext|>``) and every token id after it are masked
    (embedding vectors never are), and pad tokens at the very start are left padding (masked)."""
    mask: list[int] = []
    ended = left_pad = False
    for position, item in enumerate(items):
        if not isinstance(item, int):
            mask.append(1)
            continue
        if position == 0 and item == PAD_TOKEN:
            left_pad = True
        if ended or (left_pad and item == PAD_TOKEN):
            mask.append(0)
        else:
            mask.append(1)
            left_pad = False
        if not ended and item == PAD_TOKEN and not left_pad:
            mask[-1] = 0
            ended = True
    return mask


def hidden_state(text_encoder: Any, embeds: torch.Tensor, key_mask: torch.Tensor | None = None,
                 layer_index: int = -2) -> torch.Tensor:
    """The output of layer ``layer_index`` (ComfyUI's ``intermediate_output``; -2 is the layer before
    the last, Z-Image's conditioning) for input embeddings ``[B, L, D]``, without the final norm.

    ``key_mask`` ``[B, L]`` (1 = attend, 0 = masked) defaults to all ones.
    """
    config = text_encoder.config
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    layers = list(text_encoder.layers)
    stop = layer_index % len(layers)
    x = embeds
    batch, length, _ = x.shape
    if key_mask is None:
        key_mask = torch.ones(batch, length, dtype=torch.long, device=x.device)
    mask = _attention_mask(key_mask.to(x.device), x.dtype)
    rope = _rope(head_dim, length, _rope_theta(config), x.device)
    for layer in layers[: stop + 1]:
        x = _layer(layer, x, mask, rope, heads, kv_heads, head_dim)
    return x
