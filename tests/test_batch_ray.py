"""Batches on a real local Ray (4 logical CPUs, 1 logical GPU): the same outputs and manifest as a
local run, rows committed as they finish, a killed worker losing no row, requests the cluster
cannot hold failing fast, files written straight into a shared --out or sent through the driver,
a pool that grows and shrinks, and fractional GPUs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graphrun.engine.batch import MANIFEST, STAGING, BatchError, batch
from graphrun.engine.batch.ray_executor import check_fits, workers_that_fit
from graphrun.engine.batch.rowkey import ROW_RECORD as ROW_KEY
from graphrun.engine.cli import main

from test_batch import PLUGIN, SLOW, TINY, manifest_lines, write_graph, write_jsonl

ray = pytest.importorskip("ray", reason="Ray is optional: pip install graphrun[ray]")

# A node reporting where it ran: its value, the worker's pid, the folder it wrote into and (on
# request) the CPUs Ray has free; it can make its worker process die mid-row.
PROBE_PLUGIN = '''
import json, os, time
from pathlib import Path
from graphrun import Context, node

@node("Probe", category="test", output=True)
def probe(ctx: Context, n: int = 0, delay: float = 0.0, die: int = -1, free_cpus: bool = False) -> list[Path]:
    """Write row.json (n, pid, gpu ids, free CPUs) and where.txt (the output folder)."""
    if n == die:
        os._exit(1)  # the worker process dies in the middle of this row
    time.sleep(delay)
    import ray
    info = {"n": n, "pid": os.getpid(), "gpus": [str(g) for g in ray.get_gpu_ids()]}
    if free_cpus:
        info["free_cpus"] = ray.available_resources().get("CPU", 0.0)
    (ctx.output_dir / "row.json").write_text(json.dumps(info))
    (ctx.output_dir / "where.txt").write_text(str(ctx.output_dir))
    return [ctx.output_dir / "row.json", ctx.output_dir / "where.txt"]
'''
PROBE_GRAPH = {
    "params": {"n": 0, "delay": 0.0, "die": -1, "free_cpus": False},
    "nodes": {"p": {"type": "Probe", "n": "$n", "delay": "$delay", "die": "$die", "free_cpus": "$free_cpus"}},
}


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray for this module; the batch uses a Ray it finds running as it is. One
    logical GPU (Ray only counts it; nothing runs on it) lets the tests pack workers on it."""
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def probe(tmp_path: Path) -> tuple[Path, Path]:
    """(the probe graph, its plugin file)."""
    plugin = tmp_path / "probe_nodes.py"
    plugin.write_text(PROBE_PLUGIN)
    return write_graph(tmp_path, PROBE_GRAPH), plugin


def _comparable(out: Path) -> list[dict]:
    """Manifest lines in row order, without what differs between any two runs (timings)."""
    lines = [{k: v for k, v in line.items() if k not in ("seconds", "time")} for line in manifest_lines(out)]
    return sorted(lines, key=lambda line: line["row"])


