"""Node-level sampling with ComfyUI semantics: KSampler, KSamplerAdvanced and SamplerCustom.

Latents in and out are RAW (VAE space) float32 ``[B, C, H, W]`` tensors; the latent format's scaling
is applied only inside sampling. The order of operations is ComfyUI's ``common_ksampler`` ->
``CFGGuider.sample`` -> ``KSAMPLER.sample``:

1. an all-zero latent with the wrong channel count is widened (``fix_empty_latent_channels``);
2. seeded CPU noise for that shape (or zeros when noise is disabled);
3. sigmas from the scheduler; an empty schedule returns the latent unchanged;
4. ``process_in`` only if the latent has a non-zero element (an empty latent stays exactly zero);
5. ``x = sigma_0 * noise + (1 - sigma_0) * latent``;
6. the sampler, calling the guider (CFG) once or more per step;
7. ``x / (1 - sigma_last)``, then ``process_out``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .guidance import BasicGuider, CFGGuider, Conditioning, Denoiser, Guider, RowsConditioning
from .noise import DisableNoise, RandomNoise, fix_empty_latent_channels, prepare_noise
from .samplers import RowSeeds, Sampler, StepCallback, StepInfo, get_sampler
from .schedules import advanced_sigmas, ksampler_sigmas

__all__ = ["guided_sample", "ksampler", "ksampler_advanced", "ksampler_rows", "sample_custom", "sample_custom_rows"]


def _as_sampler(sampler: str | Sampler) -> Sampler:
    return sampler if isinstance(sampler, Sampler) else get_sampler(sampler)


def _work_device(guider: Guider, latent: Tensor, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    model_device = getattr(getattr(guider, "denoiser", None), "device", None)
    return torch.device(model_device) if model_device is not None else latent.device


def guided_sample(
    guider: Guider,
    noise: Tensor,
    latent: Tensor,
    sampler: str | Sampler,
    sigmas: Tensor,
    seed: int,
    *,
    callback: StepCallback | None = None,
    sampler_options: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    cpu_seed_offset: int | None = None,
    row_sizes: Sequence[int] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Sample a raw latent with a guider (ComfyUI ``CFGGuider.sample``); steps 4-7 of the module doc.

    ``noise`` must have the latent's shape (model-space unit noise, usually from ``prepare_noise``);
    ``seed`` seeds the sampler's own noise. Returns ``(samples, last_denoised)``, both raw float32 on
    the latent's device; ``last_denoised`` is the x0 prediction of the last step (None when no step
    ran). An empty ``sigmas`` returns the latent unchanged. Sampling runs on ``device``, else the
    denoiser's ``device`` attribute if it has one, else the latent's device. ``cpu_seed_offset``
    (the ComfyUI-version setting; None = the sampler's default, ComfyUI v0.18.1's ``seed + 1``) is
    handed to samplers that draw ``default_noise_sampler`` noise. ``row_sizes`` marks a batch of rows
    sampled together (see :func:`ksampler_rows`): each row's latent is treated as it would be alone.
    """
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).cpu()
    if sigmas.numel() == 0:
        return latent, None
    if tuple(noise.shape) != tuple(latent.shape):
        raise ValueError(f"noise shape {tuple(noise.shape)} does not match latent shape {tuple(latent.shape)}")
    run_on = _work_device(guider, latent, device)
    ms, fmt = guider.model_sampling, guider.latent_format
    z = latent.to(device=run_on, dtype=torch.float32)
    if row_sizes is not None:  # an empty (all-zero) latent stays zero, row by row as in a row's own run
        z = torch.cat([fmt.process_in(part) if bool(torch.count_nonzero(part)) else part
                       for part in z.split(list(row_sizes))])
    elif bool(torch.count_nonzero(z)):
        z = fmt.process_in(z)
    x = ms.noise_scaling(sigmas[0], noise.to(device=run_on, dtype=torch.float32), z)

    options = dict(sampler_options or {})
    options.setdefault("cpu_seed_offset", cpu_seed_offset)  # an explicit sampler option wins
    last: list[Tensor] = []

    def on_step(info: StepInfo) -> None:
        if last:
            last[0] = info.denoised
        else:
            last.append(info.denoised)
        if callback is not None:
            callback(info)

    with torch.no_grad():
        x = _as_sampler(sampler)(
            guider, x, sigmas, seed=seed, callback=on_step, model_sampling=ms, **options,
        )
    x = ms.inverse_noise_scaling(sigmas[-1], x)
    samples = fmt.process_out(x.float()).to(latent.device)
    denoised = fmt.process_out(last[0].float()).to(latent.device) if last else None
    return samples, denoised


