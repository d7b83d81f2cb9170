"""What a LoadZImage ``path`` points at, found from folder layouts and safetensors headers alone.

* ``tiny``: the built-in tiny random-weight model;
* a diffusers folder: ``model_index.json`` with ``transformer/``, ``text_encoder/``, ``vae/`` (and
  usually ``tokenizer/``; without it the bundled Qwen tokenizer is used);
* a ComfyUI models folder: ``diffusion_models/`` (or ``unet/``), ``text_encoders/`` (or ``clip/``) and
  ``vae/``, each holding exactly one Z-Image file (recognised by its tensor names: a Z-Image
  transformer, a Qwen3 text encoder, a 16-channel Flux VAE);
* a Hugging Face repo id (``Tongyi-MAI/Z-Image-Turbo``) that is not a local path: its snapshot in the
  local Hugging Face cache, found offline (nothing is downloaded).

Everything here is cheap and torch-free, so validation (GR018) reports a wrong path before any
weights load; the loaders use the same answers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..model_files import (
    ModelFileError,
    ModelFileNotFound,
    comfy_layout,
    looks_like_repo_id,
    read_safetensors_header,
    resolve_hf_repo,
    safetensors_files,
)

TRANSFORMER_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
VAE_PREFIXES = ("first_stage_model.", "vae.")
TEXT_ENCODER_PREFIXES = ("model.",)

DIFFUSERS_PARTS = ("transformer", "text_encoder", "vae")
EXPECTED = (
    "a Z-Image diffusers folder (model_index.json with transformer/, text_encoder/, tokenizer/, vae/; e.g. a download "
    "of Tongyi-MAI/Z-Image-Turbo), a ComfyUI models folder (diffusion_models/ or unet/, text_encoders/ or clip/, "
    "vae/, each with one Z-Image file), a Hugging Face repo id in the local cache, or 'tiny'"
)
_SPLIT_LOADERS = (
    "load the files you mean with the split-file loaders LoadDiffusionModel, LoadTextEncoder and LoadVAE "
    "(ComfyUI's UNETLoader, CLIPLoader, VAELoader), e.g. graphs/zimage_3stage.yaml with --models-dir"
)
# The three Z-Image files of a ComfyUI models folder: (key, kind folder, what it is).
COMFY_PARTS = (
    ("transformer", "diffusion_models", "Z-Image diffusion model"),
    ("text_encoder", "text_encoders", "Qwen3 text encoder"),
    ("vae", "vae", "Flux VAE (16 latent channels)"),
)


TOKENIZER_ENV = "GRAPHRUN_TOKENIZER"
#: Token count of the bundled Qwen tokenizer (151,643 BPE tokens + 26 added tokens).
BUNDLED_TOKENIZER_SIZE = 151_669


def encoder_vocab(folder: Path) -> int:
    """The vocabulary size in a text encoder folder's config.json (0 when unreadable)."""
    import json

    try:
        value = json.loads((folder / "config.json").read_text("utf-8")).get("vocab_size", 0)
    except (OSError, ValueError, AttributeError):
        return 0
    return value if isinstance(value, int) else 0


def is_tokenizer_folder(folder: Path) -> bool:
    """A folder a Qwen2 tokenizer loads from: tokenizer.json, or vocab.json and merges.txt."""
    if not folder.is_dir():
        return False
    return (folder / "tokenizer.json").is_file() or all((folder / n).is_file() for n in ("vocab.json", "merges.txt"))


def tokenizer_env_problem() -> str | None:
    """Why ``$GRAPHRUN_TOKENIZER`` cannot be used, or None (also when it is unset)."""
    import os

    value = os.environ.get(TOKENIZER_ENV)
    if not value:
        return None
    folder = Path(value).expanduser()
    if not is_tokenizer_folder(folder):
        state = "does not exist" if not folder.exists() else "is not a tokenizer folder"
        return (f"{TOKENIZER_ENV}={value} {state}: it must name a folder with tokenizer.json, or vocab.json and "
                f"merges.txt (e.g. the tokenizer/ folder of Tongyi-MAI/Z-Image-Turbo); unset it to use the Qwen "
                f"tokenizer bundled with graphrun")
    return None


