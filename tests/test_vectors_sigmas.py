"""Model sampling tables and sigma schedules against ComfyUI's reference sigmas (bit-exact)."""
from __future__ import annotations

import math

import pytest
import torch

from graphrun.nodes.sampling.schedules import (
    SCHEDULERS,
    FlowModelSampling,
    advanced_sigmas,
    basic_scheduler_sigmas,
    ksampler_sigmas,
)

from toy_model import f32, load, sha256

torch.set_num_threads(1)

DATA = load("sigmas.json")
CASES = DATA["cases"]


def _case_id(n: int, case: dict) -> str:
    i = case["inputs"]
    kind = {"KSampler.set_steps": "ksampler", "BasicScheduler": "basic", "KSamplerAdvanced": "advanced"}[i["kind"]]
    text = f"{n:03d}-{kind}-{i['scheduler']}-shift{i['shift']}-steps{i['steps']}"
    if kind == "advanced":
        text += f"-{i['start_at_step']}to{i['end_at_step']}-leftover_{i['return_with_leftover_noise']}"
    else:
        text += f"-denoise{i['denoise']}"
    if i.get("sampler", "euler") != "euler":
        text += f"-{i['sampler']}"
    return text


def _assert_sigmas(actual: torch.Tensor, expected: list) -> None:
    assert actual.dtype == torch.float32 and actual.ndim == 1
    got = actual.tolist()
    want = [f32(v) for v in expected]
    assert len(got) == len(want), f"{got} != {want}"
    for a, b in zip(got, want):
        assert (math.isnan(a) and math.isnan(b)) or a == b, f"{got} != {want}"


def test_scheduler_names_match_snapshot() -> None:
    assert list(SCHEDULERS) == DATA["scheduler_names_in_snapshot"]


@pytest.mark.parametrize("entry", DATA["model_sampling"], ids=lambda m: f"shift{m['shift']}")
def test_model_sampling_table(entry: dict) -> None:
    ms = FlowModelSampling(entry["shift"], entry["multiplier"])
    assert ms.sigmas.dtype == torch.float32 and len(ms.sigmas) == entry["table_len"]
    assert sha256(ms.sigmas) == entry["table_sha256"]
    assert float(ms.sigma_min) == entry["sigma_min"] and float(ms.sigma_max) == entry["sigma_max"]
    assert ms.sigmas[:8].tolist() == entry["table_first8"]
    assert ms.sigmas[-8:].tolist() == entry["table_last8"]
    assert float(ms.sigmas[500]) == entry["table_index_500"]
    for percent, sigma in entry["percent_to_sigma"].items():
        assert ms.percent_to_sigma(float(percent)) == sigma
    for timestep, sigma in entry["sigma_of_timestep"].items():
        assert float(ms.sigma(torch.tensor(float(timestep)))) == sigma


@pytest.mark.parametrize("case", CASES, ids=[_case_id(n, c) for n, c in enumerate(CASES)])
def test_sigmas(case: dict) -> None:
    i, e = case["inputs"], case["expected"]
    ms = FlowModelSampling(i["shift"], i["multiplier"])
    if i["kind"] == "KSampler.set_steps":
        sigmas = ksampler_sigmas(ms, i["scheduler"], i["steps"], i["denoise"], i["sampler"])
    elif i["kind"] == "BasicScheduler":
        sigmas = basic_scheduler_sigmas(ms, i["scheduler"], i["steps"], i["denoise"])
    else:
        _assert_sigmas(ksampler_sigmas(ms, i["scheduler"], i["steps"], 1.0, i["sampler"]), e["full_sigmas"])
        sigmas = advanced_sigmas(
            ms, i["scheduler"], i["steps"], i["start_at_step"], i["end_at_step"],
            i["return_with_leftover_noise"] == "disable", i["sampler"],
        )
        assert (len(sigmas) > 0) == e["sampled"]
    _assert_sigmas(sigmas, e["sigmas"] or [])
    assert len(sigmas) == e.get("len", 0)


def test_unknown_scheduler() -> None:
    with pytest.raises(ValueError, match="unknown scheduler"):
        ksampler_sigmas(FlowModelSampling(3.0), "nope", 4)


def test_model_sampling_scaling() -> None:
    ms = FlowModelSampling(3.0)
    noise, latent = torch.randn(1, 16, 2, 2), torch.randn(1, 16, 2, 2)
    sigma = torch.tensor(0.25)
    x = ms.noise_scaling(sigma, noise, latent)
    torch.testing.assert_close(x, 0.25 * noise + 0.75 * latent)
    torch.testing.assert_close(ms.inverse_noise_scaling(sigma, x), x / 0.75)
    v = torch.randn(2, 16, 2, 2)
    xs = torch.randn(2, 16, 2, 2)
    sig = torch.tensor([0.5, 0.1])
    torch.testing.assert_close(ms.calculate_denoised(sig, v, xs), xs - v * sig.view(2, 1, 1, 1))
    assert ms == FlowModelSampling(3.0) and hash(ms) == hash(FlowModelSampling(3.0))
