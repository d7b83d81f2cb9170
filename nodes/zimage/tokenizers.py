"""The tokenizer of a Z-Image text encoder: the tiny model's byte tokenizer, the Qwen tokenizer bundled with
graphrun (the one ComfyUI uses), or a folder the user names.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from .loading import ModelLoadError, _offline
from .sources import BUNDLED_TOKENIZER_SIZE, TOKENIZER_ENV, is_tokenizer_folder as _is_tokenizer_folder, \
    tokenizer_env_problem

__all__ = ["bundled_tokenizer", "byte_tokenizer", "find_tokenizer"]


def byte_tokenizer() -> Any:
    """The offline byte-level Qwen2 tokenizer of the tiny model."""
    from .tiny import build_tokenizer

    return build_tokenizer()


@functools.lru_cache(maxsize=1)
def bundled_tokenizer() -> Any:
    """The Qwen2 BPE tokenizer shipped with graphrun (``graphrun/nodes/zimage/tokenizer/``): the
    files ComfyUI uses for Z-Image's Qwen3 text encoder (see ``tokenizer/PROVENANCE.md``). Loaded
    once per process; tokenizing does not change it."""
    from importlib import resources

    from transformers import AutoTokenizer

    with resources.as_file(resources.files(__package__) / "tokenizer") as folder, _offline():
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _load_tokenizer_folder(folder: Path) -> Any:
    from transformers import AutoTokenizer

    with _offline():
        try:
            return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"The tokenizer folder {folder} could not be loaded: {exc}") from exc


def find_tokenizer(text_encoder_path: str | os.PathLike[str], vocab_size: int,
                   tokenizer: str | os.PathLike[str] | None = None) -> Any:
    """The tokenizer for a single-file text encoder.

    Tiny encoders (vocab <= 512) use the offline byte-level tokenizer. A real Qwen3 uses, in order:
    ``tokenizer`` if given, ``tokenizer/`` next to the file, ``$GRAPHRUN_TOKENIZER``, else the Qwen
    tokenizer bundled with graphrun (:func:`bundled_tokenizer`, what ComfyUI uses), which fits every
    encoder with Qwen's vocabulary.
    """
    if tokenizer is None and vocab_size <= 512:
        return byte_tokenizer()
    file = Path(text_encoder_path)
    if tokenizer is not None:
        folder = Path(tokenizer).expanduser()
        if not _is_tokenizer_folder(folder):
            raise ModelLoadError(f"The tokenizer folder {folder} needs tokenizer.json, or vocab.json and merges.txt.")
        return _load_tokenizer_folder(folder)
    if _is_tokenizer_folder(file.parent / "tokenizer"):
        return _load_tokenizer_folder(file.parent / "tokenizer")
    problem = tokenizer_env_problem()
    if problem:
        raise ModelLoadError(problem)
    if os.environ.get(TOKENIZER_ENV):
        return _load_tokenizer_folder(Path(os.environ[TOKENIZER_ENV]).expanduser())
    if vocab_size >= BUNDLED_TOKENIZER_SIZE:
        return bundled_tokenizer()
    raise ModelLoadError(
        f"The text encoder {file} needs its tokenizer (Qwen2Tokenizer: tokenizer.json, or vocab.json + "
        f"merges.txt): its vocabulary has {vocab_size} tokens, fewer than the {BUNDLED_TOKENIZER_SIZE} of the Qwen "
        f"tokenizer bundled with graphrun. Looked in: {file.parent / 'tokenizer'}, ${TOKENIZER_ENV} (unset). Put the "
        f"encoder's 'tokenizer' folder at {file.parent / 'tokenizer'}, or set {TOKENIZER_ENV}=/path/to/that/folder."
    )
