"""Executor behaviour with pure-Python nodes: order, caching, invalidation, freeing, progress."""
from __future__ import annotations

from pathlib import Path

import pytest

import graphrun
from graphrun.engine.context import Interrupted, RunOptions
from graphrun.engine.executor import NodeFailed, Runner, make_plan
from graphrun.engine.node import make_registry

PLUGIN = Path(__file__).parent / "engine" / "test_nodes.py"


@pytest.fixture()
def registry():
    return make_registry([PLUGIN], builtins=False)


@pytest.fixture()
def nodes_module(registry):
    import sys

    module = next(m for name, m in sys.modules.items() if name.startswith("graphrun_plugin_test_nodes"))
    module.CALLS.clear()
    module.ALIVE.clear()
    return module


def chain_doc(out: Path) -> dict:
    return {
        "graph": "chain",
        "params": {"a": {"type": "INT", "default": 2}, "b": 3, "factor": 1.5},
        "nodes": {
            "unused": {"type": "Const", "value": 99},
            "a": {"type": "Const", "value": "$a", "label": "a"},
            "b": {"type": "Const", "value": "$b", "label": "b"},
            "sum": {"type": "Add", "a": "a", "b": "b"},
            "scaled": {"type": "Scale", "x": "sum", "factor": "$factor"},
            "text": {"type": "Format", "x": "scaled", "template": "value={}"},
            "save": {"type": "Collect", "text": "text"},
        },
    }


def test_plan_is_topological_and_skips_unused(registry):
    graph = graphrun.load(chain_doc(Path("x")), registry=registry).bind()
    plan = make_plan(graph)
    assert plan.order == ("a", "b", "sum", "scaled", "text", "save")
    assert plan.unused == ("unused",)


def test_run_produces_output_and_identical_rerun_executes_nothing(tmp_path, registry, nodes_module):
    g = graphrun.load(chain_doc(tmp_path), registry=registry, runner=Runner(RunOptions(output_dir=tmp_path)))
    first = g.run()
    assert (tmp_path / "result.txt").read_text() == "value=7.5"
    assert first.executed == ["a", "b", "sum", "scaled", "text", "save"]
    assert first.files == [tmp_path / "result.txt"]
    calls = dict(nodes_module.CALLS)
    second = g.run()
    assert second.cached == ["a", "b", "sum", "scaled", "text"]
    assert second.executed == ["save"]  # output nodes always run: they have effects
    assert dict(nodes_module.CALLS) == {**calls, "Collect": calls["Collect"] + 1}


def test_changing_one_param_reruns_exactly_its_dependents(tmp_path, registry, nodes_module):
    g = graphrun.load(chain_doc(tmp_path), registry=registry, runner=Runner(RunOptions(output_dir=tmp_path)))
    g.run()
    result = g.run(b=10)
    assert result.executed == ["b", "sum", "scaled", "text", "save"]
    assert result.cached == ["a"]
    assert (tmp_path / "result.txt").read_text() == "value=18.0"
    result = g.run(b=10, factor=2.0)
    assert result.executed == ["scaled", "text", "save"]
    # back to the first params: everything still cached
    assert g.run().executed == ["save"]


def test_node_version_enters_the_cache_key(registry):
    from graphrun.engine.executor import cache_key

    graph = graphrun.load(chain_doc(Path("x")), registry=registry).bind()
    node = graph.nodes["a"]
    bumped = type(node)(node.id, type(node.spec)(**{**node.spec.__dict__, "version": 9}), node.literals, node.links)
    assert cache_key(node, {}) != cache_key(bumped, {})


def test_intermediates_are_freed_after_last_consumer_without_cache(tmp_path, registry, nodes_module):
    doc = {
        "nodes": {
            "a": {"type": "Const", "value": 1, "label": "a"},
            "b": {"type": "Scale", "x": "a", "label": "b"},
            "c": {"type": "Probe", "x": "b", "watch": "a"},
            "save": {"type": "Collect", "x": "c"},
        }
    }
    runner = Runner(RunOptions(output_dir=tmp_path), cache_bytes=0)
    graphrun.load(doc, registry=registry, runner=runner).run()
    assert nodes_module.CALLS["probe_saw_dead"] == 1
    # with the default cache the same value is kept for the next run
    nodes_module.CALLS.clear()
    runner = Runner(RunOptions(output_dir=tmp_path))
    graphrun.load(doc, registry=registry, runner=runner).run()
    assert nodes_module.CALLS["probe_saw_alive"] == 1


