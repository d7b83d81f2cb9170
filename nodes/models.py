"""Model loaders and model handles: LoadZImage, LoadDiffusionModel, LoadTextEncoder, LoadVAE,
LoadLora, ModelSampling.

A MODEL value is an immutable :class:`ModelHandle`: the base network plus sampling settings
(shift) plus LoRA patches with strengths. Branches with different LoRAs share one base in
memory; the patches are applied to the weights only while a sampler runs, and removed after.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Iterator, Literal, NamedTuple

from pydantic import Field

from graphrun.engine.context import Context
from graphrun.engine.node import CheckEnv, Comfy, Problem, node

from .types import Clip, Model, Vae

if TYPE_CHECKING:
    from .lora import LoraWeights
    from .zimage.network import ZImageDenoiser


@dataclass(frozen=True, eq=False)
class ModelHandle:
    """MODEL: base denoiser + flow shift + LoRA patches (applied only while sampling)."""

    denoiser: "ZImageDenoiser"
    shift: float = 3.0
    loras: tuple[tuple["LoraWeights", float], ...] = ()

    def with_shift(self, shift: float) -> "ModelHandle":
        return replace(self, shift=shift)

    def with_lora(self, lora: "LoraWeights", strength: float) -> "ModelHandle":
        return replace(self, loras=self.loras + ((lora, strength),))

    @contextmanager
    def ready(self) -> Iterator["ZImageDenoiser"]:
        """The denoiser with this handle's shift, its LoRAs patched into the weights meanwhile."""
        from .lora_patching import patched
        from .sampling.schedules import FlowModelSampling

        denoiser = self.denoiser.with_model_sampling(FlowModelSampling(shift=self.shift))
        with patched(self.denoiser.transformer, self.loras):
            yield denoiser


@dataclass(frozen=True, eq=False)
class ClipHandle:
    """CLIP: the Qwen3 text encoder, its tokenizer, and LoRA patches (applied only while encoding)."""

    text_encoder: Any
    tokenizer: Any
    loras: tuple[tuple["LoraWeights", float], ...] = ()

    def with_lora(self, lora: "LoraWeights", strength: float) -> "ClipHandle":
        return replace(self, loras=self.loras + ((lora, strength),))

    @contextmanager
    def ready(self) -> Iterator[tuple[Any, Any]]:
        """``(text_encoder, tokenizer)`` with this handle's LoRAs patched into the encoder meanwhile."""
        from .lora_patching import patched

        with patched(self.text_encoder, self.loras):
            yield self.text_encoder, self.tokenizer


@dataclass(frozen=True, eq=False)
class VaeHandle:
    """VAE: the Flux autoencoder."""

    vae: Any


class ZImageOutputs(NamedTuple):
    model: Model
    clip: Clip
    vae: Vae


def _models_dirs(ctx: Context) -> list[str]:
    return list(ctx.options.extra.get("models_dirs", []))


def _resolve(ctx: Context, name: str, kind: str) -> Path:
    from .model_files import resolve_model_file

    return resolve_model_file(name, kind, _models_dirs(ctx), ctx.options.extra.get("extra_model_paths"))


def _device_dtype(ctx: Context, override: str | None = None) -> tuple[Any, Any]:
    from .runtime import resolve_device_dtype

    return resolve_device_dtype(ctx.options.device, override or ctx.options.dtype)


def _check_zimage_folder(literals: dict[str, Any], env: CheckEnv) -> list[Problem]:
    from .zimage.sources import source_problem

    path = literals.get("path", "tiny")
    if path == "tiny":  # the tiny-model notice comes when it loads, not from validation
        return []
    problem = source_problem(path)  # the message says what was expected
    return [Problem("path", problem, None)] if problem else []


def no_lora(name: str) -> bool:
    """True for the LoRA names that mean "no LoRA" ("" or "none"): the loader passes the model and
    clip through unchanged, so a graph can offer an optional LoRA."""
    return name.strip().lower() in ("", "none")


