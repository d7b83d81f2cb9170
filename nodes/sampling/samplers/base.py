"""What every sampler shares: the sampler signature, step records, and ComfyUI's noise sources.

A sampler is one pure function in the k-diffusion style::

    sample_x(model, x, sigmas, *, seed, callback=None, model_sampling=None, **options) -> Tensor

``model(x, sigma_batch) -> D`` returns the guided denoised (x0) prediction; ``x`` is the noised start
state in model latent space; ``sigmas`` a 1-D float32 CPU schedule. The per-step scalar arithmetic
runs on 0-dim float32 CPU tensors in ComfyUI's operation order, which makes results bit-identical to
ComfyUI on the CPU (and avoids device syncs on a GPU). ``callback`` gets one ``StepInfo`` per step;
an exception raised by it stops sampling and propagates (progress bars, Ctrl-C).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from ..schedules import FlowModelSampling

__all__ = [
    "BrownianTreeNoiseSampler",
    "RowSeeds",
    "DenoiseFn",
    "NoiseSampler",
    "SamplerFn",
    "StepCallback",
    "StepInfo",
    "ancestral_step",
    "default_noise_sampler",
    "denoise_with_uncond",
    "flow_ancestral_step",
    "half_log_snr",
    "offset_first_sigma",
    "resolve_model_sampling",
    "sigma_of_half_log_snr",
]

DenoiseFn = Callable[[Tensor, Tensor], Tensor]
"""``model(x [B,C,H,W], sigma [B]) -> denoised [B,C,H,W]``."""

NoiseSampler = Callable[[Tensor, Tensor], Tensor]
"""``noise_sampler(sigma, sigma_next) -> unit-variance noise shaped like x``."""

COMFY_CPU_SEED_OFFSET = 1
"""Since ComfyUI v0.7.0 (commit 1e4e342f) ``default_noise_sampler`` seeds its CPU generator with
``seed + 1``; ComfyUI of October 2025 used ``seed`` (offset 0). On CUDA both use ``seed``."""


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


class RowSeeds(tuple):
    """The seeds of several batch rows sampled together, one per row, with each row's batch size.

    A sampler passes its ``seed`` on to the noise samplers untouched; given RowSeeds they draw each
    row's part of the batch from that row's own generator, exactly as the row run alone would, so
    stacking rows never changes their noise. (Arithmetic on a RowSeeds fails loudly: a sampler that
    needs it cannot batch rows, and the rows then run one by one.)
    """

    sizes: tuple[int, ...]

    def __new__(cls, seeds: "list[int] | tuple[int, ...]", sizes: "list[int] | tuple[int, ...]") -> "RowSeeds":
        if len(seeds) != len(sizes):
            raise ValueError(f"{len(seeds)} seeds for {len(sizes)} rows")
        made = super().__new__(cls, (int(s) for s in seeds))
        made.sizes = tuple(int(n) for n in sizes)
        return made

    def __add__(self, other: Any) -> Any:
        raise TypeError("a sampler did arithmetic on the seeds of batched rows; run the rows one by one")

    __radd__ = __add__


def _rows(x: Tensor, seeds: RowSeeds) -> list[Tensor]:
    if sum(seeds.sizes) != x.shape[0]:
        raise ValueError(f"row sizes {seeds.sizes} do not add up to the batch of {x.shape[0]}")
    return list(x.split(list(seeds.sizes)))


def default_noise_sampler(x: Tensor, seed: int, cpu_seed_offset: int = COMFY_CPU_SEED_OFFSET) -> NoiseSampler:
    """ComfyUI's ``default_noise_sampler``: one ``randn(x.shape)`` per call from a generator on x's
    device seeded with ``seed``, plus ``cpu_seed_offset`` when x is on the CPU (1 since ComfyUI
    v0.7.0, 0 before). Device dependent: CUDA draws differ from CPU draws. With :class:`RowSeeds`,
    each row's part comes from its own generator."""
    if isinstance(seed, RowSeeds):
        parts = [default_noise_sampler(part, s, cpu_seed_offset) for part, s in zip(_rows(x, seed), seed)]
        return lambda sigma, sigma_next: torch.cat([draw(sigma, sigma_next) for draw in parts])
    if x.device.type == "cpu":
        seed = seed + cpu_seed_offset
        if seed >= 2**64:
            raise ValueError(
                f"seed {seed - cpu_seed_offset} + {cpu_seed_offset} does not fit the noise generator "
                "(ComfyUI fails the same way: Overflow when unpacking long long); use a smaller seed"
            )
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
    def for_schedule(cls, x: Tensor, sigmas: Tensor, seed: int) -> "NoiseSampler":
        """The tree ComfyUI builds for a schedule: from the smallest positive sigma to the largest
        (one tree per row for :class:`RowSeeds`)."""
        low, high = sigmas[sigmas > 0].min(), sigmas.max()
        if isinstance(seed, RowSeeds):
            trees = [cls(part, low, high, s) for part, s in zip(_rows(x, seed), seed)]
            return lambda sigma, sigma_next: torch.cat([tree(sigma, sigma_next) for tree in trees])
        return cls(x, low, high, seed)

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


