"""The sampler registry: ComfyUI's sampler names -> pure sampler functions.

A sampler is registered by decorating its function (see ``base`` for the signature)::

    @register_sampler("euler")
    def sample_euler(model, x, sigmas, *, seed, callback=None, model_sampling=None): ...

The modules of this package group ComfyUI's samplers by method; a plugin registers its own the same
way, and the sampler then appears in KSampler's and KSamplerSelect's choices, in validation, in
``graphrun nodes`` and in the JSON Schema.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..schedules import DISCARD_PENULTIMATE_SIGMA_SAMPLERS, FlowModelSampling
from .base import (
    COMFY_CPU_SEED_OFFSET,
    BrownianTreeNoiseSampler,
    DenoiseFn,
    NoiseSampler,
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

SAMPLERS: dict[str, SamplerFn] = {}
"""Sampler name (ComfyUI's) -> sampler function, in registration order (ComfyUI's list order for
the built-ins)."""


def register_sampler(
    name: str, *, discard_penultimate_sigma: bool = False, replace: bool = False
) -> Callable[[SamplerFn], SamplerFn]:
    """Register the decorated function as sampler ``name``.

    ``discard_penultimate_sigma``: KSampler computes ``steps + 1`` sigmas and drops the penultimate
    one for this sampler (ComfyUI does so for dpm_2, dpm_2_ancestral, uni_pc, uni_pc_bh2). A name that
    is taken is an error unless ``replace``; the function needs a one-line docstring (the help text).
    """

    def decorate(fn: SamplerFn) -> SamplerFn:
        if name in SAMPLERS and not replace and SAMPLERS[name] is not fn:
            raise ValueError(
                f"sampler {name!r} is already registered by {_origin(SAMPLERS[name])}; "
                f"{_origin(fn)} cannot register it again (pick another name)"
            )
        if not (fn.__doc__ or "").strip():
            raise ValueError(f"sampler {name!r} ({_origin(fn)}) needs a docstring: it is the sampler's help text")
        SAMPLERS[name] = fn
        if discard_penultimate_sigma:
            DISCARD_PENULTIMATE_SIGMA_SAMPLERS.add(name)
        return fn

    return decorate


def sampler_names() -> list[str]:
    """Registered sampler names, built-ins first in ComfyUI's order."""
    return list(SAMPLERS)


def _origin(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


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


COMFY_SAMPLER_ORDER = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "exp_heun_2_x0", "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive",
    "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m",
    "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep",
    "res_multistep_cfg_pp", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp",
    "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver",
    "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
)
"""ComfyUI v0.18.1's ``KSampler.SAMPLERS``, the order of the built-in choice list."""


def _load_builtins() -> None:
    # Each module registers its samplers on import; the dict is then put in ComfyUI's order.
    from . import classic, dpm_solver, exponential, multistep, sde, single_step, unipc  # noqa: F401

    builtins = {name: SAMPLERS.pop(name) for name in COMFY_SAMPLER_ORDER if name in SAMPLERS}
    others = dict(SAMPLERS)
    SAMPLERS.clear()
    SAMPLERS.update(builtins)
    SAMPLERS.update(others)


_load_builtins()