def file_check(input_name: str, kind: str, allow_pickle: bool = False):
    """A validation-time check that a named model file resolves and that its safetensors header
    is sound (not empty, truncated, corrupt or a pickle in disguise); unless ``allow_pickle``, a
    pickle file (.ckpt/.pt/.pth/.bin) is refused by name."""

    def check(literals: dict[str, Any], env: CheckEnv) -> list[Problem]:
        from .model_files import PICKLE_SUFFIXES, ModelFileNotFound, ModelPathsError, model_file_problem, \
            resolve_model_file

        name = literals.get(input_name, "")
        if kind == "loras" and (name.startswith("tiny:") or no_lora(name)):
            return []
        if not allow_pickle and name.lower().endswith(PICKLE_SUFFIXES):
            return [Problem(input_name, f"'{name}' is a pickle file; graphrun loads safetensors only",
                            "convert it to .safetensors (pickle files can run arbitrary code)")]
        try:
            path = resolve_model_file(name, kind, env.options.get("models_dirs", []),
                                      env.options.get("extra_model_paths"), announce=False)
        except ModelFileNotFound as exc:
            message, _, looked = str(exc).partition("; looked in")
            return [Problem(input_name, message, ("looked in" + looked) if looked else None)]
        except ModelPathsError as exc:
            return [Problem(input_name, str(exc), None)]
        problem = model_file_problem(path, allow_pickle=allow_pickle)
        if problem:
            return [Problem(input_name, f"{kind} file '{name}' cannot be loaded: {problem}", None)]
        if kind in ("diffusion_models", "text_encoders") and _has_quantized_layers(path):
            from .quantized import format_problem

            what = "Z-Image transformer file" if kind == "diffusion_models" else "Text encoder file"
            problem = format_problem(path, what, env.comfy_version)
            if problem:
                return [Problem(input_name, problem, None)]
        return []

    return check


def _has_quantized_layers(path: Path) -> bool:
    """Whether a safetensors file declares ``comfy_quant`` layers (header only, no torch)."""
    from .model_files import ModelFileError, read_safetensors_header

    try:
        header = read_safetensors_header(path)
    except ModelFileError:
        return False
    return "_quantization_metadata" in header.metadata or any(k.endswith(".comfy_quant") for k in header.dtypes)


#: The CLIPLoader types the editor offers: ComfyUI v0.18.1's list but flux2. For a Qwen3-4B file ComfyUI builds
#: the Z-Image encoder, as graphrun does, for every type but flux2 (then the Flux.2 Klein encoder).
CLIP_TYPES: tuple[str, ...] = (
    "stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos", "lumina2", "wan",
    "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image", "ovis", "longcat_image",
)


def _check_text_encoder(literals: dict[str, Any], env: CheckEnv) -> list[Problem]:
    """The text encoder file, and a GRAPHRUN_TOKENIZER that names no tokenizer."""
    problems = file_check("name", "text_encoders")(literals, env)
    from .zimage.sources import tokenizer_env_problem

    problem = tokenizer_env_problem()
    return problems + ([Problem("name", problem, None)] if problem else [])


