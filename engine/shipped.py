"""The graphs that ship with graphrun (package data ``graphrun/graphs/*.yaml``), usable by name.

``graphrun zimage_turbo``, ``graphrun zimage_turbo.yaml``, ``graphrun validate graphs/zimage_turbo.yaml``
and ``graphrun.load("zimage_turbo")`` find the shipped graph wherever graphrun is installed. An existing
local file always wins: a name is looked up among the shipped graphs only when no such file exists.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

__all__ = ["graphs_dir", "shipped_graphs", "resolve_graph", "shipped_name"]

_SUFFIXES = ("", ".yaml", ".yml")


def graphs_dir() -> Path:
    """The folder of the shipped graphs: ``graphs/`` next to the package's ``engine/``."""
    return Path(__file__).resolve().parent.parent / "graphs"


def shipped_graphs() -> dict[str, Path]:
    """Shipped graph name -> file, sorted by name."""
    folder = graphs_dir()
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def shipped_name(source: Union[str, Path]) -> str | None:
    """The shipped graph ``source`` names when it is not a file here: ``NAME``, ``NAME.yaml`` or
    ``graphs/NAME.yaml`` (the README's spelling, from any folder); None otherwise."""
    path = Path(source)
    if path.exists() or path.suffix.lower() not in _SUFFIXES or path.parent not in (Path("."), Path("graphs")):
        return None
    name = path.name[: -len(path.suffix)] if path.suffix else path.name
    return name if name in shipped_graphs() else None


def resolve_graph(source: Union[str, Path]) -> Path:
    """``source`` as a path: the file itself when it exists, else the shipped graph it names, else
    unchanged (the loader then reports that it does not exist)."""
    name = shipped_name(source)
    return shipped_graphs()[name] if name is not None else Path(source)
