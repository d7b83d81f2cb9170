"""k-diffusion style samplers with ComfyUI's flow-model (CONST) semantics.

Every sampler is one pure function with the same signature::

    sample_x(model, x, sigmas, *, seed, callback=None, model_sampling=None, **options) -> Tensor

``model(x, sigma_batch) -> D`` returns the denoised (x0) prediction; ``x`` is the noised start state in
model latent space; ``sigmas`` a 1-D float32 CPU schedule. The per-step scalar arithmetic runs on 0-dim
float32 CPU tensors in ComfyUI's operation order, which makes results bit-identical to ComfyUI on the
CPU (and avoids device syncs on a GPU). ``callback`` gets one ``StepInfo`` per step; an exception raised
by it stops sampling and propagates (progress bars, Ctrl-C). ``model_sampling`` defaults to
``model.model_sampling`` (guiders expose it); only dpmpp_2m_sde and lcm need it.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from .schedules import FlowModelSampling

__all__ = [
    "BrownianTreeNoiseSampler",
    "DenoiseFn",
    "NoiseSampler",
    "SAMPLERS",
    "Sampler",
    "SamplerFn",
    "StepCallback",
    "StepInfo",
    "default_noise_sampler",
    "get_sampler",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_lcm",
    "sample_res_multistep",
]

DenoiseFn = Callable[[Tensor, Tensor], Tensor]
"""``model(x [B,C,H,W], sigma [B]) -> denoised [B,C,H,W]``."""

NoiseSampler = Callable[[Tensor, Tensor], Tensor]
"""``noise_sampler(sigma, sigma_next) -> unit-variance noise shaped like x``."""


class StepInfo(NamedTuple):
    """What a step callback receives, once per sampler step."""

    i: int
    """Step index, 0-based."""
    total: int
    """Number of steps (``len(sigmas) - 1``)."""
    sigma: float
    """Sigma the model was evaluated at in this step."""
    x: Tensor
    """Sampler state before the step (model latent space)."""
    denoised: Tensor
    """The model's x0 prediction at this step (model latent space)."""


StepCallback = Callable[[StepInfo], None]


class SamplerFn(Protocol):
    def __call__(
        self,
        model: DenoiseFn,
        x: Tensor,
        sigmas: Tensor,
        *,
        seed: int,
        callback: StepCallback | None = None,
        model_sampling: FlowModelSampling | None = None,
        **options: Any,
    ) -> Tensor: ...


def default_noise_sampler(x: Tensor, seed: int, cpu_seed_offset: int = 0) -> NoiseSampler:
    """ComfyUI's ``default_noise_sampler``: one ``randn(x.shape)`` per call from a generator on x's
    device seeded with ``seed`` (+ ``cpu_seed_offset`` when x is on the CPU; ComfyUI from 2026 uses 1,
    the 2025 reference vectors 0). Device dependent: CUDA draws differ from CPU draws."""
    if x.device.type == "cpu":
        seed = (seed + cpu_seed_offset) % 2**64
    generator = torch.Generator(device=x.device)
    generator.manual_seed(seed)
    shape, dtype, device = x.shape, x.dtype, x.device

    def draw(sigma: Tensor, sigma_next: Tensor) -> Tensor:
        return torch.randn(shape, dtype=dtype, device=device, generator=generator)

    return draw


