"""SamplerER_SDE's eta: ComfyUI 0.33 (the default setting) against ComfyUI v0.18.1.

ComfyUI 0.32 (commit 40e46c71, PR #15428) made eta scale the ER-SDE solver type's noise too (eta 0 now
turns every solver type into the ODE) and lowered eta's maximum from 100 to 10. Under v0.18.1 eta applies
to the reverse-time SDE only: the ER-SDE solver gives one picture for every eta. The reference PNGs in
``tests/data/comfy/v0.33/er_sde/`` were written by real ComfyUI 0.33 (de6b062f) and v0.18.1 (4b1444fc)
from these workflows (SamplerCustom + SamplerER_SDE + BasicScheduler, 256x256, 8 steps, seed 3) on the
tiny Z-Image; the criterion is the pipeline tests' (>= 99.9 % identical uint8 values, none off by > 2).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import graphrun
from graphrun.engine.context import RunOptions
from graphrun.engine.executor import Runner
from test_comfy_pipeline import PIPELINE, pixel_agreement

ER_SDE = Path(__file__).parent / "data" / "comfy" / "v0.33" / "er_sde"
MODELS = str(PIPELINE / "models")


def _workflow(case: str) -> dict[str, Any]:
    return json.loads((ER_SDE / case / "workflow.api.json").read_text())


def _run(workflow: dict[str, Any], out: Path, comfy: str | None = None) -> Path:
    """Run an API workflow on the tiny model files; the path of its one PNG."""
    out.mkdir(parents=True)
    path = out / "workflow.api.json"
    path.write_text(json.dumps(workflow))
    options = RunOptions(output_dir=out, comfy=comfy, extra={"models_dirs": [MODELS]})
    (png,) = graphrun.load(path, runner=Runner(options)).run().files
    return png


def _assert_matches(reference_case: str, png: Path) -> None:
    (reference,) = (ER_SDE / reference_case).glob("*.png")
    identical, worst = pixel_agreement(reference, png)
    assert identical >= 0.999 and worst <= 2, f"{png.name} vs {reference_case}: {identical:.4%} identical, max {worst}"


@pytest.mark.parametrize("case", ["er_sde_eta0.5", "er_sde_eta0", "er_sde_eta2.5", "rt_sde_eta0.5"])
def test_default_setting_matches_comfyui_033(case: str, tmp_path: Path) -> None:
    """eta 0.5 and 2.5 each change the ER-SDE solver's picture; eta 0 is the ODE; the reverse-time SDE
    keeps its x^(eta + 1) scaling."""
    _assert_matches(case, _run(_workflow(case), tmp_path / case))


def test_ode_solver_type_is_eta_0(tmp_path: Path) -> None:
    """ComfyUI 0.33 wrote byte-identical PNGs for solver_type ODE (eta 1) and ER-SDE at eta 0."""
    workflow = _workflow("er_sde_eta0")
    workflow["11"]["inputs"].update(solver_type="ODE", eta=1.0)
    _assert_matches("er_sde_eta0", _run(workflow, tmp_path / "ode"))


@pytest.mark.parametrize("eta", [0.5, 2.5, 11.0])
def test_v0181_setting_ignores_eta_for_the_er_sde_solver(eta: float, tmp_path: Path) -> None:
    """Under --comfy 0.18.1 the ER-SDE solver type ignores eta (v0.18.1 wrote one PNG for eta 0, 0.5, 1,
    2.5 and 11), and eta up to 100 is accepted as there."""
    workflow = _workflow("er_sde_eta0.5")
    workflow["11"]["inputs"]["eta"] = eta
    _assert_matches("v0.18.1_er_sde_eta0.5", _run(workflow, tmp_path / "out", comfy="0.18.1"))


def test_default_setting_differs_from_v0181(tmp_path: Path) -> None:
    """The 0.33 picture at eta 0.5 is not v0.18.1's: the setting matters."""
    png = _run(_workflow("er_sde_eta0.5"), tmp_path / "out")
    (old,) = (ER_SDE / "v0.18.1_er_sde_eta0.5").glob("*.png")
    assert pixel_agreement(old, png)[0] < 0.5


def test_eta_above_10_is_refused_under_033(tmp_path: Path) -> None:
    """ComfyUI 0.33 refuses the prompt ("Value 11.0 bigger than max of 10.0: eta" on SamplerER_SDE 11);
    graphrun refuses it at validation, naming the node, the input, the limit and the ways out; under
    ``--comfy 0.18.1`` (maximum 100) the same graph validates."""
    workflow = _workflow("er_sde_eta0.5")
    workflow["11"]["inputs"]["eta"] = 11.0
    path = tmp_path / "wf.api.json"
    path.write_text(json.dumps(workflow))
    errors = [d for d in graphrun.load(path).validate() if d.is_error]
    assert [(d.node, d.input) for d in errors] == [("er_sde", "eta")], errors
    assert "input 'eta' is 11, above the maximum of 10 that ComfyUI 0.33 allows" in errors[0].message
    assert "--comfy 0.18.1" in errors[0].message
    old = Runner(RunOptions(output_dir=tmp_path, comfy="0.18.1", extra={"models_dirs": [MODELS]}))
    assert not [d for d in graphrun.load(path, runner=old).validate() if d.is_error]


def test_eta_above_100_is_refused_at_validation(tmp_path: Path) -> None:
    """Above v0.18.1's maximum too: a validation error naming the node and the input."""
    workflow = _workflow("er_sde_eta0.5")
    workflow["11"]["inputs"]["eta"] = 101.0
    path = tmp_path / "wf.api.json"
    path.write_text(json.dumps(workflow))
    diags = graphrun.load(path).validate()
    errors = [d for d in diags if d.is_error]
    assert [(d.input, "ComfyUI node 11 'ER-SDE'" in d.message) for d in errors] == [("eta", True)], errors
    assert "less than or equal to 100" in errors[0].message


