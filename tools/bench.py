"""CPU benchmark of graphrun's engine on the tiny Z-Image: what does running a graph cost on top of
the computation it describes?

    python tools/bench.py                 # ~1-2 minutes on 2 cores
    python tools/bench.py --repeats 9     # steadier medians
    python tools/bench.py --profile       # also cProfile one warm 3-stage run (graphrun frames only)

Every figure is a time measured in this run, or a ratio of two such times; nothing is compared with
numbers from elsewhere and nothing is asserted. One thread everywhere (torch and OpenMP, inherited by
the subprocesses), so timings are steady and results bit-reproducible. Each figure is the median of
``--repeats`` runs after a warm-up; graph and plain runs alternate, so drift hits both alike.

Sections:
  * engine overhead: graphs/zimage_3stage.yaml on a warm Runner, only the seed changed (every
    sampling stage, the decode and the save re-run; models and prompts come from the cache), versus
    a plain-Python script doing the same work on the same loaded components with the same pure
    functions (graphrun.nodes.sampling, resample, zimage.vae, PIL). Also checks both give
    bit-identical images.
  * warm batch row: a new prompt and seed on a warm Runner (SaveImage included) versus the pure
    compute of that row (encode + 3 sampling stages + 2 upscales + decode); and per row through
    engine/batch.py when that module exists.
  * unchanged re-run served from the cache.
  * cold `graphrun validate` / `graphrun convert` (fresh processes).
  * peak RSS of the 3-stage run versus the plain script (fresh processes, ru_maxrss).
  * executor cost per node on a chain of 1,000 trivial pure-Python nodes.
  * per-stage times of the 3-stage run.
  * cold start: fresh `graphrun --help` / `nodes` / `validate` / the tiny 3-stage run (its time split
    into the first loader, sampling, decode+save and the rest), and the import chain of the loaders.
  * Ray batch: steady-state rows/s with 1 and 2 local Ray workers (one thread each) on the tiny
    model's smallest graph (64x64, 2 steps), startup (actor start, model load, first row) apart.
"""
from __future__ import annotations

import os

# Fixed thread count before torch is imported (here and, through the environment, in subprocesses):
# thread pools make timings noisy and reductions order-dependent.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import cProfile
import importlib.util
import io
import json
import pstats
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bench_report import Report, Timing, add_ratio, cold_times, failure_reason, graphrun_command, median, time_command

REPO = Path(__file__).resolve().parents[1]
GRAPH = REPO / "graphs" / "zimage_3stage.yaml"
COMFY_API = REPO / "tests" / "data" / "comfy" / "legacy-zimage-3stage.api.json"
TEST_NODES = REPO / "tests" / "engine" / "test_nodes.py"

# The work graphs/zimage_3stage.yaml describes, written out for the plain script. Kept literal on
# purpose (a plain script would hard-code them); the bit-identity check catches any divergence.
EMPTY_SIZE = (176, 224)  # width, height in pixels
SHIFT = 3.0
STAGES = (  # steps, cfg, denoise (all euler_ancestral / simple)
    (9, 2.0, 1.0),
    (16, 1.0, 0.7),
    (16, 1.0, 0.6),
)
UP1_SIZE = (336, 432)  # LatentUpscale width, height (nearest-exact)
UP2_SCALE = 2.0  # LatentUpscaleBy (nearest-exact)
DEFAULT_PROMPT = (
    "A young woman with long brown hair, casual summer outfit, standing on a sunny street, natural light, photo"
)
DEFAULT_NEGATIVE = "blurry, lowres, watermark"


# ---------------------------------------------------------------------------------------------------
# The plain script: the same computation, no engine


@dataclass
class Components:
    """The loaded model pieces the plain script works on (shared with the graph's Runner)."""

    denoiser: Any  # ZImageDenoiser with the graph's flow shift
    text_encoder: Any
    tokenizer: Any
    vae: Any


def plain_encode(c: Components, text: str) -> Any:
    from graphrun.nodes.sampling.guidance import Conditioning
    from graphrun.nodes.zimage.text import encode_prompt

    return Conditioning.from_tensor(encode_prompt((c.text_encoder, c.tokenizer), text))


