"""Validation: every diagnostic with its exact text, --set coercion, plugins, and a fuzz test."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphrun
from graphrun.engine.diagnostics import GraphError
from graphrun.engine.graph import load_document, parse_overrides
from graphrun.engine.node import Registry, RegistryError, make_registry
from graphrun.engine.validate import check

HERE = Path(__file__).parent
PLUGIN = HERE / "engine" / "test_nodes.py"
GRAPHS = HERE / "data" / "graphs"


@pytest.fixture(scope="module")
def registry():
    return make_registry([PLUGIN], builtins=False)


def lines(doc, registry, **overrides) -> list[str]:
    return [d.format() for d in check(load_document(doc), registry, overrides)[1]]


def test_five_mistakes_are_all_reported_with_locations(registry):
    path = str(GRAPHS / "five_mistakes.yaml")
    assert lines(path, registry) == [
        f"{path}:3:9: warning[GR011] 'seed': param 'seed' is declared but never used",
        f"{path}:4:16: warning[GR011] 'unused_knob': param 'unused_knob' is declared but never used",
        f"{path}:6:31: error[GR009] node 'a' input 'value': value 5000 is invalid: input should be less than "
        "or equal to 1000 (hint: expected INT, >= -1000, <= 1000)",
        f"{path}:7:17: error[GR003] node 'b': unknown node type 'Cnst' (hint: did you mean 'Const' or 'Count'?)",
        f"{path}:9:42: error[GR004] node 'fmt' input 'templat': Format has no input 'templat' "
        "(hint: did you mean 'template'?)",
        f"{path}:10:27: error[GR008] node 'scale' input 'x': type mismatch: 'fmt.text' is TEXT but Scale.x "
        "expects NUMBER (hint: connect a node with a NUMBER output)",
        f"{path}:10:40: error[GR010] node 'scale' input 'factor': undefined param '$sed' (hint: did you mean 'seed'?)",
    ]


def test_cycle_lists_its_nodes(registry):
    path = str(GRAPHS / "cycle.yaml")
    assert lines(path, registry) == [
        f"{path}:2:6: error[GR012] node 'a': cycle: a -> c -> a (hint: a graph must be acyclic; remove one of these links)"
    ]


def test_yaml_syntax_error_is_located():
    with pytest.raises(GraphError) as err:
        load_document("nodes:\n  a: {type: Const\n  b: 1\n")
    assert [d.format() for d in err.value.diagnostics] == [
        "<text>:3:4: error[GR001] YAML syntax error: while parsing a flow mapping expected ',' or '}', but got ':' "
        "(hint: check indentation, colons and quotes near this position; a string containing ': ', '{' or '#' needs quotes)"
    ]


def test_duplicate_key_is_an_error():
    with pytest.raises(GraphError, match=r"GR002.*key 'a' appears twice"):
        load_document("nodes:\n  a: {type: Const}\n  a: {type: Const}\n")


@pytest.mark.parametrize(
    "doc, expected",
    [
        (
            {"nodes": {"x": {"type": "Const"}, "s": {"type": "Add", "a": "x"}, "o": {"type": "Collect", "x": "s"}}},
            "error[GR005] node 's' input 'b': missing required input 'b' (NUMBER) "
            "(hint: add b: <node id> (a node with a NUMBER output))",
        ),
        (
            {"nodes": {"x": {"type": "Const"}, "o": {"type": "Collect", "x": "x.nope"}}},
            "error[GR007] node 'o' input 'x': node 'x' (Const) has no output 'nope' (hint: its outputs: number)",
        ),
        (
            {"nodes": {"x": {"type": "Const"}, "f": {"type": "Format", "x": "x", "mode": "loud"}, "o": {"type": "Collect", "text": "f"}}},
            "error[GR009] node 'f' input 'mode': value 'loud' is invalid: input should be 'plain' or 'upper' "
            "(hint: expected COMBO, one of 'plain', 'upper')",
        ),
        (
            {"nodes": {"x": {"type": "Const", "value": "ten"}, "o": {"type": "Collect", "x": "x"}}},
            "error[GR009] node 'x' input 'value': value 'ten' is invalid: input should be a valid integer, unable to "
            "parse string as an integer (hint: expected INT, >= -1000, <= 1000)",
        ),
        (
            {"nodes": {"x": {"type": "Const"}}},
            "error[GR013] the graph has no output node, so nothing would run (hint: add an output node such as Collect)",
        ),
        (
            {"nodes": {"x": {"type": "Const"}, "o": {"type": "Collect", "x": 5}}},
            "error[GR009] node 'o' input 'x': NUMBER input takes a link, got 5 (hint: write the source node id, or node.output)",
        ),
        (
            {"nodes": {"x": {"type": "Const"}, "o": {"type": "Collect", "x": "x"}}, "param": {}},
            "error[GR002] unknown top-level key 'param' (hint: did you mean 'params'?)",
        ),
        (
            {"params": {"p": {"type": "NUMBER"}}, "nodes": {"x": {"type": "Const"}, "o": {"type": "Collect", "x": "x"}}},
            "error[GR015] 'p': param 'p' has type 'NUMBER' (hint: use one of INT, FLOAT, STRING, BOOLEAN)",
        ),
        (
            {"nodes": {"x": {"type": "Qqqq"}, "o": {"type": "Collect", "x": "x"}}},
            "error[GR003] node 'x': unknown node type 'Qqqq' (hint: `graphrun nodes` lists the node types)",
        ),
    ],
)
def test_each_diagnostic_text(registry, doc, expected):
    assert expected in lines(doc, registry)


def test_unused_node_warning(registry):
    doc = {"nodes": {"x": {"type": "Const"}, "y": {"type": "Const"}, "o": {"type": "Collect", "x": "x"}}}
    assert lines(doc, registry) == ["warning[GR014] node 'y': does not feed any output node and will not run"]


def test_param_interpolation_and_escape(registry, tmp_path):
    doc = {
        "params": {"who": "fox", "n": 3},
        "nodes": {
            "x": {"type": "Const", "value": "$n"},
            "f": {"type": "Format", "x": "x", "template": "a ${who} costs $$ {} ($who)"},
            "o": {"type": "Collect", "text": "f"},
        },
    }
    graph = graphrun.load(doc, registry=registry).bind(who="cat")
    assert graph.nodes["f"].literals["template"] == "a cat costs $ {} (cat)"
    assert graph.nodes["x"].literals["value"] == 3


def test_set_coercion_and_errors(registry):
    doc = {
        "params": {"n": 1, "f": 0.5, "on": False, "s": "x"},
        "nodes": {"x": {"type": "Const", "value": "$n", "label": "${s}${on}"}, "y": {"type": "Scale", "x": "x", "factor": "$f"},
                  "o": {"type": "Collect", "x": "y"}},
    }
    graph = graphrun.load(doc, registry=registry).bind(**parse_overrides(["n=7", "f=2", "on=yes", "s=42"]))
    assert graph.params == {"n": 7, "f": 2.0, "on": True, "s": "42"}
    assert graph.nodes["x"].literals == {"value": 7, "label": "42true"}
    msgs = lines(doc, registry, **parse_overrides(["n=seven", "nn=1", "f=11"]))
    assert "error[GR016] 'n': param 'n' is INT: expected an integer, got 'seven' (hint: write --set n=<int>)" in msgs
    assert "error[GR016] 'nn': unknown param 'nn' (hint: did you mean 'n'?)" in msgs
    assert (
        "error[GR009] node 'y' input 'factor': value 11.0 (from param 'f') is invalid: input should be less than or "
        "equal to 10 (hint: expected FLOAT, >= 0.0, <= 10.0)" in msgs
    )
    with pytest.raises(GraphError, match="is not name=value"):
        parse_overrides(["seed"])


def test_plugin_name_clash_names_both_origins(tmp_path):
    clash = tmp_path / "clash.py"
    clash.write_text(
        "from graphrun import node, Socket\n"
        "class N(Socket):\n    type_name = 'NUMBER'\n"
        "@node('Const', category='test')\ndef const() -> N:\n    return 1\n"
    )
    with pytest.raises(RegistryError) as err:
        make_registry([PLUGIN, clash], builtins=False)
    message = str(err.value)
    assert "node type 'Const' is defined twice" in message
    assert "test_nodes.py:const" in message and "clash.py:const" in message


def test_plugin_import_failure_is_reported(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('nope')\n")
    with pytest.raises(RegistryError, match=r"plugin file .*broken.py failed to import: RuntimeError: nope"):
        make_registry([broken], builtins=False)
    with pytest.raises(RegistryError, match="does not exist"):
        make_registry([tmp_path / "missing.py"], builtins=False)


def test_entry_point_plugins_are_loaded(monkeypatch, tmp_path):
    import importlib.metadata as md
    import sys
    import types

    module = types.ModuleType("fake_graphrun_plugin")
    exec("from graphrun import node\n@node('FromEntryPoint', category='test')\ndef f() -> int:\n    return 1\n", module.__dict__)
    sys.modules["fake_graphrun_plugin"] = module
    ep = md.EntryPoint(name="fake", value="fake_graphrun_plugin", group="graphrun.nodes")
    monkeypatch.setattr(md, "entry_points", lambda group=None: [ep] if group == "graphrun.nodes" else [])
    registry = Registry()
    registry.load_entry_points()
    assert registry.names() == ["FromEntryPoint"]


# ------------------------------------------------------------------ fuzz

_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
_names = st.sampled_from(["Const", "Add", "Scale", "Format", "Collect", "Split", "Nope", "", "Count"])
_inputs = st.sampled_from(["x", "a", "b", "value", "factor", "template", "mode", "text", "zzz", "type"])
_refs = st.sampled_from(["n0", "n1", "n2", "n1.low", "n0.number", "$p", "${p} x", "{from: n0}", "n9", "n0.", ".x"])
_node = st.fixed_dictionaries({"type": _names}, optional={}).flatmap(
    lambda base: st.dictionaries(_inputs, _refs | _values, max_size=4).map(lambda d: {**d, **base})
)
_doc = st.fixed_dictionaries(
    {"nodes": st.dictionaries(st.sampled_from(["n0", "n1", "n2", "bad id", "3"]), _node | _values, max_size=4)},
    optional={"params": st.dictionaries(st.sampled_from(["p", "q"]), _values, max_size=2), "graph": _values},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_doc | _values)
def test_fuzz_documents_only_give_diagnostics(registry, doc):
    try:
        document = load_document(doc) if isinstance(doc, dict) else load_document({"nodes": doc})
    except GraphError:
        return
    graph, diags = check(document, registry, {})
    assert (graph is None) == any(d.is_error for d in diags)
    for d in diags:
        assert d.code and d.message


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_fuzz_yaml_text_only_gives_diagnostics(registry, text):
    try:
        document = load_document("# fuzz\n" + text)
    except GraphError as exc:
        assert exc.diagnostics
        return
    check(document, registry, {})
