"""The ComfyUI versions whose behaviour graphrun can follow (the `comfy` setting).

graphrun reproduces one ComfyUI version at a time. Where ComfyUI changed what a workflow computes, the
node library asks the run's setting (``Context.comfy_version``) which behaviour to follow. The setting
comes from, in order: ``RunOptions.comfy`` / ``--comfy VERSION``, the graph document's top-level
``comfy:`` key, then :data:`DEFAULT_COMFY_VERSION`. It enters every cache key and is written into the
PNG metadata of saved images.
"""
from __future__ import annotations

from difflib import get_close_matches

__all__ = ["COMFY_VERSIONS", "DEFAULT_COMFY_VERSION", "comfy_at_least", "resolve_comfy_version"]

COMFY_VERSIONS: dict[str, str] = {
    "0.33": (
        "ComfyUI 0.33 (upstream master de6b062f, 2026-08-20): int8 quantized checkpoints, Kohya "
        "text-encoder LoRA keys for Z-Image's Qwen3, LoadImage decoding through PyAV, ER-SDE's eta, "
        "SaveImage/PreviewImage passing their images on, UUID prompt ids in `graphrun serve`"
    ),
    "0.18.1": (
        "ComfyUI v0.18.1 (commit 4b1444fc, 2026-04-05): ancestral and other stochastic samplers draw "
        "their noise on the CPU from seed + 1 (ComfyUI v0.7.0 on)"
    ),
    "2025.10": (
        "ComfyUI of October 2025 (commit a125cd84): ancestral noise on the CPU from the seed itself"
    ),
}
"""Known settings -> what they mean. The first is the default."""

DEFAULT_COMFY_VERSION = "0.33"

_ALIASES = {
    "v0.33": "0.33", "0.33.0": "0.33", "v0.33.0": "0.33", "de6b062f": "0.33",
    "v0.18.1": "0.18.1", "4b1444fc": "0.18.1",
    "2025-10": "2025.10", "a125cd84": "2025.10",
}

# Oldest first: what `comfy_at_least` compares.
_CHRONOLOGY = ("2025.10", "0.18.1", "0.33")


def comfy_at_least(version: str, minimum: str) -> bool:
    """Whether the setting ``version`` follows ComfyUI ``minimum`` or later (both canonical or aliased
    names), e.g. ``comfy_at_least(ctx.comfy_version, "0.33")`` where 0.33 changed a behaviour."""
    return _CHRONOLOGY.index(resolve_comfy_version(version)) >= _CHRONOLOGY.index(resolve_comfy_version(minimum))


def resolve_comfy_version(name: str | None) -> str:
    """The canonical setting for ``name`` (None or "" = the default). Raises ValueError naming the
    known settings, with a did-you-mean."""
    if not name:
        return DEFAULT_COMFY_VERSION
    text = str(name).strip()
    text = _ALIASES.get(text, text)
    if text in COMFY_VERSIONS:
        return text
    close = get_close_matches(text, list(COMFY_VERSIONS) + list(_ALIASES), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(
        f"unknown ComfyUI version {name!r}{hint}; graphrun follows one of: "
        + ", ".join(f"{k!r}" for k in COMFY_VERSIONS)
    )
