"""Latents: EmptyLatent, LatentUpscale, LatentUpscaleBy.

LATENT values are raw VAE latents (ComfyUI keeps them unscaled between nodes; the Flux
latent scaling happens only inside sampling).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field

from graphrun.engine.node import Comfy, node

from .types import Latent

UpscaleMethod = Literal["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]


@dataclass(frozen=True, eq=False)
class LatentValue:
    """LATENT: ``samples`` [B, C, H, W] float32, and ComfyUI's optional ``batch_index``."""

    samples: Any
    batch_index: tuple[int, ...] | None = None

    def __graphrun_nbytes__(self) -> int:
        return int(self.samples.element_size() * self.samples.nelement())


@node(
    "EmptyLatent",
    category="latent",
    comfy=(
        Comfy("EmptySD3LatentImage", category="latent/sd3", options={"width": {"step": 16}, "height": {"step": 16}}),
        Comfy("EmptyLatentImage", fixed={"channels": 4}, display_name="Empty Latent Image",
              options={"width": {"step": 8}, "height": {"step": 8}}),
    ),
)
def empty_latent(
    width: Annotated[int, Field(ge=16, le=16384, description="image width in pixels")] = 1024,
    height: Annotated[int, Field(ge=16, le=16384, description="image height in pixels")] = 1024,
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 1,
    channels: Literal[16, 4] = 16,
) -> Latent:
    """An all-zero latent for width x height pixels: [batch, 16, height/8, width/8].

    Any size ComfyUI accepts works: the latent side is the pixel side // 8 and a latent side that is
    not a multiple of the transformer's patch size is padded for the model and cropped back, as
    ComfyUI does (200x296 gives a 200x296 image). `channels: 4` reproduces ComfyUI's
    EmptyLatentImage (expanded to 16 channels by the sampler, as ComfyUI does).
    """
    import torch

    return LatentValue(torch.zeros([batch_size, channels, height // 8, width // 8], dtype=torch.float32))


def _latent_upscale_rows(calls: list[dict[str, Any]]) -> list[LatentValue]:
    from . import rows
    from .resample import latent_upscale as resize

    rows.same(calls, "method", "width", "height", "crop")
    rows.no_batch_index(calls)
    stacked, sizes = rows.stack([c["latent"].samples for c in calls])
    first = calls[0]
    resized = resize(stacked, first["method"], first["width"], first["height"], first["crop"])
    return [LatentValue(part) for part in rows.split(resized, sizes)]


def _latent_upscale_by_rows(calls: list[dict[str, Any]]) -> list[LatentValue]:
    from . import rows
    from .resample import latent_upscale_by as resize

    rows.same(calls, "method", "scale_by")
    rows.no_batch_index(calls)
    stacked, sizes = rows.stack([c["latent"].samples for c in calls])
    resized = resize(stacked, calls[0]["method"], calls[0]["scale_by"])
    return [LatentValue(part) for part in rows.split(resized, sizes)]


@node(
    "LatentUpscale",
    category="latent",
    batch=_latent_upscale_rows,
    comfy=Comfy("LatentUpscale", inputs={"latent": "samples", "method": "upscale_method"},
                display_name="Upscale Latent", options={"width": {"step": 8}, "height": {"step": 8}}),
)
def latent_upscale(
    latent: Latent,
    method: UpscaleMethod = "nearest-exact",
    width: Annotated[int, Field(ge=0, le=16384, description="pixels; 0 keeps the aspect ratio from height")] = 512,
    height: Annotated[int, Field(ge=0, le=16384, description="pixels; 0 keeps the aspect ratio from width")] = 512,
    crop: Literal["disabled", "center"] = "disabled",
) -> Latent:
    """Resize a latent to width x height pixels (ComfyUI LatentUpscale; the latent is //8).

    Both 0 leaves it unchanged; one 0 derives it from the aspect ratio; sides are at least 64 px.
    """
    from .resample import latent_upscale as resize

    return LatentValue(resize(latent.samples, method, width, height, crop), latent.batch_index)


@node(
    "LatentUpscaleBy",
    category="latent",
    batch=_latent_upscale_by_rows,
    comfy=Comfy("LatentUpscaleBy", inputs={"latent": "samples", "method": "upscale_method"},
                display_name="Upscale Latent By"),
)
def latent_upscale_by(
    latent: Latent,
    method: UpscaleMethod = "nearest-exact",
    scale_by: Annotated[float, Field(ge=0.01, le=8.0)] = 1.5,
) -> Latent:
    """Scale a latent by a factor (ComfyUI LatentUpscaleBy: new size round(side * scale_by))."""
    from .resample import latent_upscale_by as resize

    return LatentValue(resize(latent.samples, method, scale_by), latent.batch_index)
