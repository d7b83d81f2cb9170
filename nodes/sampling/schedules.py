"""Flow model sampling, latent formats and sigma schedules with ComfyUI semantics.

Everything here reproduces ComfyUI bit for bit on the CPU: the 1000-entry float32 sigma table of
``ModelSamplingDiscreteFlow`` (what ``ModelSamplingAuraFlow`` installs for Z-Image), the scheduler
functions of ``comfy.samplers.SCHEDULER_HANDLERS`` and the sigma selection done by the ``KSampler``,
``KSamplerAdvanced`` and ``BasicScheduler`` nodes. Sigma schedules are 1-D float32 CPU tensors; an
*empty* schedule means "sampling does not run, the input latent is returned unchanged".
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .registry import BUILTIN_SCHEDULERS, DISCARD_PENULTIMATE_SIGMA_SAMPLERS, put_builtins_first, register_scheduler
from .registry import SCHEDULERS as _SCHEDULER_TABLE

__all__ = [
    "DISCARD_PENULTIMATE_SIGMA_SAMPLERS",
    "FLUX_LATENT",
    "FlowModelSampling",
    "LatentFormat",
    "SCHEDULERS",
    "SchedulerFn",
    "advanced_sigmas",
    "basic_scheduler_sigmas",
    "calculate_sigmas",
    "ksampler_sigmas",
    "register_scheduler",
    "time_snr_shift",
]


def time_snr_shift(alpha: float, t: Tensor | float) -> Tensor | float:
    """Flow time shift ``alpha*t / (1 + (alpha-1)*t)`` (identity for alpha 1)."""
    if alpha == 1.0:
        return t
    return alpha * t / (1 + (alpha - 1) * t)


def _reshape_sigma(sigma: Tensor, ndim: int) -> Tensor:
    # One sigma broadcasts as a scalar; a per-row sigma [B] becomes [B, 1, 1, ...].
    if sigma.numel() == 1:
        return sigma.view(())
    return sigma.view(sigma.shape[:1] + (1,) * (ndim - 1))


@dataclass(frozen=True)
class FlowModelSampling:
    """Discrete flow model sampling with rectified-flow (CONST) scaling, as ComfyUI's
    ``ModelSamplingDiscreteFlow`` + ``CONST`` set up by ``ModelSamplingAuraFlow(shift)``.

    ``sigmas`` is the float32 table ``time_snr_shift(shift, (i+1)/1000)``, i = 0..999, computed with
    float32 tensors in ComfyUI's operation order so that schedules derived from it match exactly.
    """

    shift: float = 3.0
    multiplier: float = 1.0
    sigmas: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        timesteps = 1000
        t = (torch.arange(1, timesteps + 1, 1) / timesteps) * self.multiplier
        object.__setattr__(self, "sigmas", self.sigma(t))

    @property
    def sigma_min(self) -> Tensor:
        """Smallest table sigma (0-dim float32 tensor)."""
        return self.sigmas[0]

    @property
    def sigma_max(self) -> Tensor:
        """Largest table sigma (0-dim float32 tensor; 1.0)."""
        return self.sigmas[-1]

    def timestep(self, sigma: Tensor | float) -> Tensor | float:
        """Model timestep for a sigma (``sigma * multiplier``)."""
        return sigma * self.multiplier

    def sigma(self, timestep: Tensor | float) -> Tensor | float:
        """Sigma for a model timestep."""
        return time_snr_shift(self.shift, timestep / self.multiplier)

    def percent_to_sigma(self, percent: float) -> float:
        """Sigma at a fraction of the schedule (0 -> 1.0, 1 -> 0.0), in Python double precision."""
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return time_snr_shift(self.shift, 1.0 - percent)

    def noise_scaling(self, sigma: Tensor, noise: Tensor, latent: Tensor) -> Tensor:
        """Initial sampler state ``sigma*noise + (1-sigma)*latent`` (latent in model space)."""
        sigma = _reshape_sigma(sigma, noise.ndim)
        return sigma * noise + (1.0 - sigma) * latent

    def inverse_noise_scaling(self, sigma: Tensor, x: Tensor) -> Tensor:
        """Undo the latent weight of ``noise_scaling`` at the last sigma: ``x / (1-sigma)``."""
        sigma = _reshape_sigma(sigma, x.ndim)
        return x / (1.0 - sigma)

    def calculate_denoised(self, sigma: Tensor, model_output: Tensor, model_input: Tensor) -> Tensor:
        """x0 prediction from a velocity output: ``x - v*sigma`` (sigma per batch row)."""
        sigma = _reshape_sigma(sigma, model_output.ndim)
        return model_input - model_output * sigma


@dataclass(frozen=True)
class LatentFormat:
    """How raw VAE latents map to the model's latent space (ComfyUI ``latent_formats``)."""

    name: str
    latent_channels: int
    scale_factor: float
    shift_factor: float = 0.0

    def process_in(self, latent: Tensor) -> Tensor:
        """Raw VAE latent -> model space: ``(z - shift) * scale``."""
        return (latent - self.shift_factor) * self.scale_factor

    def process_out(self, latent: Tensor) -> Tensor:
        """Model space -> raw VAE latent: ``z / scale + shift``."""
        return (latent / self.scale_factor) + self.shift_factor