class BrownianTreeNoiseSampler:
    """Noise from a torchsde Brownian tree over [sigma_min, sigma_max] on the CPU, as ComfyUI's
    ``BrownianTreeNoiseSampler(cpu=True)``: sample = W(sigma -> sigma_next) / sqrt|sigma_next - sigma|."""

    def __init__(self, x: Tensor, sigma_min: Tensor, sigma_max: Tensor, seed: int) -> None:
        import torchsde

        t0, t1 = torch.as_tensor(sigma_min), torch.as_tensor(sigma_max)
        t0, t1, self._sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        w0 = torch.zeros(x.shape, dtype=x.dtype, device="cpu")
        self._tree = torchsde.BrownianTree(t0.cpu(), w0, t1.cpu(), entropy=seed)
        self._device, self._dtype = x.device, x.dtype

    @classmethod
    def for_schedule(cls, x: Tensor, sigmas: Tensor, seed: int) -> BrownianTreeNoiseSampler:
        """The tree ComfyUI builds for a schedule: from the smallest positive sigma to the largest."""
        return cls(x, sigmas[sigmas > 0].min(), sigmas.max(), seed)

    def __call__(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        lo, hi, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        with warnings.catch_warnings():
            # torchsde rounds the tree's start to its tolerance and warns (then clamps) when a query at
            # the smallest sigma falls a rounding error below it.
            warnings.filterwarnings("ignore", message=r"Should have (ta|tb)")
            w = self._tree(lo.cpu().float(), hi.cpu().float())
        w = w.to(device=self._device, dtype=self._dtype)
        return (w * (self._sign * sign)) / (t1 - t0).abs().sqrt()


def _resolve_model_sampling(model: DenoiseFn, model_sampling: FlowModelSampling | None) -> FlowModelSampling:
    ms = model_sampling if model_sampling is not None else getattr(model, "model_sampling", None)
    if ms is None:
        raise ValueError("this sampler needs model_sampling (pass it, or use a guider that has one)")
    return ms


# ---------------------------------------------------------------------------------------------
# Samplers


def sample_euler(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
) -> Tensor:
    """Euler method (Karras et al. 2022, Algorithm 2 without churn); ComfyUI's ``ddim`` is the same."""
    s_in = x.new_ones([x.shape[0]])
    total = len(sigmas) - 1
    for i in range(total):
        sigma = sigmas[i]
        denoised = model(x, sigma * s_in)
        d = (x - denoised) / sigma
        if callback is not None:
            callback(StepInfo(i, total, float(sigma), x, denoised))
        x = x + d * (sigmas[i + 1] - sigma)
    return x


def sample_euler_ancestral(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    cpu_seed_offset: int = 0,
) -> Tensor:
    """Ancestral Euler for rectified flow (k-diffusion/ComfyUI ``sample_euler_ancestral_RF``)."""
    # Steps down to sigma_down, then re-noises to sigma_next with the flow's alpha scaling.
    if noise_sampler is None:
        noise_sampler = default_noise_sampler(x, seed, cpu_seed_offset)
    s_in = x.new_ones([x.shape[0]])
    total = len(sigmas) - 1
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in)
        if callback is not None:
            callback(StepInfo(i, total, float(sigma), x, denoised))
        if sigma_next == 0:
            x = denoised
            continue
        downstep_ratio = 1 + (sigma_next / sigma - 1) * eta
        sigma_down = sigma_next * downstep_ratio
        alpha_next = 1 - sigma_next
        alpha_down = 1 - sigma_down
        renoise_coeff = (sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2) ** 0.5
        ratio = sigma_down / sigma
        x = ratio * x + (1 - ratio) * denoised
        if eta > 0:
            x = (alpha_next / alpha_down) * x + noise_sampler(sigma, sigma_next) * s_noise * renoise_coeff
    return x


def _ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float) -> tuple[Tensor, Tensor | float]:
    # The VE formula, which ComfyUI's res_multistep uses for flow models too.
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def sample_res_multistep(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
    eta: float = 0.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    cpu_seed_offset: int = 0,
) -> Tensor:
    """Second-order multistep RES solver (Zhang et al. 2023, arXiv:2308.02157)."""
    # eta > 0 is ComfyUI's res_multistep_ancestral (VE ancestral step even for flow models).
    if eta > 0 and noise_sampler is None:
        noise_sampler = default_noise_sampler(x, seed, cpu_seed_offset)
    s_in = x.new_ones([x.shape[0]])
    total = len(sigmas) - 1
    old_denoised: Tensor | None = None
    old_sigma_down: Tensor | None = None
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in)
        sigma_down, sigma_up = _ancestral_step(sigma, sigma_next, eta)
        if callback is not None:
            callback(StepInfo(i, total, float(sigma), x, denoised))
        if old_denoised is None or sigma_down == 0:
            d = (x - denoised) / sigma
            x = x + d * (sigma_down - sigma)
        else:
            assert old_sigma_down is not None
            t, t_old = sigma.log().neg(), old_sigma_down.log().neg()
            t_next, t_prev = sigma_down.log().neg(), sigmas[i - 1].log().neg()
            h = t_next - t
            c2 = (t_prev - t_old) / h
            phi1 = torch.expm1(-h) / -h
            phi2 = (phi1 - 1.0) / -h
            b1 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0)
            b2 = torch.nan_to_num(phi2 / c2, nan=0.0)
            # exp(-h) rather than sigma_down/sigma: the two differ in the last bits.
            x = h.neg().exp() * x + h * (b1 * denoised + b2 * old_denoised)
        # With eta 0 sigma_up is 0: ComfyUI still draws noise and multiplies it by 0; skipping the
        # draw gives the same result without the cost.
        if eta > 0 and sigma_next > 0:
            assert noise_sampler is not None
            x = x + noise_sampler(sigma, sigma_next) * s_noise * sigma_up
        old_denoised = denoised
        old_sigma_down = sigma_down
    return x


