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
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

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


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Timing:
    """Wall and CPU seconds of repeated runs of one side of a comparison.

    With one compute thread, CPU time hardly moves when other processes load the machine, while
    wall time can swing by 10% or more; both are reported, the wall figures being the headline.
    """

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def measure(self, fn: Callable[[], Any], keep: bool = True) -> tuple[Any, float]:
        """Run ``fn``; record its times when ``keep`` (False for warm-ups). Returns (result, wall)."""
        w0, c0 = time.perf_counter(), time.process_time()
        value = fn()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        if keep:
            self.wall.append(wall)
            self.cpu.append(cpu)
        return value, wall

    def ms(self) -> str:
        return f"{median(self.wall) * 1000:.1f} ms"

    def cpu_note(self) -> str:
        return f"CPU {median(self.cpu) * 1000:.1f} ms"


def add_ratio(report: "Report", label: str, num: Timing, den: Timing, target: str, note: str = "") -> None:
    """The median wall ratio (headline), with the CPU-time ratio and the best-of-N wall ratio."""
    wall = median(num.wall) / median(den.wall)
    cpu = median(num.cpu) / median(den.cpu)
    best = min(num.wall) / min(den.wall)
    extra = f"CPU-time ratio {cpu:.4f}; best-of-{len(num.wall)} wall ratio {best:.4f}"
    report.add(label, f"{wall:.4f}", target, note=f"{extra}; {note}" if note else extra)


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


def merkle_keys(bound: Any) -> dict[str, str]:
    """The cache key of every planned node, computed the way the executor computes them."""
    from graphrun.engine.executor import cache_key, make_plan

    keys: dict[str, str] = {}
    for node_id in make_plan(bound).order:
        keys[node_id] = cache_key(bound.nodes[node_id], keys)
    return keys


def cached_output(graph: Any, node_id: str, **params: Any) -> tuple[Any, ...]:
    """The outputs a node produced in the last run with ``params`` (from the Runner's cache)."""
    keys = merkle_keys(graph.bind(**params))
    outputs = graph.runner.cache.get(keys[node_id])
    if outputs is None:
        raise RuntimeError(f"node '{node_id}' is not in the Runner's cache (did the cache keys change?)")
    return outputs


def components_from_runner(graph: Any) -> Components:
    """The very modules the graph's LoadZImage loaded, so both sides compute with the same weights."""
    model, clip, vae = cached_output(graph, "zimage")
    denoiser = model.denoiser.with_model_sampling(type(model.denoiser.model_sampling)(shift=SHIFT))
    return Components(denoiser, clip.text_encoder, clip.tokenizer, vae.vae)


def png_pixels(path: Path) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


# ---------------------------------------------------------------------------------------------------
# Measurements


@dataclass
class Row:
    label: str
    value: str
    target: str = ""
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, label: str, value: str, target: str = "", note: str = "") -> None:
        self.rows.append(Row(label, value, target, note))
        print(f"  {label}: {value}" + (f"   (target {target})" if target else "") + (f"   {note}" if note else ""),
              flush=True)

    def add_timing(self, label: str, seconds: float, proc: subprocess.CompletedProcess) -> None:
        if proc.returncode == 0:
            self.add(label, f"{seconds * 1000:.0f} ms")
        else:
            self.add(label, "n/a", note=failure_reason(proc))

    def table(self) -> str:
        head = ("measure", "value", "target", "note")
        cells = [head] + [(r.label, r.value, r.target, r.note) for r in self.rows]
        widths = [max(len(c[i]) for c in cells) for i in range(3)]
        lines = []
        for k, c in enumerate(cells):
            lines.append("  ".join(c[i].ljust(widths[i]) for i in range(3)) + "  " + c[3])
            if k == 0:
                lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 4)
        return "\n".join(line.rstrip() for line in lines)


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
    graph.run(seed=1)  # loads the model, encodes the prompts
    load_run = time.perf_counter() - started
    comp = components_from_runner(graph)
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
        graph_image = cached_output(graph, "decode", seed=seed)[0]
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


def graphrun_command() -> list[str]:
    script = Path(sys.executable).with_name("graphrun")
    return [str(script)] if script.exists() else [sys.executable, "-m", "graphrun.engine.cli"]


def time_command(
    cmd: list[str] | Callable[[int], list[str]], repeats: int, cwd: Path
) -> tuple[float, subprocess.CompletedProcess]:
    """Median wall time of a fresh process; ``cmd`` may depend on the repeat (distinct outputs)."""
    times: list[float] = []
    proc: subprocess.CompletedProcess | None = None
    for k in range(repeats):
        args = cmd(k) if callable(cmd) else cmd
        t0 = time.perf_counter()
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            break
    assert proc is not None
    return median(times), proc


def failure_reason(proc: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    # The first line that names an error says more than the last ("run with --debug ...").
    errors = [line for line in lines if "error" in line.lower()]
    line = errors[0] if errors else (lines[-1] if lines else "no output")
    return f"exit {proc.returncode}: {line[:160]}"


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
    parser.add_argument("--skip", action="append", default=[], choices=["cli", "rss", "chain", "batch"],
                        help="leave a section out (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the output folder (printed)")
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
        import torch

        torch.set_num_threads(1)
        graph, comp, per_node = bench_engine_overhead(args, out, report)
        if args.profile:
            profile_run(graph)
        if "batch" not in args.skip:
            bench_batch_row(args, graph, comp, out, report)
        bench_cached_rerun(args, graph, report)
        if "cli" not in args.skip:
            bench_cli(args, out, report)
        if "chain" not in args.skip:
            bench_chain(args, out, report)
        bench_stages(per_node, report)
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
