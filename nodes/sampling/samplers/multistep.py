"""Multistep samplers: linear multistep (lms), iPNDM, DEIS, DPM-Solver++(2M) CFG++, the res_multistep
variants and gradient estimation, with ComfyUI's flow-model (CONST) semantics.

A multistep method reuses the derivatives (or x0 predictions) of earlier steps instead of evaluating
the model again inside a step: one model call per step, higher order from the history. The first
steps, with too little history, fall back to lower orders.
"""
from __future__ import annotations

from collections import deque

import numpy as np
import torch
from scipy import integrate
from torch import Tensor

from ..schedules import FlowModelSampling
from . import register_sampler
from .base import (
    COMFY_CPU_SEED_OFFSET,
    DenoiseFn,
    NoiseSampler,
    StepCallback,
    StepInfo,
    denoise_with_uncond,
)
from .classic import sample_res_multistep


def _check_order(name: str, order: int, highest: int) -> None:
    if not 1 <= order <= highest:
        raise ValueError(f"{name} must be between 1 and {highest}, got {order}")


# ---------------------------------------------------------------------------------------------
# Linear multistep (Adams-Bashforth in sigma).


def _lms_coefficient(order: int, nodes: np.ndarray, i: int, j: int) -> float:
    """Weight of the derivative at ``nodes[i - j]``: the integral over [nodes[i], nodes[i + 1]] of its
    Lagrange basis polynomial through nodes[i], ..., nodes[i - order + 1].

    ``nodes`` is the float32 schedule as a NumPy array: with NumPy 2 the integrand is then evaluated in
    float32 (a Python float minus a NumPy float32 stays float32), as in ComfyUI, which the quadrature's
    result (and so the samples' last bits) depends on.
    """

    def basis(tau: float) -> float:
        value = 1.0
        for k in range(order):
            if k != j:
                value *= (tau - nodes[i - k]) / (nodes[i - j] - nodes[i - k])
        return value

    return integrate.quad(basis, nodes[i], nodes[i + 1], epsrel=1e-4)[0]


@register_sampler("lms")
def sample_lms(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
    order: int = 4,
) -> Tensor:
    """Linear multistep method (k-diffusion ``sample_lms``), coefficients by numerical integration."""
    if order < 1:
        raise ValueError(f"lms order must be at least 1, got {order}")
    nodes = sigmas.detach().cpu().numpy()
    s_in = x.new_ones([x.shape[0]])
    total = len(sigmas) - 1
    derivatives: deque[Tensor] = deque(maxlen=order)
    for i in range(total):
        sigma = sigmas[i]
        denoised = model(x, sigma * s_in)
        derivatives.append((x - denoised) / sigma)
        if callback is not None:
            callback(StepInfo(i, total, float(sigma), x, denoised))
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        cur_order = min(i + 1, order)
        coeffs = [_lms_coefficient(cur_order, nodes, i, j) for j in range(cur_order)]
        # Python's sum (from int 0) is the order ComfyUI adds the terms in; newest derivative first.
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(derivatives)))
    return x


# ---------------------------------------------------------------------------------------------
# iPNDM and DEIS (Zhang & Chen; zju-pi diff-solvers). ComfyUI's versions report the *initial* x to the
# step callback at every step (the state they advance is a separate variable); graphrun's StepInfo
# does the same so that step records match ComfyUI's.


