"""Exponential-integrator samplers in half-logSNR time: ER-SDE, SEEDS-2/3 (and the exponential Heun
samplers built on SEEDS-2) and the stochastic Adams solver SA-Solver.

All of them step in half-logSNR ``lambda = log(alpha / sigma)``. For a flow (CONST) model
alpha = 1 - sigma, so lambda = -logit(sigma), which is infinite at sigma 1: as in ComfyUI, a schedule
starting at 1 is started a hair below, at ``percent_to_sigma(1e-4)``, and the step records report that
sigma. Noise comes from ``default_noise_sampler`` (seed + 1 on the CPU in ComfyUI v0.18.1).

ER-SDE's noise scale function is a parameter: :class:`ErSdeNoiseScaler` is ComfyUI's SamplerER_SDE
solver types, and :func:`er_sde_options` maps that node's inputs to sampler options under either
version's rule for eta (ComfyUI 0.32 made eta apply to the ER-SDE solver type too).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
    default_noise_sampler,
    half_log_snr,
    offset_first_sigma,
    resolve_model_sampling,
    sigma_of_half_log_snr,
)

__all__ = ["ER_SDE_ETA_MAX_033", "ER_SDE_SOLVER_TYPES", "ErSdeNoiseScaler", "er_sde_options", "sa_solver_tau_interval"]

TauFn = Callable[[Tensor], float]
"""SA-Solver's stochasticity ``tau(sigma_next)``: 0 gives an ODE step, 1 the paper's SDE step."""


# ---------------------------------------------------------------------------------------------
# Half-logSNR helpers. Only flow (CONST) model sampling exists in graphrun; an EPS model would use
# lambda = -log(sigma), sigma = exp(-lambda) and no first-sigma offset.


def _h_phi_1(h: Tensor) -> Tensor:
    # h * phi_1(h) of the exponential integrators.
    return torch.expm1(h)


def _h_phi_2(h: Tensor) -> Tensor:
    # h * phi_2(h).
    return (torch.expm1(h) - h) / h


# ---------------------------------------------------------------------------------------------
# ER-SDE


def _er_sde_noise_scaler(x: Tensor) -> Tensor:
    # The ER-SDE paper's noise scale function x (e^(x^0.3) + 10).
    return x * ((x**0.3).exp() + 10.0)


ER_SDE_SOLVER_TYPES: tuple[str, ...] = ("ER-SDE", "Reverse-time SDE", "ODE")
"""The solver types of ComfyUI's SamplerER_SDE node, in its choice order."""

ER_SDE_ETA_MAX_033 = 10.0
"""SamplerER_SDE's eta maximum since ComfyUI 0.32 (commit 40e46c71, PR #15428); 100 before."""


@dataclass(frozen=True)
class ErSdeNoiseScaler:
    """The noise scale function of one ER-SDE solver type (a value, so a SAMPLER built from it
    compares and hashes by its settings).

    ``ER-SDE``: x (e^(x^0.3) + 10)^eta; ``Reverse-time SDE``: x^(eta + 1); ``ODE``: x. All three are
    ComfyUI 0.33's psi(x) = x^(1 - eta) phi(x)^eta of the solver's phi: eta 1 is the paper's solver, 0
    the ODE. The arithmetic is ComfyUI's (a power of exactly 1 returns its base), so ER-SDE at eta 1
    equals the default scaler bit for bit.
    """

    solver_type: str = "ER-SDE"
    eta: float = 1.0

    def __post_init__(self) -> None:
        if self.solver_type not in ER_SDE_SOLVER_TYPES:
            raise ValueError(
                f"unknown ER-SDE solver_type {self.solver_type!r}; use one of {', '.join(ER_SDE_SOLVER_TYPES)}"
            )

    def __call__(self, x: Tensor) -> Tensor:
        if self.solver_type == "ER-SDE":
            return x * ((x**0.3).exp() + 10.0) ** self.eta
        if self.solver_type == "Reverse-time SDE":
            return x ** (self.eta + 1)
        return x


