"""Loading Z-Image weights: a diffusers folder, ComfyUI's split single files, or the tiny model.

Everything here works offline. Configurations never come from a hub: a diffusers folder carries its
own, and for single files the architecture is read from the tensor shapes, starting from the real
model's configuration shipped in ``configs/`` (Z-Image Turbo transformer, Qwen3-4B, Flux VAE).

Only safetensors files are read; pickle-based checkpoints (.ckpt/.pt/.pth/.bin) are refused because
loading them can run arbitrary code. Every file's header is checked first and every weight after
reading: a damaged file, or NaN/Inf weights, raise :class:`ModelLoadError` naming the file (and tensor).

A single-file Qwen3 text encoder without a tokenizer folder uses the Qwen tokenizer shipped in
``tokenizer/`` (ComfyUI's own copy; see ``tokenizer/PROVENANCE.md``). Which folder a LoadZImage path
names (diffusers, ComfyUI models folder, Hugging Face cache) is decided in ``sources.py``.

The device/dtype policy, and the text encoder's float32 compute, live in ``graphrun.nodes.runtime``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple

from .libraries import import_model_libraries

# First, before anything here imports torch: the model libraries come in with the garbage collector paused
# (a cold run's imports ~20% faster and its exit ~1.6 s shorter; see libraries.py).
import_model_libraries()

import torch  # noqa: E402

from ..model_files import ModelFileError, read_safetensors_header, require_finite
from ..runtime import ensure_fp32_compute, quiet_progress, resolve_device_dtype
from .sources import (  # torch-free: validation uses the same key tests and tokenizer rules
    BUNDLED_TOKENIZER_SIZE,
    encoder_vocab,
)
from .sources import TEXT_ENCODER_PREFIXES as _TEXT_ENCODER_PREFIXES
from .sources import TRANSFORMER_PREFIXES as _TRANSFORMER_PREFIXES
from .sources import VAE_PREFIXES as _VAE_PREFIXES
from .sources import looks_like as _looks_like
from .sources import strip_prefix as _strip

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, ZImageTransformer2DModel

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")

_EXPECTED = {
    "transformer": "'cap_embedder.1.weight', 'x_embedder.weight', 'layers.0.attention.qkv.weight' "
    "(original Z-Image layout) or 'all_x_embedder.2-1.weight', 'layers.0.attention.to_q.weight' "
    "(diffusers layout)",
    "text_encoder": "'model.embed_tokens.weight', 'model.layers.0.self_attn.q_proj.weight', "
    "'model.layers.0.self_attn.q_norm.weight' (Hugging Face Qwen3 layout)",
    "vae": "'encoder.conv_in.weight', 'encoder.down.0.block.0.conv1.weight', 'decoder.up.0.block.0.conv1.weight' "
    "(Flux 'ae' layout) or 'encoder.down_blocks.0.resnets.0.conv1.weight' (diffusers layout), "
    "with 16 latent channels",
}
_KIND_NAMES = {
    "transformer": "a Z-Image transformer",
    "text_encoder": "a Qwen3 text encoder",
    "vae": "a Flux VAE (ae.safetensors)",
}


class ModelLoadError(Exception):
    """A model could not be loaded; the message says what was expected and how to fix it."""


# ---------------------------------------------------------------------------------------------
# Parts and policy
# ---------------------------------------------------------------------------------------------

class TextEncoderParts(NamedTuple):
    """A text encoder and its tokenizer (a tuple, so ``encode_prompt`` accepts it directly)."""

    text_encoder: Any
    tokenizer: Any


@dataclass(frozen=True, eq=False)
class ZImageParts:
    """The loaded pieces of a Z-Image model.

    ``device`` is where computation happens (with offloading the weights rest on the CPU between
    uses); ``dtype`` is the storage/compute dtype of the transformer and VAE. The text encoder may
    be stored in ``dtype`` but always computes in float32.
    """

    transformer: ZImageTransformer2DModel
    text_encoder: Any
    tokenizer: Any
    vae: AutoencoderKL
    device: torch.device
    dtype: torch.dtype
    offloaded: bool = False
    source: str = ""


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Forbid hub access for the duration of a load (environment and the already-read constants)."""
    import huggingface_hub.constants as hf_constants

    saved_env = os.environ.get("HF_HUB_OFFLINE")
    saved_const = hf_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hf_constants.HF_HUB_OFFLINE = True
    try:
        with quiet_progress():
            yield
    finally:
        hf_constants.HF_HUB_OFFLINE = saved_const
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


