"""Z-Image prompt encoding with ComfyUI v0.18.1's semantics.

The prompt is wrapped in Qwen3's chat template
``"<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n"``, tokenized without padding or
truncation, and run through the Qwen3 encoder in float32; the conditioning is the hidden state
before the last layer (``hidden_states[-2]``), without the final norm. This differs from diffusers'
ZImagePipeline, which pads to 512 tokens and truncates longer prompts. The encoder runs in ComfyUI's
operation order (:mod:`.qwen3_forward`), so on the CPU the conditioning is bit-identical to ComfyUI's,
which its int8 diffusion models need.

Two details of ComfyUI's tokenizer are reproduced exactly:

- Escapes: only ``\\(`` and ``\\)`` lose their backslash; every other backslash, ``\\\\`` included,
  stays as written. (Z-Image ignores ``(word:1.2)`` weights, so parentheses are otherwise plain text.)
- Textual-inversion embeddings, as ComfyUI 0.33 reads them (commit 6c62ca0b): the templated text is
  cut before every ``embedding:`` that follows any whitespace (the whitespace stays with the text
  before it) and the pieces are tokenized one by one. A piece ``embedding:NAME rest`` takes ``NAME``
  up to its first ``<`` or ``[`` (the rest of the word goes back to the text: an embedding at the very
  end of a prompt no longer swallows the template's ``<|im_end|>``) and looks it up in the
  ``embeddings/`` model folders (``NAME``, then ``NAME.safetensors``; in each folder and its
  subfolders; when not found, once more with trailing commas stripped); its vectors go into the
  sequence where the word stood, and ``rest`` is tokenized after them. A missing embedding is dropped
  with a warning naming it. The encoder then runs on the token embeddings with those vectors spliced
  in. ComfyUI v0.18.1 (``comfy_version="0.18.1"``) cut only before ``" embedding:"`` and
  ``"\\nembedding:"``, dropping that space or newline, and did not cut names at ``<``/``[``, so an
  embedding at the very end of a prompt took ``<|im_end|>`` into its name and was not found.

Embedding files must be safetensors (pickle ``.pt``/``.bin`` files are refused) holding vectors of
the encoder's hidden size; the tensor used is the one named ``qwen3_4b`` (ComfyUI's key for this
encoder), else ``bundle_emb.*`` entries, else the file's first tensor.
"""
from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..runtime import ensure_fp32_compute, execution_device
from . import qwen3_forward

PROMPT_TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"

#: The word prefix that names a textual-inversion embedding in a prompt.
EMBEDDING_PREFIX = "embedding:"

# ComfyUI v0.18.1 cuts the text before these (the separator itself is dropped); 0.33 before
# "embedding:" after any whitespace, which stays with the text before it.
_EMBEDDING_CUT_018 = re.compile(r" embedding:|\nembedding:")
_EMBEDDING_CUT = re.compile(r"(?<=\s)embedding:")
# ComfyUI 0.33 ends an embedding's name at the first of these.
_EMBEDDING_NAME_END = re.compile(r"[<\[]")
# The name ComfyUI looks for inside an embedding file made for several encoders.
_EMBEDDING_KEY = "qwen3_4b"
# Extensions tried after the bare name, in ComfyUI's order; only the first is accepted here.
_EMBEDDING_EXTENSIONS = (".safetensors", ".pt", ".bin")

# ComfyUI protects "\\(" and "\\)" with these two control-character pairs and then turns the pairs
# into bare parentheses; a prompt that already holds the pairs therefore gets parentheses too.
_CLOSE_MARK, _OPEN_MARK = "\0\1", "\0\2"


class EmbeddingWarning(UserWarning):
    """An ``embedding:NAME`` in a prompt that names no embedding file (it is dropped)."""


class EmbeddingError(ValueError):
    """An embedding file that cannot be used (pickle, unreadable, or the wrong vector size)."""


def unescape_prompt(text: str) -> str:
    """Remove the backslash of ``\\(`` and ``\\)`` as ComfyUI's tokenizer does; ``\\\\`` stays ``\\\\``."""
    marked = text.replace("\\)", _CLOSE_MARK).replace("\\(", _OPEN_MARK)
    return marked.replace(_CLOSE_MARK, ")").replace(_OPEN_MARK, "(")


