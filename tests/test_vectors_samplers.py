"""Full sampling runs against ComfyUI's reference trajectories on the toy flow model (bit-exact).

Two vector sets: ComfyUI v0.18.1 (``v0.18.1/samplers.json``: every sampler and scheduler, ancestral
noise from ``seed + 1`` on the CPU) and ComfyUI of October 2025 (``samplers.json``, seed offset 0,
the ``comfy: "2025.10"`` setting). Every case is replayed through graphrun's pipeline functions (ksampler,
ksampler_advanced, sample_custom, latent_upscale*) and compared on: the sigmas handed to the sampler,
per-step callback records, the initial state, model calls (count, batch sizes, sigmas), the sampler's
own noise draws, and the final samples (sha256).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from graphrun.nodes.resample import latent_upscale, latent_upscale_by
from graphrun.nodes.sampling.guidance import BasicGuider, CFGGuider
from graphrun.nodes.sampling.noise import DisableNoise, RandomNoise
from graphrun.nodes.sampling.pipeline import guided_sample, ksampler, ksampler_advanced, sample_custom
from graphrun.nodes.sampling.samplers import (
    SAMPLERS,
    BrownianTreeNoiseSampler,
    StepInfo,
    default_noise_sampler,
    get_sampler,
)
from graphrun.nodes.sampling.schedules import (
    FlowModelSampling,
    advanced_sigmas,
    basic_scheduler_sigmas,
    ksampler_sigmas,
)
from toy_model import ToyDenoiser, f32, load, match_floats, match_mean, match_sha, match_tensor, sha256, tensor_of, toy_cond

torch.set_num_threads(1)

SETS = {"v0.18.1": ("v0.18.1/samplers.json", 1), "2025.10": ("samplers.json", 0)}
"""Vector set -> (file, CPU seed offset of default_noise_sampler in that ComfyUI)."""
MEAN = {"rel": 1e-9, "abs": 1e-12}


def _case_id(n: int, case: dict) -> str:
    i = case["inputs"]
    node = i["node"]
    if node.startswith("workflow"):
        return f"{n:02d}-workflow-3stage"
    kind = {"KSampler": "ksampler", "KSamplerAdvanced": "advanced", "SamplerCustom": "custom",
            "SamplerCustomAdvanced": "custom_advanced"}.get(node, "advanced_x2")
    label = i.get("label", "")
    return "-".join(p for p in (f"{n:02d}", kind, label, i["sampler_name"], i["scheduler"], f"seed{i['seed'] if 'seed' in i else i['noise_seed']}") if p)


def _latent(spec: dict, fixtures: dict) -> Tensor:
    if "fixture" in spec:
        return tensor_of(fixtures[spec["fixture"]])
    return torch.zeros(spec["zeros"])


@dataclass
class Run:
    """What one sampling stage did."""

    output: Tensor
    sigmas: Tensor
    seed: int
    offset: int
    sampler_name: str
    latent_shape: tuple[int, ...]
    steps: list[StepInfo] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    denoised_output: Tensor | None = None
    rerun: Callable[[dict[str, Any]], Tensor] | None = None
    """Replays the stage with extra sampler options (a recording noise sampler)."""


def _stage(kind: str, p: dict, toy: ToyDenoiser, latent: Tensor, cond_c: float, uncond_c: float, offset: int) -> Run:
    """Run one KSampler / KSamplerAdvanced / SamplerCustom stage with the toy model."""
    ms = toy.model_sampling
    pos = toy_cond(cond_c)
    neg = toy_cond(uncond_c) if uncond_c is not None else None
    steps: list[StepInfo] = []
    denoised: Tensor | None = None
    fixed_shape = (latent.shape[0], 16, *latent.shape[2:])
    if kind == "KSampler":
        sigmas = ksampler_sigmas(ms, p["scheduler"], p["steps"], p["denoise"], p["sampler_name"])

        def go(options: dict | None = None, cb=None) -> Tensor:
            return ksampler(
                toy, p["seed"], p["steps"], p["cfg"], p["sampler_name"], p["scheduler"], pos, neg, latent,
                p["denoise"], callback=cb, sampler_options=options, cpu_seed_offset=offset,
            )

        seed = p["seed"]
    elif kind == "KSamplerAdvanced":
        sigmas = advanced_sigmas(
            ms, p["scheduler"], p["steps"], p["start_at_step"], p["end_at_step"],
            p["return_with_leftover_noise"] == "disable", p["sampler_name"],
        )

        def go(options: dict | None = None, cb=None) -> Tensor:
            return ksampler_advanced(
                toy, p["add_noise"] == "enable", p["noise_seed"], p["steps"], p["cfg"], p["sampler_name"],
                p["scheduler"], pos, neg, latent, p["start_at_step"], p["end_at_step"],
                p["return_with_leftover_noise"] == "enable", callback=cb, sampler_options=options,
                cpu_seed_offset=offset,
            )

        seed = p["noise_seed"]
    elif kind == "SamplerCustomAdvanced":
        sigmas = basic_scheduler_sigmas(ms, p["scheduler"], p["steps"], p["denoise"])
        noise_kind, noise_args = next(iter(p["noise_node"].items()))
        noise = RandomNoise(noise_args["noise_seed"]) if noise_kind == "RandomNoise" else DisableNoise(0)
        guider_kind, guider_args = next(iter(p["guider_node"].items()))
        guider = (
            BasicGuider(toy, pos) if guider_kind == "BasicGuider" else CFGGuider(toy, pos, neg, guider_args["cfg"])
        )

        def go(options: dict | None = None, cb=None) -> Tensor:
            nonlocal denoised
            result, denoised = sample_custom(
                guider, noise, p["sampler_name"], sigmas, latent, callback=cb, sampler_options=options,
                cpu_seed_offset=offset,
            )
            return result

        seed = noise.seed
    else:
        sigmas = basic_scheduler_sigmas(ms, p["scheduler"], p["steps"], p["denoise"])
        noise = RandomNoise(p["noise_seed"]) if p["add_noise"] else DisableNoise(p["noise_seed"])

        def go(options: dict | None = None, cb=None) -> Tensor:
            nonlocal denoised
            result, denoised = sample_custom(
                toy, noise, p["sampler_name"], sigmas, latent, positive=pos, negative=neg, cfg=p["cfg"],
                callback=cb, sampler_options=options, cpu_seed_offset=offset,
            )
            return result

        seed = p["noise_seed"]
    calls_before = len(toy.calls)
    out = go(cb=steps.append)
    calls = toy.calls[calls_before:]
    return Run(out, sigmas, seed, offset, p["sampler_name"], fixed_shape, steps, calls, denoised, go)


def _check_noise_draws(run: Run, expected: list[dict]) -> None:
    x_like = torch.zeros(run.latent_shape)
    if run.sampler_name in ("res_multistep", "res_multistep_cfg_pp"):
        # ComfyUI draws these and multiplies them by sigma_up = 0; graphrun skips the draws. Check the
        # stream itself, and that the sampler needs none of it.
        draw = default_noise_sampler(x_like, run.seed, run.offset)
        for rec in expected:
            assert sha256(draw(None, None)) == rec["sha256"]
        return
    if expected[0]["sampler"] == "BrownianTreeNoiseSampler":
        source = BrownianTreeNoiseSampler.for_schedule(x_like, run.sigmas, run.seed)
    else:
        source = default_noise_sampler(x_like, run.seed, run.offset)
    drawn: list[tuple[float, float, Tensor]] = []

    def recording(sigma: Tensor, sigma_next: Tensor) -> Tensor:
        noise = source(sigma, sigma_next)
        drawn.append((float(sigma), float(sigma_next), noise))
        return noise

    replay = run.rerun({"noise_sampler": recording})
    assert torch.equal(replay, run.output), "an explicit noise sampler must reproduce the default one"
    assert len(drawn) == len(expected)
    for k, ((sigma, sigma_next, noise), rec) in enumerate(zip(drawn, expected)):
        match_floats([sigma, sigma_next], [rec["sigma"], rec["sigma_next"]], f"draw {k} sigmas")
        match_tensor(noise, rec, f"draw {k}")


def _check_stage(run: Run, e: dict) -> None:
    # Sigmas handed to the sampler.
    match_floats(run.sigmas.tolist(), e["sigmas"], "sigmas")
    # Model calls.
    assert len(run.calls) == e["model_calls"]
    assert [c["batch"] for c in run.calls] == e["model_call_batch_sizes"]
    match_floats([c["sigma"] for c in run.calls], e["model_call_sigmas"], "model call sigmas")
    # Per-step callback records.
    assert len(run.steps) == len(e["steps"])
    for info, rec in zip(run.steps, e["steps"]):
        assert info.i == rec["i"] and info.total == len(run.sigmas) - 1
        # The SDE samplers evaluate their first step a hair below sigma 1 (callback_sigma); the older
        # records list the schedule's sigma instead.
        sigma = f32(rec.get("callback_sigma", rec["sigma"]))
        if run.sampler_name == "dpmpp_2m_sde" and info.i == 0 and sigma >= 1:
            sigma = f32(e["model_call_sigmas"][0])
        match_floats([info.sigma], [sigma], f"step {info.i} sigma")
        match_mean(float(info.denoised.double().mean()), rec["denoised_mean"], f"step {info.i} denoised mean")
        match_mean(float(info.x.double().mean()), rec["x_mean"], f"step {info.i} x mean")
    # x_init is the state ComfyUI's first callback saw; uni_pc and dpm_adaptive call back after their
    # step (uni_pc's state also rescaled), so there it is not the start state.
    if "x_init" in e and run.steps and run.sampler_name not in ("uni_pc", "uni_pc_bh2", "dpm_adaptive"):
        match_tensor(run.steps[0].x, e["x_init"], "x_init")
    # Final samples (raw latent) and SamplerCustom's denoised output.
    assert run.output.dtype == torch.float32
    match_tensor(run.output, e["samples"], "samples")
    if "denoised_output" in e:
        assert run.denoised_output is not None
        match_tensor(run.denoised_output, e["denoised_output"], "denoised_output")
    if e.get("noise_draws"):
        _check_noise_draws(run, e["noise_draws"])
    else:
        assert not e["ancestral_noise"]["uses_extra_noise"]


def _run_workflow(i: dict, e: dict, offset: int) -> None:
    toy = ToyDenoiser(FlowModelSampling(i["shift"], i["multiplier"]))
    outputs: dict[str, Tensor] = {}

    def ref(name: str) -> Tensor:
        return outputs[name.removesuffix(".output")]

    for node in i["graph"]:
        kind, nid = node["node"], node["id"]
        if kind in ("EmptySD3LatentImage", "EmptyLatentImage"):
            channels = 16 if kind == "EmptySD3LatentImage" else 4
            outputs[nid] = torch.zeros(node["batch_size"], channels, node["height"] // 8, node["width"] // 8)
        elif kind == "LatentUpscale":
            outputs[nid] = latent_upscale(ref(node["latent"]), node["upscale_method"], node["width"], node["height"], node["crop"])
        elif kind == "LatentUpscaleBy":
            outputs[nid] = latent_upscale_by(ref(node["latent"]), node["upscale_method"], node["scale_by"])
        elif kind in ("KSampler", "SamplerCustom"):
            p = dict(node)
            if kind == "SamplerCustom":
                p["sampler_name"] = node["sampler"]["KSamplerSelect"]["sampler_name"]
                p.update(node["sigmas"]["BasicScheduler"])
            run = _stage(kind, p, toy, ref(node["latent_image"]), i["cond_c"], i["uncond_c"], offset)
            _check_stage(run, e[nid])
            outputs[nid] = run.output
        else:
            raise AssertionError(f"workflow node {kind} not handled by the test")
        if "output" in e.get(nid, {}):
            assert list(outputs[nid].shape) == e[nid]["shape"]
            match_tensor(outputs[nid], e[nid]["output"], f"{nid} output")


def _all_cases() -> list:
    params = []
    for set_name, (file, offset) in SETS.items():
        data = load(file)
        for n, case in enumerate(data["cases"]):
            params.append(pytest.param(case, data["fixtures"], offset, id=f"{set_name}-{_case_id(n, case)}"))
    return params


@pytest.mark.parametrize(("case", "fixtures", "offset"), _all_cases())
def test_sampler_vectors(case: dict, fixtures: dict, offset: int) -> None:
    i, e = case["inputs"], case["expected"]
    if i["node"].startswith("workflow"):
        _run_workflow(i, e, offset)
        return
    toy = ToyDenoiser(FlowModelSampling(i["shift"], i["multiplier"]))
    latent = _latent(i["latent"], fixtures)
    if "error" in e:
        with pytest.raises(ValueError, match="Overflow when unpacking long long"):
            _stage(i["node"], i, toy, latent, i["cond_c"], i["uncond_c"], offset)
        return
    if i["node"].startswith("KSamplerAdvanced x2"):
        shared = {k: i[k] for k in ("sampler_name", "scheduler", "steps", "cfg")}
        run1 = _stage("KSamplerAdvanced", {**shared, **i["stage1"]}, toy, latent, i["cond_c"], i["uncond_c"], offset)
        _check_stage(run1, e["stage1"])
        run2 = _stage("KSamplerAdvanced", {**shared, **i["stage2"]}, toy, run1.output, i["cond_c"], i["uncond_c"], offset)
        _check_stage(run2, e["stage2"])
        return
    run = _stage(i["node"], i, toy, latent, i["cond_c"], i["uncond_c"], offset)
    if e.get("output_equals_input"):
        assert run.output is latent or torch.equal(run.output, latent)
        assert not run.steps and not run.calls and not e["sigmas"]
        assert sha256(run.output) == e["samples"]["sha256"]
        return
    _check_stage(run, e)


# ---------------------------------------------------------------------------------------------
# Behaviour beyond the vectors.


def test_registry_and_docstrings() -> None:
    assert set(SAMPLERS) >= {"euler", "euler_ancestral", "res_multistep", "dpmpp_2m", "dpmpp_2m_sde", "heun", "lcm", "ddim"}
    for fn in SAMPLERS.values():
        assert fn.__doc__ and len(fn.__doc__.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="unknown sampler"):
        get_sampler("dpm_3")


def test_callback_exception_stops_sampling() -> None:
    toy = ToyDenoiser(FlowModelSampling(3.0))

    class Stop(Exception):
        pass

    def cb(info: StepInfo) -> None:
        if info.i == 2:
            raise Stop

    with pytest.raises(Stop):
        ksampler(toy, 0, 8, 1.0, "euler", "simple", toy_cond(0.5), toy_cond(0.0), torch.zeros(1, 16, 2, 2), callback=cb)
    assert len(toy.calls) == 3


def test_cpu_seed_offset_selects_the_comfyui_convention() -> None:
    """Ancestral noise on the CPU: ComfyUI v0.18.1 draws from seed + 1 (the default), ComfyUI of
    October 2025 from seed (cpu_seed_offset=0)."""
    ms = FlowModelSampling(3.0)
    sigmas = ksampler_sigmas(ms, "simple", 4)
    guider = BasicGuider(ToyDenoiser(ms), toy_cond(0.5))
    noise = torch.randn(1, 16, 3, 2, generator=torch.Generator().manual_seed(3))
    latent = torch.zeros(1, 16, 3, 2)
    current, _ = guided_sample(guider, noise, latent, "euler_ancestral", sigmas, 6)
    old_6, _ = guided_sample(guider, noise, latent, "euler_ancestral", sigmas, 6, cpu_seed_offset=0)
    old_7, _ = guided_sample(guider, noise, latent, "euler_ancestral", sigmas, 7, cpu_seed_offset=0)
    assert torch.equal(current, old_7) and not torch.equal(current, old_6)
    # A sampler option wins over the setting.
    forced, _ = guided_sample(guider, noise, latent, "euler_ancestral", sigmas, 6, cpu_seed_offset=0,
                              sampler_options={"cpu_seed_offset": 1})
    assert torch.equal(forced, current)


def test_sampler_options_and_eta_zero() -> None:
    """euler_ancestral with eta 0 is deterministic (no noise drawn)."""
    ms = FlowModelSampling(3.0)
    guider = BasicGuider(ToyDenoiser(ms), toy_cond(0.5))
    sigmas = ksampler_sigmas(ms, "simple", 4)
    noise = torch.randn(1, 16, 3, 2, generator=torch.Generator().manual_seed(3))
    latent = torch.zeros(1, 16, 3, 2)
    sampler = get_sampler("euler_ancestral", {"eta": 0.0})
    a, _ = guided_sample(guider, noise, latent, sampler, sigmas, 1)
    b, _ = guided_sample(guider, noise, latent, sampler, sigmas, 2)
    assert torch.equal(a, b)
