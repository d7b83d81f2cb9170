"""ComfyUI's q/k RMSNorm for the Z-Image transformer's attention.

diffusers' Z-Image attention normalises queries and keys with its own RMSNorm at eps 1e-5 (variance in
float32, then a multiply by rsqrt). ComfyUI's NextDiT builds ``torch.nn.RMSNorm`` without an eps, which
means ``torch.finfo(input dtype).eps`` (1.2e-7 in float32, 7.8e-3 in bfloat16) through the fused
``rms_norm`` kernel. On the tiny model this is the largest single difference between the two forwards
(4.2e-6 relative instead of 2.6e-7), so the loaded modules are switched to ComfyUI's form. The weight
parameter is kept as is: state-dict keys, LoRA patching and offload hooks are unaffected.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class ComfyQKNorm(torch.nn.Module):
    """``rms_norm(x, weight, eps=None)`` over the last dimension, as ComfyUI's q/k norm computes it."""

    def __init__(self, weight: torch.nn.Parameter | None, dim: int) -> None:
        super().__init__()
        self.weight = weight
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(dtype=x.dtype, device=x.device)
        return F.rms_norm(x, (self.dim,), weight, None)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps=finfo(dtype).eps"


def use_comfy_qk_norm(transformer: torch.nn.Module) -> int:
    """Replace the attention q/k norms of a diffusers Z-Image transformer by :class:`ComfyQKNorm`
    (idempotent). Returns how many modules were replaced."""
    replaced = 0
    for module in transformer.modules():
        for name in ("norm_q", "norm_k"):
            norm = getattr(module, name, None)
            if norm is None or isinstance(norm, ComfyQKNorm) or not hasattr(norm, "eps"):
                continue
            weight = getattr(norm, "weight", None)
            dim = int(weight.shape[-1]) if weight is not None else int(getattr(norm, "dim", 0) or 0)
            if not dim:
                continue
            setattr(module, name, ComfyQKNorm(weight, dim))
            replaced += 1
    return replaced
