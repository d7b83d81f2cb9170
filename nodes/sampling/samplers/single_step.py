"""Single-step samplers: the CFG++ Euler samplers, Heun++ (heunpp2), DPM-Solver-2 (dpm_2 and its
ancestral form), DPM-Solver++(2S) ancestral (plain and CFG++) and DDPM, with ComfyUI's semantics.

Where ComfyUI switches to a rectified-flow formula for flow (CONST) models (dpm_2_ancestral,
dpmpp_2s_ancestral) graphrun implements that flow variant; the samplers that ComfyUI runs with the
same formula for every model (dpm_2, dpmpp_2s_ancestral_cfg_pp, ddpm) keep it for flow models too.
The CFG++ samplers (Chung et al. 2024, arXiv:2406.08070) step with the unconditional prediction and
need the guider to evaluate the negative even at cfg 1 (``denoise_with_uncond``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..schedules import FlowModelSampling
from . import register_sampler
from .base import (
    COMFY_CPU_SEED_OFFSET,
    DenoiseFn,
    NoiseSampler,
    StepCallback,
    StepInfo,
    ancestral_step,
    default_noise_sampler,
    denoise_with_uncond,
    flow_ancestral_step,
    half_log_snr,
)


@register_sampler("euler_cfg_pp")
def sample_euler_cfg_pp(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
    cpu_seed_offset: int = COMFY_CPU_SEED_OFFSET,
) -> Tensor:
    """Euler method with CFG++ (Chung et al. 2024, arXiv:2406.08070)."""
    # ComfyUI runs euler_ancestral_cfg_pp with eta 0 and s_noise 0: its noise source is created
    # (so an overflowing seed fails the same way) but never drawn from.
    return sample_euler_ancestral_cfg_pp(
        model, x, sigmas, seed=seed, callback=callback, model_sampling=model_sampling, eta=0.0,
        s_noise=0.0, cpu_seed_offset=cpu_seed_offset,
    )


@register_sampler("euler_ancestral_cfg_pp")
def sample_euler_ancestral_cfg_pp(
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
    """Ancestral Euler (DDIM-style) steps with CFG++ (Chung et al. 2024, arXiv:2406.08070)."""
    # The step re-noises the guided x0 with the unconditional noise estimate, in the scaled space
    # x / alpha (alpha = sigma * exp(lambda), 1 - sigma for a flow model).
    if noise_sampler is None:
        noise_sampler = default_noise_sampler(x, seed, cpu_seed_offset)
    s_in = x.new_ones([x.shape[0]])
    total = len(sigmas) - 1
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised, uncond_denoised = denoise_with_uncond(model, x, sigma * s_in)
        if callback is not None:
            callback(StepInfo(i, total, float(sigma), x, denoised))
        if sigma_next == 0:
            x = denoised
            continue
        alpha_s = sigma * half_log_snr(sigma).exp()
        alpha_t = sigma_next * half_log_snr(sigma_next).exp()
        d = (x - alpha_s * uncond_denoised) / sigma
        sigma_down, sigma_up = ancestral_step(sigma / alpha_s, sigma_next / alpha_t, eta)
        sigma_down = alpha_t * sigma_down
        x = alpha_t * denoised + sigma_down * d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise_sampler(sigma, sigma_next) * s_noise * sigma_up
    return x


@register_sampler("heunpp2")
def sample_heunpp2(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
) -> Tensor:
    """Heun++: Heun's method with a third evaluation and sigma-weighted slopes."""
    # Up to three model calls per step (the next two sigmas); the weights are sigma / (k * sigmas[0]).
    # ComfyUI draws (and discards) one randn_like(x) from the global generator per step for its
    # unused churn option; graphrun draws nothing, which changes no result.
    s_in = x.new_ones([x.shape[0]])
    total = len(sigmas) - 1
    s_end = sigmas[-1]
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in)
        d = (x - denoised) / sigma
        if callback is not None:
            callback(StepInfo(i, total, float(sigma), x, denoised))
        dt = sigma_next - sigma
        if sigma_next == s_end:
            x = x + d * dt
        elif sigmas[i + 2] == s_end:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigma_next * s_in)
            d_2 = (x_2 - denoised_2) / sigma_next
            w = 2 * sigmas[0]
            w2 = sigma_next / w
            w1 = 1 - w2
            x = x + (d * w1 + d_2 * w2) * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigma_next * s_in)
            d_2 = (x_2 - denoised_2) / sigma_next
            sigma_after = sigmas[i + 2]
            x_3 = x_2 + d_2 * (sigma_after - sigma_next)
            denoised_3 = model(x_3, sigma_after * s_in)
            d_3 = (x_3 - denoised_3) / sigma_after
            w = 3 * sigmas[0]
            w2 = sigma_next / w
            w3 = sigma_after / w
            w1 = 1 - w2 - w3
            x = x + (w1 * d + w2 * d_2 + w3 * d_3) * dt
    return x


