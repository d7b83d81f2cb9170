"""Finding and checking model files: names as ComfyUI workflows use them, models folders, the
Hugging Face cache, and safetensors headers.

A name like ``z_image_turbo_bf16.safetensors`` resolves, in order, as:
1. a path that exists as given (absolute, or relative to the current folder);
2. ``<dir>/<kind folder>/<name>`` for every models dir: ``--models-dir`` options, then the
   ``GRAPHRUN_MODELS`` environment variable (``os.pathsep``-separated), then ComfyUI's
   ``extra_model_paths.yaml`` (given by ``--extra-model-paths`` or ``GRAPHRUN_EXTRA_MODEL_PATHS``).
The kind folders follow ComfyUI's layout: ``diffusion_models/`` or ``unet/``,
``text_encoders/`` or ``clip/``, ``vae/``, ``loras/``, ``upscale_models/``, ``embeddings/`` (textual
inversion embeddings, named in prompts as ``embedding:NAME``).
The models dir ``tiny`` stands for the built-in tiny random-weight Z-Image in ComfyUI layout. When no
models dir is configured at all (no ``--models-dir``, no ``GRAPHRUN_MODELS``, no extra paths file),
names resolve in ``tiny``, so shipped graphs and ComfyUI workflows run offline out of the box; a
notice on stderr says the pictures are then noise.

A models dir that does not exist, and an extra paths file that is missing or not ComfyUI's format,
are errors (:func:`check_model_paths`), reported before anything runs.

Model files are safetensors. :func:`read_safetensors_header` reads and checks a file's header alone
(a few kilobytes, no tensor data), so every loader's pre-run check finds empty, truncated, corrupt
and disguised pickle files before any weights load; :func:`first_nonfinite` finds NaN/Inf weights
once the tensors are read. Nothing here imports torch at module level: validation stays fast.
"""
from __future__ import annotations

import json
import os
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:
    import torch

KIND_FOLDERS: dict[str, tuple[str, ...]] = {
    "diffusion_models": ("diffusion_models", "unet"),
    "text_encoders": ("text_encoders", "clip"),
    "vae": ("vae",),
    "loras": ("loras",),
    "upscale_models": ("upscale_models",),
    "embeddings": ("embeddings",),
}
# extra_model_paths.yaml keys -> our kinds
_EXTRA_KEYS = {
    "diffusion_models": "diffusion_models",
    "unet": "diffusion_models",
    "text_encoders": "text_encoders",
    "clip": "text_encoders",
    "vae": "vae",
    "loras": "loras",
    "upscale_models": "upscale_models",
    "embeddings": "embeddings",
}
# Keys of an extra_model_paths.yaml section that are settings, not folders (ComfyUI pops them).
_EXTRA_SETTINGS = ("base_path", "is_default")
_EXTRA_FORMAT = (
    "expected ComfyUI's extra_model_paths.yaml format: named sections mapping folder names to paths, e.g. "
    "`comfyui: {base_path: ~/ComfyUI/models, diffusion_models: diffusion_models/, text_encoders: text_encoders/, "
    "vae: vae/, loras: loras/}` (several paths for one folder name go on separate lines)"
)
MODELS_ENV = "GRAPHRUN_MODELS"
EXTRA_PATHS_ENV = "GRAPHRUN_EXTRA_MODEL_PATHS"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")


class ModelFileNotFound(FileNotFoundError):
    """A model file name did not resolve; the message lists every place looked at."""


class ModelPathsError(ValueError):
    """A models folder or extra model paths file that cannot be used; the message names it."""


class ModelFileError(ValueError):
    """A model file that cannot be used (not safetensors, corrupt, truncated, NaN weights, ...);
    the message names the file and says what is wrong."""


def _expand_tiny(entry: str) -> Path:
    if entry == "tiny":
        from .zimage.tiny import tiny_comfy_dir

        return tiny_comfy_dir()
    return Path(entry).expanduser()


# ---------------------------------------------------------------------------------------------
# Models folders and extra_model_paths.yaml
# ---------------------------------------------------------------------------------------------