def _row_info(out: Path) -> dict[str, dict]:
    """Row id -> what its row.json says."""
    return {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/row.json")}


def _ray_args(graph: Path, plugin: Path, rows: Path, out: Path, *extra: str) -> list[str]:
    return ["run", str(graph), "--plugin", str(plugin), "--batch", str(rows), "--out", str(out), "--ray",
            "--progress", "none", *extra]


def test_rows_on_ray_match_a_local_run(tmp_path: Path, local_ray: None) -> None:
    graph = write_graph(tmp_path, TINY)
    rows = [{"prompt": f"a lighthouse, variation {i}", "seed": 1000 + i} for i in range(30)]
    rows[17] = {"prompt": "x" * 41_000, "seed": 1}  # over the text encoder's limit: fails inside a worker
    rows[25] = {"prompt": "typo", "sed": 3}  # unknown param: fails validation on the driver
    rows[20] = {"id": "named-row", "prompt": "with an id", "seed": 5}
    path = write_jsonl(tmp_path / "rows.jsonl", rows)

    local = batch(graph, path, tmp_path / "local", progress="none")
    remote = batch(graph, path, tmp_path / "ray", ray=True, workers=2, progress="none")

    assert local.exit_code == remote.exit_code == 1
    assert [(r.id, r.status) for r in local.rows] == [(r.id, r.status) for r in remote.rows]  # row order
    assert [r.id for r in local.rows if r.status == "failed"] == ["00017", "00025"]
    assert "TextEncode" in remote.rows[17].error and remote.rows[17].error == local.rows[17].error
    # The same lines; Ray's run rows come in the order they finished, after the failed validation.
    assert _comparable(tmp_path / "local") == _comparable(tmp_path / "ray")
    assert manifest_lines(tmp_path / "ray")[0]["id"] == "00025"

    def listing(out: Path) -> list[str]:
        return sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                      if p.is_file() and p.name not in (MANIFEST, ROW_KEY))

    files = listing(tmp_path / "local")
    assert files == listing(tmp_path / "ray")
    assert len(files) == 28 and "named-row/img_00001_.png" in files
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
    assert "[4/4]" in err and "batch done: 3 ok, 1 failed" in err and " rows/s" in err
    assert sorted((l["id"], l["status"]) for l in manifest_lines(out)) == [
        ("00000", "ok"), ("00001", "ok"), ("00002", "failed"), ("three", "ok")]
    assert (out / "three" / "result.txt").read_text() == "103"

    write_jsonl(rows, [{"n": 1}, {"n": 2}, {"n": 9}, {"n": 3, "id": "three"}])
    assert main(args) == 0
    # finished rows are skipped (and recorded so); the failed one runs again
    assert sorted((l["id"], l["status"]) for l in manifest_lines(out)[4:]) == [
        ("00000", "skipped"), ("00001", "skipped"), ("00002", "ok"), ("three", "skipped")]
    assert (out / "00002" / "result.txt").read_text() == "109"


def test_a_worker_killed_mid_batch_loses_no_row(tmp_path: Path, local_ray: None, probe: tuple[Path, Path]) -> None:
    graph, plugin = probe
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"n": i, "delay": 0.3} for i in range(12)])
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_the_first_worker_to_finish_a_row() -> None:
        deadline = time.time() + 60
        while time.time() < deadline:
            done = [p for p in out.glob("0*/row.json")] if out.is_dir() else []
            if done:
                pid = json.loads(done[0].read_text())["pid"]
                os.kill(pid, signal.SIGKILL)  # it is already running its next row
                killed.append(pid)
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=kill_the_first_worker_to_finish_a_row)
    watcher.start()
    result = batch(graph, rows, out, ray=True, workers=2, progress="none", plugins=[plugin])
    watcher.join()

    assert killed, "no row finished"
    assert result.exit_code == 0 and [r.status for r in result.rows] == ["ok"] * 12
    lines = manifest_lines(out)
    assert Counter(l["id"] for l in lines) == Counter(f"{i:05d}" for i in range(12))  # each exactly once
    assert {l["status"] for l in lines} == {"ok"}
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{i:05d}" for i in range(12)] + [MANIFEST])
    info = _row_info(out)
    assert [info[f"{i:05d}"]["n"] for i in range(12)] == list(range(12))
    by_killed = [row for row, i in info.items() if i["pid"] == killed[0]]
    assert 1 <= len(by_killed) <= 3  # what it finished before it died; the rest ran elsewhere
    assert len({i["pid"] for i in info.values()}) >= 2


def test_a_row_that_kills_every_worker_fails_after_its_retries(tmp_path: Path, local_ray: None,
                                                               probe: tuple[Path, Path],
                                                               capsys: pytest.CaptureFixture) -> None:
    graph, plugin = probe
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"n": i, "delay": 0.05} for i in range(6)])
    out = tmp_path / "out"
    rc = main(_ray_args(graph, plugin, rows, out, "--workers", "2", "--set", "die=3", "--max-retries", "1"))
    assert rc == 1, capsys.readouterr().err
    lines = {l["id"]: l for l in manifest_lines(out)}
    assert len(manifest_lines(out)) == 6
    assert [lines[f"{i:05d}"]["status"] for i in range(6)] == ["ok", "ok", "ok", "failed", "ok", "ok"]
    assert lines["00003"]["error"].startswith("its Ray worker died 2 times while running it (the last: ")
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{i:05d}" for i in (0, 1, 2, 4, 5)] + [MANIFEST])


