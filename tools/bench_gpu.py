"""GPU benchmark: graphs/zimage_3stage.yaml with a full-size Z-Image (random bf16 weights) through
graphrun, against a diffusers-style direct loop doing the same math, and against the FLOP floor.

    python tools/bench_gpu.py                 # one CUDA GPU; under 5 minutes on an H200
    python tools/bench_gpu.py --repeats 5
    python tools/bench_gpu.py --dry-run       # the whole flow at tiny scale on the CPU (no GPU needed)

What is built (no files, no downloads): the Z-Image transformer with its real configuration
(nodes/zimage/configs/z_image_turbo_transformer.json: dim 3840, 30 layers, 30 heads, 2+2 refiner
layers), a Qwen3-4B-shaped text encoder and the Flux VAE, all in bf16 with random weights written
directly on the GPU (modules are created on the meta device, then each parameter is allocated on
the GPU and filled in place; no CPU initialisation of 6B parameters). A tiny plugin node
(``BenchZImage``) hands these parts to the shipped graph in place of ``LoadZImage``.

Per stage it reports graphrun's time (CUDA events at the engine's node start/end progress events),
the reference's time (CUDA events around each stage of a hand-written loop with the same sigmas,
noise, guidance and euler-ancestral step), their ratio, and the floor: the transformer FLOPs of the
stage (counted analytically at that stage's token count, cross-checked against
torch.utils.flop_counter) divided by a bf16 matmul rate measured on the same GPU. Every figure is
measured in this run; nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphrun.engine.context import Context
from graphrun.engine.node import node
from graphrun.nodes.models import ClipHandle, ModelHandle, VaeHandle, ZImageOutputs

REPO = Path(__file__).resolve().parents[1]
GRAPH = REPO / "graphs" / "zimage_3stage.yaml"
CONFIG_DIR = REPO / "nodes" / "zimage" / "configs"
PARTS_KEY = "bench_gpu.parts"

# The 3-stage work, for the reference loop (kept literal, as a hand-written script would; the
# per-stage agreement check printed below shows whether it still matches the graph).
EMPTY_SIZE = (176, 224)  # width, height
SHIFT = 3.0
STAGES = ((9, 2.0, 1.0), (16, 1.0, 0.7), (16, 1.0, 0.6))  # steps, cfg, denoise; euler_ancestral, simple
UP1_SIZE = (336, 432)
UP2_SCALE = 2.0
NEGATIVE = "blurry, lowres, watermark"
CAPTION_MULTIPLE = 32  # diffusers' SEQ_MULTI_OF: captions and image tokens are padded to it
ADALN_EMBED_DIM = 256  # diffusers' ADALN_EMBED_DIM


@node("BenchZImage", category="loaders", keep=True)
def bench_zimage(ctx: Context) -> ZImageOutputs:
    """The Z-Image parts bench_gpu.py built in memory, from the Runner's shared store (no files)."""
    from graphrun.nodes.zimage.network import ZImageDenoiser

    parts = ctx.shared[PARTS_KEY]
    return ZImageOutputs(
        ModelHandle(ZImageDenoiser.from_parts(parts)),
        ClipHandle(parts.text_encoder, parts.tokenizer),
        VaeHandle(parts.vae),
    )


# ---------------------------------------------------------------------------------------------------
# Building the model


def model_configs(scale: str) -> dict[str, dict[str, Any]]:
    """Transformer / text encoder / VAE configs: the real ones (full) or the tiny model's."""
    if scale == "full":
        def read(name: str) -> dict[str, Any]:
            raw = json.loads((CONFIG_DIR / name).read_text("utf-8"))
            return {k: v for k, v in raw.items() if not k.startswith("_")}

        return {
            "transformer": read("z_image_turbo_transformer.json"),
            "text_encoder": read("qwen3_4b.json"),
            "vae": read("flux_vae.json"),
        }
    from graphrun.nodes.zimage import tiny

    return {
        "transformer": dict(tiny.TRANSFORMER_CONFIG),
        "text_encoder": dict(tiny.TEXT_ENCODER_CONFIG),
        "vae": dict(tiny.VAE_CONFIG),
    }


