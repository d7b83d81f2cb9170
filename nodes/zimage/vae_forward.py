"""The Flux VAE's encoder and decoder forward in ComfyUI's operation order, on diffusers' weights.

Why own code: diffusers' ``AutoencoderKL`` holds the same weights as ComfyUI's VAE and most layers
(GroupNorm, 3x3 convolutions, SiLU, nearest upsampling, the asymmetric pad before a strided conv)
compute the same bits, but its mid-block attention does not: diffusers projects q/k/v with
``nn.Linear`` on ``[B, HW, C]`` rows and attends with ``scaled_dot_product_attention``, while ComfyUI
projects with 1x1 convolutions on ``[B, C, H, W]`` and, on the CPU, attends with its split attention
(``bmm(q, k) * C**-0.5``, softmax, ``bmm(v, attn^T)``), sliced over query rows only when memory is
short. Those differ in the last bits (about 1e-6 on the decoded image), which is enough to flip
uint8 pixel values. So this module runs the whole forward itself, reading the diffusers modules'
weights, in the order ComfyUI 0.33 (unchanged since v0.18.1) computes it; the diffusers conv and norm
layers are called as they are, only the block wiring (which diffusers' versions may change) and the
attention are written here. On a CUDA device ComfyUI
attends with PyTorch's scaled-dot-product attention over one head of ``[B, 1, HW, C]``; that is
what is done there too (bit equality is only claimed on the CPU in float32).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


def free_memory(device: torch.device) -> int:
    """Free memory in bytes on ``device``, as ComfyUI measures it (host: psutil's ``available``)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        stats = torch.cuda.memory_stats(device)
        return int(free + stats.get("reserved_bytes.all.current", 0) - stats.get("active_bytes.all.current", 0))
    import psutil

    return int(psutil.virtual_memory().available)


def _resnet(block: Any, x: torch.Tensor) -> torch.Tensor:
    """ComfyUI's ResnetBlock: norm1, SiLU, conv1, norm2, SiLU, conv2, 1x1 shortcut if widths differ, x + h."""
    h = F.silu(block.norm1(x))
    h = block.conv1(h)
    h = F.silu(block.norm2(h))
    h = block.conv2(h)
    if block.conv_shortcut is not None:
        x = block.conv_shortcut(x)
    return x + h


def _split_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """ComfyUI's CPU VAE attention: q ``[B, HW, C]``, k and v ``[B, C, HW]``; result ``[B, C, HW]``."""
    out = torch.zeros_like(k)
    scale = int(q.shape[-1]) ** -0.5
    required = q.shape[0] * q.shape[1] * k.shape[2] * q.element_size() * (3 if q.element_size() == 2 else 2.5)
    free = free_memory(q.device)
    steps = 2 ** math.ceil(math.log(required / free, 2)) if required > free else 1
    rows = q.shape[1] // steps if q.shape[1] % steps == 0 else q.shape[1]
    for start in range(0, q.shape[1], rows):
        end = start + rows
        scores = torch.bmm(q[:, start:end], k) * scale
        weights = torch.softmax(scores, dim=2).permute(0, 2, 1)
        del scores
        out[:, :, start:end] = torch.bmm(v, weights)
    return out


def _split_attention_on(device: torch.device) -> bool:
    """ComfyUI attends with split attention where PyTorch attention is off for the VAE: on the CPU."""
    return device.type == "cpu"


def _attention(attn: Any, x: torch.Tensor) -> torch.Tensor:
    """The mid-block self-attention (one head over all H*W positions), as ComfyUI's AttnBlock."""
    b, c, height, width = x.shape
    h = attn.group_norm(x)

    def project(linear: torch.nn.Linear, t: torch.Tensor) -> torch.Tensor:
        # diffusers stores the 1x1 convolutions as Linear layers: same weights, viewed as [C, C, 1, 1].
        weight = linear.weight.view(linear.out_features, linear.in_features, 1, 1)
        return F.conv2d(t, weight, linear.bias)

    q, k, v = project(attn.to_q, h), project(attn.to_k, h), project(attn.to_v, h)
    if _split_attention_on(x.device):
        out = _split_attention(q.reshape(b, c, -1).permute(0, 2, 1), k.reshape(b, c, -1), v.reshape(b, c, -1))
        out = out.reshape(b, c, height, width)
    else:
        q, k, v = (t.view(b, 1, c, -1).transpose(2, 3).contiguous() for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False)
        out = out.transpose(2, 3).reshape(b, c, height, width)
    return x + project(attn.to_out[0], out)


def _mid(mid: Any, h: torch.Tensor) -> torch.Tensor:
    h = _resnet(mid.resnets[0], h)
    for attn, resnet in zip(mid.attentions, mid.resnets[1:]):
        if attn is not None:
            h = _attention(attn, h)
        h = _resnet(resnet, h)
    return h


def _before_forward(vae: Any) -> None:
    # What diffusers' @apply_forward_hook does for encode/decode: let an accelerate offload hook move
    # the VAE to its execution device first.
    hook = getattr(vae, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward"):
        hook.pre_forward(vae)


def decode(vae: Any, z: torch.Tensor) -> torch.Tensor:
    """Raw latents ``[B, C, h, w]`` -> the decoder's output ``[B, 3, 8h, 8w]`` (not yet clamped or shifted)."""
    _before_forward(vae)
    if vae.post_quant_conv is not None:
        z = vae.post_quant_conv(z)
    dec = vae.decoder
    h = dec.conv_in(z)
    h = _mid(dec.mid_block, h)
    for up in dec.up_blocks:
        for resnet in up.resnets:
            h = _resnet(resnet, h)
        if up.upsamplers is not None:
            for upsampler in up.upsamplers:
                h = upsampler.conv(F.interpolate(h, scale_factor=(2.0, 2.0), mode="nearest"))
    h = F.silu(dec.conv_norm_out(h))
    return dec.conv_out(h)


def encode(vae: Any, x: torch.Tensor) -> torch.Tensor:
    """Pixels ``[B, 3, H, W]`` in [-1, 1] -> the posterior mode (mean) ``[B, C, H/8, W/8]``."""
    _before_forward(vae)
    enc = vae.encoder
    h = enc.conv_in(x)
    for down in enc.down_blocks:
        for resnet in down.resnets:
            h = _resnet(resnet, h)
        if down.downsamplers is not None:
            for downsampler in down.downsamplers:
                if downsampler.padding == 0:
                    # No asymmetric padding in torch's conv: pad right and bottom by one, then stride 2.
                    h = F.pad(h, (0, 1, 0, 1), mode="constant", value=0)
                h = downsampler.conv(h)
    h = _mid(enc.mid_block, h)
    h = F.silu(enc.conv_norm_out(h))
    moments = enc.conv_out(h)
    if vae.quant_conv is not None:
        moments = vae.quant_conv(moments)
    return torch.chunk(moments, 2, dim=1)[0]
