"""The CLI points of issue 10: `--set NODE.INPUT=VALUE`, `graphrun params` / `GRAPH --help`, ComfyUI seeds with
control_after_generate, shipped graphs by name, and CLI polish (no-argument help, did-you-mean for verbs, options
before the verb, str paths, the live progress line, clean warnings, JSON progress with timestamps and a last event).
"""
from __future__ import annotations

import io
import json
import random
import time
from pathlib import Path

import yaml
from PIL import Image

import graphrun
from graphrun.engine.cli import main

HERE = Path(__file__).parent
PLUGIN = str(HERE / "engine" / "test_nodes.py")
TEMPLATE = HERE / "data" / "comfy" / "ui" / "z_image_turbo_template.json"  # KSampler 57:3: seed 0, randomize
SHRINK = ["--set", "57:13.width=32", "--set", "57:13.height=32", "--set", "ksampler.steps=1"]

# A pure-Python node that declares a ComfyUI counterpart with a seed, so UI workflows of it convert and run fast.
SEED_PLUGIN = '''
from typing import Annotated
from pydantic import Field
from graphrun import Comfy, Context, node


@node("SeedEcho", category="test", output=True, cacheable=False,
      comfy=Comfy("SeedEcho", control_after_generate=("seed",)))
def seed_echo(ctx: Context, seed: Annotated[int, Field(ge=0, le=100)] = 0, name: str = "s") -> list:
    """Writes its seed to OUT/<name>_<n>.txt (n counts the runs)."""
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    n = len(list(ctx.output_dir.glob(f"{name}_*.txt")))
    path = ctx.output_dir / f"{name}_{n}.txt"
    path.write_text(str(seed))
    return [path]
'''

WARN_PLUGIN = '''
import warnings
from graphrun import Context, node


@node("Warner", category="test", output=True)
def warner(ctx: Context, text: str = "hi") -> list:
    """Warns through warnings.warn and through ctx.warn."""
    warnings.warn(f"python warning {text}", UserWarning)
    ctx.warn(f"context warning {text}")
    return []
'''

GOOD = {
    "params": {"n": 2},
    "nodes": {"x": {"type": "Const", "value": "$n"}, "c": {"type": "Count", "x": "x"},
              "s": {"type": "Slow", "x": "x", "steps": {"from": "c"}}, "o": {"type": "Collect", "x": "s"}},
}