FLUX_LATENT = LatentFormat(name="flux", latent_channels=16, scale_factor=0.3611, shift_factor=0.1159)
"""The Flux "ae" latent format, used by Z-Image (ComfyUI ``latent_formats.Flux``)."""


# ---------------------------------------------------------------------------------------------
# Schedulers. Each takes (model_sampling, steps) and returns steps+1 sigmas ending in 0 (with the
# documented ComfyUI exceptions: ddim_uniform may return more, beta may return fewer).

SchedulerFn = Callable[[FlowModelSampling, int], Tensor]


def _append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def simple_scheduler(ms: FlowModelSampling, steps: int) -> Tensor:
    """Evenly strided table entries from the top (``int()`` truncation of the stride)."""
    table = ms.sigmas
    stride = len(table) / steps
    sigs = [float(table[-(1 + int(k * stride))]) for k in range(steps)]
    sigs.append(0.0)
    return torch.tensor(sigs, dtype=torch.float32)


def normal_scheduler(ms: FlowModelSampling, steps: int, sgm: bool = False) -> Tensor:
    """Timesteps linear between timestep(sigma_max) and timestep(sigma_min), mapped to sigmas."""
    start = ms.timestep(ms.sigma_max)
    end = ms.timestep(ms.sigma_min)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(ms.sigma(end)), 0, abs_tol=0.00001):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)
    sigs = [float(ms.sigma(ts)) for ts in timesteps]
    if append_zero:
        sigs.append(0.0)
    return torch.tensor(sigs, dtype=torch.float32)


def sgm_uniform_scheduler(ms: FlowModelSampling, steps: int) -> Tensor:
    """``normal`` with steps+1 points and the last one dropped (SGM / SDXL-turbo spacing)."""
    return normal_scheduler(ms, steps, sgm=True)


def karras_scheduler(ms: FlowModelSampling, steps: int, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022 rho-spaced sigmas between the table's sigma_min and sigma_max."""
    sigma_min, sigma_max = float(ms.sigma_min), float(ms.sigma_max)
    ramp = torch.linspace(0, 1, steps)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential_scheduler(ms: FlowModelSampling, steps: int) -> Tensor:
    """Sigmas evenly spaced in log space between sigma_max and sigma_min."""
    sigma_min, sigma_max = float(ms.sigma_min), float(ms.sigma_max)
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), steps).exp())


