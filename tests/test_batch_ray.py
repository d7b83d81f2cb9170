"""Batches on a real local Ray (2 CPUs): same outputs and manifest as a local run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graphrun.engine.batch import MANIFEST, STAGING, batch
from graphrun.engine.batch.rowkey import ROW_RECORD as ROW_KEY
from graphrun.engine.cli import main

from test_batch import PLUGIN, SLOW, TINY, manifest_lines, write_graph, write_jsonl

ray = pytest.importorskip("ray", reason="Ray is optional: pip install graphrun[ray]")
pytest.importorskip("ray.data")


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray on 2 CPUs for this module; a Ray the batch finds running is used as is."""
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


def _comparable(out: Path) -> list[dict]:
    """Manifest lines without what differs between any two runs (timings)."""
    return [{k: v for k, v in line.items() if k not in ("seconds", "time")} for line in manifest_lines(out)]


def test_200_rows_on_ray_match_a_local_run(tmp_path: Path, local_ray: None) -> None:
    graph = write_graph(tmp_path, TINY)
    rows = [{"prompt": f"a lighthouse, variation {i}", "seed": 1000 + i} for i in range(200)]
    rows[17] = {"prompt": "x" * 41_000, "seed": 1}  # over the text encoder's limit: fails inside a worker
    rows[42] = {"prompt": "typo", "sed": 3}  # unknown param: fails validation on the driver
    rows[99] = {"id": "named-row", "prompt": "with an id", "seed": 5}
    path = write_jsonl(tmp_path / "rows.jsonl", rows)

    started = time.perf_counter()
    local = batch(graph, path, tmp_path / "local", progress="none")
    local_seconds = time.perf_counter() - started
    started = time.perf_counter()
    remote = batch(graph, path, tmp_path / "ray", ray=True, workers=2, progress="none")
    ray_seconds = time.perf_counter() - started
    print(f"200 rows: local {local_seconds:.1f}s, ray (2 actors) {ray_seconds:.1f}s")

    assert local.exit_code == remote.exit_code == 1
    assert [(r.id, r.status) for r in local.rows] == [(r.id, r.status) for r in remote.rows]
    assert [r.id for r in local.rows if r.status == "failed"] == ["00017", "00042"]
    assert "TextEncode" in remote.rows[17].error and remote.rows[17].error == local.rows[17].error
    assert _comparable(tmp_path / "local") == _comparable(tmp_path / "ray")

    def listing(out: Path) -> list[str]:
        return sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                      if p.is_file() and p.name not in (MANIFEST, ROW_KEY))

    files = listing(tmp_path / "local")
    assert files == listing(tmp_path / "ray")
    assert len(files) == 198 and "named-row/img_00001_.png" in files
    assert all((tmp_path / "ray" / name).parent.joinpath(ROW_KEY).is_file() for name in files)
    for name in files:
        a = np.asarray(Image.open(tmp_path / "local" / name))
        b = np.asarray(Image.open(tmp_path / "ray" / name))
        assert a.shape == (64, 64, 3) and np.array_equal(a, b), name
    assert not (tmp_path / "ray" / STAGING).exists()


def test_cli_ray_with_plugin_nodes_failed_row_and_rerun(tmp_path: Path, local_ray: None,
                                                        capsys: pytest.CaptureFixture) -> None:
    graph = write_graph(tmp_path, SLOW)
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"n": 1}, {"n": 2}, {"n": "x"}, {"n": 3, "id": "three"}])
    out = tmp_path / "out"
    args = ["run", str(graph), "--plugin", PLUGIN, "--batch", str(rows), "--out", str(out), "--ray",
            "--workers", "2", "--progress", "plain"]
    assert main(args) == 1  # workers rebuild the registry from the --plugin file
    err = capsys.readouterr().err
    assert "[4/4]" in err and "batch done: 3 ok, 1 failed" in err
    assert [(l["id"], l["status"]) for l in manifest_lines(out)] == [
        ("00000", "ok"), ("00001", "ok"), ("00002", "failed"), ("three", "ok")]
    assert (out / "three" / "result.txt").read_text() == "103"

    write_jsonl(rows, [{"n": 1}, {"n": 2}, {"n": 9}, {"n": 3, "id": "three"}])
    assert main(args) == 0
    # finished rows are skipped (and recorded so); the failed one runs again
    assert sorted((l["id"], l["status"]) for l in manifest_lines(out)[4:]) == [
        ("00000", "skipped"), ("00001", "skipped"), ("00002", "ok"), ("three", "skipped")]
    assert (out / "00002" / "result.txt").read_text() == "109"


@pytest.mark.slow
def test_cli_ray_ctrl_c_then_rerun(tmp_path: Path) -> None:
    """`--ray` starting its own local Ray in a subprocess; Ctrl-C; re-run finishes the rest."""
    graph = write_graph(tmp_path, SLOW)
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"n": i, "delay": 0.05} for i in range(30)])
    out = tmp_path / "out"
    args = [sys.executable, "-m", "graphrun.engine.cli", "run", str(graph), "--plugin", PLUGIN, "--batch",
            str(rows), "--out", str(out), "--ray", "--workers", "2", "--progress", "plain"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if (out / MANIFEST).exists() and len((out / MANIFEST).read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    first = manifest_lines(out)
    assert 3 <= len(first) < 30
    assert sorted(p.name for p in out.iterdir()) == sorted([l["id"] for l in first] + [MANIFEST])
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = manifest_lines(out)
    assert Counter(l["id"] for l in lines if l["status"] == "ok") == Counter(f"{i:05d}" for i in range(30))
    assert sorted(os.listdir(out / "00000")) == [ROW_KEY, "result.txt"]


def test_a_worker_that_cannot_start_aborts_with_the_cause(tmp_path: Path, local_ray: None,
                                                          capsys: pytest.CaptureFixture) -> None:
    plugin = tmp_path / "driver_only.py"
    plugin.write_text(
        "import sys\nfrom pathlib import Path\nfrom graphrun import Context, node\n"
        "if 'default_worker' in sys.argv[0]:\n    raise RuntimeError('refuses to load in a Ray worker')\n"
        "@node('Echo', category='test', output=True)\n"
        "def echo(ctx: Context, n: int = 0) -> list[Path]:\n    '''Write n.'''\n"
        "    path = ctx.output_dir / 'n.txt'\n    path.write_text(str(n))\n    return [path]\n"
    )
    graph = write_graph(tmp_path, {"params": {"n": 0}, "nodes": {"e": {"type": "Echo", "n": "$n"}}})
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"n": 1}, {"n": 2}])
    out = tmp_path / "out"
    rc = main(["run", str(graph), "--plugin", str(plugin), "--batch", str(rows), "--out", str(out), "--ray",
               "--progress", "none"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "error: the batch stopped:" in err and "refuses to load in a Ray worker" in err
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST] and (out / MANIFEST).read_text() == ""
