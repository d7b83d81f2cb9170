"""graphrun: run diffusion node-graph workflows as data, in process.

    import graphrun
    graph = graphrun.load("graphs/zimage_3stage.yaml")
    result = graph.run(prompt="a lighthouse at dusk", seed=7)

A name that is no file here loads a graph shipped with graphrun (``graphrun.load("zimage_turbo")``;
``graphrun.shipped_graphs()`` lists them).

The names below are imported on first use (PEP 562): every ``graphrun`` command imports this package
first, and `graphrun validate` / `nodes` / `--help` need neither the executor nor the batch driver.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from graphrun.engine.api import Graph, GraphError, RunResult, Runner, load
    from graphrun.engine.batch import BatchResult, RowResult, batch, read_manifest
    from graphrun.engine.context import Context, Interrupted, RunOptions
    from graphrun.engine.node import Comfy, Socket, node
    from graphrun.engine.shipped import shipped_graphs

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "Graph": "graphrun.engine.api",
    "GraphError": "graphrun.engine.api",
    "RunResult": "graphrun.engine.api",
    "Runner": "graphrun.engine.api",
    "load": "graphrun.engine.api",
    "BatchResult": "graphrun.engine.batch",
    "RowResult": "graphrun.engine.batch",
    "batch": "graphrun.engine.batch",
    "read_manifest": "graphrun.engine.batch",
    "Context": "graphrun.engine.context",
    "Interrupted": "graphrun.engine.context",
    "RunOptions": "graphrun.engine.context",
    "Comfy": "graphrun.engine.node",
    "Socket": "graphrun.engine.node",
    "node": "graphrun.engine.node",
    "shipped_graphs": "graphrun.engine.shipped",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        if name in ("engine", "nodes"):  # `import graphrun; graphrun.engine.node...` as with eager imports
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module 'graphrun' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
