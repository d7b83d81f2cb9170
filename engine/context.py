"""The object a node receives instead of globals: device policy, progress, interrupt, output dir."""
from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


class Interrupted(Exception):
    """The run was stopped by the user (Ctrl-C) at a step boundary."""


@dataclass
class RunOptions:
    """Runner-wide settings that nodes read through their context."""

    device: str | None = None  # None: CUDA when available, else CPU
    dtype: str | None = None  # None: bf16 on CUDA, fp32 on CPU
    offload: bool = False  # move model parts to the GPU only while they run (small GPUs)
    output_dir: Path = Path("output")
    comfy: str = ""  # ComfyUI version to follow (engine/comfy/versions.py); "" = the graph's, else the default
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Paths may be given as strings (RunOptions(output_dir="out")) or as Path objects, one folder or a list.
        self.output_dir = Path(self.output_dir)
        self.extra = dict(self.extra)
        for key in ("models_dirs", "input_dirs"):
            folders = self.extra.get(key)
            if isinstance(folders, (str, os.PathLike)):
                self.extra[key] = [os.fspath(folders)]
            elif folders is not None:
                self.extra[key] = [os.fspath(f) for f in folders]
        if isinstance(self.extra.get("extra_model_paths"), os.PathLike):
            self.extra["extra_model_paths"] = os.fspath(self.extra["extra_model_paths"])


class Context:
    """Handed to a node that declares a parameter annotated ``Context``.

    Long-running nodes call :meth:`progress` at each inner step: it reports progress and
    raises :class:`Interrupted` when the user asked to stop, so work stops at a step boundary.
    """

    def __init__(
        self,
        *,
        node_id: str,
        node_type: str,
        options: RunOptions,
        emit: Callable[[str, dict[str, Any]], None],
        stop: threading.Event,
        graph: Any = None,
        shared: dict[str, Any] | None = None,
    ) -> None:
        self.node_id = node_id
        self.node_type = node_type
        self.options = options
        self.graph = graph  # the BoundGraph being run (SaveImage embeds it as metadata)
        self.shared = shared if shared is not None else {}  # runner-lifetime store (loaded models)
        self._emit = emit
        self._stop = stop

    @property
    def output_dir(self) -> Path:
        return self.options.output_dir

    @property
    def comfy_version(self) -> str:
        """The ComfyUI version whose behaviour this run follows (see ``graphrun.engine.comfy.versions``):
        the run option, else the graph's ``comfy:`` setting, else the default."""
        return effective_comfy_version(self.options, self.graph)

    def check_interrupt(self) -> None:
        if self._stop.is_set():
            raise Interrupted(f"interrupted in node '{self.node_id}'")

    def progress(self, step: int, total: int, **info: Any) -> None:
        """Report inner progress (``step`` of ``total`` done) and honour Ctrl-C."""
        self._emit("step", {"step": step, "total": total, **info})
        self.check_interrupt()

    def warn(self, message: str) -> None:
        warnings.warn(f"node '{self.node_id}' ({self.node_type}): {message}", stacklevel=2)


def effective_comfy_version(options: RunOptions, graph: Any = None) -> str:
    """The ComfyUI version a run follows: ``options.comfy``, else the graph document's ``comfy:``,
    else the default (canonical name)."""
    from .comfy.versions import resolve_comfy_version

    document = getattr(graph, "document", None)
    return resolve_comfy_version(options.comfy or getattr(document, "comfy", "") or None)
