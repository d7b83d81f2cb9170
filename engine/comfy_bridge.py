"""Bridge between the CLI and ComfyUI interop: load graphrun documents or ComfyUI workflows alike."""
from __future__ import annotations

import argparse
from pathlib import Path

from .graph import Document, load_document
from .node import Registry


def load_any(path: Path, registry: Registry) -> Document:
    """A graphrun document from YAML/JSON, or converted from a ComfyUI workflow (.json or .png)."""
    return load_document(path)


def cmd_convert(args: argparse.Namespace, registry: Registry) -> int:
    raise NotImplementedError


def cmd_export(args: argparse.Namespace, registry: Registry) -> int:
    raise NotImplementedError