def test_options_follow_the_setting() -> None:
    """The node's semantics as sampler options, without a model."""
    from graphrun.nodes.sampling.samplers.exponential import ErSdeNoiseScaler, er_sde_options

    new = er_sde_options("ER-SDE", 3, 0.5, 1.0, eta_scales_er_sde=True)
    assert new == {"noise_scaler": ErSdeNoiseScaler("ER-SDE", 0.5), "s_noise": 1.0, "max_stage": 3}
    assert er_sde_options("ER-SDE", 2, 0.0, 1.0, eta_scales_er_sde=True)["noise_scaler"] == ErSdeNoiseScaler("ODE", 0.0)
    assert er_sde_options("ER-SDE", 2, 0.0, 1.0, eta_scales_er_sde=True)["s_noise"] == 0.0
    old = er_sde_options("ER-SDE", 3, 0.5, 1.0, eta_scales_er_sde=False)
    assert old["noise_scaler"] == ErSdeNoiseScaler("ER-SDE", 1.0) and old["s_noise"] == 1.0
    # v0.18.1 at eta 0: the ER-SDE solver keeps its noise; the reverse-time SDE becomes the ODE.
    assert er_sde_options("ER-SDE", 3, 0.0, 1.0, eta_scales_er_sde=False)["s_noise"] == 1.0
    assert er_sde_options("Reverse-time SDE", 3, 0.0, 1.0, eta_scales_er_sde=False)["s_noise"] == 0.0
    with pytest.raises(ValueError, match="unknown ER-SDE solver_type 'SDE'"):
        ErSdeNoiseScaler("SDE")


# --- the other sampler changes of ComfyUI 0.33 (tests/data/comfy/v0.33/samplers/) -------------------------------

SAMPLERS_033 = ER_SDE.parent / "samplers"


def _assert_sampler_case(case: str, png: Path) -> None:
    (reference,) = (SAMPLERS_033 / case).glob("*.png")
    identical, worst = pixel_agreement(reference, png)
    assert identical >= 0.999 and worst <= 2, f"{png.name} vs {case}: {identical:.4%} identical, max {worst}"


@pytest.mark.parametrize("case", ["lcm_s_noise_0.5_1.5_clip1", "lcm_defaults"])
def test_sampler_lcm_matches_comfyui_033(case: str, tmp_path: Path) -> None:
    """0.33's SamplerLCM: noise factor 0.5 -> 1.5 over the steps, noise clamped to 1 std; at its defaults
    it is KSamplerSelect's lcm (ComfyUI 0.33 and v0.18.1 wrote the same PNG for that)."""
    workflow = json.loads((SAMPLERS_033 / case / "workflow.api.json").read_text())
    _assert_sampler_case(case, _run(workflow, tmp_path / case))


def test_lcm_of_ksamplerselect_is_unchanged_under_v0181(tmp_path: Path) -> None:
    workflow = json.loads((SAMPLERS_033 / "lcm_defaults" / "workflow.api.json").read_text())
    workflow["11"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "lcm"}}
    _assert_sampler_case("lcm_defaults", _run(workflow, tmp_path / "out", comfy="0.18.1"))


@pytest.mark.parametrize("comfy", [None, "0.18.1"])
def test_res_multistep_ancestral_on_a_repeated_sigma(comfy: str | None, tmp_path: Path) -> None:
    """0.33 (88fec4b6) no longer draws noise where sigma_up is 0; with eta > 0 that is a repeated sigma,
    whose next multistep step has infinite coefficients: both ComfyUI versions write one uniform image."""
    case = "res_multistep_ancestral_repeated_sigmas"
    workflow = json.loads((SAMPLERS_033 / case / "workflow.api.json").read_text())
    with pytest.warns(RuntimeWarning):  # the non-finite decode, as in ComfyUI
        png = _run(workflow, tmp_path / "out", comfy=comfy)
    _assert_sampler_case(case, png)


def test_er_sde_eta_1_is_the_default_scaler_bit_for_bit() -> None:
    """The reason v0.18.1's ER-SDE (eta ignored) and KSampler's er_sde can run as ErSdeNoiseScaler at
    eta 1: a power of exactly 1 returns its base, so the trajectories are identical; likewise v0.18.1's
    ODE scaler x^(0 + 1) is 0.33's x."""
    import torch

    from graphrun.nodes.sampling.samplers.exponential import ErSdeNoiseScaler, sample_er_sde
    from graphrun.nodes.sampling.schedules import FlowModelSampling, basic_scheduler_sigmas

    ms = FlowModelSampling(shift=3.0)
    sigmas = basic_scheduler_sigmas(ms, "simple", 6, 1.0)
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(5))

    def model(z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return torch.tanh(0.9 * z) * (1.0 - sigma).view(-1, 1, 1, 1)

    def run(**options):
        return sample_er_sde(model, x, sigmas, seed=3, model_sampling=ms, **options)

    assert torch.equal(run(), run(noise_scaler=ErSdeNoiseScaler("ER-SDE", 1.0)))
    ode = run(noise_scaler=ErSdeNoiseScaler("ODE"), s_noise=0.0)
    assert torch.equal(ode, run(noise_scaler=ErSdeNoiseScaler("Reverse-time SDE", 0.0), s_noise=0.0))
    assert not torch.equal(run(), run(noise_scaler=ErSdeNoiseScaler("ER-SDE", 0.5)))