@register_sampler("dpm_2", discard_penultimate_sigma=True)
def sample_dpm_2(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
) -> Tensor:
    """DPM-Solver-2 steps (Lu et al. 2022, arXiv:2206.00927) in Karras et al.'s Algorithm 2 form."""
    # The midpoint sigma is the geometric mean of sigma and sigma_next; the last step is Euler.
    s_in = x.new_ones([x.shape[0]])
    total = len(sigmas) - 1
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in)
        d = (x - denoised) / sigma
        if callback is not None:
            callback(StepInfo(i, total, float(sigma), x, denoised))
        if sigma_next == 0:
            x = x + d * (sigma_next - sigma)
        else:
            sigma_mid = sigma.log().lerp(sigma_next.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma)
            denoised_2 = model(x_2, sigma_mid * s_in)
            d_2 = (x_2 - denoised_2) / sigma_mid
            x = x + d_2 * (sigma_next - sigma)
    return x


@register_sampler("dpm_2_ancestral", discard_penultimate_sigma=True)
def sample_dpm_2_ancestral(
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
    """Ancestral DPM-Solver-2 for rectified flow (ComfyUI ``sample_dpm_2_ancestral_RF``)."""
    # Flow (CONST) models only; EPS models would take the VE ancestral step (_ancestral_step) here.
    if noise_sampler is None:
        noise_sampler = default_noise_sampler(x, seed, cpu_seed_offset)
    s_in = x.new_ones([x.shape[0]])
    total = len(sigmas) - 1
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in)
        sigma_down, alpha_next, alpha_down, renoise_coeff = flow_ancestral_step(sigma, sigma_next, eta)
        if callback is not None:
            callback(StepInfo(i, total, float(sigma), x, denoised))
        d = (x - denoised) / sigma
        if sigma_down == 0:
            x = x + d * (sigma_down - sigma)
        else:
            sigma_mid = sigma.log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma)
            denoised_2 = model(x_2, sigma_mid * s_in)
            d_2 = (x_2 - denoised_2) / sigma_mid
            x = x + d_2 * (sigma_down - sigma)
            # ComfyUI draws here even at eta 0 (renoise_coeff is then 0).
            x = (alpha_next / alpha_down) * x + noise_sampler(sigma, sigma_next) * s_noise * renoise_coeff
    return x


@register_sampler("dpmpp_2s_ancestral")
def sample_dpmpp_2s_ancestral(
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
    """Ancestral DPM-Solver++(2S) for rectified flow (ComfyUI ``sample_dpmpp_2s_ancestral_RF``)."""
    # Flow (CONST) models only; EPS models would take the VE form (log-sigma time, _ancestral_step) here.
    # The intermediate sigma is the lambda midpoint towards sigma_down, 0.9999 when sigma is 1.
    if noise_sampler is None:
        noise_sampler = default_noise_sampler(x, seed, cpu_seed_offset)
    s_in = x.new_ones([x.shape[0]])
    total = len(sigmas) - 1
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in)
        sigma_down, alpha_next, alpha_down, renoise_coeff = flow_ancestral_step(sigma, sigma_next, eta)
        if callback is not None:
            callback(StepInfo(i, total, float(sigma), x, denoised))
        if sigma_next == 0:
            d = (x - denoised) / sigma
            x = x + d * (sigma_down - sigma)
        else:
            sigma_s: Tensor | float
            if sigma == 1.0:
                sigma_s = 0.9999
            else:
                # lambda = log((1 - sigma) / sigma) written out (not logit), as ComfyUI does here.
                lambda_i, lambda_down = ((1 - sigma) / sigma).log(), ((1 - sigma_down) / sigma_down).log()
                lambda_s = lambda_i + 0.5 * (lambda_down - lambda_i)
                sigma_s = (lambda_s.exp() + 1) ** -1
            sigma_s_ratio = sigma_s / sigma
            u = sigma_s_ratio * x + (1 - sigma_s_ratio) * denoised
            denoised_s = model(u, sigma_s * s_in)
            sigma_down_ratio = sigma_down / sigma
            x = sigma_down_ratio * x + (1 - sigma_down_ratio) * denoised_s
        if sigma_next > 0 and eta > 0:
            x = (alpha_next / alpha_down) * x + noise_sampler(sigma, sigma_next) * s_noise * renoise_coeff
    return x


