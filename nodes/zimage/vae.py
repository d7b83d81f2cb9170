"""Flux-VAE decode/encode with ComfyUI's VAEDecode/VAEEncode semantics, bit for bit on the CPU.

LATENT values are raw VAE latents (the Flux scale/shift is applied only inside sampling; diffusers'
ZImagePipeline likewise undoes it before ``vae.decode``), so they go straight into the VAE. Images are
ComfyUI IMAGE tensors: ``[B, H, W, C]`` float32 in [0, 1], channel-last, on the CPU.

Why own batching and layouts: the last bits of a convolution depend on the batch it runs in and on the
memory layout of its input, so this follows ComfyUI's ``comfy.sd.VAE`` exactly: it runs as many images
per forward as its memory estimate allows (on the CPU, with ample RAM, the whole batch at once), feeds
the encoder the channel-last IMAGE viewed as ``[B, C, H, W]`` (not made contiguous), and returns the
decoded image as a ``[B, C, H, W]`` buffer viewed channel-last, as ComfyUI does. The forward itself is
``vae_forward`` (ComfyUI's operation order on diffusers' weights).
"""
from __future__ import annotations

from typing import Any

import torch

from ..runtime import execution_device
from . import vae_forward


def vae_scale_factor(vae: Any) -> int:
    """Pixels per latent pixel (8 for the Flux VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _before_use(vae: Any) -> None:
    # encode/decode bypass nn.Module.__call__, so offloading others is triggered by hand.
    hook = getattr(vae, "_graphrun_before_use", None)
    if hook is not None:
        hook()


def _images_per_forward(device: torch.device, bytes_per_image: float) -> int:
    """How many images ComfyUI runs through the VAE at once: free memory over its per-image estimate."""
    return max(1, int(vae_forward.free_memory(device) / max(1.0, bytes_per_image)))


def decode(vae: Any, latent_raw: torch.Tensor) -> torch.Tensor:
    """Decode raw latents ``[B, 16, h, w]`` to an IMAGE ``[B, 8h, 8w, 3]`` float32 in [0, 1].

    As ComfyUI's ``VAE.decode``: batches sized by its estimate (2178 * h * w * 64 bytes per float32
    image), output ``clamp((x + 1) / 2, 0, 1)`` computed in place in float32.
    """
    if latent_raw.ndim != 4:
        raise ValueError(f"VAEDecode: expects a latent [B, C, h, w], got {tuple(latent_raw.shape)}.")
    _before_use(vae)
    device = execution_device(vae)
    dtype = next(vae.parameters()).dtype
    estimate = 2178 * latent_raw.shape[2] * latent_raw.shape[3] * 64 * torch.finfo(dtype).bits // 8
    step = _images_per_forward(device, estimate)
    pixels: torch.Tensor | None = None
    with torch.no_grad():
        for start in range(0, latent_raw.shape[0], step):
            samples = latent_raw[start:start + step].to(device=device, dtype=dtype)
            out = vae_forward.decode(vae, samples).to(device="cpu", dtype=torch.float32, copy=True)
            if pixels is None:
                pixels = torch.empty((latent_raw.shape[0],) + tuple(out.shape[1:]), dtype=torch.float32)
            chunk = pixels[start:start + step]
            chunk.copy_(out)
            del out
            chunk.add_(1.0).div_(2.0).clamp_(0.0, 1.0)
    assert pixels is not None
    return pixels.movedim(1, -1)


def encode(vae: Any, image: torch.Tensor) -> torch.Tensor:
    """Encode an IMAGE ``[B, H, W, C]`` (values in [0, 1]) to raw latents ``[B, 16, H/8, W/8]``.

    As ComfyUI's ``VAE.encode``: H and W are center-cropped to multiples of 8 (offset
    ``(dim % 8) // 2``), channels past the third (alpha) dropped, the pixels mapped to ``2x - 1`` and
    the posterior *mode* returned (deterministic; diffusers' img2img samples instead), in batches sized
    by ComfyUI's estimate (1767 * H * W bytes per float32 image). Result: float32 on the CPU.
    """
    if image.ndim != 4:
        raise ValueError(f"VAEEncode: expects an IMAGE [B, H, W, C], got {tuple(image.shape)}.")
    if image.shape[-1] < 3:
        raise ValueError(f"VAEEncode: the image has {image.shape[-1]} channel(s); the VAE needs RGB (3). "
                         f"Convert it to RGB before encoding.")
    factor = vae_scale_factor(vae)
    pixels = image
    for dim in (1, 2):
        size = pixels.shape[dim]
        kept = size // factor * factor
        if kept == 0:
            raise ValueError(f"VAEEncode: the image ({image.shape[2]}x{image.shape[1]}) is smaller than "
                             f"the VAE's {factor}-pixel grid; use an image of at least {factor}x{factor}.")
        if kept != size:
            pixels = pixels.narrow(dim, (size % factor) // 2, kept)
    pixels = pixels[..., :3].movedim(-1, 1)
    _before_use(vae)
    device = execution_device(vae)
    dtype = next(vae.parameters()).dtype
    step = _images_per_forward(device, 1767 * pixels.shape[2] * pixels.shape[3] * torch.finfo(dtype).bits // 8)
    latents: torch.Tensor | None = None
    with torch.no_grad():
        for start in range(0, pixels.shape[0], step):
            x = (pixels[start:start + step].float() * 2.0 - 1.0).to(dtype).to(device)
            out = vae_forward.encode(vae, x).to("cpu").to(dtype=torch.float32)
            if latents is None:
                latents = torch.empty((pixels.shape[0],) + tuple(out.shape[1:]), dtype=torch.float32)
            latents[start:start + step] = out
    assert latents is not None
    return latents
