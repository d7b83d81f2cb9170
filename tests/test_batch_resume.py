"""Batch resume and batch safety: a re-run skips a row only when the same work made its folder
(row keys), changed rows are an error or redone into new folders, .txt rows keep their ids when
lines move, per-row seeds, links never followed out of --out, bad rows files and full disks."""
from __future__ import annotations

import errno
import json
import os
import shutil
import types
from pathlib import Path

import pytest

from graphrun.engine.batch import (
    MANIFEST, ROW_RECORD, STAGING, BatchError, ChangedRows, batch, read_manifest, row_seed,
)
from graphrun.engine.batch import manifest as manifest_module
from graphrun.engine.batch import staging as staging_module
from graphrun.engine.cli import main

from test_batch import PLUGIN, SLOW, TINY, manifest_lines, write_graph, write_jsonl

# SLOW with a `prompt` param that names the output file and a `weights` file the graph reads
# (the Const's label): pure Python, a few ms a row.
PROMPTED = json.loads(json.dumps(SLOW))
PROMPTED["params"].update({"prompt": {"type": "STRING", "default": "p"}, "seed": {"type": "INT", "default": 1},
                           "weights": {"type": "STRING", "default": ""}})
PROMPTED["nodes"]["base"]["label"] = "$weights"
PROMPTED["nodes"]["x"]["label"] = "seed ${seed}"
PROMPTED["nodes"]["o"]["name"] = "${prompt}-${seed}"


def run_cli(*args: str) -> int:
    return main(["run", *args, "--plugin", PLUGIN, "--progress", "none"])


def tree(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder`` with its mtime and bytes (to prove nothing was touched)."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ resume: row keys


def test_inserting_a_txt_line_renders_the_new_prompt_and_skips_the_others(tmp_path: Path) -> None:
    graph = write_graph(tmp_path, TINY)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\na blue cat\n")
    out = tmp_path / "out"
    first = batch(graph, prompts, out, progress="none")
    assert [r.status for r in first.rows] == ["ok", "ok"]
    before = tree(out)

    prompts.write_text("a green owl\na red fox\na blue cat\n")  # a line inserted at the top
    again = batch(graph, prompts, out, progress="none")
    assert [(r.params["prompt"], r.status) for r in again.rows] == [
        ("a green owl", "ok"), ("a red fox", "skipped"), ("a blue cat", "skipped"),
    ]
    assert again.rows[1].id == first.rows[0].id and again.rows[2].id == first.rows[1].id
    assert again.rows[0].id.startswith("a-green-owl-")
    assert {k: v for k, v in tree(out).items() if k in before and k != MANIFEST} == {
        k: v for k, v in before.items() if k != MANIFEST
    }  # the old rows' files are untouched
    assert [l["status"] for l in manifest_lines(out)] == ["ok", "ok", "ok", "skipped", "skipped"]


def test_duplicate_txt_lines_get_their_ordinal(tmp_path: Path) -> None:
    graph = write_graph(tmp_path, PROMPTED)
    prompts = tmp_path / "p.txt"
    prompts.write_text("same\nother\nsame\n")
    result = batch(graph, prompts, tmp_path / "out", plugins=[PLUGIN], progress="none")
    ids = [r.id for r in result.rows]
    assert ids[2] == ids[0] + "-2" and len(set(ids)) == 3 and result.exit_code == 0


def test_unchanged_rerun_skips_every_row_and_records_it(tmp_path: Path) -> None:
    graph = write_graph(tmp_path, PROMPTED)
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"id": "a", "n": 1}, {"id": "b", "n": 2}])
    out = tmp_path / "out"
    assert run_cli(str(graph), "--batch", str(rows), "--out", str(out)) == 0
    record = json.loads((out / "a" / ROW_RECORD).read_text())
    assert record["params"]["n"] == 1 and record["key"] == manifest_lines(out)[0]["key"]
    before = tree(out)
    assert run_cli(str(graph), "--batch", str(rows), "--out", str(out)) == 0
    lines = manifest_lines(out)
    assert [(l["id"], l["status"]) for l in lines[2:]] == [("a", "skipped"), ("b", "skipped")]
    assert lines[2]["files"] == ["a/p-1.txt"] and lines[2]["key"] == lines[0]["key"]
    assert {k: v for k, v in tree(out).items() if k != MANIFEST} == {k: v for k, v in before.items() if k != MANIFEST}