@node("LoadZImage", category="loaders", keep=True, check=_check_zimage_folder)
def load_zimage(
    ctx: Context,
    path: Annotated[
        str, Field(description="a Z-Image diffusers folder, a ComfyUI models folder, a Hugging Face repo id in the "
                               "local cache (Tongyi-MAI/Z-Image-Turbo), or 'tiny'")
    ] = "tiny",
) -> ZImageOutputs:
    """Load a Z-Image model: the MODEL, its text encoder (CLIP) and VAE.

    `path` is a diffusers folder (model_index.json, transformer/, text_encoder/, tokenizer/, vae/), a
    ComfyUI models folder holding one Z-Image diffusion model, text encoder and VAE (in
    diffusion_models/ or unet/, text_encoders/ or clip/, vae/; with several, pick them with
    LoadDiffusionModel, LoadTextEncoder and LoadVAE), or a Hugging Face repo id such as
    `Tongyi-MAI/Z-Image-Turbo`, read from the local Hugging Face cache (HF_HOME, HF_HUB_CACHE; nothing
    is downloaded). `tiny` is a tiny random-weight Z-Image with the real architecture, built locally
    on first use (offline; pictures are noise). Device and dtype follow `--device`/`--dtype` (default:
    CUDA + bf16 when available, else CPU + fp32); `--offload` keeps weights on the CPU between uses.
    """
    from .model_files import tiny_notice
    from .zimage.loading import load_diffusers_folder, load_single_files
    from .zimage.network import ZImageDenoiser
    from .zimage.sources import resolve_zimage_source
    from .zimage.tiny import tiny_model_dir

    source = resolve_zimage_source(path)
    device, dtype = _device_dtype(ctx)
    if source.kind == "comfy":
        files = source.files
        parts = load_single_files(files["transformer"], files["text_encoder"], files["vae"], device, dtype,
                                  offload=ctx.options.offload)
    else:
        if source.kind == "tiny":
            tiny_notice()
        folder = tiny_model_dir() if source.folder is None else source.folder
        parts = load_diffusers_folder(folder, device, dtype, offload=ctx.options.offload)
    return ZImageOutputs(
        ModelHandle(ZImageDenoiser.from_parts(parts)),
        ClipHandle(parts.text_encoder, parts.tokenizer),
        VaeHandle(parts.vae),
    )


@node(
    "LoadDiffusionModel",
    category="loaders",
    keep=True,
    comfy=Comfy("UNETLoader", inputs={"name": "unet_name"}, files={"unet_name": "diffusion_models"},
                display_name="Load Diffusion Model", category="advanced/loaders",
                options={"weight_dtype": {"advanced": True}}),
    check=file_check("name", "diffusion_models"),
)
def load_diffusion_model(
    ctx: Context,
    name: Annotated[str, Field(description="file in diffusion_models/ (or unet/), or a path")],
    weight_dtype: Literal["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"] = "default",
) -> Model:
    """Load a Z-Image transformer from one safetensors file (ComfyUI UNETLoader).

    Reads bf16/fp16/fp32 files and ComfyUI's quantized ones: fp8 (`*_fp8_e4m3fn`), scaled fp8
    (`*_fp8_scaled`) and mixed precision (`comfy_quant` layers: float8_e4m3fn, float8_e5m2,
    nvfp4, mxfp8), dequantized to the compute dtype exactly as ComfyUI does. Under the ComfyUI 0.33
    setting (the default) int8 files (`*_int8_convrot`, `int8_tensorwise` layers) load too and
    compute in int8 as ComfyUI 0.33 does on the CPU; under 0.18.1 / 2025.10 they are refused with a
    clear error, as those versions cannot load them. 4-bit formats (convrot_w4a4, asym_w4a8_int8)
    are refused.

    `weight_dtype` as in ComfyUI: `fp8_e4m3fn` and `fp8_e5m2` round the weights to that fp8
    type (ComfyUI stores the model in it; a mixed-precision file keeps its Linear layers) and
    computation stays in the compute dtype. The weights are held dequantized, so fp8 saves no
    memory here; `fp8_e4m3fn_fast` (fp8 matrix multiplication on recent GPUs) computes like
    `fp8_e4m3fn`.
    """
    from .zimage.loading import load_transformer_file
    from .zimage.network import ZImageDenoiser

    device, dtype = _device_dtype(ctx)
    if weight_dtype == "fp8_e4m3fn_fast" and device.type == "cuda":
        ctx.warn("weight_dtype fp8_e4m3fn_fast: fp8 matrix multiplication is not implemented; the weights are "
                 f"rounded to fp8 as with fp8_e4m3fn and computation stays in {dtype}")
    transformer = load_transformer_file(_resolve(ctx, name, "diffusion_models"), device, dtype,
                                        weight_dtype=weight_dtype, comfy_version=ctx.comfy_version)
    return ModelHandle(ZImageDenoiser(transformer, device=device))


