"""Text conditioning: TextEncode, ConditioningZeroOut."""
from __future__ import annotations

import warnings
from typing import Annotated

from pydantic import Field

from graphrun.engine.context import Context
from graphrun.engine.node import CheckEnv, Comfy, Problem, node

from .rows import one_by_one
from .types import Clip, Conditioning


def _check_embeddings(literals: dict, env: CheckEnv) -> list[Problem]:
    """A damaged or pickle embedding file an `embedding:NAME` word names, from its header (a missing one
    is not a problem: the encoder drops it with a warning, as ComfyUI does)."""
    text = literals.get("text")
    if not isinstance(text, str):
        return []
    if "embedding:" not in text:  # zimage.text's EMBEDDING_PREFIX; importing it here would import torch
        return []
    from .model_files import ModelPathsError, model_file_problem, search_folders
    from .zimage.text import embedding_files

    try:
        folders = search_folders("embeddings", env.options.get("models_dirs", []),
                                 env.options.get("extra_model_paths"))
    except ModelPathsError as exc:
        return [Problem("text", str(exc), None)]
    problems = []
    for name, path in embedding_files(text, folders, env.comfy_version):
        problem = model_file_problem(path)
        if problem:
            problems.append(Problem("text", f"embedding '{name}' cannot be loaded: {problem}", None))
    return problems


@node(
    "TextEncode",
    category="conditioning",
    batch=lambda calls: one_by_one(text_encode)(calls),  # each prompt alone: no padding to a common length
    comfy=Comfy("CLIPTextEncode", dynamic_prompts=("text",), display_name="CLIP Text Encode (Prompt)",
                input_order=("text", "clip")),
    version=3,  # 2: embedding: words, ComfyUI's escapes, the clip's LoRAs; 3: the comfy setting's word rules
    check=_check_embeddings,
)
def text_encode(ctx: Context, clip: Clip, text: Annotated[str, Field(description="the prompt")] = "") -> Conditioning:
    """Encode a prompt for Z-Image (ComfyUI CLIPTextEncode with the lumina2/Z-Image encoder).

    The prompt is wrapped in Qwen3's chat template, tokenized without padding or truncation,
    and the second-to-last hidden state is taken, computed in fp32, with the clip's LoRAs
    (LoadLora's strength_clip) applied meanwhile. `embedding:NAME` words splice the textual-
    inversion embedding `embeddings/NAME.safetensors` (see --models-dir) into the tokens; a missing
    one is dropped with a warning. Only `\\(` and `\\)` are unescaped, as in ComfyUI. A prompt
    longer than the encoder's limit is an error (diffusers would silently cut it at 512 tokens).
    """
    from .model_files import search_folders
    from .sampling.guidance import Conditioning as ConditioningValue
    from .zimage.text import EMBEDDING_PREFIX, EmbeddingWarning, encode_prompt

    folders: list = []
    if EMBEDDING_PREFIX in text:  # only then: finding the folders may build the tiny model's folder
        folders = search_folders("embeddings", ctx.options.extra.get("models_dirs", []),
                                 ctx.options.extra.get("extra_model_paths"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with clip.ready() as encoder:
            cond = encode_prompt(encoder, text, folders, ctx.comfy_version)
    for warning in caught:  # missing embeddings become node warnings; anything else passes through
        if issubclass(warning.category, EmbeddingWarning):
            ctx.warn(str(warning.message))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return ConditioningValue.from_tensor(cond)


@node(
    "ConditioningZeroOut",
    category="conditioning",
    batch=lambda calls: one_by_one(conditioning_zero_out)(calls),
    comfy=Comfy("ConditioningZeroOut", category="advanced/conditioning"),
)
def conditioning_zero_out(conditioning: Conditioning) -> Conditioning:
    """Zeros of the same shape as each conditioning tensor (the Z-Image Turbo template's negative)."""
    return conditioning.zero_out()
