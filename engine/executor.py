"""Planning and execution: a topological plan over the nodes that feed outputs, Merkle cache
keys, a Runner that keeps results across runs, freeing after last use, progress, interrupt.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache import DEFAULT_BUDGET, ResultCache
from .context import Context, Interrupted, RunOptions, effective_comfy_version
from .node import Written
from .progress import Event, Reporter, quiet
from .validate import BoundGraph, BoundNode, needed_nodes


class NodeFailed(Exception):
    """A node raised while running. ``node`` and ``type`` name it; ``__cause__`` is the error."""

    def __init__(self, node: str, node_type: str, error: BaseException, origin: str | None = None):
        self.node = node
        self.node_type = node_type
        self.error = error
        message = str(error) or type(error).__name__
        where = f" [{origin}]" if origin else ""  # e.g. the ComfyUI node a converted workflow had
        super().__init__(f"node '{node}' ({node_type}){where} failed: {message}")


@dataclass(frozen=True)
class Plan:
    """What runs, in which order, and when each result can be dropped."""

    order: tuple[str, ...]
    unused: tuple[str, ...]
    consumers: dict[str, int]  # node id -> number of planned nodes that read it


def make_plan(graph: BoundGraph) -> Plan:
    """Deterministic topological order (ties broken by document order) of the needed nodes."""
    needed = needed_nodes(graph.nodes)
    # Kahn's algorithm with the ready nodes in a heap keyed by document position: the order
    # networkx.lexicographical_topological_sort gives, without importing networkx (~0.15 s) at startup.
    waiting = {node_id: len(graph.dependencies(node_id)) for node_id in needed}
    feeds: dict[str, list[str]] = {node_id: [] for node_id in needed}
    for node_id in needed:
        for src in graph.dependencies(node_id):
            feeds[src].append(node_id)
    ready = [(graph.nodes[node_id].order, node_id) for node_id, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    planned: list[str] = []
    while ready:
        node_id = heapq.heappop(ready)[1]
        planned.append(node_id)
        for target in feeds[node_id]:
            waiting[target] -= 1
            if waiting[target] == 0:
                heapq.heappush(ready, (graph.nodes[target].order, target))
    if len(planned) != len(needed):  # validation rejects cycles; a hand-made BoundGraph may still have one
        raise ValueError(f"the graph has a cycle through: {', '.join(sorted(n for n, c in waiting.items() if c))}")
    order = tuple(planned)
    consumers = {node_id: 0 for node_id in order}
    for node_id in order:
        for src in graph.dependencies(node_id):
            consumers[src] += 1
    unused = tuple(n for n in graph.nodes if n not in needed)
    return Plan(order, unused, consumers)


def _canonical(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)  # keeps -0.0 / nan distinct and exact
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items())}
    return value


def key_salt(options: RunOptions, graph: BoundGraph, spec: Any, run_salt: str) -> str:
    """What a node's cache key is salted with: the ComfyUI version followed (it changes what nodes
    compute), and for a non-cacheable node the run's own salt, so it and everything after it re-run."""
    behaviour = f"comfy={effective_comfy_version(options, graph)}"
    return behaviour if spec.cacheable else f"{behaviour}|{run_salt}"


def cache_key(node: BoundNode, upstream: dict[str, str], salt: str = "") -> str:
    """Merkle key: node type, version, literal inputs and upstream keys. Tensors never hashed."""
    payload = [
        node.spec.name,
        node.spec.version,
        _canonical(node.literals),
        sorted((name, upstream[src], out) for name, (src, out) in node.links.items()),
        salt,
    ]
    return hashlib.sha256(json.dumps(payload, default=repr).encode()).hexdigest()


@dataclass
class RunResult:
    """What a run produced: output node results, and what ran versus what came from cache."""

    outputs: dict[str, Any]
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    """Node id -> cache key of its outputs (``Runner.cache.get(key)`` while they stay cached)."""

    @property
    def files(self) -> list[Path]:
        """Every file path returned by output nodes (SaveImage and the like), in order."""
        return returned_paths(list(self.outputs.values()))


def returned_paths(value: Any) -> list[Path]:
    """The file paths in a node's return value (nested lists, tuples and dicts walked), in order."""
    found: list[Path] = []

    def walk(item: Any) -> None:
        if isinstance(item, Path):
            found.append(item)
        elif isinstance(item, Written):
            walk(item.files)
        elif isinstance(item, (list, tuple)):
            for v in item:
                walk(v)
        elif isinstance(item, dict):
            for v in item.values():
                walk(v)

    walk(value)
    return found