def test_a_gpu_request_the_cluster_cannot_hold_fails_at_once(tmp_path: Path, local_ray: None,
                                                            probe: tuple[Path, Path],
                                                            capsys: pytest.CaptureFixture) -> None:
    graph, plugin = probe
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"n": 1}, {"n": 2}, {"n": 3}])
    out = tmp_path / "out"
    started = time.perf_counter()
    assert main(_ray_args(graph, plugin, rows, out, "--gpus-per-worker", "2")) == 2
    err = capsys.readouterr().err
    assert time.perf_counter() - started < 10
    assert err.strip().splitlines() == [
        "error: the Ray cluster cannot run 1 worker asking for 2 GPUs, 1 CPU each: it has 1 GPU, 4 CPUs on 1 "
        "node, so not one fits; use --gpus-per-worker 1 or less (the most one node has)"]
    assert main(_ray_args(graph, plugin, rows, out, "--workers", "3", "--gpus-per-worker", "0.5")) == 2
    assert "only 2 fit" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST] and (out / MANIFEST).read_text() == ""


def test_no_gpus_or_too_many_cpus_are_refused_with_what_the_cluster_has() -> None:
    cpu_only = [{"CPU": 2.0, "memory": 1e9}]
    with pytest.raises(BatchError) as caught:
        check_fits({"CPU": 1.0, "GPU": 1.0}, 1, cpu_only)
    assert str(caught.value) == (
        "the Ray cluster cannot run 1 worker asking for 1 GPU, 1 CPU each: it has 0 GPUs, 2 CPUs on 1 node, "
        "so not one fits; use --gpus-per-worker 0 for CPU workers, or a Ray address of a cluster with GPUs")
    with pytest.raises(BatchError, match=r"cannot run 3 workers asking for 1 CPU each: it has 2 CPUs on 1 "
                                         r"node, so only 2 fit; use --workers 2 or fewer, or a smaller --cpus-per-worker"):
        check_fits({"CPU": 1.0}, 3, cpu_only)
    check_fits({"CPU": 1.0}, 2, cpu_only)  # fits
    # A worker lives on one node: two 1-GPU nodes hold two 1-GPU workers, never one 2-GPU worker.
    two_nodes = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}]
    assert workers_that_fit({"CPU": 1.0, "GPU": 1.0}, two_nodes) == 2
    assert workers_that_fit({"CPU": 1.0, "GPU": 2.0}, two_nodes) == 0
    assert workers_that_fit({"CPU": 1.0, "GPU": 0.5}, two_nodes) == 4
    assert workers_that_fit({"CPU": 0.0}, two_nodes) is None


def test_workers_ray_cannot_place_fail_within_the_start_timeout(tmp_path: Path, local_ray: None,
                                                                 probe: tuple[Path, Path],
                                                                 capsys: pytest.CaptureFixture) -> None:
    from ray.util.placement_group import placement_group, remove_placement_group

    graph, plugin = probe
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"n": 1}, {"n": 2}])
    out = tmp_path / "out"
    hold = placement_group([{"CPU": 4.0}])  # every CPU taken by someone else: the cluster is busy
    ray.get(hold.ready(), timeout=30)
    try:
        started = time.perf_counter()
        rc = main(_ray_args(graph, plugin, rows, out, "--worker-start-timeout", "2"))
        elapsed = time.perf_counter() - started
    finally:
        remove_placement_group(hold)
    err = capsys.readouterr().err
    assert rc == 2 and elapsed < 10
    assert ("error: no Ray worker started within 2 s: each asks for 1 CPU; the cluster has 0 CPUs free, and Ray "
            "could not place one") in err
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST]


