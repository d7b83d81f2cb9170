"""The toy flow denoiser of the ComfyUI reference vectors, plus helpers to read the vector files."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from graphrun.nodes.sampling.guidance import Conditioning
from graphrun.nodes.sampling.schedules import FLUX_LATENT, FlowModelSampling, LatentFormat

VECTORS = Path(__file__).parent / "data" / "comfy"


@dataclass
class ToyDenoiser:
    """``D(x, sigma, c) = tanh(0.9 x) (1 - sigma) + 0.1 c`` with c = context[:, 0, 0], evaluated in
    the vectors' float32 operation order; records every forward."""

    model_sampling: FlowModelSampling
    latent_format: LatentFormat = FLUX_LATENT
    calls: list[dict[str, Any]] = field(default_factory=list)

    def apply_model(self, x: Tensor, sigma: Tensor, context: Tensor) -> Tensor:
        c = context[:, 0, 0]
        self.calls.append({"batch": x.shape[0], "sigma": float(sigma[0]), "c": c.tolist()})
        b = torch.tanh(0.9 * x)
        s = (1.0 - sigma).view(-1, 1, 1, 1)
        return b * s + (0.1 * c).view(-1, 1, 1, 1)


def toy_cond(c: float) -> Conditioning:
    """The vectors' conditioning ``[[full((1, 1, 4), c), {}]]``."""
    return Conditioning.from_tensor(torch.full((1, 1, 4), c, dtype=torch.float32))


@cache
def load(name: str) -> dict[str, Any]:
    """A vector file, parsed once per session."""
    return json.loads((VECTORS / name).read_text())


def f32(value: float | str) -> float:
    """A JSON scalar (possibly "NaN"/"Infinity") as the float32 value it denotes."""
    return float(torch.tensor(float(value), dtype=torch.float32))


def sha256(t: Tensor) -> str:
    return hashlib.sha256(t.detach().to(torch.float32).contiguous().cpu().numpy().tobytes()).hexdigest()


def tensor_of(obj: dict[str, Any]) -> Tensor:
    """A vector tensor object with full ``data`` as a float32 tensor."""
    return torch.tensor(obj["data"], dtype=torch.float32).reshape(obj["shape"])
