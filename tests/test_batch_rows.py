"""--batch-size: rows of one graph run together (shared work once, the samplers and VAE decode of a group in
one forward), and every row's image equals its single-row image up to the network's batch effects."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import graphrun
from graphrun.engine.batched import RowsReport, run_rows
from graphrun.engine.context import RunOptions
from graphrun.engine.executor import Runner
from graphrun.nodes.sampling.samplers import BrownianTreeNoiseSampler, RowSeeds, default_noise_sampler

ROOT = Path(__file__).parent.parent
THREE_STAGE = ROOT / "graphs" / "zimage_3stage.yaml"
TURBO = ROOT / "graphs" / "zimage_turbo.yaml"
PROMPTS = ["a fox", "a lighthouse at dusk with waves on the rocks and gulls over the sea", "tea, steam, morning"]


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def _images(out: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(out).parts[0]: _pixels(p) for p in sorted(out.glob("*/**/*.png"))}


def _manifest(out: Path) -> list[dict]:
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return sorted(({k: v for k, v in r.items() if k not in ("seconds", "time")} for r in lines), key=lambda r: r["id"])


# --- the noise of batched rows is each row's own noise, bit for bit --------------------------------------------


def test_row_seeds_draw_each_rows_noise_as_its_single_run_does() -> None:
    x = torch.zeros(3, 4, 6, 5)
    seeds = RowSeeds([7, 8, 9], [1, 1, 1])
    together = default_noise_sampler(x, seeds)
    alone = [default_noise_sampler(x[:1], s) for s in (7, 8, 9)]
    sigma, nxt = torch.tensor(0.8), torch.tensor(0.5)
    for _ in range(3):  # every call continues each row's own stream
        assert torch.equal(together(sigma, nxt), torch.cat([draw(sigma, nxt) for draw in alone]))
    sigmas = torch.tensor([1.0, 0.7, 0.3, 0.0])
    tree = BrownianTreeNoiseSampler.for_schedule(x, sigmas, RowSeeds([7, 8, 9], [1, 1, 1]))
    trees = [BrownianTreeNoiseSampler.for_schedule(x[:1], sigmas, s) for s in (7, 8, 9)]
    assert torch.equal(tree(sigmas[1], sigmas[2]), torch.cat([t(sigmas[1], sigmas[2]) for t in trees]))
    with pytest.raises(TypeError, match="one by one"):
        seeds + 1  # a sampler doing arithmetic on the seeds cannot batch rows


# --- whole graphs -----------------------------------------------------------------------------------------------


def test_three_stage_rows_at_batch_size_3_match_their_single_runs(tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "prompt": p, "seed": 40 + i} for i, p in enumerate(PROMPTS)]
    graph = graphrun.load(THREE_STAGE)
    single = graphrun.batch(graph, rows, tmp_path / "single", progress="none")
    together = graphrun.batch(graphrun.load(THREE_STAGE), rows, tmp_path / "together", progress="none", batch_size=3)
    assert [r.status for r in single.rows] == [r.status for r in together.rows] == ["ok"] * 3
    a, b = _images(tmp_path / "single"), _images(tmp_path / "together")
    assert sorted(a) == sorted(b) == ["r0", "r1", "r2"]
    for name in a:
        assert a[name].shape == (864, 672, 3)
        diff = np.abs(a[name] - b[name])
        # Stated in the README: within 1/255 (the transformer's float sums depend on the batch on the CPU).
        assert diff.max() <= 1, name
        assert (diff == 0).mean() > 0.99, name
    assert not np.array_equal(a["r0"], a["r1"])  # each row kept its own prompt and seed
    assert _manifest(tmp_path / "single") == _manifest(tmp_path / "together")


def test_shared_work_runs_once_and_the_samplers_batch(tmp_path: Path) -> None:
    runner = Runner(RunOptions(output_dir=tmp_path))
    graph = graphrun.load(TURBO, runner=runner)
    bound = [graph.bind(prompt=p, seed=i, width=64, height=64, steps=2) for i, p in enumerate(PROMPTS)]
    notes = RowsReport()
    results = run_rows(runner, bound, [RunOptions(output_dir=tmp_path / f"row{i}") for i in range(3)], report=notes)
    assert all(not isinstance(r, Exception) for r in results)
    assert notes.one_by_one == [] and notes.fallbacks == {}
    assert set(notes.batched) == {"positive", "negative", "sample", "decode"}  # what differs between rows
    assert all(n == 3 for n in notes.batched.values())
    assert len({r.keys["zimage"] for r in results}) == 1  # the model: one key, loaded once for every row
    files = [r.files for r in results]
    assert [len(f) for f in files] == [1, 1, 1]
    assert all(f[0].is_relative_to(tmp_path / f"row{i}") for i, f in enumerate(files))  # each row's own folder


def test_a_bad_row_fails_alone_and_its_group_goes_on(tmp_path: Path) -> None:
    rows = [{"id": "good1", "prompt": "a cat", "seed": 1},
            {"id": "toolong", "prompt": "word " * 3000, "seed": 2},  # fails in TextEncode, inside the group
            {"id": "badseed", "prompt": "a dog", "seed": -5},  # fails validation
            {"id": "good2", "prompt": "a bird", "seed": 3}]
    params = {"width": 64, "height": 64, "steps": 2}
    result = graphrun.batch(graphrun.load(TURBO), rows, tmp_path / "out", params=params, progress="none",
                            batch_size=4)
    status = {r.id: r.status for r in result.rows}
    assert status == {"good1": "ok", "toolong": "failed", "badseed": "failed", "good2": "ok"}
    errors = {r.id: r.error for r in result.rows}
    assert "token" in errors["toolong"] and "seed" in errors["badseed"]
    alone = graphrun.batch(graphrun.load(TURBO), [rows[0], rows[3]], tmp_path / "alone", params=params,
                           progress="none")
    for name in ("good1", "good2"):
        together_png = next((tmp_path / "out" / name).glob("**/*.png"))
        alone_png = next((tmp_path / "alone" / name).glob("**/*.png"))
        assert np.abs(_pixels(together_png) - _pixels(alone_png)).max() <= 1


def test_a_node_without_a_batched_form_runs_per_row_with_a_notice(tmp_path: Path) -> None:
    doc = (TURBO.read_text().replace("  save:", "  scaled: {type: ImageScaleBy, image: decode, method: nearest-exact,"
                                                 " scale_by: 0.5}\n  save:")
           .replace("images: decode", "images: scaled"))
    assert "scaled" in doc and "images: scaled" in doc
    graph_file = tmp_path / "scaled.yaml"
    graph_file.write_text(doc)
    rows = [{"prompt": p, "seed": i} for i, p in enumerate(PROMPTS[:2])]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = graphrun.batch(graphrun.load(graph_file), rows, tmp_path / "out", progress="none", batch_size=2,
                                params={"width": 64, "height": 64, "steps": 2})
    assert [r.status for r in result.rows] == ["ok", "ok"]
    notices = [str(w.message) for w in caught if "no batched form" in str(w.message)]
    assert len(notices) == 1 and "scaled" in notices[0]
    assert all(Image.open(f).size == (32, 32) for r in result.rows for f in r.files)


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "4"], "--batch-size applies to batches only"),
    (["--batch", "ROWS", "--batch-size", "0"], "--batch-size 0"),
])
def test_batch_size_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    rows = tmp_path / "rows.txt"
    rows.write_text("a fox\n")
    args = [str(rows) if a == "ROWS" else a for a in args]
    done = subprocess.run([sys.executable, "-m", "graphrun.engine.cli", str(TURBO), "--out", str(tmp_path / "o"),
                           *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr
