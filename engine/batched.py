"""Running several rows of one graph together: what is the same in every row runs once, what differs
runs as one batched call where the node type can (its ``batch`` declaration), else once per row.

Rows of a batch are the same graph bound to different values (prompt, seed). Walking the common plan,
each node's Merkle cache key is computed per row: rows with equal keys share one result (the loaders,
the negative prompt, the schedules), rows with different keys are the node's *group*. A batchable node
(the samplers, latent resizes, VAE decode) runs its group in one call; any other node, and a batched
call that fails or refuses its rows, runs row by row, so a bad row fails alone: its error is kept and
the row takes no further part, while the others go on. Output nodes run per row with each row's own
run options (its output folder).
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

from .context import Interrupted, RunOptions
from .executor import NodeFailed, RunResult, Runner, as_outputs, cache_key, key_salt, make_plan
from .progress import Event, Reporter, quiet
from .validate import BoundGraph


@dataclass
class RowsReport:
    """What a grouped run did, for notices and benchmarks."""

    batched: dict[str, int] = field(default_factory=dict)  # node id -> rows run in one call
    one_by_one: list[str] = field(default_factory=list)  # differing nodes without a batch form, run per row
    fallbacks: dict[str, str] = field(default_factory=dict)  # node id -> why its batched call was not used


def same_structure(graphs: Sequence[BoundGraph]) -> bool:
    """True when every graph has the first one's nodes, types and links (only literal values differ)."""
    first = graphs[0]
    shape = {n: (b.spec.name, tuple(sorted(b.links.items()))) for n, b in first.nodes.items()}
    return all({n: (b.spec.name, tuple(sorted(b.links.items()))) for n, b in g.nodes.items()} == shape
               for g in graphs[1:])


def run_rows(
    runner: Runner,
    graphs: Sequence[BoundGraph],
    options: Sequence[RunOptions] | None = None,
    reporter: Reporter | None = None,
    report: RowsReport | None = None,
) -> list[RunResult | NodeFailed]:
    """Run rows of one graph together on ``runner``; one RunResult (or the NodeFailed of that row) per row.

    ``options`` gives each row's run options (its output folder); default the runner's. Raises
    Interrupted (every row stops) and ValueError when the graphs are not one graph's rows.
    """
    if not graphs:
        return []
    if not same_structure(graphs):
        raise ValueError("rows run together must be the same graph with different values")
    events = reporter or runner.reporter or quiet
    notes = report if report is not None else RowsReport()
    row_options = list(options) if options is not None else [runner.options] * len(graphs)
    plan = make_plan(graphs[0])
    total = len(plan.order)
    results = [RunResult(outputs={}, unused=list(plan.unused)) for _ in graphs]
    failed: dict[int, NodeFailed] = {}
    keys: list[dict[str, str]] = [{} for _ in graphs]
    values: list[dict[str, tuple[Any, ...]]] = [{} for _ in graphs]
    remaining = [dict(plan.consumers) for _ in graphs]
    salts = [uuid.uuid4().hex for _ in graphs]
    try:
        for index, node_id in enumerate(plan.order, 1):
            if runner._stop.is_set():
                raise Interrupted(f"interrupted before node '{node_id}'")
            live = [r for r in range(len(graphs)) if r not in failed]
            if not live:
                break
            spec = graphs[live[0]].nodes[node_id].spec
            groups: dict[str, list[int]] = {}
            for r in live:
                salt = key_salt(runner.options, graphs[r], spec, salts[r])
                keys[r][node_id] = results[r].keys[node_id] = cache_key(graphs[r].nodes[node_id], keys[r], salt)
                groups.setdefault(keys[r][node_id], []).append(r)
            todo: list[tuple[str, list[int]]] = []
            for key, rows in groups.items():
                outputs = runner.cache.get(key) if spec.cacheable else None
                if outputs is None:
                    todo.append((key, rows))
                    continue
                events(Event("cached", node_id, spec.name, index, total))
                for r in rows:
                    results[r].cached.append(node_id)
                    values[r][node_id] = outputs
            done = _run_batched(runner, graphs, node_id, todo, values, row_options, events, index, total, results,
                                notes) if len(todo) > 1 and spec.batch is not None and not spec.output else {}
            if len(todo) > 1 and spec.batch is None and not spec.output and node_id not in notes.one_by_one:
                notes.one_by_one.append(node_id)
            for key, rows in todo:
                outputs = done.get(key)
                if outputs is None:
                    first = rows[0]
                    try:
                        outputs = runner._execute(graphs[first], graphs[first].nodes[node_id], values[first], events,
                                                  index, total, results[first], row_options[first])
                    except NodeFailed as exc:
                        for r in rows:
                            failed[r] = exc
                        continue
                    for r in rows[1:]:  # equal keys: the same work, one result
                        results[r].executed.append(node_id)
                        if spec.output:
                            results[r].outputs[node_id] = results[first].outputs.get(node_id)
                if spec.cacheable:
                    runner._remember(key, outputs, spec.keep)
                for r in rows:
                    values[r][node_id] = outputs
            for r in range(len(graphs)):
                if r in failed or node_id not in values[r]:
                    continue
                node = graphs[r].nodes[node_id]
                for src in {src for src, _ in node.links.values()}:
                    remaining[r][src] -= 1
                    if remaining[r][src] == 0:
                        values[r].pop(src, None)
                if remaining[r][node_id] == 0:
                    values[r].pop(node_id, None)
    finally:
        runner._stop.clear()
    return [failed.get(r, results[r]) for r in range(len(graphs))]


def _run_batched(
    runner: Runner,
    graphs: Sequence[BoundGraph],
    node_id: str,
    todo: list[tuple[str, list[int]]],
    values: list[dict[str, tuple[Any, ...]]],
    row_options: list[RunOptions],
    events: Reporter,
    index: int,
    total: int,
    results: list[RunResult],
    notes: RowsReport,
) -> dict[str, tuple[Any, ...]]:
    """One batched call for the distinct keys of a node; {} when it refuses or fails (run them one by one)."""
    firsts = [rows[0] for _, rows in todo]
    spec = graphs[firsts[0]].nodes[node_id].spec
    calls = [runner.node_kwargs(graphs[r], graphs[r].nodes[node_id], values[r], events, index, total,
                                row_options[r]) for r in firsts]
    events(Event("start", node_id, spec.name, index, total, info={"rows": len(calls)}))
    started = time.perf_counter()
    try:
        returned = spec.batch(calls)  # type: ignore[misc]
        if len(returned) != len(calls):
            raise ValueError(f"the batched call returned {len(returned)} results for {len(calls)} rows")
        outputs = [as_outputs(graphs[r].nodes[node_id], value) for r, value in zip(firsts, returned)]
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted in node '{node_id}'") from None
    except Exception as exc:  # noqa: BLE001 - the rows run one by one instead, so a bad row fails alone
        notes.fallbacks[node_id] = f"{type(exc).__name__}: {exc}"
        return {}
    seconds = time.perf_counter() - started
    info = {"rows": len(calls)}
    events(Event("end", node_id, spec.name, index, total, seconds=seconds, info=info))
    notes.batched[node_id] = len(calls)
    done = {}
    for (key, rows), value in zip(todo, outputs):
        done[key] = value
        for r in rows:
            results[r].executed.append(node_id)
            results[r].seconds[node_id] = seconds / len(calls)
    return done


__all__ = ["RowsReport", "run_rows", "same_structure"]
