"""The `graphrun` command: exit codes, verbs, and validation without torch."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from graphrun.engine.cli import main

HERE = Path(__file__).parent
PLUGIN = str(HERE / "engine" / "test_nodes.py")
GRAPHS = HERE / "data" / "graphs"


def write(tmp_path: Path, doc: dict, name: str = "g.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return str(path)


GOOD = {
    "params": {"n": 2},
    "nodes": {"x": {"type": "Const", "value": "$n"}, "s": {"type": "Slow", "x": "x", "steps": 2}, "o": {"type": "Collect", "x": "s"}},
}


def test_run_exit_0_writes_output_and_prints_paths(tmp_path, capsys):
    rc = main(["run", write(tmp_path, GOOD), "--plugin", PLUGIN, "--out", str(tmp_path / "out"), "--set", "n=5", "--progress", "plain"])
    captured = capsys.readouterr()
    assert rc == 0
    assert (tmp_path / "out" / "result.txt").read_text() == "5"
    assert captured.out.strip() == str(tmp_path / "out" / "result.txt")
    assert "[2/3] s (Slow) step 2/2" in captured.err
    # running is the default verb
    assert main([write(tmp_path, GOOD), "--plugin", PLUGIN, "--out", str(tmp_path / "o2"), "--progress", "none"]) == 0


def test_json_progress_lines(tmp_path, capsys):
    assert main(["run", write(tmp_path, GOOD), "--plugin", PLUGIN, "--out", str(tmp_path), "--progress", "json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [e["kind"] for e in events][:3] == ["start", "end", "start"]
    timeless = [{k: v for k, v in e.items() if k not in ("t", "elapsed")} for e in events]
    assert {"event": "step", "kind": "step", "node": "s", "type": "Slow", "index": 2, "total": 3, "seconds": 0.0,
            "info": {"step": 1, "total": 2}} in timeless
    assert events[-1]["event"] == "done" and events[-1]["files"] == [str(tmp_path / "result.txt")]


def test_exit_1_on_node_failure_names_node(tmp_path, capsys):
    doc = {"nodes": {"x": {"type": "Const"}, "f": {"type": "Fail", "x": "x"}, "o": {"type": "Collect", "x": "f"}}}
    assert main(["run", write(tmp_path, doc), "--plugin", PLUGIN, "--out", str(tmp_path), "--progress", "none"]) == 1
    err = capsys.readouterr().err
    assert "error: node 'f' (Fail) failed: this node always fails" in err
    assert "Traceback" not in err
    assert main(["run", write(tmp_path, doc), "--plugin", PLUGIN, "--out", str(tmp_path), "--progress", "none", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_exit_2_on_invalid_graph_bad_set_and_usage(tmp_path, capsys):
    assert main(["validate", str(GRAPHS / "five_mistakes.yaml"), "--plugin", PLUGIN]) == 2
    assert "invalid (5 errors, 2 warnings)" in capsys.readouterr().err
    assert main(["run", write(tmp_path, GOOD), "--plugin", PLUGIN, "--set", "n=two"]) == 2
    assert "param 'n' is INT: expected an integer, got 'two'" in capsys.readouterr().err
    assert main(["run", write(tmp_path, GOOD), "--plugin", PLUGIN, "--set", "m=2"]) == 2
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["run", write(tmp_path, GOOD), "--plugin", str(tmp_path / "nope.py")]) == 2
    assert main(["frobnicate-not-a-file", "--nope"]) == 2
    assert main(["validate", write(tmp_path, GOOD), "--plugin", PLUGIN]) == 0


def test_validate_json_output(capsys):
    assert main(["validate", str(GRAPHS / "five_mistakes.yaml"), "--plugin", PLUGIN, "--json"]) == 2
    diags = json.loads(capsys.readouterr().out)
    assert sorted(d["code"] for d in diags if d["severity"] == "error") == ["GR003", "GR004", "GR008", "GR009", "GR010"]
    assert all("line" in d and "column" in d for d in diags)


def test_nodes_listing_and_detail(capsys):
    assert main(["nodes", "--plugin", PLUGIN]) == 0
    out = capsys.readouterr().out
    assert "test:" in out and "Scale" in out and "x * factor." in out
    assert main(["nodes", "Const", "--plugin", PLUGIN]) == 0
    out = capsys.readouterr().out
    assert "value: INT, >= -1000, <= 1000 = 0" in out and "the number" in out and "number: NUMBER" in out
    assert main(["nodes", "Cnst", "--plugin", PLUGIN]) == 2
    assert "did you mean 'Const'" in capsys.readouterr().err


def test_schema_lists_every_node_type(capsys):
    assert main(["schema", "--plugin", PLUGIN]) == 0
    schema = json.loads(capsys.readouterr().out)
    titles = {s["title"] for s in schema["properties"]["nodes"]["additionalProperties"]["oneOf"]}
    assert {"Const", "Add", "Collect"} <= titles


def test_show_mermaid_and_dot(tmp_path, capsys):
    path = write(tmp_path, GOOD)
    assert main(["show", path, "--plugin", PLUGIN]) == 0
    assert "n_x -- x --> n_s" in capsys.readouterr().out
    assert main(["show", path, "--format", "dot", "--plugin", PLUGIN]) == 0
    assert '"s" -> "o" [label="x"];' in capsys.readouterr().out


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "graphrun.engine.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_validate_does_not_import_torch(tmp_path):
    code = (
        "import sys\nfrom graphrun.engine.cli import main\n"
        f"rc = main(['validate', {str(GRAPHS / 'five_mistakes.yaml')!r}])\n"
        "print('torch' in sys.modules, rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False 2", out.stderr


def test_ctrl_c_exits_130_and_leaves_no_output(tmp_path):
    marker = tmp_path / "started"
    doc = {"nodes": {"x": {"type": "Const"},
                     "s": {"type": "Slow", "x": "x", "steps": 200, "delay": 0.05, "marker": str(marker)},
                     "o": {"type": "Collect", "x": "s"}}}
    proc = _cli("run", write(tmp_path, doc), "--plugin", PLUGIN, "--out", str(tmp_path / "out"), "--progress", "plain")
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not (tmp_path / "out").exists()


def test_unusable_device_is_a_usage_error(tmp_path, capsys):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("the check under test needs a machine without CUDA")
    assert main(["run", write(tmp_path, GOOD), "--plugin", PLUGIN, "--device", "cuda"]) == 2
    assert "CUDA is not available on this machine; use --device cpu" in capsys.readouterr().err
    assert main(["run", write(tmp_path, GOOD), "--plugin", PLUGIN, "--device", "warp9"]) == 2
    assert "is not a device" in capsys.readouterr().err