def resolve_model_sampling(model: DenoiseFn, model_sampling: FlowModelSampling | None) -> FlowModelSampling:
    """The model sampling a sampler was given, else the guider's."""
    ms = model_sampling if model_sampling is not None else getattr(model, "model_sampling", None)
    if ms is None:
        raise ValueError("this sampler needs model_sampling (pass it, or use a guider that has one)")
    return ms


def denoise_with_uncond(model: DenoiseFn, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """``(D_guided, D_uncond)`` for the CFG++ samplers (ComfyUI's ``sampler_post_cfg_function`` hook
    with ``disable_cfg1_optimization``): the negative is evaluated even at cfg 1. A plain function
    without a negative gives a zero ``D_uncond``, as ComfyUI does for a missing negative."""
    both = getattr(model, "denoise_with_uncond", None)
    if both is not None:
        return both(x, sigma)
    denoised = model(x, sigma)
    return denoised, torch.zeros_like(denoised)


# ---------------------------------------------------------------------------------------------
# Step arithmetic several samplers share (0-dim float32 tensors, ComfyUI's operation order).


def ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float) -> tuple[Tensor, Tensor | float]:
    """k-diffusion's VE split of a step into ``(sigma_down, sigma_up)``; ComfyUI uses it for flow
    models too in res_multistep and the DPM-Solver samplers. ``eta`` 0 gives ``(sigma_to, 0)``."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def flow_ancestral_step(sigma: Tensor, sigma_next: Tensor, eta: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The rectified-flow ancestral step (ComfyUI's ``*_RF`` samplers):
    ``(sigma_down, alpha_next, alpha_down, renoise_coeff)``."""
    downstep_ratio = 1 + (sigma_next / sigma - 1) * eta
    sigma_down = sigma_next * downstep_ratio
    alpha_next = 1 - sigma_next
    alpha_down = 1 - sigma_down
    renoise_coeff = (sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2) ** 0.5
    return sigma_down, alpha_next, alpha_down, renoise_coeff


def half_log_snr(sigma: Tensor) -> Tensor:
    """``log(alpha / sigma)`` of a flow model: ``log((1 - sigma) / sigma) = -logit(sigma)``."""
    # EPS models (alpha = 1) would use sigma.log().neg() here.
    return sigma.logit().neg()


def sigma_of_half_log_snr(lam: Tensor) -> Tensor:
    """The inverse of :func:`half_log_snr` for a flow model: ``1 / (1 + exp(lambda))``."""
    # EPS models would use lam.neg().exp() here.
    return lam.neg().sigmoid()


def offset_first_sigma(sigmas: Tensor, ms: FlowModelSampling, percent_offset: float = 1e-4) -> Tensor:
    """The schedule with a first sigma >= 1 (infinite half-logSNR) replaced by
    ``percent_to_sigma(percent_offset)``, as ComfyUI's SDE and exponential samplers do."""
    # EPS models keep their schedule unchanged.
    if len(sigmas) <= 1 or sigmas[0] < 1:
        return sigmas
    sigmas = sigmas.clone()
    sigmas[0] = ms.percent_to_sigma(percent_offset)
    return sigmas
