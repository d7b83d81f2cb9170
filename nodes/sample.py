"""Sampling nodes: Sampler (KSampler), SamplerAdvanced, and the custom-sampling family
(SamplerCustom, SamplerCustomAdvanced, KSamplerSelect, SamplerER_SDE, SamplerLCM, BasicScheduler, RandomNoise,
DisableNoise, CFGGuider, BasicGuider, SplitSigmas).

The math lives in ``graphrun.nodes.sampling`` as pure functions reproducing ComfyUI bit for
bit; these declarations wire them to model handles, progress and Ctrl-C.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

from pydantic import Field

from graphrun.engine.context import Context
from graphrun.engine.node import CheckEnv, Choices, Comfy, Problem, node

from .latent import LatentValue
from .sampling.registry import sampler_names, scheduler_names
from .types import Conditioning, Guider, Latent, Model, Noise, Sampler, Sigmas

if TYPE_CHECKING:
    from .models import ModelHandle

SamplerName = Annotated[str, Choices(sampler_names), Field(description="a registered sampler (plugins can add some)")]
SchedulerName = Annotated[str, Choices(scheduler_names), Field(description="a registered scheduler (plugins can add some)")]
Seed = Annotated[int, Field(ge=0, le=2**64 - 1, description="noise seed")]
Steps = Annotated[int, Field(ge=1, le=10_000)]
Cfg = Annotated[float, Field(ge=0.0, le=100.0, description="classifier-free guidance; 1 skips the negative")]
Denoise = Annotated[float, Field(ge=0.0, le=1.0, description="< 1 runs `steps` steps on the tail of a longer schedule")]
#: How ComfyUI's editor steps a cfg widget (0.1 a click, values rounded to 0.01); graphrun takes any cfg in range.
CFG_WIDGET = {"step": 0.1, "round": 0.01}
ADVANCED = {"advanced": True}  # a widget ComfyUI's editor shows only with the node's advanced inputs


def cpu_seed_offset(comfy_version: str) -> int:
    """The CPU seed offset of ComfyUI's ``default_noise_sampler`` in that ComfyUI version: 1 since
    v0.7.0 (commit 1e4e342f), 0 in October 2025. On CUDA ComfyUI seeds with the seed itself."""
    return 0 if comfy_version == "2025.10" else 1


def _progress(ctx: Context):
    return lambda info: ctx.progress(info.i + 1, info.total)


def _sampler_rows(calls: list[dict[str, Any]]) -> list[LatentValue]:
    """KSampler on several rows at once: each row's seed, prompts and latent; shared model and settings."""
    from . import rows
    from .sampling.pipeline import ksampler_rows

    rows.same(calls, "model", "steps", "cfg", "sampler", "scheduler", "denoise")
    rows.no_batch_index(calls)
    first, ctx = calls[0], calls[0]["ctx"]
    with first["model"].ready() as denoiser:
        samples = ksampler_rows(
            denoiser, [c["seed"] for c in calls], first["steps"], first["cfg"], first["sampler"], first["scheduler"],
            [c["positive"] for c in calls], [c["negative"] for c in calls], [c["latent"].samples for c in calls],
            first["denoise"], callback=_progress(ctx), cpu_seed_offset=cpu_seed_offset(ctx.comfy_version),
        )
    return [LatentValue(sample) for sample in samples]


@node(
    "Sampler",
    category="sampling",
    batch=_sampler_rows,
    comfy=Comfy(
        "KSampler",
        inputs={"latent": "latent_image", "sampler": "sampler_name"},
        control_after_generate=("seed",),
        display_name="KSampler",
        input_order=("model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
                     "latent_image", "denoise"),
        options={"cfg": CFG_WIDGET},
    ),
)
def sampler(
    ctx: Context,
    model: Model,
    positive: Conditioning,
    negative: Conditioning,
    latent: Latent,
    seed: Seed = 0,
    steps: Steps = 20,
    cfg: Cfg = 8.0,
    sampler: SamplerName = "euler",
    scheduler: SchedulerName = "simple",
    denoise: Denoise = 1.0,
) -> Latent:
    """Denoise a latent (ComfyUI KSampler semantics).

    Noise comes from `seed` on the CPU exactly as ComfyUI draws it. `denoise` < 1 runs `steps`
    steps on the last part of a schedule of int(steps/denoise) steps (img2img, upscale passes).
    cfg 1 evaluates only the positive prompt.
    """
    from .sampling.pipeline import ksampler

    handle: ModelHandle = model
    with handle.ready() as denoiser:
        samples = ksampler(
            denoiser, seed, steps, cfg, sampler, scheduler, positive, negative, latent.samples, denoise,
            batch_index=latent.batch_index, callback=_progress(ctx),
            cpu_seed_offset=cpu_seed_offset(ctx.comfy_version),
        )
    return LatentValue(samples, latent.batch_index)