def _yaml_kind(value: Any) -> str:
    """How a YAML value reads to a user ("a list", "a number", ...)."""
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def extra_model_paths(yaml_path: str | os.PathLike[str]) -> dict[str, list[Path]]:
    """Folders per kind from a ComfyUI ``extra_model_paths.yaml``.

    Read as ComfyUI reads it: each section's ``base_path`` (``~`` and ``$VARS`` expanded; relative
    to the file's folder) is joined to every path listed under a folder name (several paths go on
    separate lines); without ``base_path`` relative paths are relative to the file's folder; empty
    sections are skipped. Raises :class:`ModelPathsError`, naming the file, for a missing file, a
    folder, a file that is not YAML text, and anything else than that format.
    """
    import yaml

    path = Path(yaml_path).expanduser()
    what = f"extra model paths file {path}"
    if not path.exists():
        raise ModelPathsError(f"{what} does not exist")
    if path.is_dir():
        raise ModelPathsError(f"{what} is a folder; give the extra_model_paths.yaml file itself")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelPathsError(f"{what} cannot be read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = ""
    if (not text and raw) or "\0" in text:
        raise ModelPathsError(f"{what} is not a text file (binary data); {_EXTRA_FORMAT}")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ModelPathsError(f"{what} is not valid YAML{where}: {problem}") from None
    except Exception as exc:  # e.g. RecursionError on absurdly nested input
        raise ModelPathsError(f"{what} is not valid YAML: {type(exc).__name__}") from None
    if data is None:
        raise ModelPathsError(f"{what} is empty; {_EXTRA_FORMAT}")
    if not isinstance(data, dict):
        raise ModelPathsError(f"{what} holds {_yaml_kind(data)} at the top level; {_EXTRA_FORMAT}")
    found: dict[str, list[Path]] = {}
    for name, section in data.items():
        if section is None:
            continue  # ComfyUI skips empty sections
        if not isinstance(section, dict):
            raise ModelPathsError(f"{what}: section '{name}' holds {_yaml_kind(section)}, not a mapping of folder "
                                  f"names to paths; {_EXTRA_FORMAT}")
        base_value = section.get("base_path")
        if "base_path" in section and not isinstance(base_value, str):
            raise ModelPathsError(f"{what}: section '{name}': base_path holds {_yaml_kind(base_value)}, "
                                  f"not a folder path")
        base = path.absolute().parent
        if isinstance(base_value, str) and base_value.strip():
            base = Path(os.path.expandvars(base_value.strip())).expanduser()
            if not base.is_absolute():
                base = path.absolute().parent / base
        for key, value in section.items():
            if key in _EXTRA_SETTINGS:
                continue
            if not isinstance(value, str):
                raise ModelPathsError(
                    f"{what}: section '{name}', '{key}' holds {_yaml_kind(value)}; give a folder path, or several "
                    f"on separate lines (e.g. `{key}: |` followed by one indented path per line)"
                )
            kind = _EXTRA_KEYS.get(str(key))
            if kind is None:
                continue  # folders of other model kinds (checkpoints, controlnet, ...) are not used here
            for line in value.splitlines():
                if line.strip():
                    entry = Path(os.path.expandvars(line.strip())).expanduser()
                    found.setdefault(kind, []).append(base / entry)
    return found


def _models_dir_problem(entry: str) -> str | None:
    """Why a models dir entry cannot be used, or None."""
    if entry == "tiny":
        return None
    if not entry.strip():
        return "the path is empty"
    path = Path(entry).expanduser()
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_dir():
        return f"{path} is a file, not a folder"
    return None


def _env_models_dirs() -> list[str]:
    return [p for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p]


def check_model_paths(models_dirs: Iterable[str] = (), extra_paths_file: str | None = None) -> None:
    """Raise :class:`ModelPathsError` for a models dir (``--models-dir``, ``GRAPHRUN_MODELS``) that
    is not a folder, and for an extra model paths file (``--extra-model-paths``,
    ``GRAPHRUN_EXTRA_MODEL_PATHS``) that cannot be read as ComfyUI's format. Cheap; run it before
    anything else."""
    layout = ("a ComfyUI models folder (with diffusion_models/, text_encoders/, vae/, loras/, ...) "
              "or 'tiny' for the built-in tiny model")
    for entry in models_dirs:
        problem = _models_dir_problem(entry)
        if problem:
            raise ModelPathsError(f"--models-dir {entry or repr(entry)}: {problem}; give {layout}")
    for entry in _env_models_dirs():
        problem = _models_dir_problem(entry)
        if problem:
            raise ModelPathsError(f"{MODELS_ENV} entry {entry or repr(entry)}: {problem}; set it to {layout} "
                                  f"(several separated by '{os.pathsep}'), or unset it")
    if extra_paths_file:
        extra_model_paths(extra_paths_file)
    elif os.environ.get(EXTRA_PATHS_ENV):
        try:
            extra_model_paths(os.environ[EXTRA_PATHS_ENV])
        except ModelPathsError as exc:
            raise ModelPathsError(f"{EXTRA_PATHS_ENV}: {exc}") from None


def search_folders(kind: str, models_dirs: Iterable[str] = (), extra_paths_file: str | None = None) -> list[Path]:
    """Every folder where a model of ``kind`` is looked for, in order."""
    if kind not in KIND_FOLDERS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(KIND_FOLDERS)}")
    roots = list(models_dirs) + _env_models_dirs()
    extra = extra_paths_file or os.environ.get(EXTRA_PATHS_ENV)
    if not roots and not extra:
        roots = ["tiny"]  # nothing configured: the built-in tiny model (see the module docs)
    folders = [_expand_tiny(root) / sub for root in roots for sub in KIND_FOLDERS[kind]]
    if extra:
        folders += extra_model_paths(extra).get(kind, [])
    return folders