def test_edited_row_or_set_value_is_an_error_listing_the_changed_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    graph = write_graph(tmp_path, PROMPTED)
    rows = tmp_path / "rows.jsonl"
    write_jsonl(rows, [{"id": "a", "n": 1}, {"id": "b", "n": 2}, {"id": "c", "n": 3}])
    out = tmp_path / "out"
    assert run_cli(str(graph), "--batch", str(rows), "--out", str(out)) == 0
    before = tree(out)
    capsys.readouterr()

    write_jsonl(rows, [{"id": "a", "n": 1}, {"id": "b", "n": 5}, {"id": "c", "n": 3}, {"id": "d", "n": 4}])
    assert run_cli(str(graph), "--batch", str(rows), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "1 row of" in err and "already has a folder made from different inputs" in err
    assert f"{out / 'b'}: n 2 -> 5" in err and "--redo changed" in err
    assert f"{out / 'a'}:" not in err and "Traceback" not in err
    assert tree(out) == before and not (out / "d").exists()  # nothing rendered, not even the new row

    write_jsonl(rows, [{"id": "a", "n": 1}, {"id": "b", "n": 2}, {"id": "c", "n": 3}])
    assert run_cli(str(graph), "--batch", str(rows), "--out", str(out), "--set", "delay=0.001") == 2
    err = capsys.readouterr().err
    assert "3 rows of" in err and "already have folders" in err
    assert all(f"{out / i}: delay 0.0 -> 0.001" in err for i in "abc")
    assert tree(out) == before

    with pytest.raises(ChangedRows, match="redo=") as caught:
        batch(graph, rows, out, params={"delay": 0.001}, plugins=[PLUGIN], progress="none")
    assert caught.value.ids == ["a", "b", "c"]


def test_what_counts_as_changed_graph_files_comfy_and_old_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"v1")
    doc = json.loads(json.dumps(PROMPTED))
    doc["params"]["weights"]["default"] = str(weights)
    graph = write_graph(tmp_path, doc)
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"id": "a", "n": 1}])
    out = tmp_path / "out"
    assert run_cli(str(graph), "--batch", str(rows), "--out", str(out)) == 0
    assert "weights.bin 2 bytes" in json.loads((out / "a" / ROW_RECORD).read_text())["files"]["base.label"]
    capsys.readouterr()

    weights.write_bytes(b"v2 bigger")  # a model file replaced: same name, same graph, same params
    assert run_cli(str(graph), "--batch", str(rows), "--out", str(out)) == 2
    assert "base.label: weights.bin changed" in capsys.readouterr().err
    weights.write_bytes(b"v1")
    os.utime(weights, ns=(0, json_mtime(out / "a")))  # restored exactly: the row matches again
    assert run_cli(str(graph), "--batch", str(rows), "--out", str(out)) == 0

    assert run_cli(str(graph), "--batch", str(rows), "--out", str(out), "--comfy", "2025.10") == 2
    assert "comfy 0.33 -> 2025.10" in capsys.readouterr().err

    doc["nodes"]["base"]["value"] = 200  # the graph itself edited
    write_graph(tmp_path, doc)
    assert run_cli(str(graph), "--batch", str(rows), "--out", str(out)) == 2
    assert "a: the graph changed" in capsys.readouterr().err
    doc["nodes"]["base"]["value"] = 100
    doc["description"] = "only the description"  # nothing that reaches an output: still the same work
    write_graph(tmp_path, doc)
    assert run_cli(str(graph), "--batch", str(rows), "--out", str(out)) == 0

    (out / "a" / ROW_RECORD).unlink()  # a folder from an older graphrun: no key
    assert run_cli(str(graph), "--batch", str(rows), "--out", str(out)) == 2
    assert f"no {ROW_RECORD}" in capsys.readouterr().err