@node(
    "SamplerAdvanced",
    category="sampling",
    comfy=Comfy(
        "KSamplerAdvanced",
        inputs={"latent": "latent_image", "sampler": "sampler_name"},
        control_after_generate=("noise_seed",),
        display_name="KSampler (Advanced)",
        input_order=("model", "add_noise", "noise_seed", "steps", "cfg", "sampler_name", "scheduler", "positive",
                     "negative", "latent_image", "start_at_step", "end_at_step", "return_with_leftover_noise"),
        options={"cfg": CFG_WIDGET, "add_noise": ADVANCED, "start_at_step": ADVANCED, "end_at_step": ADVANCED,
                 "return_with_leftover_noise": ADVANCED},
    ),
)
def sampler_advanced(
    ctx: Context,
    model: Model,
    positive: Conditioning,
    negative: Conditioning,
    latent: Latent,
    add_noise: Literal["enable", "disable"] = "enable",
    noise_seed: Seed = 0,
    steps: Steps = 20,
    cfg: Cfg = 8.0,
    sampler: SamplerName = "euler",
    scheduler: SchedulerName = "simple",
    start_at_step: Annotated[int, Field(ge=0, le=10_000)] = 0,
    end_at_step: Annotated[int, Field(ge=0, le=10_000)] = 10_000,
    return_with_leftover_noise: Literal["disable", "enable"] = "disable",
) -> Latent:
    """Run part of a schedule (ComfyUI KSamplerAdvanced): steps start_at_step..end_at_step of
    `steps`, optionally without adding noise and keeping the leftover noise for a next stage."""
    from .sampling.pipeline import ksampler_advanced

    handle: ModelHandle = model
    with handle.ready() as denoiser:
        samples = ksampler_advanced(
            denoiser, add_noise == "enable", noise_seed, steps, cfg, sampler, scheduler, positive, negative,
            latent.samples, start_at_step, end_at_step, return_with_leftover_noise == "enable",
            batch_index=latent.batch_index, callback=_progress(ctx),
            cpu_seed_offset=cpu_seed_offset(ctx.comfy_version),
        )
    return LatentValue(samples, latent.batch_index)


class SampledLatents(NamedTuple):
    output: Latent
    denoised_output: Latent


@dataclass(frozen=True, eq=False)
class GuiderValue:
    """GUIDER: a model handle with its conditionings and cfg; built into a guider at sampling."""

    model: Any
    positive: Any
    negative: Any = None
    cfg: float = 1.0

    def build(self, denoiser: Any) -> Any:
        from .sampling.guidance import BasicGuider, CFGGuider

        if self.negative is None:
            return BasicGuider(denoiser, self.positive)
        return CFGGuider(denoiser, self.positive, self.negative, self.cfg)


def _sample_with_guider(ctx: Context, guider: GuiderValue, noise: Any, sampler: Any, sigmas: Any, latent: LatentValue):
    from .sampling.pipeline import sample_custom

    with guider.model.ready() as denoiser:
        output, denoised = sample_custom(
            guider.build(denoiser), noise, sampler, sigmas, latent.samples,
            batch_index=latent.batch_index, callback=_progress(ctx),
            cpu_seed_offset=cpu_seed_offset(ctx.comfy_version),
        )
    return SampledLatents(LatentValue(output, latent.batch_index), LatentValue(denoised, latent.batch_index))


def _guided_rows(calls: list[dict[str, Any]], guiders: list[GuiderValue], noises: list[Any]) -> list[SampledLatents]:
    from . import rows
    from .sampling.pipeline import sample_custom_rows

    rows.same(calls, "sampler", "sigmas")
    rows.no_batch_index(calls)
    first = guiders[0]
    if any(g.model is not first.model or g.cfg != first.cfg or (g.negative is None) != (first.negative is None)
           for g in guiders):
        raise ValueError("rows differ in their guider's model, cfg or negative")
    ctx = calls[0]["ctx"]
    with first.model.ready() as denoiser:
        sampled = sample_custom_rows(
            denoiser, noises, calls[0]["sampler"], calls[0]["sigmas"], [c["latent"].samples for c in calls],
            [g.positive for g in guiders], None if first.negative is None else [g.negative for g in guiders],
            first.cfg, callback=_progress(ctx), cpu_seed_offset=cpu_seed_offset(ctx.comfy_version),
        )
    return [SampledLatents(LatentValue(out), LatentValue(denoised)) for out, denoised in sampled]


