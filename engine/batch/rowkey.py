"""Row keys: what produced a row folder, so a re-run skips a row only when the same work made it.

A row's key is the SHA-256 of
- the cache keys of the graph's output nodes, computed as the executor computes them (node type
  and version, every literal input after the row's params and ``--set`` values are applied, and
  the keys of everything upstream), so any change that reaches an output changes the key, and a
  param no node reads does not;
- the ComfyUI version the run follows (``--comfy``, the graph's ``comfy:``, or the default) and
  the ``--dtype`` given;
- the identity (name, size, modification time) of every file or folder a string input of a
  non-output node names: paths as given (absolute, or relative to the current folder or the
  graph's folder), names found in the models folders (``--models-dir``, ``GRAPHRUN_MODELS``,
  ``extra_model_paths.yaml``) and Hugging Face repo ids found in the local hub cache; a folder
  (a diffusers model) counts its non-hidden files (name, size, modification time). So
  replacing a model file, a LoRA or an input image changes the key without reading any
  weights.

The key is written to ``<row folder>/.graphrun-row.json`` together with what went into it
(``params``, ``files``, ``comfy``, ``dtype``), which is how a changed row can say what changed.
The device and ``--offload`` are not part of it: they move numbers by rounding only.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..context import RunOptions, effective_comfy_version
from ..executor import cache_key, make_plan
from ..validate import BoundGraph

ROW_RECORD = ".graphrun-row.json"
RECORD_VERSION = 1
_MAX_PATH = 4096
_MAX_FOLDER_FILES = 5000  # a folder named by an input counts at most this many files
_MAX_FOLDER_DEPTH = 4


@dataclass
class RowKey:
    """A row's key and what went into it (for telling the user what changed)."""

    key: str
    params: dict[str, Any]
    nodes: str
    files: dict[str, str] = field(default_factory=dict)  # "node.input" -> identity
    comfy: str = ""
    dtype: str | None = None

    def record(self, row_id: str) -> dict[str, Any]:
        """The content of the row folder's ``.graphrun-row.json``."""
        return {"graphrun_row": RECORD_VERSION, "id": row_id, "key": self.key, "params": self.params,
                "nodes": self.nodes, "files": self.files, "comfy": self.comfy, "dtype": self.dtype}


class FileIdentities:
    """Resolves the strings a graph's inputs hold to file identities, memoized for one batch.

    Never follows a candidate into the batch's output folder (or a folder that holds it), whose
    contents change as rows finish.
    """

    def __init__(self, options: RunOptions, graph_dir: Path | None, out_dir: Path) -> None:
        self.graph_dir = graph_dir
        self.out_dir = out_dir.resolve()
        self._seen: dict[str, str | None] = {}
        self._folders: list[Path] | None = None
        self._options = options

    def _model_folders(self) -> list[Path]:
        """Every subfolder of every models dir (the kind folders: ``loras/``, ``vae/``, ...)."""
        if self._folders is not None:
            return self._folders
        extra = self._options.extra
        roots = [str(r) for r in extra.get("models_dirs", []) or []]
        roots += [r for r in os.environ.get("GRAPHRUN_MODELS", "").split(os.pathsep) if r]
        folders: list[Path] = []
        for root in roots:
            if root == "tiny":
                continue  # the built-in tiny model is built the same way every time
            try:
                folders += sorted(p for p in Path(root).expanduser().iterdir() if p.is_dir())
            except OSError:
                continue
        paths_file = extra.get("extra_model_paths") or os.environ.get("GRAPHRUN_EXTRA_MODEL_PATHS")
        if paths_file:
            try:  # the node library reads ComfyUI's file; without it, only the roots above count
                from graphrun.nodes.model_files import extra_model_paths

                folders += [f for kind in extra_model_paths(paths_file).values() for f in kind]
            except Exception:  # noqa: BLE001 - a broken paths file fails the row's own validation
                pass
        self._folders = folders
        return folders

    def identity(self, text: str) -> str | None:
        """The identity of the file or folder ``text`` names, or None when it names none."""
        if text in self._seen:
            return self._seen[text]
        found: str | None = None
        if 0 < len(text) <= _MAX_PATH and "\n" not in text and "\x00" not in text:
            path = Path(text).expanduser()
            candidates = [path] if path.is_absolute() else [Path.cwd() / path]
            if not path.is_absolute():
                if self.graph_dir is not None:
                    candidates.append(self.graph_dir / path)
                candidates += [folder / path for folder in self._model_folders()]
            for candidate in candidates:
                found = self._describe(candidate)
                if found is not None:
                    break
            if found is None and not path.is_absolute():
                found = self._hub_snapshot(text)
        self._seen[text] = found
        return found

    def _hub_snapshot(self, text: str) -> str | None:
        """The identity of a Hugging Face repo id's cached snapshot (``Org/Name``), if the node
        library resolves such ids; never downloads."""
        try:
            from graphrun.nodes.model_files import looks_like_repo_id, resolve_hf_repo
        except Exception:  # noqa: BLE001 - an engine without the node library
            return None
        try:
            if not looks_like_repo_id(text):
                return None
            return self._describe(resolve_hf_repo(text))
        except Exception:  # noqa: BLE001 - not cached: the row's own validation says so
            return None

    def _describe(self, path: Path) -> str | None:
        try:
            info = path.stat()
            resolved = path.resolve()
        except (OSError, ValueError, RuntimeError):
            return None
        if resolved == self.out_dir or self.out_dir in resolved.parents or resolved in self.out_dir.parents:
            return None  # the output folder changes as rows finish: never part of a key
        if path.is_file():
            return f"{path.name} {info.st_size} bytes, modified {info.st_mtime_ns}"
        if not path.is_dir():
            return None
        cwd = Path.cwd().resolve()
        if resolved == cwd or resolved in cwd.parents:
            return None  # "." or "~" in a prompt: the working folder (with the rows file) is no model
        entries: list[str] = []
        root_depth = len(resolved.parts)
        for folder, dirs, files in os.walk(resolved):
            depth = len(Path(folder).parts) - root_depth
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and depth < _MAX_FOLDER_DEPTH)
            for name in sorted(files):
                if name.startswith("."):
                    continue  # lock files, caches: not content
                try:
                    stat = os.stat(os.path.join(folder, name))
                except OSError:
                    continue
                relative = os.path.relpath(os.path.join(folder, name), resolved)
                entries.append(f"{relative} {stat.st_size} {stat.st_mtime_ns}")
                if len(entries) >= _MAX_FOLDER_FILES:
                    break
            if len(entries) >= _MAX_FOLDER_FILES:
                break
        digest = hashlib.sha256("\n".join(entries).encode("utf-8", "surrogateescape")).hexdigest()[:16]
        return f"{path.name}/ {len(entries)} files, contents {digest}"


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