def format_prompt(text: str) -> str:
    """The exact string the tokenizer sees for a user prompt (before embedding words are cut out)."""
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


# ---------------------------------------------------------------------------------------------
# Embedding files


def _search_order(folders: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Each folder followed by its subfolders (ComfyUI searches all of them; its order is arbitrary,
    graphrun's is: the folders as given, each then walked in sorted order)."""
    seen: dict[str, None] = {}
    for folder in folders:
        root = os.path.abspath(os.fspath(folder))
        seen.setdefault(root, None)
        for current, subdirs, _files in os.walk(root, followlinks=True):
            subdirs.sort()
            seen.setdefault(os.path.abspath(current), None)
    return list(seen)


def find_embedding(name: str, folders: Sequence[str | os.PathLike[str]]) -> Path | None:
    """The file an ``embedding:name`` refers to, or None: ``name`` as given, else with ``.safetensors``
    (``.pt``/``.bin`` are found too, and then refused by :func:`load_embedding`), in each folder; a
    name that leads outside its folder (``../x``) is not looked up there."""
    for folder in _search_order(folders):
        candidate = os.path.abspath(os.path.join(folder, name))
        try:
            if os.path.commonpath((folder, candidate)) != folder:
                continue
        except ValueError:  # different drives
            continue
        if os.path.isfile(candidate):
            return Path(candidate)
        for extension in _EMBEDDING_EXTENSIONS:
            if os.path.isfile(candidate + extension):
                return Path(candidate + extension)
    return None


def load_embedding(path: str | os.PathLike[str], hidden_size: int | None = None) -> torch.Tensor:
    """The vectors of an embedding file, ``[n, hidden]`` in float32 (ComfyUI's choice of tensor, see
    the module docs). Raises :class:`EmbeddingError` for a pickle file, an unreadable or empty file,
    and vectors whose size is not ``hidden_size``."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise EmbeddingError(
            f"embedding {path.name!r} is not a .safetensors file; graphrun refuses pickle-based "
            "embeddings (.pt/.bin) because loading them can run code. Convert it to safetensors."
        )
    from ..model_files import ModelFileError, read_safetensors_header, require_finite

    try:
        read_safetensors_header(path)  # says what is wrong with a damaged file, before reading it
        tensors = load_file(str(path), device="cpu")
    except ModelFileError as err:
        raise EmbeddingError(f"embedding {path.name!r} is not a valid safetensors file: {err}") from None
    except Exception as err:  # safetensors raises several types for damaged files
        raise EmbeddingError(f"embedding {path.name!r} is not a valid safetensors file: {err}") from err
    require_finite(tensors, path, "embedding file", error=EmbeddingError)
    if _EMBEDDING_KEY in tensors:
        vectors = tensors[_EMBEDDING_KEY]
    else:
        bundled = [t for k, t in tensors.items() if k.startswith("bundle_emb.") and k.endswith(".string_to_param.*")]
        if not bundled:
            bundled = [t for k, t in tensors.items() if k.startswith("bundle_emb.") and k.endswith(f".{_EMBEDDING_KEY}")]
        if bundled:
            vectors = torch.cat(bundled, dim=0)
        elif tensors:
            vectors = next(iter(tensors.values()))
        else:
            raise EmbeddingError(f"embedding {path.name!r} holds no tensors")
    vectors = vectors.reshape(1, -1) if vectors.ndim == 1 else vectors.reshape(-1, vectors.shape[-1])
    if hidden_size is not None and vectors.shape[-1] != hidden_size:
        raise EmbeddingError(
            f"embedding {path.name!r} has vectors of size {vectors.shape[-1]} (shape {tuple(vectors.shape)}), "
            f"but this text encoder's hidden size is {hidden_size}: it was made for another text encoder."
        )
    return vectors.to(torch.float32)


def _legacy_embeddings(comfy_version: str | None) -> bool:
    """Whether ``comfy_version`` reads ``embedding:`` words as ComfyUI v0.18.1 did (before 6c62ca0b)."""
    from graphrun.engine.comfy.versions import comfy_at_least

    return not comfy_at_least(comfy_version or "", "0.33")


def _embedding_pieces(templated: str, comfy_version: str | None) -> list[str]:
    """The templated prompt cut before its ``embedding:`` words, the prefix removed from every piece after
    the first (ComfyUI's ``re.split`` in ``tokenize_with_weights``)."""
    cut = _EMBEDDING_CUT_018 if _legacy_embeddings(comfy_version) else _EMBEDDING_CUT
    return cut.split(templated)


def _find(name_and_rest: str, folders: Sequence[str | os.PathLike[str]], comfy_version: str | None = None
          ) -> tuple[str, Path | None, str]:
    """``(name, file or None, leftover text)`` for the text after ``embedding:`` (ComfyUI's rules)."""
    words = name_and_rest.split()
    if not words:
        return "", None, ""
    name, leftover = words[0], " ".join(words[1:])
    end = None if _legacy_embeddings(comfy_version) else _EMBEDDING_NAME_END.search(name)
    if end is not None:
        leftover = name[end.start():] + (" " + leftover if leftover else "")
        name = name[:end.start()]
    if not name:
        return name, None, leftover
    path = find_embedding(name, folders)
    if path is None:
        stripped = name.strip(",")
        if len(stripped) < len(name):
            path = find_embedding(stripped, folders)
            leftover = f"{name[len(stripped):]} {leftover}"
            name = stripped
    return name, path, leftover


def _lookup(name_and_rest: str, folders: Sequence[str | os.PathLike[str]], hidden_size: int | None,
            comfy_version: str | None = None) -> tuple[str, torch.Tensor | None, str]:
    """``(name, vectors or None, leftover text)`` for the text after ``embedding:``."""
    name, path, leftover = _find(name_and_rest, folders, comfy_version)
    return name, (None if path is None else load_embedding(path, hidden_size)), leftover


def embedding_files(text: str, folders: Sequence[str | os.PathLike[str]], comfy_version: str | None = None
                    ) -> list[tuple[str, Path]]:
    """The embedding files a prompt's ``embedding:NAME`` words refer to, as ``(name, file)``, found by the
    rules the encoder uses (for pre-run checks: missing ones are dropped by the encoder, not listed)."""
    pieces = _embedding_pieces(format_prompt(text), comfy_version)
    found = []
    for piece in pieces[1:]:  # pieces[0] is the template's start, never an embedding word
        name, path, _ = _find(piece.strip("\n"), folders, comfy_version)
        if path is not None:
            found.append((name, path))
    return found


# ---------------------------------------------------------------------------------------------
# Tokens and encoding


def tokenize_prompt(
    tokenizer: Any,
    text: str,
    embedding_folders: Sequence[str | os.PathLike[str]] = (),
    hidden_size: int | None = None,
    comfy_version: str | None = None,
) -> list[int | torch.Tensor]:
    """The templated prompt as ComfyUI's Z-Image tokenizer produces it: token ids, with the vectors of
    ``embedding:NAME`` words (1-D float32 tensors, one per vector) where those words stood.

    No special tokens are added, nothing is padded or truncated. Embeddings are looked up in
    ``embedding_folders``; a missing one is dropped with an :class:`EmbeddingWarning`. ``comfy_version``
    picks the embedding-word rules (see the module docs; default: the current ComfyUI).
    """
    pieces = _embedding_pieces(format_prompt(text), comfy_version)
    words = [pieces[0]] + [EMBEDDING_PREFIX + p for p in pieces[1:]]
    out: list[int | torch.Tensor] = []
    for word in (w for w in words if w != ""):
        if word.startswith(EMBEDDING_PREFIX):
            name_and_rest = word[len(EMBEDDING_PREFIX):].strip("\n")
            name, vectors, leftover = _lookup(name_and_rest, embedding_folders, hidden_size, comfy_version)
            if vectors is None:
                where = ", ".join(str(f) for f in embedding_folders) or "no embeddings folder configured"
                hint = (" (at the very end of a prompt the template's <|im_end|> becomes part of the name, in "
                        "ComfyUI too: put a space or a word after it)") if "<|im_end|>" in name else ""
                warnings.warn(
                    f"embedding {name!r} not found (looked in: {where}); 'embedding:{name}' is dropped from "
                    f"the prompt, as ComfyUI drops it{hint}",
                    EmbeddingWarning,
                    stacklevel=2,
                )
            else:
                out.extend(vectors.unbind(0))
            if leftover == "":
                continue
            word = leftover
        out.extend(tokenizer(word, add_special_tokens=False, truncation=False)["input_ids"])
    return out


def encode_prompt(
    model: Any, text: str, embedding_folders: Sequence[str | os.PathLike[str]] = (), comfy_version: str | None = None
) -> torch.Tensor:
    """Encode one prompt to Z-Image conditioning ``[1, L, D]`` (float32, on the CPU).

    ``model`` is a ``ZImageParts``, a ``TextEncoderParts`` or a ``(text_encoder, tokenizer)`` pair;
    ``embedding:NAME`` words are resolved in ``embedding_folders`` (see the module docs). Raises
    ``ValueError`` when the templated prompt has more tokens than the text encoder's
    ``max_position_embeddings``, and :class:`EmbeddingError` for an unusable embedding file.
    """
    text_encoder, tokenizer = _unpack(model)
    hidden_size = int(getattr(text_encoder.config, "hidden_size", 0) or 0) or None
    items = tokenize_prompt(tokenizer, text, embedding_folders, hidden_size, comfy_version)
    limit = int(getattr(text_encoder.config, "max_position_embeddings", 0) or 0)
    if limit and len(items) > limit:
        raise ValueError(
            f"The prompt is {len(items)} tokens long (including the chat template), but the text encoder "
            f"accepts at most {limit} (max_position_embeddings). Shorten it by at least "
            f"{len(items) - limit} tokens."
        )
    ensure_fp32_compute(text_encoder)
    device = execution_device(text_encoder)
    with torch.no_grad():
        if not qwen3_forward.supports(text_encoder):
            return _transformers_hidden_state(text_encoder, items, device)
        _before_use(text_encoder)
        embeds = _splice_embeddings(text_encoder, items).to(device)
        key_mask = torch.tensor([qwen3_forward.key_mask_for(items)], dtype=torch.long, device=device)
        out = qwen3_forward.hidden_state(text_encoder, embeds, key_mask, layer_index=-2)
    return out.float().cpu()


def _transformers_hidden_state(text_encoder: Any, items: Sequence[int | torch.Tensor], device: torch.device
                               ) -> torch.Tensor:
    """``hidden_states[-2]`` from transformers' own forward, for a model :mod:`.qwen3_forward` does not
    cover (not bit-identical to ComfyUI, ~5e-7 relative)."""
    if all(isinstance(i, int) for i in items):
        input_ids = torch.tensor([items], dtype=torch.long, device=device)
        out = text_encoder(input_ids=input_ids, output_hidden_states=True, use_cache=False)
    else:
        embeds = _splice_embeddings(text_encoder, items).to(device)
        out = text_encoder(inputs_embeds=embeds, output_hidden_states=True, use_cache=False)
    return out.hidden_states[-2].float().cpu()


def _before_use(text_encoder: Any) -> None:
    """What calling the model would trigger before its forward, which :mod:`.qwen3_forward` bypasses: the
    forward pre-hooks (``enable_offload`` sends the other components back to the CPU) and accelerate's
    offload hook, which moves the encoder to its execution device."""
    for hook in list(text_encoder._forward_pre_hooks.values()):
        hook(text_encoder, ())
    offload_hook = getattr(text_encoder, "_hf_hook", None)
    if offload_hook is not None:
        offload_hook.pre_forward(text_encoder)


def _splice_embeddings(text_encoder: Any, items: Sequence[int | torch.Tensor]) -> torch.Tensor:
    """``[1, L, D]`` float32 input embeddings: the token embeddings, and the embedding vectors at
    their positions (ComfyUI embeds the ids in float32 and inserts the vectors between them)."""
    table = text_encoder.get_input_embeddings()
    ids = [i for i in items if isinstance(i, int)]
    where = table.weight.device  # an offloaded encoder may still be on the CPU: look up there
    token_vectors = table(torch.tensor(ids, dtype=torch.long, device=where)).to(torch.float32).cpu()
    rows: list[torch.Tensor] = []
    next_token = 0
    for item in items:
        if isinstance(item, int):
            rows.append(token_vectors[next_token])
            next_token += 1
        else:
            rows.append(item.to(torch.float32))
    return torch.stack(rows).unsqueeze(0)
