"""The stochastic DPM-Solver++ samplers: dpmpp_sde, dpmpp_3m_sde, the heun variant of dpmpp_2m_sde and
the ``*_gpu`` names, all with Brownian-tree noise and ComfyUI's flow-model (CONST) semantics.

They work in half-logSNR ``lambda = log(alpha / sigma)``; for a flow model alpha = 1 - sigma, so
lambda = -logit(sigma), which is infinite at sigma 1: a schedule starting at 1 is started a hair
below, at ``percent_to_sigma(1e-4)``, after the Brownian tree has been built over the schedule as
given. ComfyUI's ``*_gpu`` names build their tree on x's device; graphrun builds it on the CPU for all
names, which gives the same noise as ComfyUI on a CPU run.
"""
from __future__ import annotations

from torch import Tensor

from ..schedules import FlowModelSampling
from . import register_sampler
from .base import (
    BrownianTreeNoiseSampler,
    DenoiseFn,
    NoiseSampler,
    StepCallback,
    StepInfo,
    ancestral_step,
    half_log_snr,
    offset_first_sigma,
    resolve_model_sampling,
    sigma_of_half_log_snr,
)
from .classic import sample_dpmpp_2m_sde

@register_sampler("dpmpp_sde")
def sample_dpmpp_sde(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 1 / 2,
    noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """DPM-Solver++ (stochastic, second order single-step; Lu et al. 2022, arXiv:2211.01095)."""
    # Two model calls per step: at sigma and at the intermediate sigma_s_1 (fraction r of the step in
    # lambda); each substep adds ancestral noise in the VE parametrisation of exp(-lambda).
    if len(sigmas) <= 1:
        return x
    ms = resolve_model_sampling(model, model_sampling)
    if noise_sampler is None:
        noise_sampler = BrownianTreeNoiseSampler.for_schedule(x, sigmas, seed)
    sigmas = offset_first_sigma(sigmas, ms)
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
        lambda_s, lambda_t = half_log_snr(sigma), half_log_snr(sigma_next)
        h = lambda_t - lambda_s
        lambda_s_1 = lambda_s + r * h
        fac = 1 / (2 * r)
        sigma_s_1 = sigma_of_half_log_snr(lambda_s_1)
        alpha_s = sigma * lambda_s.exp()
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_t = sigma_next * lambda_t.exp()

        # Substep to lambda_s_1.
        sd, su = ancestral_step(lambda_s.neg().exp(), lambda_s_1.neg().exp(), eta)
        h_ = sd.log().neg() - lambda_s
        x_2 = (alpha_s_1 / alpha_s) * (-h_).exp() * x - alpha_s_1 * (-h_).expm1() * denoised
        if eta > 0 and s_noise > 0:
            x_2 = x_2 + alpha_s_1 * noise_sampler(sigma, sigma_s_1) * s_noise * su
        denoised_2 = model(x_2, sigma_s_1 * s_in)

        # Full step to lambda_t with the combined prediction.
        sd, su = ancestral_step(lambda_s.neg().exp(), lambda_t.neg().exp(), eta)
        h_ = sd.log().neg() - lambda_s
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (alpha_t / alpha_s) * (-h_).exp() * x - alpha_t * (-h_).expm1() * denoised_d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise_sampler(sigma, sigma_next) * s_noise * su
    return x


@register_sampler("dpmpp_sde_gpu")
def sample_dpmpp_sde_gpu(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 1 / 2,
    noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """DPM-Solver++ (stochastic); ComfyUI's device-tree name, here the same as dpmpp_sde."""
    return sample_dpmpp_sde(
        model, x, sigmas, seed=seed, callback=callback, model_sampling=model_sampling, eta=eta,
        s_noise=s_noise, r=r, noise_sampler=noise_sampler,
    )


@register_sampler("dpmpp_2m_sde_gpu")
def sample_dpmpp_2m_sde_gpu(
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
    """DPM-Solver++(2M) SDE; ComfyUI's device-tree name, here the same as dpmpp_2m_sde."""
    return sample_dpmpp_2m_sde(
        model, x, sigmas, seed=seed, callback=callback, model_sampling=model_sampling, eta=eta,
        s_noise=s_noise, solver_type=solver_type, noise_sampler=noise_sampler,
    )


@register_sampler("dpmpp_2m_sde_heun")
def sample_dpmpp_2m_sde_heun(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "heun",
    noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """DPM-Solver++(2M) SDE with the Heun-type second-order correction (arXiv:2211.01095)."""
    return sample_dpmpp_2m_sde(
        model, x, sigmas, seed=seed, callback=callback, model_sampling=model_sampling, eta=eta,
        s_noise=s_noise, solver_type=solver_type, noise_sampler=noise_sampler,
    )


@register_sampler("dpmpp_2m_sde_heun_gpu")
def sample_dpmpp_2m_sde_heun_gpu(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "heun",
    noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """DPM-Solver++(2M) SDE, Heun type; ComfyUI's device-tree name, here the same as dpmpp_2m_sde_heun."""
    return sample_dpmpp_2m_sde(
        model, x, sigmas, seed=seed, callback=callback, model_sampling=model_sampling, eta=eta,
        s_noise=s_noise, solver_type=solver_type, noise_sampler=noise_sampler,
    )


@register_sampler("dpmpp_3m_sde")
def sample_dpmpp_3m_sde(
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
) -> Tensor:
    """DPM-Solver++(3M) SDE with Brownian-tree noise (Lu et al. 2022, arXiv:2211.01095)."""
    # First order on the first step, second order on the second, third order from then on.
    if len(sigmas) <= 1:
        return x
    ms = resolve_model_sampling(model, model_sampling)
    if noise_sampler is None:
        noise_sampler = BrownianTreeNoiseSampler.for_schedule(x, sigmas, seed)
    sigmas = offset_first_sigma(sigmas, ms)
    s_in = x.new_ones([x.shape[0]])
    total = len(sigmas) - 1
    denoised_1: Tensor | None = None
    denoised_2: Tensor | None = None
    h: Tensor | None = None
    h_1: Tensor | None = None
    h_2: Tensor | None = None
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
            x = sigma_next / sigma * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                assert h_1 is not None and denoised_1 is not None and denoised_2 is not None
                r0 = h_1 / h
                r1 = h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
            elif h_1 is not None:
                assert denoised_1 is not None
                r = h_1 / h
                d = (denoised - denoised_1) / r
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + (alpha_t * phi_2) * d
            if eta > 0 and s_noise > 0:
                noise = noise_sampler(sigma, sigma_next)
                x = x + noise * sigma_next * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        # On a final (sigma_next 0) step h keeps the previous step's value, as in ComfyUI.
        h_1, h_2 = h, h_1
    return x


@register_sampler("dpmpp_3m_sde_gpu")
def sample_dpmpp_3m_sde_gpu(
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
) -> Tensor:
    """DPM-Solver++(3M) SDE; ComfyUI's device-tree name, here the same as dpmpp_3m_sde."""
    return sample_dpmpp_3m_sde(
        model, x, sigmas, seed=seed, callback=callback, model_sampling=model_sampling, eta=eta,
        s_noise=s_noise, noise_sampler=noise_sampler,
    )