@register_sampler("ipndm")
def sample_ipndm(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
    max_order: int = 4,
) -> Tensor:
    """Improved pseudo numerical methods (iPNDM, Zhang & Chen 2022, arXiv:2204.13902), fixed weights."""
    _check_order("ipndm max_order", max_order, 4)
    s_in = x.new_ones([x.shape[0]])
    total = len(sigmas) - 1
    history: deque[Tensor] = deque(maxlen=max_order - 1)
    x_cur = x
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x_cur, sigma * s_in)
        if callback is not None:
            callback(StepInfo(i, total, float(sigma), x, denoised))
        d = (x_cur - denoised) / sigma
        order = min(max_order, i + 1)
        dt = sigma_next - sigma
        if sigma_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x_cur + dt * d
        elif order == 2:
            x_next = x_cur + dt * (3 * d - history[-1]) / 2
        elif order == 3:
            x_next = x_cur + dt * (23 * d - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            x_next = x_cur + dt * (55 * d - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        history.append(d)
        x_cur = x_next
    return x_cur


@register_sampler("ipndm_v")
def sample_ipndm_v(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
    max_order: int = 4,
) -> Tensor:
    """iPNDM with weights for variable step sizes (Zhang & Chen 2022, arXiv:2204.13902)."""
    _check_order("ipndm_v max_order", max_order, 4)
    s_in = x.new_ones([x.shape[0]])
    total = len(sigmas) - 1
    history: deque[Tensor] = deque(maxlen=max_order - 1)
    x_cur = x
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x_cur, sigma * s_in)
        if callback is not None:
            callback(StepInfo(i, total, float(sigma), x, denoised))
        d = (x_cur - denoised) / sigma
        order = min(max_order, i + 1)
        if sigma_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x_cur + (sigma_next - sigma) * d
        else:
            # h0 is this step, h1..h3 the earlier steps (newest first).
            h0 = sigma_next - sigma
            h1 = sigma - sigmas[i - 1]
            if order == 2:
                w0 = (2 + (h0 / h1)) / 2
                w1 = -(h0 / h1) / 2
                x_next = x_cur + h0 * (w0 * d + w1 * history[-1])
            elif order == 3:
                h2 = sigmas[i - 1] - sigmas[i - 2]
                u = (1 - h0 / (3 * (h0 + h1)) * (h0 * (h0 + h1)) / (h1 * (h1 + h2))) / 2
                w0 = (2 + (h0 / h1)) / 2 + u
                w1 = -(h0 / h1) / 2 - (1 + h1 / h2) * u
                w2 = u * h1 / h2
                x_next = x_cur + h0 * (w0 * d + w1 * history[-1] + w2 * history[-2])
            else:
                h2 = sigmas[i - 1] - sigmas[i - 2]
                h3 = sigmas[i - 2] - sigmas[i - 3]
                u = (1 - h0 / (3 * (h0 + h1)) * (h0 * (h0 + h1)) / (h1 * (h1 + h2))) / 2
                v = (
                    ((1 - h0 / (3 * (h0 + h1))) / 2 + (1 - h0 / (2 * (h0 + h1))) * h0 / (6 * (h0 + h1 + h2)))
                    * (h0 * (h0 + h1) * (h0 + h1 + h2))
                    / (h1 * (h1 + h2) * (h1 + h2 + h3))
                )
                ratio = h1 * (h1 + h2) / (h2 * (h2 + h3))
                w0 = (2 + (h0 / h1)) / 2 + u + v
                w1 = -(h0 / h1) / 2 - (1 + h1 / h2) * u - (1 + (h1 / h2) + ratio) * v
                w2 = u * h1 / h2 + ((h1 / h2) + ratio * (1 + h2 / h3)) * v
                w3 = -v * ratio * h1 / h2
                x_next = x_cur + h0 * (w0 * d + w1 * history[-1] + w2 * history[-2] + w3 * history[-3])
        history.append(d)
        x_cur = x_next
    return x_cur


_DEIS_EPS_S = 1e-3
_DEIS_SIGMA_MIN = 0.002
_DEIS_SIGMA_MAX = 80
_DEIS_POINTS = 10000
"""DEIS maps sigmas to the time of the EDM-fitted VP schedule (eps_s 1e-3, sigma in [0.002, 80]) and
integrates its weights with a 10000-point Riemann sum, as ComfyUI's table mode ('tab') does."""


def _vp_log_terms() -> tuple[Tensor, Tensor]:
    """log(1 + sigma_min^2) and log(1 + sigma_max^2), computed as ComfyUI computes them (with NumPy's
    log): the first in float32, the second in float64 (its sigma_max is the integer 80). The float64
    one makes the VP betas float64 0-dim tensors, which changes the rounding of what follows."""
    log_min = np.log((torch.tensor(_DEIS_SIGMA_MIN) ** 2 + 1).numpy())
    log_max = np.log(np.asarray(_DEIS_SIGMA_MAX**2 + 1))
    return torch.from_numpy(np.asarray(log_min)), torch.from_numpy(np.asarray(log_max))


def deis_coefficients(sigmas: Tensor, max_order: int) -> list[list[Tensor]]:
    """DEIS ('tab') weights per step: ``[]`` for an Euler step, else one weight per derivative, the
    current step's first. Weight j is the integral over the step's VP time interval of
    ``-0.5 dlog(alpha)/dt / sqrt(alpha (1 - alpha))`` times the Lagrange basis polynomial of node j."""
    # Autograd gives dlog(alpha)/dt (the reference differentiates the same graph, and the bits follow
    # that graph); it needs grad mode even when sampling runs under inference or no-grad mode.
    with torch.inference_mode(False), torch.enable_grad():
        sigmas = sigmas.detach().cpu().clone()
        log_min, log_max = _vp_log_terms()
        beta_d = 2 * (log_min / _DEIS_EPS_S - log_max) / (_DEIS_EPS_S - 1)
        beta_min = log_max - 0.5 * beta_d
        times = ((beta_min**2 + 2 * beta_d * (sigmas**2 + 1).log()).sqrt() - beta_min) / beta_d
        beta_0, beta_1 = beta_min, beta_d + beta_min
        table: list[list[Tensor]] = []
        for i in range(len(times) - 1):
            t_cur, t_next = times[i], times[i + 1]
            order = min(i + 1, max_order)
            if order == 1:
                table.append([])
                continue
            taus = torch.linspace(t_cur, t_next, _DEIS_POINTS).requires_grad_(True)
            dtau = (t_next - t_cur) / _DEIS_POINTS
            nodes = times[[i - k for k in range(order)]]
            alpha = torch.exp(-0.5 * taus**2 * (beta_1 - beta_0) - taus * beta_0)
            (dlog_alpha,) = torch.autograd.grad(alpha.log().sum(), taus)
            alpha, taus = alpha.detach(), taus.detach()
            integrand = -0.5 * dlog_alpha / torch.sqrt(alpha * (1 - alpha))
            weights = []
            for j in range(order):
                basis: Tensor | int = 1
                for k in range(order):
                    if k != j:
                        basis = basis * ((taus - nodes[k]) / (nodes[j] - nodes[k]))
                weights.append(torch.sum(integrand * basis) * dtau)
            table.append(weights)
    return table


@register_sampler("deis")
def sample_deis(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
    max_order: int = 3,
) -> Tensor:
    """Diffusion exponential integrator sampler (DEIS, Zhang & Chen 2022, arXiv:2204.13902)."""
    _check_order("deis max_order", max_order, 4)
    table = deis_coefficients(sigmas, max_order)
    s_in = x.new_ones([x.shape[0]])
    total = len(sigmas) - 1
    history: deque[Tensor] = deque(maxlen=max_order - 1)
    x_cur = x
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x_cur, sigma * s_in)
        if callback is not None:
            callback(StepInfo(i, total, float(sigma), x, denoised))
        d = (x_cur - denoised) / sigma
        order = 1 if sigma_next <= 0 else min(max_order, i + 1)
        if order == 1:
            x_next = x_cur + (sigma_next - sigma) * d
        else:
            weights = table[i]
            x_next = x_cur + weights[0] * d
            for k in range(1, order):
                x_next = x_next + weights[k] * history[-k]
        history.append(d)
        x_cur = x_next
    return x_cur


