"""Where and in what precision models compute: the device/dtype policy shared by the node library.

``resolve_device_dtype``: CUDA with bfloat16 when available, else CPU with float32; both overridable.
``execution_device``: where a (possibly offloaded) module computes. ``ensure_fp32_compute``: a text
encoder stored in a lower precision computes in float32, as ComfyUI's text encoders do.
``quiet_progress``: diffusers'/transformers' own progress bars off while graphrun reports progress.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["ensure_fp32_compute", "execution_device", "quiet_progress", "resolve_device_dtype"]

_DTYPE_NAMES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}


def resolve_device_dtype(
    device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> tuple[torch.device, torch.dtype]:
    """Pick the compute device and weight dtype.

    Defaults: CUDA with bfloat16 when a CUDA device is available (float32 on GPUs without bf16
    support), otherwise CPU with float32. ``device`` accepts ``"cuda"``, ``"cuda:1"``, ``"cpu"``,
    ``"mps"``, ...; ``dtype`` accepts ``"bf16"``/``"bfloat16"``, ``"fp16"``/``"float16"``,
    ``"fp32"``/``"float32"`` or a ``torch.dtype``.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() in ("", "auto")):
        dev = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"Unknown device {device!r}: use 'cuda', 'cuda:N', 'cpu' or 'mps'.") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"Device {device!r} was requested but CUDA is not available here; use 'cpu'.")
    if dtype is None or (isinstance(dtype, str) and dtype.strip().lower() in ("", "auto", "default")):
        if dev.type == "cuda" and torch.cuda.is_bf16_supported():
            dt = torch.bfloat16
        else:
            dt = torch.float32
    elif isinstance(dtype, torch.dtype):
        dt = dtype
    else:
        key = str(dtype).strip().lower().removeprefix("torch.")
        if key not in _DTYPE_NAMES:
            raise ValueError(f"Unknown dtype {dtype!r}: use one of bf16, fp16, fp32.")
        dt = _DTYPE_NAMES[key]
    if not dt.is_floating_point:
        raise ValueError(f"dtype must be a floating point type, got {dt}.")
    return dev, dt


def execution_device(module: torch.nn.Module) -> torch.device:
    """The device a module computes on: the offload target if offloaded, else its weights' device."""
    forced = getattr(module, "_graphrun_execution_device", None)
    if forced is not None:
        return forced
    for param in module.parameters():
        return param.device
    return torch.device("cpu")


def ensure_fp32_compute(text_encoder: torch.nn.Module) -> None:
    """Make a text encoder stored in a low precision compute in float32, as ComfyUI does.

    Each Linear/Embedding layer is upcast to float32 just for its forward and cast back after
    (diffusers' layerwise casting), so weights keep their low-precision values exactly but every
    operation runs in float32. A float32 encoder is left alone; calling this twice is harmless.
    """
    if getattr(text_encoder, "_graphrun_fp32_compute", False):
        return
    params = list(text_encoder.parameters())
    if not params or all(p.dtype == torch.float32 for p in params):
        return
    from diffusers.hooks import apply_layerwise_casting

    storage = params[0].dtype
    # An empty pattern tuple (not None) makes diffusers hook every leaf layer individually
    # instead of casting the whole model at once.
    apply_layerwise_casting(text_encoder, storage_dtype=storage, compute_dtype=torch.float32,
                            skip_modules_pattern=())
    text_encoder._graphrun_fp32_compute = True


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """Silence diffusers'/transformers' own progress bars (graphrun reports progress per node)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    bars = transformers_logging.is_progress_bar_enabled(), diffusers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars[0]:
            transformers_logging.enable_progress_bar()
        if bars[1]:
            diffusers_logging.enable_progress_bar()
