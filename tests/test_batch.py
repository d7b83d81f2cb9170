"""Batches (`--batch`, `graphrun.engine.batch.batch`): rows files, per-row folders, the manifest,
failed rows, skipping on re-run, Ctrl-C. Local runs only; Ray is in test_batch_ray.py."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from graphrun.engine.api import load
from graphrun.engine.batch import BatchError, MANIFEST, STAGING, batch, read_manifest, read_rows
from graphrun.engine.cli import main

HERE = Path(__file__).parent
PLUGIN = str(HERE / "engine" / "test_nodes.py")

# A 64x64 single-stage graph on the tiny model, 2 steps: about 20 ms a row on one CPU thread.
TINY = {
    "graph": "tiny_small",
    "params": {
        "prompt": {"type": "STRING", "default": "a fox"},
        "seed": {"type": "INT", "default": 1},
        "prefix": {"type": "STRING", "default": "img"},
    },
    "nodes": {
        "zimage": {"type": "LoadZImage", "path": "tiny"},
        "positive": {"type": "TextEncode", "clip": "zimage.clip", "text": "$prompt"},
        "negative": {"type": "ConditioningZeroOut", "conditioning": "positive"},
        "empty": {"type": "EmptyLatent", "width": 64, "height": 64},
        "sample": {"type": "Sampler", "model": "zimage.model", "positive": "positive", "negative": "negative",
                   "latent": "empty", "seed": "$seed", "steps": 2, "cfg": 1.0, "sampler": "euler",
                   "scheduler": "simple"},
        "decode": {"type": "VAEDecode", "vae": "zimage.vae", "latent": "sample"},
        "save": {"type": "SaveImage", "images": "decode", "filename_prefix": "$prefix"},
    },
}

# Pure-Python nodes from the engine test plugin: a prompt-independent Const, a Slow stage that
# honours Ctrl-C between steps, and Collect writing OUT/<name>.txt.
SLOW = {
    "params": {"n": {"type": "INT", "default": 0}, "delay": {"type": "FLOAT", "default": 0.0},
               "name": {"type": "STRING", "default": "result"}},
    "nodes": {
        "base": {"type": "Const", "value": 100},
        "x": {"type": "Const", "value": "$n"},
        "sum": {"type": "Add", "a": "base", "b": "x"},
        "s": {"type": "Slow", "x": "sum", "steps": 4, "delay": "$delay"},
        "o": {"type": "Collect", "x": "s", "name": "$name"},
    },
}


def write_graph(tmp_path: Path, doc: dict, name: str = "g.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def manifest_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]


# ------------------------------------------------------------------ reading rows


def test_read_rows_jsonl_csv_txt_and_memory(tmp_path: Path) -> None:
    jsonl = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "a", "seed": 3}, "", "{oops", [1, 2],
                                               {"id": "x-1", "prompt": None}])
    rows = read_rows(jsonl)
    assert [(r.index, r.id, r.values, r.error is None) for r in rows] == [
        (0, "00000", {"prompt": "a", "seed": 3}, True),
        (1, None, {}, False),
        (2, None, {}, False),
        (3, "x-1", {}, True),  # null leaves the param at its default
    ]
    assert "not valid JSON" in rows[1].error and "line 3" in rows[1].error
    assert "expected a JSON object" in rows[2].error

    csv_path = tmp_path / "r.csv"
    csv_path.write_text('\ufeffid,prompt,seed\nr1,"hello, world",7\n\nr2,,\nr3,x,1,extra\n')
    rows = read_rows(csv_path)
    assert [(r.id, r.values) for r in rows[:2]] == [("r1", {"prompt": "hello, world", "seed": "7"}), ("r2", {})]
    assert rows[2].id is None and "3 fields" not in rows[2].error and "4 fields" in rows[2].error

    txt = tmp_path / "p.txt"
    txt.write_text("a cat\n\n  a dog  \n")
    # A prompt row is named after its text (slug + hash), so lines can move without renaming rows.
    assert [(r.id, r.values) for r in read_rows(txt)] == [
        ("a-cat-51e467415607", {"prompt": "a cat"}), ("a-dog-7dbdf68ac0bb", {"prompt": "a dog"}),
    ]

    rows = read_rows(["one", {"id": 5, "seed": 2}, {"id": "A"}, {"id": "a"}, {"id": "../up"}, {"id": ".hidden"},
                      {"id": "line\n"}, 3])
    assert [r.id for r in rows] == ["one-7692c3ad3540", "5", "A", None, None, None, None, None]
    assert "used by row 2" in rows[3].error  # case-insensitive: one folder on macOS/Windows
    assert all("cannot name a folder" in r.error for r in rows[4:7])
    assert "mapping or a prompt string" in rows[7].error


def test_unusable_rows_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(BatchError, match="does not exist"):
        read_rows(tmp_path / "missing.jsonl")
    (tmp_path / "r.xlsx").write_text("x")
    with pytest.raises(BatchError, match=r"\.jsonl"):
        read_rows(tmp_path / "r.xlsx")
    (tmp_path / "r.csv").write_text("prompt,prompt\na,b\n")
    with pytest.raises(BatchError, match="repeated: prompt"):
        read_rows(tmp_path / "r.csv")


# ------------------------------------------------------------------ local batches (plugin nodes)


def test_batch_runs_rows_in_folders_caches_shared_work_and_records_failures(tmp_path: Path) -> None:
    graph = write_graph(tmp_path, SLOW)
    rows = write_jsonl(tmp_path / "rows.jsonl", [
        {"n": 1}, {"n": 2, "id": "two"}, {"n": "many"}, {"n": 3, "colour": "red"}, {"n": 5000}, {"n": 4},
    ])
    loaded = load(graph, plugins=[PLUGIN])
    calls = loaded.registry.get("Const").fn.__globals__["CALLS"]  # this load's plugin module
    calls.clear()
    out = tmp_path / "out"
    result = batch(loaded, rows, out, progress="none")
    assert calls["Const"] == 1 + 3  # `base` once for the whole batch, `x` once per row that ran
    assert [(r.id, r.status) for r in result.rows] == [
        ("00000", "ok"), ("two", "ok"), ("00002", "failed"), ("00003", "failed"), ("00004", "failed"), ("00005", "ok"),
    ]
    assert result.exit_code == 1 and not result.ok
    assert (out / "00000" / "result.txt").read_text() == "101"
    assert (out / "two" / "result.txt").read_text() == "102"
    assert result.rows[0].files == [out / "00000" / "result.txt"]
    assert not (out / "00002").exists() and not (out / STAGING).exists()

    lines = manifest_lines(out)
    assert [(l["row"], l["id"], l["status"]) for l in lines] == [(r.index, r.id, r.status) for r in result.rows]
    first = lines[0]
    assert first["files"] == ["00000/result.txt"] and first["error"] is None
    assert first["params"] == {"n": 1, "delay": 0.0, "name": "result"}  # every param value the row ran with
    assert isinstance(first["seconds"], float) and first["time"].endswith("+00:00")
    assert "param 'n' is INT" in lines[2]["error"]
    assert "unknown param 'colour'" in lines[3]["error"]
    assert "node 'x' input 'value'" in lines[4]["error"]  # out of the node's range: caught by validation


def test_rerun_skips_finished_rows_and_retries_failed_ones(tmp_path: Path) -> None:
    graph = write_graph(tmp_path, SLOW)
    rows = tmp_path / "rows.jsonl"
    write_jsonl(rows, [{"n": 1}, {"n": "bad"}, {"n": 3}])
    out = tmp_path / "out"
    assert batch(graph, rows, out, plugins=[PLUGIN], progress="none").exit_code == 1
    stamp = (out / "00000" / "result.txt").stat().st_mtime_ns

    write_jsonl(rows, [{"n": 1}, {"n": 2}, {"n": 3}])  # row 1 fixed
    again = batch(graph, rows, out, plugins=[PLUGIN], progress="none")
    assert [r.status for r in again.rows] == ["skipped", "ok", "skipped"] and again.exit_code == 0
    assert again.rows[0].files == [out / "00000" / "result.txt"]
    assert (out / "00000" / "result.txt").stat().st_mtime_ns == stamp
    lines = manifest_lines(out)
    assert [(l["id"], l["status"]) for l in lines] == [
        ("00000", "ok"), ("00001", "failed"), ("00002", "ok"),
        ("00000", "skipped"), ("00001", "ok"), ("00002", "skipped"),  # every row of every run has a line
    ]
    assert lines[3]["files"] == ["00000/result.txt"] and lines[3]["folder"] == "00000"
    assert {k: v["status"] for k, v in read_manifest(out).items()} == {
        "00000": "skipped", "00001": "ok", "00002": "skipped",
    }

    # A complete folder the manifest does not record (killed between rename and append) is
    # recorded as skipped; a deleted folder runs again.
    (out / MANIFEST).write_text("")
    shutil.rmtree(out / "00002")
    third = batch(graph, rows, out, plugins=[PLUGIN], progress="none")
    assert [r.status for r in third.rows] == ["skipped", "skipped", "ok"]
    assert [(l["id"], l["status"], l["files"]) for l in manifest_lines(out)] == [
        ("00000", "skipped", ["00000/result.txt"]), ("00001", "skipped", ["00001/result.txt"]),
        ("00002", "ok", ["00002/result.txt"]),
    ]


def test_manifest_survives_a_torn_line_and_a_second_batch_is_locked_out(tmp_path: Path) -> None:
    graph = write_graph(tmp_path, SLOW)
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text('{"row": 0, "id": "00000", "status": "ok", "fi')  # a crash mid-write
    result = batch(graph, [{"n": 1}], out, plugins=[PLUGIN], progress="none")
    assert result.rows[0].status == "ok"
    assert json.loads((out / MANIFEST).read_text().splitlines()[1])["status"] == "ok"
    assert read_manifest(out)["00000"]["status"] == "ok"

    fcntl = pytest.importorskip("fcntl")
    with open(out / MANIFEST, "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(BatchError, match="another batch"):
            batch(graph, [{"n": 2}], out, plugins=[PLUGIN], progress="none")


def test_row_id_feeds_a_declared_id_param_and_any_output_node_layout_works(tmp_path: Path) -> None:
    doc = json.loads(json.dumps(SLOW))
    doc["params"]["id"] = {"type": "STRING", "default": ""}
    doc["nodes"]["o"]["name"] = "deep/${id}"  # an output node writing into subfolders of the output dir
    result = batch(write_graph(tmp_path, doc), [{"id": "cat", "n": 1}, {"n": 2}], tmp_path / "out",
                   plugins=[PLUGIN], progress="none")
    assert [p.relative_to(tmp_path / "out").as_posix() for r in result.rows for p in r.files] == [
        "cat/deep/cat.txt", "00001/deep/.txt",
    ]


def test_python_ctrl_c_returns_interrupted_and_drops_the_current_row(tmp_path: Path) -> None:
    graph = write_graph(tmp_path, SLOW)
    out = tmp_path / "out"
    rows = [{"n": i, "delay": 0.05} for i in range(40)]  # 0.2 s a row

    def interrupt_after_two_rows() -> None:
        deadline = time.time() + 30
        while time.time() < deadline:
            if (out / MANIFEST).exists() and len((out / MANIFEST).read_text().splitlines()) >= 2:
                break
            time.sleep(0.01)
        time.sleep(0.1)  # land inside a row
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_after_two_rows, daemon=True).start()
    result = batch(graph, rows, out, plugins=[PLUGIN], progress="none")
    assert result.interrupted and result.exit_code == 130
    done = [r.id for r in result.rows]
    assert 2 <= len(done) < 40 and all(r.status == "ok" for r in result.rows)
    assert sorted(p.name for p in out.iterdir()) == sorted(done + [MANIFEST])  # no half row, no staging
    assert [l["id"] for l in manifest_lines(out)] == done


# ------------------------------------------------------------------ the CLI


def test_cli_txt_batch_with_set_and_progress_lines(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    prompts = tmp_path / "names.txt"
    prompts.write_text("first\n\nsecond\n")
    doc = json.loads(json.dumps(SLOW))
    doc["params"]["prompt"] = {"type": "STRING", "default": ""}
    doc["nodes"]["o"]["name"] = "$prompt"
    graph = write_graph(tmp_path, doc)
    out = tmp_path / "out"
    rc = main(["run", str(graph), "--plugin", PLUGIN, "--batch", str(prompts), "--out", str(out), "--set", "n=4",
               "--progress", "plain"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.out.strip() == str(out / MANIFEST)
    first, second = out / "first-a7937b64b8ca", out / "second-16367aacb67a"  # .txt rows: named by their text
    assert (first / "first.txt").read_text() == "104" and (second / "second.txt").read_text() == "104"
    assert f"[1/2] row {first.name} ok" in captured.err and f"[2/2] row {second.name} ok" in captured.err
    assert "batch done: 2 ok, 0 failed, 0 skipped" in captured.err
    assert "(Slow)" not in captured.err  # per-node lines stay quiet during a batch

    rc = main(["run", str(graph), "--plugin", PLUGIN, "--batch", str(prompts), "--out", str(out), "--set", "n=4",
               "--progress", "json"])
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert rc == 0 and events == [{"event": "batch", "ok": 0, "failed": 0, "skipped": 2, "interrupted": False,
                                   "manifest": str(out / MANIFEST)}]


def test_cli_csv_failed_row_exits_1_and_bad_rows_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    graph = write_graph(tmp_path, SLOW)
    rows = tmp_path / "rows.csv"
    rows.write_text("id,n\nok,1\nbad,x\n")
    out = tmp_path / "out"
    assert main(["run", str(graph), "--plugin", PLUGIN, "--batch", str(rows), "--out", str(out), "--progress", "none"]) == 1
    assert [(l["id"], l["status"]) for l in manifest_lines(out)] == [("ok", "ok"), ("bad", "failed")]
    capsys.readouterr()
    assert main(["run", str(graph), "--plugin", PLUGIN, "--batch", str(tmp_path / "nope.csv"), "--out", str(out)]) == 2
    assert "rows file" in capsys.readouterr().err


def test_cli_ray_without_ray_says_how_to_install(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    graph = write_graph(tmp_path, SLOW)
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"n": 1}])
    rc = main(["run", str(graph), "--plugin", PLUGIN, "--batch", str(rows), "--out", str(tmp_path / "out"), "--ray"])
    assert rc == 2
    assert "pip install graphrun[ray]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ tiny model, killed and resumed


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "graphrun.engine.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigint_midway_then_rerun_completes_the_rest_once(tmp_path: Path) -> None:
    tiny = json.loads(json.dumps(TINY))
    tiny["nodes"]["sample"]["steps"] = 6  # ~50 ms a row: a Ctrl-C lands inside a row, not after the last
    graph = write_graph(tmp_path, tiny)
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": f"prompt {i}", "seed": i} for i in range(60)])
    out = tmp_path / "out"
    args = ("run", str(graph), "--batch", str(rows), "--out", str(out), "--progress", "plain")
    proc = _cli(*args)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / MANIFEST).exists() and len((out / MANIFEST).read_text().splitlines()) >= 3:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    first = manifest_lines(out)
    assert 3 <= len(first) < 60 and all(l["status"] == "ok" for l in first)
    assert sorted(p.name for p in out.iterdir()) == sorted([l["id"] for l in first] + [MANIFEST])
    stamps = {f: (out / f).stat().st_mtime_ns for l in first for f in l["files"]}
    assert len(stamps) == len(first)

    proc = _cli(*args)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = manifest_lines(out)
    assert Counter(l["id"] for l in lines if l["status"] == "ok") == Counter(f"{i:05d}" for i in range(60))
    # Finished rows were skipped (and recorded so), not redone.
    assert [l["status"] for l in lines[len(first):]] == ["skipped"] * len(first) + ["ok"] * (60 - len(first))
    assert {f: (out / f).stat().st_mtime_ns for f in stamps} == stamps
    assert all(l["files"] == [f"{l['id']}/img_00001_.png"] for l in lines)
    assert not (out / STAGING).exists()