def er_sde_options(
    solver_type: str, max_stage: int, eta: float, s_noise: float, *, eta_scales_er_sde: bool
) -> dict[str, Any]:
    """The ``er_sde`` sampler options of ComfyUI's SamplerER_SDE node.

    ``eta_scales_er_sde`` picks the ComfyUI version's semantics. True (0.32 on, commit 40e46c71): eta
    scales every solver type's noise (ER-SDE included) and eta 0 turns any of them into the ODE,
    without noise. False (v0.18.1): eta applies to the reverse-time SDE only, ER-SDE always uses the
    paper's function, and the ODE or a reverse-time SDE at eta 0 runs without noise.
    """
    if eta_scales_er_sde:
        if solver_type == "ODE" or eta == 0:
            solver_type, eta, s_noise = "ODE", 0.0, 0.0
    elif solver_type == "ER-SDE":
        eta = 1.0
    elif solver_type == "ODE" or eta == 0:
        solver_type, eta, s_noise = "ODE", 0.0, 0.0
    return {"noise_scaler": ErSdeNoiseScaler(solver_type, float(eta)), "s_noise": float(s_noise),
            "max_stage": int(max_stage)}


@register_sampler("er_sde")
def sample_er_sde(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    noise_scaler: Callable[[Tensor], Tensor] | None = None,
    max_stage: int = 3,
    cpu_seed_offset: int = COMFY_CPU_SEED_OFFSET,
) -> Tensor:
    """Extended reverse-time SDE solver, VP ER-SDE-Solver-3 (Cui et al. 2023, arXiv:2309.06169)."""
    # Works in er_lambda = sigma / alpha; stages 2 and 3 add finite-difference corrections whose
    # integrals are evaluated with a 200-point Riemann sum, as in the paper's code.
    if noise_sampler is None:
        noise_sampler = default_noise_sampler(x, seed, cpu_seed_offset)
    if noise_scaler is None:
        noise_scaler = _er_sde_noise_scaler
    ms = resolve_model_sampling(model, model_sampling)
    num_points = 200.0
    point_index = torch.arange(0, num_points, dtype=torch.float32, device=x.device)
    sigmas = offset_first_sigma(sigmas, ms)
    er_lambdas = half_log_snr(sigmas).neg().exp()
    s_in = x.new_ones([x.shape[0]])
    total = len(sigmas) - 1
    old_denoised: Tensor | None = None
    old_denoised_d: Tensor | None = None
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in)
        if callback is not None:
            callback(StepInfo(i, total, float(sigma), x, denoised))
        stage = min(max_stage, i + 1)
        if sigma_next == 0:
            x = denoised
        else:
            er_lambda_s, er_lambda_t = er_lambdas[i], er_lambdas[i + 1]
            alpha_s = sigma / er_lambda_s
            alpha_t = sigma_next / er_lambda_t
            r_alpha = alpha_t / alpha_s
            r = noise_scaler(er_lambda_t) / noise_scaler(er_lambda_s)
            x = r_alpha * r * x + alpha_t * (1 - r) * denoised
            if stage >= 2:
                assert old_denoised is not None
                dt = er_lambda_t - er_lambda_s
                step = -dt / num_points
                lambda_pos = er_lambda_t + point_index * step
                scaled_pos = noise_scaler(lambda_pos)
                s = torch.sum(1 / scaled_pos) * step
                denoised_d = (denoised - old_denoised) / (er_lambda_s - er_lambdas[i - 1])
                x = x + alpha_t * (dt + s * noise_scaler(er_lambda_t)) * denoised_d
                if stage >= 3:
                    assert old_denoised_d is not None
                    s_u = torch.sum((lambda_pos - er_lambda_s) / scaled_pos) * step
                    denoised_u = (denoised_d - old_denoised_d) / ((er_lambda_s - er_lambdas[i - 2]) / 2)
                    x = x + alpha_t * ((dt**2) / 2 + s_u * noise_scaler(er_lambda_t)) * denoised_u
                old_denoised_d = denoised_d
            if s_noise > 0:
                noise_scale = (er_lambda_t**2 - er_lambda_s**2 * r**2).sqrt().nan_to_num(nan=0.0)
                x = x + alpha_t * noise_sampler(sigma, sigma_next) * s_noise * noise_scale
        old_denoised = denoised
    return x