def json_mtime(folder: Path) -> int:
    """The weights file's mtime the row record holds."""
    text = json.loads((folder / ROW_RECORD).read_text())["files"]["base.label"]
    return int(text.rsplit(" ", 1)[1])


def test_redo_changed_renders_new_folders_and_keeps_the_old_ones(tmp_path: Path) -> None:
    graph = write_graph(tmp_path, PROMPTED)
    rows = tmp_path / "rows.jsonl"
    write_jsonl(rows, [{"id": "a", "n": 1}, {"id": "b", "n": 2}])
    out = tmp_path / "out"
    assert batch(graph, rows, out, plugins=[PLUGIN], progress="none").exit_code == 0
    old = tree(out / "b")

    write_jsonl(rows, [{"id": "a", "n": 1}, {"id": "b", "n": 7}])
    assert run_cli(str(graph), "--batch", str(rows), "--out", str(out), "--redo", "changed") == 0
    assert tree(out / "b") == old and (out / "b" / "p-1.txt").read_text() == "102"
    assert (out / "b~2" / "p-1.txt").read_text() == "107"
    last = manifest_lines(out)[-2:]
    assert [(l["id"], l["status"], l["folder"]) for l in last] == [("a", "skipped", "a"), ("b", "ok", "b~2")]
    assert last[1]["replaces"] == "b" and last[1]["files"] == ["b~2/p-1.txt"]
    assert read_manifest(out)["b"]["folder"] == "b~2"

    again = batch(graph, rows, out, plugins=[PLUGIN], progress="none")  # the redone row is now up to date
    assert [(r.status, r.folder) for r in again.rows] == [("skipped", "a"), ("skipped", "b~2")]
    write_jsonl(rows, [{"id": "a", "n": 1}, {"id": "b", "n": 2}])  # back to the first values: the first folder
    assert [r.folder for r in batch(graph, rows, out, plugins=[PLUGIN], progress="none").rows] == ["a", "b"]
    write_jsonl(rows, [{"id": "a", "n": 1}, {"id": "b", "n": 9}])
    third = batch(graph, rows, out, plugins=[PLUGIN], progress="none", redo="changed")
    assert third.rows[1].folder == "b~3" and third.rows[1].replaces == "b~2"
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "b~2", "b~3", MANIFEST]


