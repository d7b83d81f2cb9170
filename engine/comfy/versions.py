"""The ComfyUI versions whose behaviour graphrun can follow (the `comfy` setting).

graphrun reproduces one ComfyUI version at a time. Where ComfyUI changed what a workflow computes, the
node library asks the run's setting (``Context.comfy_version``) which behaviour to follow. The setting
comes from, in order: ``RunOptions.comfy`` / ``--comfy VERSION``, the graph document's top-level
``comfy:`` key, then :data:`DEFAULT_COMFY_VERSION`. It enters every cache key and is written into the
PNG metadata of saved images.
"""
from __future__ import annotations

from difflib import get_close_matches

__all__ = ["COMFY_VERSIONS", "DEFAULT_COMFY_VERSION", "resolve_comfy_version"]

COMFY_VERSIONS: dict[str, str] = {
    "0.18.1": (
        "ComfyUI v0.18.1 (commit 4b1444fc, 2026-04-05): ancestral and other stochastic samplers draw "
        "their noise on the CPU from seed + 1 (ComfyUI v0.7.0 on)"
    ),
    "2025.10": (
        "ComfyUI of October 2025 (commit a125cd84): ancestral noise on the CPU from the seed itself"
    ),
}
"""Known settings -> what they mean. The first is the default."""

DEFAULT_COMFY_VERSION = "0.18.1"

_ALIASES = {"v0.18.1": "0.18.1", "2025-10": "2025.10", "a125cd84": "2025.10", "4b1444fc": "0.18.1"}


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