def ddim_uniform_scheduler(ms: FlowModelSampling, steps: int) -> Tensor:
    """Every (1000 // steps)-th table entry from index 1 upwards, reversed (may exceed steps+1)."""
    table = ms.sigmas
    x = 1
    if math.isclose(float(table[x]), 0, abs_tol=0.00001):
        steps += 1
        sigs: list[float] = []
    else:
        sigs = [0.0]
    stride = max(len(table) // steps, 1)
    while x < len(table):
        sigs.append(float(table[x]))
        x += stride
    return torch.tensor(sigs[::-1], dtype=torch.float32)


def beta_scheduler(ms: FlowModelSampling, steps: int, alpha: float = 0.6, beta: float = 0.6) -> Tensor:
    """Beta-distribution spaced table indices (Lee et al. 2024, arXiv:2407.12173); repeated
    indices are skipped, so fewer than steps+1 sigmas are possible."""
    import numpy as np
    from scipy import stats

    total = len(ms.sigmas) - 1
    ts = 1 - np.linspace(0, 1, steps, endpoint=False)
    ts = np.rint(stats.beta.ppf(ts, alpha, beta) * total)
    sigs: list[float] = []
    last_t = -1
    for t in ts:
        if t != last_t:
            sigs.append(float(ms.sigmas[int(t)]))
        last_t = t
    sigs.append(0.0)
    return torch.tensor(sigs, dtype=torch.float32)


def linear_quadratic_scheduler(
    ms: FlowModelSampling, steps: int, threshold_noise: float = 0.025, linear_steps: int | None = None
) -> Tensor:
    """Linear then quadratic schedule (Mochi); 1 step gives [1, 0]."""
    if steps == 1:
        schedule = [1.0, 0.0]
    else:
        if linear_steps is None:
            linear_steps = steps // 2
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        step_diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quadratic_coef = step_diff / (linear_steps * quadratic_steps**2)
        linear_coef = threshold_noise / linear_steps - 2 * step_diff / (quadratic_steps**2)
        const = quadratic_coef * (linear_steps**2)
        quadratic = [quadratic_coef * (i**2) + linear_coef * i + const for i in range(linear_steps, steps)]
        schedule = [1.0 - v for v in linear + quadratic + [1.0]]
    return torch.tensor(schedule, dtype=torch.float32) * ms.sigma_max


def kl_optimal_scheduler(ms: FlowModelSampling, steps: int) -> Tensor:
    """KL-optimal spacing, tan-interpolated atan(sigma) (Align Your Steps); steps 1 gives NaN
    as first sigma, as ComfyUI."""
    sigma_min, sigma_max = float(ms.sigma_min), float(ms.sigma_max)
    adj = torch.arange(steps, dtype=torch.float32).div_(steps - 1)
    sigmas = adj.new_zeros(steps + 1)
    sigmas[:-1] = (adj * math.atan(sigma_min) + (1 - adj) * math.atan(sigma_max)).tan_()
    return sigmas


SCHEDULERS: dict[str, SchedulerFn] = _SCHEDULER_TABLE
"""Scheduler name -> function(model_sampling, steps), built-ins first in ComfyUI's order. The same
dict as ``registry.SCHEDULERS``; plugins add to it with ``registry.register_scheduler``."""

for _name, _fn in {
    "simple": simple_scheduler,
    "sgm_uniform": sgm_uniform_scheduler,
    "karras": karras_scheduler,
    "exponential": exponential_scheduler,
    "ddim_uniform": ddim_uniform_scheduler,
    "beta": beta_scheduler,
    "normal": normal_scheduler,
    "linear_quadratic": linear_quadratic_scheduler,
    "kl_optimal": kl_optimal_scheduler,
}.items():
    register_scheduler(_name)(_fn)
put_builtins_first(SCHEDULERS, BUILTIN_SCHEDULERS)


def calculate_sigmas(ms: FlowModelSampling, scheduler: str, steps: int) -> Tensor:
    """Full schedule of a named scheduler (``comfy.samplers.calculate_sigmas``)."""
    try:
        fn = SCHEDULERS[scheduler]
    except KeyError:
        raise ValueError(f"unknown scheduler {scheduler!r}; known: {', '.join(SCHEDULERS)}") from None
    return fn(ms, steps)


def _ksampler_schedule(ms: FlowModelSampling, scheduler: str, steps: int, sampler_name: str) -> Tensor:
    if sampler_name in DISCARD_PENULTIMATE_SIGMA_SAMPLERS:
        sigmas = calculate_sigmas(ms, scheduler, steps + 1)
        return torch.cat([sigmas[:-2], sigmas[-1:]])
    return calculate_sigmas(ms, scheduler, steps)


def ksampler_sigmas(
    ms: FlowModelSampling, scheduler: str, steps: int, denoise: float | None = 1.0, sampler_name: str = "euler"
) -> Tensor:
    """Sigmas of the KSampler node (``KSampler.set_steps``).

    denoise > 0.9999 (or None) is a full schedule; denoise <= 0 gives an empty schedule (the input is
    returned unchanged); otherwise the last ``steps+1`` sigmas of an ``int(steps/denoise)``-step
    schedule, so that ``steps`` model steps run on the tail of a longer schedule.
    """
    if denoise is None or denoise > 0.9999:
        return _ksampler_schedule(ms, scheduler, steps, sampler_name)
    if denoise <= 0.0:
        return torch.zeros(0, dtype=torch.float32)
    new_steps = int(steps / denoise)
    return _ksampler_schedule(ms, scheduler, new_steps, sampler_name)[-(steps + 1):]


def basic_scheduler_sigmas(ms: FlowModelSampling, scheduler: str, steps: int, denoise: float = 1.0) -> Tensor:
    """Sigmas of the BasicScheduler node: like KSampler, but partial for any denoise < 1.0 and never
    dropping the penultimate sigma. denoise <= 0 gives an empty schedule."""
    total_steps = steps
    if denoise < 1.0:
        if denoise <= 0.0:
            return torch.zeros(0, dtype=torch.float32)
        total_steps = int(steps / denoise)
    return calculate_sigmas(ms, scheduler, total_steps)[-(steps + 1):]


def advanced_sigmas(
    ms: FlowModelSampling,
    scheduler: str,
    steps: int,
    start_at_step: int,
    end_at_step: int,
    force_full_denoise: bool,
    sampler_name: str = "euler",
) -> Tensor:
    """Sigmas the KSamplerAdvanced node hands to the sampler.

    The full ``steps`` schedule is cut after ``end_at_step`` (its last sigma set to 0 when
    ``force_full_denoise``, i.e. return_with_leftover_noise disabled) and then starts at
    ``start_at_step``. An empty result means the input latent is returned unchanged (ComfyUI does
    that when ``start_at_step >= len(sigmas) - 1``).
    """
    sigmas = _ksampler_schedule(ms, scheduler, steps, sampler_name)
    if end_at_step < len(sigmas) - 1:
        sigmas = sigmas[: end_at_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_at_step < len(sigmas) - 1:
        return sigmas[start_at_step:]
    return torch.zeros(0, dtype=torch.float32)