def plain_image(c: Components, positive: Any, negative: Any, seed: int) -> Any:
    """Three sampling stages with two latent upscales between them, then the VAE decode."""
    import torch

    from graphrun.nodes.resample import latent_upscale, latent_upscale_by
    from graphrun.nodes.sampling.pipeline import ksampler
    from graphrun.nodes.zimage.vae import decode

    width, height = EMPTY_SIZE
    latent = torch.zeros([1, 16, height // 8, width // 8], dtype=torch.float32)
    (s1, c1, d1), (s2, c2, d2), (s3, c3, d3) = STAGES
    latent = ksampler(c.denoiser, seed, s1, c1, "euler_ancestral", "simple", positive, negative, latent, d1)
    latent = latent_upscale(latent, "nearest-exact", UP1_SIZE[0], UP1_SIZE[1], "disabled")
    latent = ksampler(c.denoiser, seed, s2, c2, "euler_ancestral", "simple", positive, negative, latent, d2)
    latent = latent_upscale_by(latent, "nearest-exact", UP2_SCALE)
    latent = ksampler(c.denoiser, seed, s3, c3, "euler_ancestral", "simple", positive, negative, latent, d3)
    return decode(c.vae, latent)


def plain_save(image: Any, path: Path, metadata: str) -> None:
    """What SaveImage does for one image: ComfyUI's uint8 conversion, PNG level 4, a text chunk."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from graphrun.nodes.image import to_uint8

    info = PngInfo()
    info.add_text("graphrun", metadata)
    Image.fromarray(to_uint8(image[0])).save(path, format="PNG", pnginfo=info, compress_level=4)


def load_components() -> Components:
    """The tiny model loaded the way LoadZImage loads it (for the plain-script RSS child)."""
    import torch

    from graphrun.nodes.sampling.schedules import FlowModelSampling
    from graphrun.nodes.zimage.loading import load_diffusers_folder
    from graphrun.nodes.zimage.network import ZImageDenoiser
    from graphrun.nodes.zimage.tiny import tiny_model_dir

    parts = load_diffusers_folder(tiny_model_dir(), torch.device("cpu"), torch.float32)
    denoiser = ZImageDenoiser.from_parts(parts).with_model_sampling(FlowModelSampling(shift=SHIFT))
    return Components(denoiser, parts.text_encoder, parts.tokenizer, parts.vae)


# ---------------------------------------------------------------------------------------------------
# Access to what a warm Runner holds


def cached_output(graph: Any, node_id: str, keys: dict[str, str]) -> tuple[Any, ...]:
    """The outputs a node produced in a run whose ``RunResult.keys`` are ``keys`` (from the Runner's cache)."""
    outputs = graph.runner.cache.get(keys[node_id])
    if outputs is None:
        raise RuntimeError(f"node '{node_id}' is not in the Runner's cache (did the cache keys change?)")
    return outputs


def components_from_runner(graph: Any, keys: dict[str, str]) -> Components:
    """The very modules the graph's loaders loaded, so both sides compute with the same weights."""
    (model,) = cached_output(graph, "unet_loader", keys)
    (clip,) = cached_output(graph, "clip_loader", keys)
    (vae,) = cached_output(graph, "vae_loader", keys)
    denoiser = model.denoiser.with_model_sampling(type(model.denoiser.model_sampling)(shift=SHIFT))
    return Components(denoiser, clip.text_encoder, clip.tokenizer, vae.vae)


def png_pixels(path: Path) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


# ---------------------------------------------------------------------------------------------------
# Measurements


def new_graph(out_dir: Path) -> Any:
    import graphrun
    from graphrun.engine.context import RunOptions

    return graphrun.load(GRAPH, runner=graphrun.Runner(RunOptions(output_dir=out_dir)))


def bench_engine_overhead(args: argparse.Namespace, out: Path, report: Report) -> tuple[Any, Components, dict]:
    """Warm 3-stage graph, only the seed changed, versus the plain script on the same components."""
    import torch

    print("\n[2] engine overhead: 3-stage graph (warm Runner, new seed each run) vs plain script", flush=True)
    graph = new_graph(out / "graph")
    started = time.perf_counter()
    first = graph.run(seed=1)  # loads the model, encodes the prompts
    load_run = time.perf_counter() - started
    comp = components_from_runner(graph, first.keys)
    positive, negative = plain_encode(comp, DEFAULT_PROMPT), plain_encode(comp, DEFAULT_NEGATIVE)
    metadata = json.dumps({"graph": graph.document.raw, "params": {}}, default=str)
    plain_dir = out / "plain"
    plain_dir.mkdir(parents=True, exist_ok=True)

    def run_plain(seed: int) -> tuple[Any, Path]:
        path = plain_dir / f"plain_{seed:05d}_.png"
        image = plain_image(comp, positive, negative, seed)
        plain_save(image, path, metadata)
        return image, path

    t_graph, t_plain = Timing(), Timing()
    t_plain.measure(lambda: run_plain(1), keep=False)  # warm-up of the plain path
    t_graph.measure(lambda: graph.run(seed=2), keep=False)  # warm-up that re-runs every sampling stage
    outside: list[float] = []
    per_node: dict[str, list[float]] = {}
    identical: list[bool] = []
    for i in range(args.repeats):
        seed = 100 + i
        result, elapsed = t_graph.measure(lambda: graph.run(seed=seed))
        outside.append(elapsed - sum(result.seconds.values()))
        for node_id, seconds in result.seconds.items():
            per_node.setdefault(node_id, []).append(seconds)
        (image, path), _ = t_plain.measure(lambda: run_plain(seed))
        graph_image = cached_output(graph, "decode", result.keys)[0]
        same = torch.equal(graph_image, image) and bool((png_pixels(result.files[0]) == png_pixels(path)).all())
        identical.append(same)
    report.add("first run (model load + run)", f"{load_run * 1000:.0f} ms")
    report.add("3-stage run, graphrun (warm, new seed)", t_graph.ms(), note=t_graph.cpu_note())
    report.add("3-stage run, plain script", t_plain.ms(), note=t_plain.cpu_note())
    add_ratio(report, "engine overhead ratio (graphrun / plain)", t_graph, t_plain, "<= 1.02")
    report.add("engine time outside node bodies", f"{median(outside) * 1000:.2f} ms",
               note="bind + plan + keys + bookkeeping, per run")
    # The overhead ratio again, within each run (no cross-run noise): wall over node bodies.
    report.add("graphrun run / its node bodies, same run",
               f"{median([o / (w - o) + 1.0 for o, w in zip(outside, t_graph.wall)]):.4f}", "<= 1.02")
    report.add("bit-identical images (float + PNG)", "yes" if all(identical) else
               f"NO ({identical.count(False)} of {len(identical)} differ)")
    return graph, comp, per_node


def find_batch() -> Callable[..., Any] | str:
    """engine/batch.py's ``batch()`` entry point, or the reason it cannot be used."""
    if importlib.util.find_spec("graphrun.engine.batch") is None:
        return "engine/batch.py not present"
    try:
        from graphrun.engine.batch import batch  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - written in parallel by another helper; report, don't crash
        return f"import failed: {type(exc).__name__}: {exc}"
    return batch


def bench_batch_row(args: argparse.Namespace, graph: Any, comp: Components, out: Path, report: Report) -> None:
    """A new prompt and seed on a warm Runner versus the pure compute of that row."""
    print("\n[3] warm batch row (new prompt + seed) vs its pure compute", flush=True)
    t_row, t_pure = Timing(), Timing()
    negative = plain_encode(comp, DEFAULT_NEGATIVE)
    in_run: list[float] = []  # row wall / its compute nodes' time, within one run
    save_ms: list[float] = []
    for i in range(-1, args.repeats):  # i = -1: warm-up
        prompt, seed = f"row {i}: a lighthouse at dusk, oil painting", 200 + i
        result, wall = t_row.measure(lambda: graph.run(prompt=prompt, seed=seed), keep=i >= 0)
        t_pure.measure(lambda: plain_image(comp, plain_encode(comp, prompt), negative, seed), keep=i >= 0)
        if i >= 0:
            compute = sum(sec for node_id, sec in result.seconds.items() if node_id != "save")
            in_run.append(wall / compute)
            save_ms.append(result.seconds.get("save", 0.0) * 1000)
    report.add("batch row, graphrun (warm Runner)", t_row.ms(), note=t_row.cpu_note())
    report.add("batch row, pure compute", t_pure.ms(), note=f"{t_pure.cpu_note()}; encode+3 stages+decode, no save")
    add_ratio(report, "batch row ratio (graphrun / pure)", t_row, t_pure, "<= 1.05",
              note="graphrun side includes the PNG save")
    # The same question without cross-run noise: the row's wall time over the time its compute
    # nodes (encode, stages, upscales, decode) took inside that very run.
    report.add("batch row / its compute nodes, same run", f"{median(in_run):.4f}", "<= 1.05",
               note=f"the rest is SaveImage ({median(save_ms):.1f} ms) + engine")

    found = find_batch()
    if isinstance(found, str):
        report.add("batch row via engine/batch.py", "n/a", note=found)
        return
    # One row per batch() call, alternating with the row's pure compute as above; each call gets
    # its own folder (a finished row folder would be skipped as done).
    t_batch, t_pure_b = Timing(), Timing()
    t_engine_row: list[float] = []
    for i in range(-1, args.repeats):
        prompt, seed = f"batch {i}: a lighthouse at dusk, oil painting", 300 + i
        rows = [{"prompt": prompt, "seed": seed}]
        folder = out / "batch" / f"call{i + 1}"
        try:
            result, _ = t_batch.measure(lambda: found(graph, rows, folder, progress="none"), keep=i >= 0)
        except Exception as exc:  # noqa: BLE001 - report the reason instead of aborting the benchmark
            report.add("batch row via engine/batch.py", "n/a", note=f"{type(exc).__name__}: {exc}")
            return
        if not result.ok:
            report.add("batch row via engine/batch.py", "n/a",
                       note=f"row failed: {next((r.error for r in result.rows if r.error), '?')}")
            return
        t_pure_b.measure(lambda: plain_image(comp, plain_encode(comp, prompt), negative, seed), keep=i >= 0)
        if i >= 0:
            t_engine_row.append(result.rows[0].seconds)
    report.add("batch row via engine/batch.py", t_batch.ms(),
               note=f"{t_batch.cpu_note()}; 1-row batch() calls; the row itself {median(t_engine_row) * 1000:.1f} ms")
    add_ratio(report, "batch.py row ratio (batch() / pure)", t_batch, t_pure_b, "<= 1.05",
              note=f"pure {t_pure_b.ms()}; whole call incl. manifest, staging, PNG")


def bench_batch_sizes(args: argparse.Namespace, graph: Any, out: Path, report: Report) -> None:
    """--batch-size 1, 4 and 8 on the 3-stage graph: rows/s, and each row's image against its single run."""
    import graphrun
    import numpy as np
    from graphrun.engine.context import RunOptions

    print("\n[3b] batched rows: the 3-stage graph at --batch-size 1, 4, 8", flush=True)
    rows_n = 8
    rates: dict[int, float] = {}
    images: dict[int, dict[str, Any]] = {}
    for size in (1, 4, 8):
        # The same rows each time; a fresh Runner with warm models (loaded by one row first) so that no
        # sampler result comes from an earlier size's cache.
        runner = graphrun.Runner(RunOptions(output_dir=out / f"bs{size}"))
        fresh = graphrun.load(GRAPH, runner=runner)
        fresh.run(prompt="warm up", seed=9999)
        rows = [{"id": f"r{i}", "prompt": f"row {i}: a lighthouse at dusk " + "and waves " * i, "seed": 500 + i}
                for i in range(rows_n)]
        started = time.perf_counter()
        result = graphrun.batch(fresh, rows, out / f"bs{size}" / "rows", progress="none", batch_size=size)
        elapsed = time.perf_counter() - started
        if not result.ok:
            report.add(f"batch-size {size}", "n/a", note=next((r.error for r in result.rows if r.error), "?"))
            return
        rates[size] = rows_n / elapsed
        images[size] = {r.id: png_pixels(r.files[0]).astype(np.int16) for r in result.rows}
        report.add(f"3-stage rows/s at --batch-size {size}", f"{rates[size]:.3f}", note=f"{rows_n} rows")
    for size in (4, 8):
        diffs = [np.abs(images[size][k] - images[1][k]) for k in images[1]]
        worst = max(int(d.max()) for d in diffs)
        same = sum(bool((d == 0).all()) for d in diffs)
        report.add(f"batch-size {size} / batch-size 1 rows/s", f"{rates[size] / rates[1]:.2f}", ">= 1.3 at 8")
        report.add(f"batch-size {size} images vs single rows", f"max {worst}/255",
                   "<= 1/255", note=f"{same} of {len(diffs)} bit-identical")


def bench_cached_rerun(args: argparse.Namespace, graph: Any, report: Report) -> None:
    print("\n[4] unchanged re-run (everything but SaveImage from the cache)", flush=True)
    graph.run(seed=7)
    totals: list[float] = []
    without_save: list[float] = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = graph.run(seed=7)
        elapsed = time.perf_counter() - t0
        totals.append(elapsed)
        without_save.append(elapsed - sum(result.seconds.values()))
    report.add("unchanged re-run (cache)", f"{median(totals) * 1000:.2f} ms", note="SaveImage still writes a PNG")
    report.add("unchanged re-run without the SaveImage body", f"{median(without_save) * 1000:.2f} ms")


def bench_cli(args: argparse.Namespace, out: Path, report: Report) -> None:
    print("\n[5] cold CLI (fresh processes)", flush=True)
    repeats = max(1, min(args.repeats, 3))
    baseline, _ = time_command([sys.executable, "-c", "pass"], repeats, REPO)
    report.add("python startup (baseline)", f"{baseline * 1000:.0f} ms")
    cli = graphrun_command()
    seconds, proc = time_command(cli + ["validate", str(GRAPH)], repeats, REPO)
    report.add_timing("cold `graphrun validate graphs/zimage_3stage.yaml`", seconds, proc)
    # A new -o each time: convert never overwrites an existing file.
    seconds, proc = time_command(
        lambda k: cli + ["convert", str(COMFY_API), "-o", str(out / f"converted_{k}.yaml")], repeats, REPO
    )
    report.add_timing("cold `graphrun convert legacy-zimage-3stage.api.json`", seconds, proc)
    # Does validating pull in torch? (It should not: `validate` must start fast and work without it.)
    probe = (
        "import contextlib, io, json, sys; from graphrun.engine.cli import main\n"
        "with contextlib.redirect_stderr(io.StringIO()): main(['validate', sys.argv[1]])\n"
        "print(json.dumps({'torch': 'torch' in sys.modules}))"
    )
    proc = subprocess.run([sys.executable, "-c", probe, str(GRAPH)], capture_output=True, text=True, cwd=REPO)
    if proc.returncode == 0:
        imported = json.loads(proc.stdout.strip().splitlines()[-1])["torch"]
        report.add("engine CLI/validate imports torch", "yes" if imported else "no")


# A fresh interpreter imports these one after another and prints the seconds each step added: the
# import chain of a cold 3-stage run, in the order the loaders meet it (each step pays only for what
# the earlier ones left out).
IMPORT_CHAIN: tuple[tuple[str, str], ...] = (
    ("torch", "import torch"),
    ("torch._dynamo (diffusers and transformers import it)", "import torch._dynamo"),
    ("transformers Qwen3Model", "from transformers import Qwen3Model"),
    ("scipy.stats (diffusers' schedulers import it)", "import scipy.stats"),
    ("peft (diffusers imports it when installed)", "import peft"),
    ("diffusers ZImageTransformer2DModel + AutoencoderKL", "from diffusers import ZImageTransformer2DModel, AutoencoderKL"),
    ("graphrun loaders + samplers (and the rest of their imports)",
     "import graphrun.nodes.zimage.loading, graphrun.nodes.sampling.pipeline"),
)
IMPORT_CHAIN_PROBE = """
import json, sys, time
steps = json.loads(sys.argv[1])
seconds = []
for code in steps:
    t0 = time.perf_counter()
    try:
        exec(code)
    except ImportError:
        seconds.append(None)
        continue
    seconds.append(time.perf_counter() - t0)
print(json.dumps(seconds))
"""
SAMPLING_TYPES = ("Sampler", "SamplerCustom", "KSampler")


def add_cold(report: Report, label: str, times: list[float], proc: subprocess.CompletedProcess) -> None:
    if proc.returncode != 0:
        report.add(label, "n/a", note=failure_reason(proc))
    else:
        report.add(label, f"{median(times) * 1000:.0f} ms", note=f"best of {len(times)}: {min(times) * 1000:.0f} ms")


def bench_cold_start(args: argparse.Namespace, out: Path, report: Report) -> None:
    """Fresh processes: the commands that run no model, the tiny 3-stage run with where its time goes,
    and the import chain behind its first loader."""
    print("\n[0] cold start (fresh processes; 1 thread)", flush=True)
    repeats = max(1, min(args.repeats, 5))
    cli = graphrun_command()
    for label, argv in (("--help", ["--help"]), ("nodes", ["nodes"]), ("validate graphs/zimage_3stage.yaml",
                                                                          ["validate", str(GRAPH)])):
        times, proc = cold_times(cli + argv, repeats, REPO)
        add_cold(report, f"cold `graphrun {label}`", times, proc)

    runs = max(1, min(args.repeats, 3))
    times, proc = cold_times(
        lambda k: cli + [str(GRAPH), "--out", str(out / f"cold_{k}"), "--progress", "json"], runs, REPO)
    add_cold(report, "cold `graphrun graphs/zimage_3stage.yaml` (tiny)", times, proc)
    if proc.returncode == 0:
        # The last run's node times (its progress events) against its wall time.
        ends = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
        ends = [e for e in ends if e.get("event") == "end" and e.get("node")]
        seconds = {e["node"]: float(e["seconds"]) for e in ends}
        kinds = {e["node"]: e.get("type", "") for e in ends}
        first = ends[0]["node"] if ends else ""
        sampling = sum(s for n, s in seconds.items() if kinds[n] in SAMPLING_TYPES)
        decode = sum(s for n, s in seconds.items() if kinds[n] == "VAEDecode")
        save = sum(s for n, s in seconds.items() if kinds[n] == "SaveImage")
        rest = sum(seconds.values()) - seconds.get(first, 0.0) - sampling - decode - save
        wall = times[-1]
        report.add(f"  first loader ({first}: torch, diffusers, transformers imports)",
                   f"{seconds.get(first, 0.0) * 1000:.0f} ms")
        report.add("  sampling nodes", f"{sampling * 1000:.0f} ms")
        report.add("  VAEDecode + SaveImage", f"{(decode + save) * 1000:.0f} ms")
        report.add("  other nodes", f"{rest * 1000:.0f} ms")
        report.add("  outside nodes (startup, engine imports, validation, exit)",
                   f"{(wall - sum(seconds.values())) * 1000:.0f} ms", note=f"of {wall * 1000:.0f} ms wall")

    best: list[float | None] = [None] * len(IMPORT_CHAIN)
    for _ in range(max(1, min(args.repeats, 3))):
        proc = subprocess.run([sys.executable, "-c", IMPORT_CHAIN_PROBE, json.dumps([c for _, c in IMPORT_CHAIN])],
                              capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            report.add("import chain", "n/a", note=failure_reason(proc))
            return
        for i, value in enumerate(json.loads(proc.stdout.strip().splitlines()[-1])):
            if value is not None:
                best[i] = value if best[i] is None else min(best[i], value)
    for (label, _), value in zip(IMPORT_CHAIN, best):
        report.add(f"  import {label}", "not installed" if value is None else f"{value * 1000:.0f} ms",
                   note="best of runs; added to the steps above; garbage collector on")
    # What the loaders do instead (graphrun.nodes.zimage.libraries): the same libraries, collector paused.
    paused = "from graphrun.nodes.zimage.libraries import import_model_libraries as f; f()"
    proc = subprocess.run([sys.executable, "-c", IMPORT_CHAIN_PROBE, json.dumps(["import gc", paused])],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode == 0:
        seconds = json.loads(proc.stdout.strip().splitlines()[-1])[1]
        report.add("  import_model_libraries() (collector paused, then frozen)", f"{seconds * 1000:.0f} ms",
                   note="torch + diffusers + transformers + the rest, one run")
    else:
        report.add("  import_model_libraries()", "n/a", note=failure_reason(proc))
    for module in ("networkx", "pydantic", "graphrun.engine.cli"):
        times, proc = cold_times([sys.executable, "-c", f"import {module}"], repeats, REPO)
        add_cold(report, f"  import {module} (alone, incl. startup)", times, proc)


def vm_hwm_kb() -> int | None:
    """This process's own RSS high-water mark (Linux /proc; None elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def child_rss(kind: str, out: Path) -> dict[str, Any]:
    """Run one 3-stage image in a fresh process; its peak RSS (ru_maxrss, KiB on Linux).

    Linux carries ru_maxrss across fork+exec, so a child reports at least its parent's peak at
    fork time: call this before the parent loads anything big (main() runs it first).
    """
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--out", str(out)],
        capture_output=True, text=True, cwd=REPO,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} child failed: {failure_reason(proc)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_rss(args: argparse.Namespace, out: Path, report: Report) -> None:
    print("\n[1] peak RSS, one 3-stage image in a fresh process", flush=True)
    try:
        baseline = child_rss("imports", out / "rss")
        graph = child_rss("graph", out / "rss")
        plain = child_rss("plain", out / "rss")
    except RuntimeError as exc:
        report.add("peak RSS", "n/a", note=str(exc))
        return
    mib = 1024.0
    report.add("peak RSS, imports only (torch+diffusers+graphrun)", f"{baseline['maxrss_kb'] / mib:.0f} MiB")
    report.add("peak RSS, 3-stage graph", f"{graph['maxrss_kb'] / mib:.0f} MiB", note=f"{graph['seconds']:.1f} s")
    report.add("peak RSS, plain script", f"{plain['maxrss_kb'] / mib:.0f} MiB", note=f"{plain['seconds']:.1f} s")
    report.add("peak RSS ratio (graph / plain)", f"{graph['maxrss_kb'] / plain['maxrss_kb']:.3f}",
               note=f"difference {(graph['maxrss_kb'] - plain['maxrss_kb']) / mib:+.1f} MiB")
    if graph.get("hwm_kb") and plain.get("hwm_kb"):
        # VmHWM is per address space (reset by exec): a cross-check that nothing was inherited.
        report.add("peak RSS ratio by VmHWM (graph / plain)", f"{graph['hwm_kb'] / plain['hwm_kb']:.3f}",
                   note=f"{graph['hwm_kb'] / mib:.0f} vs {plain['hwm_kb'] / mib:.0f} MiB")


def chain_document(length: int) -> dict[str, Any]:
    nodes: dict[str, Any] = {"n0": {"type": "Const", "value": 1}}
    for i in range(1, length - 1):
        nodes[f"n{i}"] = {"type": "Scale", "x": f"n{i - 1}", "factor": 1.0}
    nodes[f"n{length - 1}"] = {"type": "Collect", "x": f"n{length - 2}", "name": "chain"}
    return {"graph": "chain", "nodes": nodes}


def bench_chain(args: argparse.Namespace, out: Path, report: Report, length: int = 1000) -> None:
    """Executor cost per node: a chain of trivial nodes, so nearly all time is the engine's."""
    import graphrun
    from graphrun.engine.context import RunOptions
    from graphrun.engine.node import make_registry

    print(f"\n[6] executor overhead on a chain of {length} trivial nodes", flush=True)
    registry = make_registry([TEST_NODES], builtins=False)
    document = chain_document(length)
    repeats = max(3, args.repeats)
    bind_times: list[float] = []
    cold: list[float] = []
    cold_outside: list[float] = []
    cached: list[float] = []
    for i in range(repeats + 1):  # the first round warms imports and code paths
        graph = graphrun.load(document, registry=registry,
                              runner=graphrun.Runner(RunOptions(output_dir=out / "chain")))
        t0 = time.perf_counter()
        bound = graph.bind()
        t_bind = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = graph.runner.run(bound)
        t_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = graph.runner.run(bound)
        t_cached = time.perf_counter() - t0
        if len(again.cached) != length - 1:
            raise RuntimeError(f"expected {length - 1} cached nodes on the re-run, got {len(again.cached)}")
        if i > 0:
            bind_times.append(t_bind)
            cold.append(t_cold)
            cold_outside.append(t_cold - sum(result.seconds.values()))
            cached.append(t_cached)
    us = 1e6 / length
    report.add("chain: validate+bind per node", f"{median(bind_times) * us:.1f} us")
    report.add("chain: cold run per node", f"{median(cold) * us:.1f} us",
               note=f"{median(cold_outside) * us:.1f} us outside node bodies")
    report.add("chain: cached re-run per node", f"{median(cached) * us:.1f} us")


def bench_stages(per_node: dict[str, list[float]], report: Report) -> None:
    print("\n[7] per-stage times of the 3-stage run (warm, new seed; RunResult.seconds)", flush=True)
    for node_id, values in per_node.items():
        report.add(f"stage {node_id}", f"{median(values) * 1000:.1f} ms")


# The tiny model's smallest graph: 64x64, 2 steps (tests/test_batch.py's TINY).
RAY_GRAPH = {
    "params": {"prompt": {"type": "STRING", "default": "a fox"}, "seed": {"type": "INT", "default": 1}},
    "nodes": {
        "zimage": {"type": "LoadZImage", "path": "tiny"},
        "positive": {"type": "TextEncode", "clip": "zimage.clip", "text": "$prompt"},
        "negative": {"type": "ConditioningZeroOut", "conditioning": "positive"},
        "empty": {"type": "EmptyLatent", "width": 64, "height": 64},
        "sample": {"type": "Sampler", "model": "zimage.model", "positive": "positive", "negative": "negative",
                   "latent": "empty", "seed": "$seed", "steps": 2, "cfg": 1.0, "sampler": "euler",
                   "scheduler": "simple"},
        "decode": {"type": "VAEDecode", "vae": "zimage.vae", "latent": "sample"},
        "save": {"type": "SaveImage", "images": "decode", "filename_prefix": "img"},
    },
}


def steady_rate(times: list[float], warm: int) -> float:
    """Rows per second between the ``warm``-th finished row and the last (commit times, sorted):
    the first rows carry each worker's start and model load."""
    if len(times) <= warm + 1 or times[-1] <= times[warm]:
        return float("nan")
    return (len(times) - 1 - warm) / (times[-1] - times[warm])


_SPIN = (
    "import time, torch\n"
    "torch.set_num_threads(1)\n"
    "a = torch.randn(256, 256)\n"
    "t = time.perf_counter()\n"
    "for _ in range(4000):\n"
    "    a @ a\n"
    "print(time.perf_counter() - t)\n"
)


def parallel_ceiling() -> float:
    """How much more two single-threaded torch processes get done than one, on this machine now:
    the most two workers could gain (a VM's cores may be shared with other guests)."""
    def spin(count: int) -> float:
        procs = [subprocess.Popen([sys.executable, "-c", _SPIN], stdout=subprocess.PIPE, text=True)
                 for _ in range(count)]
        return max(float(proc.communicate()[0]) for proc in procs)

    alone = spin(1)
    return 2 * alone / spin(2)


def bench_ray(args: argparse.Namespace, out: Path, report: Report) -> None:
    """Ray rows/s with 1 and 2 local workers in steady state; startup reported separately."""
    from datetime import datetime

    import yaml

    print("\n[8] Ray batch: 1 vs 2 local workers (1 thread each), tiny 64x64 2-step graph", flush=True)
    found = find_batch()
    if isinstance(found, str):
        report.add("Ray batch", "n/a", note=found)
        return
    try:
        import ray
    except ImportError:
        report.add("Ray batch", "n/a", note="Ray is not installed: pip install graphrun[ray]")
        return
    graph = out / "ray" / "graph.yaml"
    graph.parent.mkdir(parents=True, exist_ok=True)
    graph.write_text(yaml.safe_dump(RAY_GRAPH))
    started = time.perf_counter()
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    report.add("Ray start (local cluster)", f"{time.perf_counter() - started:.1f} s")
    rates: dict[int, float] = {}
    ceilings = [parallel_ceiling()]
    try:
        for workers in (1, 2):
            rows = [{"prompt": f"ray {workers}: a lighthouse, row {i}", "seed": i} for i in range(args.ray_rows)]
            folder = out / "ray" / f"workers{workers}"
            started = time.perf_counter()
            start_wall = time.time()
            result = found(graph, rows, folder, ray=True, workers=workers, cpus_per_worker=1, progress="none")
            total = time.perf_counter() - started
            if not result.ok:
                report.add(f"Ray rows/s, {workers} worker(s)", "n/a",
                           note=f"row failed: {next((r.error for r in result.rows if r.error), '?')}")
                return
            lines = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
            times = sorted(datetime.fromisoformat(line["time"]).timestamp() for line in lines)
            warm = 2 * workers  # each worker's first row loads the models; the next may wait behind it
            rates[workers] = steady_rate(times, warm)
            report.add(f"Ray {workers} worker{'s' if workers > 1 else ''}: startup to first row",
                       f"{times[0] - start_wall:.1f} s", note="actors start, load the model, run one row")
            report.add(f"Ray {workers} worker{'s' if workers > 1 else ''}: steady rows/s", f"{rates[workers]:.1f}",
                       note=f"rows {warm + 1}..{len(times)} of {len(times)}; whole batch {total:.1f} s")
    finally:
        ray.shutdown()
    ceilings.append(parallel_ceiling())
    report.add("Ray 2 workers / 1 worker, steady rows/s", f"{rates[2] / rates[1]:.2f}", ">= 1.6",
               note=f"{os.cpu_count()} CPUs; the driver commits every row (rename, fsync, manifest line)")
    report.add("this machine: 2 torch processes / 1 (before, after)", " / ".join(f"{c:.2f}" for c in ceilings),
               note="the most 2 workers can gain here; below 2 when the cores are shared")


def profile_run(graph: Any) -> None:
    """cProfile one warm 3-stage run; print graphrun's own frames by self time and cumulative time."""
    print("\n[profile] one warm 3-stage run, graphrun frames only", flush=True)
    profiler = cProfile.Profile()
    profiler.enable()
    graph.run(seed=999)
    profiler.disable()
    for order in ("tottime", "cumulative"):
        buffer = io.StringIO()
        stats = pstats.Stats(profiler, stream=buffer)
        stats.sort_stats(order).print_stats(re.escape(str(REPO)) + r"/(engine|nodes)/", 15)
        print(buffer.getvalue())


# ---------------------------------------------------------------------------------------------------
# Child processes (peak RSS)


def run_child(kind: str, out: Path) -> None:
    import torch

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if kind == "imports":
        import diffusers  # noqa: F401
        import transformers  # noqa: F401

        import graphrun  # noqa: F401
        from graphrun.nodes.sampling import pipeline  # noqa: F401
    elif kind == "graph":
        graph = new_graph(out)
        graph.run()
    elif kind == "plain":
        comp = load_components()
        image = plain_image(comp, plain_encode(comp, DEFAULT_PROMPT), plain_encode(comp, DEFAULT_NEGATIVE), 42)
        plain_save(image, out / "plain_00001_.png", "{}")
    else:
        raise SystemExit(f"unknown child kind {kind!r}")
    seconds = time.perf_counter() - t0
    print(json.dumps({
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "hwm_kb": vm_hwm_kb(), "seconds": seconds,
    }))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=4, help="timed runs per figure (median; default 4)")
    parser.add_argument("--profile", action="store_true", help="cProfile one warm 3-stage run")
    parser.add_argument("--skip", action="append", default=[], choices=["cli", "rss", "chain", "batch", "ray", "cold"],
                        help="leave a section out (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the output folder (printed)")
    parser.add_argument("--ray-rows", type=int, default=150, help="rows per Ray batch (default 150)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args.child, Path(args.out))
        return 0

    out = Path(tempfile.mkdtemp(prefix="graphrun-bench-"))
    report = Report()
    started = time.perf_counter()
    print(f"graphrun bench: tiny Z-Image on CPU, 1 thread, median of {args.repeats}")
    try:
        # First, while this process is still small: children inherit its ru_maxrss (see child_rss).
        if "rss" not in args.skip:
            bench_rss(args, out, report)
        # Fresh processes too, measured while this one is idle and holds no model.
        if "cold" not in args.skip:
            bench_cold_start(args, out, report)
        import torch

        torch.set_num_threads(1)
        graph, comp, per_node = bench_engine_overhead(args, out, report)
        if args.profile:
            profile_run(graph)
        if "batch" not in args.skip:
            bench_batch_row(args, graph, comp, out, report)
            bench_batch_sizes(args, graph, out, report)
        bench_cached_rerun(args, graph, report)
        if "cli" not in args.skip:
            bench_cli(args, out, report)
        if "chain" not in args.skip:
            bench_chain(args, out, report)
        bench_stages(per_node, report)
        if "ray" not in args.skip:
            bench_ray(args, out, report)
    finally:
        if args.keep:
            print(f"\noutputs kept in {out}")
        else:
            shutil.rmtree(out, ignore_errors=True)
    print(f"\n== graphrun bench (tiny Z-Image, CPU, 1 thread, median of {args.repeats}; "
          f"{time.perf_counter() - started:.0f} s) ==")
    print(report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
