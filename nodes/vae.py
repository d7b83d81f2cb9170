"""VAEDecode and VAEEncode (ComfyUI semantics, bit for bit on the CPU: see zimage/vae.py)."""
from __future__ import annotations

from typing import Any

from graphrun.engine.node import Comfy, node

from .types import Image, Latent, Vae


def _decode_rows(calls: list[dict[str, Any]]) -> list[Any]:
    """VAEDecode of several rows.

    On the CPU each row's latents are decoded on their own: a convolution's last bits depend on the batch
    it runs in, and ComfyUI decodes each VAEDecode's latent batch by itself, so stacking rows would change
    pixels. Elsewhere (GPUs, where nothing is bit-exact) the rows share one forward, for throughput.
    """
    from . import rows
    from .runtime import execution_device
    from .zimage.vae import decode

    vae = calls[0]["vae"].vae
    if execution_device(vae).type == "cpu" or any(c["vae"].vae is not vae for c in calls):
        return [decode(c["vae"].vae, c["latent"].samples) for c in calls]
    stacked, sizes = rows.stack([c["latent"].samples for c in calls])
    return rows.split(decode(vae, stacked), sizes)


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