def write(tmp_path: Path, doc: dict, name: str = "g.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def plugin(tmp_path: Path, text: str, name: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def seed_workflow(tmp_path: Path, mode: str, seed: int = 98) -> str:
    """A ComfyUI UI workflow: one SeedEcho whose seed widget stores `mode`."""
    workflow = {"nodes": [{"id": 4, "type": "SeedEcho", "mode": 0, "inputs": [], "outputs": [],
                           "widgets_values": [seed, mode, "s"]}], "links": []}
    path = tmp_path / f"seed_{mode}.json"
    path.write_text(json.dumps(workflow))
    return str(path)


def primitive_workflow(tmp_path: Path) -> str:
    """A PrimitiveNode (seed 7, randomize) feeding the seeds of two SeedEcho nodes."""
    echo = lambda node_id, link, name: {  # noqa: E731
        "id": node_id, "type": "SeedEcho", "mode": 0, "outputs": [], "widgets_values": [0, "fixed", name],
        "inputs": [{"name": "seed", "type": "INT", "link": link, "widget": {"name": "seed"}}]}
    workflow = {
        "nodes": [{"id": 1, "type": "PrimitiveNode", "mode": 0, "inputs": [], "widgets_values": [7, "randomize"],
                   "outputs": [{"name": "INT", "type": "INT", "links": [1, 2]}]},
                  echo(2, 1, "a"), echo(3, 2, "b")],
        "links": [[1, 1, 0, 2, 0, "INT"], [2, 1, 0, 3, 0, "INT"]],
    }
    path = tmp_path / "primitive.json"
    path.write_text(json.dumps(workflow))
    return str(path)


# --- 1. --set NODE.INPUT=VALUE ------------------------------------------------------------------------------------


def test_set_node_input_of_a_yaml_graph_runs_with_it(tmp_path, capsys):
    out = tmp_path / "out"
    graph = write(tmp_path, GOOD)
    assert main([graph, "--plugin", PLUGIN, "--set", "x.value=7", "--out", str(out), "--progress", "none"]) == 0
    assert (out / "result.txt").read_text() == "7"
    # a primitive input fed by a link ({from: c}) takes the literal instead: 1 step, not 2
    assert main([graph, "--plugin", PLUGIN, "--set", "s.steps=1", "--out", str(tmp_path / "o2"),
                 "--progress", "plain"]) == 0
    err = capsys.readouterr().err
    assert "s (Slow) step 1/1" in err and "step 1/2" not in err
    # the param that x.value replaced is reported as having no effect, instead of "declared but never used"
    assert main(["validate", graph, "--plugin", PLUGIN, "--set", "x.value=7"]) == 0
    err = capsys.readouterr().err
    assert "every input that used param 'n' is set by --set" in err and "GR011" not in err


def test_set_node_input_is_validated_like_a_param(tmp_path, capsys):
    graph = write(tmp_path, GOOD)
    assert main(["validate", graph, "--plugin", PLUGIN, "--set", "x.value=5000"]) == 2
    assert "error[GR009] node 'x' input 'value': value 5000 (from --set x.value) is invalid: input should be " \
           "less than or equal to 1000" in capsys.readouterr().err
    bad = ["x.value=seven", "x.vlue=1", "xx.value=1", "s.x=1", "nn=3", "s.mode=fast"]
    args = ["validate", graph, "--plugin", PLUGIN] + [a for item in bad for a in ("--set", item)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error[GR016] node 'x' input 'value': --set x.value: Const.value is INT: expected an integer, " \
           "got 'seven'" in err
    assert "--set x.vlue: Const has no input 'vlue' (hint: did you mean 'value'?)" in err
    assert "--set xx.value: the graph has no node 'xx' (hint: did you mean 'x'?)" in err
    assert "node 'x' input 'x'" not in err and "--set s.x: 'x' is a NUMBER input, fed by a link" in err
    assert "unknown param 'nn' (hint: did you mean 'n'?)" in err
    assert "--set s.mode: Slow has no input 'mode' (hint: Slow's settable inputs: steps, delay, marker)" in err
    assert "invalid (6 errors" in err


def test_set_on_a_comfy_workflow_takes_node_and_comfy_ids(tmp_path, capsys):
    # before: "unknown param 'prompt' (hint: this graph's params: none)"
    assert main(["validate", str(TEMPLATE), "--set", "prompt=a fox"]) == 2
    err = capsys.readouterr().err
    assert "unknown param 'prompt'" in err and "did you mean --set clip_text_encode.text=...?" in err
    assert "graphrun params" in err
    # ComfyUI node ids (57:27 is the prompt's CLIPTextEncode inside subgraph 57) and ComfyUI input names work
    assert main(["validate", str(TEMPLATE), "--set", "57:27.text=a fox $5", "--set", "57:3.sampler_name=euler",
                 "--set", "ksampler.cfg=2.5"]) == 0
    out = tmp_path / "api.json"
    assert main(["export", str(TEMPLATE), "--set", "57:27.text=a fox $5", "--set", "57:3.sampler_name=euler",
                 "-o", str(out)]) == 0
    api = json.loads(out.read_text())
    texts = [n["inputs"]["text"] for n in api.values() if n["class_type"] == "CLIPTextEncode"]
    samplers = [n["inputs"]["sampler_name"] for n in api.values() if n["class_type"] == "KSampler"]
    assert texts == ["a fox $5"] and samplers == ["euler"]
    capsys.readouterr()
    assert main(["validate", str(TEMPLATE), "--set", "57:3.steps=0", "--set", "12345.text=x"]) == 2
    err = capsys.readouterr().err
    assert "error[GR009] node 'ksampler' input 'steps': value 0 (from --set 57:3.steps)" in err
    assert "[ComfyUI node 57:3]" in err
    assert "--set 12345.text: the graph has no node '12345'" in err and "(or their ComfyUI ids)" in err


def test_python_api_accepts_node_inputs(tmp_path):
    registry = graphrun.engine.node.make_registry([PLUGIN])
    graph = graphrun.load(write(tmp_path, GOOD), registry=registry)
    assert graph.bind(**{"x.value": 9}).nodes["x"].literals["value"] == 9
    assert graph.bind(**{"s.steps": 3}).nodes["s"].literals["steps"] == 3


# --- 2. graphrun params / GRAPH --help ----------------------------------------------------------------------------


def test_params_lists_params_with_types_defaults_and_descriptions(capsys):
    assert main(["params", "zimage_turbo"]) == 0
    out = capsys.readouterr().out
    assert "params (--set NAME=VALUE):" in out
    assert "seed    INT     = 0" in out
    assert "model   STRING  = 'tiny'  a Z-Image diffusers folder, or 'tiny' (offline random weights)" in out
    assert "--set NODE.INPUT=VALUE" in out
    assert main(["params", "zimage_turbo", "--inputs"]) == 0
    assert "  sample  Sampler" in capsys.readouterr().out


def test_params_of_a_comfy_workflow_lists_settable_inputs(capsys):
    assert main(["params", str(TEMPLATE)]) == 0
    out = capsys.readouterr().out
    assert "params: none" in out
    assert "  ksampler [57:3]  Sampler" in out and "  clip_text_encode [57:27]  TextEncode" in out
    assert "seed             INT     0  (ComfyUI: randomize after each run; see --count)" in out
    assert "'Latina female with thick wavy hair" in out
    assert main(["params", str(TEMPLATE), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["inputs"]
    seed = next(r for r in rows if r["set"] == "ksampler.seed")
    assert seed["comfy_id"] == "57:3" and seed["value"] == 0 and seed["control_after_generate"] == "randomize"


def test_graph_help_shows_run_options_and_the_graphs_params(capsys):
    assert main(["zimage_turbo", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--out DIR" in out and "params (--set NAME=VALUE):" in out and "prompt  STRING" in out
    assert main(["run", str(TEMPLATE), "-h"]) == 0
    assert "ksampler [57:3]" in capsys.readouterr().out


# --- 3. ComfyUI seeds with control_after_generate -----------------------------------------------------------------


def test_a_randomized_seed_is_announced_and_one_run_uses_the_saved_value(capsys):
    from graphrun.engine.comfy.seeds import SeedControl
    from graphrun.engine.comfy_bridge import load_any
    from graphrun.engine.node import make_registry

    doc = load_any(TEMPLATE, make_registry([]))
    [control] = [d for d in doc.problems if isinstance(d, SeedControl)]
    assert (control.key, control.mode, control.value) == ("ksampler.seed", "randomize", 0)
    assert main(["validate", str(TEMPLATE)]) == 0
    err = capsys.readouterr().err
    assert "warning[comfy_seed_control] node 'ksampler' input 'seed': ComfyUI draws a new seed after each run " \
           "(control_after_generate 'randomize'): graphrun uses the saved seed 0" in err
    assert main(["validate", str(TEMPLATE), "--set", "ksampler.seed=3"]) == 0
    assert "comfy_seed_control" not in capsys.readouterr().err  # the user chose the seed


def test_seeds_for_run_follow_the_modes():
    from graphrun.engine.comfy.seeds import seed_note, seeds_for_run

    rand = seed_note("a", "seed", "randomize", "g1", 5, None)
    inc = seed_note("b", "seed", "increment", "g2", 99, None)
    dec = seed_note("c", "seed", "decrement", "g3", 1, None)
    shared = seed_note("d", "seed", "randomize", "g1", 5, None)
    controls = [rand, inc, dec, shared]
    bounds = {"b.seed": (0, 100)}
    rng = random.Random(0)
    runs = [seeds_for_run(controls, i, {}, bounds, rng) for i in range(4)]
    assert runs[0] == {"a.seed": 5, "b.seed": 99, "c.seed": 1, "d.seed": 5}  # run 1: the saved values
    assert [r["b.seed"] for r in runs] == [99, 100, 100, 100]  # +1 per run, kept within the input's range
    assert [r["c.seed"] for r in runs] == [1, 0, 0, 0]
    assert len({r["a.seed"] for r in runs}) == 4 and all(r["a.seed"] == r["d.seed"] for r in runs)
    assert all(0 <= r["a.seed"] <= 2**50 for r in runs)
    assert seeds_for_run([inc], 2, {"b.seed": 10}, {}, rng) == {"b.seed": 12}  # --set gives the start


def test_count_increments_a_ui_workflow_seed_and_prints_each(tmp_path, capsys):
    seeds = plugin(tmp_path, SEED_PLUGIN, "seed_nodes.py")
    out = tmp_path / "out"
    assert main([seed_workflow(tmp_path, "increment"), "--plugin", seeds, "--count", "4", "--out", str(out),
                 "--progress", "none"]) == 0
    captured = capsys.readouterr()
    assert [(out / f"s_{i}.txt").read_text() for i in range(4)] == ["98", "99", "100", "100"]
    assert "run 2/4: seed_echo.seed=99" in captured.err
    assert captured.out.split() == [str(out / f"s_{i}.txt") for i in range(4)]
    # fixed: every run the saved value; a single run: the saved value, whatever the mode
    assert main([seed_workflow(tmp_path, "fixed"), "--plugin", seeds, "--count", "2", "--out", str(tmp_path / "f"),
                 "--progress", "none"]) == 0
    assert {p.read_text() for p in (tmp_path / "f").glob("s_*.txt")} == {"98"}
    assert main([seed_workflow(tmp_path, "randomize"), "--plugin", seeds, "--out", str(tmp_path / "r"),
                 "--progress", "none"]) == 0
    assert (tmp_path / "r" / "s_0.txt").read_text() == "98"
    assert main([seed_workflow(tmp_path, "decrement"), "--plugin", seeds, "--set", "4.seed=3", "--count", "2",
                 "--out", str(tmp_path / "d"), "--progress", "none"]) == 0
    assert [(tmp_path / "d" / f"s_{i}.txt").read_text() for i in range(2)] == ["3", "2"]
    assert main([seed_workflow(tmp_path, "fixed"), "--plugin", seeds, "--count", "0"]) == 2
    assert "--count 0" in capsys.readouterr().err


def test_a_primitive_node_drives_all_the_seeds_it_feeds(tmp_path, capsys):
    seeds = plugin(tmp_path, SEED_PLUGIN, "seed_nodes.py")
    out = tmp_path / "out"
    assert main([primitive_workflow(tmp_path), "--plugin", seeds, "--count", "3", "--out", str(out),
                 "--progress", "none"]) == 0
    a = [(out / f"a_{i}.txt").read_text() for i in range(3)]
    b = [(out / f"b_{i}.txt").read_text() for i in range(3)]
    # randomize draws within SeedEcho's 0..100: two draws may repeat a value (1 in 101), both repeating 7
    # only 1 in 10^4 times
    assert a == b and a[0] == "7" and len(set(a)) >= 2 and all(0 <= int(v) <= 100 for v in a)


def test_count_records_each_seed_in_the_png(tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(TEMPLATE), *SHRINK, "--count", "2", "--out", str(out), "--progress", "none"]) == 0
    captured = capsys.readouterr()
    pngs = [Path(line) for line in captured.out.split()]
    used = []
    for png in pngs:
        with Image.open(png) as image:
            prompt = json.loads(image.text["prompt"])
            record = json.loads(image.text["graphrun"])
        [seed] = [n["inputs"]["seed"] for n in prompt.values() if n["class_type"] == "KSampler"]
        assert record["graph"]["nodes"]["ksampler"]["seed"] == seed
        used.append(seed)
    assert used[0] == 0 and used[1] != 0
    assert f"run 2/2: ksampler.seed={used[1]}" in captured.err


# --- 4. shipped graphs by name ------------------------------------------------------------------------------------


def test_shipped_graphs_by_name_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in ("zimage_turbo", "zimage_lora.yaml", "graphs/zimage_img2img.yaml"):
        assert main(["validate", name]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["show", "zimage_turbo"]) == 0 and "sample" in capsys.readouterr().out
    assert graphrun.load("zimage_turbo").document.file.endswith("graphs/zimage_turbo.yaml")
    assert "prompt" in graphrun.load(Path("zimage_turbo")).params
    # a local file always wins
    (tmp_path / "zimage_turbo.yaml").write_text("nodes: {}\n")
    assert main(["validate", "zimage_turbo.yaml"]) == 2
    assert "'nodes' must be a non-empty mapping" in capsys.readouterr().err


def test_graphs_lists_the_shipped_graphs(capsys):
    assert main(["graphs"]) == 0
    out = capsys.readouterr().out
    for name in ("zimage_3stage", "zimage_turbo", "zimage_img2img", "zimage_lora"):
        assert f"\n{name}\n" in out
    assert "params: prompt, seed, width, height, steps, model, prefix" in out
    assert main(["graphs", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    turbo = next(r for r in rows if r["name"] == "zimage_turbo")
    assert turbo["description"].startswith("Z-Image Turbo") and turbo["params"][0]["name"] == "prompt"


# --- 5. CLI polish ------------------------------------------------------------------------------------------------


def test_no_arguments_prints_short_help_and_exits_2(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: graphrun GRAPH")
    assert "validate GRAPH" in err and "params GRAPH" in err and 'graphrun zimage_3stage --set prompt=' in err
    assert main(["--debug"]) == 2


def test_mistyped_verbs_and_missing_files(tmp_path, capsys):
    assert main(["valdate", "x.yaml"]) == 2
    assert "error: unknown command 'valdate'; did you mean 'validate'?" in capsys.readouterr().err
    assert main(["nods"]) == 2
    assert "did you mean 'nodes'?" in capsys.readouterr().err
    assert main([str(tmp_path / "nope.yaml"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"no such graph file '{tmp_path / 'nope.yaml'}'" in err and "Traceback" not in err
    assert main(["zimage_trbo"]) == 2
    assert "did you mean the shipped graph 'zimage_turbo'?" in capsys.readouterr().err
    assert main(["validate", "validate.yaml"]) == 2  # a path that happens to resemble a verb is a path
    assert "no such graph file 'validate.yaml'" in capsys.readouterr().err


def test_plugin_and_debug_before_the_verb(tmp_path, capsys):
    assert main(["--plugin", PLUGIN, "nodes", "Slow"]) == 0
    assert capsys.readouterr().out.startswith("Slow  [test]")
    assert main([f"--plugin={PLUGIN}", "--debug", write(tmp_path, GOOD), "--out", str(tmp_path / "o"),
                 "--progress", "none"]) == 0
    assert main(["--debug", "--plugin", PLUGIN, "validate", write(tmp_path, GOOD)]) == 0


def test_public_api_takes_str_paths(tmp_path):
    options = graphrun.RunOptions(output_dir=str(tmp_path / "out"), extra={"models_dirs": str(tmp_path)})
    assert options.output_dir == tmp_path / "out" and options.extra["models_dirs"] == [str(tmp_path)]
    options = graphrun.RunOptions(extra={"models_dirs": (tmp_path,), "extra_model_paths": tmp_path / "x.yaml"})
    assert options.extra == {"models_dirs": [str(tmp_path)], "extra_model_paths": str(tmp_path / "x.yaml")}
    runner = graphrun.Runner(graphrun.RunOptions(output_dir=str(tmp_path / "run")))
    graph = graphrun.load(write(tmp_path, GOOD), plugins=[PLUGIN], runner=runner)
    assert graph.run(n=3).files == [tmp_path / "run" / "result.txt"]
    result = graphrun.batch(graph, [{"id": "a", "n": 4}], str(tmp_path / "batch"), progress="none")
    assert (tmp_path / "batch" / "a" / "result.txt").read_text() == "4" and result.exit_code == 0


class _Terminal(io.StringIO):
    encoding = "utf-8"

    def isatty(self) -> bool:
        return True


def test_terminal_progress_line_stays_alive_during_a_long_node():
    from graphrun.engine.progress import Event, LineReporter, TqdmReporter, default_reporter

    stream = _Terminal()
    reporter = TqdmReporter(stream, spinner_after=0.05, interval=0.02)
    reporter(Event("start", "zimage", "LoadZImage", 1, 2))
    time.sleep(0.35)
    reporter(Event("end", "zimage", "LoadZImage", 1, 2, seconds=0.35))
    text = stream.getvalue()
    redraws = [part for part in text.split("\r") if part.startswith("[1/2] zimage (LoadZImage) ")
               and part[len("[1/2] zimage (LoadZImage) ")] in reporter.frames]
    assert len(redraws) >= 5 and "⠙ 0.1s" in text and " 0.3s" in text  # a spinner, and the seconds go up
    assert "[1/2] zimage (LoadZImage) 0.35s\n" in text
    time.sleep(0.05)
    assert stream.getvalue() == text  # nothing redraws after the node ended
    assert isinstance(default_reporter(_Terminal()), TqdmReporter)
    plain = io.StringIO()
    assert isinstance(default_reporter(plain), LineReporter)  # not a terminal: plain lines, no spinner


def test_warnings_print_as_one_clean_line(tmp_path, capsys):
    warner = plugin(tmp_path, WARN_PLUGIN, "warn_nodes.py")
    graph = write(tmp_path, {"nodes": {"w": {"type": "Warner", "text": "yo"}}})
    assert main([graph, "--plugin", warner, "--out", str(tmp_path), "--progress", "plain"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert "warning: node 'w' (Warner): python warning yo" in lines
    assert "warning: node 'w' (Warner): context warning yo" in lines
    assert not any("UserWarning" in line or ".py:" in line for line in lines)


def test_json_progress_has_timestamps_and_a_last_event(tmp_path, capsys):
    before = time.time()
    assert main([write(tmp_path, GOOD), "--plugin", PLUGIN, "--out", str(tmp_path / "o"), "--progress", "json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert all(before <= e["t"] <= time.time() and e["elapsed"] >= 0 for e in events)
    assert events[-1]["event"] == "done" and events[-1]["files"] == [str(tmp_path / "o" / "result.txt")]
    assert events[-1]["seconds"] >= 0
    failing = {"nodes": {"x": {"type": "Const"}, "f": {"type": "Fail", "x": "x"}, "o": {"type": "Collect", "x": "f"}}}
    assert main([write(tmp_path, failing, "f.yaml"), "--plugin", PLUGIN, "--out", str(tmp_path), "--progress",
                 "json"]) == 1
    err = capsys.readouterr().err
    last = json.loads([line for line in err.splitlines() if line.startswith("{")][-1])
    assert last["event"] == "failed" and last["node"] == "f" and "this node always fails" in last["error"]
    assert main([write(tmp_path, GOOD), "--plugin", PLUGIN, "--set", "n=x", "--progress", "json"]) == 2
    last = json.loads([line for line in capsys.readouterr().err.splitlines() if line.startswith("{")][-1])
    assert last["event"] == "failed" and last["diagnostics"][0]["code"] == "GR016"
    assert main([str(tmp_path / "missing.yaml"), "--progress", "json"]) == 2
    last = json.loads([line for line in capsys.readouterr().err.splitlines() if line.startswith("{")][-1])
    assert last["event"] == "failed" and "no such graph file" in last["error"]


def test_batch_only_flags_without_a_batch_are_usage_errors(tmp_path, capsys):
    from graphrun.engine.cli import main

    for flag in (["--redo", "changed"], ["--seed-per-row"]):
        rc = main(["zimage_turbo", "--out", str(tmp_path / "out"), *flag])
        err = capsys.readouterr().err
        assert rc == 2 and f"{flag[0]} applies to batches only" in err
        assert not (tmp_path / "out").exists()


def test_invalid_graph_on_the_tiny_model_prints_only_its_errors(tmp_path, capsys):
    from graphrun.engine.cli import main
    from graphrun.nodes import model_files

    model_files._TINY_NOTICE_GIVEN = False  # the notice is once per process: start from a fresh one
    rc = main(["zimage_turbo", "--set", "steps=0", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "error[GR009]" in err
    assert "tiny random-weight" not in err  # said when the model loads, not before a failed validation
