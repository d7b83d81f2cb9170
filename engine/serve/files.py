"""Which files ``graphrun serve`` may read and write for a client: only inside its own folders.

ComfyUI names a file by ``filename``, ``subfolder`` and ``type`` (input, output or temp), or by an
annotated name ``"photo.png [input]"``. Every such name is checked here before any file is touched:
absolute paths, ``..``, backslashes, NUL bytes and symbolic links anywhere below the folder are refused,
and the resolved path must stay inside the folder. (ComfyUI checks the common path only; a symlink
planted in its input folder reads anywhere.)
"""
from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

FOLDER_TYPES = ("input", "output", "temp")
_ANNOTATION = re.compile(r"^(?P<name>.*?) \[(?P<type>input|output|temp)\]$")


class UnsafePath(ValueError):
    """A client-supplied name that would leave its folder (HTTP 400, or 403 for a symlink)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def split_annotation(name: str) -> tuple[str, str | None]:
    """``"a.png [output]"`` -> ``("a.png", "output")``; a plain name -> ``(name, None)``."""
    match = _ANNOTATION.match(name)
    return (match["name"], match["type"]) if match else (name, None)


def _parts(text: str, what: str) -> list[str]:
    if "\x00" in text or "\\" in text:
        raise UnsafePath(f"{what} {text!r} holds a NUL byte or a backslash")
    path = PurePosixPath(text)
    if path.is_absolute() or text.startswith("~"):
        raise UnsafePath(f"{what} {text!r} is absolute; give a name relative to the folder")
    parts = [p for p in path.parts if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePath(f"{what} {text!r} leaves the folder ('..')")
    return parts


def safe_path(base: Path, subfolder: str, filename: str) -> Path:
    """``base/subfolder/filename``, refused (UnsafePath) unless it stays inside ``base`` without symlinks.

    The file need not exist (uploads); the folders on the way that do exist must be real folders.
    """
    if not filename:
        raise UnsafePath("no file name given")
    parts = _parts(subfolder or "", "subfolder") + _parts(filename, "file name")
    if not parts:
        raise UnsafePath(f"file name {filename!r} names no file")
    root = Path(os.path.abspath(base))
    path = root
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise UnsafePath(f"{'/'.join(parts)!r} goes through a symbolic link; refused", status=403)
    resolved = Path(os.path.realpath(path))
    real_root = Path(os.path.realpath(root))
    if resolved != real_root and real_root not in resolved.parents:
        raise UnsafePath(f"{'/'.join(parts)!r} leaves the folder", status=403)
    return path


def relative_name(base: Path, path: Path) -> tuple[str, str] | None:
    """``(subfolder, filename)`` of a file inside ``base`` as ComfyUI reports it, or None if outside."""
    try:
        rel = Path(os.path.abspath(path)).relative_to(Path(os.path.abspath(base)))
    except ValueError:
        return None
    sub = rel.parent.as_posix()
    return ("" if sub == "." else sub), rel.name


def list_files(base: Path, suffixes: tuple[str, ...]) -> list[str]:
    """Files below ``base`` with these suffixes, as ``sub/name`` (sorted; symlinks and hidden folders skipped)."""
    if not base.is_dir():
        return []
    found = []
    for folder, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (Path(folder) / d).is_symlink())
        for name in files:
            path = Path(folder) / name
            if name.lower().endswith(suffixes) and not path.is_symlink():
                found.append(path.relative_to(base).as_posix())
    return sorted(found)