@contextlib.contextmanager
def _quiet_diffusers() -> Iterator[None]:
    """Silence diffusers' generic warning about casting with .to() (harmless for these models)."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def _hf_dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    # transformers renamed torch_dtype to dtype in 4.56.
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def _base_config(name: str) -> dict[str, Any]:
    return json.loads((CONFIG_DIR / name).read_text("utf-8"))


# ---------------------------------------------------------------------------------------------
# Safetensors inspection
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _FileInfo:
    path: Path
    shapes: dict[str, tuple[int, ...]]
    metadata: dict[str, str]

    def extra_config(self) -> dict[str, Any]:
        """Settings a writer recorded because shapes cannot reveal them (see tiny.py)."""
        raw = self.metadata.get("graphrun_config")
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}


def _check_file(path: str | os.PathLike[str], what: str, example: str) -> Path:
    p = Path(path).expanduser()
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelLoadError(
            f"Refusing to load {p}: safetensors only. '{p.suffix}' files are pickle-based and can run "
            f"arbitrary code when loaded; convert it to .safetensors (or download the .safetensors "
            f"release) and load that instead."
        )
    if not p.exists():
        raise ModelLoadError(f"{what} not found: {p}. Expected a .safetensors file, e.g. {example}.")
    if p.is_dir():
        raise ModelLoadError(
            f"{what}: {p} is a folder, but a single .safetensors file was expected (e.g. {example}); "
            f"a diffusers folder loads with load_diffusers_folder()."
        )
    return p


def _inspect(path: Path, what: str) -> _FileInfo:
    """The file's tensor shapes and metadata, from its header alone (see ``read_safetensors_header``)."""
    from ..quantized import logical_shapes, packed_int4_layers

    try:
        header = read_safetensors_header(path)
    except ModelFileError as exc:
        raise ModelLoadError(f"{what}: {exc}") from None
    if not header.shapes:
        raise ModelLoadError(f"{what} {path} contains no tensors; expected {_KIND_NAMES.get(what, what)}.")
    # Packed 4-bit weights: the architecture is inferred from the shapes the model sees.
    packed = packed_int4_layers(path, header.shapes, header.dtypes, header.metadata)
    return _FileInfo(path, logical_shapes(header.shapes, header.dtypes, packed), header.metadata)


def _describe(shapes: dict[str, tuple[int, ...]]) -> str:
    keys = set(shapes)
    if any(("lora_" in k or ".lora." in k or "lora_A" in k or "lora_up" in k) for k in keys):
        return "a LoRA"
    for kind in ("transformer", "text_encoder", "vae"):
        if _looks_like(kind, shapes):
            return _KIND_NAMES[kind]
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "a full checkpoint of another architecture"
    sample = ", ".join(repr(k) for k in sorted(keys)[:4])
    return f"an unrecognised model (keys like {sample})"


def _require_kind(info: _FileInfo, kind: str, what: str) -> None:
    if not _looks_like(kind, info.shapes):
        raise ModelLoadError(
            f"{info.path} is not {_KIND_NAMES[kind]}: it looks like {_describe(info.shapes)}. "
            f"Expected keys such as {_EXPECTED[kind]}. Check which file goes into the {what} slot."
        )


def _load_tensors(info: _FileInfo, prefix: str, what: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(info.path))
    except Exception as exc:
        raise ModelLoadError(
            f"{what} {info.path} could not be read (corrupt or truncated download?): {exc}. Download it again."
        ) from exc
    # NaN/Inf weights load and run without any error but give black or noise pictures.
    require_finite(tensors, info.path, what, error=ModelLoadError)
    return {(k[len(prefix):] if prefix and k.startswith(prefix) else k): v for k, v in tensors.items()}


