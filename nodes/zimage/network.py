"""The Z-Image transformer as a k-diffusion style denoiser (ComfyUI semantics).

``ZImageDenoiser.apply_model(x, sigma, context)`` returns the denoised estimate
``D = x - sigma * v`` with the flow velocity ``v = -transformer(x, t = 1 - sigma)``, exactly the
convention of ComfyUI's Lumina2/Z-Image model and of diffusers' ZImagePipeline (which also negates the
transformer output). ``x`` is in the model's latent space (already ``process_in``-scaled).
"""
from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F

from ..runtime import execution_device

if TYPE_CHECKING:
    from diffusers import ZImageTransformer2DModel

# The transformer pads caption tokens to a multiple of this (diffusers' SEQ_MULTI_OF).
_CAPTION_MULTIPLE = 32


class _Counter:
    """Shared between a denoiser and its copies, so a test sees every forward of one transformer."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class ZImageDenoiser:
    """A Z-Image transformer wrapped as a denoiser ``D(x, sigma, context)``.

    The handle is immutable: ``with_model_sampling`` returns a new handle that shares the same
    transformer, forward counter and hook list. ``forward_count`` counts transformer forwards; each
    entry of ``forward_hooks`` is called as ``hook(denoiser, x, sigma, context)`` before every
    forward (instrumentation for tests and progress reporting).
    """

    def __init__(
        self,
        transformer: ZImageTransformer2DModel,
        model_sampling: Any | None = None,
        latent_format: Any | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        from .qk_norm import use_comfy_qk_norm

        use_comfy_qk_norm(transformer)  # ComfyUI's q/k RMSNorm, whichever loader built the transformer
        self.transformer = transformer
        self._model_sampling = model_sampling
        self._latent_format = latent_format
        self._device = torch.device(device) if device is not None else None
        self._counter = _Counter()
        self.forward_hooks: list[Any] = []

    @classmethod
    def from_parts(cls, parts: Any, model_sampling: Any | None = None) -> ZImageDenoiser:
        """A denoiser over ``parts.transformer`` computing on ``parts.device`` (offload-aware)."""
        return cls(parts.transformer, model_sampling=model_sampling, device=parts.device)

    # -- handle ------------------------------------------------------------------------------

    @property
    def model_sampling(self) -> Any:
        """The flow model sampling (ComfyUI ``ModelSamplingDiscreteFlow``, CONST); default shift 3."""
        if self._model_sampling is None:
            from graphrun.nodes.sampling.schedules import FlowModelSampling

            self._model_sampling = FlowModelSampling(shift=3.0)
        return self._model_sampling

    @property
    def latent_format(self) -> Any:
        """The Flux latent format (ComfyUI ``latent_formats.Flux``: 16 channels, scale 0.3611,
        shift 0.1159) unless another was given."""
        if self._latent_format is None:
            from graphrun.nodes.sampling.schedules import FLUX_LATENT

            self._latent_format = FLUX_LATENT
        return self._latent_format

    def with_model_sampling(self, model_sampling: Any) -> ZImageDenoiser:
        """A copy using another model sampling (e.g. another shift), sharing the transformer."""
        clone = copy.copy(self)
        clone._model_sampling = model_sampling
        return clone

    @property
    def forward_count(self) -> int:
        """How many transformer forwards this handle and its copies have run."""
        return self._counter.count

    @property
    def device(self) -> torch.device:
        """Where the transformer computes."""
        return self._device if self._device is not None else execution_device(self.transformer)

    @property
    def dtype(self) -> torch.dtype:
        """The transformer's weight dtype; inputs are cast to it for the forward."""
        return next(self.transformer.parameters()).dtype

    @property
    def patch_size(self) -> int:
        return int(self.transformer.config.all_patch_size[0])

    # -- model call ----------------------------------------------------------------------------

    def _check_sizes(self, height: int, width: int, caption_lengths: Sequence[int]) -> None:
        axes = list(self.transformer.config.axes_lens)
        padded = max(_CAPTION_MULTIPLE * math.ceil(n / _CAPTION_MULTIPLE) for n in caption_lengths)
        # Caption tokens take RoPE positions 1..padded and the image sits at padded + 1.
        if padded + 2 > axes[0]:
            limit = (axes[0] - 2) // _CAPTION_MULTIPLE * _CAPTION_MULTIPLE
            raise ValueError(
                f"The prompt encodes to {max(caption_lengths)} tokens; the Z-Image transformer accepts at "
                f"most {limit} (its RoPE table has {axes[0]} positions). Shorten the prompt."
            )
        rows, cols = height // self.patch_size, width // self.patch_size
        if rows > axes[1] or cols > axes[2]:
            raise ValueError(
                f"The latent is {height}x{width} ({rows}x{cols} patches); the Z-Image transformer supports "
                f"at most {axes[1]}x{axes[2]} patches ({axes[1] * self.patch_size * 8}x"
                f"{axes[2] * self.patch_size * 8} pixels). Use a smaller image size."
            )

    def apply_model(
        self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor | Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Denoised estimate ``D = x - sigma * v`` for latents ``x`` at noise levels ``sigma``.

        Args:
            x: ``[N, C, H, W]`` latents in the model latent space (float32).
            sigma: ``[N]`` noise levels (a scalar or a one-element tensor is broadcast).
            context: ``[N, L, D]`` text embeddings, or a sequence of N ``[L_i, D]`` tensors when
                prompts have different lengths.

        Returns:
            ``[N, C, H, W]`` float32 on ``x``'s device.
        """
        if x.ndim != 4:
            raise ValueError(f"apply_model expects x of shape [N, C, H, W], got {tuple(x.shape)}.")
        n, _, height, width = x.shape
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        if sigma.numel() == 1 and n > 1:
            sigma = sigma.expand(n)
        if sigma.numel() != n:
            raise ValueError(f"sigma has {sigma.numel()} values for a batch of {n}.")
        captions = list(context.unbind(0)) if isinstance(context, torch.Tensor) else list(context)
        if len(captions) == 1 and n > 1:
            captions = captions * n
        if len(captions) != n:
            raise ValueError(f"context has {len(captions)} entries for a batch of {n}.")
        self._check_sizes(height, width, [c.shape[0] for c in captions])

        device, dtype = self.device, self.dtype
        # ComfyUI pads to the patch size with circular padding and crops the output back.
        pad_h, pad_w = (-height) % self.patch_size, (-width) % self.patch_size
        x_in = F.pad(x, (0, pad_w, 0, pad_h), mode="circular") if (pad_h or pad_w) else x
        latents = list(x_in.to(device=device, dtype=dtype).unsqueeze(2).unbind(0))  # N x [C, 1, H, W]
        caps = [c.to(device=device, dtype=dtype) for c in captions]
        # t = 1 - sigma in float32 (not (1000 - 1000 sigma) / 1000, which can differ in the last bit).
        t = (1.0 - sigma).to(device)

        for hook in self.forward_hooks:
            hook(self, x, sigma, context)
        self._counter.count += 1
        with torch.no_grad():
            out = self.transformer(latents, t, caps, return_dict=False)[0]
        net = torch.stack([o.float() for o in out], dim=0).squeeze(2)[:, :, :height, :width]
        v = -net.to(x.device)
        return x - sigma.view(n, 1, 1, 1) * v
