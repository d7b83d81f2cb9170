"""Image-space scaling and super-resolution: ImageScale, ImageScaleBy, ImageScaleToTotalPixels,
ImageScaleToMaxDimension, GetImageSize, LoadUpscaleModel, ImageUpscaleWithModel (ComfyUI semantics).

The resizing rules are ComfyUI's ``common_upscale`` (see :mod:`graphrun.nodes.resample`): torch
interpolation without antialiasing for nearest-exact/bilinear/area/bicubic, and PIL's Lanczos on 8-bit
pixels for ``lanczos``. The model-based upscalers live in :mod:`graphrun.nodes.upscale_nets`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

from pydantic import Field

from graphrun.engine.context import Context
from graphrun.engine.node import Comfy, node

from .models import file_check
from .types import Image, UpscaleModel

ImageMethod = Literal["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
# ImageScaleToMaxDimension lists its methods in another order (its first one is its default).
MaxDimensionMethod = Literal["area", "lanczos", "bilinear", "nearest-exact", "bicubic"]
MAX_RESOLUTION = 16384

_METHOD = {"method": "upscale_method"}


@node("ImageScale", category="image/upscaling", comfy=Comfy("ImageScale", inputs=_METHOD, display_name="Upscale Image"))
def image_scale(
    image: Image,
    method: ImageMethod = "nearest-exact",
    width: Annotated[int, Field(ge=0, le=MAX_RESOLUTION, description="pixels; 0 keeps the aspect ratio")] = 512,
    height: Annotated[int, Field(ge=0, le=MAX_RESOLUTION, description="pixels; 0 keeps the aspect ratio")] = 512,
    crop: Literal["disabled", "center"] = "disabled",
) -> Image:
    """Resize images to width x height (ComfyUI ImageScale).

    Both 0 leaves the images unchanged; one 0 is derived from the other and the aspect ratio
    (rounded, at least 1 px). `crop: center` first trims the images to the target aspect ratio, so
    nothing is stretched. `lanczos` resamples 8-bit pixels with PIL, as ComfyUI does.
    """
    from .resample import image_upscale

    return image_upscale(image, method, width, height, crop)


@node(
    "ImageScaleBy",
    category="image/upscaling",
    comfy=Comfy("ImageScaleBy", inputs=_METHOD, display_name="Upscale Image By"),
)
def image_scale_by(
    image: Image,
    method: ImageMethod = "nearest-exact",
    scale_by: Annotated[float, Field(ge=0.01, le=8.0, description="factor applied to both sides")] = 1.0,
) -> Image:
    """Scale images by a factor (ComfyUI ImageScaleBy): new size round(W * scale_by) x round(H * scale_by)."""
    from .resample import image_upscale_by

    return image_upscale_by(image, method, scale_by)


def total_pixels_size(width: int, height: int, megapixels: float, resolution_steps: int = 1) -> tuple[int, int]:
    """ImageScaleToTotalPixels' target size: the aspect ratio kept, about megapixels * 2^20 pixels, each
    side rounded to the nearest multiple of ``resolution_steps`` (Python's round: halves go to even)."""
    scale_by = math.sqrt(megapixels * 1024 * 1024 / (width * height))
    return (
        round(width * scale_by / resolution_steps) * resolution_steps,
        round(height * scale_by / resolution_steps) * resolution_steps,
    )


@node(
    "ImageScaleToTotalPixels",
    category="image/upscaling",
    comfy=Comfy("ImageScaleToTotalPixels", inputs=_METHOD, display_name="Scale Image to Total Pixels",
                options={"resolution_steps": {"advanced": True}}),
)
def image_scale_to_total_pixels(
    image: Image,
    method: ImageMethod = "nearest-exact",
    megapixels: Annotated[float, Field(ge=0.01, le=16.0, description="target size in units of 1024x1024 px")] = 1.0,
    resolution_steps: Annotated[
        int, Field(ge=1, le=256, description="round each side to a multiple of this (1: nearest pixel)")
    ] = 1,
) -> Image:
    """Resize images to about `megapixels` x 1024 x 1024 pixels, keeping the aspect ratio
    (ComfyUI ImageScaleToTotalPixels).

    scale = sqrt(megapixels * 1024 * 1024 / (W * H)); each side becomes round(side * scale /
    resolution_steps) * resolution_steps. Workflows saved before ComfyUI added `resolution_steps`
    get 1, the old behaviour.
    """
    from .resample import image_upscale

    width, height = total_pixels_size(image.shape[2], image.shape[1], megapixels, resolution_steps)
    if width < 1 or height < 1:
        raise ValueError(
            f"a {image.shape[2]}x{image.shape[1]} image at {megapixels} MP with resolution_steps "
            f"{resolution_steps} would be {width}x{height}; use a smaller resolution_steps"
        )
    return image_upscale(image, method, width, height, "disabled")


@node(
    "ImageScaleToMaxDimension",
    category="image/upscaling",
    comfy=Comfy("ImageScaleToMaxDimension", inputs=_METHOD),
)
def image_scale_to_max_dimension(
    image: Image,
    method: MaxDimensionMethod = "area",
    largest_size: Annotated[
        int, Field(ge=1, le=MAX_RESOLUTION, description="pixels of the longer side after scaling")
    ] = 512,
) -> Image:
    """Resize images so that their longer side is `largest_size` (ComfyUI ImageScaleToMaxDimension).

    The shorter side keeps the aspect ratio: round(short / long * largest_size). Square images become
    largest_size x largest_size. Small images are enlarged, large ones reduced.
    """
    from .resample import image_upscale

    height, width = image.shape[1], image.shape[2]
    if height > width:
        width, height = round(width / height * largest_size), largest_size
    elif width > height:
        width, height = largest_size, round(height / width * largest_size)
    else:
        width = height = largest_size
    return image_upscale(image, method, max(width, 1), max(height, 1), "disabled")


class ImageSize(NamedTuple):
    width: int
    height: int
    batch_size: int


@node("GetImageSize", category="image", comfy=Comfy("GetImageSize", display_name="Get Image Size"))
def get_image_size(image: Image) -> ImageSize:
    """The width, height and batch size of an IMAGE (ComfyUI GetImageSize)."""
    return ImageSize(int(image.shape[2]), int(image.shape[1]), int(image.shape[0]))


@node(
    "LoadUpscaleModel",
    category="loaders",
    keep=True,
    comfy=Comfy("UpscaleModelLoader", inputs={"name": "model_name"}, files={"model_name": "upscale_models"},
                display_name="Load Upscale Model"),
    # .pth upscalers are read with torch's restricted weights-only loader (see read_state_dict).
    check=file_check("name", "upscale_models", allow_pickle=True),
)
def load_upscale_model(
    ctx: Context,
    name: Annotated[str, Field(description="file in upscale_models/, or a path (.safetensors preferred)")],
) -> UpscaleModel:
    """Load a super-resolution model such as RealESRGAN_x4plus (ComfyUI UpscaleModelLoader).

    The architecture is recognised from the weights. With the `spandrel` package installed (what
    ComfyUI uses; `pip install graphrun[upscale]`, or `pip install --no-deps spandrel einops` beside a
    CPU-only torch) every architecture spandrel knows works: ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT,
    OmniSR, SPAN, ... Without it graphrun runs the ESRGAN family (ESRGAN, BSRGAN, Real-ESRGAN x4/x2/x1,
    4x-UltraSharp and the like) and Real-ESRGAN Compact on its own implementation, with the same pixels.
    `.pth`/`.pt`/`.ckpt` files are read with torch's weights-only loader, which rebuilds tensors and
    refuses anything else; safetensors files are preferred.
    """
    from .model_files import resolve_model_file
    from .upscale_nets import load_upscale_model as load

    path = resolve_model_file(
        name,
        "upscale_models",
        ctx.options.extra.get("models_dirs", []),
        ctx.options.extra.get("extra_model_paths"),
    )
    return load(path)


@node(
    "ImageUpscaleWithModel",
    category="image/upscaling",
    comfy=Comfy("ImageUpscaleWithModel", display_name="Upscale Image (using Model)"),
)
def image_upscale_with_model(ctx: Context, upscale_model: UpscaleModel, image: Image) -> Image:
    """Upscale images with a super-resolution model (ComfyUI ImageUpscaleWithModel).

    The output is the model's scale times larger (x4 for RealESRGAN_x4plus), float32 in [0, 1]. Images
    are processed in 512 px tiles overlapping by 32 px and blended with linear ramps, as ComfyUI does;
    when the device runs out of memory the tile size is halved (down to 128 px) and the image restarted.
    Progress is reported per tile and Ctrl-C stops at the next tile. The model runs in float32 on the
    run's device (`--device`) and returns to the CPU afterwards.
    """
    from .upscale_nets import upscale_images
    from .runtime import resolve_device_dtype

    device, _ = resolve_device_dtype(ctx.options.device, None)
    return upscale_images(upscale_model, image, device, progress=ctx.progress)


def write_tiny_upscale_model(
    path: str | Path,
    *,
    layout: Literal["realesrgan", "esrgan", "compact"] = "realesrgan",
    scale: Literal[1, 2, 4] = 4,
    seed: int = 0,
) -> Path:
    """Write a tiny random-weight upscale model (safetensors, under 1 MB) for tests and return its path.

    The default is Real-ESRGAN's key layout at x4, like RealESRGAN_x4plus.safetensors, so a models dir
    holding it as ``upscale_models/RealESRGAN_x4plus.safetensors`` runs ComfyUI's upscaler templates
    offline. Other layouts: ``esrgan`` (original ESRGAN keys), ``compact`` (SRVGGNetCompact).
    """
    from .upscale_nets import write_tiny_upscale_model as write

    return write(path, layout=layout, scale=scale, seed=seed)
