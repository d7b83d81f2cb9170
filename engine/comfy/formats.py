"""Load a ComfyUI workflow from a .json file, a ComfyUI-made .png, or a dict, and tell its format apart.

Two formats exist (SEMANTICS.md §1.1–1.2):

* API ("prompt"): `{"<id>": {"class_type": ..., "inputs": {...}}, ...}` — what the backend runs.
* UI ("workflow"): the litegraph serialisation with a `nodes` list and `links`.

A PNG written by ComfyUI carries both, as text chunks `prompt` and `workflow`; `prompt` is preferred because it
is exactly what ran (the UI workflow would have to be converted, and random choices or `%date%` would differ).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

from ..limits import MAX_DOCUMENT_BYTES, LimitError, check_value, parse_json
from .png import is_png_bytes, read_png_chunks
from .ui_to_api import ComfyDiagnostic, ComfyFormatError, ui_to_api
from .widgets import SpecLookup

__all__ = ["Workflow", "ComfyFormatError", "load_workflow", "detect_format", "is_api_format", "is_ui_format"]

Format = Literal["api", "ui"]


@dataclass(frozen=True)
class Workflow:
    """A ComfyUI workflow document as loaded.

    format: "api" or "ui".
    data: the document in that format (API prompt, or UI workflow).
    ui: the UI workflow that travelled with an API prompt (PNG `workflow` chunk, `extra_pnginfo`), if any.
    source: where it came from (a path, or "<dict>").
    notes: remarks on how it was chosen, e.g. that a PNG's `prompt` chunk was unreadable.
    """

    format: Format
    data: dict[str, Any]
    ui: dict[str, Any] | None = None
    source: str = "<dict>"
    notes: tuple[str, ...] = ()

    def to_api(
        self, spec: SpecLookup, *, known: Iterable[str] = (), now: datetime | None = None
    ) -> tuple[dict[str, dict[str, Any]], list[ComfyDiagnostic]]:
        """The API-format prompt (converted from the UI format when needed) and any conversion warnings."""
        if self.format == "api":
            return copy.deepcopy(self.data), []
        return ui_to_api(self.data, spec, known=known, now=now)


def is_ui_format(obj: Any) -> bool:
    """True for a litegraph serialisation: an object with a `nodes` list."""
    return isinstance(obj, Mapping) and isinstance(obj.get("nodes"), list)


def is_api_format(obj: Any) -> bool:
    """True for an object whose entries look like API nodes (at least one has a `class_type`)."""
    return (
        isinstance(obj, Mapping)
        and not is_ui_format(obj)
        and any(isinstance(v, Mapping) and "class_type" in v for v in obj.values())
    )


def detect_format(obj: Any, source: str = "<dict>") -> Format:
    """Which format `obj` is in; ComfyFormatError with the reason when it is neither."""
    if is_ui_format(obj):
        return "ui"
    if is_api_format(obj):
        _check_api(obj, source)
        return "api"
    raise ComfyFormatError(f"{source}: {_describe_unknown(obj)}")


def _describe_unknown(obj: Any) -> str:
    expected = (
        "expected a ComfyUI workflow: API format {\"<id>\": {\"class_type\": ..., \"inputs\": {...}}} "
        "or UI format {\"nodes\": [...], \"links\": [...]}"
    )
    if isinstance(obj, list):
        return f"{expected}; got a JSON list"
    if not isinstance(obj, Mapping):
        return f"{expected}; got {type(obj).__name__}"
    if not obj:
        return "the workflow is empty"
    keys = ", ".join(repr(k) for k in list(obj)[:8])
    return f"{expected}; found an object with keys {keys}"


def _check_api(prompt: Mapping[str, Any], source: str) -> None:
    """Every API entry must be {class_type: non-empty str, inputs: object}; report all offenders at once."""
    problems = []
    for node_id, node in prompt.items():
        if not isinstance(node, Mapping):
            problems.append(f"node {node_id!r} is not an object")
        elif not isinstance(node.get("class_type"), str) or not node["class_type"]:
            problems.append(f"node {node_id!r} has no class_type")
        elif not isinstance(node.get("inputs", {}), Mapping):
            problems.append(f"node {node_id!r}: 'inputs' is not an object")
    if problems:
        diagnostics = [ComfyDiagnostic("comfy_malformed", p) for p in problems]
        raise ComfyFormatError(f"{source}: malformed API-format workflow: " + "; ".join(problems), diagnostics)


def load_workflow(source: str | os.PathLike[str] | bytes | Mapping[str, Any]) -> Workflow:
    """Load a ComfyUI workflow.

    source: a path to a .json or .png file, the bytes of such a file, JSON text, or an already-parsed dict.
    A submission envelope `{"prompt": {...}, "extra_data": {"extra_pnginfo": {"workflow": {...}}}}` is unwrapped.
    Raises ComfyFormatError with a readable reason for anything that is not a ComfyUI workflow.
    """
    if isinstance(source, Mapping):
        try:  # a hand-made dict may nest deeper than the copies below can recurse, or contain itself
            check_value(source, text=False)
        except LimitError as exc:
            raise _limit_error(exc, "<dict>") from None
        return _from_object(source, "<dict>")
    if isinstance(source, bytes):
        return _from_bytes(source, "<bytes>")
    if isinstance(source, str) and source.lstrip().startswith(("{", "[")):
        return _from_object(*_parse_json(source, "<text>"))
    if isinstance(source, (str, os.PathLike)):
        return _from_path(Path(source))
    raise ComfyFormatError(f"cannot load a workflow from {type(source).__name__}; give a path, bytes or a dict")


def _from_path(path: Path) -> Workflow:
    try:
        size = path.stat().st_size
        data: bytes | None = None
        with path.open("rb") as handle:
            # A PNG's image data may be large; JSON text beyond the limit is not read at all.
            if size <= MAX_DOCUMENT_BYTES or is_png_bytes(handle.read(8)):
                handle.seek(0)
                data = handle.read()
    except FileNotFoundError as exc:
        raise ComfyFormatError(f"{path}: file not found") from exc
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise ComfyFormatError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from exc
    if data is None:
        raise ComfyFormatError(
            f"{path}: the file is {size / 2**20:.0f} MiB; graphrun reads JSON workflows of at most "
            f"{MAX_DOCUMENT_BYTES // 2**20} MiB"
        )
    return _from_bytes(data, str(path))


def _from_bytes(data: bytes, source: str) -> Workflow:
    if is_png_bytes(data):
        return _from_png(data, source)
    if not data.strip():
        raise ComfyFormatError(f"{source}: the file is empty")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ComfyFormatError(f"{source}: neither a PNG image nor UTF-8 JSON text") from exc
    return _from_object(*_parse_json(text, source))


def _parse_json(text: str, source: str) -> tuple[Any, str, tuple[str, ...]]:
    """(value, source, notes) of JSON text, read within :mod:`graphrun.engine.limits` (nesting, integer size,
    text); a key given twice in one object is kept as JSON (and ComfyUI) keep it, the last one, with a note."""
    if not text.strip():
        raise ComfyFormatError(f"{source}: the file is empty")
    try:
        value, duplicates = parse_json(text)
    except json.JSONDecodeError as exc:
        raise ComfyFormatError(f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    except LimitError as exc:
        raise _limit_error(exc, source) from None
    notes = tuple(
        f"the key {key!r} appears twice in one object; the last one is used, as ComfyUI does"
        for key in dict.fromkeys(duplicates)
    )
    return value, source, notes[:10]


def _limit_error(exc: LimitError, source: str) -> ComfyFormatError:
    """A document beyond a reading limit, as a GR002 problem of the file."""
    message = f"{exc.where()}{exc.message}"
    return ComfyFormatError(f"{source}: {message}", [ComfyDiagnostic("GR002", message)])


def _from_png(data: bytes, source: str) -> Workflow:
    """Prefer the `prompt` chunk (what ran); fall back to `workflow` when the prompt is absent or unreadable."""
    chunks = read_png_chunks(data)
    if "prompt" not in chunks and "workflow" not in chunks:
        found = ", ".join(sorted(chunks)) or "none"
        raise ComfyFormatError(
            f"{source}: the PNG has no ComfyUI workflow (no 'prompt' or 'workflow' text chunk; chunks: {found})"
        )
    ui, ui_problem = _chunk_document(chunks, "workflow", source, "ui")
    prompt, prompt_problem = _chunk_document(chunks, "prompt", source, "api")
    if prompt is not None:
        return Workflow("api", prompt, ui=ui, source=source)
    if ui is not None:
        note = f"used the 'workflow' chunk because the 'prompt' chunk {prompt_problem}"
        return Workflow("ui", ui, source=source, notes=(note,) if prompt_problem else ())
    reasons = "; ".join(p for p in (prompt_problem, ui_problem) if p)
    raise ComfyFormatError(f"{source}: the PNG's workflow chunks cannot be used: {reasons}")


def _chunk_document(
    chunks: Mapping[str, str], key: str, source: str, expected: Format
) -> tuple[dict[str, Any] | None, str | None]:
    """Parse one PNG chunk as a document of the expected format: (document, None) or (None, why not)."""
    if key not in chunks:
        return None, None
    try:
        obj, _ = parse_json(chunks[key])
        if detect_format(obj, f"{source} '{key}' chunk") != expected:
            return None, f"'{key}' chunk is not in {expected.upper()} format"
    except json.JSONDecodeError:
        return None, f"'{key}' chunk is not valid JSON"
    except LimitError as exc:
        return None, f"'{key}' chunk: {exc.where()}{exc.message}"
    except ComfyFormatError as exc:
        return None, str(exc)
    return dict(obj), None


def _from_object(obj: Any, source: str, notes: tuple[str, ...] = ()) -> Workflow:
    if isinstance(obj, Mapping) and not is_ui_format(obj) and not is_api_format(obj):
        envelope = _unwrap(obj, source)
        if envelope is not None:
            return dataclasses.replace(envelope, notes=envelope.notes + notes)
    kind = detect_format(obj, source)
    if kind == "ui" and not obj["nodes"]:
        raise ComfyFormatError(f"{source}: the workflow has no nodes")
    return Workflow(kind, copy.deepcopy(dict(obj)), source=source, notes=notes)


def _unwrap(obj: Mapping[str, Any], source: str) -> Workflow | None:
    """Unwrap a queued submission `{"prompt": …, "extra_data": {"extra_pnginfo": {"workflow": …}}}` or a
    `{"workflow": …}` wrapper; None when `obj` is neither."""
    prompt = obj.get("prompt")
    ui = obj.get("workflow")
    extra = obj.get("extra_data")
    if ui is None and isinstance(extra, Mapping) and isinstance(extra.get("extra_pnginfo"), Mapping):
        ui = extra["extra_pnginfo"].get("workflow")
    ui_doc = copy.deepcopy(dict(ui)) if is_ui_format(ui) else None
    if is_api_format(prompt):
        detect_format(prompt, f"{source} 'prompt'")
        return Workflow("api", copy.deepcopy(dict(prompt)), ui=ui_doc, source=source)
    if ui_doc is not None:
        return Workflow("ui", ui_doc, source=source)
    return None