# ---------------------------------------------------------------------------------------------
# SEEDS


def _seeds_2(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    callback: StepCallback | None,
    ms: FlowModelSampling,
    noise_sampler: NoiseSampler,
    eta: float,
    s_noise: float,
    r: float,
    solver_type: str,
) -> Tensor:
    # One intermediate evaluation at lambda_s + r*h, then the full step (phi_1: midpoint-style blend
    # of the two predictions; phi_2: second-order exponential weights). With eta > 0 the noise of the
    # two sub-steps is correlated: the first draw is carried into the second segment.
    if solver_type not in ("phi_1", "phi_2"):
        raise ValueError(f"solver_type must be 'phi_1' or 'phi_2', got {solver_type!r}")
    inject_noise = eta > 0 and s_noise > 0
    sigmas = offset_first_sigma(sigmas, ms)
    fac = 1 / (2 * r)
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
        h_eta = h * (eta + 1)
        lambda_s_1 = torch.lerp(lambda_s, lambda_t, r)
        sigma_s_1 = sigma_of_half_log_snr(lambda_s_1)
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_t = sigma_next * lambda_t.exp()

        x_2 = sigma_s_1 / sigma * (-r * h * eta).exp() * x - alpha_s_1 * _h_phi_1(-r * h_eta) * denoised
        if inject_noise:
            sde_noise = (-2 * r * h * eta).expm1().neg().sqrt() * noise_sampler(sigma, sigma_s_1)
            x_2 = x_2 + sde_noise * sigma_s_1 * s_noise
        denoised_2 = model(x_2, sigma_s_1 * s_in)

        if solver_type == "phi_1":
            denoised_d = torch.lerp(denoised, denoised_2, fac)
            x = sigma_next / sigma * (-h * eta).exp() * x - alpha_t * _h_phi_1(-h_eta) * denoised_d
        else:
            b2 = _h_phi_2(-h_eta) / r
            b1 = _h_phi_1(-h_eta) - b2
            x = sigma_next / sigma * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b2 * denoised_2)
        if inject_noise:
            segment = (r - 1) * h * eta
            sde_noise = sde_noise * segment.exp()
            sde_noise = sde_noise + segment.mul(2).expm1().neg().sqrt() * noise_sampler(sigma_s_1, sigma_next)
            x = x + sde_noise * sigma_next * s_noise
    return x


@register_sampler("exp_heun_2_x0")
def sample_exp_heun_2_x0(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
    solver_type: str = "phi_2",
    cpu_seed_offset: int = COMFY_CPU_SEED_OFFSET,
) -> Tensor:
    """Deterministic exponential Heun (2nd order) in data prediction and logSNR time (SEEDS-2, r=1, eta=0)."""
    # ComfyUI creates its noise generator here without drawing from it (so an oversized seed still
    # fails the same way).
    noise_sampler = default_noise_sampler(x, seed, cpu_seed_offset)
    ms = resolve_model_sampling(model, model_sampling)
    return _seeds_2(model, x, sigmas, callback, ms, noise_sampler, 0.0, 0.0, 1.0, solver_type)


@register_sampler("exp_heun_2_x0_sde")
def sample_exp_heun_2_x0_sde(
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
    solver_type: str = "phi_2",
    cpu_seed_offset: int = COMFY_CPU_SEED_OFFSET,
) -> Tensor:
    """Stochastic exponential Heun (2nd order) in data prediction and logSNR time (SEEDS-2 with r=1)."""
    if noise_sampler is None:
        noise_sampler = default_noise_sampler(x, seed, cpu_seed_offset)
    ms = resolve_model_sampling(model, model_sampling)
    return _seeds_2(model, x, sigmas, callback, ms, noise_sampler, eta, s_noise, 1.0, solver_type)


