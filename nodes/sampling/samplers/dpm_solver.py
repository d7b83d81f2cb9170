"""DPM-Solver (Lu et al. 2022, arXiv:2206.00927) with its own time grid: ComfyUI's ``dpm_fast`` and
``dpm_adaptive``.

Neither follows the given schedule step by step. Both solve from the schedule's first sigma down to
its last positive sigma (the penultimate one when the schedule ends at 0) in time t = -log(sigma):
``dpm_fast`` on a uniform t grid with ``len(sigmas) - 1`` model evaluations in steps of order 3
(lower for the last ones), ``dpm_adaptive`` with an embedded lower-order estimate and a PID step-size
controller. The step records are the solver's own steps (fewer than the schedule's), with the sigma
of the solver's time; ``total`` stays ``len(sigmas) - 1``, as ComfyUI reports it.

Like ComfyUI they draw one noise sample per step and add it times ``sigma_up``, which is 0 unless
``dpm_adaptive`` runs with ``eta > 0``; the draws are kept so that the noise stream (and its sign of
zero) is ComfyUI's.
"""
from __future__ import annotations

import math

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
)

__all__: list[str] = []


def _time(sigma: Tensor) -> Tensor:
    return -sigma.log()


def _sigma(t: Tensor) -> Tensor:
    return t.neg().exp()


def _solve_range(sigmas: Tensor) -> tuple[Tensor, Tensor]:
    """``(sigma_min, sigma_max)`` the solvers run between: the last positive schedule sigma and the first."""
    sigma_min = sigmas[-1]
    if sigma_min == 0:
        sigma_min = sigmas[-2]
    sigma_max = sigmas[0]
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    return sigma_min, sigma_max


class _DPMSolver:
    """The model as a noise predictor eps(x, t), with the single-step DPM-Solver updates of orders 1-3.

    ``cache`` maps 'eps' / 'eps_r1' / 'eps_r2' (the evaluation at the step start and at the first and
    second intermediate times) to eps, so that the embedded pairs of ``dpm_adaptive`` share them."""

    def __init__(self, model: DenoiseFn) -> None:
        self.model = model

    def eps(self, cache: dict[str, Tensor], key: str, x: Tensor, t: Tensor) -> Tensor:
        if key not in cache:
            sigma = _sigma(t) * x.new_ones([x.shape[0]])
            cache[key] = (x - self.model(x, sigma)) / _sigma(t)
        return cache[key]

    def step_1(self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor]) -> Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        return x - _sigma(t_next) * h.expm1() * eps

    def step_2(self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor], r1: float = 1 / 2) -> Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)

    def step_3(
        self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor], r1: float = 1 / 3, r2: float = 2 / 3
    ) -> Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        s2 = t + r2 * h
        u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (
            x
            - _sigma(s2) * (r2 * h).expm1() * eps
            - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
        )
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)