#: ComfyUI's older folder names and the folders they stand for (its ``folder_paths.map_legacy``).
LEGACY_FOLDERS: dict[str, str] = {"unet": "diffusion_models", "clip": "text_encoders"}
_SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
# Upscale models are also read from pickle files, with torch's weights-only loader (upscale_nets.PICKLE_SUFFIXES;
# not imported: that module imports torch). Every other loader refuses pickles, so they are not offered.
_UPSCALE_PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".pkl", ".pt2")
#: The file suffixes :func:`list_model_files` offers per folder: what that folder's loader loads.
LISTED_SUFFIXES: dict[str, tuple[str, ...]] = {
    **{kind: _SAFETENSORS_SUFFIXES for kind in KIND_FOLDERS},
    "upscale_models": _SAFETENSORS_SUFFIXES + _UPSCALE_PICKLE_SUFFIXES,
}


def model_folder_names() -> list[str]:
    """The ComfyUI folder names graphrun reads models from (what ComfyUI's ``GET /models`` lists)."""
    return list(KIND_FOLDERS)


def list_model_files(folder: str, models_dirs: Iterable[str] = (), extra_paths_file: str | None = None) -> list[str]:
    """The model names a loader of ComfyUI folder ``folder`` accepts, as ComfyUI's file lists give them.

    Every folder :func:`search_folders` looks in (models dirs, ``GRAPHRUN_MODELS``, the extra paths file; the
    tiny model's folder when nothing is configured, built on first use) is walked with its subfolders: names
    are relative to that folder with ``/`` between parts (``sub/x.safetensors``, which
    :func:`resolve_model_file` finds again), hidden files and folders are skipped, only the suffixes of
    :data:`LISTED_SUFFIXES` count, and the union is sorted. ``unet`` and ``clip`` are ComfyUI's old names of
    ``diffusion_models`` and ``text_encoders``. Raises ValueError for another folder name and
    :class:`ModelPathsError` for an unreadable extra paths file.
    """
    kind = LEGACY_FOLDERS.get(folder, folder)
    if kind not in KIND_FOLDERS:
        raise ValueError(f"unknown model folder {folder!r}; expected one of {', '.join(KIND_FOLDERS)}")
    suffixes = LISTED_SUFFIXES[kind]
    names: set[str] = set()
    for root in search_folders(kind, models_dirs, extra_paths_file):
        if not root.is_dir():
            continue
        seen: set[str] = set()
        for current, subdirs, files in os.walk(root, followlinks=True):
            real = os.path.realpath(current)
            if real in seen:  # a symlink loop: list each folder once
                subdirs.clear()
                continue
            seen.add(real)
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
            relative = Path(current).relative_to(root)
            names.update((relative / f).as_posix() for f in files
                         if not f.startswith(".") and f.lower().endswith(suffixes))
    return sorted(names)