def _sampler_custom_rows(calls: list[dict[str, Any]]) -> list[SampledLatents]:
    from .sampling.noise import DisableNoise, RandomNoise

    guiders = [GuiderValue(c["model"], c["positive"], c["negative"], c["cfg"]) for c in calls]
    noises = [RandomNoise(c["noise_seed"]) if c["add_noise"] else DisableNoise(c["noise_seed"]) for c in calls]
    return _guided_rows(calls, guiders, noises)


def _sampler_custom_advanced_rows(calls: list[dict[str, Any]]) -> list[SampledLatents]:
    return _guided_rows(calls, [c["guider"] for c in calls], [c["noise"] for c in calls])


@node(
    "SamplerCustom",
    category="sampling/custom",
    batch=_sampler_custom_rows,
    comfy=Comfy(
        "SamplerCustom", inputs={"latent": "latent_image"}, control_after_generate=("noise_seed",),
        category="sampling/custom_sampling",
        input_order=("model", "add_noise", "noise_seed", "cfg", "positive", "negative", "sampler", "sigmas",
                     "latent_image"),
        options={"cfg": CFG_WIDGET, "add_noise": ADVANCED},
    ),
)
def sampler_custom(
    ctx: Context,
    model: Model,
    positive: Conditioning,
    negative: Conditioning,
    sampler: Sampler,
    sigmas: Sigmas,
    latent: Latent,
    add_noise: bool = True,
    noise_seed: Seed = 0,
    cfg: Cfg = 8.0,
) -> SampledLatents:
    """Sample with an explicit SAMPLER and SIGMAS (ComfyUI SamplerCustom).

    Returns the result and the model's last x0 prediction (`denoised_output`).
    """
    from .sampling.noise import DisableNoise, RandomNoise

    noise = RandomNoise(noise_seed) if add_noise else DisableNoise(noise_seed)
    return _sample_with_guider(ctx, GuiderValue(model, positive, negative, cfg), noise, sampler, sigmas, latent)


@node(
    "SamplerCustomAdvanced",
    category="sampling/custom",
    batch=_sampler_custom_advanced_rows,
    comfy=Comfy("SamplerCustomAdvanced", inputs={"latent": "latent_image"}, category="sampling/custom_sampling"),
)
def sampler_custom_advanced(
    ctx: Context, noise: Noise, guider: Guider, sampler: Sampler, sigmas: Sigmas, latent: Latent
) -> SampledLatents:
    """Sample from NOISE, GUIDER, SAMPLER and SIGMAS (ComfyUI SamplerCustomAdvanced)."""
    return _sample_with_guider(ctx, guider, noise, sampler, sigmas, latent)


@node(
    "KSamplerSelect",
    category="sampling/custom",
    comfy=Comfy("KSamplerSelect", inputs={"sampler": "sampler_name"}, category="sampling/custom_sampling/samplers"),
)
def ksampler_select(sampler: SamplerName = "euler") -> Sampler:
    """A SAMPLER by name, with ComfyUI's default options."""
    from .sampling.samplers import get_sampler

    return get_sampler(sampler)


ErSdeSolver = Literal["ER-SDE", "Reverse-time SDE", "ODE"]
#: How ComfyUI's editor shows SamplerER_SDE's float widgets (0.01 a click, no rounding, advanced inputs).
_ER_SDE_FLOAT = {"step": 0.01, "round": False, "advanced": True}


def _er_sde_eta_problem(eta: Any, comfy_version: str) -> str | None:
    """Why ``eta`` is out of the followed ComfyUI's range (the input accepts v0.18.1's 100; ComfyUI 0.32
    lowered the maximum to 10, commit 40e46c71), else None."""
    from graphrun.engine.comfy.versions import comfy_at_least

    from .sampling.samplers.exponential import ER_SDE_ETA_MAX_033

    if not isinstance(eta, (int, float)) or not comfy_at_least(comfy_version, "0.33") or eta <= ER_SDE_ETA_MAX_033:
        return None
    return (f"input 'eta' is {eta:g}, above the maximum of {ER_SDE_ETA_MAX_033:g} that ComfyUI 0.33 allows; "
            f"set eta to {ER_SDE_ETA_MAX_033:g} or less, or run with --comfy 0.18.1 (maximum 100, where eta "
            "does not apply to the ER-SDE solver type)")