@node(
    "LoadTextEncoder",
    category="loaders",
    keep=True,
    comfy=Comfy("CLIPLoader", inputs={"name": "clip_name", "clip_type": "type"}, files={"clip_name": "text_encoders"},
                display_name="Load CLIP", category="advanced/loaders", choices={"type": CLIP_TYPES},
                optional=("device",), options={"device": {"advanced": True}}),
    check=_check_text_encoder,
)
def load_text_encoder(
    ctx: Context,
    name: Annotated[str, Field(description="file in text_encoders/ (or clip/), or a path")],
    clip_type: Annotated[str, Field(description="ComfyUI's architecture hint; Z-Image uses lumina2")] = "lumina2",
    device: Literal["default", "cpu"] = "default",
) -> Clip:
    """Load the Qwen3 text encoder from one safetensors file (ComfyUI CLIPLoader, type lumina2).

    The tokenizer is `tokenizer/` next to the file, else the folder `GRAPHRUN_TOKENIZER` names, else
    the Qwen tokenizer bundled with graphrun (the one ComfyUI uses); the tiny model's encoder uses its
    built-in byte tokenizer. ComfyUI's quantized encoders
    (`qwen_3_4b_fp8_mixed`, `*_fp8_scaled`, nvfp4/mxfp8 mixed files) load too: their quantized layers are
    dequantized in float32 at each call, exactly as ComfyUI does; int8 layers (ComfyUI 0.33 setting)
    compute in int8 as ComfyUI 0.33 does.
    """
    from .zimage.loading import load_text_encoder_file

    if clip_type not in ("lumina2", "qwen_image", "stable_diffusion", "z_image"):
        ctx.warn(f"clip_type '{clip_type}' ignored: the architecture is detected from the file")
    dev, dtype = _device_dtype(ctx)
    if device == "cpu":
        import torch

        dev = torch.device("cpu")
    parts = load_text_encoder_file(_resolve(ctx, name, "text_encoders"), dev, dtype, comfy_version=ctx.comfy_version)
    return ClipHandle(parts.text_encoder, parts.tokenizer)


@node(
    "LoadVAE",
    category="loaders",
    keep=True,
    comfy=Comfy("VAELoader", inputs={"name": "vae_name"}, files={"vae_name": "vae"}, display_name="Load VAE"),
    check=file_check("name", "vae"),
)
def load_vae(
    ctx: Context, name: Annotated[str, Field(description="file in vae/, or a path (Flux ae.safetensors)")]
) -> Vae:
    """Load the Flux VAE from one safetensors file (ComfyUI VAELoader)."""
    from .zimage.loading import load_vae_file

    device, dtype = _device_dtype(ctx)
    return VaeHandle(load_vae_file(_resolve(ctx, name, "vae"), device, dtype))


class LoraOutputs(NamedTuple):
    model: Model
    clip: Clip


def resolve_lora(ctx: Context, name: str) -> Path:
    """A LoRA file by name; ``tiny:<layout>`` names the built-in test LoRAs of the tiny model."""
    if name.startswith("tiny:"):
        from .zimage.tiny import tiny_comfy_dir

        layout = name.split(":", 1)[1]
        path = tiny_comfy_dir() / "loras" / f"tiny_lora_{layout}.safetensors"
        if not path.exists():
            choices = sorted(p.stem.removeprefix("tiny_lora_") for p in (tiny_comfy_dir() / "loras").glob("*.safetensors"))
            raise FileNotFoundError(f"no tiny test LoRA '{layout}'; choose one of: {', '.join(choices)}")
        return path
    return _resolve(ctx, name, "loras")