# ---------------------------------------------------------------------------------------------
# CFG++ (Chung et al. 2024, arXiv:2406.08070): the step re-noises with the unconditional prediction
# rather than the guided one, which lets low cfg values guide as strongly as high ones do.


@register_sampler("dpmpp_2m_cfg_pp")
def sample_dpmpp_2m_cfg_pp(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
) -> Tensor:
    """DPM-Solver++(2M) with CFG++ (Lu et al. 2022, arXiv:2211.01095; Chung et al. 2024)."""
    s_in = x.new_ones([x.shape[0]])
    total = len(sigmas) - 1
    old_uncond: Tensor | None = None
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised, uncond = denoise_with_uncond(model, x, sigma * s_in)
        if callback is not None:
            callback(StepInfo(i, total, float(sigma), x, denoised))
        t, t_next = sigma.log().neg(), sigma_next.log().neg()
        h = t_next - t
        # At sigma_next 0, h is infinite and exp(-h) 0: the step lands on the guided prediction.
        if old_uncond is None or sigma_next == 0:
            correction = -torch.exp(-h) * uncond
        else:
            r = (t - sigmas[i - 1].log().neg()) / h
            correction = -torch.exp(-h) * uncond - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond)
        x = denoised + correction + torch.exp(-h) * x
        old_uncond = uncond
    return x


