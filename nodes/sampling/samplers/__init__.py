"""The sampler registry: ComfyUI's sampler names -> pure sampler functions.

A sampler is registered by decorating its function (see ``base`` for the signature)::

    @register_sampler("euler")
    def sample_euler(model, x, sigmas, *, seed, callback=None, model_sampling=None): ...

The modules of this package group ComfyUI's samplers by method; a plugin registers its own the same
way, and the sampler then appears in KSampler's and KSamplerSelect's choices, in validation, in
``graphrun nodes`` and in the JSON Schema. ``register_sampler`` and the name list live in the torch-free
``graphrun.nodes.sampling.registry`` (re-exported here); a built-in sampler's name must also be listed
in ``registry.BUILTIN_SAMPLERS``, which validation reads without importing this package.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..registry import BUILTIN_SAMPLERS, put_builtins_first, register_sampler, sampler_names
from ..registry import SAMPLERS as _SAMPLER_TABLE
from ..schedules import FlowModelSampling
from .base import (
    COMFY_CPU_SEED_OFFSET,
    BrownianTreeNoiseSampler,
    DenoiseFn,
    NoiseSampler,
    RowSeeds,
    SamplerFn,
    StepCallback,
    StepInfo,
    default_noise_sampler,
    denoise_with_uncond,
    resolve_model_sampling,
)

__all__ = [
    "COMFY_CPU_SEED_OFFSET",
    "BrownianTreeNoiseSampler",
    "DenoiseFn",
    "NoiseSampler",
    "RowSeeds",
    "SAMPLERS",
    "Sampler",
    "SamplerFn",
    "StepCallback",
    "StepInfo",
    "default_noise_sampler",
    "denoise_with_uncond",
    "get_sampler",
    "register_sampler",
    "resolve_model_sampling",
    "sampler_names",
]

SAMPLERS: dict[str, SamplerFn] = _SAMPLER_TABLE
"""Sampler name (ComfyUI's) -> sampler function, in registration order (ComfyUI's list order for
the built-ins). The same dict as ``registry.SAMPLERS``: registration lives in the torch-free
``graphrun.nodes.sampling.registry`` so that validation can list the names without torch."""


@dataclass(frozen=True)
class Sampler:
    """A SAMPLER value: a registered sampler name plus fixed options (ComfyUI ``KSamplerSelect`` and
    the ``Sampler*`` option nodes)."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.name!r}; known: {', '.join(SAMPLERS)}")

    def __call__(
        self,
        model: DenoiseFn,
        x: Tensor,
        sigmas: Tensor,
        *,
        seed: int,
        callback: StepCallback | None = None,
        model_sampling: FlowModelSampling | None = None,
        cpu_seed_offset: int | None = None,
        **options: Any,
    ) -> Tensor:
        """Run the sampler; ``options`` are added to (and override) the fixed ones.
        ``cpu_seed_offset`` (the ComfyUI-version setting) reaches only samplers that draw noise from
        ``default_noise_sampler``."""
        fn = SAMPLERS[self.name]
        merged = {**dict(self.options), **options}
        if cpu_seed_offset is not None and "cpu_seed_offset" not in merged and _accepts(fn, "cpu_seed_offset"):
            merged["cpu_seed_offset"] = cpu_seed_offset
        return fn(model, x, sigmas, seed=seed, callback=callback, model_sampling=model_sampling, **merged)


def _accepts(fn: Callable[..., Any], option: str) -> bool:
    params = inspect.signature(fn).parameters
    return option in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def get_sampler(name: str, options: Mapping[str, Any] | None = None) -> Sampler:
    """The SAMPLER for a registered name, with optional fixed options (e.g. ``{"eta": 0.5}``)."""
    return Sampler(name, tuple(sorted((options or {}).items())))


def _load_builtins() -> None:
    # Each module registers its samplers on import; the dict is then put in ComfyUI's order.
    from . import classic, dpm_solver, exponential, multistep, sde, single_step, unipc  # noqa: F401

    put_builtins_first(SAMPLERS, BUILTIN_SAMPLERS)


_load_builtins()