def test_seed_per_row_derives_each_rows_seed_from_its_id(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    graph = write_graph(tmp_path, PROMPTED)
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\n")
    out = tmp_path / "out"
    plain = batch(graph, prompts, tmp_path / "plain", plugins=[PLUGIN], progress="none")
    assert [r.params["seed"] for r in plain.rows] == [1, 1]  # without it: the graph's default, every row

    assert run_cli(str(graph), "--batch", str(prompts), "--out", str(out), "--seed-per-row") == 0
    lines = manifest_lines(out)
    seeds = [l["params"]["seed"] for l in lines]
    assert seeds == [row_seed(l["id"]) for l in lines] and seeds[0] != seeds[1]
    assert all(l["seed_source"] == "row id" for l in lines)
    assert lines[0]["files"] == [f"{lines[0]['id']}/one-{seeds[0]}.txt"]
    assert run_cli(str(graph), "--batch", str(prompts), "--out", str(out), "--seed-per-row") == 0  # the same seeds
    assert [l["status"] for l in manifest_lines(out)[2:]] == ["skipped", "skipped"]

    rows = write_jsonl(tmp_path / "rows.jsonl", [{"id": "r1", "seed": 5}, {"id": "r2"}])
    result = batch(graph, rows, tmp_path / "own", plugins=[PLUGIN], progress="none", seed_from_row_id=True)
    assert [(r.params["seed"], r.seed_source) for r in result.rows] == [(5, "row"), (row_seed("r2"), "row id")]
    table = tmp_path / "rows.csv"
    table.write_text("id,seed\nc1,7\nc2,\n")  # a CSV seed column (an empty cell: not given)
    result = batch(graph, table, tmp_path / "csv", plugins=[PLUGIN], progress="none", seed_from_row_id=True)
    assert [r.params["seed"] for r in result.rows] == [7, row_seed("c2")]

    capsys.readouterr()
    assert run_cli(str(graph), "--batch", str(prompts), "--out", str(out), "--seed-per-row", "--set", "seed=3") == 2
    assert "drop --set seed" in capsys.readouterr().err
    no_seed = write_graph(tmp_path, SLOW, "noseed.yaml")
    assert run_cli(str(no_seed), "--batch", str(rows), "--out", str(tmp_path / "x"), "--seed-per-row") == 2
    assert "declares none" in capsys.readouterr().err


# ------------------------------------------------------------------ safety


def test_links_in_the_output_folder_are_never_followed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    graph = write_graph(tmp_path, PROMPTED)
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"id": "a", "n": 1}, {"id": "b", "n": 2}])
    victim = tmp_path / "victim"
    (victim / "a").mkdir(parents=True)
    (victim / "a" / "precious.txt").write_text("keep")
    (victim / "precious.txt").write_text("keep")
    before = tree(victim)

    out = tmp_path / "out1"  # the staging folder itself is a link
    out.mkdir()
    (out / STAGING).symlink_to(victim, target_is_directory=True)
    assert run_cli(str(graph), "--batch", str(rows), "--out", str(out)) == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert tree(victim) == before and not (out / "a").exists()

    out = tmp_path / "out2"  # a row's staging folder is a link: removed as a link, the row runs
    (out / STAGING).mkdir(parents=True)
    (out / STAGING / "a").symlink_to(victim / "a", target_is_directory=True)
    assert run_cli(str(graph), "--batch", str(rows), "--out", str(out)) == 0
    assert tree(victim) == before and not (out / "a").is_symlink() and (out / "a" / "p-1.txt").exists()

    out = tmp_path / "out3"  # a row folder is a link: changed (never read or written through)
    out.mkdir()
    (out / "a").symlink_to(victim / "a", target_is_directory=True)
    (out / MANIFEST).write_text("")
    capsys.readouterr()
    assert run_cli(str(graph), "--batch", str(rows), "--out", str(out)) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert run_cli(str(graph), "--batch", str(rows), "--out", str(out), "--redo", "changed") == 0
    assert tree(victim) == before and (out / "a").is_symlink() and (out / "a~2" / "p-1.txt").exists()

    out = tmp_path / "out4"  # the manifest is a link
    out.mkdir()
    (out / MANIFEST).symlink_to(victim / "precious.txt")
    assert run_cli(str(graph), "--batch", str(rows), "--out", str(out)) == 2
    assert "not a regular file" in capsys.readouterr().err and tree(victim) == before


