"""graphrun: run diffusion node-graph workflows as data, in process.

    import graphrun
    graph = graphrun.load("graphs/zimage_3stage.yaml")
    result = graph.run(prompt="a lighthouse at dusk", seed=7)

A name that is no file here loads a graph shipped with graphrun (``graphrun.load("zimage_turbo")``;
``graphrun.shipped_graphs()`` lists them).
"""
from graphrun.engine.api import Graph, GraphError, RunResult, Runner, load
from graphrun.engine.batch import BatchResult, RowResult, batch, read_manifest
from graphrun.engine.context import Context, Interrupted, RunOptions
from graphrun.engine.node import Comfy, Socket, node
from graphrun.engine.shipped import shipped_graphs

__all__ = [
    "BatchResult",
    "RowResult",
    "batch",
    "read_manifest",
    "Comfy",
    "Context",
    "Graph",
    "GraphError",
    "Interrupted",
    "RunOptions",
    "RunResult",
    "Runner",
    "Socket",
    "load",
    "node",
    "shipped_graphs",
]
