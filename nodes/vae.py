"""VAEDecode and VAEEncode (ComfyUI semantics: decode clamps to [0,1]; encode takes the posterior mode)."""
from __future__ import annotations

from typing import Any

from graphrun.engine.node import Comfy, node

from .types import Image, Latent, Vae


def _decode_rows(calls: list[dict[str, Any]]) -> list[Any]:
    """VAEDecode of several rows' latents in one call."""
    from . import rows
    from .zimage.vae import decode

    rows.same(calls, "vae")
    stacked, sizes = rows.stack([c["latent"].samples for c in calls])
    return rows.split(decode(calls[0]["vae"].vae, stacked), sizes)


@node(
    "VAEDecode",
    category="latent",
    batch=_decode_rows,
    comfy=Comfy("VAEDecode", inputs={"latent": "samples"}, display_name="VAE Decode", input_order=("samples", "vae")),
)
def vae_decode(vae: Vae, latent: Latent) -> Image:
    """Decode raw latents to an IMAGE [B, H, W, 3] in [0, 1]."""
    from .zimage.vae import decode

    return decode(vae.vae, latent.samples)


@node(
    "VAEEncode",
    category="latent",
    comfy=Comfy("VAEEncode", display_name="VAE Encode", input_order=("pixels", "vae")),
)
def vae_encode(vae: Vae, pixels: Image) -> Latent:
    """Encode an IMAGE to raw latents (posterior mode; alpha dropped; sides cropped to multiples of 8)."""
    from .latent import LatentValue
    from .zimage.vae import encode

    return LatentValue(encode(vae.vae, pixels))
