"""The Z-Image transformer as a k-diffusion style denoiser (ComfyUI semantics).

``ZImageDenoiser.apply_model(x, sigma, context)`` returns the denoised estimate
``D = x - sigma * v`` with the flow velocity ``v = -transformer(x, t = 1 - sigma)``, exactly the
convention of ComfyUI's Lumina2/Z-Image model and of diffusers' ZImagePipeline (which also negates the
transformer output). ``x`` is in the model's latent space (already ``process_in``-scaled).

The transformer is diffusers' ``ZImageTransformer2DModel`` (its modules, weights, LoRA patches and
quantized layers), but its forward is :mod:`.comfy_forward`, which computes in ComfyUI 0.33's order of
operations: on the CPU in float32 the model output equals ComfyUI's bit for bit, which its int8 layers
need (they quantize activations per row, so any last-bit difference changes their codes).
"""
from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F

from ..runtime import execution_device
from . import comfy_forward

if TYPE_CHECKING:
    from diffusers import ZImageTransformer2DModel

# The transformer pads caption tokens to a multiple of this.
_CAPTION_MULTIPLE = comfy_forward.PAD_MULTIPLE


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
        x_in = x_in.to(device=device, dtype=dtype)
        sigma_in = sigma.to(device)

        for hook in self.forward_hooks:
            hook(self, x, sigma, context)
        self._counter.count += 1
        comfy_forward.before_use(self.transformer)
        # Rows whose captions have one length run as one batch; on the CPU other lengths run as batches
        # of their own, as in ComfyUI, which never batches conds of different lengths (their num_tokens
        # differ): the batch matters to the last bit, and ComfyUI's own batches are reproduced exactly.
        # Elsewhere (GPUs, where nothing is bit-exact) all rows share one masked forward, for throughput.
        groups: dict[int, list[int]] = {}
        for index, caption in enumerate(captions):
            groups.setdefault(caption.shape[0], []).append(index)
        out = torch.empty(n, x.shape[1], height, width, dtype=torch.float32, device=x.device)
        with torch.no_grad():
            if len(groups) > 1 and device.type != "cpu":
                caps_mixed = [c.to(device=device, dtype=dtype) for c in captions]
                model_out = comfy_forward.forward_mixed(self.transformer, x_in, sigma_in, caps_mixed)
                out.copy_(model_out[:, :, :height, :width].float().to(x.device))
                batches: list[list[int]] = []
            else:
                batches = list(groups.values())
            for rows in batches:
                caps = torch.stack([captions[i] for i in rows]).to(device=device, dtype=dtype)
                if len(rows) == n:
                    model_out = comfy_forward.forward(self.transformer, x_in, sigma_in, caps)
                else:
                    pick = torch.tensor(rows, device=device)
                    model_out = comfy_forward.forward(self.transformer, x_in[pick], sigma_in[pick], caps)
                out[rows] = model_out[:, :, :height, :width].float().to(x.device)
        # ComfyUI's CONST denoised: x - model_output * sigma (the model output is the negated net).
        return x - out * sigma.view(n, 1, 1, 1)
