"""Finding model files by name, the way ComfyUI workflows refer to them.

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
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

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


class ModelFileNotFound(FileNotFoundError):
    """A model file name did not resolve; the message lists every place looked at."""


def _expand_tiny(entry: str) -> Path:
    if entry == "tiny":
        from .zimage.tiny import tiny_comfy_dir

        return tiny_comfy_dir()
    return Path(entry).expanduser()


def extra_model_paths(yaml_path: str | os.PathLike[str]) -> dict[str, list[Path]]:
    """Folders per kind from a ComfyUI ``extra_model_paths.yaml``."""
    import yaml

    path = Path(yaml_path).expanduser()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ModelFileNotFound(f"extra model paths file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"cannot parse {path}: {exc}") from None
    found: dict[str, list[Path]] = {}
    for section in data.values() if isinstance(data, dict) else ():
        if not isinstance(section, dict):
            continue
        base = Path(os.path.expandvars(str(section.get("base_path", "")))).expanduser()
        if not base.is_absolute():
            base = path.parent / base
        for key, value in section.items():
            kind = _EXTRA_KEYS.get(key)
            if kind is None or value is None:
                continue
            for line in str(value).splitlines():
                if line.strip():
                    found.setdefault(kind, []).append(base / os.path.expandvars(line.strip()))
    return found


def search_folders(kind: str, models_dirs: Iterable[str] = (), extra_paths_file: str | None = None) -> list[Path]:
    """Every folder where a model of ``kind`` is looked for, in order."""
    if kind not in KIND_FOLDERS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(KIND_FOLDERS)}")
    roots = list(models_dirs)
    env = os.environ.get("GRAPHRUN_MODELS", "")
    roots += [p for p in env.split(os.pathsep) if p]
    extra = extra_paths_file or os.environ.get("GRAPHRUN_EXTRA_MODEL_PATHS")
    if not roots and not extra:
        roots = ["tiny"]  # nothing configured: the built-in tiny model (see the module docs)
    folders = [_expand_tiny(root) / sub for root in roots for sub in KIND_FOLDERS[kind]]
    if extra:
        folders += extra_model_paths(extra).get(kind, [])
    return folders


_TINY_NOTICE_GIVEN = False


def _tiny_notice(path: Path) -> None:
    """Say once per process that a model file came from the tiny random-weight model."""
    global _TINY_NOTICE_GIVEN
    from .zimage.tiny import tiny_comfy_dir

    if _TINY_NOTICE_GIVEN or not path.is_relative_to(tiny_comfy_dir()):
        return
    _TINY_NOTICE_GIVEN = True
    import sys

    print(
        "graphrun: using the tiny random-weight model: pictures are noise "
        "(give --models-dir DIR or set GRAPHRUN_MODELS for real weights)",
        file=sys.stderr,
    )


def resolve_model_file(
    name: str, kind: str, models_dirs: Iterable[str] = (), extra_paths_file: str | None = None
) -> Path:
    """The path of model file ``name`` of ``kind``; raises ModelFileNotFound listing where it looked."""
    direct = Path(name).expanduser()
    if direct.is_absolute() or direct.exists():
        if direct.exists():
            return direct
    folders = search_folders(kind, models_dirs, extra_paths_file)
    for folder in folders:
        candidate = folder / name
        if candidate.exists():
            _tiny_notice(candidate)
            return candidate
    looked = [str(direct)] + [str(f / name) for f in folders]
    hint = (
        "pass --models-dir DIR (a folder with ComfyUI's layout: "
        + ", ".join(f"{k[0]}/" for k in KIND_FOLDERS.values())
        + "), set GRAPHRUN_MODELS, or give a path"
    )
    raise ModelFileNotFound(f"{kind} file '{name}' not found; looked in: {', '.join(looked)}; {hint}")
