"""PNG text chunks as ComfyUI writes and reads them (`prompt`, `workflow`, other extra_pnginfo keys), and
graphrun's own `graphrun` chunk.

ComfyUI's SaveImage stores `prompt` = json.dumps(API prompt) and one chunk per `extra_pnginfo` key (normally
`workflow` = the UI workflow), each as an uncompressed tEXt chunk. graphrun's SaveImage writes the same two, plus
`graphrun` = `{"graph": the graph document as loaded, "params": the param values the run used, "comfy": the
ComfyUI version it followed}`: re-running the PNG reads that chunk first (:func:`graphrun_document`), so the
graph's params and `--set` work exactly as on the original YAML. Torch-free.
"""
from __future__ import annotations

import copy
import io
import json
import os
from typing import TYPE_CHECKING, Any, Mapping

from ..limits import parse_json
from .ui_to_api import ComfyFormatError

if TYPE_CHECKING:
    # PIL is imported where used: reading a ComfyUI .json workflow (formats.py imports this module) needs none.
    from PIL import PngImagePlugin

__all__ = [
    "read_png_chunks", "png_info_for", "is_png_bytes", "GRAPHRUN_CHUNK", "graphrun_record", "graphrun_document",
]

#: The text chunk graphrun's SaveImage writes the graph document and its param values into.
GRAPHRUN_CHUNK = "graphrun"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_png_bytes(data: bytes) -> bool:
    """True when `data` starts with the PNG signature."""
    return data[:8] == PNG_SIGNATURE


def read_png_chunks(source: str | os.PathLike[str] | bytes) -> dict[str, str]:
    """All text chunks (tEXt, zTXt, iTXt) of a PNG file or PNG bytes, as `{keyword: text}`.

    Raises ComfyFormatError when the data is not a readable PNG.
    """
    from PIL import Image, UnidentifiedImageError

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
    from PIL import PngImagePlugin

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
    load in ComfyUI (values JSON has no type for, such as YAML dates, are written as text). Omitted (None) parts
    write no chunk. A `workflow` key in `extra` conflicts with the `workflow` argument and raises ValueError.
    """
    extra = dict(extra or {})
    if workflow is not None and "workflow" in extra:
        raise ValueError("the workflow is given both as `workflow` and as extra['workflow']")
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt, default=str))
    if workflow is not None:
        info.add_text("workflow", json.dumps(workflow, default=str))
    for key, value in extra.items():
        info.add_text(key, json.dumps(value, default=str))
    return info


def graphrun_record(document: Any, params: Mapping[str, Any], comfy: str) -> dict[str, Any]:
    """What the `graphrun` chunk holds: the document as loaded, the param values used, the ComfyUI version."""
    return {"graph": document, "params": dict(params), "comfy": comfy}


def graphrun_document(chunks: Mapping[str, str]) -> tuple[dict[str, Any] | None, str | None]:
    """The graph document a `graphrun` chunk describes, with each param's default set to the value the run used.

    Returns ``(document, None)``; ``(None, None)`` when there is no such chunk; ``(None, why)`` when it is
    unreadable (the caller falls back to the ComfyUI chunks and says why).
    """
    if GRAPHRUN_CHUNK not in chunks:
        return None, None
    try:
        record, _ = parse_json(chunks[GRAPHRUN_CHUNK])
    except (ValueError, RecursionError):
        return None, f"the '{GRAPHRUN_CHUNK}' chunk is not valid JSON"
    graph = record.get("graph") if isinstance(record, dict) else None
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), dict):
        return None, f"the '{GRAPHRUN_CHUNK}' chunk holds no graph document"
    data = copy.deepcopy(graph)
    params = record.get("params")
    declared = data.get("params")
    if isinstance(params, dict) and isinstance(declared, dict):
        for name, value in params.items():
            if name not in declared or value is None:
                continue
            if isinstance(declared[name], dict):
                declared[name]["default"] = value
            else:
                declared[name] = value  # the shorthand `seed: 42`: the value is the default
    comfy = record.get("comfy")
    if isinstance(comfy, str) and comfy:
        data["comfy"] = comfy  # the version the run followed, even when it came from --comfy
    return data, None