def ksampler(
    denoiser: Denoiser,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: Conditioning,
    negative: Conditioning,
    latent: Tensor,
    denoise: float = 1.0,
    *,
    batch_index: Sequence[int] | None = None,
    callback: StepCallback | None = None,
    sampler_options: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    cpu_seed_offset: int | None = None,
) -> Tensor:
    """ComfyUI ``KSampler``: denoise a raw latent; ``denoise < 1`` runs ``steps`` steps on the tail
    of an ``int(steps/denoise)``-step schedule, ``denoise 0`` returns the latent unchanged."""
    sampler = _as_sampler(sampler_name)
    latent = fix_empty_latent_channels(latent, denoiser.latent_format.latent_channels)
    noise = prepare_noise(latent, seed, batch_index)
    sigmas = ksampler_sigmas(denoiser.model_sampling, scheduler, steps, denoise, sampler_name)
    guider = CFGGuider(denoiser, positive, negative, cfg)
    return guided_sample(
        guider, noise, latent, sampler, sigmas, seed,
        callback=callback, sampler_options=sampler_options, device=device, cpu_seed_offset=cpu_seed_offset,
    )[0]


def ksampler_advanced(
    denoiser: Denoiser,
    add_noise: bool,
    noise_seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: Conditioning,
    negative: Conditioning,
    latent: Tensor,
    start_at_step: int = 0,
    end_at_step: int = 10000,
    return_with_leftover_noise: bool = False,
    *,
    batch_index: Sequence[int] | None = None,
    callback: StepCallback | None = None,
    sampler_options: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    cpu_seed_offset: int | None = None,
) -> Tensor:
    """ComfyUI ``KSamplerAdvanced``: run steps ``start_at_step..end_at_step`` of a ``steps``-step
    schedule. Without leftover noise the last sigma is forced to 0; ``add_noise=False`` starts from
    the latent as is (the sampler's own noise still uses ``noise_seed``). A start at or past the last
    step returns the latent unchanged."""
    sampler = _as_sampler(sampler_name)
    latent = fix_empty_latent_channels(latent, denoiser.latent_format.latent_channels)
    noise_source = RandomNoise(noise_seed) if add_noise else DisableNoise(noise_seed)
    noise = noise_source.generate(latent, batch_index)
    sigmas = advanced_sigmas(
        denoiser.model_sampling, scheduler, steps, start_at_step, end_at_step,
        not return_with_leftover_noise, sampler_name,
    )
    guider = CFGGuider(denoiser, positive, negative, cfg)
    return guided_sample(
        guider, noise, latent, sampler, sigmas, noise_seed,
        callback=callback, sampler_options=sampler_options, device=device, cpu_seed_offset=cpu_seed_offset,
    )[0]


def sample_custom(
    denoiser_or_guider: Denoiser | Guider,
    noise: RandomNoise | DisableNoise | Tensor,
    sampler: str | Sampler,
    sigmas: Tensor,
    latent: Tensor,
    seed: int | None = None,
    *,
    positive: Conditioning | None = None,
    negative: Conditioning | None = None,
    cfg: float = 1.0,
    batch_index: Sequence[int] | None = None,
    callback: StepCallback | None = None,
    sampler_options: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    cpu_seed_offset: int | None = None,
) -> tuple[Tensor, Tensor]:
    """ComfyUI ``SamplerCustom`` / ``SamplerCustomAdvanced``: sample with explicit noise, sampler and
    sigmas. Returns ``(output, denoised_output)``; the second is the x0 prediction of the last step
    (equal to the output when no step ran).

    Give a guider (``CFGGuider``/``BasicGuider``), or a denoiser with ``positive`` (and ``negative``
    when cfg is not 1). ``noise`` is a NOISE value (``RandomNoise(seed)``, ``DisableNoise()``) or a
    tensor of the (channel-fixed) latent's shape. ``seed`` seeds the sampler's own noise and defaults
    to the NOISE value's seed (SamplerCustom passes ``noise_seed`` even when noise is disabled).
    """
    if hasattr(denoiser_or_guider, "apply_model"):
        if positive is None:
            raise ValueError("sample_custom with a denoiser needs a positive conditioning")
        if negative is None:
            if CFGGuider(denoiser_or_guider, positive, positive, cfg).uses_negative:
                raise ValueError(f"cfg {cfg} needs a negative conditioning")
            guider: Guider = BasicGuider(denoiser_or_guider, positive)
        else:
            guider = CFGGuider(denoiser_or_guider, positive, negative, cfg)
    else:
        if positive is not None or negative is not None:
            raise ValueError("give conditionings either to the guider or to sample_custom, not both")
        guider = denoiser_or_guider
    sampler = _as_sampler(sampler)
    latent = fix_empty_latent_channels(latent, guider.latent_format.latent_channels)
    if isinstance(noise, Tensor):
        if seed is None:
            raise ValueError("sample_custom with a noise tensor needs an explicit seed")
        noise_tensor = noise
    else:
        noise_tensor = noise.generate(latent, batch_index)
        if seed is None:
            seed = noise.seed
    samples, denoised = guided_sample(
        guider, noise_tensor, latent, sampler, sigmas, seed,
        callback=callback, sampler_options=sampler_options, device=device, cpu_seed_offset=cpu_seed_offset,
    )
    return samples, (denoised if denoised is not None else samples)


