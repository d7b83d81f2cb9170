"""Z-Image prompt encoding with ComfyUI's semantics.

The prompt is wrapped in Qwen3's chat template
``"<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n"``, tokenized without padding or
truncation, and run through the Qwen3 encoder in float32; the conditioning is the hidden state
before the last layer (``hidden_states[-2]``), without the final norm. This differs from diffusers'
ZImagePipeline, which pads to 512 tokens and truncates longer prompts.
"""
from __future__ import annotations

import re
from typing import Any

import torch

from .loading import ensure_fp32_compute, execution_device

PROMPT_TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"

# ComfyUI's escape round trip: "\\(" -> "(", "\\)" -> ")" and "\\\\" -> "\\", left to right.
_ESCAPE = re.compile(r"\\([\\()])")


def unescape_prompt(text: str) -> str:
    """Remove the backslash of ``\\(``, ``\\)`` and ``\\\\`` as ComfyUI's tokenizer does."""
    return _ESCAPE.sub(r"\1", text)


def format_prompt(text: str) -> str:
    """The exact string the tokenizer sees for a user prompt."""
    return unescape_prompt(PROMPT_TEMPLATE.format(text))


def _unpack(model: Any) -> tuple[Any, Any]:
    if hasattr(model, "text_encoder") and hasattr(model, "tokenizer"):
        return model.text_encoder, model.tokenizer
    try:
        text_encoder, tokenizer = model
    except (TypeError, ValueError):
        raise TypeError(
            "encode_prompt expects ZImageParts, TextEncoderParts or a (text_encoder, tokenizer) pair."
        ) from None
    return text_encoder, tokenizer


def tokenize_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of the templated prompt (no special tokens added, no padding, no truncation)."""
    return list(tokenizer(format_prompt(text), add_special_tokens=False, truncation=False)["input_ids"])


def encode_prompt(model: Any, text: str) -> torch.Tensor:
    """Encode one prompt to Z-Image conditioning ``[1, L, D]`` (float32, on the CPU).

    ``model`` is a ``ZImageParts``, a ``TextEncoderParts`` or a ``(text_encoder, tokenizer)`` pair.
    Raises ``ValueError`` when the templated prompt has more tokens than the text encoder's
    ``max_position_embeddings``.
    """
    text_encoder, tokenizer = _unpack(model)
    ids = tokenize_prompt(tokenizer, text)
    limit = int(getattr(text_encoder.config, "max_position_embeddings", 0) or 0)
    if limit and len(ids) > limit:
        raise ValueError(
            f"The prompt is {len(ids)} tokens long (including the chat template), but the text encoder "
            f"accepts at most {limit} (max_position_embeddings). Shorten it by at least "
            f"{len(ids) - limit} tokens."
        )
    ensure_fp32_compute(text_encoder)
    device = execution_device(text_encoder)
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    with torch.no_grad():
        out = text_encoder(input_ids=input_ids, output_hidden_states=True, use_cache=False)
    return out.hidden_states[-2].float().cpu()