def row_key(graph: BoundGraph, options: RunOptions, files: FileIdentities) -> RowKey:
    """The key of running ``graph`` (a row's bound graph) with ``options``."""
    comfy = effective_comfy_version(options, graph)
    salt = f"comfy={comfy}"  # as the executor salts its cache keys, without the per-run part
    keys: dict[str, str] = {}
    identities: dict[str, str] = {}
    for node_id in make_plan(graph).order:
        node = graph.nodes[node_id]
        keys[node_id] = cache_key(node, keys, salt)
        if node.spec.output:
            continue  # an output node's strings name what it writes, not what it reads
        for name, value in sorted(node.literals.items()):
            for text in _strings(value):
                identity = files.identity(text)
                if identity is not None:
                    identities[f"{node_id}.{name}"] = identity
    outputs = sorted((n, keys[n]) for n in keys if graph.nodes[n].spec.output)
    nodes = hashlib.sha256(json.dumps(outputs).encode()).hexdigest()
    payload = {"v": RECORD_VERSION, "nodes": nodes, "files": identities, "comfy": comfy, "dtype": options.dtype}
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    params = json.loads(json.dumps(dict(graph.params), default=str))
    return RowKey(key, params, nodes, identities, comfy, options.dtype)


def read_record(folder: Path) -> dict[str, Any] | str | None:
    """A row folder's ``.graphrun-row.json``: the record, None when absent, or why it is unusable."""
    path = folder / ROW_RECORD
    try:
        if path.is_symlink():
            return f"its {ROW_RECORD} is a symbolic link"
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        return f"its {ROW_RECORD} cannot be read ({exc})"
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):
        return f"its {ROW_RECORD} is not valid JSON"
    if not isinstance(record, dict) or not isinstance(record.get("key"), str):
        return f"its {ROW_RECORD} has no key"
    return record


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def explain(record: dict[str, Any] | str | None, key: RowKey) -> str:
    """What differs between the record a folder holds and the key the row has now."""
    if record is None:
        return f"no {ROW_RECORD} (made by an older graphrun, or not by graphrun)"
    if isinstance(record, str):
        return record
    changes: list[str] = []
    old_params = record.get("params") if isinstance(record.get("params"), dict) else {}
    for name in sorted(set(old_params) | set(key.params)):
        if old_params.get(name) != key.params.get(name):
            changes.append(f"{name} {_short(old_params.get(name))} -> {_short(key.params.get(name))}")
    old_files = record.get("files") if isinstance(record.get("files"), dict) else {}
    for name in sorted(set(old_files) | set(key.files)):
        before, now = old_files.get(name), key.files.get(name)
        if before == now:
            continue
        if now is None:
            changes.append(f"{name} no longer names a file or folder")
        elif before is None:
            changes.append(f"{name} now names {now.split(' ')[0]}")
        else:
            changes.append(f"{name}: {now.split(' ')[0]} changed (size or modification time)")
    if record.get("comfy") != key.comfy:
        changes.append(f"comfy {record.get('comfy')} -> {key.comfy}")
    if record.get("dtype") != key.dtype:
        changes.append(f"dtype {record.get('dtype')} -> {key.dtype}")
    if not changes:
        changes.append("the graph changed")
    return ", ".join(changes)


def key_matches(record: dict[str, Any] | str | None, key: RowKey) -> bool:
    return isinstance(record, Mapping) and record.get("key") == key.key
