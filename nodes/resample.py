"""Resizing latents and images with ComfyUI semantics (``comfy.utils.common_upscale`` and the
LatentUpscale / LatentUpscaleBy / ImageScale / ImageScaleBy size rules).

Latents are ``[B, C, H, W]`` (5-D video latents ``[B, C, T, H, W]`` are resized per frame); images are
``[B, H, W, C]`` floats in [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CROP_METHODS",
    "IMAGE_UPSCALE_METHODS",
    "LATENT_UPSCALE_METHODS",
    "bislerp",
    "common_upscale",
    "image_upscale",
    "image_upscale_by",
    "lanczos",
    "latent_upscale",
    "latent_upscale_by",
]

LATENT_UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
IMAGE_UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
CROP_METHODS = ("disabled", "center")


def _slerp(a: Tensor, b: Tensor, ratio: Tensor) -> Tensor:
    """Slerp of row vectors ``a``, ``b`` [N, C] by ``ratio`` [N, 1]; the result's norm is the linear
    interpolation of the two norms."""
    channels = a.shape[-1]
    a_norm = torch.norm(a, dim=-1, keepdim=True)
    b_norm = torch.norm(b, dim=-1, keepdim=True)
    a_unit = a / a_norm
    b_unit = b / b_norm
    a_unit[a_norm.expand(-1, channels) == 0.0] = 0.0
    b_unit[b_norm.expand(-1, channels) == 0.0] = 0.0
    dot = (a_unit * b_unit).sum(1)
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    r = ratio.squeeze(1)
    out = (torch.sin((1.0 - r) * omega) / sin_omega).unsqueeze(1) * a_unit + (
        torch.sin(r * omega) / sin_omega
    ).unsqueeze(1) * b_unit
    out *= (a_norm * (1.0 - ratio) + b_norm * ratio).expand(-1, channels)
    # Nearly parallel: keep a; nearly opposite: plain linear interpolation.
    parallel = dot > 1 - 1e-5
    out[parallel] = a[parallel]
    opposite = dot < 1e-5 - 1
    out[opposite] = (a * (1.0 - ratio) + b * ratio)[opposite]
    return out


def _bilinear_taps(length_old: int, length_new: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    # Source coordinates as bilinear interpolation (align_corners False) would sample them.
    coords = torch.arange(length_old, dtype=torch.float32, device=device).reshape((1, 1, 1, -1))
    coords = F.interpolate(coords, size=(1, length_new), mode="bilinear")
    ratios = coords - coords.floor()
    lower = coords.to(torch.int64)
    upper = torch.arange(length_old, dtype=torch.float32, device=device).reshape((1, 1, 1, -1)) + 1
    upper[:, :, :, -1] -= 1
    upper = F.interpolate(upper, size=(1, length_new), mode="bilinear").to(torch.int64)
    return ratios, lower, upper


def bislerp(samples: Tensor, width: int, height: int) -> Tensor:
    """Resize ``[B, C, H, W]`` by spherical interpolation of channel vectors, first along W then
    along H (ComfyUI ``bislerp``)."""
    orig_dtype = samples.dtype
    samples = samples.float()
    n, c, h, w = samples.shape

    ratios, lower, upper = _bilinear_taps(w, width, samples.device)
    a = samples.gather(-1, lower.expand((n, c, h, -1))).movedim(1, -1).reshape((-1, c))
    b = samples.gather(-1, upper.expand((n, c, h, -1))).movedim(1, -1).reshape((-1, c))
    r = ratios.expand((n, 1, h, -1)).movedim(1, -1).reshape((-1, 1))
    result = _slerp(a, b, r).reshape(n, h, width, c).movedim(-1, 1)

    ratios, lower, upper = _bilinear_taps(h, height, samples.device)
    lower = lower.reshape((1, 1, -1, 1)).expand((n, c, -1, width))
    upper = upper.reshape((1, 1, -1, 1)).expand((n, c, -1, width))
    a = result.gather(-2, lower).movedim(1, -1).reshape((-1, c))
    b = result.gather(-2, upper).movedim(1, -1).reshape((-1, c))
    r = ratios.reshape((1, 1, -1, 1)).expand((n, 1, -1, width)).movedim(1, -1).reshape((-1, 1))
    result = _slerp(a, b, r).reshape(n, height, width, c).movedim(-1, 1)
    return result.to(orig_dtype)


def lanczos(samples: Tensor, width: int, height: int) -> Tensor:
    """Lanczos resize of ``[B, C, H, W]`` images in [0, 1] through PIL on 8-bit pixels (as ComfyUI:
    values are truncated to uint8 first)."""
    import numpy as np
    from PIL import Image

    out = []
    for image in samples:
        pixels = np.clip(255.0 * image.movedim(0, -1).cpu().float().numpy(), 0, 255).astype(np.uint8)
        if pixels.shape[-1] == 1:
            pixels = pixels[..., 0]
        resized = Image.fromarray(pixels).resize((width, height), resample=Image.Resampling.LANCZOS)
        array = np.array(resized).astype(np.float32) / 255.0
        if array.ndim == 2:
            array = array[..., None]
        out.append(torch.from_numpy(array).movedim(-1, 0))
    return torch.stack(out).to(samples.device, samples.dtype)


def common_upscale(samples: Tensor, width: int, height: int, method: str, crop: str = "disabled") -> Tensor:
    """Resize ``[B, C, H, W]`` (or ``[B, C, T, H, W]`` per frame) to ``height x width``.

    ``crop="center"`` first trims the input to the target aspect ratio. Methods: nearest-exact,
    bilinear, area, bicubic (``torch.nn.functional.interpolate``, no antialias), bislerp, lanczos.
    """
    if crop not in CROP_METHODS:
        raise ValueError(f"unknown crop {crop!r}; known: {', '.join(CROP_METHODS)}")
    orig_shape = tuple(samples.shape)
    if len(orig_shape) > 4:
        samples = samples.reshape(orig_shape[0], orig_shape[1], -1, orig_shape[-2], orig_shape[-1])
        samples = samples.movedim(2, 1).reshape(-1, orig_shape[1], orig_shape[-2], orig_shape[-1])
    if crop == "center":
        old_width, old_height = samples.shape[-1], samples.shape[-2]
        old_aspect = old_width / old_height
        new_aspect = width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_width - old_width * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_height - old_height * (old_aspect / new_aspect)) / 2)
        samples = samples.narrow(-2, y, old_height - y * 2).narrow(-1, x, old_width - x * 2)

    if method == "bislerp":
        out = bislerp(samples, width, height)
    elif method == "lanczos":
        out = lanczos(samples, width, height)
    elif method in ("nearest-exact", "bilinear", "area", "bicubic"):
        out = F.interpolate(samples, size=(height, width), mode=method)
    else:
        raise ValueError(f"unknown upscale method {method!r}")

    if len(orig_shape) == 4:
        return out
    out = out.reshape((orig_shape[0], -1, orig_shape[1], height, width))
    return out.movedim(2, 1).reshape(orig_shape[:-2] + (height, width))


def latent_upscale(samples: Tensor, method: str, width: int, height: int, crop: str = "disabled") -> Tensor:
    """ComfyUI ``LatentUpscale``: ``width``/``height`` in pixels. Both 0: unchanged. One 0: derived
    from the aspect ratio with Python ``round`` after clamping the given side to >= 64. Both sides
    are clamped to >= 64; the latent size is ``width // 8 x height // 8``."""
    if method not in LATENT_UPSCALE_METHODS:
        raise ValueError(f"unknown latent upscale method {method!r}; known: {', '.join(LATENT_UPSCALE_METHODS)}")
    if width == 0 and height == 0:
        return samples
    h, w = samples.shape[-2], samples.shape[-1]
    if width == 0:
        height = max(64, height)
        width = max(64, round(w * height / h))
    elif height == 0:
        width = max(64, width)
        height = max(64, round(h * width / w))
    else:
        width = max(64, width)
        height = max(64, height)
    return common_upscale(samples, width // 8, height // 8, method, crop)


def latent_upscale_by(samples: Tensor, method: str, scale_by: float) -> Tensor:
    """ComfyUI ``LatentUpscaleBy``: new latent size ``round(W * s) x round(H * s)`` (Python round,
    ties to even), no crop."""
    if method not in LATENT_UPSCALE_METHODS:
        raise ValueError(f"unknown latent upscale method {method!r}; known: {', '.join(LATENT_UPSCALE_METHODS)}")
    width = round(samples.shape[-1] * scale_by)
    height = round(samples.shape[-2] * scale_by)
    return common_upscale(samples, width, height, method, "disabled")


def image_upscale(images: Tensor, method: str, width: int, height: int, crop: str = "disabled") -> Tensor:
    """ComfyUI ``ImageScale`` on ``[B, H, W, C]`` images: both sizes 0 -> unchanged, one 0 -> derived
    from the aspect ratio (at least 1 px)."""
    if method not in IMAGE_UPSCALE_METHODS:
        raise ValueError(f"unknown image upscale method {method!r}; known: {', '.join(IMAGE_UPSCALE_METHODS)}")
    if width == 0 and height == 0:
        return images
    samples = images.movedim(-1, 1)
    if width == 0:
        width = max(1, round(samples.shape[3] * height / samples.shape[2]))
    elif height == 0:
        height = max(1, round(samples.shape[2] * width / samples.shape[3]))
    return common_upscale(samples, width, height, method, crop).movedim(1, -1)


def image_upscale_by(images: Tensor, method: str, scale_by: float) -> Tensor:
    """ComfyUI ``ImageScaleBy`` on ``[B, H, W, C]`` images: ``round(W * s) x round(H * s)``."""
    if method not in IMAGE_UPSCALE_METHODS:
        raise ValueError(f"unknown image upscale method {method!r}; known: {', '.join(IMAGE_UPSCALE_METHODS)}")
    samples = images.movedim(-1, 1)
    width = round(samples.shape[3] * scale_by)
    height = round(samples.shape[2] * scale_by)
    return common_upscale(samples, width, height, method, "disabled").movedim(1, -1)
