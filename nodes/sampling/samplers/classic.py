"""The first samplers graphrun implemented: euler, euler_ancestral (RF), heun, dpmpp_2m, dpmpp_2m_sde,
lcm, ddim and res_multistep, with ComfyUI's flow-model (CONST) semantics."""
from __future__ import annotations

import torch
from torch import Tensor

from ..schedules import FlowModelSampling
from . import register_sampler
from .base import (
    COMFY_CPU_SEED_OFFSET,
    BrownianTreeNoiseSampler,
    DenoiseFn,
    NoiseSampler,
    StepCallback,
    StepInfo,
    ancestral_step,
    default_noise_sampler,
    denoise_with_uncond,
    flow_ancestral_step,
    half_log_snr,
    offset_first_sigma,
    resolve_model_sampling,
)


@register_sampler("euler")
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


@register_sampler("euler_ancestral")
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
    cpu_seed_offset: int = COMFY_CPU_SEED_OFFSET,
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
        sigma_down, alpha_next, alpha_down, renoise_coeff = flow_ancestral_step(sigma, sigma_next, eta)
        ratio = sigma_down / sigma
        x = ratio * x + (1 - ratio) * denoised
        if eta > 0:
            x = (alpha_next / alpha_down) * x + noise_sampler(sigma, sigma_next) * s_noise * renoise_coeff
    return x


@register_sampler("res_multistep")
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
    cpu_seed_offset: int = COMFY_CPU_SEED_OFFSET,
    cfg_pp: bool = False,
) -> Tensor:
    """Second-order multistep RES solver (Zhang et al. 2023, arXiv:2308.02157)."""
    # eta > 0 is ComfyUI's res_multistep_ancestral (VE ancestral step even for flow models); cfg_pp
    # its *_cfg_pp variants, which step with the unconditional prediction (samplers.multistep).
    # Built even when eta is 0 (no noise is drawn then), as ComfyUI does: seeding the generator is
    # what rejects seed 2**64 - 1 (seed + 1 overflows it), so plain res_multistep fails there too.
    if noise_sampler is None:
        noise_sampler = default_noise_sampler(x, seed, cpu_seed_offset)
    s_in = x.new_ones([x.shape[0]])
    total = len(sigmas) - 1
    old_denoised: Tensor | None = None
    old_sigma_down: Tensor | None = None
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        # The step is built on `uncond`: the unconditional prediction for CFG++, else the guided one.
        if cfg_pp:
            denoised, uncond = denoise_with_uncond(model, x, sigma * s_in)
        else:
            denoised = uncond = model(x, sigma * s_in)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if callback is not None:
            callback(StepInfo(i, total, float(sigma), x, denoised))
        if old_denoised is None or sigma_down == 0:
            if cfg_pp:
                x = denoised + (x - uncond) / sigma * sigma_down
            else:
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
            if cfg_pp:
                x = x + (denoised - uncond)
            # exp(-h) rather than sigma_down/sigma: the two differ in the last bits.
            x = h.neg().exp() * x + h * (b1 * uncond + b2 * old_denoised)
        # Noise is drawn only where the step adds some, as in ComfyUI 0.33 (commit 88fec4b6). v0.18.1
        # drew it for every step to a nonzero sigma and multiplied it by sigma_up: with eta 0 no draw
        # is ever used; with eta > 0 sigma_up is 0 only on a repeated sigma, after which the next
        # multistep step's coefficients are infinite anyway (both versions write the same broken
        # image; tests/data/comfy/v0.33/samplers/README.md), so no version setting is needed.
        if sigma_up > 0:
            assert noise_sampler is not None
            x = x + noise_sampler(sigma, sigma_next) * s_noise * sigma_up
        old_denoised = uncond
        old_sigma_down = sigma_down
    return x


@register_sampler("dpmpp_2m")
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


@register_sampler("dpmpp_2m_sde")
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
    ms = resolve_model_sampling(model, model_sampling)
    if noise_sampler is None:
        # The tree spans the schedule as given, before the first sigma is offset below.
        noise_sampler = BrownianTreeNoiseSampler.for_schedule(x, sigmas, seed)
    sigmas = offset_first_sigma(sigmas, ms)  # the half-logSNR is infinite at sigma 1
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
            lambda_s, lambda_t = half_log_snr(sigma), half_log_snr(sigma_next)
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


@register_sampler("heun")
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


@register_sampler("lcm")
def sample_lcm(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
    noise_sampler: NoiseSampler | None = None,
    cpu_seed_offset: int = COMFY_CPU_SEED_OFFSET,
    s_noise: float = 1.0,
    s_noise_end: float | None = None,
    noise_clip_std: float = 0.0,
) -> Tensor:
    """Latent Consistency Model sampling (Luo et al. 2023, arXiv:2310.04378)."""
    # ComfyUI 0.33's options (its SamplerLCM node): the re-noising noise is scaled by a factor going
    # linearly from s_noise at the first step to s_noise_end (default s_noise) at the last, after
    # clamping it to +-noise_clip_std standard deviations (0: no clamp). The defaults are the plain
    # LCM step of every ComfyUI version.
    ms = resolve_model_sampling(model, model_sampling)
    if noise_sampler is None:
        noise_sampler = default_noise_sampler(x, seed, cpu_seed_offset)
    s_in = x.new_ones([x.shape[0]])
    total = len(sigmas) - 1
    s_start = float(s_noise)
    s_end = s_start if s_noise_end is None else float(s_noise_end)
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in)
        if callback is not None:
            callback(StepInfo(i, total, float(sigma), x, denoised))
        x = denoised
        if sigma_next > 0:
            noise = noise_sampler(sigma, sigma_next)
            if noise_clip_std > 0:
                bound = noise_clip_std * noise.std()
                noise = noise.clamp(min=-bound, max=bound)
            scale = s_start + (s_end - s_start) * (i / (total - 1) if total > 1 else 0.0)
            if scale != 1.0:
                noise = noise * scale
            x = ms.noise_scaling(sigma_next, noise, x)
    return x


register_sampler("ddim")(sample_euler)