def test_out_that_is_a_file_or_cannot_be_made_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    graph = write_graph(tmp_path, PROMPTED)
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"n": 1}])
    target = tmp_path / "file.txt"
    target.write_text("mine")
    assert run_cli(str(graph), "--batch", str(rows), "--out", str(target)) == 2
    assert run_cli(str(graph), "--batch", str(rows), "--out", str(target / "sub")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err and target.read_text() == "mine"
    with pytest.raises(BatchError, match="is a file, not a folder"):
        batch(graph, rows, target, plugins=[PLUGIN], progress="none")
    with pytest.raises(BatchError, match="cannot create the output folder"):
        batch(graph, rows, target / "sub", plugins=[PLUGIN], progress="none")


def test_bad_rows_files_are_clean_errors(tmp_path: Path) -> None:
    graph = write_graph(tmp_path, PROMPTED)
    cases = {
        "empty.txt": (b"", "has no rows"),
        "blank.jsonl": (b"\n  \n", "has no rows"),
        "header.csv": (b"prompt,n\n", "has no rows"),
        "binary.txt": (bytes(range(128, 256)) * 4, "not UTF-8 text"),
        "bad.csv": (b"prompt,\n", "unique, non-empty"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BatchError, match=message):
            batch(graph, tmp_path / name, tmp_path / "out", plugins=[PLUGIN], progress="none")
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(BatchError, match="not a regular file"):
        batch(graph, tmp_path / "dir.txt", tmp_path / "out", plugins=[PLUGIN], progress="none")


def test_deep_json_huge_numbers_and_csv_oddities_fail_only_their_row(tmp_path: Path) -> None:
    graph = write_graph(tmp_path, PROMPTED)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join([
        "[" * 100_000,
        json.dumps({"id": "deep", "n": 1, "x": json.loads("[" * 35 + "1" + "]" * 35)}),  # deep, yet parses
        '{"id": "big", "n": ' + "1" * 5000 + "}",
        json.dumps({"id": "fine", "n": 2}),
        '{"id": "nul", "prompt": "a\x00b"}',
        json.dumps({"id": "long", "prompt": "x" * 1_000_001}),
    ]) + "\n")
    result = batch(graph, rows, tmp_path / "out", plugins=[PLUGIN], progress="none")
    errors = [r.error for r in result.rows]
    assert [r.status for r in result.rows] == ["failed", "failed", "failed", "ok", "failed", "failed"]
    assert f"{rows} line 1: the JSON nests too deeply" in errors[0]
    assert f"{rows} line 2: the JSON nests too deeply" in errors[1]
    assert f"{rows} line 3: a number has more than" in errors[2]
    assert f"{rows} line 5 contains a NUL byte" in errors[4] and f"{rows} line 6 is 1,000,0" in errors[5]
    assert result.exit_code == 1

    table = tmp_path / "rows.csv"
    huge = "y" * 300_000  # over csv's own 128 KiB field limit
    table.write_text(f'id,weights,n\nhuge,"{huge}",1\nnul,a\x00b,1\nfine,ok,2\nopen,"never closed,3\nlast,x,4\n')
    result = batch(graph, table, tmp_path / "out_csv", plugins=[PLUGIN], progress="none")
    assert [(r.id, r.status) for r in result.rows] == [
        ("huge", "ok"), (None, "failed"), ("fine", "ok"), (None, "failed"),
    ]
    assert "line 3 contains a NUL byte" in result.rows[1].error
    assert f"{table} line 5: a quoted field is never closed" in result.rows[3].error


# ------------------------------------------------------------------ full disks


def test_full_disk_while_committing_fails_that_row_and_the_batch_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = write_graph(tmp_path, PROMPTED)
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"id": "a", "n": 1}, {"id": "b", "n": 2}, {"id": "c", "n": 3}])
    real = staging_module._write_synced

    def full_for_b(path: Path, text: str) -> None:
        if path.parent.name == "b":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, text)

    monkeypatch.setattr(staging_module, "_write_synced", full_for_b)
    out = tmp_path / "out"
    result = batch(graph, rows, out, plugins=[PLUGIN], progress="none")
    assert [r.status for r in result.rows] == ["ok", "failed", "ok"] and result.exit_code == 1
    assert result.rows[1].error == f"cannot write the row folder {out / 'b'}: No space left on device"
    assert not (out / "b").exists() and not (out / STAGING).exists()
    assert [l["status"] for l in manifest_lines(out)] == ["ok", "failed", "ok"]

    monkeypatch.setattr(staging_module, "_write_synced", real)  # space freed: the re-run does the rest
    assert [r.status for r in batch(graph, rows, out, plugins=[PLUGIN], progress="none").rows] == [
        "skipped", "ok", "skipped",
    ]