def test_byte_budget_evicts_least_recently_used():
    from graphrun.engine.cache import ResultCache

    class Sized:
        def __init__(self, n):
            self.n = n

        def __graphrun_nbytes__(self):
            return self.n

    cache = ResultCache(budget_bytes=100)
    cache.put("a", (Sized(60),))
    cache.put("b", (Sized(30),))
    assert cache.get("a") is not None  # a is now most recently used
    cache.put("c", (Sized(30),))  # over budget: evicts b, the least recently used
    assert "b" not in cache and "a" in cache and "c" in cache
    cache.put("model", (Sized(10**9),), keep=True)
    assert "model" in cache and cache.bytes == 90


def test_multiple_outputs_and_primitive_links(tmp_path, registry):
    doc = {
        "nodes": {
            "x": {"type": "Const", "value": 8},
            "halves": {"type": "Split", "x": "x"},
            "n": {"type": "Count", "x": "halves.high"},
            "y": {"type": "Const", "value": {"from": "n"}},
            "sum": {"type": "Add", "a": "halves.low", "b": "y"},
            "save": {"type": "Collect", "x": "sum"},
        }
    }
    g = graphrun.load(doc, registry=registry, runner=Runner(RunOptions(output_dir=tmp_path)))
    g.run()
    assert (tmp_path / "result.txt").read_text() == "16.0"


def test_non_cacheable_node_and_its_dependents_always_rerun(tmp_path, registry):
    doc = {
        "nodes": {
            "x": {"type": "Const", "value": 1},
            "r": {"type": "Random", "x": "x"},
            "s": {"type": "Scale", "x": "r"},
            "save": {"type": "Collect", "x": "s"},
        }
    }
    g = graphrun.load(doc, registry=registry, runner=Runner(RunOptions(output_dir=tmp_path)))
    g.run()
    assert g.run().executed == ["r", "s", "save"]


def test_failure_names_node_and_type(tmp_path, registry):
    doc = {"nodes": {"x": {"type": "Const"}, "boom": {"type": "Fail", "x": "x"}, "save": {"type": "Collect", "x": "boom"}}}
    g = graphrun.load(doc, registry=registry, runner=Runner(RunOptions(output_dir=tmp_path)))
    with pytest.raises(NodeFailed, match=r"node 'boom' \(Fail\) failed: this node always fails"):
        g.run()
    assert not (tmp_path / "result.txt").exists()


def test_progress_events_per_node_and_step(tmp_path, registry):
    events = []
    doc = {"nodes": {"x": {"type": "Const"}, "s": {"type": "Slow", "x": "x", "steps": 3}, "save": {"type": "Collect", "x": "s"}}}
    g = graphrun.load(doc, registry=registry, runner=Runner(RunOptions(output_dir=tmp_path), reporter=events.append))
    g.run()
    kinds = [(e.kind, e.node, e.info.get("step")) for e in events]
    assert kinds == [
        ("start", "x", None), ("end", "x", None),
        ("start", "s", None), ("step", "s", 1), ("step", "s", 2), ("step", "s", 3), ("end", "s", None),
        ("start", "save", None), ("end", "save", None),
    ]
    assert all(e.total == 3 for e in events)


def test_interrupt_stops_at_step_boundary(tmp_path, registry):
    runner = Runner(RunOptions(output_dir=tmp_path))
    seen = []

    def reporter(event):
        seen.append(event)
        if event.kind == "step" and event.info["step"] == 2:
            runner.interrupt()

    doc = {"nodes": {"x": {"type": "Const"}, "s": {"type": "Slow", "x": "x", "steps": 5}, "save": {"type": "Collect", "x": "s"}}}
    with pytest.raises(Interrupted):
        graphrun.load(doc, registry=registry, runner=runner).run(_reporter=reporter)
    assert [e.info.get("step") for e in seen if e.kind == "step"] == [1, 2]
    assert not (tmp_path / "result.txt").exists()


def test_overhead_per_node_chain_of_1000(tmp_path, registry):
    """A 1,000-node chain validates and runs (the closing note reports the per-node overhead)."""
    nodes = {"n0": {"type": "Const", "value": 1}}
    for i in range(1, 1000):
        nodes[f"n{i}"] = {"type": "Scale", "x": f"n{i-1}", "factor": 1.0}
    nodes["save"] = {"type": "Collect", "x": "n999"}
    g = graphrun.load({"nodes": nodes}, registry=registry, runner=Runner(RunOptions(output_dir=tmp_path)))
    result = g.run()
    assert len(result.executed) == 1001
    assert g.run().executed == ["save"]