@register_sampler("seeds_2")
def sample_seeds_2(
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
    r: float = 0.5,
    solver_type: str = "phi_1",
    cpu_seed_offset: int = COMFY_CPU_SEED_OFFSET,
) -> Tensor:
    """SEEDS-2, stochastic explicit exponential derivative-free solver (Gonzalez et al. 2023, arXiv:2305.14267)."""
    if noise_sampler is None:
        noise_sampler = default_noise_sampler(x, seed, cpu_seed_offset)
    ms = resolve_model_sampling(model, model_sampling)
    return _seeds_2(model, x, sigmas, callback, ms, noise_sampler, eta, s_noise, r, solver_type)


@register_sampler("seeds_3")
def sample_seeds_3(
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
    r_1: float = 1.0 / 3,
    r_2: float = 2.0 / 3,
    cpu_seed_offset: int = COMFY_CPU_SEED_OFFSET,
) -> Tensor:
    """SEEDS-3, three-stage stochastic exponential solver (Gonzalez et al. 2023, arXiv:2305.14267)."""
    # Evaluations at lambda_s + r_1*h and lambda_s + r_2*h; the noise is carried across the three
    # segments like SEEDS-2's.
    if noise_sampler is None:
        noise_sampler = default_noise_sampler(x, seed, cpu_seed_offset)
    ms = resolve_model_sampling(model, model_sampling)
    inject_noise = eta > 0 and s_noise > 0
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
        h_eta = h * (eta + 1)
        lambda_s_1 = torch.lerp(lambda_s, lambda_t, r_1)
        lambda_s_2 = torch.lerp(lambda_s, lambda_t, r_2)
        sigma_s_1, sigma_s_2 = sigma_of_half_log_snr(lambda_s_1), sigma_of_half_log_snr(lambda_s_2)
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_s_2 = sigma_s_2 * lambda_s_2.exp()
        alpha_t = sigma_next * lambda_t.exp()

        x_2 = sigma_s_1 / sigma * (-r_1 * h * eta).exp() * x - alpha_s_1 * _h_phi_1(-r_1 * h_eta) * denoised
        if inject_noise:
            sde_noise = (-2 * r_1 * h * eta).expm1().neg().sqrt() * noise_sampler(sigma, sigma_s_1)
            x_2 = x_2 + sde_noise * sigma_s_1 * s_noise
        denoised_2 = model(x_2, sigma_s_1 * s_in)

        a3_2 = r_2 / r_1 * _h_phi_2(-r_2 * h_eta)
        a3_1 = _h_phi_1(-r_2 * h_eta) - a3_2
        x_3 = sigma_s_2 / sigma * (-r_2 * h * eta).exp() * x - alpha_s_2 * (a3_1 * denoised + a3_2 * denoised_2)
        if inject_noise:
            segment = (r_1 - r_2) * h * eta
            sde_noise = sde_noise * segment.exp()
            sde_noise = sde_noise + segment.mul(2).expm1().neg().sqrt() * noise_sampler(sigma_s_1, sigma_s_2)
            x_3 = x_3 + sde_noise * sigma_s_2 * s_noise
        denoised_3 = model(x_3, sigma_s_2 * s_in)

        b3 = _h_phi_2(-h_eta) / r_2
        b1 = _h_phi_1(-h_eta) - b3
        x = sigma_next / sigma * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b3 * denoised_3)
        if inject_noise:
            segment = (r_2 - 1) * h * eta
            sde_noise = sde_noise * segment.exp()
            sde_noise = sde_noise + segment.mul(2).expm1().neg().sqrt() * noise_sampler(sigma_s_2, sigma_next)
            x = x + sde_noise * sigma_next * s_noise
    return x


# ---------------------------------------------------------------------------------------------
# SA-Solver


def sa_solver_tau_interval(start_sigma: float, end_sigma: float, eta: float = 1.0) -> TauFn:
    """SA-Solver's stochasticity: ``eta`` for sigmas in [end_sigma, start_sigma], else 0 (an ODE
    step); ``eta <= 0`` is the ODE everywhere. ComfyUI's default is percent 0.2 .. 0.8 of the model's
    sigma range (``SamplerSASolver`` makes both ends and eta inputs)."""

    def tau(sigma: Tensor | float) -> float:
        if eta <= 0:
            return 0.0
        value = float(sigma)
        return eta if start_sigma >= value >= end_sigma else 0.0

    return tau


