"""Untrusted input: every bad document, workflow or value gives located diagnostics (exit 2), never a
traceback, a hang or gigabytes of memory. Limits: engine/limits.py. Fuzz tests at the end (the
10,000-example variants run with `-m slow`)."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from graphrun.engine import diagnostics
from graphrun.engine.cli import main
from graphrun.engine.comfy.formats import load_workflow
from graphrun.engine.comfy.ui_to_api import ComfyFormatError
from graphrun.engine.comfy_bridge import load_any
from graphrun.engine.diagnostics import GraphError
from graphrun.engine.graph import NODE_ID, load_document
from graphrun.engine.limits import MAX_ALIAS_VALUES, MAX_DEPTH, MAX_INT_DIGITS
from graphrun.engine.node import builtin_registry, make_registry
from graphrun.engine.validate import check

HERE = Path(__file__).parent
PLUGIN = HERE / "engine" / "test_nodes.py"

GOOD = """\
params:
  seed: {type: INT, default: 1}
nodes:
  a:   {type: Const, value: $seed}
  s:   {type: Scale, x: a, factor: 2.0}
  out: {type: Collect, x: s}
"""


@pytest.fixture(scope="module")
def registry():
    return make_registry([PLUGIN], builtins=False)


def _wrap_deep(value, depth: int):
    for _ in range(depth):
        value = [value]
    return value


def errors(source, registry, **overrides) -> list[str]:
    """Every error line for a document (text, dict or path): parse errors or validation errors."""
    try:
        doc = load_document(source)
    except GraphError as exc:
        return [d.format() for d in exc.diagnostics if d.is_error]
    return [d.format() for d in check(doc, registry, overrides)[1] if d.is_error]


def only_error(source, registry, **overrides) -> str:
    found = errors(source, registry, **overrides)
    assert len(found) == 1, found
    return found[0]


# ------------------------------------------------------------------ 1. names match in full


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD.replace("  out:", '  "out\\n":'), r"error[GR002] node id 'out\n' is not valid"),
        (GOOD.replace("  seed:", '  "seed\\n":'), r"error[GR015] param name 'seed\n' is not an identifier"),
        (GOOD.replace("x: a,", 'x: "a\\n",'), r"error[GR009] node 's' input 'x': NUMBER input takes a link, got 'a\n'"),
        (GOOD.replace("x: s}", 'x: "s.number\\n"}'), "NUMBER input takes a link, got 's.number\\n'"),
        (GOOD.replace("factor: 2.0", 'factor: {from: "a\\n"}'), "malformed value {'from': 'a\\n'}"),
    ],
)
def test_names_must_match_their_pattern_in_full(registry, text, expected):
    assert expected in errors(text, registry)[0]


def test_node_id_pattern_refuses_a_trailing_newline_with_match_too():
    # api_to_graph and others call NODE_ID.match: `$` would accept "save\n"
    assert NODE_ID.match("save") and not NODE_ID.match("save\n") and not NODE_ID.fullmatch("save\n")


def test_whole_value_param_with_trailing_newline_is_not_the_param(registry):
    # "$seed\n" is text that mentions $seed, not the INT param itself
    message = only_error(GOOD.replace("value: $seed", 'value: "$seed\\n"'), registry)
    assert "GR009" in message and "interpolation given to a INT input" in message


# ------------------------------------------------------------------ 2. YAML aliases


def _laughs(levels: int = 9) -> str:
    lines = ['l0: &l0 "lol"']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\nnodes: {a: {type: Const}}\n"


def test_billion_laughs_is_refused_quickly_with_its_line():
    started = time.perf_counter()
    with pytest.raises(GraphError) as err:
        load_document(_laughs())  # 9**8 = 43 million strings once expanded
    assert time.perf_counter() - started < 5  # refused while reading, not after expanding
    (diag,) = err.value.diagnostics
    assert diag.code == "GR002" and diag.line == 6
    assert f"YAML aliases repeat more than {MAX_ALIAS_VALUES} values in all" in diag.message


def test_bomb_file_is_refused_by_the_cli(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(_laughs())
    assert main(["validate", str(path)]) == 2
    assert f"{path}:6:" in capsys.readouterr().err


def test_modest_anchors_and_merge_keys_still_work(registry):
    shared = "nodes:\n  a: &a {type: Const, value: 3}\n  b: *a\n  s: {type: Add, a: a, b: b}\n  out: {type: Collect, x: s}\n"
    assert errors(shared, registry) == []
    merged = (
        "nodes:\n  d: &d {type: Scale, x: a, factor: 2.0, label: shared}\n  a: {type: Const, value: 3}\n"
        "  s2: {<<: *d, x: d, factor: 0.5}\n  out: {type: Collect, x: s2}\n"
    )
    doc = load_document(merged)
    assert doc.nodes["s2"].type == "Scale" and doc.nodes["s2"].inputs == {"x": "d", "factor": 0.5, "label": "shared"}
    assert errors(merged, registry) == []


def test_an_alias_inside_its_own_anchor_is_refused():
    with pytest.raises(GraphError, match=r"GR002.*alias \*a is used inside the value it names"):
        load_document("nodes: &a\n  a: *a\n")


# ------------------------------------------------------------------ 3. nesting and huge numbers

DEEP = 600  # enough to crash PyYAML's composer, json's repr and deepcopy before


@pytest.mark.parametrize(
    "text, line",
    [
        ("nodes:\n  a: {type: Const, label: " + "[" * DEEP + "]" * DEEP + "}\n", 2),
        ("nodes:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(DEEP)) + "  " * (DEEP + 1) + "x: 1\n", 101),
        ('{"nodes": {"a": {"type": "Const", "label":\n' + "[" * DEEP + "]" * DEEP + "}}}", 2),
    ],
    ids=["yaml-flow", "yaml-block", "json"],
)
def test_deep_nesting_is_one_located_error(registry, text, line):
    with pytest.raises(GraphError) as err:
        load_document(text)
    (diag,) = err.value.diagnostics
    assert (diag.code, diag.line) == ("GR002", line)
    assert f"nest deeper than {MAX_DEPTH} levels" in diag.message


@pytest.mark.parametrize(
    "text, line",
    [
        (GOOD.replace("default: 1", "default: " + "9" * 5000), 2),
        (GOOD.replace("value: $seed", "value: " + "9" * 5000), 4),
        (GOOD.replace("value: $seed", "value: 0x" + "f" * 5000), 4),
        ('{"nodes": {"a": {"type": "Const",\n "value": ' + "9" * 5000 + "}}}", 2),
    ],
    ids=["param-default", "literal", "hex", "json"],
)
def test_huge_integers_are_one_located_error(registry, text, line):
    with pytest.raises(GraphError) as err:
        load_document(text)
    (diag,) = err.value.diagnostics
    assert (diag.code, diag.line) == ("GR002", line)
    assert f"an integer of more than {MAX_INT_DIGITS} digits is too large" in diag.message


def test_python_dict_documents_are_checked_too(registry):
    deep: list = []
    for _ in range(DEEP):
        deep = [deep]
    looped: list = []
    looped.append(looped)
    for label, value, expected in [
        ("deep", deep, "nest deeper than 100 levels"),
        ("loop", looped, "a list or mapping contains itself"),
        ("int", 10**5000, "an integer of more than 100 digits"),
        ("nul", "a\x00b", "text contains a NUL character"),
    ]:
        doc = {"nodes": {"a": {"type": "Const", "label": value}, "out": {"type": "Collect", "x": "a"}}}
        message = only_error(doc, registry)
        assert "GR002" in message and expected in message and "nodes.a.label" in message, label


def test_int_inputs_take_64_bit_values(registry, tmp_path):
    plugin = tmp_path / "wide.py"
    plugin.write_text(
        "from graphrun import node\n"
        "@node('Wide', category='test', output=True)\n"
        "def wide(n: int = 0, f: float = 0.0) -> None:\n    pass\n"
    )
    reg = make_registry([PLUGIN, plugin], builtins=False)
    assert errors({"nodes": {"w": {"type": "Wide", "n": 2**64 - 1, "f": 1e300}}}, reg) == []
    assert errors({"nodes": {"w": {"type": "Wide", "n": -(2**63)}}}, reg) == []
    assert only_error({"nodes": {"w": {"type": "Wide", "n": 2**64}}}, reg) == (
        "error[GR009] node 'w' input 'n': value 18446744073709551616 does not fit in 64 bits (hint: expected INT)"
    )
    assert "does not fit in 64 bits" in only_error({"nodes": {"w": {"type": "Wide", "n": 10**99}}}, reg)


@pytest.mark.parametrize(
    "value, expected",
    [
        (".nan", "value nan is not a finite number"),
        (".inf", "value inf is not a finite number"),
        ("-.inf", "value -inf is not a finite number"),
        ("'nan'", "value 'nan' is not a finite number"),
        ("true", "True is a boolean, and FLOAT input 'factor' takes a number"),
    ],
)
def test_float_inputs_refuse_nan_infinity_and_booleans(registry, value, expected):
    message = only_error(GOOD.replace("factor: 2.0", f"factor: {value}"), registry)
    assert message.startswith("<text>:5:") and "GR009" in message and expected in message


def test_int_inputs_refuse_booleans(registry):
    message = only_error(GOOD.replace("value: $seed", "value: yes"), registry)
    assert "error[GR009] node 'a' input 'value': True is a boolean, and INT input 'value' takes a number" in message


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("9" * 5000, "param 'seed' is INT: expected an integer of at most 100 digits, got 5000 digits"),
        ("1" + "0" * 400, "param 'seed' is INT: expected an integer of at most 100 digits"),
        (10**5000, "param 'seed': an integer of more than 100 digits is too large"),
        (_wrap_deep([], 120),
         "param 'seed': at [0][0][0][0][0][0]...[0][0][0] (100 levels): lists and mappings nest deeper than 100"),
        ("a\x00", "param 'seed': text contains a NUL character"),
    ],
    ids=["digits", "zeros", "int", "deep", "nul"],
)
def test_override_values_beyond_the_limits_are_gr016(registry, raw, expected):
    message = only_error(GOOD, registry, seed=raw)
    assert "GR016" in message and expected in message


def test_float_param_from_a_huge_int_is_an_error_not_a_crash(registry):
    text = GOOD.replace("  seed: {type: INT, default: 1}", "  seed: {type: INT, default: 1}\n  f: {type: FLOAT, default: 1.0}")
    text = text.replace("factor: 2.0", "factor: $f")
    assert "expected a finite number, got 'inf'" in only_error(text, registry, f="inf")
    assert "param 'f': an integer of more than 100 digits" in only_error(text, registry, f=10**400)


def _png(path: Path, **chunks: str) -> Path:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    Image.new("RGB", (2, 2)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("deep.json", '{"1": {"class_type": "KSampler", "inputs": {"seed": ' + "[" * 300 + "]" * 300 + "}}}",
         "line 1, column 150: lists and mappings nest deeper than 100 levels"),
        ("big.json", '{"1": {"class_type": "KSampler",\n "inputs": {"seed": 1' + "0" * 200 + "}}}",
         "line 2, column 21: an integer of more than 100 digits"),
        ("ui.json", '{"nodes": [{"id": 1, "type": "KSampler", "widgets_values": ' + "[" * 300 + "]" * 300 + "}]}",
         "lists and mappings nest deeper than 100 levels"),
        ("nul.json", '{"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "a\\u0000b"}}}',
         "at 1.inputs.text: text contains a NUL character"),
        ("surrogate.json", '{"1": {"class_type": "SaveImage\\ud800", "inputs": {}}}',
         "at 1.class_type: text contains an unpaired surrogate (\\ud800)"),
    ],
)
def test_comfy_workflows_beyond_the_limits_are_gr002(tmp_path, capsys, name, content, expected):
    path = tmp_path / name
    path.write_text(content)
    for verb in (["validate", str(path)], ["run", str(path), "--out", str(tmp_path / "out")]):
        assert main(verb) == 2
        err = capsys.readouterr().err
        assert "error[GR002]" in err and expected in err and "internal error" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("[" * 5000 + "]" * 5000, "'prompt' chunk: line 1, column 101: lists and mappings nest deeper than 100"),
        ('{"1": {"class_type": "KSampler", "inputs": {"seed": ' + "9" * 5000 + "}}}",
         "'prompt' chunk: line 1, column 53: an integer of more than 100 digits"),
    ],
)
def test_png_chunks_beyond_the_limits_are_reported(tmp_path, capsys, prompt, expected):
    path = _png(tmp_path / "bad.png", prompt=prompt)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "internal error" not in err


def test_load_workflow_checks_hand_made_dicts():
    deep: dict = {}
    node = deep
    for _ in range(DEEP):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(ComfyFormatError, match="nest deeper than 100 levels"):
        load_workflow({"1": {"class_type": "KSampler", "inputs": deep}})


def test_duplicate_keys_in_comfy_json_are_a_note():
    workflow = load_workflow('{"1": {"class_type": "KSampler", "class_type": "KSampler", "inputs": {}}}')
    assert workflow.notes == ("the key 'class_type' appears twice in one object; the last one is used, as ComfyUI does",)


# ------------------------------------------------------------------ 4. linear in the graph's size


def test_large_graph_with_every_reference_wrong_validates_in_linear_time(registry, monkeypatch):
    """20,000 misspelt references: each did-you-mean over 20,000 ids would be 4e8 comparisons.
    Hints are budgeted (counted here, exactly), cycles, outputs and order are found in one pass each."""
    compared = []
    real = diagnostics.difflib.get_close_matches
    monkeypatch.setattr(
        diagnostics.difflib, "get_close_matches",
        lambda word, candidates, **kw: compared.append(len(candidates)) or real(word, candidates, **kw),
    )
    n = 20_000
    nodes = {"n0": {"type": "Const"}}
    for i in range(1, n):
        nodes[f"n{i}"] = {"type": "Scale", "x": f"n{i - 1}x"}  # every link names a missing node
        nodes[f"o{i}"] = {"type": "Collect", "x": f"n{i}"}  # and every node feeds an output
    started = time.perf_counter()
    diags = check(load_document({"nodes": nodes}), registry, {})[1]
    assert len([d for d in diags if d.code == "GR006"]) == n - 1
    assert sum(compared) <= diagnostics.HINT_COMPARISONS
    assert any(d.hint and "did you mean" in d.hint for d in diags)  # the first ones still get a hint

    nodes = {"n0": {"type": "Const"}, **{f"n{i}": {"type": "Scale", "x": f"n{i - 1}"} for i in range(1, n)}}
    nodes.update({f"o{i}": {"type": "Collect", "x": f"n{i}"} for i in range(n)})
    graph, diags = check(load_document({"nodes": nodes}), registry, {})
    assert graph is not None and diags == []
    assert [graph.nodes[f"n{i}"].order for i in (0, 1, n - 1)] == [0, 1, n - 1]
    # Generous: a quadratic validation takes many minutes here; this takes a few seconds on a slow machine.
    assert time.perf_counter() - started < 120


def test_large_yaml_file_loads_in_linear_time():
    n = 20_000
    text = "nodes:\n" + "".join(f"  n{i}: {{type: Scale, x: n{i - 1}, factor: 1.0}}\n" for i in range(1, n))
    started = time.perf_counter()
    doc = load_document(text)
    assert len(doc.nodes) == n - 1 and doc.source.locate(("nodes", f"n{n - 1}", "x"))["line"] == n
    assert time.perf_counter() - started < 60  # generous (PyYAML's composer took ~10 s for this, and recursed)


def test_comfy_import_names_nodes_in_linear_time(tmp_path):
    """Every node of a large API prompt has the same type, so each name needs a new suffix: counting up
    from 1 for each node is quadratic (50,000 nodes: minutes). Run in a subprocess with a timeout so a
    regression fails here instead of hanging the suite."""
    import subprocess
    import sys

    code = (
        "from graphrun.engine.comfy.api_to_graph import _unique_names\n"
        "order = [str(i) for i in range(50_000)]\n"
        "names = _unique_names(order, dict.fromkeys(order, 'latent'))\n"
        "assert len(set(names.values())) == 50_000 and names['0'] == 'latent' and names['49999'] == 'latent_50000'\n"
    )
    try:
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("naming 50,000 nodes took over a minute: quadratic")

    prompt = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}}
    for i in range(2, 5000):
        prompt[str(i)] = {"class_type": "LatentUpscaleBy",
                          "inputs": {"samples": [str(i - 1), 0], "upscale_method": "nearest-exact", "scale_by": 1.0}}
    path = tmp_path / "big.json"
    path.write_text(json.dumps(prompt))
    converted = load_any(path, builtin_registry())
    assert len(converted.nodes) == 4999 and "latent_upscale_by_4998" in converted.nodes


# ------------------------------------------------------------------ 5. bad documents through the CLI

_CLI_CASES = {
    "nonstring-key.yaml": ("nodes:\n  [a, b]: {type: Const}\n", "GR002"),
    "int-id.yaml": ("nodes:\n  1: {type: Const}\n  out: {type: Collect, x: '1'}\n", "GR002"),
    "bool-id.yaml": ("nodes:\n  on: {type: Const}\n  out: {type: Collect}\n", "GR002"),
    "null-id.yaml": ("nodes:\n  null: {type: Const}\n  out: {type: Collect}\n", "GR002"),
    "int-input.yaml": ("nodes:\n  a: {type: Const, 3: x}\n  out: {type: Collect, x: a}\n", "GR002"),
    "nul-id.yaml": ('nodes:\n  "a\\0": {type: Const}\n', "GR002"),
    "nul-value.yaml": ('nodes:\n  a: {type: Const}\n  out: {type: Collect, x: a, name: "r\\0"}\n', "GR002"),
    "surrogate.yaml": ('nodes:\n  a: {type: Const, label: "\\ud800"}\n  out: {type: Collect, x: a}\n', "GR002"),
    "surrogate.json": ('{"nodes": {"a": {"type": "Const", "label": "\\udc00"}}}', "GR002"),
    "nan.yaml": ("nodes:\n  a: {type: Const}\n  s: {type: Scale, x: a, factor: .nan}\n  out: {type: Collect, x: s}\n", "GR009"),
    "inf-int.yaml": ("nodes:\n  a: {type: Const, value: .inf}\n  out: {type: Collect, x: a}\n", "GR009"),
    "bool-int.yaml": ("nodes:\n  a: {type: Const, value: true}\n  out: {type: Collect, x: a}\n", "GR009"),
    "duplicate.yaml": ("nodes:\n  a: {type: Const}\n  a: {type: Const}\n  out: {type: Collect, x: a}\n", "GR002"),
    "duplicate-input.yaml": ("nodes:\n  a: {type: Const, value: 1, value: 2}\n  out: {type: Collect, x: a}\n", "GR002"),
    "list.yaml": ("- a\n- b\n", "GR002"),
    "scalar.yaml": ("just text\n", "GR002"),
    "empty.yaml": ("", "GR002"),
    "comment.yaml": ("# nothing here\n", "GR002"),
    "tabs.yaml": ("nodes:\n\ta: {type: Const}\n", "GR001"),
    "python.yaml": ("nodes: !!python/object/apply:os.system ['echo owned']\n", "GR002"),
    "python-name.yaml": ("nodes:\n  a: {type: !!python/name:os.system Const}\n", "GR002"),
    "binary.yaml": ("nodes:\n  a: {type: Const, label: !!binary aGVsbG8=}\n  out: {type: Collect, x: a}\n", "GR002"),
    "set.yaml": ("nodes:\n  a: {type: Const, label: !!set {x}}\n  out: {type: Collect, x: a}\n", "GR002"),
    "custom-tag.yaml": ("nodes:\n  a: {type: Const, label: !mine x}\n  out: {type: Collect, x: a}\n", "GR002"),
    "control-char.yaml": ("nodes:\n  a: {type: Const, label: a\x01b}\n", "GR001"),
    "two-documents.yaml": (GOOD + "---\n" + GOOD, "GR001"),
    "undefined-alias.yaml": ("nodes:\n  a: *nothing\n", "GR001"),
    "type-list.yaml": ("nodes:\n  a: {type: [Const]}\n", "GR002"),
    "description-map.yaml": ("nodes:\n  a: {type: Const, description: {x: 1}}\n  out: {type: Collect, x: a}\n", "GR002"),
    "graph-map.yaml": ("graph: {x: 1}\nnodes:\n  a: {type: Const}\n  out: {type: Collect, x: a}\n", "GR002"),
    "long-line.yaml": ("nodes: {" + ", ".join(f"n{i}: {{type: Nope}}" for i in range(3000)) + "}\n", "GR003"),
    "huge-string-int.yaml": ("nodes:\n  a: {type: Const, value: '" + "9" * 5000 + "'}\n  out: {type: Collect, x: a}\n", "GR009"),
}


@pytest.mark.parametrize("name", sorted(_CLI_CASES))
def test_bad_documents_fail_validation_cleanly_on_validate_and_run(tmp_path, capsys, name):
    text, code = _CLI_CASES[name]
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    out = tmp_path / "out"
    for verb in (["validate"], ["run", "--out", str(out), "--progress", "none"]):
        assert main([verb[0], str(path), "--plugin", str(PLUGIN), *verb[1:]]) == 2, verb
        err = capsys.readouterr().err
        assert f"error[{code}]" in err, err
        assert "Traceback" not in err and "internal error" not in err
    assert not out.exists()  # the run failed at validation: nothing was written


@pytest.mark.parametrize(
    "name, data, expected",
    [
        ("latin1.yaml", b"nodes:\n  a: {type: Const, label: \xe9}\n", "is not UTF-8 text (byte 0xe9"),
        ("utf16.yaml", "nodes: {}\n".encode("utf-16"), "is not UTF-8 text (byte 0xff"),
    ],
)
def test_undecodable_files_are_gr017_with_the_line(tmp_path, capsys, name, data, expected):
    path = tmp_path / name
    path.write_bytes(data)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "error[GR017]" in err and expected in err and "hint: save the file as UTF-8" in err


def test_valid_but_unusual_documents_still_work(registry):
    assert errors("\ufeff" + GOOD, registry) == []  # a BOM
    assert errors(GOOD.replace("\n", "\r\n"), registry) == []  # Windows line ends
    dated = GOOD.replace("value: $seed}", "value: $seed, label: 2024-01-01}")
    assert load_document(dated).nodes["a"].inputs["label"] == "2024-01-01"  # text, not a date object
    assert errors(dated, registry) == []
    emoji = json.dumps({"nodes": {"a": {"type": "Const", "label": "\U0001f600"}, "o": {"type": "Collect", "x": "a"}}})
    assert "\\ud83d\\ude00" in emoji  # JSON writes an emoji as a surrogate pair
    assert load_document(emoji).nodes["a"].inputs["label"] == "\U0001f600"
    assert errors({"nodes": {"a": {"type": "Const", "label": "x" * 1_000_000}, "o": {"type": "Collect", "x": "a"}}},
                  registry) == []


# ------------------------------------------------------------------ 6. fuzz

FAST = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))

_scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=10**90, max_value=10**120)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
    | st.sampled_from(["a", "a.number", "s.low", "$seed", "${seed}x", "$$", "\x00", "\ud800", "a\n", "9" * 5000])
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6) | st.integers(), inner, max_size=3),
    max_leaves=10,
)
_TYPES = ["Const", "Add", "Scale", "Split", "Format", "Count", "Collect", "Nope", ""]
_INPUTS = ["value", "label", "a", "b", "x", "factor", "template", "mode", "text", "name", "type", "description", "zz"]
_IDS = ["a", "b", "s", "out", "a\n", "1", "bad id", "x.y"]


@st.composite
def _near_valid_graphs(draw) -> dict:
    """The GOOD graph with random nodes, inputs and values added, changed or removed."""
    doc = yaml.safe_load(GOOD)
    for _ in range(draw(st.integers(0, 6))):
        action = draw(st.sampled_from(["node", "input", "drop", "param", "top"]))
        if not isinstance(doc.get("nodes"), dict) or not isinstance(doc.get("params", {}), dict):
            break  # a "top" change replaced them: nothing left to edit
        if action == "node":
            doc["nodes"][draw(st.sampled_from(_IDS))] = {"type": draw(st.sampled_from(_TYPES))}
        elif action == "input" and doc["nodes"]:
            body = doc["nodes"][draw(st.sampled_from(sorted(doc["nodes"], key=str)))]
            if isinstance(body, dict):
                body[draw(st.sampled_from(_INPUTS))] = draw(_values)
        elif action == "drop" and doc["nodes"]:
            doc["nodes"].pop(draw(st.sampled_from(sorted(doc["nodes"], key=str))))
        elif action == "param":
            doc.setdefault("params", {})[draw(st.sampled_from(["seed", "f", "p\n", "9"]))] = draw(_values)
        else:
            doc[draw(st.sampled_from(["graph", "description", "comfy", "nodes", "params", "extra"]))] = draw(_values)
    return doc


@st.composite
def _documents(draw):
    """A graph document as a dict, YAML text or JSON text, sometimes mangled or made too deep."""
    doc = draw(_near_valid_graphs())
    if draw(st.booleans()) and isinstance(doc.get("nodes"), dict):
        doc["nodes"]["deep"] = {"type": "Const", "label": _wrap_deep(1, draw(st.integers(90, 400)))}
    form = draw(st.sampled_from(["dict", "yaml", "json", "mangled"]))
    if form == "dict":
        return doc
    try:
        text = yaml.safe_dump(doc, allow_unicode=True) if form != "json" else json.dumps(doc)
    except (yaml.YAMLError, ValueError, RecursionError, UnicodeEncodeError):
        return doc
    if form == "mangled":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(["&x ", "*x", "<<: *x\n", "!!python/none ", ": ", "{", "- ", "\t",
                                                    "'", '"\\ud800"', "9" * 200, "[" * 150, "\n---\n", "&x [*x]"])) + text[at:]
    return text


def _check_document(registry, case) -> None:
    try:
        document = load_document(case)
    except GraphError as exc:
        assert exc.diagnostics and all(d.code.startswith("GR") for d in exc.diagnostics)
        return
    graph, diags = check(document, registry, {})
    assert (graph is None) == any(d.is_error for d in diags)
    for d in diags:
        assert d.code and d.message and d.format()


_COMFY_TYPES = ["KSampler", "CLIPTextEncode", "EmptyLatentImage", "VAEDecode", "SaveImage", "CheckpointLoaderSimple",
                "Reroute", "PrimitiveNode", "Note", "LatentUpscaleBy", "Unknown", ""]


@st.composite
def _comfy_workflows(draw):
    """ComfyUI API prompts and UI workflows with random ids, types, links and widget values."""
    ids = st.integers(-2, 6) | st.sampled_from(["1", "2", "a", "", "1:2", None, 1.5, 10**30, True])
    if draw(st.booleans()):
        prompt = {}
        for _ in range(draw(st.integers(0, 5))):
            inputs = draw(st.dictionaries(
                st.sampled_from(["seed", "text", "samples", "images", "width", "clip", "model", "vae", "x"]),
                _values | st.lists(ids | _values, min_size=2, max_size=2), max_size=4))
            node = {"class_type": draw(st.sampled_from(_COMFY_TYPES) | _values), "inputs": inputs}
            if draw(st.booleans()):
                node["_meta"] = draw(_values | st.fixed_dictionaries({"title": _values}))
            prompt[str(draw(ids))] = node if draw(st.integers(0, 9)) else draw(_values)
        return prompt
    socket = st.fixed_dictionaries({"name": st.text(max_size=6) | _values, "type": st.sampled_from(["LATENT", "*", "IMAGE", 0]),
                                    "link": ids})
    nodes = draw(st.lists(st.fixed_dictionaries(
        {"id": ids, "type": st.sampled_from(_COMFY_TYPES)},
        optional={"mode": st.sampled_from([0, 2, 4, 1, None, "x"]), "inputs": st.lists(socket, max_size=3),
                  "outputs": st.lists(socket, max_size=2), "widgets_values": _values,
                  "properties": st.dictionaries(st.sampled_from(["proxyWidgets", "x"]), _values, max_size=2)}),
        max_size=5))
    links = draw(st.lists(st.lists(ids, min_size=5, max_size=6) | _values, max_size=5))
    workflow = {"nodes": nodes, "links": links}
    if draw(st.booleans()):
        workflow["definitions"] = {"subgraphs": draw(st.lists(st.fixed_dictionaries(
            {"id": st.sampled_from(["S", "T"]), "nodes": st.just(nodes), "links": st.just(links)},
            optional={"inputs": _values, "outputs": _values}), max_size=2))}
    return workflow


@pytest.fixture(scope="module")
def comfy_file(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "workflow.json"


def _check_comfy(path: Path, workflow) -> None:
    try:
        text = json.dumps(workflow, allow_nan=True)
    except (ValueError, RecursionError):
        return
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    registry = builtin_registry()
    try:
        document = load_any(path, registry)
    except GraphError as exc:
        assert exc.diagnostics
        return
    graph, diags = check(document, registry, {})
    assert (graph is None) == any(d.is_error for d in diags)
    for d in diags:
        assert d.format()


@st.composite
def _raw_values(draw):
    """Deep, huge or odd values as a graph's label, a param default and a --set value."""
    value = draw(_values)
    kind = draw(st.sampled_from(["plain", "deep", "huge", "float"]))
    if kind == "deep":
        value = _wrap_deep(value, draw(st.integers(95, 2000)))
    elif kind == "huge":
        value = draw(st.integers(min_value=10**95, max_value=10**6000))
    elif kind == "float":
        value = draw(st.sampled_from([math.nan, math.inf, -math.inf, 1e308, True, "nan", "1e999", "-0"]))
    return value