@node(
    "LoadLora",
    category="loaders",
    comfy=(
        Comfy("LoraLoaderModelOnly", inputs={"name": "lora_name"}, widgets=("lora_name", "strength_model"),
              files={"lora_name": "loras"}, display_name="Load LoRA", outputs=("model",)),
        # ComfyUI's LoraLoader requires its clip; graphrun also runs it without one
        Comfy("LoraLoader", inputs={"name": "lora_name"}, files={"lora_name": "loras"},
              display_name="Load LoRA (Model and CLIP)", optional=(),
              input_order=("model", "clip", "lora_name", "strength_model", "strength_clip")),
    ),
    check=file_check("name", "loras"),
    version=3,  # 2: ComfyUI v0.18.1's key table, LoRA on the text encoder; 3: the comfy setting's table
)
def load_lora(
    ctx: Context,
    model: Model,
    name: Annotated[
        str, Field(description="file in loras/, a path, tiny:<layout> for the tiny test LoRAs, or '' / none for no LoRA")
    ],
    strength_model: Annotated[float, Field(ge=-100.0, le=100.0)] = 1.0,
    clip: Clip | None = None,
    strength_clip: Annotated[float, Field(ge=-100.0, le=100.0)] = 1.0,
) -> LoraOutputs:
    """Add a LoRA to a model handle and, with a clip, to the text encoder (ComfyUI LoraLoader /
    LoraLoaderModelOnly).

    Keys are read exactly as the followed ComfyUI (the `comfy` setting) reads them for Z-Image:
    diffusers/PEFT names (bare, `transformer.`, `diffusion_model.`, `lycoris_`), ComfyUI's own names
    with `diffusion_model.` or kohya `lora_unet_` (the fused `attention.qkv` included), as lora_A/B or
    lora_down/up (+alpha) pairs or `.diff`; with a clip also the Qwen3 encoder's
    `text_encoders.transformer.model.*` keys and, with ComfyUI 0.33 (the default), kohya's
    `lora_te_<module>` keys (`lora_te_layers_0_self_attn_q_proj`), at `strength_clip`; ComfyUI v0.18.1
    (`--comfy 0.18.1`) ignores `lora_te_*`. Keys ComfyUI ignores are ignored too, with one warning naming them; a LoRA
    of which nothing applies is an error. Stack several by chaining; the base weights are shared and
    patched only while sampling (transformer) or encoding (text encoder).
    """
    from .lora import check_lora, load_lora as read_lora

    if no_lora(name) or (strength_model == 0 and strength_clip == 0):
        return LoraOutputs(model, clip)
    lora = read_lora(resolve_lora(ctx, name), comfy_version=ctx.comfy_version)
    models = [model.denoiser.transformer] + ([clip.text_encoder] if clip is not None else [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        matches = check_lora(lora, models)
    for warning in caught:
        ctx.warn(str(warning.message))
    # matching validated the file against the models; patches are applied while they run
    handle = model if strength_model == 0 or not matches[0].patches else model.with_lora(lora, strength_model)
    if clip is not None and strength_clip != 0 and matches[1].patches:
        clip = clip.with_lora(lora, strength_clip)
    return LoraOutputs(handle, clip)


@node(
    "ModelSampling",
    category="model",
    comfy=(
        Comfy("ModelSamplingAuraFlow", category="advanced/model"),
        Comfy("ModelSamplingSD3", category="advanced/model"),
    ),
)
def model_sampling(
    model: Model,
    shift: Annotated[float, Field(ge=0.0, le=100.0, description="flow shift; Z-Image Turbo uses 3")] = 3.0,
) -> Model:
    """Set the flow shift of a model (ComfyUI ModelSamplingAuraFlow / ModelSamplingSD3).

    sigma(t) = shift*t / (1 + (shift-1)*t). Without this node Z-Image uses shift 3.
    """
    return model.with_shift(shift)