class ZImageSourceError(ValueError):
    """A LoadZImage path that names no usable Z-Image model; the message says what was expected."""


def strip_prefix(keys: Any, prefixes: tuple[str, ...]) -> str:
    """The known prefix (e.g. ``model.diffusion_model.``) that most keys of a file carry, or ''."""
    keys = list(keys)
    for prefix in prefixes:
        if keys and sum(k.startswith(prefix) for k in keys) >= max(1, len(keys) // 2):
            return prefix
    return ""


def looks_like(kind: str, shapes: dict[str, tuple[int, ...]]) -> bool:
    """Whether a state dict's keys are those of a Z-Image ``transformer``, a Qwen-family
    ``text_encoder`` or a Flux-style ``vae``."""
    keys = set(shapes)
    if kind == "transformer":
        p = strip_prefix(keys, TRANSFORMER_PREFIXES)
        return f"{p}cap_embedder.1.weight" in keys and (
            f"{p}layers.0.attention.qkv.weight" in keys or f"{p}layers.0.attention.to_q.weight" in keys
        )
    if kind == "text_encoder":
        p = strip_prefix(keys, TEXT_ENCODER_PREFIXES)
        return f"{p}embed_tokens.weight" in keys and f"{p}layers.0.self_attn.q_proj.weight" in keys
    if kind == "vae":
        p = strip_prefix(keys, VAE_PREFIXES)
        return f"{p}encoder.conv_in.weight" in keys and f"{p}decoder.conv_out.weight" in keys
    raise ValueError(kind)


def is_zimage_part(kind: str, shapes: dict[str, tuple[int, ...]]) -> bool:
    """:func:`looks_like`, narrowed to what Z-Image can use: a Qwen3 encoder (q/k norms) and a VAE
    with 16 latent channels."""
    if not looks_like(kind, shapes):
        return False
    if kind == "text_encoder":
        p = strip_prefix(shapes, TEXT_ENCODER_PREFIXES)
        return f"{p}layers.0.self_attn.q_norm.weight" in shapes
    if kind == "vae":
        p = strip_prefix(shapes, VAE_PREFIXES)
        conv_in = shapes.get(f"{p}decoder.conv_in.weight", ())
        return len(conv_in) == 4 and conv_in[1] == 16
    return True


@dataclass(frozen=True)
class ZImageSource:
    """Where a Z-Image model comes from: ``kind`` ``tiny``, ``diffusers`` (``folder``) or ``comfy``
    (``files``: ``transformer``, ``text_encoder``, ``vae``); ``repo_id`` when found in the Hugging
    Face cache."""

    kind: Literal["tiny", "diffusers", "comfy"]
    folder: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    repo_id: str | None = None


def resolve_zimage_source(path: str) -> ZImageSource:
    """What a LoadZImage path names (see the module docs); raises :class:`ZImageSourceError`."""
    if path == "tiny":
        return ZImageSource("tiny")
    if not path.strip():
        raise ZImageSourceError(f"the path is empty; give {EXPECTED}")
    local = Path(path).expanduser()
    if local.exists():
        return _local_source(local)
    if looks_like_repo_id(path):
        try:
            folder = resolve_hf_repo(path)
        except ModelFileNotFound as exc:
            raise ZImageSourceError(str(exc)) from None
        return _local_source(folder, repo_id=path)
    raise ZImageSourceError(f"Z-Image model folder '{path}' does not exist; give {EXPECTED}")


def _local_source(root: Path, repo_id: str | None = None) -> ZImageSource:
    where = f"'{repo_id}' (in the Hugging Face cache: {root})" if repo_id else f"'{root}'"
    if not root.is_dir():
        raise ZImageSourceError(
            f"{where} is a file, but LoadZImage takes a folder: {EXPECTED}. For a single file, {_SPLIT_LOADERS}"
        )
    if (root / "model_index.json").is_file():
        return _diffusers_source(root, where, repo_id)
    layout = comfy_layout(root)
    if layout is not None:
        return _comfy_source(root, layout, where)
    hint = ""
    if (root / "models").is_dir() and comfy_layout(root / "models") is not None:
        hint = f" ({root / 'models'} looks like a ComfyUI models folder: did you mean that?)"
    raise ZImageSourceError(f"{where} is neither a diffusers folder nor a ComfyUI models folder{hint}; expected "
                            f"{EXPECTED}")


def _weights_problem(files: list[Path]) -> str | None:
    for file in files:
        try:
            read_safetensors_header(file)
        except ModelFileError as exc:
            return str(exc)
    return None


def _diffusers_source(root: Path, where: str, repo_id: str | None) -> ZImageSource:
    missing = [name for name in DIFFUSERS_PARTS if not (root / name).is_dir()]
    if not (root / "tokenizer").exists() and "text_encoder" not in missing and \
            encoder_vocab(root / "text_encoder") < BUNDLED_TOKENIZER_SIZE:
        missing.append("tokenizer")  # the bundled Qwen tokenizer does not fit a smaller vocabulary
    if missing:
        raise ZImageSourceError(
            f"{where} is not a complete Z-Image diffusers folder: missing {', '.join(m + '/' for m in missing)}"
            + (" (an incomplete download? fetch the whole repo)" if repo_id else "") + f"; expected {EXPECTED}"
        )
    for name in DIFFUSERS_PARTS:
        weights = sorted((root / name).glob("*.safetensors"))
        if not weights:
            pickles = [f.name for f in (root / name).iterdir() if f.suffix.lower() in (".bin", ".pt", ".pth", ".ckpt")]
            what = f"only pickle weights ({', '.join(pickles)})" if pickles else "no .safetensors weights"
            raise ZImageSourceError(f"{where}: {root / name} holds {what}; graphrun loads safetensors only "
                                    f"(download the .safetensors version of the model)")
        problem = _weights_problem(weights)
        if problem:
            raise ZImageSourceError(f"{where}: the {name} weights cannot be loaded: {problem}")
    return ZImageSource("diffusers", folder=root, repo_id=repo_id)


def _comfy_source(root: Path, layout: dict[str, list[Path]], where: str) -> ZImageSource:
    missing = [f"{folder}/" for _, folder, _ in COMFY_PARTS if folder not in layout]
    if missing:
        raise ZImageSourceError(
            f"{where} looks like a ComfyUI models folder but has no {' and no '.join(missing)} folder; LoadZImage "
            f"needs one Z-Image diffusion model, text encoder and VAE there. Otherwise {_SPLIT_LOADERS}"
        )
    files: dict[str, Path] = {}
    for key, folder, what in COMFY_PARTS:
        candidates: list[Path] = []
        others: list[str] = []
        for file in (f for sub in layout[folder] for f in safetensors_files(sub)):
            try:
                header = read_safetensors_header(file)
            except ModelFileError as exc:
                others.append(f"{file.name} (unreadable: {str(exc).removeprefix(str(file)).strip()})")
                continue
            if is_zimage_part(key, header.shapes):
                candidates.append(file)
            else:
                others.append(file.name)
        if len(candidates) == 1:
            files[key] = candidates[0]
            continue
        rel = [str(c.relative_to(root)) for c in candidates]
        if candidates:
            problem = f"{len(candidates)} {what} files: {', '.join(rel)}"
        else:
            seen = ", ".join(others[:6])
            places = " or ".join(str(sub) for sub in layout[folder])
            problem = f"no {what} file in {places}" + (f" (found: {seen}{', ...' if len(others) > 6 else ''})"
                                                       if others else " (no .safetensors files there)")
        raise ZImageSourceError(
            f"{where} is a ComfyUI models folder with {problem}; LoadZImage takes it only when it holds exactly one "
            f"Z-Image diffusion model, text encoder and VAE. Otherwise {_SPLIT_LOADERS}"
        )
    return ZImageSource("comfy", folder=root, files=files)


def source_problem(path: str) -> str | None:
    """The error :func:`resolve_zimage_source` would raise, as text, or None."""
    try:
        resolve_zimage_source(path)
    except ZImageSourceError as exc:
        return str(exc)
    return None


__all__ = [
    "COMFY_PARTS", "EXPECTED", "TEXT_ENCODER_PREFIXES", "TRANSFORMER_PREFIXES", "VAE_PREFIXES", "ZImageSource",
    "ZImageSourceError", "is_zimage_part", "looks_like", "resolve_zimage_source", "source_problem", "strip_prefix",
]