def test_manifest_that_cannot_be_written_is_said_once_and_the_batch_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    graph = write_graph(tmp_path, PROMPTED)
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"id": f"r{i}", "n": i} for i in range(4)])
    real = manifest_module.Manifest.append
    calls = []

    def full_after_one(self, record):  # type: ignore[no-untyped-def]
        calls.append(record["id"])
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(self, record)

    monkeypatch.setattr(manifest_module.Manifest, "append", full_after_one)
    out = tmp_path / "out"
    capsys.readouterr()
    assert run_cli(str(graph), "--batch", str(rows), "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert err.count("cannot write the manifest") == 1 and "No space left on device" in err
    assert all((out / f"r{i}" / "p-1.txt").exists() for i in range(4))  # every row still ran
    assert [l["id"] for l in manifest_lines(out)] == ["r0"]

    monkeypatch.setattr(manifest_module.Manifest, "append", real)
    assert run_cli(str(graph), "--batch", str(rows), "--out", str(out)) == 0  # recorded from the row folders
    assert {k: v["status"] for k, v in read_manifest(out).items()} == {f"r{i}": "skipped" for i in range(4)}


def test_manifest_torn_by_a_failed_write_stays_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    graph = write_graph(tmp_path, PROMPTED)
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"id": f"r{i}", "n": i} for i in range(3)])
    real_write = os.write
    state = {"n": 0}

    def half_then_fail(fd: int, data) -> int:  # type: ignore[no-untyped-def]
        state["n"] += 1
        if state["n"] == 2:  # the second line: half of it lands, then the disk is full
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    fake_os = types.SimpleNamespace(**{name: getattr(os, name) for name in dir(os) if not name.startswith("__")})
    fake_os.write = half_then_fail
    monkeypatch.setattr(manifest_module, "os", fake_os)  # the manifest's own writes only
    result = batch(graph, rows, tmp_path / "out", plugins=[PLUGIN], progress="none")
    monkeypatch.setattr(manifest_module, "os", os)
    assert result.manifest_error == "No space left on device" and result.exit_code == 1
    assert set(read_manifest(tmp_path / "out")) == {"r0", "r2"}  # the torn line is skipped, the next stands alone
    shutil.rmtree(tmp_path / "out")


# ------------------------------------------------------------------ row validation sees the run's settings

FOLDER_PLUGIN = '''
from pathlib import Path
from graphrun import Context, node
from graphrun.engine.node import Problem


def _check(literals, env):
    dirs = env.options.get("models_dirs") or []
    return [] if literals["name"] in dirs else [Problem("name", f"not among the models dirs {dirs}")]


@node("NeedsModelsDir", category="test", output=True, check=_check)
def needs_models_dir(ctx: Context, name: str = "") -> list[Path]:
    """Output node whose pre-run check looks at --models-dir."""
    out = ctx.output_dir / "seen.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(name)
    return [out]
'''


def test_each_row_is_validated_with_the_runs_models_dirs(tmp_path: Path) -> None:
    plugin = tmp_path / "folder_plugin.py"
    plugin.write_text(FOLDER_PLUGIN)
    models = tmp_path / "models"
    models.mkdir()
    graph = write_graph(tmp_path, {"params": {"prompt": {"type": "STRING", "default": "x"}},
                                   "nodes": {"o": {"type": "NeedsModelsDir", "name": str(models)}}})
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\n")
    out = tmp_path / "out"
    rc = main(["run", str(graph), "--plugin", str(plugin), "--batch", str(prompts), "--out", str(out),
               "--models-dir", str(models), "--progress", "none"])
    assert rc == 0 and [l["status"] for l in manifest_lines(out)] == ["ok"]