def _exponential_moments(s: Tensor, t: Tensor, order: int, tau: float) -> Tensor:
    """``(1 + tau^2) * integral_s^t exp((1 + tau^2) x) x^p dx / exp((1 + tau^2) t)`` for p = 0..order-1."""
    # Integration by parts gives I_p = P_p - p/(1+tau^2) I_{p-1} with P_p = x^p exp((1+tau^2) x)
    # between s and t; unrolled, I = M @ P with M[p, q] = (-1)^(p-q) p!/q! (1+tau^2)^-(p-q) for q <= p.
    tau_mul = 1 + tau**2
    h = t - s
    p = torch.arange(order, dtype=s.dtype, device=s.device)
    boundary_terms = t**p - s**p * (-tau_mul * h).exp()
    depth = p.unsqueeze(1) - p.unsqueeze(0)
    log_factorial = (p + 1).lgamma()
    log_coeff = log_factorial.unsqueeze(1) - log_factorial.unsqueeze(0)
    if tau > 0:
        log_coeff = log_coeff - (depth * math.log(tau_mul))
    signs = torch.where(depth % 2 == 0, 1.0, -1.0)
    coeff = (log_coeff.exp() * signs).tril()
    return coeff @ boundary_terms


def _simple_order_2_coeffs(
    sigma_next: Tensor, lambdas: Tensor, lambda_s: Tensor, lambda_t: Tensor, tau: float, corrector: bool
) -> Tensor:
    # The paper's simplified second-order weights (Appendix D), oldest prediction first.
    tau_mul = 1 + tau**2
    h = lambda_t - lambda_s
    alpha_t = sigma_next * lambda_t.exp()
    if corrector:
        b_new = alpha_t * (0.5 * tau_mul * h)
        b_old = alpha_t * (-h * tau_mul).expm1().neg() - b_new
    else:
        b_old = alpha_t * (0.5 * tau_mul * h**2) / (lambdas[-2] - lambda_s)
        b_new = alpha_t * (-h * tau_mul).expm1().neg() - b_old
    return torch.stack([b_old, b_new])


def _adams_coeffs(
    sigma_next: Tensor,
    lambdas: Tensor,
    lambda_s: Tensor,
    lambda_t: Tensor,
    tau: float,
    simple_order_2: bool,
    corrector: bool,
) -> Tensor:
    """The weights b_i of the stochastic Adams step from lambda_s to lambda_t on the data predictions
    at ``lambdas`` (SA-Solver eqs. 15 and 18), oldest first."""
    n = lambdas.shape[0]
    if simple_order_2 and n == 2:
        return _simple_order_2_coeffs(sigma_next, lambdas, lambda_s, lambda_t, tau, corrector)
    # Integrals of the Lagrange basis polynomials: solve V^T w = moments.
    moments = _exponential_moments(lambda_s, lambda_t, n, tau)
    vandermonde_t = torch.vander(lambdas, n, increasing=True).T
    lagrange_integrals = torch.linalg.solve(vandermonde_t, moments)
    # sigma_t exp(-tau^2 lambda_t) * exp((1 + tau^2) lambda_t) = sigma_t exp(lambda_t) = alpha_t.
    alpha_t = sigma_next * lambda_t.exp()
    return alpha_t * lagrange_integrals


def _weighted_predictions(predictions: list[Tensor], coeffs: Tensor) -> Tensor:
    # sum_k coeffs[k] * predictions[k], as one contraction over a stacked K axis.
    stacked = torch.stack(predictions, dim=1)
    return torch.tensordot(stacked, coeffs, dims=([1], [0]))