class Runner:
    """Runs bound graphs, keeping results (and loaded models) across runs in this process.

    ``cache_bytes`` bounds cached intermediate results (LRU); 0 disables caching, so each
    intermediate is freed right after its last consumer. Nodes declared ``keep=True`` (model
    loaders) stay cached regardless of the budget, the most recent ``max_kept`` of them.
    """

    def __init__(
        self,
        options: RunOptions | None = None,
        *,
        cache_bytes: int = DEFAULT_BUDGET,
        max_kept: int = 4,
        reporter: Reporter | None = None,
    ) -> None:
        self.options = options or RunOptions()
        self.cache = ResultCache(cache_bytes)
        self.max_kept = max_kept
        self.reporter = reporter or quiet
        self.shared: dict[str, Any] = {}
        self._stop = threading.Event()
        self._kept: list[str] = []

    def interrupt(self) -> None:
        """Ask the current run to stop at the next step boundary (thread- and signal-safe)."""
        self._stop.set()

    def _remember(self, key: str, outputs: tuple[Any, ...], keep: bool) -> None:
        self.cache.put(key, outputs, keep=keep)
        if keep:
            if key in self._kept:
                self._kept.remove(key)
            self._kept.append(key)
            while len(self._kept) > self.max_kept:
                old = self._kept.pop(0)
                if old in self.cache:
                    self.cache._drop(old)

    def cached_nodes(self, graph: BoundGraph) -> list[str]:
        """The planned nodes whose results are cached now, so that a run would not execute them (in plan
        order). Keys are computed as :meth:`run` does; a non-cacheable node and what follows it never are."""
        plan = make_plan(graph)
        keys: dict[str, str] = {}
        cached = []
        for node_id in plan.order:
            node = graph.nodes[node_id]
            keys[node_id] = cache_key(node, keys, key_salt(self.options, graph, node.spec, "not cached"))
            if node.spec.cacheable and keys[node_id] in self.cache:
                cached.append(node_id)
        return cached

    def run(self, graph: BoundGraph, reporter: Reporter | None = None) -> RunResult:
        """Execute the nodes that feed output nodes. Raises NodeFailed or Interrupted."""
        report = reporter or self.reporter
        plan = make_plan(graph)
        result = RunResult(outputs={}, unused=list(plan.unused))
        try:
            return self._run_plan(graph, plan, result, report)
        finally:
            # An interrupt that arrived between runs stops the next run at its first boundary,
            # then is spent; it never outlives the run it stopped.
            self._stop.clear()

    def _run_plan(self, graph: BoundGraph, plan: Plan, result: RunResult, report: Reporter) -> RunResult:
        keys: dict[str, str] = {}
        values: dict[str, tuple[Any, ...]] = {}
        remaining = dict(plan.consumers)
        run_salt = uuid.uuid4().hex
        total = len(plan.order)
        for index, node_id in enumerate(plan.order, 1):
            if self._stop.is_set():
                raise Interrupted(f"interrupted before node '{node_id}'")
            node = graph.nodes[node_id]
            spec = node.spec
            key = cache_key(node, keys, key_salt(self.options, graph, spec, run_salt))
            keys[node_id] = key
            result.keys[node_id] = key
            outputs = self.cache.get(key) if spec.cacheable else None
            if outputs is not None:
                result.cached.append(node_id)
                report(Event("cached", node_id, spec.name, index, total))
            else:
                outputs = self._execute(graph, node, values, report, index, total, result)
                if spec.cacheable:
                    self._remember(key, outputs, spec.keep)
            values[node_id] = outputs
            for src in {src for src, _ in node.links.values()}:
                remaining[src] -= 1
                if remaining[src] == 0:
                    del values[src]  # last consumer done: drop our reference
            if remaining[node_id] == 0:
                values.pop(node_id, None)
        return result

    def _execute(
        self,
        graph: BoundGraph,
        node: BoundNode,
        values: dict[str, tuple[Any, ...]],
        report: Reporter,
        index: int,
        total: int,
        result: RunResult,
        options: RunOptions | None = None,
    ) -> tuple[Any, ...]:
        spec = node.spec
        kwargs = self.node_kwargs(graph, node, values, report, index, total, options)
        report(Event("start", node.id, spec.name, index, total))
        started = time.perf_counter()
        try:
            returned = spec.fn(**kwargs)
        except Interrupted:
            raise
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted in node '{node.id}'") from None
        except Exception as exc:
            report(Event("error", node.id, spec.name, index, total, info={"error": str(exc)}))
            raise NodeFailed(node.id, spec.name, exc, graph.document.origins.get(node.id)) from exc
        seconds = time.perf_counter() - started
        result.executed.append(node.id)
        result.seconds[node.id] = seconds
        # An output node's end event names the files it wrote (servers report them as they appear).
        info = {"files": [str(p) for p in returned_paths(returned)]} if spec.output else {}
        report(Event("end", node.id, spec.name, index, total, seconds=seconds, info=info))
        if isinstance(returned, Written):
            result.outputs[node.id] = returned.files
            return as_outputs(node, returned.value)
        if spec.output:
            result.outputs[node.id] = returned
        return as_outputs(node, returned)

    def node_kwargs(
        self,
        graph: BoundGraph,
        node: BoundNode,
        values: dict[str, tuple[Any, ...]],
        report: Reporter,
        index: int,
        total: int,
        options: RunOptions | None = None,
    ) -> dict[str, Any]:
        """The keyword arguments a node's function gets: literals, linked values and its Context."""
        spec = node.spec
        kwargs: dict[str, Any] = dict(node.literals)
        for name, (src, out) in node.links.items():
            src_spec = graph.nodes[src].spec
            position = [o.name for o in src_spec.outputs].index(out)
            kwargs[name] = values[src][position]
        for ispec in spec.inputs:
            if ispec.socket and ispec.name not in kwargs:
                kwargs[ispec.name] = None  # optional socket left unconnected
        if spec.context_param:
            kwargs[spec.context_param] = Context(
                node_id=node.id,
                node_type=spec.name,
                options=options or self.options,
                emit=lambda kind, info: report(Event(kind, node.id, spec.name, index, total, info=info)),
                stop=self._stop,
                graph=graph,
                shared=self.shared,
            )
        return kwargs


def as_outputs(node: BoundNode, returned: Any) -> tuple[Any, ...]:
    """A node function's return value as the tuple of its declared outputs."""
    spec = node.spec
    if len(spec.outputs) == 0:
        return ()
    if len(spec.outputs) == 1:
        # A one-field NamedTuple names its output (``images`` rather than the type's ``image``).
        return tuple(returned) if isinstance(returned, tuple) and hasattr(returned, "_fields") else (returned,)
    outputs = tuple(returned)
    if len(outputs) != len(spec.outputs):
        raise NodeFailed(node.id, spec.name, TypeError(f"returned {len(outputs)} values, declared {len(spec.outputs)}"))
    return outputs

