"""Initial noise with ComfyUI semantics (``comfy.sample.prepare_noise``).

Noise is always drawn on the CPU in float32 from a generator seeded with the node seed, so it is the
same on every machine and matches ComfyUI bit for bit. A dedicated ``torch.Generator`` is used: it
yields the same stream as ComfyUI's reseeded global generator without touching global RNG state.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["DisableNoise", "RandomNoise", "fix_empty_latent_channels", "prepare_noise"]


def _cpu_generator(seed: int) -> torch.Generator:
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator


def prepare_noise(latent: Tensor, seed: int, batch_index: Sequence[int] | None = None) -> Tensor:
    """Seeded standard-normal noise shaped like ``latent`` (CPU, cast to the latent dtype).

    With ``batch_index`` (latents taken from a larger batch), one ``[1, C, H, W]`` draw is made for
    every index 0..max(batch_index) and entry k gets the draw of ``batch_index[k]``, so an image keeps
    its noise when it is sampled on its own (duplicate indices share noise).
    """
    generator = _cpu_generator(seed)
    shape = tuple(latent.shape)
    if batch_index is None:
        noise = torch.randn(shape, dtype=torch.float32, generator=generator, device="cpu")
        return noise.to(latent.dtype)
    indices = [int(i) for i in batch_index]
    if not indices:
        raise ValueError("batch_index must not be empty")
    if min(indices) < 0:
        raise ValueError(f"batch_index must be non-negative, got {indices}")
    wanted = set(indices)
    draws: dict[int, Tensor] = {}
    for i in range(max(indices) + 1):
        # Every index up to the largest is drawn, wanted or not, to advance the stream identically.
        draw = torch.randn((1, *shape[1:]), dtype=torch.float32, generator=generator, device="cpu")
        if i in wanted:
            draws[i] = draw.to(latent.dtype)
    return torch.cat([draws[i] for i in indices], dim=0)


def fix_empty_latent_channels(latent: Tensor, latent_channels: int) -> Tensor:
    """An all-zero latent with the wrong channel count (e.g. a 4-channel EmptyLatentImage fed to a
    16-channel model) becomes zeros with ``latent_channels`` channels; any other latent is returned
    as is."""
    if latent.shape[1] != latent_channels and not bool(torch.count_nonzero(latent)):
        shape = (latent.shape[0], latent_channels, *latent.shape[2:])
        return latent.new_zeros(shape)
    return latent


@dataclass(frozen=True)
class RandomNoise:
    """Seeded initial noise (ComfyUI ``RandomNoise`` / KSampler ``add_noise``)."""

    seed: int

    def generate(self, latent: Tensor, batch_index: Sequence[int] | None = None) -> Tensor:
        """Noise for ``latent`` (see ``prepare_noise``)."""
        return prepare_noise(latent, self.seed, batch_index)


@dataclass(frozen=True)
class DisableNoise:
    """No initial noise (ComfyUI ``DisableNoise``; its seed, used by ancestral samplers, is 0)."""

    seed: int = 0

    def generate(self, latent: Tensor, batch_index: Sequence[int] | None = None) -> Tensor:
        """Zeros shaped like ``latent`` (CPU)."""
        return torch.zeros(latent.shape, dtype=latent.dtype, device="cpu")
