"""UniPC, the unified predictor-corrector multistep solver (Zhao et al. 2023, arXiv:2302.04867), as
ComfyUI's ``uni_pc`` (B(h) = h, "bh1") and ``uni_pc_bh2`` (B(h) = e^h - 1) samplers run it.

ComfyUI drives UniPC the same way for every model: in data-prediction mode, multistep, order
``min(3, steps - 1)`` lowered over the last steps, with the sigmas of the schedule used directly as
continuous times of a variance-exploding to variance-preserving conversion (alpha = 1/sqrt(1 + s^2),
and the model is fed ``x * sqrt(1 + s^2)``). That is not the flow model's own noise schedule; it is
what ComfyUI does, and what this module reproduces bit for bit. A final sigma of 0 is replaced by 0.001.

Each step after the first evaluates the model once, at the new time, and uses that evaluation both
for the corrector of the step and as history for the next predictor; the last step is predictor only.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..schedules import FlowModelSampling
from . import register_sampler
from .base import DenoiseFn, StepCallback, StepInfo, resolve_model_sampling

__all__: list[str] = []

_FINAL_TIME = 0.001
"""The time UniPC ends at when the schedule ends at sigma 0 (ComfyUI's choice)."""


# ---------------------------------------------------------------------------------------------
# The VE sigma as a VP time: log alpha = -log(1 + s^2) / 2, std = sqrt(1 - alpha^2).


def _log_alpha(t: Tensor) -> Tensor:
    return 0.5 * torch.log(1 / ((t * t) + 1))


def _alpha(t: Tensor) -> Tensor:
    return torch.exp(_log_alpha(t))


def _std(t: Tensor) -> Tensor:
    return torch.sqrt(1.0 - torch.exp(2.0 * _log_alpha(t)))


def _lambda(t: Tensor) -> Tensor:
    """Half-logSNR log(alpha / std) of the VP time t."""
    log_alpha = _log_alpha(t)
    log_std = 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))
    return log_alpha - log_std


def _per_row(v: Tensor, ndim: int) -> Tensor:
    # A [B] vector broadcast against [B, C, H, W].
    return v[(...,) + (None,) * (ndim - 1)]


class _DataPrediction:
    """The model as an x0 predictor in the VP parameterisation UniPC works in."""

    def __init__(self, model: DenoiseFn) -> None:
        self.model = model

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        # Noise prediction from the denoiser at the VE input x*sqrt(1 + s^2), then x0 in VP terms.
        s = t.view(t.shape[:1] + (1,) * (x.ndim - 1))
        ve_input = x * ((s**2 + 1.0) ** 0.5)
        eps = (ve_input - self.model(ve_input, t)) / s
        return (x - _per_row(_std(t), x.ndim) * eps) / _per_row(_alpha(t), x.ndim)


def _bh_update(
    predict: _DataPrediction,
    x: Tensor,
    model_prev: list[Tensor],
    t_prev: list[Tensor],
    t: Tensor,
    order: int,
    use_corrector: bool,
    variant: str,
) -> tuple[Tensor, Tensor | None]:
    """One UniPC step of the given order from ``t_prev[-1]`` to ``t`` (data prediction, B(h) variant):
    the predicted state, corrected with a model evaluation at ``t`` when ``use_corrector``; returns
    ``(x_t, model_t)`` with ``model_t`` None without the corrector."""
    ndim = x.ndim
    t_prev_0 = t_prev[-1]
    lambda_prev_0 = _lambda(t_prev_0)
    lambda_t = _lambda(t)
    model_prev_0 = model_prev[-1]
    sigma_prev_0, sigma_t = _std(t_prev_0), _std(t)
    alpha_t = torch.exp(_log_alpha(t))
    h = lambda_t - lambda_prev_0

    # Divided differences of the older predictions, at relative positions rks.
    rk_list: list[Tensor | float] = []
    differences: list[Tensor] = []
    for k in range(1, order):
        lambda_prev_k = _lambda(t_prev[-(k + 1)])
        rk = ((lambda_prev_k - lambda_prev_0) / h)[0]
        rk_list.append(rk)
        differences.append((model_prev[-(k + 1)] - model_prev_0) / rk)
    rk_list.append(1.0)
    rks = torch.tensor(rk_list, device=x.device)

    hh = -h[0]
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    rows: list[Tensor] = []
    rhs: list[Tensor] = []
    for k in range(1, order + 1):
        rows.append(torch.pow(rks, k - 1))
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    r_matrix = torch.stack(rows)
    b = torch.tensor(rhs, device=x.device)

    d1s: Tensor | None = None
    rhos_p: Tensor | None = None
    if differences:
        d1s = torch.stack(differences, dim=1)
        # Order 2 uses the fixed weight 1/2 rather than solving the 1x1 system.
        rhos_p = torch.tensor([0.5], device=b.device) if order == 2 else torch.linalg.solve(r_matrix[:-1, :-1], b[:-1])
    rhos_c: Tensor | None = None
    if use_corrector:
        rhos_c = torch.tensor([0.5], device=b.device) if order == 1 else torch.linalg.solve(r_matrix, b)

    x_t_ = _per_row(sigma_t / sigma_prev_0, ndim) * x - _per_row(alpha_t * h_phi_1, ndim) * model_prev_0
    # The int 0 for "no history" is kept as ComfyUI writes it (it fixes the sign of zero results).
    pred_res: Tensor | int = torch.tensordot(d1s, rhos_p, dims=([1], [0])) if d1s is not None and rhos_p is not None else 0
    x_t = x_t_ - _per_row(alpha_t * b_h, ndim) * pred_res

    model_t: Tensor | None = None
    if use_corrector:
        assert rhos_c is not None
        model_t = predict(x_t, t)
        corr_res: Tensor | int = torch.tensordot(d1s, rhos_c[:-1], dims=([1], [0])) if d1s is not None else 0
        d1_t = model_t - model_prev_0
        x_t = x_t_ - _per_row(alpha_t * b_h, ndim) * (corr_res + rhos_c[-1] * d1_t)
    return x_t, model_t