def materialize(module: Any, device: Any, dtype: Any, seed: int) -> None:
    """Give a meta-device module real parameters on ``device``, filled in place there.

    Matrices get N(0, 1/fan_in) (activations keep their scale through 30 layers of random
    weights), norm weights 1 and biases 0. Buffers were built on the CPU (init_empty_weights
    leaves them alone: Qwen3's RoPE inv_freq must be computed, not left uninitialised) and keep
    their dtype when moved.
    """
    import torch

    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            for name, param in list(sub._parameters.items()):
                if param is None:
                    continue
                data = torch.empty(param.shape, dtype=dtype, device=device)
                if param.ndim <= 1:
                    data.fill_(0.0 if name == "bias" else 1.0)
                else:
                    data.normal_(0.0, math.prod(param.shape[1:]) ** -0.5, generator=generator)
                sub._parameters[name] = torch.nn.Parameter(data, requires_grad=False)
    module.to(device)
    module.eval()
    module.requires_grad_(False)


def build_parts(scale: str, device: Any, dtype: Any, seed: int = 0) -> Any:
    """ZImageParts with random weights at ``scale`` ('full' or 'tiny'), created directly on ``device``."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    from graphrun.nodes.runtime import ensure_fp32_compute
    from graphrun.nodes.zimage.loading import ZImageParts
    from graphrun.nodes.zimage.tiny import build_tokenizer

    configs = model_configs(scale)
    with init_empty_weights():
        transformer = ZImageTransformer2DModel.from_config(configs["transformer"])
        text_encoder = Qwen3Model(Qwen3Config(**configs["text_encoder"]))
        vae = AutoencoderKL.from_config(configs["vae"])
    for offset, module in enumerate((transformer, text_encoder, vae)):
        materialize(module, device, dtype, seed + offset)
    # Stored in bf16, computed in fp32: what graphrun's loaders do with a bf16 text encoder.
    ensure_fp32_compute(text_encoder)
    # The byte-level tokenizer of the tiny model: every id fits Qwen3's vocabulary, so no files are
    # needed; prompts encode to about one token per byte (their lengths are printed).
    return ZImageParts(transformer, text_encoder, build_tokenizer(), vae, device, dtype, source=f"random-{scale}")


def parameter_count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_bytes(module: Any) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------
# Timing


class Clock:
    """CUDA events on a GPU (no host sync while recording), perf_counter on the CPU."""

    def __init__(self, device: Any) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        import torch

        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, start: Any, end: Any) -> float:
        if self.cuda:
            end.synchronize()
            return float(start.elapsed_time(end))
        return (end - start) * 1000.0

    def sync(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()


class NodeTimer:
    """A graphrun progress reporter that marks each node's start and end on the clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.marks: dict[str, list[Any]] = {}

    def __call__(self, event: Any) -> None:
        if event.kind == "start":
            self.marks[event.node] = [self.clock.mark()]
        elif event.kind == "end" and event.node in self.marks:
            self.marks[event.node].append(self.clock.mark())

    def take(self) -> dict[str, float]:
        times = {n: self.clock.ms(m[0], m[1]) for n, m in self.marks.items() if len(m) == 2}
        self.marks = {}
        return times


# ---------------------------------------------------------------------------------------------------
# The reference: a diffusers-style direct loop with the same math