@register_sampler("sa_solver")
def sample_sa_solver(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
    tau_func: TauFn | None = None,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    predictor_order: int = 3,
    corrector_order: int = 4,
    use_pece: bool = False,
    simple_order_2: bool = False,
    cpu_seed_offset: int = COMFY_CPU_SEED_OFFSET,
) -> Tensor:
    """Stochastic Adams solver with predictor-corrector (Xue et al. 2023, arXiv:2309.05019)."""
    # Each step corrects the state predicted by the previous step with the new evaluation (order up
    # to corrector_order), then predicts the next state (order up to predictor_order); the noise drawn
    # for a prediction is added again to its correction. PECE re-evaluates the corrected state.
    if len(sigmas) <= 1:
        return x
    if noise_sampler is None:
        noise_sampler = default_noise_sampler(x, seed, cpu_seed_offset)
    ms = resolve_model_sampling(model, model_sampling)
    sigmas = offset_first_sigma(sigmas, ms)
    lambdas = half_log_snr(sigmas)
    if tau_func is None:
        tau_func = sa_solver_tau_interval(ms.percent_to_sigma(0.2), ms.percent_to_sigma(0.8), eta=1.0)
    max_order = max(predictor_order, corrector_order)
    s_in = x.new_ones([x.shape[0]])
    total = len(sigmas) - 1
    x_pred = x
    h: Tensor | float = 0.0
    tau = 0.0
    noise: Tensor | float = 0.0
    predictions: list[Tensor] = []
    # With a final sigma of 0 the orders are lowered near the end, for stability.
    lower_order_to_end = sigmas[-1].item() == 0
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x_pred, sigma * s_in)
        if callback is not None:
            callback(StepInfo(i, total, float(sigma), x_pred, denoised))
        predictions.append(denoised)
        predictions = predictions[-max_order:]

        p_order = min(predictor_order, len(predictions))
        if i == 0 or (sigma_next == 0 and not use_pece):
            c_order = 0
        else:
            c_order = min(corrector_order, len(predictions))
        if lower_order_to_end:
            p_order = min(p_order, total - 1 - i)
            c_order = min(c_order, total - i)

        if c_order == 0:
            x = x_pred
        else:
            coeffs = _adams_coeffs(
                sigma, lambdas[i - c_order + 1 : i + 1], lambdas[i - 1], lambdas[i], tau, simple_order_2, True
            )
            x = sigma / sigmas[i - 1] * (-(tau**2) * h).exp() * x + _weighted_predictions(predictions[-c_order:], coeffs)
            if tau > 0 and s_noise > 0:
                x = x + noise
            if use_pece:
                denoised = model(x, sigma * s_in)
                predictions[-1] = denoised

        if sigma_next == 0:
            x_pred = denoised
        else:
            tau = tau_func(sigma_next)
            coeffs = _adams_coeffs(
                sigma_next, lambdas[i - p_order + 1 : i + 1], lambdas[i], lambdas[i + 1], tau, simple_order_2, False
            )
            h = lambdas[i + 1] - lambdas[i]
            x_pred = sigma_next / sigma * (-(tau**2) * h).exp() * x + _weighted_predictions(predictions[-p_order:], coeffs)
            if tau > 0 and s_noise > 0:
                noise = noise_sampler(sigma, sigma_next) * sigma_next * (-2 * tau**2 * h).expm1().neg().sqrt() * s_noise
                x_pred = x_pred + noise
    return x_pred


@register_sampler("sa_solver_pece")
def sample_sa_solver_pece(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
    tau_func: TauFn | None = None,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    predictor_order: int = 3,
    corrector_order: int = 4,
    simple_order_2: bool = False,
    cpu_seed_offset: int = COMFY_CPU_SEED_OFFSET,
) -> Tensor:
    """SA-Solver in PECE mode (predict, evaluate, correct, evaluate; Xue et al. 2023, arXiv:2309.05019)."""
    return sample_sa_solver(
        model, x, sigmas, seed=seed, callback=callback, model_sampling=model_sampling, tau_func=tau_func,
        s_noise=s_noise, noise_sampler=noise_sampler, predictor_order=predictor_order,
        corrector_order=corrector_order, use_pece=True, simple_order_2=simple_order_2,
        cpu_seed_offset=cpu_seed_offset,
    )
