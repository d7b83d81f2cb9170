"""Cold-start guards: which libraries a fresh `graphrun` process imports for each command.

No timing asserts (a shared machine makes them flaky; ``tools/bench.py`` measures the times). What is
pinned is what makes the difference: the commands that run no model (`validate`, `nodes`, `--help`)
import none of the heavy libraries (networkx costs ~0.15 s, torch ~1.5 s, diffusers and transformers
several seconds), and `graphrun --help` not even pydantic or the node library. Loading a model imports no
diffusers pipeline and leaves the garbage collector on (it is paused while the model libraries are imported).
The planner's own topological sort must give exactly the order networkx gave.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

import graphrun
from graphrun.engine.executor import make_plan
from graphrun.engine.node import make_registry
from graphrun.engine.validate import needed_nodes

REPO = Path(__file__).resolve().parents[1]
GRAPHS = REPO / "graphs"
COMFY_API = REPO / "tests" / "data" / "comfy" / "legacy-zimage-3stage.api.json"
PLUGIN = Path(__file__).parent / "engine" / "test_nodes.py"

HEAVY = ("networkx", "torch", "diffusers", "transformers", "accelerate", "peft", "safetensors", "numpy", "scipy")
ENGINE = ("pydantic", "yaml", "graphrun.engine.node", "graphrun.engine.executor", "graphrun.engine.batch")

# Runs one CLI command in this fresh interpreter, then reports the exit code and which watched modules loaded.
PROBE = """
import contextlib, io, json, sys
watched = json.loads(sys.argv[1])
from graphrun.engine.cli import main
err = io.StringIO()
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
    try:
        code = main(sys.argv[2:])
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"code": code, "loaded": [m for m in watched if m in sys.modules], "stderr": err.getvalue()[-1500:]}))
"""


def loaded_by(*argv: str, watched: tuple[str, ...] = HEAVY + ENGINE) -> tuple[int, list[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(list(watched)), *argv],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return report["code"], report["loaded"]


@pytest.fixture(scope="module")
def tiny_built() -> None:
    """The tiny model's files in the (session) cache: validation resolves model names in them, and on a
    fresh cache the first command builds them (that first build does import torch; it is not a cold start)."""
    from graphrun.nodes.zimage.tiny import tiny_comfy_dir

    tiny_comfy_dir()


@pytest.mark.parametrize("graph", ["zimage_3stage.yaml", "zimage_turbo.yaml", "zimage_lora.yaml"])
def test_validate_imports_no_heavy_library(graph, tiny_built):
    code, loaded = loaded_by("validate", str(GRAPHS / graph))
    assert code == 0
    assert [m for m in loaded if m in HEAVY] == []
    # The executor is imported (the CLI catches its NodeFailed); the batch driver is not needed.
    assert "graphrun.engine.batch" not in loaded


def test_validate_of_a_comfyui_workflow_imports_neither_pil_nor_torch(tiny_built):
    code, loaded = loaded_by("validate", str(COMFY_API), "--models-dir", "tiny", watched=HEAVY + ("PIL",))
    assert code == 2  # its LoRA file is not in the tiny model; the point is what it took to say so
    assert loaded == []


def test_nodes_listing_imports_no_heavy_library():
    code, loaded = loaded_by("nodes")
    assert code == 0
    assert [m for m in loaded if m in HEAVY] == []
    assert "graphrun.engine.node" in loaded  # the probe sees real imports


@pytest.mark.parametrize("argv", [["--help"], ["validate", "--help"], []])
def test_help_and_usage_import_neither_pydantic_nor_the_node_library(argv):
    code, loaded = loaded_by(*argv)
    assert code == (0 if argv else 2)
    assert loaded == []


def test_loading_the_tiny_model_imports_no_pipeline_and_leaves_the_collector_on(tiny_built):
    # The pipelines package (every model family's pipeline) is a large import graphrun never needs. The model
    # libraries come in with the garbage collector paused, then frozen (libraries.py): it must be on again after.
    code = (
        "import gc, sys\n"
        "from graphrun.nodes.zimage.loading import load_single_files\n"
        "from graphrun.nodes.zimage.tiny import tiny_comfy_dir\n"
        "d = tiny_comfy_dir()\n"
        "parts = load_single_files(d / 'diffusion_models' / 'z_image_turbo_bf16.safetensors',\n"
        "                          d / 'text_encoders' / 'qwen_3_4b.safetensors', d / 'vae' / 'ae.safetensors')\n"
        "print(type(parts.transformer).__name__, sorted(m for m in sys.modules\n"
        "      if m.startswith('diffusers.pipelines') or m == 'networkx'), gc.isenabled(), gc.get_freeze_count() > 10**5)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "ZImageTransformer2DModel [] True True"


def test_a_missing_model_library_is_reported_and_the_collector_resumes():
    code = (
        "import gc, sys\n"
        "sys.modules['accelerate'] = None  # as if not installed\n"
        "from graphrun.nodes.zimage.libraries import import_model_libraries\n"
        "for attempt in (1, 2):\n"
        "    try:\n"
        "        import_model_libraries()\n"
        "    except ImportError as exc:\n"
        "        print(attempt, isinstance(exc, ImportError), 'accelerate' in str(exc), gc.isenabled())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["1 True True True", "2 True True True"]


def _random_dag(rng: random.Random, size: int) -> dict:
    """A random DAG of Const/Add nodes (listed in a shuffled document order) feeding one Collect, plus a few
    nodes nothing reads."""
    made: list[str] = []
    nodes: dict[str, dict] = {}
    for i in range(size):
        node_id = f"n{i}"
        if len(made) < 2 or rng.random() < 0.25:
            nodes[node_id] = {"type": "Const", "value": i}
        else:
            nodes[node_id] = {"type": "Add", "a": rng.choice(made), "b": rng.choice(made)}
        made.append(node_id)
    nodes["out"] = {"type": "Collect", "x": made[-1]}
    ids = list(nodes)
    rng.shuffle(ids)
    return {"graph": "dag", "nodes": {node_id: nodes[node_id] for node_id in ids}}


def test_plan_order_is_networkx_lexicographical_topological_order():
    nx = pytest.importorskip("networkx")
    registry = make_registry([PLUGIN], builtins=False)
    rng = random.Random(11)
    for _ in range(60):
        bound = graphrun.load(_random_dag(rng, rng.randint(3, 40)), registry=registry).bind()
        plan = make_plan(bound)
        g = nx.DiGraph()
        needed = needed_nodes(bound.nodes)
        for node_id in needed:
            g.add_node(node_id)
            for src in bound.dependencies(node_id):
                g.add_edge(src, node_id)
        expected = tuple(nx.lexicographical_topological_sort(g, key=lambda n: bound.nodes[n].order))
        assert plan.order == expected
        assert set(plan.unused) == set(bound.nodes) - needed