@register_sampler("dpm_fast")
def sample_dpm_fast(
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
    """DPM-Solver-Fast: fixed steps of order 3 on a uniform -log(sigma) grid (Lu et al. 2022, arXiv:2206.00927)."""
    # ComfyUI passes no options to dpm_fast, so eta is 0: the per-step draw is multiplied by 0.
    if len(sigmas) <= 1:
        return x
    sigma_min, sigma_max = _solve_range(sigmas)
    total = len(sigmas) - 1
    nfe = total
    solver = _DPMSolver(model)
    if noise_sampler is None:
        noise_sampler = default_noise_sampler(x, seed, cpu_seed_offset)
    t_start, t_end = _time(sigma_max.clone()), _time(sigma_min.clone())
    # nfe evaluations: order-3 steps, the remainder in one lower-order last step (or 2 + 1).
    m = math.floor(nfe / 3) + 1
    ts = torch.linspace(t_start, t_end, m + 1, device=x.device)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    sigma_up, s_noise = 0.0, 1.0
    for i, order in enumerate(orders):
        cache: dict[str, Tensor] = {}
        t, t_next = ts[i], ts[i + 1]
        eps = solver.eps(cache, "eps", x, t)
        denoised = x - _sigma(t) * eps
        if callback is not None:
            callback(StepInfo(i, total, float(_sigma(t)), x, denoised))
        if order == 1:
            x = solver.step_1(x, t, t_next, cache)
        elif order == 2:
            x = solver.step_2(x, t, t_next, cache)
        else:
            x = solver.step_3(x, t, t_next, cache)
        x = x + sigma_up * s_noise * noise_sampler(_sigma(t), _sigma(t_next))
    return x


class _StepSizeController:
    """A PID controller on the inverse error, proposing the next step size h (in t)."""

    def __init__(
        self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float, accept_safety: float, eps: float = 1e-8
    ) -> None:
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.inv_errors: list[float] = []

    def propose_step(self, error: Tensor) -> bool:
        """Scale h by the controller's factor; True when the step that gave ``error`` is accepted."""
        inv_error = 1 / (float(error) + self.eps)
        if not self.inv_errors:
            self.inv_errors = [inv_error, inv_error, inv_error]
        self.inv_errors[0] = inv_error
        e = self.inv_errors
        factor = e[0] ** self.b1 * e[1] ** self.b2 * e[2] ** self.b3
        factor = 1 + math.atan(factor - 1)  # soft limiter
        accept = factor >= self.accept_safety
        if accept:
            e[2] = e[1]
            e[1] = e[0]
        self.h *= factor
        return accept


@register_sampler("dpm_adaptive")
def sample_dpm_adaptive(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
    eta: float = 0.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    cpu_seed_offset: int = COMFY_CPU_SEED_OFFSET,
) -> Tensor:
    """DPM-Solver-12/23 with adaptive step size (Lu et al. 2022, arXiv:2206.00927)."""
    # Each attempt compares an order-(k-1) and an order-k solution; the step is accepted when the
    # controller's factor is >= accept_safety. A step record follows every attempt, accepted or not,
    # with the state and sigma after it (unchanged when rejected), as ComfyUI reports it.
    if len(sigmas) <= 1:
        return x
    sigma_min, sigma_max = _solve_range(sigmas)
    total = len(sigmas) - 1
    solver = _DPMSolver(model)
    if noise_sampler is None:
        noise_sampler = default_noise_sampler(x, seed, cpu_seed_offset)
    if order not in (2, 3):
        raise ValueError("order should be 2 or 3")
    t_start, t_end = _time(sigma_max.clone()), _time(sigma_min.clone())
    forward = bool(t_end > t_start)
    if not forward and eta:
        raise ValueError("eta must be 0 for reverse sampling")
    h_init = abs(h_init) * (1 if forward else -1)
    atol_t = torch.tensor(atol)
    rtol_t = torch.tensor(rtol)
    s = t_start
    x_prev = x
    pid = _StepSizeController(h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    attempts = 0
    while (s < t_end - 1e-5) if forward else (s > t_end + 1e-5):
        cache: dict[str, Tensor] = {}
        t = torch.minimum(t_end, s + pid.h) if forward else torch.maximum(t_end, s + pid.h)
        if eta:
            sigma_down, _ = ancestral_step(_sigma(s), _sigma(t), eta)
            t_ = torch.minimum(t_end, _time(sigma_down))
            sigma_up: Tensor | float = (_sigma(t) ** 2 - _sigma(t_) ** 2) ** 0.5
        else:
            t_, sigma_up = t, 0.0
        eps = solver.eps(cache, "eps", x, s)
        denoised = x - _sigma(s) * eps
        if order == 2:
            x_low = solver.step_1(x, s, t_, cache)
            x_high = solver.step_2(x, s, t_, cache)
        else:
            x_low = solver.step_2(x, s, t_, cache, r1=1 / 3)
            x_high = solver.step_3(x, s, t_, cache)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose_step(error):
            x_prev = x_low
            x = x_high + sigma_up * s_noise * noise_sampler(_sigma(s), _sigma(t))
            s = t
        attempts += 1
        if callback is not None:
            callback(StepInfo(attempts - 1, total, float(_sigma(s)), x, denoised))
    return x
