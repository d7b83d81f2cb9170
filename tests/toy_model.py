"""The toy flow denoiser of the ComfyUI reference vectors, plus helpers to read the vector files."""
from __future__ import annotations

import hashlib
import json
import math
import os
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


# ---------------------------------------------------------------------------------------------
# Comparing against the vectors: bit-exact where this CPU computes like the reference machine.
#
# The vectors are bit-exact targets, but a CPU whose vector math library rounds a transcendental
# (exp, tanh) differently in the last bit (MKL and SLEEF pick code paths per CPU model) cannot reproduce
# every sha256. So each check is exact first; when the bits differ the values must still agree within
# a tolerance far below any semantic difference (a wrong seed, step or formula is off by > 1e-2), and
# the count of close-but-not-exact checks is reported at the end of the run. GRAPHRUN_VECTORS=exact
# turns every inexact match into a failure (for machines that reproduce the reference bit for bit).

STRICT = os.environ.get("GRAPHRUN_VECTORS", "") == "exact"
REL = 1e-4
"""Relative tolerance when the bits differ. The vectors README suggests 1e-5 for other numerics; a few
cases amplify a last-bit difference of MKL's sqrt (sigma_down = sqrt(sigma_next**2 - sigma_up**2)
near equality) to 2.4e-5, still four orders below a semantic error."""

TALLY = {"exact": 0, "close": 0}
CLOSE_CASES: list[str] = []


def _note(exact: bool, what: str) -> None:
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split("::")[-1].split(" ")[0]
    if exact:
        TALLY["exact"] += 1
        return
    assert not STRICT, f"{what}: not bit-exact (GRAPHRUN_VECTORS=exact)"
    TALLY["close"] += 1
    if test not in CLOSE_CASES:
        CLOSE_CASES.append(test)


def _values(obj: dict[str, Any]) -> list[float] | None:
    vals = obj.get("data", obj.get("first"))
    return None if vals is None else [f32(v) for v in vals]


def match_tensor(actual: Tensor, ref: dict[str, Any], what: str = "tensor", rel: float = REL) -> None:
    """``actual`` equals the vector tensor object ``ref`` (sha256), or is within ``rel`` of its listed
    values and sums when this CPU rounds differently."""
    if "shape" in ref:
        assert list(actual.shape) == list(ref["shape"]), f"{what}: shape {list(actual.shape)} != {ref['shape']}"
    if sha256(actual) == ref["sha256"]:
        _note(True, what)
        return
    flat = actual.detach().double().reshape(-1).cpu()
    expected = _values(ref)
    assert expected is not None or "sum" in ref, f"{what}: sha256 differs and the vector lists no values"
    if expected is not None:
        exp = torch.tensor(expected, dtype=torch.float64)
        scale = float(exp.abs().max()) or 1.0
        diff = float((flat[: len(exp)] - exp).abs().max())
        assert diff <= rel * scale, f"{what}: max |diff| {diff:.3g} > {rel:g} * {scale:.3g} (and sha256 differs)"
    if "sum" in ref and "abs_sum" in ref:
        abs_sum = float(ref["abs_sum"]) or 1.0
        assert abs(float(flat.sum()) - float(ref["sum"])) <= rel * abs_sum, f"{what}: sum differs beyond {rel:g}"
        assert abs(float(flat.abs().sum()) - abs_sum) <= rel * abs_sum, f"{what}: abs_sum differs beyond {rel:g}"
    _note(False, what)


def match_sha(actual: Tensor, sha: str, reference: Tensor | None, what: str = "tensor", rel: float = REL) -> None:
    """Like :func:`match_tensor` for a bare sha256, with the reference tensor when one is known."""
    if sha256(actual) == sha:
        _note(True, what)
        return
    assert reference is not None, f"{what}: sha256 differs"
    scale = float(reference.abs().max()) or 1.0
    diff = float((actual.double() - reference.double()).abs().max())
    assert diff <= rel * scale, f"{what}: max |diff| {diff:.3g} > {rel:g} * {scale:.3g} (and sha256 differs)"
    _note(False, what)


def match_floats(actual: list[float], expected: list[Any], what: str = "values", rel: float = REL, abs_tol: float = 1e-7) -> None:
    """Float lists equal bit for bit (as float32), or within tolerance when this CPU rounds differently."""
    exp = [f32(v) for v in expected]
    assert len(actual) == len(exp), f"{what}: {len(actual)} values, expected {len(exp)}"
    if all(a == e or (math.isnan(a) and math.isnan(e)) for a, e in zip(actual, exp)):
        _note(True, what)
        return
    for a, e in zip(actual, exp):
        if math.isnan(e) or math.isinf(e):
            assert a == e or (math.isnan(a) and math.isnan(e)), f"{what}: {actual} != {exp}"
        else:
            assert abs(a - e) <= max(abs_tol, rel * abs(e)), f"{what}: {actual} != {exp}"
    _note(False, what)


def match_mean(actual: float, expected: float, what: str = "mean", rel: float = REL) -> None:
    """A float64 mean of a float32 tensor: equal to 1e-9 relative (summation order), else within ``rel``."""
    if actual == pytest_approx(expected, 1e-9, 1e-12):
        _note(True, what)
        return
    # A mean of signed O(1) values can be near 0: the absolute floor keeps the check meaningful (a
    # semantic difference moves it by > 1e-3).
    assert abs(actual - expected) <= max(rel * abs(expected), 1e-5), f"{what}: {actual} != {expected}"
    _note(False, what)


def pytest_approx(value: float, rel: float, abs_: float) -> Any:
    import pytest

    return pytest.approx(value, rel=rel, abs=abs_)
