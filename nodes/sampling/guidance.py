"""Conditioning values, the Denoiser protocol and classifier-free guidance (ComfyUI semantics).

A guider turns a ``Denoiser`` plus conditionings into the ``model(x, sigma) -> D`` function the
samplers call. ``CFGGuider`` follows ComfyUI's ``sampling_function``: with cfg within
``math.isclose(cfg, 1.0)`` only the positive is evaluated; otherwise positive and negative rows run in
one batched forward (negative rows first) when their context tensors have equal shapes, and in
separate forwards (positive first) when they do not, e.g. for prompts of different token counts.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from .schedules import FlowModelSampling, LatentFormat

__all__ = [
    "BasicGuider",
    "CFGGuider",
    "Conditioning",
    "ConditioningEntry",
    "Denoiser",
    "RowsConditioning",
    "Guider",
    "cfg_function",
]

# Extras that change which rows run or how outputs are weighted per pixel; evaluating them would need
# ComfyUI's area/mask/timestep-range machinery, so they are refused instead of silently ignored.
_UNSUPPORTED_EXTRAS = frozenset(
    {"area", "mask", "start_percent", "end_percent", "timestep_start", "timestep_end", "hooks", "control", "gligen"}
)


@runtime_checkable
class Denoiser(Protocol):
    """A diffusion network wrapped to predict x0 (ComfyUI ``BaseModel.apply_model`` returning D).

    ``apply_model(x [N,C,H,W] float32, sigma [N] float32, context [N,L,D]) -> D [N,C,H,W] float32``.
    """

    model_sampling: FlowModelSampling
    latent_format: LatentFormat

    def apply_model(self, x: Tensor, sigma: Tensor, context: Tensor) -> Tensor: ...


@dataclass(frozen=True, eq=False)
class ConditioningEntry:
    """One conditioning: a context tensor ``[1, L, D]`` plus extras (e.g. ``attention_mask``,
    ``pooled_output``, ``strength``)."""

    tensor: Tensor
    extras: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tensor.ndim != 3:
            raise ValueError(f"conditioning tensor must be [1, L, D], got shape {tuple(self.tensor.shape)}")
        object.__setattr__(self, "extras", MappingProxyType(dict(self.extras)))

    @property
    def strength(self) -> float:
        """Weight of this entry when several conditionings are averaged (default 1.0)."""
        return float(self.extras.get("strength", 1.0))


@dataclass(frozen=True, eq=False)
class Conditioning:
    """A CONDITIONING value: an immutable tuple of entries (ComfyUI's ``[[tensor, dict], ...]``).

    Several entries (ConditioningCombine) are evaluated separately and averaged with their
    ``strength`` weights, as ComfyUI does without areas or masks.
    """

    entries: tuple[ConditioningEntry, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", tuple(self.entries))
        if not self.entries:
            raise ValueError("a conditioning needs at least one entry")

    @classmethod
    def from_tensor(cls, tensor: Tensor, **extras: Any) -> Conditioning:
        """A single-entry conditioning from a ``[1, L, D]`` (or ``[L, D]``) context tensor."""
        if tensor.ndim == 2:
            tensor = tensor.unsqueeze(0)
        return cls((ConditioningEntry(tensor, extras),))

    def zero_out(self) -> Conditioning:
        """ComfyUI ``ConditioningZeroOut``: tensors and ``pooled_output`` become zeros of the same
        shape; other extras are kept."""
        out = []
        for entry in self.entries:
            extras = dict(entry.extras)
            if isinstance(extras.get("pooled_output"), Tensor):
                extras["pooled_output"] = torch.zeros_like(extras["pooled_output"])
            out.append(ConditioningEntry(torch.zeros_like(entry.tensor), extras))
        return Conditioning(tuple(out))

    def __add__(self, other: Conditioning) -> Conditioning:
        """ComfyUI ``ConditioningCombine``: the entries of both."""
        return Conditioning(self.entries + other.entries)

    def __iter__(self) -> Iterator[ConditioningEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


@dataclass(frozen=True, eq=False)
class RowsConditioning:
    """The conditionings of several batch rows sampled together: row k's (single-entry) conditioning
    applies to the next ``sizes[k]`` items of the batch. Guiders evaluate every row in one forward,
    each item with its own context (prompts of different token counts need no padding: the
    denoiser takes one context per item)."""

    rows: tuple[Conditioning, ...]
    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", tuple(self.rows))
        object.__setattr__(self, "sizes", tuple(int(n) for n in self.sizes))
        if len(self.rows) != len(self.sizes):
            raise ValueError(f"{len(self.rows)} conditionings for {len(self.sizes)} rows")
        if any(len(row.entries) != 1 for row in self.rows):
            raise ValueError("rows with combined conditionings (several entries) are sampled one by one")

    @property
    def entries(self) -> tuple[ConditioningEntry, ...]:
        return tuple(entry for row in self.rows for entry in row.entries)

    def contexts(self) -> list[Tensor]:
        """One ``[L, D]`` context per batch item."""
        return [row.entries[0].tensor[0] for row, n in zip(self.rows, self.sizes) for _ in range(n)]


def cfg_function(d_cond: Tensor, d_uncond: Tensor, cfg: float) -> Tensor:
    """Classifier-free guidance in denoised space: ``D_uncond + (D_cond - D_uncond) * cfg``."""
    return d_uncond + (d_cond - d_uncond) * cfg


def _check_supported(conds: Sequence[Conditioning]) -> None:
    for cond in conds:
        for entry in cond.entries:
            bad = _UNSUPPORTED_EXTRAS.intersection(entry.extras)
            if bad:
                raise ValueError(
                    f"conditioning option(s) {', '.join(sorted(bad))} are not supported yet "
                    "(area, mask, timestep-range and control conditioning)"
                )


def _calc_rows(denoiser: Denoiser, conds: Sequence[Any], x: Tensor, sigma: Tensor) -> list[Tensor]:
    """D for each conditioning of batched rows: one forward over every conditioning and item."""
    sizes = next(c.sizes for c in conds if isinstance(c, RowsConditioning))
    if sum(sizes) != x.shape[0]:
        raise ValueError(f"row sizes {sizes} do not add up to the batch of {x.shape[0]}")
    contexts: list[Tensor] = []
    for cond in conds:
        rows = cond if isinstance(cond, RowsConditioning) else RowsConditioning((cond,) * len(sizes), sizes)
        contexts += [c.to(x.device) for c in rows.contexts()]
    k = len(conds)
    out = denoiser.apply_model(torch.cat([x] * k), torch.cat([sigma] * k), contexts)
    return list(out.chunk(k))


def _calc_cond_batch(denoiser: Denoiser, conds: Sequence[Conditioning], x: Tensor, sigma: Tensor) -> list[Tensor]:
    """D for each conditioning; rows with equal context shapes share a forward (ComfyUI's
    ``calc_cond_batch`` order: the rows matching the first pending row, in reverse order)."""
    if any(isinstance(c, RowsConditioning) for c in conds):
        return _calc_rows(denoiser, conds, x, sigma)
    pending = [(k, entry) for k, cond in enumerate(conds) for entry in cond.entries]
    single = all(len(cond.entries) == 1 for cond in conds)
    results: list[Tensor | None] = [None] * len(conds)
    acc: list[Tensor | None] = [None] * len(conds)
    counts: list[Tensor | None] = [None] * len(conds)
    batch = x.shape[0]
    while pending:
        shape = pending[0][1].tensor.shape
        group = [j for j, (_, entry) in enumerate(pending) if entry.tensor.shape == shape]
        group.reverse()
        rows = [pending.pop(j) for j in group]
        context = torch.cat([entry.tensor.to(x.device).expand(batch, -1, -1) for _, entry in rows])
        if len(rows) == 1:
            outputs: Sequence[Tensor] = (denoiser.apply_model(x, sigma, context),)
        else:
            n = len(rows)
            outputs = denoiser.apply_model(torch.cat([x] * n), torch.cat([sigma] * n), context).chunk(n)
        for (k, entry), out in zip(rows, outputs):
            if single:
                results[k] = out
                continue
            # ComfyUI's weighted average: sum(out * strength) / (1e-37 + sum(strength)).
            strength = torch.tensor(entry.strength, dtype=torch.float32)
            prev = acc[k]
            acc[k] = out * strength if prev is None else prev + out * strength
            counts[k] = (torch.tensor(1e-37, dtype=torch.float32) if counts[k] is None else counts[k]) + strength
    if not single:
        for k in range(len(conds)):
            results[k] = acc[k] / counts[k]  # type: ignore[operator]
    return results  # type: ignore[return-value]


class Guider(Protocol):
    """What samplers and the pipeline need from a GUIDER value."""

    denoiser: Denoiser

    @property
    def model_sampling(self) -> FlowModelSampling: ...

    @property
    def latent_format(self) -> LatentFormat: ...

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor: ...


@dataclass(frozen=True, eq=False)
class CFGGuider:
    """Classifier-free guidance over a denoiser (ComfyUI ``CFGGuider``)."""

    denoiser: Denoiser
    positive: Conditioning
    negative: Conditioning
    cfg: float

    def __post_init__(self) -> None:
        _check_supported((self.positive, self.negative))

    @property
    def model_sampling(self) -> FlowModelSampling:
        return self.denoiser.model_sampling

    @property
    def latent_format(self) -> LatentFormat:
        return self.denoiser.latent_format

    @property
    def uses_negative(self) -> bool:
        """False when cfg is 1 (``math.isclose``): the negative is then never evaluated."""
        return not math.isclose(self.cfg, 1.0)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Guided x0 prediction at ``x`` [B,C,H,W], ``sigma`` [B]."""
        if not self.uses_negative:
            return _calc_cond_batch(self.denoiser, (self.positive,), x, sigma)[0]
        d_cond, d_uncond = _calc_cond_batch(self.denoiser, (self.positive, self.negative), x, sigma)
        return cfg_function(d_cond, d_uncond, self.cfg)

    def denoise_with_uncond(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """``(D_guided, D_uncond)`` with the negative evaluated even at cfg 1 (ComfyUI's
        ``disable_cfg1_optimization``, which the CFG++ samplers set)."""
        d_cond, d_uncond = _calc_cond_batch(self.denoiser, (self.positive, self.negative), x, sigma)
        return cfg_function(d_cond, d_uncond, self.cfg), d_uncond


@dataclass(frozen=True, eq=False)
class BasicGuider:
    """Positive conditioning only, no guidance (ComfyUI ``BasicGuider``)."""

    denoiser: Denoiser
    conditioning: Conditioning

    def __post_init__(self) -> None:
        _check_supported((self.conditioning,))

    @property
    def model_sampling(self) -> FlowModelSampling:
        return self.denoiser.model_sampling

    @property
    def latent_format(self) -> LatentFormat:
        return self.denoiser.latent_format

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        """x0 prediction for the conditioning at ``x`` [B,C,H,W], ``sigma`` [B]."""
        return _calc_cond_batch(self.denoiser, (self.conditioning,), x, sigma)[0]

    def denoise_with_uncond(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """``(D, 0)``: without a negative ComfyUI's uncond prediction is all zeros."""
        denoised = self(x, sigma)
        return denoised, torch.zeros_like(denoised)