def _sample_unipc(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    callback: StepCallback | None,
    model_sampling: FlowModelSampling | None,
    variant: str,
) -> Tensor:
    ends_at_zero = bool(sigmas[-1] == 0)
    timesteps = sigmas.clone()
    if ends_at_zero:
        timesteps[-1] = _FINAL_TIME
    predict = _DataPrediction(model)
    x = x / torch.sqrt(1.0 + timesteps[0] ** 2.0)
    steps = len(timesteps) - 1
    order = min(3, len(timesteps) - 2)
    batch = x.shape[0]
    model_prev: list[Tensor] = []
    t_prev: list[Tensor] = []
    for step_index in range(steps):
        if step_index == 0:
            t = timesteps[0].expand(batch)
            model_prev = [predict(x, t)]
            t_prev = [t]
        elif step_index < order:
            # Warm-up: the first steps run at the order the history allows.
            t = timesteps[step_index].expand(batch)
            x, model_x = _bh_update(predict, x, model_prev, t_prev, t, step_index, True, variant)
            if model_x is None:
                model_x = predict(x, t)
            model_prev.append(model_x)
            t_prev.append(t)
        else:
            # The last step index also makes the final, predictor-only step to the end time.
            last = step_index + (2 if step_index == steps - 1 else 1)
            for step in range(step_index, last):
                t = timesteps[step].expand(batch)
                step_order = min(order, steps + 1 - step)
                use_corrector = step != steps
                x, model_x = _bh_update(predict, x, model_prev, t_prev, t, step_order, use_corrector, variant)
                for k in range(order - 1):
                    t_prev[k] = t_prev[k + 1]
                    model_prev[k] = model_prev[k + 1]
                t_prev[-1] = t
                if step < steps:
                    if model_x is None:
                        model_x = predict(x, t)
                    model_prev[-1] = model_x
        if callback is not None:
            # ComfyUI reports the state after the step (in UniPC's VP scaling, x / sqrt(1 + s0^2) at the
            # start) and the newest x0 prediction, the one at this step's sigma.
            callback(StepInfo(step_index, steps, float(sigmas[step_index]), x, model_prev[-1]))
    x = x / _alpha(timesteps[-1])
    if ends_at_zero:
        # ComfyUI overwrites the caller's final sigma 0 with 0.001 (in place), so the model's inverse
        # noise scaling after sampling runs at 0.001: for a flow model x / 0.999. Applied here; the
        # caller's inverse scaling at sigma 0 is then exact identity for a flow model.
        ms = resolve_model_sampling(model, model_sampling)
        x = ms.inverse_noise_scaling(timesteps[-1], x)
    return x


@register_sampler("uni_pc", discard_penultimate_sigma=True)
def sample_uni_pc(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
) -> Tensor:
    """UniPC multistep predictor-corrector, B(h) = h (Zhao et al. 2023, arXiv:2302.04867)."""
    return _sample_unipc(model, x, sigmas, callback, model_sampling, "bh1")


@register_sampler("uni_pc_bh2", discard_penultimate_sigma=True)
def sample_uni_pc_bh2(
    model: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    model_sampling: FlowModelSampling | None = None,
) -> Tensor:
    """UniPC multistep predictor-corrector, B(h) = e^h - 1 (Zhao et al. 2023, arXiv:2302.04867)."""
    return _sample_unipc(model, x, sigmas, callback, model_sampling, "bh2")
