"""Socket types of the diffusion node library (ComfyUI's type names).

These classes are annotations only: what flows along a link is the runtime value described
in each docstring. They live here, not in the engine, because the engine knows nothing of
diffusion.
"""
from __future__ import annotations

from graphrun.engine.node import Socket


class Model(Socket):
    """MODEL: an immutable handle (base network + sampling settings + LoRA patches)."""

    type_name = "MODEL"


class Clip(Socket):
    """CLIP: a text encoder handle (encoder + tokenizer)."""

    type_name = "CLIP"


class Vae(Socket):
    """VAE: an autoencoder handle."""

    type_name = "VAE"


class Conditioning(Socket):
    """CONDITIONING: encoded prompt embeddings (graphrun.nodes.sampling.guidance.Conditioning)."""

    type_name = "CONDITIONING"


class Latent(Socket):
    """LATENT: raw VAE-space latents [B, C, H/8, W/8] (graphrun.nodes.latent.LatentValue)."""

    type_name = "LATENT"


class Image(Socket):
    """IMAGE: float32 tensor [B, H, W, C] with values in [0, 1]."""

    type_name = "IMAGE"


class Mask(Socket):
    """MASK: float32 tensor [B, H, W] with values in [0, 1]."""

    type_name = "MASK"


class Sigmas(Socket):
    """SIGMAS: a 1-D float32 tensor of noise levels, usually ending in 0."""

    type_name = "SIGMAS"


class Sampler(Socket):
    """SAMPLER: a sampler name with its options."""

    type_name = "SAMPLER"


class Noise(Socket):
    """NOISE: an initial-noise source (seeded, or disabled)."""

    type_name = "NOISE"


class Guider(Socket):
    """GUIDER: model + conditionings + cfg, ready to denoise."""

    type_name = "GUIDER"


class UpscaleModel(Socket):
    """UPSCALE_MODEL: an image super-resolution network."""

    type_name = "UPSCALE_MODEL"