def test_workers_write_into_a_shared_out_or_send_files_through_the_driver(
        tmp_path: Path, local_ray: None, probe: tuple[Path, Path]) -> None:
    graph, plugin = probe
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"n": i} for i in range(4)])
    shared, sent = tmp_path / "shared", tmp_path / "sent"
    assert main(_ray_args(graph, plugin, rows, shared, "--workers", "2")) == 0
    assert main(_ray_args(graph, plugin, rows, sent, "--workers", "2", "--no-shared-out")) == 0

    for row in [f"{i:05d}" for i in range(4)]:
        # where the worker wrote: an attempt folder under --out, or its own scratch folder
        assert Path((shared / row / "where.txt").read_text()).parent == shared / STAGING
        assert Path((shared / row / "where.txt").read_text()).name.startswith(".try")
        assert not Path((sent / row / "where.txt").read_text()).is_relative_to(sent)
        assert json.loads((shared / row / "row.json").read_text())["n"] == int(row)
        assert json.loads((sent / row / "row.json").read_text())["n"] == int(row)
    assert _comparable(shared) == [dict(line, key=line["key"]) for line in _comparable(sent)]
    assert sorted(p.name for p in shared.iterdir()) == sorted(p.name for p in sent.iterdir())


def test_a_pool_grows_to_its_most_while_rows_wait_and_shrinks_when_they_run_out(
        tmp_path: Path, local_ray: None, probe: tuple[Path, Path]) -> None:
    graph, plugin = probe
    # Twelve 0.4 s rows, then one slow row that looks, at its end, at what Ray has free.
    rows = [{"n": i, "delay": 0.4} for i in range(12)] + [{"n": 12, "delay": 3.0, "free_cpus": True}]
    out = tmp_path / "out"
    assert main(_ray_args(graph, plugin, write_jsonl(tmp_path / "rows.jsonl", rows), out, "--workers", "1:2")) == 0
    info = _row_info(out)
    assert len(info) == 13 and len({i["pid"] for i in info.values()}) == 2  # a second worker joined
    # By the end of the slow row the idle worker was gone: only the slow row's worker held a CPU.
    assert info["00012"]["free_cpus"] == 3.0


def test_half_a_gpu_per_worker_packs_two_workers_on_one_gpu(tmp_path: Path, local_ray: None,
                                                            probe: tuple[Path, Path]) -> None:
    graph, plugin = probe
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"n": i, "delay": 0.3} for i in range(8)])
    out = tmp_path / "out"
    assert main(_ray_args(graph, plugin, rows, out, "--workers", "2", "--gpus-per-worker", "0.5")) == 0
    info = _row_info(out)
    assert len({i["pid"] for i in info.values()}) == 2
    assert {tuple(i["gpus"]) for i in info.values()} == {("0",)}  # both on GPU 0


def test_batch_size_sends_rows_to_a_worker_in_groups(tmp_path: Path, local_ray: None) -> None:
    graph = write_graph(tmp_path, SLOW)
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"n": i} for i in range(7)])
    out = tmp_path / "out"
    assert main(["run", str(graph), "--plugin", PLUGIN, "--batch", str(rows), "--out", str(out), "--ray",
                 "--workers", "2", "--batch-size", "3", "--progress", "none"]) == 0
    assert sorted(l["id"] for l in manifest_lines(out)) == [f"{i:05d}" for i in range(7)]
    assert [(out / f"{i:05d}" / "result.txt").read_text() for i in range(7)] == [str(100 + i) for i in range(7)]


def test_bad_worker_options_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    graph = write_graph(tmp_path, SLOW)
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"n": 1}])
    base = ["run", str(graph), "--plugin", PLUGIN, "--batch", str(rows), "--out", str(tmp_path / "o"), "--ray"]
    assert main([*base, "--workers", "3:2"]) == 2
    assert "'3:2': at least 1 worker, and MAX no less than MIN" in capsys.readouterr().err
    assert main([*base, "--max-retries", "-1"]) == 2
    assert "--max-retries cannot be negative" in capsys.readouterr().err


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


@pytest.mark.slow
def test_cli_gpu_request_on_a_machine_without_gpus_fails_within_seconds(tmp_path: Path) -> None:
    """As a user would: `--ray --gpus-per-worker 1` starting its own Ray on a machine without GPUs."""
    import shutil

    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has GPUs")
    graph = write_graph(tmp_path, SLOW)
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"n": 1}])
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "graphrun.engine.cli", "run", str(graph), "--plugin", PLUGIN,
                           "--batch", str(rows), "--out", str(tmp_path / "out"), "--ray", "--gpus-per-worker", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and time.perf_counter() - started < 60
    assert "error: the Ray cluster cannot run 1 worker asking for 1 GPU, 1 CPU each: it has 0 GPUs" in done.stderr


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