def _check_er_sde(literals: dict[str, Any], env: CheckEnv) -> list[Problem]:
    problem = _er_sde_eta_problem(literals.get("eta"), env.comfy_version)
    return [Problem("eta", problem)] if problem else []


@node(
    "SamplerER_SDE",
    category="sampling/custom",
    comfy=Comfy(
        "SamplerER_SDE", category="sampling/custom_sampling/samplers",
        options={"max_stage": ADVANCED, "eta": _ER_SDE_FLOAT, "s_noise": _ER_SDE_FLOAT},
    ),
    check=_check_er_sde,
)
def sampler_er_sde(
    ctx: Context,
    solver_type: ErSdeSolver = "ER-SDE",
    max_stage: Annotated[int, Field(ge=1, le=3, description="solver order: 1 Euler, 2 and 3 add corrections")] = 3,
    eta: Annotated[float, Field(ge=0.0, le=100.0, description=(
        "stochastic strength; 0 gives the ODE. At most 10 under ComfyUI 0.33 (the default setting); "
        "under --comfy 0.18.1 up to 100, and it applies to the Reverse-time SDE only"))] = 1.0,
    s_noise: Annotated[float, Field(ge=0.0, le=100.0, description="scale of the injected noise")] = 1.0,
) -> Sampler:
    """The ER-SDE sampler with its options (ComfyUI SamplerER_SDE), for SamplerCustom(Advanced).

    Following ComfyUI 0.33 (0.32 on), eta scales the noise of every solver type: the ER-SDE solver
    uses x (e^(x^0.3) + 10)^eta, the reverse-time SDE x^(eta + 1), and eta 0 runs the ODE (no noise).
    With ``--comfy 0.18.1`` eta applies to the reverse-time SDE only, as it did there.
    """
    from graphrun.engine.comfy.versions import comfy_at_least

    from .sampling.samplers import get_sampler
    from .sampling.samplers.exponential import er_sde_options

    current = comfy_at_least(ctx.comfy_version, "0.33")
    problem = _er_sde_eta_problem(eta, ctx.comfy_version)  # a linked eta, checked when it is known
    if problem:
        raise ValueError(problem)
    return get_sampler("er_sde", er_sde_options(solver_type, max_stage, eta, s_noise, eta_scales_er_sde=current))


@node(
    "SamplerLCM",
    category="sampling/custom",
    comfy=Comfy("SamplerLCM", category="sampling/custom_sampling/samplers",
                options={"s_noise": {"step": 0.01}, "s_noise_end": {"step": 0.01}, "noise_clip_std": {"step": 0.01}}),
)
def sampler_lcm(
    s_noise: Annotated[float, Field(ge=0.0, le=64.0, description="noise factor at the first step (1: as trained)")] = 1.0,
    s_noise_end: Annotated[float, Field(ge=0.0, le=64.0, description=(
        "noise factor at the last step, linear in between"))] = 1.0,
    noise_clip_std: Annotated[float, Field(ge=0.0, le=10.0, description=(
        "clamp the noise to +- this many standard deviations; 0: no clamp"))] = 0.0,
) -> Sampler:
    """The LCM sampler with tunable re-noising (ComfyUI 0.33's SamplerLCM), for SamplerCustom(Advanced).

    The defaults are KSampler's lcm. ComfyUI v0.18.1 had no such node; graphrun runs it under every
    setting.
    """
    from .sampling.samplers import get_sampler

    return get_sampler("lcm", {"s_noise": s_noise, "s_noise_end": s_noise_end, "noise_clip_std": noise_clip_std})


@node(
    "BasicScheduler",
    category="sampling/custom",
    comfy=Comfy("BasicScheduler", category="sampling/custom_sampling/schedulers"),
)
def basic_scheduler(
    model: Model, scheduler: SchedulerName = "simple", steps: Steps = 20, denoise: Denoise = 1.0
) -> Sigmas:
    """SIGMAS for a scheduler and step count on this model's flow shift (ComfyUI BasicScheduler)."""
    from .sampling.schedules import FlowModelSampling, basic_scheduler_sigmas

    return basic_scheduler_sigmas(FlowModelSampling(shift=model.shift), scheduler, steps, denoise)


@node(
    "RandomNoise",
    category="sampling/custom",
    comfy=Comfy("RandomNoise", control_after_generate=("noise_seed",), category="sampling/custom_sampling/noise"),
)
def random_noise(noise_seed: Seed = 0) -> Noise:
    """Seeded initial noise, drawn on the CPU exactly as ComfyUI does."""
    from .sampling.noise import RandomNoise

    return RandomNoise(noise_seed)