_TINY_NOTICE_GIVEN = False


def tiny_notice() -> None:
    """Say once per process, on stderr, that the tiny random-weight model is in use."""
    global _TINY_NOTICE_GIVEN
    if _TINY_NOTICE_GIVEN:
        return
    _TINY_NOTICE_GIVEN = True
    print(
        "graphrun: using the tiny random-weight model: pictures are noise "
        "(give --models-dir DIR or set GRAPHRUN_MODELS for real weights)",
        file=sys.stderr,
    )


def _tiny_notice(path: Path) -> None:
    """The notice when a model file came from the tiny model's folder."""
    if _TINY_NOTICE_GIVEN:
        return
    from .zimage.tiny import cache_root

    # Compared by name: calling tiny_comfy_dir() here would build the tiny model for nothing.
    root = cache_root()
    if path.is_relative_to(root) and path.relative_to(root).parts[0].startswith("tiny-zimage"):
        tiny_notice()


def resolve_model_file(
    name: str, kind: str, models_dirs: Iterable[str] = (), extra_paths_file: str | None = None,
    *, announce: bool = True,
) -> Path:
    """The path of model file ``name`` of ``kind``; raises ModelFileNotFound listing where it looked.

    ``announce`` gives the tiny-model notice when the file comes from the tiny model's folder (at load;
    pre-run checks pass False so that an invalid graph's errors are not preceded by it)."""
    direct = Path(name).expanduser()
    if direct.is_absolute() or direct.exists():
        if direct.exists():
            return direct
    folders = search_folders(kind, models_dirs, extra_paths_file)
    for folder in folders:
        candidate = folder / name
        if candidate.exists():
            if announce:
                _tiny_notice(candidate)
            return candidate
    looked = [str(direct)] + [str(f / name) for f in folders]
    hint = (
        "pass --models-dir DIR (a folder with ComfyUI's layout: "
        + ", ".join(f"{k[0]}/" for k in KIND_FOLDERS.values())
        + "), set GRAPHRUN_MODELS, or give a path"
    )
    raise ModelFileNotFound(f"{kind} file '{name}' not found; looked in: {', '.join(looked)}; {hint}")


def comfy_layout(folder: str | os.PathLike[str]) -> dict[str, list[Path]] | None:
    """The Z-Image kind folders of a ComfyUI models folder that exist (``diffusion_models`` ->
    ``diffusion_models/`` and ``unet/``, ``text_encoders`` -> ``text_encoders/`` and ``clip/``,
    ``vae`` -> ``vae/``), or None when ``folder`` has none of them."""
    root = Path(folder)
    found: dict[str, list[Path]] = {}
    for kind in ("diffusion_models", "text_encoders", "vae"):
        subs = [root / sub for sub in KIND_FOLDERS[kind] if (root / sub).is_dir()]
        if subs:
            found[kind] = subs
    return found or None


def safetensors_files(folder: Path) -> list[Path]:
    """The ``.safetensors`` files in a folder and its subfolders (as ComfyUI lists them), sorted."""
    out: list[Path] = []
    seen: set[str] = set()
    for current, subdirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:  # a symlink loop: ComfyUI follows links too, but each folder once is enough
            subdirs.clear()
            continue
        seen.add(real)
        subdirs.sort()
        out += [Path(current) / f for f in sorted(files) if f.lower().endswith(".safetensors")]
    return out