@register_sampler("res_multistep_cfg_pp")
def sample_res_multistep_cfg_pp(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    cpu_seed_offset: int = COMFY_CPU_SEED_OFFSET,
) -> Tensor:
    """Second-order multistep RES solver with CFG++ (Zhang et al. 2023, arXiv:2308.02157)."""
    return sample_res_multistep(
        model, x, sigmas, seed=seed, callback=callback, model_sampling=model_sampling, eta=0.0,
        s_noise=s_noise, noise_sampler=noise_sampler, cpu_seed_offset=cpu_seed_offset, cfg_pp=True,
    )


@register_sampler("res_multistep_ancestral")
def sample_res_multistep_ancestral(
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
    """Ancestral second-order multistep RES solver (Zhang et al. 2023, arXiv:2308.02157)."""
    return sample_res_multistep(
        model, x, sigmas, seed=seed, callback=callback, model_sampling=model_sampling, eta=eta,
        s_noise=s_noise, noise_sampler=noise_sampler, cpu_seed_offset=cpu_seed_offset,
    )


@register_sampler("res_multistep_ancestral_cfg_pp")
def sample_res_multistep_ancestral_cfg_pp(
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
    """Ancestral second-order multistep RES solver with CFG++ (Zhang et al. 2023, arXiv:2308.02157)."""
    return sample_res_multistep(
        model, x, sigmas, seed=seed, callback=callback, model_sampling=model_sampling, eta=eta,
        s_noise=s_noise, noise_sampler=noise_sampler, cpu_seed_offset=cpu_seed_offset, cfg_pp=True,
    )


# ---------------------------------------------------------------------------------------------
# Gradient estimation.


def _gradient_estimation(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    callback: StepCallback | None,
    ge_gamma: float,
    cfg_pp: bool,
) -> Tensor:
    s_in = x.new_ones([x.shape[0]])
    total = len(sigmas) - 1
    old_d: Tensor | None = None
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if cfg_pp:
            denoised, uncond = denoise_with_uncond(model, x, sigma * s_in)
            d = (x - uncond) / sigma
        else:
            denoised = model(x, sigma * s_in)
            d = (x - denoised) / sigma
        if callback is not None:
            callback(StepInfo(i, total, float(sigma), x, denoised))
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = denoised
        else:
            x = denoised + d * sigma_next if cfg_pp else x + d * dt
            if old_d is not None:
                # Extrapolates the change of the derivative over the step (gamma 2: one full step).
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


@register_sampler("gradient_estimation")
def sample_gradient_estimation(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
    ge_gamma: float = 2.0,
) -> Tensor:
    """Gradient-estimation sampler (Permenter & Yuan 2024, arXiv:2306.04848)."""
    return _gradient_estimation(model, x, sigmas, callback, ge_gamma, cfg_pp=False)


@register_sampler("gradient_estimation_cfg_pp")
def sample_gradient_estimation_cfg_pp(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
    ge_gamma: float = 2.0,
) -> Tensor:
    """Gradient-estimation sampler with CFG++ (Permenter & Yuan 2024, arXiv:2306.04848)."""
    return _gradient_estimation(model, x, sigmas, callback, ge_gamma, cfg_pp=True)
