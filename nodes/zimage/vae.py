"""Flux-VAE decode/encode with ComfyUI's VAEDecode/VAEEncode semantics.

LATENT values are raw VAE latents (the Flux scale/shift is applied only inside sampling; diffusers'
ZImagePipeline likewise undoes it before ``vae.decode``), so they go straight into the VAE. Images are
ComfyUI IMAGE tensors: ``[B, H, W, C]`` float32 in [0, 1], channel-last, on the CPU.
"""
from __future__ import annotations

from typing import Any

import torch

from ..runtime import execution_device


def vae_scale_factor(vae: Any) -> int:
    """Pixels per latent pixel (8 for the Flux VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _before_use(vae: Any) -> None:
    # encode/decode bypass nn.Module.__call__, so offloading others is triggered by hand.
    hook = getattr(vae, "_graphrun_before_use", None)
    if hook is not None:
        hook()


def decode(vae: Any, latent_raw: torch.Tensor) -> torch.Tensor:
    """Decode raw latents ``[B, 16, h, w]`` to an IMAGE ``[B, 8h, 8w, 3]`` float32 in [0, 1].

    Images are decoded one at a time (the VAE has no cross-image interaction, so the result is the
    same and memory stays bounded). Output is ``clamp((x + 1) / 2, 0, 1)``.
    """
    if latent_raw.ndim != 4:
        raise ValueError(f"decode expects a latent [B, C, h, w], got {tuple(latent_raw.shape)}.")
    _before_use(vae)
    device = execution_device(vae)
    dtype = next(vae.parameters()).dtype
    images = []
    with torch.no_grad():
        for item in latent_raw.split(1, dim=0):
            pixels = vae.decode(item.to(device=device, dtype=dtype), return_dict=False)[0]
            pixels = torch.clamp((pixels.float() + 1.0) / 2.0, 0.0, 1.0)
            images.append(pixels.permute(0, 2, 3, 1).cpu())
    return torch.cat(images, dim=0)


def encode(vae: Any, image: torch.Tensor) -> torch.Tensor:
    """Encode an IMAGE ``[B, H, W, C]`` (values in [0, 1]) to raw latents ``[B, 16, H/8, W/8]``.

    Alpha is dropped, H and W are center-cropped to multiples of 8 (offset ``(dim % 8) // 2``), the
    pixels are mapped to ``2x - 1`` and the posterior *mode* is returned (deterministic, as ComfyUI;
    diffusers' img2img samples instead). Result: float32 on the CPU.
    """
    if image.ndim != 4:
        raise ValueError(f"encode expects an IMAGE [B, H, W, C], got {tuple(image.shape)}.")
    factor = vae_scale_factor(vae)
    pixels = image[..., :3]
    height, width = pixels.shape[1], pixels.shape[2]
    new_h, new_w = height // factor * factor, width // factor * factor
    if new_h == 0 or new_w == 0:
        raise ValueError(f"The image ({width}x{height}) is smaller than the VAE's {factor}-pixel grid.")
    top, left = (height % factor) // 2, (width % factor) // 2
    pixels = pixels[:, top:top + new_h, left:left + new_w, :]
    _before_use(vae)
    device = execution_device(vae)
    dtype = next(vae.parameters()).dtype
    latents = []
    with torch.no_grad():
        for item in pixels.split(1, dim=0):
            x = (item.permute(0, 3, 1, 2).float() * 2.0 - 1.0).to(device=device, dtype=dtype)
            latents.append(vae.encode(x).latent_dist.mode().float().cpu())
    return torch.cat(latents, dim=0)
