"""The Python API: ``graphrun.load(path_or_dict)`` -> :class:`Graph`; ``graph.run(**params)``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

from .diagnostics import Diagnostic, GraphError
from .executor import RunResult, Runner
from .graph import Document, ParamDecl, load_document
from .node import CheckEnv, Registry, make_registry
from .progress import Reporter
from .shipped import resolve_graph
from .validate import BoundGraph, bind, check


class Graph:
    """A loaded graph document plus the node registry it is checked against.

    ``run(**params)`` validates with the params applied, then runs on this graph's own
    :class:`Runner`, so repeated calls in one process re-run only what changed.
    """

    def __init__(self, document: Document, registry: Registry, runner: Runner | None = None) -> None:
        self.document = document
        self.registry = registry
        self._runner = runner

    @property
    def name(self) -> str:
        return self.document.name

    @property
    def params(self) -> dict[str, ParamDecl]:
        return dict(self.document.params)

    @property
    def runner(self) -> Runner:
        if self._runner is None:
            self._runner = Runner()
        return self._runner

    def _env(self) -> CheckEnv:
        graph_dir = Path(self.document.file).parent if self.document.file else None
        options = self.runner.options
        return CheckEnv(graph_dir=graph_dir, options={**options.extra, "output_dir": str(options.output_dir)},
                        comfy_version=options.comfy or "")

    def validate(self, **params: Any) -> list[Diagnostic]:
        """Every diagnostic (errors and warnings) with these params applied."""
        return check(self.document, self.registry, params, self._env())[1]

    def bind(self, **params: Any) -> BoundGraph:
        """The validated graph with params applied; raises GraphError listing every error."""
        return bind(self.document, self.registry, params, self._env())

    def run(self, *, _reporter: Reporter | None = None, **params: Any) -> RunResult:
        """Validate and run with these params; returns the outputs of the output nodes."""
        return self.runner.run(self.bind(**params), reporter=_reporter)

    def run_batch(self, rows: Any, out_dir: Union[str, Path] = "output", **options: Any) -> Any:
        """Run once per row (a .jsonl/.csv/.txt path, or a list of dicts or prompts) on this
        graph's runner; see :func:`graphrun.engine.batch.batch` for the options."""
        from .batch import batch

        return batch(self, rows, out_dir, **options)


def _is_path_text(text: str) -> bool:
    """A string is a path unless it is YAML/JSON text (several lines, or a flow mapping)."""
    return "\n" not in text and not text.lstrip().startswith("{")


def load(
    source: Union[str, "os.PathLike[str]", dict],
    *,
    plugins: list[Union[str, Path]] = (),
    registry: Registry | None = None,
    runner: Runner | None = None,
) -> Graph:
    """Load a graph from a YAML/JSON path (a ``str`` or a ``Path``), YAML text, or a dict; a ComfyUI
    workflow (.json in UI or API format, or a .png carrying one) is converted on the way in. A name
    that is not a file here, such as ``"zimage_turbo"``, is a graph shipped with graphrun.

    Syntax errors and unconvertible workflows raise :class:`GraphError` at once; everything
    else is reported by ``graph.validate()`` or raised by ``graph.run()``.
    """
    registry = registry or make_registry(list(plugins))
    if isinstance(source, os.PathLike) or (isinstance(source, str) and _is_path_text(source)):
        source = resolve_graph(os.fspath(source))  # a shipped graph by name when no such file exists
    if isinstance(source, Path) and source.suffix.lower() in (".json", ".png") and source.is_file():
        from .comfy_bridge import load_any

        return Graph(load_any(Path(source), registry), registry, runner)
    return Graph(load_document(source), registry, runner)


__all__ = ["Graph", "GraphError", "Runner", "RunResult", "load"]