@register_sampler("dpmpp_2s_ancestral_cfg_pp")
def sample_dpmpp_2s_ancestral_cfg_pp(
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
    """Ancestral DPM-Solver++(2S) with CFG++ (arXiv:2211.01095, arXiv:2406.08070)."""
    # ComfyUI uses the VE formulas (t = -log sigma, VE ancestral step) for every model here.
    if noise_sampler is None:
        noise_sampler = default_noise_sampler(x, seed, cpu_seed_offset)
    s_in = x.new_ones([x.shape[0]])
    total = len(sigmas) - 1
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised, uncond_denoised = denoise_with_uncond(model, x, sigma * s_in)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if callback is not None:
            callback(StepInfo(i, total, float(sigma), x, denoised))
        if sigma_down == 0:
            d = (x - uncond_denoised) / sigma
            x = denoised + d * sigma_down
        else:
            t, t_next = sigma.log().neg(), sigma_down.log().neg()
            r = 1 / 2
            h = t_next - t
            s = t + r * h
            x_cfg_pp = x + (denoised - uncond_denoised)
            x_2 = (s.neg().exp() / t.neg().exp()) * x_cfg_pp - (-h * r).expm1() * denoised
            # The final update uses this midpoint call's uncond, as ComfyUI (it reads its hook's latest).
            denoised_2, uncond_denoised = denoise_with_uncond(model, x_2, s.neg().exp() * s_in)
            x_cfg_pp = x + (denoised - uncond_denoised)
            x = (t_next.neg().exp() / t.neg().exp()) * x_cfg_pp - (-h).expm1() * denoised_2
        if sigma_next > 0:
            x = x + noise_sampler(sigma, sigma_next) * s_noise * sigma_up
    return x


@register_sampler("ddpm")
def sample_ddpm(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
    noise_sampler: NoiseSampler | None = None,
    cpu_seed_offset: int = COMFY_CPU_SEED_OFFSET,
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, arXiv:2006.11239) on the VE sigma schedule."""
    # ComfyUI applies the VP step (alpha_cumprod = 1 / (1 + sigma^2)) in the scaled space
    # x / sqrt(1 + sigma^2) for every model, flow models included.
    if noise_sampler is None:
        noise_sampler = default_noise_sampler(x, seed, cpu_seed_offset)
    s_in = x.new_ones([x.shape[0]])
    total = len(sigmas) - 1
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in)
        if callback is not None:
            callback(StepInfo(i, total, float(sigma), x, denoised))
        eps = (x - denoised) / sigma
        x = _ddpm_step(x / torch.sqrt(1.0 + sigma**2.0), sigma, sigma_next, eps, noise_sampler)
        if sigma_next != 0:
            x = x * torch.sqrt(1.0 + sigma_next**2.0)
    return x


def _ddpm_step(
    x: Tensor, sigma: Tensor, sigma_prev: Tensor, eps: Tensor, noise_sampler: NoiseSampler
) -> Tensor:
    # One DDPM posterior step from alpha_cumprod(sigma) to alpha_cumprod(sigma_prev), VP-scaled x.
    alpha_cumprod = 1 / ((sigma * sigma) + 1)
    alpha_cumprod_prev = 1 / ((sigma_prev * sigma_prev) + 1)
    alpha = alpha_cumprod / alpha_cumprod_prev
    mu = (1.0 / alpha).sqrt() * (x - (1 - alpha) * eps / (1 - alpha_cumprod).sqrt())
    if sigma_prev > 0:
        noise_scale = ((1 - alpha) * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod)).sqrt()
        mu = mu + noise_scale * noise_sampler(sigma, sigma_prev)
    return mu