def _check_raw_value(registry, value) -> None:
    doc = {"params": {"seed": {"type": "INT", "default": 1}},
           "nodes": {"a": {"type": "Const", "value": "$seed", "label": value}, "o": {"type": "Collect", "x": "a"}}}
    _check_document(registry, doc)
    for param in ("seed",):
        try:
            graph, diags = check(load_document(GOOD), registry, {param: value})
        except GraphError as exc:  # pragma: no cover - check collects, it does not raise
            raise AssertionError(exc) from exc
        assert (graph is None) == any(d.is_error for d in diags)
        for d in diags:
            assert d.format()


@FAST
@given(case=_documents())
def test_fuzz_graph_documents_only_give_diagnostics(registry, case):
    _check_document(registry, case)


@FAST
@given(value=_raw_values())
def test_fuzz_values_and_overrides_only_give_diagnostics(registry, value):
    _check_raw_value(registry, value)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workflow=_comfy_workflows())
def test_fuzz_comfy_workflows_only_give_diagnostics(comfy_file, workflow):
    _check_comfy(comfy_file, workflow)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["documents", "values", "comfy"])
@SLOW
@given(data=st.data())
def test_fuzz_10000_examples(registry, comfy_file, kind, data):
    if kind == "documents":
        _check_document(registry, data.draw(_documents()))
    elif kind == "values":
        _check_raw_value(registry, data.draw(_raw_values()))
    else:
        _check_comfy(comfy_file, data.draw(_comfy_workflows()))
