"""Text conditioning: TextEncode, ConditioningZeroOut."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field

from graphrun.engine.node import Comfy, node

from .types import Clip, Conditioning


@node(
    "TextEncode",
    category="conditioning",
    comfy=Comfy("CLIPTextEncode", dynamic_prompts=("text",)),
)
def text_encode(clip: Clip, text: Annotated[str, Field(description="the prompt")] = "") -> Conditioning:
    """Encode a prompt for Z-Image (ComfyUI CLIPTextEncode with the lumina2/Z-Image encoder).

    The prompt is wrapped in Qwen3's chat template, tokenized without padding or truncation,
    and the second-to-last hidden state is taken, computed in fp32. A prompt longer than the
    encoder's limit is an error (diffusers would silently cut it at 512 tokens).
    """
    from .sampling.guidance import Conditioning as ConditioningValue
    from .zimage.text import encode_prompt

    return ConditioningValue.from_tensor(encode_prompt((clip.text_encoder, clip.tokenizer), text))


@node("ConditioningZeroOut", category="conditioning", comfy=Comfy("ConditioningZeroOut"))
def conditioning_zero_out(conditioning: Conditioning) -> Conditioning:
    """Zeros of the same shape as each conditioning tensor (the Z-Image Turbo template's negative)."""
    return conditioning.zero_out()
