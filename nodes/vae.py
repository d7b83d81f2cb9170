"""VAEDecode and VAEEncode (ComfyUI semantics: decode clamps to [0,1]; encode takes the posterior mode)."""
from __future__ import annotations

from graphrun.engine.node import Comfy, node

from .types import Image, Latent, Vae


@node("VAEDecode", category="latent", comfy=Comfy("VAEDecode", inputs={"latent": "samples"}))
def vae_decode(vae: Vae, latent: Latent) -> Image:
    """Decode raw latents to an IMAGE [B, H, W, 3] in [0, 1]."""
    from .zimage.vae import decode

    return decode(vae.vae, latent.samples)


@node("VAEEncode", category="latent", comfy=Comfy("VAEEncode"))
def vae_encode(vae: Vae, pixels: Image) -> Latent:
    """Encode an IMAGE to raw latents (posterior mode; alpha dropped; sides cropped to multiples of 8)."""
    from .latent import LatentValue
    from .zimage.vae import encode

    return LatentValue(encode(vae.vae, pixels))