# ---------------------------------------------------------------------------------------------
# The Hugging Face cache
# ---------------------------------------------------------------------------------------------

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")


def looks_like_repo_id(text: str) -> bool:
    """True for ``Org/Name`` (a Hugging Face repo id), as opposed to a longer or absolute path."""
    return bool(_REPO_ID.match(text)) and ".." not in text and not text.endswith(".safetensors")


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache as huggingface_hub finds it: ``$HF_HUB_CACHE``, else
    ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``
    (read now, so a variable set after import counts)."""
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if env:
        return Path(env).expanduser()
    home = os.environ.get("HF_HOME")
    if not home:
        home = os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def resolve_hf_repo(repo_id: str) -> Path:
    """The local snapshot folder of a Hugging Face model repo in the hub cache (``refs/main``),
    found offline as diffusers' ``from_pretrained`` finds it. Nothing is downloaded: a repo that
    is not in the cache raises :class:`ModelFileNotFound` saying how to get it."""
    from huggingface_hub import snapshot_download

    cache = hf_cache_dir()
    try:
        folder = Path(snapshot_download(repo_id, cache_dir=str(cache), local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, HFValidationError, ...: all mean "not cached"
        raise ModelFileNotFound(
            f"'{repo_id}' is not a local folder and not in the Hugging Face cache ({cache}); graphrun "
            f"never downloads. Download it first (`hf download {repo_id}` or `huggingface-cli download "
            f"{repo_id}`; set HF_HOME or HF_HUB_CACHE if your cache is elsewhere), or give the path of a local copy"
        ) from None
    if not folder.is_dir():
        raise ModelFileNotFound(f"the Hugging Face cache entry of '{repo_id}' ({folder}) is not a folder")
    return folder


# ---------------------------------------------------------------------------------------------
# Safetensors headers
# ---------------------------------------------------------------------------------------------

# Bits per element of every dtype safetensors knows.
_DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
    "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
_MAX_HEADER = 100_000_000  # safetensors' own limit


@dataclass(frozen=True)
class SafetensorsHeader:
    """What a safetensors file's header says: per tensor its dtype name (``"BF16"``, ``"U8"``, ...)
    and shape, and the file's string metadata."""

    path: Path
    dtypes: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    metadata: dict[str, str]