@node(
    "DisableNoise",
    category="sampling/custom",
    comfy=Comfy("DisableNoise", category="sampling/custom_sampling/noise"),
)
def disable_noise() -> Noise:
    """No initial noise (continue from a latent that still carries noise)."""
    from .sampling.noise import DisableNoise

    return DisableNoise()


@node(
    "CFGGuider",
    category="sampling/custom",
    comfy=Comfy("CFGGuider", category="sampling/custom_sampling/guiders", options={"cfg": CFG_WIDGET}),
)
def cfg_guider(model: Model, positive: Conditioning, negative: Conditioning, cfg: Cfg = 8.0) -> Guider:
    """Classifier-free guidance: D = D_neg + (D_pos - D_neg) * cfg (cfg 1: positive only)."""
    return GuiderValue(model, positive, negative, cfg)


@node(
    "BasicGuider",
    category="sampling/custom",
    comfy=Comfy("BasicGuider", category="sampling/custom_sampling/guiders"),
)
def basic_guider(model: Model, conditioning: Conditioning) -> Guider:
    """Guidance from one conditioning only (no negative)."""
    return GuiderValue(model, conditioning)


class SplitSigmasOutputs(NamedTuple):
    high_sigmas: Sigmas
    low_sigmas: Sigmas


@node("SplitSigmas", category="sampling/custom", comfy=Comfy("SplitSigmas", category="sampling/custom_sampling/sigmas"))
def split_sigmas(sigmas: Sigmas, step: Annotated[int, Field(ge=0, le=10_000)] = 0) -> SplitSigmasOutputs:
    """Split a schedule at `step`: (sigmas[:step+1], sigmas[step:]) — the shared sigma is in both."""
    return SplitSigmasOutputs(sigmas[: step + 1], sigmas[step:])


@node(
    "SplitSigmasDenoise",
    category="sampling/custom",
    comfy=Comfy("SplitSigmasDenoise", category="sampling/custom_sampling/sigmas"),
)
def split_sigmas_denoise(sigmas: Sigmas, denoise: Denoise = 1.0) -> SplitSigmasOutputs:
    """Split a schedule so the low part has round(steps * denoise) steps (ComfyUI SplitSigmasDenoise).

    As in ComfyUI, denoise 0 gives an empty high part and a low part of just the last sigma.
    """
    steps = max(len(sigmas) - 1, 0)
    low_steps = round(steps * denoise)
    high = sigmas[: len(sigmas) - low_steps] if low_steps else sigmas[:0]
    return SplitSigmasOutputs(high, sigmas[max(len(sigmas) - low_steps - 1, 0) :])


_NUMBER = r"[-+]?(?:\d*\.*\d+)"


@node("ManualSigmas", category="sampling/custom", comfy=Comfy("ManualSigmas", category="_for_testing/custom_sampling"))
def manual_sigmas(
    sigmas: Annotated[str, Field(description="numbers separated by anything, e.g. '1, 0.8, 0.5, 0.2, 0'")] = "1, 0.5",
) -> Sigmas:
    """SIGMAS typed by hand (ComfyUI ManualSigmas): every number in the text, in order.

    Include the trailing 0 if the schedule should end fully denoised. Exponents are not read.
    """
    import re

    import torch

    values = [float(v) for v in re.findall(_NUMBER, sigmas)]
    if not values:
        raise ValueError(f"no numbers in sigmas text {sigmas!r}; write e.g. '1, 0.5, 0'")
    return torch.tensor(values, dtype=torch.float32)


@node(
    "AddNoise",
    category="sampling/custom",
    comfy=Comfy("AddNoise", inputs={"latent": "latent_image"}, category="_for_testing/custom_sampling/noise"),
)
def add_noise(model: Model, noise: Noise, sigmas: Sigmas, latent: Latent) -> Latent:
    """Add noise to a latent for the noise level of a schedule (ComfyUI AddNoise).

    The level is |first - last| sigma (the first sigma for a one-element schedule); an empty
    schedule returns the latent unchanged.
    """
    from .sampling.schedules import FLUX_LATENT, FlowModelSampling

    if len(sigmas) == 0:
        return latent
    samples = latent.samples
    generated = noise.generate(samples, latent.batch_index)
    scale = (sigmas[0] - sigmas[-1]).abs() if len(sigmas) > 1 else sigmas[0]
    scaled = FLUX_LATENT.process_in(samples) if bool(samples.count_nonzero()) else samples
    noisy = FlowModelSampling(shift=model.shift).noise_scaling(scale, generated, scaled)
    return LatentValue(FLUX_LATENT.process_out(noisy), latent.batch_index)