@dataclass
class Reference:
    parts: Any
    clock: Clock
    marks: dict[str, list[Any]] = field(default_factory=dict)

    def _mark(self, name: str) -> None:
        self.marks.setdefault(name, []).append(self.clock.mark())

    def encode(self, text: str) -> Any:
        from graphrun.nodes.zimage.text import encode_prompt

        return encode_prompt((self.parts.text_encoder, self.parts.tokenizer), text)  # [1, L, D] fp32 CPU

    def _denoised(self, x: Any, sigma: Any, captions: list[Any]) -> Any:
        """D = x - sigma * v, v = -transformer(x, t = 1 - sigma): one forward for len(captions) rows."""
        import torch

        n = len(captions)
        height, width = x.shape[-2:]
        xs = torch.cat([x] * n) if n > 1 else x
        sigmas = torch.cat([sigma] * n) if n > 1 else sigma
        latents = list(xs.to(dtype=self.parts.dtype).unsqueeze(2).unbind(0))
        t = 1.0 - sigmas
        out = self.parts.transformer(latents, t, captions, return_dict=False)[0]
        v = -torch.stack([o.float() for o in out], dim=0).squeeze(2)[:, :, :height, :width]
        return xs - sigmas.view(n, 1, 1, 1) * v

    def stage(self, latent: Any, positive: Any, negative: Any, seed: int, steps: int, cfg: float,
              denoise: float) -> Any:
        """One KSampler stage (euler_ancestral, simple) on a raw latent; returns the raw latent (CPU)."""
        import torch

        from graphrun.nodes.sampling.noise import prepare_noise
        from graphrun.nodes.sampling.schedules import FLUX_LATENT, FlowModelSampling, ksampler_sigmas

        device, dtype = self.parts.device, self.parts.dtype
        ms = FlowModelSampling(shift=SHIFT)
        sigmas = ksampler_sigmas(ms, "simple", steps, denoise, "euler_ancestral")
        noise = prepare_noise(latent, seed)
        z = latent.to(device=device, dtype=torch.float32)
        if bool(torch.count_nonzero(z)):
            z = FLUX_LATENT.process_in(z)
        x = ms.noise_scaling(sigmas[0], noise.to(device=device, dtype=torch.float32), z)
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        pos = positive.to(device=device, dtype=dtype)[0]
        neg = negative.to(device=device, dtype=dtype)[0]
        guided = not math.isclose(cfg, 1.0)
        ones = x.new_ones([x.shape[0]])
        with torch.no_grad():
            for i in range(len(sigmas) - 1):
                sigma, sigma_next = sigmas[i], sigmas[i + 1]
                s = sigma * ones
                if not guided:
                    denoised = self._denoised(x, s, [pos])
                elif pos.shape == neg.shape:
                    d_neg, d_pos = self._denoised(x, s, [neg, pos]).chunk(2)  # one batch, negative first
                    denoised = d_neg + (d_pos - d_neg) * cfg
                else:
                    d_pos = self._denoised(x, s, [pos])
                    d_neg = self._denoised(x, s, [neg])
                    denoised = d_neg + (d_pos - d_neg) * cfg
                if sigma_next == 0:
                    x = denoised
                    continue
                # Rectified-flow ancestral Euler (eta 1), scalars on the CPU as in graphrun/ComfyUI.
                sigma_down = sigma_next * (1 + (sigma_next / sigma - 1))
                alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
                renoise = (sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2) ** 0.5
                ratio = sigma_down / sigma
                x = ratio * x + (1 - ratio) * denoised
                x = (alpha_next / alpha_down) * x + torch.randn(
                    x.shape, dtype=x.dtype, device=x.device, generator=generator) * 1.0 * renoise
        x = ms.inverse_noise_scaling(sigmas[-1], x)
        return FLUX_LATENT.process_out(x.float()).to(latent.device)

    def decode(self, latent: Any) -> Any:
        import torch

        vae = self.parts.vae
        with torch.no_grad():
            pixels = vae.decode(latent.to(device=self.parts.device, dtype=self.parts.dtype), return_dict=False)[0]
        return torch.clamp((pixels.float() + 1.0) / 2.0, 0.0, 1.0).permute(0, 2, 3, 1).cpu()

    def run(self, prompt: str, negative: Any, seed: int, png: Path) -> tuple[Any, dict[str, Any]]:
        """The whole 3-stage image; per-stage marks in ``self.marks``; returns (image, stage latents)."""
        import torch
        from PIL import Image

        from graphrun.nodes.image import to_uint8
        from graphrun.nodes.resample import latent_upscale, latent_upscale_by

        self.marks = {}
        latents: dict[str, Any] = {}
        self._mark("positive")
        positive = self.encode(prompt)
        self._mark("positive")
        width, height = EMPTY_SIZE
        latent = torch.zeros([1, 16, height // 8, width // 8], dtype=torch.float32)
        for index, (steps, cfg, denoise) in enumerate(STAGES, 1):
            if index == 2:
                latent = latent_upscale(latent, "nearest-exact", UP1_SIZE[0], UP1_SIZE[1], "disabled")
            elif index == 3:
                latent = latent_upscale_by(latent, "nearest-exact", UP2_SCALE)
            self._mark(f"stage{index}")
            latent = self.stage(latent, positive, negative, seed, steps, cfg, denoise)
            self._mark(f"stage{index}")
            latents[f"stage{index}"] = latent
        self._mark("decode")
        image = self.decode(latent)
        self._mark("decode")
        self._mark("save")
        Image.fromarray(to_uint8(image[0])).save(png, format="PNG", compress_level=4)
        self._mark("save")
        return image, latents

    def take(self) -> dict[str, float]:
        return {name: self.clock.ms(m[0], m[1]) for name, m in self.marks.items()}


# ---------------------------------------------------------------------------------------------------
# FLOPs and the floor


def padded(n: int) -> int:
    return n + (-n) % CAPTION_MULTIPLE


def transformer_flops(config: dict[str, Any], latent_hw: tuple[int, int], caption_tokens: int, rows: int = 1) -> int:
    """FLOPs of one Z-Image transformer forward (multiply-add = 2), batch ``rows``.

    Image tokens (latent / patch^2) and caption tokens are each padded to a multiple of 32, as the
    model does; the noise refiner runs on image tokens, the context refiner on caption tokens, the
    main layers on both. Per layer and token: q, k, v, out projections (n_kv_heads == n_heads here)
    and the SwiGLU FFN (hidden int(dim/3*8)); attention adds 4*N^2*dim. Embedders, the final layer
    and the per-sample adaLN modulations are included; norms, RoPE and elementwise ops are not.
    """
    dim = int(config["dim"])
    heads, kv_heads = int(config["n_heads"]), int(config["n_kv_heads"])
    head_dim = dim // heads
    hidden = int(dim / 3 * 8)
    patch = int(config["all_patch_size"][0])
    f_patch = int(config["all_f_patch_size"][0])
    patch_dim = f_patch * patch * patch * int(config["in_channels"])
    n_img = padded((latent_hw[0] // patch) * (latent_hw[1] // patch))
    n_cap = padded(caption_tokens)
    n_all = n_img + n_cap
    adaln = min(dim, ADALN_EMBED_DIM)

    per_token = 2 * (dim * dim + 2 * dim * kv_heads * head_dim + dim * dim) + 2 * 3 * dim * hidden

    def layers(count: int, tokens: int, modulated: bool) -> int:
        attention = 4 * tokens * tokens * dim
        modulation = 2 * adaln * 4 * dim if modulated else 0
        return count * (tokens * per_token + attention + modulation)

    refiners = int(config["n_refiner_layers"])
    flops = (
        layers(refiners, n_img, True)
        + layers(refiners, n_cap, False)
        + layers(int(config["n_layers"]), n_all, True)
        + 2 * n_img * patch_dim * dim  # x_embedder
        + 2 * n_cap * int(config["cap_feat_dim"]) * dim  # cap_embedder
        + 2 * n_all * dim * patch_dim + 2 * adaln * dim  # final layer + its adaLN
        + 2 * (256 * 1024 + 1024 * adaln)  # timestep embedder MLP
    )
    return rows * flops


def meta_transformer(config: dict[str, Any]) -> Any:
    """The transformer on the meta device: shapes only, no memory (for counting FLOPs)."""
    import torch
    from diffusers import ZImageTransformer2DModel

    with torch.device("meta"):
        return ZImageTransformer2DModel.from_config(config)


def counted_flops(transformer: Any, latent_hw: tuple[int, int], caption_tokens: int) -> int:
    """FLOPs of one forward under torch.utils.flop_counter, run on the meta device (no compute, no
    memory) with the math attention kernel, whose matmuls the counter sees."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = transformer.config
    device = torch.device("meta")
    latent = torch.zeros(int(cfg.in_channels), 1, *latent_hw, device=device)
    caption = torch.zeros(caption_tokens, int(cfg.cap_feat_dim), device=device)
    t = torch.full((1,), 0.5, device=device)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        transformer([latent], t, [caption], return_dict=False)
    return int(counter.get_total_flops())


def matmul_rate(device: Any, dtype: Any, size: int, iters: int, clock: Clock) -> float:
    """Measured FLOP/s of a square ``size`` matmul in ``dtype`` (the best of three timed batches)."""
    import torch

    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    best = float("inf")
    for _ in range(3):
        clock.sync()
        start = clock.mark()
        for _ in range(iters):
            torch.matmul(a, b)
        end = clock.mark()
        best = min(best, clock.ms(start, end) / 1000.0)
    return 2.0 * size**3 * iters / best


def copy_bandwidth(device: Any, nbytes: int, clock: Clock) -> float:
    """Measured bytes/s moved by a device-to-device copy (read + write counted)."""
    import torch

    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(5):
        clock.sync()
        start = clock.mark()
        dst.copy_(src)
        end = clock.mark()
        best = min(best, clock.ms(start, end) / 1000.0)
    return 2.0 * src.numel() * src.element_size() / best


# ---------------------------------------------------------------------------------------------------
# Graph side


def merkle_keys(bound: Any) -> dict[str, str]:
    """The cache key of every planned node, as the executor computes them."""
    from graphrun.engine.executor import cache_key, make_plan

    keys: dict[str, str] = {}
    for node_id in make_plan(bound).order:
        keys[node_id] = cache_key(bound.nodes[node_id], keys)
    return keys


def load_graph(parts: Any, out_dir: Path, timer: NodeTimer) -> Any:
    """graphs/zimage_3stage.yaml with LoadZImage swapped for BenchZImage (the parts built here)."""
    import yaml

    import graphrun
    from graphrun.engine.context import RunOptions
    from graphrun.engine.node import make_registry

    document = yaml.safe_load(GRAPH.read_text("utf-8"))
    document["nodes"]["zimage"] = {"type": "BenchZImage"}
    registry = make_registry()
    registry.add_module(sys.modules[__name__])
    options = RunOptions(device=str(parts.device), output_dir=out_dir)
    runner = graphrun.Runner(options, reporter=timer)
    runner.shared[PARTS_KEY] = parts
    return graphrun.load(document, registry=registry, runner=runner)


# ---------------------------------------------------------------------------------------------------
# Main


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny model on the CPU: exercise the whole flow without a GPU")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per side after one warm-up (median; default 3, dry run 1)")
    parser.add_argument("--prompt", default="a lighthouse at dusk, oil painting",
                        help="base prompt (a run counter is appended so each run re-encodes it)")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--matmul-size", type=int, default=None, help="square matmul size for the rate (8192; dry run 512)")
    parser.add_argument("--keep", action="store_true", help="keep the written images (folder printed)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.dry_run else 3
    started = time.perf_counter()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(
            "bench_gpu.py needs a CUDA GPU, and none is visible "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}).\n"
            "Run `python tools/bench_gpu.py --dry-run` to exercise the whole flow at tiny scale on the CPU.",
            file=sys.stderr,
        )
        return 2
    if args.dry_run:
        # One CPU thread: OpenMP teams spin-wait for descheduled threads, so on a busy machine
        # multi-threaded CPU timings swing by 10x; the dry run checks the flow, not speed.
        torch.set_num_threads(1)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    scale = "tiny" if args.dry_run else "full"
    device = torch.device("cpu") if args.dry_run else torch.device("cuda")
    clock = Clock(device)
    where = "CPU (dry run)" if args.dry_run else torch.cuda.get_device_name(device)
    print(f"bench_gpu: {scale} Z-Image, {args.dtype}, {where}; torch {torch.__version__}; "
          f"median of {args.repeats}", flush=True)

    t0 = time.perf_counter()
    parts = build_parts(scale, device, dtype)
    clock.sync()
    build_s = time.perf_counter() - t0
    config = model_configs(scale)["transformer"]
    print(f"  built in {build_s:.1f} s: transformer {parameter_count(parts.transformer) / 1e9:.3f} B params, "
          f"text encoder {parameter_count(parts.text_encoder) / 1e9:.3f} B, VAE "
          f"{parameter_count(parts.vae) / 1e6:.1f} M", flush=True)

    # Floor inputs first, while nothing else is running on the device.
    size = args.matmul_size or (512 if args.dry_run else 8192)
    rate = matmul_rate(device, dtype, size, 10 if args.dry_run else 50, clock)
    bandwidth = copy_bandwidth(device, (64 if args.dry_run else 2048) * 1024**2, clock)
    weights = parameter_bytes(parts.transformer)
    print(f"  measured: {args.dtype} matmul {size}^3 at {rate / 1e12:.3g} TFLOP/s; device copy "
          f"{bandwidth / 1e9:.0f} GB/s (transformer weights {weights / 1e9:.2f} GB)", flush=True)

    out = Path(tempfile.mkdtemp(prefix="graphrun-bench-gpu-"))
    timer = NodeTimer(clock)
    graph = load_graph(parts, out / "graph", timer)
    reference = Reference(parts, clock)
    ref_dir = out / "reference"
    ref_dir.mkdir(parents=True)
    negative = reference.encode(NEGATIVE)

    def prompt_for(run: int) -> str:
        return f"{args.prompt} (run {run:03d})"  # same length every run, so token counts are stable

    graph_times: dict[str, list[float]] = {}
    ref_times: dict[str, list[float]] = {}
    walls: dict[str, list[float]] = {"graphrun": [], "reference": []}
    max_diff: dict[str, float] = {}
    try:
        for run in range(-1, args.repeats):  # run -1: warm-up of both sides (kernels, autotuning)
            prompt, seed = prompt_for(run + 1), 1000 + run
            clock.sync()
            t0 = time.perf_counter()
            result = graph.run(prompt=prompt, seed=seed)
            graph_wall = time.perf_counter() - t0
            node_ms = timer.take()
            clock.sync()
            t0 = time.perf_counter()
            _, ref_latents = reference.run(prompt, negative, seed, ref_dir / f"ref_{run + 1:03d}.png")
            clock.sync()
            ref_wall = time.perf_counter() - t0
            stage_ms = reference.take()
            bound = graph.bind(prompt=prompt, seed=seed)
            keys = merkle_keys(bound)
            for name, latent in ref_latents.items():
                cached = graph.runner.cache.get(keys[name])
                if cached is not None:
                    diff = float((cached[0].samples.float() - latent.float()).abs().max())
                    max_diff[name] = max(max_diff.get(name, 0.0), diff)
            label = "warm-up" if run < 0 else f"run {run + 1}"
            print(f"  {label}: graphrun {graph_wall * 1000:.0f} ms, reference {ref_wall * 1000:.0f} ms "
                  f"(executed: {', '.join(result.executed)})", flush=True)
            if run < 0:
                continue
            walls["graphrun"].append(graph_wall * 1000)
            walls["reference"].append(ref_wall * 1000)
            for name, ms in node_ms.items():
                graph_times.setdefault(name, []).append(ms)
            for name, ms in stage_ms.items():
                ref_times.setdefault(name, []).append(ms)

        # Token counts of this run's conditionings, for the FLOP count.
        pos_tokens = int(reference.encode(prompt_for(0)).shape[1])
        neg_tokens = int(negative.shape[1])
        latent_sizes = stage_latent_sizes()
        meta = meta_transformer(config)
        floors: dict[str, float] = {}
        mem_floors: dict[str, float] = {}
        print(f"  caption tokens: positive {pos_tokens}, negative {neg_tokens} (padded to "
              f"{padded(pos_tokens)} / {padded(neg_tokens)})", flush=True)
        for index, ((steps, cfg, _), hw) in enumerate(zip(STAGES, latent_sizes), 1):
            name = f"stage{index}"
            per_pos = transformer_flops(config, hw, pos_tokens)
            per_step = per_pos
            forwards = 1
            if not math.isclose(cfg, 1.0):
                per_step += transformer_flops(config, hw, neg_tokens)
                forwards = 2 if pos_tokens != neg_tokens else 1  # equal lengths share one batched forward
            floors[name] = steps * per_step / rate * 1000
            mem_floors[name] = steps * forwards * weights / bandwidth * 1000
            counted = counted_flops(meta, hw, pos_tokens)
            print(f"  {name}: latent {hw[0]}x{hw[1]}, {padded((hw[0] // 2) * (hw[1] // 2))} image tokens, "
                  f"{steps} steps x {2 if not math.isclose(cfg, 1.0) else 1} evaluations; "
                  f"{per_pos / 1e9:.2f} GFLOP per positive forward (flop_counter: {counted / 1e9:.2f}, "
                  f"ratio {per_pos / counted:.4f}); weight-read floor {mem_floors[name]:.1f} ms; "
                  f"max |graphrun - reference| {max_diff.get(name, float('nan')):.3g}", flush=True)
    finally:
        if args.keep:
            print(f"  images kept in {out}")
        else:
            shutil.rmtree(out, ignore_errors=True)

    if args.dry_run:
        full_size_check(pos_tokens)

    rows: list[tuple[str, float, float, float | None]] = []
    for name, label in (("positive", "text encode"), ("stage1", "stage1"), ("stage2", "stage2"),
                        ("stage3", "stage3"), ("decode", "decode"), ("save", "save (PNG)")):
        rows.append((label, median(graph_times.get(name, [])), median(ref_times.get(name, [])), floors.get(name)))
    sampling_g = sum(median(graph_times.get(f"stage{i}", [])) for i in (1, 2, 3))
    sampling_r = sum(median(ref_times.get(f"stage{i}", [])) for i in (1, 2, 3))
    rows.append(("sampling (3 stages)", sampling_g, sampling_r, sum(floors.values())))
    rows.append(("whole run (wall)", median(walls["graphrun"]), median(walls["reference"]), None))

    print(f"\n== bench_gpu: 3-stage Z-Image ({scale}, {args.dtype}) on {where}; median of {args.repeats}; "
          f"floor = transformer FLOPs / {rate / 1e12:.3g} TFLOP/s; {time.perf_counter() - started:.0f} s ==")
    head = ("stage", "graphrun ms", "reference ms", "ratio", "floor ms", "% of floor")
    cells = [head]
    for label, g_ms, r_ms, floor in rows:
        cells.append((
            label, fmt(g_ms), fmt(r_ms), fmt(g_ms / r_ms if r_ms else None, ".3f"), fmt(floor),
            fmt(100.0 * floor / g_ms if floor is not None and g_ms else None, ".0f"),
        ))
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    for k, c in enumerate(cells):
        print("  ".join(c[0].ljust(widths[0]) if i == 0 else c[i].rjust(widths[i]) for i in range(len(head))))
        if k == 0:
            print("  ".join("-" * w for w in widths))
    return 0


def full_size_check(caption_tokens: int) -> None:
    """Dry run only: build the real-size configs on the meta device (no memory) and check the FLOP
    model against torch.utils.flop_counter at the real sizes, so the GPU run holds no surprises."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import Qwen3Config, Qwen3Model

    configs = model_configs("full")
    transformer = meta_transformer(configs["transformer"])
    with torch.device("meta"):
        text_encoder = Qwen3Model(Qwen3Config(**configs["text_encoder"]))
        vae = AutoencoderKL.from_config(configs["vae"])
    print(f"  full-size configs on the meta device: transformer {parameter_count(transformer) / 1e9:.3f} B, "
          f"text encoder {parameter_count(text_encoder) / 1e9:.3f} B, VAE {parameter_count(vae) / 1e6:.1f} M params")
    for index, hw in enumerate(stage_latent_sizes(), 1):
        analytic = transformer_flops(configs["transformer"], hw, caption_tokens)
        counted = counted_flops(transformer, hw, caption_tokens)
        print(f"  full-size stage{index} forward ({caption_tokens} caption tokens): {analytic / 1e12:.3f} TFLOP "
              f"(flop_counter {counted / 1e12:.3f}, ratio {analytic / counted:.4f})")


def stage_latent_sizes() -> list[tuple[int, int]]:
    """Latent height x width at each stage (the graph's sizes after each upscale)."""
    width, height = EMPTY_SIZE
    first = (height // 8, width // 8)
    second = (UP1_SIZE[1] // 8, UP1_SIZE[0] // 8)
    third = (round(second[0] * UP2_SCALE), round(second[1] * UP2_SCALE))
    return [first, second, third]


if __name__ == "__main__":
    sys.exit(main())