def sample_dpmpp_2m(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095)."""
    s_in = x.new_ones([x.shape[0]])
    total = len(sigmas) - 1
    old_denoised: Tensor | None = None
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in)
        if callback is not None:
            callback(StepInfo(i, total, float(sigma), x, denoised))
        t, t_next = sigma.log().neg(), sigma_next.log().neg()
        h = t_next - t
        # exp(-t_next)/exp(-t) rather than sigma_next/sigma: the two differ in the last bits.
        x_coeff = t_next.neg().exp() / t.neg().exp()
        if old_denoised is None or sigma_next == 0:
            x = x_coeff * x - (-h).expm1() * denoised
        else:
            h_last = t - sigmas[i - 1].log().neg()
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = x_coeff * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def sample_dpmpp_2m_sde(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
    noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """DPM-Solver++(2M) SDE with Brownian-tree noise (Lu et al. 2022, arXiv:2211.01095)."""
    # Flow models use the half-logSNR lambda = log((1 - sigma) / sigma).
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    if len(sigmas) <= 1:
        return x
    ms = _resolve_model_sampling(model, model_sampling)
    if noise_sampler is None:
        # The tree spans the schedule as given, before the first sigma is offset below.
        noise_sampler = BrownianTreeNoiseSampler.for_schedule(x, sigmas, seed)
    if sigmas[0] >= 1:
        # log((1-s)/s) is infinite at s = 1: start a hair below, at percent_to_sigma(1e-4).
        sigmas = sigmas.clone()
        sigmas[0] = ms.percent_to_sigma(1e-4)
    s_in = x.new_ones([x.shape[0]])
    total = len(sigmas) - 1
    old_denoised: Tensor | None = None
    h_last: Tensor | None = None
    h: Tensor | None = None
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in)
        if callback is not None:
            callback(StepInfo(i, total, float(sigma), x, denoised))
        if sigma_next == 0:
            x = denoised
        else:
            lambda_s, lambda_t = sigma.logit().neg(), sigma_next.logit().neg()
            h = lambda_t - lambda_s
            h_eta = h * (eta + 1)
            alpha_t = sigma_next * lambda_t.exp()
            neg_expm1 = (-h_eta).expm1().neg()
            x = sigma_next / sigma * (-h * eta).exp() * x + alpha_t * neg_expm1 * denoised
            if old_denoised is not None:
                assert h_last is not None
                r = h_last / h
                if solver_type == "heun":
                    x = x + alpha_t * (neg_expm1 / (-h_eta) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * alpha_t * neg_expm1 * (1 / r) * (denoised - old_denoised)
            if eta > 0 and s_noise > 0:
                noise = noise_sampler(sigma, sigma_next)
                x = x + noise * sigma_next * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        old_denoised = denoised
        h_last = h
    return x


def sample_heun(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
) -> Tensor:
    """Heun's method (Karras et al. 2022, Algorithm 1 without churn)."""
    s_in = x.new_ones([x.shape[0]])
    total = len(sigmas) - 1
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in)
        d = (x - denoised) / sigma
        if callback is not None:
            callback(StepInfo(i, total, float(sigma), x, denoised))
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigma_next * s_in)
            d_2 = (x_2 - denoised_2) / sigma_next
            x = x + ((d + d_2) / 2) * dt
    return x


def sample_lcm(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
    noise_sampler: NoiseSampler | None = None,
    cpu_seed_offset: int = 0,
) -> Tensor:
    """Latent Consistency Model sampling (Luo et al. 2023, arXiv:2310.04378)."""
    ms = _resolve_model_sampling(model, model_sampling)
    if noise_sampler is None:
        noise_sampler = default_noise_sampler(x, seed, cpu_seed_offset)
    s_in = x.new_ones([x.shape[0]])
    total = len(sigmas) - 1
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in)
        if callback is not None:
            callback(StepInfo(i, total, float(sigma), x, denoised))
        x = denoised
        if sigma_next > 0:
            x = ms.noise_scaling(sigma_next, noise_sampler(sigma, sigma_next), x)
    return x


SAMPLERS: dict[str, SamplerFn] = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "lcm": sample_lcm,
    "ddim": sample_euler,
    "res_multistep": sample_res_multistep,
}
"""Sampler name (ComfyUI's) -> sampler function."""


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
        **options: Any,
    ) -> Tensor:
        """Run the sampler; ``options`` are added to (and override) the fixed ones."""
        merged = {**dict(self.options), **options}
        return SAMPLERS[self.name](
            model, x, sigmas, seed=seed, callback=callback, model_sampling=model_sampling, **merged
        )


def get_sampler(name: str, options: Mapping[str, Any] | None = None) -> Sampler:
    """The SAMPLER for a registered name, with optional fixed options (e.g. ``{"eta": 0.5}``)."""
    return Sampler(name, tuple(sorted((options or {}).items())))