# --- several batch rows in one call ------------------------------------------------------------------------------
# Rows of a batch (different prompts and seeds, one graph) sampled as one batch: each row keeps the noise
# and conditioning of its own run (its seed's generators, its prompt's context), so the rows' results
# equal their single runs up to the network's floating-point batch effects.


def ksampler_rows(
    denoiser: Denoiser,
    seeds: Sequence[int],
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positives: Sequence[Conditioning],
    negatives: Sequence[Conditioning],
    latents: Sequence[Tensor],
    denoise: float = 1.0,
    *,
    callback: StepCallback | None = None,
    sampler_options: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    cpu_seed_offset: int | None = None,
) -> list[Tensor]:
    """:func:`ksampler` for several rows at once: one raw latent per row in, one per row out."""
    sampler = _as_sampler(sampler_name)
    channels = denoiser.latent_format.latent_channels
    latents = [fix_empty_latent_channels(latent, channels) for latent in latents]
    sizes = [latent.shape[0] for latent in latents]
    noise = torch.cat([prepare_noise(latent, seed) for latent, seed in zip(latents, seeds)])
    sigmas = ksampler_sigmas(denoiser.model_sampling, scheduler, steps, denoise, sampler_name)
    guider = CFGGuider(denoiser, RowsConditioning(positives, sizes), RowsConditioning(negatives, sizes), cfg)
    samples = guided_sample(
        guider, noise, torch.cat(latents), sampler, sigmas, RowSeeds(seeds, sizes), callback=callback,
        sampler_options=sampler_options, device=device, cpu_seed_offset=cpu_seed_offset, row_sizes=sizes,
    )[0]
    return list(samples.split(sizes))


def sample_custom_rows(
    denoiser: Denoiser,
    noises: Sequence[RandomNoise | DisableNoise],
    sampler: str | Sampler,
    sigmas: Tensor,
    latents: Sequence[Tensor],
    positives: Sequence[Conditioning],
    negatives: Sequence[Conditioning] | None,
    cfg: float,
    *,
    callback: StepCallback | None = None,
    sampler_options: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    cpu_seed_offset: int | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """:func:`sample_custom` for several rows at once (a denoiser with per-row conditionings; no negatives
    means BasicGuider). Returns ``(output, denoised_output)`` per row."""
    sampler = _as_sampler(sampler)
    channels = denoiser.latent_format.latent_channels
    latents = [fix_empty_latent_channels(latent, channels) for latent in latents]
    sizes = [latent.shape[0] for latent in latents]
    noise = torch.cat([source.generate(latent) for source, latent in zip(noises, latents)])
    positive = RowsConditioning(positives, sizes)
    guider: Guider = (BasicGuider(denoiser, positive) if negatives is None
                      else CFGGuider(denoiser, positive, RowsConditioning(negatives, sizes), cfg))
    samples, denoised = guided_sample(
        guider, noise, torch.cat(latents), sampler, sigmas, RowSeeds([n.seed for n in noises], sizes),
        callback=callback, sampler_options=sampler_options, device=device, cpu_seed_offset=cpu_seed_offset,
        row_sizes=sizes,
    )
    denoised = denoised if denoised is not None else samples
    return list(zip(samples.split(sizes), denoised.split(sizes)))
