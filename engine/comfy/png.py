"""PNG text chunks as ComfyUI writes and reads them (`prompt`, `workflow`, other extra_pnginfo keys).

ComfyUI's SaveImage stores `prompt` = json.dumps(API prompt) and one chunk per `extra_pnginfo` key (normally
`workflow` = the UI workflow), each as an uncompressed tEXt chunk. Torch-free.
"""
from __future__ import annotations

import io
import json
import os
from typing import Any, Mapping

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .ui_to_api import ComfyFormatError

__all__ = ["read_png_chunks", "png_info_for", "is_png_bytes"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_png_bytes(data: bytes) -> bool:
    """True when `data` starts with the PNG signature."""
    return data[:8] == PNG_SIGNATURE


def read_png_chunks(source: str | os.PathLike[str] | bytes) -> dict[str, str]:
    """All text chunks (tEXt, zTXt, iTXt) of a PNG file or PNG bytes, as `{keyword: text}`.

    Raises ComfyFormatError when the data is not a readable PNG.
    """
    name = "<bytes>" if isinstance(source, bytes) else os.fspath(source)
    try:
        stream = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except OSError as exc:
        raise ComfyFormatError(f"{name}: cannot open ({exc.strerror or exc})") from exc
    try:
        with stream, Image.open(stream, formats=["PNG"]) as image:
            # `.text` reads to the end of the file: ComfyUI's chunks may follow the image data.
            chunks = dict(image.text)  # type: ignore[attr-defined]
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ComfyFormatError(f"{name}: not a readable PNG file ({exc})") from exc
    return {key: _repair_utf8(value) for key, value in chunks.items()}


def _repair_utf8(value: str) -> str:
    """tEXt is Latin-1 by the PNG spec, but some tools store UTF-8 there; undo the resulting mojibake."""
    if isinstance(value, PngImagePlugin.iTXt):
        return str(value)  # iTXt is UTF-8 by definition and already decoded
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def png_info_for(
    prompt: Mapping[str, Any] | None,
    workflow: Mapping[str, Any] | None,
    extra: Mapping[str, Any] | None = None,
) -> PngImagePlugin.PngInfo:
    """A PngInfo with ComfyUI's metadata chunks: `prompt`, `workflow`, then one chunk per `extra` key.

    Every value is written as `json.dumps(value)` like ComfyUI, so the chunks read back with `read_png_chunks` and
    load in ComfyUI. Omitted (None) parts write no chunk. A `workflow` key in `extra` conflicts with the
    `workflow` argument and raises ValueError.
    """
    extra = dict(extra or {})
    if workflow is not None and "workflow" in extra:
        raise ValueError("the workflow is given both as `workflow` and as extra['workflow']")
    info = PngImagePlugin.PngInfo()
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    if workflow is not None:
        info.add_text("workflow", json.dumps(workflow))
    for key, value in extra.items():
        info.add_text(key, json.dumps(value))
    return info