def _count_indexed(keys: Any, prefix: str) -> int:
    indices = set()
    for key in keys:
        if key.startswith(prefix):
            head = key[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                indices.add(int(head))
    return max(indices) + 1 if indices else 0


def _no_meta_left(model: torch.nn.Module, path: Path, what: str) -> None:
    missing = [name for name, p in model.named_parameters() if p.is_meta]
    if missing:
        raise ModelLoadError(
            f"{what} {path} is incomplete: {len(missing)} weights are missing, e.g. "
            f"{', '.join(missing[:3])}. The file may be a partial export or a different variant."
        )


def _place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    # Cast parameters only: buffers such as Qwen3's RoPE inv_freq must stay float32 (a bf16
    # inv_freq shifts every rotary angle). This also avoids diffusers' warning on .to(dtype).
    with torch.no_grad():
        for param in module.parameters():
            if param.is_floating_point() and param.dtype != dtype:
                param.data = param.data.to(dtype)
    module.to(device=device)
    module.eval()
    module.requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# Config inference from shapes
# ---------------------------------------------------------------------------------------------

def _split_axes(head_dim: int, base: list[int]) -> list[int]:
    """RoPE axis split for a head size: the real [32, 48, 48] scaled, each part even."""
    if head_dim == sum(base):
        return list(base)
    first = 2 * round(head_dim * base[0] / sum(base) / 2)
    rest = head_dim - first
    second = 2 * (rest // 4)
    third = rest - second
    if min(first, second, third) <= 0 or third % 2:
        raise ModelLoadError(f"Cannot derive RoPE axes for a head size of {head_dim}.")
    return [first, second, third]


def infer_transformer_config(
    shapes: dict[str, tuple[int, ...]], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ZImageTransformer2DModel config for a state dict, from its tensor shapes.

    Accepts original (ComfyUI) or diffusers key names, with or without ``model.diffusion_model.``.
    Values that shapes cannot show come from ``extra`` and then from Z-Image Turbo's config.
    """
    config = _base_config("z_image_turbo_transformer.json")
    config.pop("_class_name", None)
    p = _strip(shapes, _TRANSFORMER_PREFIXES)
    s = {k[len(p):]: v for k, v in shapes.items() if k.startswith(p)}
    dim, cap_feat_dim = s["cap_embedder.1.weight"]
    patch = config["all_patch_size"][0]
    f_patch = config["all_f_patch_size"][0]
    x_in = s.get("x_embedder.weight", s.get(f"all_x_embedder.{patch}-{f_patch}.weight"))
    if x_in is None:
        raise ModelLoadError("The transformer has no x_embedder weight.")
    if "layers.0.attention.q_norm.weight" in s:
        head_dim = s["layers.0.attention.q_norm.weight"][0]
    elif "layers.0.attention.norm_q.weight" in s:
        head_dim = s["layers.0.attention.norm_q.weight"][0]
    else:
        head_dim = dim // config["n_heads"]
    if "layers.0.attention.qkv.weight" in s:
        kv_rows = (s["layers.0.attention.qkv.weight"][0] - dim) // 2
    else:
        kv_rows = s["layers.0.attention.to_k.weight"][0]
    config.update(
        dim=dim,
        cap_feat_dim=cap_feat_dim,
        in_channels=x_in[1] // (patch * patch * f_patch),
        n_layers=_count_indexed(s, "layers."),
        n_refiner_layers=_count_indexed(s, "noise_refiner."),
        n_heads=dim // head_dim,
        n_kv_heads=kv_rows // head_dim,
        qk_norm="layers.0.attention.q_norm.weight" in s or "layers.0.attention.norm_q.weight" in s,
        axes_dims=_split_axes(head_dim, config["axes_dims"]),
    )
    for key in ("axes_dims", "axes_lens", "rope_theta", "t_scale", "norm_eps"):
        if extra and key in extra:
            config[key] = extra[key]
    return config


def infer_text_encoder_config(
    shapes: dict[str, tuple[int, ...]], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A Qwen3 config for a state dict (HF ``model.*`` keys or bare), from its tensor shapes.

    Values that shapes cannot show come from ``extra`` and then from Qwen3-4B's config.
    """
    config = _base_config("qwen3_4b.json")
    p = _strip(shapes, _TEXT_ENCODER_PREFIXES)
    s = {k[len(p):]: v for k, v in shapes.items() if k.startswith(p)}
    vocab, hidden = s["embed_tokens.weight"]
    if "layers.0.self_attn.q_norm.weight" not in s:
        raise ModelLoadError(
            "The text encoder has no q/k norms (layers.0.self_attn.q_norm.weight): it is an older Qwen/Llama "
            "model, not Qwen3. Z-Image needs Qwen3-4B (qwen_3_4b.safetensors)."
        )
    head_dim = s["layers.0.self_attn.q_norm.weight"][0]
    config.update(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=s["layers.0.mlp.gate_proj.weight"][0],
        num_hidden_layers=_count_indexed(s, "layers."),
        head_dim=head_dim,
        num_attention_heads=s["layers.0.self_attn.q_proj.weight"][0] // head_dim,
        num_key_value_heads=s["layers.0.self_attn.k_proj.weight"][0] // head_dim,
        attention_bias="layers.0.self_attn.q_proj.bias" in s,
    )
    config["max_window_layers"] = config["num_hidden_layers"]
    for key in ("bos_token_id", "eos_token_id"):
        # Qwen3-4B's special-token ids do not exist in a smaller vocabulary.
        if isinstance(config.get(key), int) and config[key] >= vocab:
            config[key] = None
    for key in ("max_position_embeddings", "rope_theta", "rms_norm_eps"):
        if extra and key in extra:
            config[key] = extra[key]
    return config


def infer_vae_config(shapes: dict[str, tuple[int, ...]], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """An AutoencoderKL config for a Flux "ae" (or diffusers-layout) VAE state dict.

    Channel counts and depths come from the shapes; the GroupNorm group count cannot, so it comes
    from ``extra`` or the Flux VAE default (32, or the largest count that divides narrower widths).
    """
    config = _base_config("flux_vae.json")
    config.pop("_class_name", None)
    p = _strip(shapes, _VAE_PREFIXES)
    s = {k[len(p):]: v for k, v in shapes.items() if k.startswith(p)}
    if "encoder.down.0.block.0.conv1.weight" in s:
        levels = _count_indexed(s, "encoder.down.")
        block_out = [s[f"encoder.down.{i}.block.0.conv1.weight"][0] for i in range(levels)]
        layers = _count_indexed(s, "encoder.down.0.block.")
    else:
        levels = _count_indexed(s, "encoder.down_blocks.")
        block_out = [s[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"][0] for i in range(levels)]
        layers = _count_indexed(s, "encoder.down_blocks.0.resnets.")
    latent = s["decoder.conv_in.weight"][1]
    config.update(
        block_out_channels=block_out,
        layers_per_block=layers,
        latent_channels=latent,
        in_channels=s["encoder.conv_in.weight"][1],
        out_channels=s["decoder.conv_out.weight"][0],
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        use_quant_conv="quant_conv.weight" in s,
        use_post_quant_conv="post_quant_conv.weight" in s,
        mid_block_add_attention=any(k.startswith(("encoder.mid.attn_1.", "encoder.mid_block.attentions.")) for k in s),
    )
    for key in ("norm_num_groups", "scaling_factor", "shift_factor"):
        if extra and key in extra:
            config[key] = extra[key]
    groups = config["norm_num_groups"]
    if any(c % groups for c in block_out):
        # Narrow custom VAEs: the group count is not stored in the weights; take the largest
        # count up to the Flux default that divides every width.
        groups = max(g for g in range(1, groups + 1) if all(c % g == 0 for c in block_out))
        log.warning("VAE widths %s do not fit %d norm groups; assuming %d.", block_out,
                    config["norm_num_groups"], groups)
        config["norm_num_groups"] = groups
    return config


# ---------------------------------------------------------------------------------------------
# Single files
# ---------------------------------------------------------------------------------------------

def _from_single_file(cls: Any, mapping_fn: Any, state: dict[str, torch.Tensor], config: dict[str, Any],
                      dtype: torch.dtype, path: Path, what: str, arch: str) -> Any:
    """diffusers' ``from_single_file`` with a local config, after checking the keys line up.

    diffusers leaves weights that a file lacks uninitialised (on the meta device) and only fails
    later with an obscure message, so the converted key set is compared with the model's first,
    on the meta device (no memory, no copies).
    """
    from accelerate import init_empty_weights

    with init_empty_weights():
        expected = set(cls.from_config(config).state_dict())
    meta = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in state.items()}
    if set(meta) != expected:
        try:
            meta = mapping_fn(checkpoint=meta, config=config)
        except (KeyError, ValueError, RuntimeError, IndexError) as exc:
            raise ModelLoadError(f"{what} {path} does not fit {arch}: {exc}") from exc
    missing = sorted(expected - set(meta))
    if missing:
        raise ModelLoadError(
            f"{what} {path} is incomplete: {len(missing)} weights are missing, e.g. {', '.join(missing[:3])}. "
            f"The file may be a partial export or a different variant."
        )
    with tempfile.TemporaryDirectory(prefix="graphrun-cfg-") as cfg_dir, _offline():
        (Path(cfg_dir) / "config.json").write_text(json.dumps({"_class_name": cls.__name__, **config}), "utf-8")
        try:
            with _quiet_diffusers():
                model = cls.from_single_file(state, config=cfg_dir, torch_dtype=dtype, local_files_only=True)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise ModelLoadError(f"{what} {path} does not fit {arch}: {exc}") from exc
    _no_meta_left(model, path, what)
    return model


def load_transformer_file(
    path: str | os.PathLike[str], device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None, *, weight_dtype: str = "default", comfy_version: str | None = None,
) -> ZImageTransformer2DModel:
    """Load a Z-Image transformer from one safetensors file (e.g. ComfyUI's
    ``diffusion_models/z_image_turbo_bf16.safetensors``), through diffusers' single-file loader with
    a local config inferred from the file's tensor shapes.

    Quantized files (fp8, scaled fp8, ComfyUI's mixed precision) are dequantized to ``dtype`` as
    ComfyUI does; ``weight_dtype`` is UNETLoader's option (see ``graphrun.nodes.quantized``). Under
    the ComfyUI 0.33 setting (``comfy_version``, default the current default) int8 layers stay int8
    and compute as ComfyUI 0.33 computes them (``graphrun.nodes.quantized_int8``)."""
    from ...engine.comfy.versions import DEFAULT_COMFY_VERSION
    from ..quantized import load_checkpoint
    from ..quantized_layers import install_quantized_linears
    from diffusers import ZImageTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

    what = "Z-Image transformer file"
    dev, dt = resolve_device_dtype(device, dtype)
    p = _check_file(path, what, "diffusion_models/z_image_turbo_bf16.safetensors")
    info = _inspect(p, what)
    _require_kind(info, "transformer", "diffusion model")
    config = infer_transformer_config(info.shapes, info.extra_config())
    prefix = _strip(info.shapes, _TRANSFORMER_PREFIXES)
    state, checkpoint = load_checkpoint(_load_tensors(info, prefix, what), info, what, "transformer", dt,
                                        prefix=prefix, weight_dtype=weight_dtype,
                                        comfy_version=comfy_version or DEFAULT_COMFY_VERSION)
    # Some exports carry an unused top-level 'norm_final.weight'; diffusers' converter drops it too.
    state.pop("norm_final.weight", None)
    model = _from_single_file(ZImageTransformer2DModel, convert_z_image_transformer_checkpoint_to_diffusers,
                              state, config, dt, p, what, "the Z-Image architecture")
    if checkpoint.int8 or checkpoint.pre_scales:
        targets = _diffusers_targets(model, convert_z_image_transformer_checkpoint_to_diffusers)
        install_quantized_linears(model, {}, p, what, int8=checkpoint.int8, pre_scales=checkpoint.pre_scales,
                                  targets=targets)
    _place(model, dev, dt)
    return model


def _diffusers_targets(model: torch.nn.Module, mapping_fn: Any) -> Any:
    """Where a file's Linear layer lives in the diffusers model, with its output rows.

    A layer the model has under the same name maps to itself; otherwise the diffusers key
    converter is run on a tensor of row numbers, so a fused layer (Z-Image's ``attention.qkv``) is
    followed into its parts (``to_q``, ``to_k``, ``to_v``) exactly as its weight was split.
    """
    names = dict(model.named_modules())

    def targets(layer: str, rows: int | None) -> list[tuple[str, int, int]]:
        if isinstance(names.get(layer), torch.nn.Linear):
            return [(layer, 0, rows or 0)]
        numbers = torch.arange(rows or 3, dtype=torch.float64).reshape(-1, 1)
        converted = mapping_fn(checkpoint={f"{layer}.weight": numbers})
        parts = []
        for key, value in converted.items():
            first, last = int(value[0, 0]), int(value[-1, 0])
            parts.append((key.removesuffix(".weight"), first, last + 1))
        return sorted(parts, key=lambda part: part[1])

    return targets


def load_vae_file(
    path: str | os.PathLike[str], device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> AutoencoderKL:
    """Load the Flux VAE from one safetensors file (e.g. ComfyUI's ``vae/ae.safetensors``), through
    diffusers' single-file loader with a local config inferred from the file's tensor shapes."""
    from diffusers import AutoencoderKL

    from ..quantized import dequantize_checkpoint
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    what = "VAE file"
    dev, dt = resolve_device_dtype(device, dtype)
    p = _check_file(path, what, "vae/ae.safetensors")
    info = _inspect(p, what)
    _require_kind(info, "vae", "VAE")
    config = infer_vae_config(info.shapes, info.extra_config())
    if config["latent_channels"] != 16:
        raise ModelLoadError(
            f"{p} is a VAE with {config['latent_channels']} latent channels; Z-Image needs the 16-channel "
            f"Flux VAE (ae.safetensors)."
        )
    prefix = _strip(info.shapes, _VAE_PREFIXES)
    state = dequantize_checkpoint(_load_tensors(info, prefix, what), info, what, "vae", dt, prefix=prefix)
    model = _from_single_file(AutoencoderKL, convert_ldm_vae_checkpoint, state, config, dt, p, what,
                              "the Flux VAE architecture")
    _place(model, dev, dt)
    return model


def load_text_encoder_file(
    path: str | os.PathLike[str], device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None, tokenizer: str | os.PathLike[str] | None = None,
    comfy_version: str | None = None,
) -> TextEncoderParts:
    """Load the Qwen3 text encoder from one safetensors file (e.g. ComfyUI's
    ``text_encoders/qwen_3_4b.safetensors``) and find its tokenizer (see :func:`graphrun.nodes.zimage.tokenizers.find_tokenizer`).

    The weights are stored in ``dtype``; computation is always float32 (``ensure_fp32_compute``).
    Quantized layers (ComfyUI's fp8/mixed files) stay quantized and are dequantized in float32 at
    each call, as ComfyUI does (``graphrun.nodes.quantized_layers.QuantizedLinear``); under the ComfyUI 0.33
    setting (``comfy_version``) int8 layers compute in int8 as ComfyUI 0.33 does.
    """
    from accelerate import init_empty_weights

    from ...engine.comfy.versions import DEFAULT_COMFY_VERSION
    from ..quantized import split_checkpoint
    from ..quantized_layers import install_quantized_linears
    from transformers import Qwen3Config, Qwen3Model

    what = "Text encoder file"
    dev, dt = resolve_device_dtype(device, dtype)
    p = _check_file(path, what, "text_encoders/qwen_3_4b.safetensors")
    info = _inspect(p, what)
    _require_kind(info, "text_encoder", "text encoder (CLIP)")
    config = infer_text_encoder_config(info.shapes, info.extra_config())
    from .tokenizers import find_tokenizer

    tok = find_tokenizer(p, config["vocab_size"], tokenizer)
    if len(tok) > config["vocab_size"]:
        raise ModelLoadError(
            f"The tokenizer has {len(tok)} tokens but the text encoder {p} only {config['vocab_size']}: they "
            f"do not belong together. Use the Qwen3 tokenizer that ships with Z-Image-Turbo."
        )
    prefix = _strip(info.shapes, _TEXT_ENCODER_PREFIXES)
    state = _load_tensors(info, prefix, what)
    # A causal-LM export also has the output head; the encoder does not use it.
    state = {k: v for k, v in state.items() if not k.startswith("lm_head.")}
    checkpoint = split_checkpoint(state, info, what, dt, prefix=prefix,
                                  comfy_version=comfy_version or DEFAULT_COMFY_VERSION)
    state = checkpoint.tensors
    with init_empty_weights():
        model = Qwen3Model(Qwen3Config(**config))
    install_quantized_linears(model, checkpoint.quantized, p, what, int8=checkpoint.int8,
                              pre_scales=checkpoint.pre_scales)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{what} {p} does not fit the Qwen3 architecture: {exc}") from exc
    _no_meta_left(model, p, what)
    _place(model, dev, dt)
    ensure_fp32_compute(model)
    return TextEncoderParts(model, tok)


def load_single_files(
    transformer: str | os.PathLike[str], text_encoder: str | os.PathLike[str], vae: str | os.PathLike[str],
    device: str | torch.device | None = None, dtype: str | torch.dtype | None = None, *,
    offload: bool = False, tokenizer: str | os.PathLike[str] | None = None,
) -> ZImageParts:
    """Load all three ComfyUI split files into one ``ZImageParts``."""
    dev, dt = resolve_device_dtype(device, dtype)
    # With offload the weights stay in CPU memory; never stage the whole model on the GPU.
    load_dev = torch.device("cpu") if offload else dev
    te = load_text_encoder_file(text_encoder, load_dev, dt, tokenizer=tokenizer)
    parts = ZImageParts(
        transformer=load_transformer_file(transformer, load_dev, dt), text_encoder=te.text_encoder,
        tokenizer=te.tokenizer, vae=load_vae_file(vae, load_dev, dt), device=dev, dtype=dt,
        source=str(transformer),
    )
    return enable_offload(parts) if offload else parts


# ---------------------------------------------------------------------------------------------
# Diffusers folders
# ---------------------------------------------------------------------------------------------

_FOLDER_PARTS = ("transformer", "text_encoder", "tokenizer", "vae")


def load_diffusers_folder(
    path: str | os.PathLike[str], device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None, *, offload: bool = False,
) -> ZImageParts:
    """Load a Z-Image diffusers folder (e.g. a local copy of ``Tongyi-MAI/Z-Image-Turbo``).

    The folder needs ``model_index.json`` and the ``transformer/``, ``text_encoder/``,
    ``tokenizer/`` and ``vae/`` subfolders; without ``tokenizer/`` the bundled Qwen tokenizer is used
    for an encoder with Qwen's vocabulary. Nothing is fetched from a hub. Weights are checked: a
    damaged file or NaN/Inf weights raise :class:`ModelLoadError` naming the file and tensor.
    """
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from transformers import AutoTokenizer, Qwen3Model

    dev, dt = resolve_device_dtype(device, dtype)
    root = Path(path).expanduser()
    expected = "a folder with model_index.json and transformer/, text_encoder/, tokenizer/, vae/ " \
               "(e.g. a download of Tongyi-MAI/Z-Image-Turbo)"
    if not root.exists():
        raise ModelLoadError(f"Z-Image model folder not found: {root}. Expected {expected}.")
    if root.is_file():
        raise ModelLoadError(
            f"{root} is a file, but a diffusers folder was expected ({expected}); single files load with "
            f"load_transformer_file / load_text_encoder_file / load_vae_file.")
    missing = [name for name in ("model_index.json", *_FOLDER_PARTS) if not (root / name).exists()]
    if missing == ["tokenizer"] and encoder_vocab(root / "text_encoder") >= BUNDLED_TOKENIZER_SIZE:
        missing = []  # the bundled Qwen tokenizer fits
    if missing:
        raise ModelLoadError(f"{root} is not a complete Z-Image diffusers folder: missing {', '.join(missing)}. "
                             f"Expected {expected}.")
    for sub in ("transformer", "text_encoder", "vae"):
        pickles = [f.name for f in (root / sub).iterdir() if f.suffix.lower() in PICKLE_SUFFIXES]
        if pickles and not any(f.suffix == ".safetensors" for f in (root / sub).iterdir()):
            raise ModelLoadError(
                f"{root / sub} holds only pickle weights ({', '.join(pickles)}): safetensors only. "
                f"Download the .safetensors version of the model.")
        for file in sorted((root / sub).glob("*.safetensors")):
            try:
                read_safetensors_header(file)
            except ModelFileError as exc:
                raise ModelLoadError(f"Could not load the {sub} from {root / sub}: {exc}") from None

    def attempt(name: str, fn: Any) -> Any:
        try:
            return fn()
        except ModelLoadError:
            raise
        except Exception as exc:  # diffusers/transformers/safetensors raise many types for bad files
            raise ModelLoadError(f"Could not load the {name} from {root / name}: {exc}") from exc

    with _offline():
        transformer = attempt("transformer", lambda: ZImageTransformer2DModel.from_pretrained(
            str(root), subfolder="transformer", torch_dtype=dt, local_files_only=True, use_safetensors=True))
        vae = attempt("vae", lambda: AutoencoderKL.from_pretrained(
            str(root), subfolder="vae", torch_dtype=dt, local_files_only=True, use_safetensors=True))
        text_encoder = attempt("text_encoder", lambda: Qwen3Model.from_pretrained(
            str(root / "text_encoder"), local_files_only=True, use_safetensors=True, **_hf_dtype_kwargs(dt)))
        if (root / "tokenizer").exists():
            tokenizer = attempt("tokenizer", lambda: AutoTokenizer.from_pretrained(
                str(root / "tokenizer"), local_files_only=True))
        else:
            from .tokenizers import bundled_tokenizer

            tokenizer = bundled_tokenizer()
    for name, module in (("transformer", transformer), ("text_encoder", text_encoder), ("vae", vae)):
        # NaN/Inf weights load and run without any error but give black or noise pictures.
        require_finite(dict(module.named_parameters()), root / name, f"The {name} in", error=ModelLoadError)
    # With offload the weights stay in CPU memory; never stage the whole model on the GPU.
    load_dev = torch.device("cpu") if offload else dev
    for module in (transformer, vae, text_encoder):
        _place(module, load_dev, dt)
    ensure_fp32_compute(text_encoder)
    parts = ZImageParts(transformer, text_encoder, tokenizer, vae, dev, dt, source=str(root))
    return enable_offload(parts) if offload else parts


def load_tiny(device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> ZImageParts:
    """The tiny random-weight Z-Image (built into the cache on first use)."""
    from .tiny import tiny_model_dir

    parts = load_diffusers_folder(tiny_model_dir(), device, dtype)
    return replace(parts, source="tiny")


# ---------------------------------------------------------------------------------------------
# Offload
# ---------------------------------------------------------------------------------------------

def enable_offload(parts: ZImageParts) -> ZImageParts:
    """Keep the weights in CPU memory and move each component to the GPU only while it runs.

    Like diffusers' ``enable_model_cpu_offload``, per component, with accelerate's
    ``cpu_offload_with_hook``: when one component starts, the others go back to the CPU. Costs a
    host-to-device copy per component switch; use it when the model does not fit the GPU. On a
    CPU device there is nothing to offload and the parts are returned unchanged.
    """
    if parts.device.type != "cuda":
        log.info("Offload requested but the compute device is %s: nothing to offload, ignored.", parts.device)
        return parts
    if parts.offloaded:
        return parts
    from accelerate import cpu_offload_with_hook

    modules = [parts.text_encoder, parts.transformer, parts.vae]
    hooks = []
    for module in modules:
        module.to("cpu")
        _, hook = cpu_offload_with_hook(module, execution_device=parts.device)
        module._graphrun_execution_device = parts.device
        hooks.append(hook)
    for index, module in enumerate(modules):
        others = [h for i, h in enumerate(hooks) if i != index]

        def offload_others(_module: torch.nn.Module, _args: Any, others: list[Any] = others) -> None:
            for hook in others:
                hook.offload()

        # Runs before accelerate's forward wrapper moves this component to the GPU. Methods that
        # bypass __call__ (the VAE's encode/decode) call _graphrun_before_use themselves.
        module.register_forward_pre_hook(offload_others)
        module._graphrun_before_use = lambda others=others: [h.offload() for h in others]
    return replace(parts, offloaded=True)