def _not_safetensors(path: Path) -> str:
    """What a file that is not safetensors most likely is, from its first bytes."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        head = b""
    if head.startswith(b"PK\x03\x04"):
        return ("is a PyTorch checkpoint (a zip file written by torch.save) renamed to .safetensors; such files "
                "are pickle-based and can run code when loaded: convert it to a real .safetensors file")
    if head[:1] == b"\x80":
        return ("is a pickle file renamed to .safetensors; pickle files can run code when loaded: convert it to "
                "a real .safetensors file")
    if head.startswith(b"version https://git-lfs"):
        return "is a Git LFS pointer, not the weights: fetch the real file (git lfs pull) or download it again"
    if head.lstrip()[:1] in (b"<", b"{", b"["):
        return "is a text file (an HTML error page?), not safetensors weights: download it again"
    return "is not a safetensors file (its first bytes are not a safetensors header): download it again"


def read_safetensors_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and check the header of a safetensors file without reading any tensor data.

    Checks what the safetensors library checks before loading: the header length, that the header
    is a JSON object of tensor entries with known dtypes, shapes and data offsets, that the
    tensors' byte ranges follow each other and that the file holds exactly the bytes they need.
    Raises :class:`ModelFileError` naming the file and what is wrong (empty, truncated, a pickle
    renamed to .safetensors, random bytes, a header that is not a JSON object, ...).
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(8)
            if size == 0:
                raise ModelFileError(f"{p} is empty (0 bytes): an interrupted download? Download it again")
            if size < 8:
                raise ModelFileError(f"{p} is only {size} bytes long: not a safetensors file, or truncated")
            (length,) = struct.unpack("<Q", head)
            if length == 0 or length > _MAX_HEADER:
                raise ModelFileError(f"{p} {_not_safetensors(p)}")
            if length > size - 8:
                if fh.read(1) != b"{":  # not a header length at all: some other kind of file
                    raise ModelFileError(f"{p} {_not_safetensors(p)}")
                raise ModelFileError(
                    f"{p} is truncated or not a safetensors file: its header should be {length} bytes long but the "
                    f"file has only {size} bytes. Download it again"
                )
            raw = fh.read(length)
    except OSError as exc:
        raise ModelFileError(f"{p} cannot be read: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        if raw.lstrip()[:1] != b"{":
            raise ModelFileError(f"{p} {_not_safetensors(p)}") from None
        raise ModelFileError(f"{p} has a damaged header (not valid JSON: {exc}); download it again") from None
    if not isinstance(header, dict):
        kind = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
            type(header), "null")
        raise ModelFileError(f"{p} has a damaged header: it is {kind} in JSON, not an object of tensor entries")
    return _check_entries(p, header, size - 8 - length)


def _check_entries(p: Path, header: dict[str, Any], data_size: int) -> SafetensorsHeader:
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelFileError(f"{p} has a damaged header: its __metadata__ is not a mapping of strings")
    dtypes: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        bad = f"{p} has a damaged header: the entry of tensor '{name}'"
        if not isinstance(entry, dict):
            raise ModelFileError(f"{bad} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _DTYPE_BITS:
            raise ModelFileError(f"{bad} has an unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise ModelFileError(f"{bad} has an invalid shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
                or offsets[0] > offsets[1]):
            raise ModelFileError(f"{bad} has invalid data_offsets {offsets!r}")
        numel = 1
        for d in shape:
            numel *= d
        if (numel * _DTYPE_BITS[dtype]) % 8 or offsets[1] - offsets[0] != numel * _DTYPE_BITS[dtype] // 8:
            raise ModelFileError(f"{bad} says {offsets[1] - offsets[0]} bytes, but a {dtype} tensor of shape "
                                 f"{shape} needs {numel * _DTYPE_BITS[dtype] / 8:g}")
        dtypes[name] = dtype
        shapes[name] = tuple(shape)
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for start, stop, name in sorted(spans):
        if start != end:
            raise ModelFileError(f"{p} has a damaged header: the data of tensor '{name}' does not start where the "
                                 f"previous tensor ends (offset {start}, expected {end})")
        end = stop
    if end > data_size:
        raise ModelFileError(
            f"{p} is truncated: its tensors need {end} bytes of data but the file holds only {data_size} "
            f"(an incomplete download?). Download it again"
        )
    if end < data_size:
        raise ModelFileError(f"{p} is damaged: it has {data_size - end} bytes after the last tensor's data, which "
                             f"safetensors refuses. Download it again")
    return SafetensorsHeader(p, dtypes, shapes, dict(metadata))


def model_file_problem(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> str | None:
    """Why a model file cannot be loaded, from its name and header alone, or None when it looks
    fine. A pickle file (``.ckpt``/``.pt``/``.pth``/``.bin``) is a problem unless ``allow_pickle``
    (then it is not inspected)."""
    p = Path(path)
    if p.is_dir():
        return f"{p} is a folder, not a model file"
    if p.suffix.lower() in PICKLE_SUFFIXES:
        if allow_pickle:
            return None
        return (f"{p} is a pickle file ({p.suffix}); graphrun loads safetensors only, because pickle files can "
                f"run code when loaded: convert it to .safetensors")
    try:
        read_safetensors_header(p)
    except ModelFileError as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------

# 1-byte float types: the bit patterns of their NaN/Inf values, as (mask, value) on the raw byte.
_FP8_NONFINITE = {
    "float8_e4m3fn": ((0x7F,), 0x7F),  # NaN is S.1111.111; no infinity
    "float8_e5m2": ((0x7C,), 0x7C),  # exponent all ones: Inf or NaN
    "float8_e8m0fnu": ((0xFF,), 0xFF),  # NaN
    "float8_e4m3fnuz": ((0xFF,), 0x80),  # NaN is "negative zero"
    "float8_e5m2fnuz": ((0xFF,), 0x80),
}


def _nonfinite_mask(tensor: "torch.Tensor") -> "torch.Tensor | None":
    """A boolean mask of the NaN/Inf elements (None for types that have none, or unknown fp8)."""
    import torch

    if tensor.element_size() == 1:
        # isfinite is not implemented for every fp8 type, and a cast can overflow (e8m0 scales)
        pattern = _FP8_NONFINITE.get(str(tensor.dtype).removeprefix("torch."))
        if pattern is None:
            return None
        (mask,), value = pattern
        return (tensor.view(torch.uint8) & mask) == value
    return ~torch.isfinite(tensor)


def first_nonfinite(tensors: Mapping[str, "torch.Tensor"] | Iterable[tuple[str, "torch.Tensor"]]) -> str | None:
    """The name of the first floating-point tensor that holds a NaN or an infinity, or None.

    One pass over the weights: a float32 sum per tensor, and an element-wise check only when that
    sum is not finite (a huge but finite tensor can overflow it).
    """
    import torch

    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    for name, tensor in items:
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        if tensor.device.type == "meta":
            continue
        if tensor.element_size() > 1 and bool(torch.isfinite(tensor.sum(dtype=torch.float32))):
            continue
        mask = _nonfinite_mask(tensor)
        if mask is not None and bool(mask.any()):
            return name
    return None


def describe_nonfinite(tensor: "torch.Tensor") -> str:
    """``"3 NaN and 1 infinite values among 4096"`` for a tensor found by :func:`first_nonfinite`."""
    import torch

    if tensor.element_size() == 1:
        mask = _nonfinite_mask(tensor)
        return f"{int(mask.sum()) if mask is not None else 0} NaN/Inf values among {tensor.numel()}"
    nans, infs = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
    parts = [f"{nans} NaN"] if nans else []
    parts += [f"{infs} infinite"] if infs else []
    return f"{' and '.join(parts)} values among {tensor.numel()}"


def require_finite(tensors: Mapping[str, "torch.Tensor"], path: str | os.PathLike[str], what: str = "model file",
                   error: type[Exception] = ModelFileError) -> None:
    """Raise ``error`` naming the file and the first tensor with NaN/Inf values: such weights make
    black or noise images without any other error."""
    bad = first_nonfinite(tensors)
    if bad is not None:
        raise error(
            f"{what} {path} has NaN/Inf weights: tensor '{bad}' holds {describe_nonfinite(tensors[bad])}. They "
            f"would give black or noise pictures; the file is damaged or comes from a diverged training run: "
            f"download it again or use another file"
        )


# ---------------------------------------------------------------------------------------------
# Files graphrun writes
# ---------------------------------------------------------------------------------------------

def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: str | os.PathLike[str], *, private_only: bool = False) -> None:
    """Give a file, or every file and folder under a folder, the permissions a plain ``open()``
    would have given it (0o666 / 0o777 minus the umask). Files written through temporary files
    (``tempfile.mkstemp``, the safetensors writer) are otherwise private (0o600). With
    ``private_only`` only such 0o600 files are changed (a folder someone restricted on purpose
    stays as it is)."""
    mask = _umask()
    root = Path(path)
    entries = [root]
    if root.is_dir() and not root.is_symlink():
        entries += list(root.rglob("*"))
    for entry in entries:
        try:
            st = entry.lstat()
            if entry.is_symlink():
                continue
            mode = (0o777 if entry.is_dir() else 0o666) & ~mask
            if private_only and (entry.is_dir() or st.st_mode & 0o777 != 0o600):
                continue
            if st.st_mode & 0o777 != mode:
                os.chmod(entry, mode)
        except OSError:  # gone, or not ours to change: leave it
            pass
