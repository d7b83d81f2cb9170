"""The tiny random-weight Z-Image: a few megabytes, built offline, identical on every machine.

It has the real architecture (ZImageTransformer2DModel, a Qwen3 text encoder, a Flux-style
AutoencoderKL) at toy sizes, so every code path of graphrun runs in seconds without downloads. The
pictures it makes are noise.

Every tensor is drawn from its own generator, seeded by a hash of the component and tensor name, so
the weights do not depend on the order in which modules are constructed or on the global RNG.

Two layouts are written:

* the diffusers folder layout (``model_index.json``, ``transformer/``, ``text_encoder/``,
  ``tokenizer/``, ``vae/``, ``scheduler/``), loadable with ``ZImagePipeline.from_pretrained``;
* ComfyUI's split single files under their official names, in the key layouts of the released
  files: ``diffusion_models/z_image_turbo_bf16.safetensors`` (original Z-Image keys, fused
  ``attention.qkv``), ``text_encoders/qwen_3_4b.safetensors`` (Hugging Face ``model.*`` keys) and
  ``vae/ae.safetensors`` (the Black Forest Labs "ae" keys). The tiny weights stay float32 there so
  outputs can be compared with the diffusers folder exactly.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

# Bump when anything below changes the produced files, so cached builds are not reused.
TINY_VERSION = "v1"

TRANSFORMER_CONFIG: dict[str, Any] = {
    "all_patch_size": [2],
    "all_f_patch_size": [1],
    "in_channels": 16,
    "dim": 64,
    "n_layers": 2,
    "n_refiner_layers": 1,
    "n_heads": 2,
    "n_kv_heads": 2,
    "norm_eps": 1e-5,
    "qk_norm": True,
    "cap_feat_dim": 32,
    "rope_theta": 256.0,
    "t_scale": 1000.0,
    "axes_dims": [8, 12, 12],
    "axes_lens": [1536, 512, 512],
}

VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 16,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 8, 16, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "act_fn": "silu",
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "force_upcast": True,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "mid_block_add_attention": True,
}

# Same positional/numeric settings as Qwen3-4B; only the sizes are tiny. head_dim must be given:
# the Qwen3 default (128) would not fit hidden_size 32.
TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "vocab_size": 512,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "tie_word_embeddings": True,
    "max_position_embeddings": 40960,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "attention_bias": False,
    "hidden_act": "silu",
    "bos_token_id": 256,
    "eos_token_id": 258,
}

SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": False,
}

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")

# A small Jinja template with the behaviour of Qwen3's for single-turn prompts:
# "<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n", plus the empty think block
# when a caller passes enable_thinking=False (as Qwen3's own template does).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)

# Official ComfyUI file names (relative to a ComfyUI models folder).
COMFY_TRANSFORMER = "diffusion_models/z_image_turbo_bf16.safetensors"
COMFY_TEXT_ENCODER = "text_encoders/qwen_3_4b.safetensors"
COMFY_VAE = "vae/ae.safetensors"


# ---------------------------------------------------------------------------------------------
# Deterministic weights
# ---------------------------------------------------------------------------------------------

def _name_seed(component: str, name: str) -> int:
    digest = hashlib.sha256(f"graphrun-tiny/{TINY_VERSION}/{component}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _tiny_tensor(component: str, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """One tensor of the tiny model, a pure function of (component, name, shape)."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(_name_seed(component, name))
    noise = torch.randn(shape, generator=gen, dtype=torch.float32)
    if len(shape) == 1 and name.endswith("weight"):
        # Every 1-D weight in these models is a norm scale: keep it near 1 but not exactly 1, so a
        # loader that drops or swaps norms changes the outputs.
        return 1.0 + 0.1 * noise
    if name.endswith("bias"):
        return 0.1 * noise
    if "embed_tokens" in name:
        return noise
    fan_in = 1
    for size in shape[1:]:
        fan_in *= size
    return noise / max(fan_in, 1) ** 0.5


def fill_deterministic(module: torch.nn.Module, component: str) -> None:
    """Overwrite every parameter and persistent buffer of ``module`` with name-seeded values."""
    import torch

    state = module.state_dict()
    new_state = {name: _tiny_tensor(component, name, tuple(t.shape)) for name, t in state.items()}
    with torch.no_grad():
        module.load_state_dict(new_state, strict=True)


# ---------------------------------------------------------------------------------------------
# Components
# ---------------------------------------------------------------------------------------------

def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, codes)}


def byte_vocab() -> dict[str, int]:
    """The tiny tokenizer's vocabulary: 256 byte tokens (ids 0-255), then the special tokens."""
    table = _bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    for offset, token in enumerate(SPECIAL_TOKENS):
        vocab[token] = 256 + offset
    return vocab


def build_tokenizer() -> Any:
    """A byte-level ``Qwen2Tokenizer`` built without any download (no merges: one token per byte)."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    tokenizer = Qwen2Tokenizer(
        vocab=byte_vocab(),
        merges=[],
        unk_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    # As in Qwen3's tokenizer, the think markers are added (never split) but not "special".
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<think>", "</think>")])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _save_tokenizer(tokenizer: Any, out: Path) -> None:
    tokenizer.save_pretrained(str(out))
    # transformers 4.x loads the slow Qwen2Tokenizer (named in model_index.json) from these two
    # files; write them so the folder loads there as well.
    (out / "vocab.json").write_text(json.dumps(byte_vocab(), ensure_ascii=False, sort_keys=True), "utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n", "utf-8")


def build_components() -> dict[str, Any]:
    """The five pipeline components of the tiny Z-Image, in memory, float32, on the CPU."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    # Construction draws from the global RNG (default inits); keep the caller's stream untouched.
    with torch.random.fork_rng(devices=[]):
        transformer = ZImageTransformer2DModel.from_config(dict(TRANSFORMER_CONFIG))
        vae = AutoencoderKL.from_config(dict(VAE_CONFIG))
        text_encoder = Qwen3Model(Qwen3Config(**TEXT_ENCODER_CONFIG))
    fill_deterministic(transformer, "transformer")
    fill_deterministic(vae, "vae")
    fill_deterministic(text_encoder, "text_encoder")
    for module in (transformer, vae, text_encoder):
        module.eval()
    return {
        "transformer": transformer,
        "text_encoder": text_encoder,
        "tokenizer": build_tokenizer(),
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler.from_config(dict(SCHEDULER_CONFIG)),
    }


def write_diffusers_folder(components: dict[str, Any], out_dir: str | os.PathLike[str]) -> Path:
    """Save components in the diffusers layout that ``ZImagePipeline.from_pretrained`` reads."""
    import diffusers
    import transformers

    from ..runtime import quiet_progress

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with quiet_progress():
        components["transformer"].save_pretrained(out / "transformer", safe_serialization=True)
        components["vae"].save_pretrained(out / "vae", safe_serialization=True)
        components["text_encoder"].save_pretrained(out / "text_encoder", safe_serialization=True)
        components["scheduler"].save_pretrained(out / "scheduler")
    _save_tokenizer(components["tokenizer"], out / "tokenizer")
    model_index = {
        "_class_name": "ZImagePipeline",
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen3Model"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "transformer": ["diffusers", "ZImageTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "_graphrun_tiny": TINY_VERSION,
        "_transformers_version": transformers.__version__,
    }
    (out / "model_index.json").write_text(json.dumps(model_index, indent=2, sort_keys=True) + "\n", "utf-8")
    return out


def build_tiny_model(out_dir: str | os.PathLike[str]) -> Path:
    """Build the tiny Z-Image and write its diffusers folder to ``out_dir``; return the folder."""
    return write_diffusers_folder(build_components(), out_dir)


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------

def cache_root() -> Path:
    """graphrun's cache folder: ``$GRAPHRUN_CACHE``, else ``$XDG_CACHE_HOME/graphrun``, else
    ``~/.cache/graphrun``."""
    env = os.environ.get("GRAPHRUN_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "graphrun"


_PERMISSIONS_CHECKED: set[Path] = set()


def _cached_build(name: str, build: Callable[[Path], Any], marker: str) -> Path:
    """``cache_root()/name``, built by ``build(tmp_dir)`` on first use and reused after.

    The build goes to a private temporary folder that is renamed into place, so a reader never
    sees a half-written folder and two processes racing to build both end up with one complete
    folder (the loser discards its copy).
    """
    from ..model_files import honour_umask

    final = cache_root() / name
    if (final / marker).exists():
        if final not in _PERMISSIONS_CHECKED:
            # Builds of earlier versions left their weights private (0o600): give them normal modes.
            _PERMISSIONS_CHECKED.add(final)
            honour_umask(final, private_only=True)
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
    try:
        build(tmp)
        # The safetensors writer goes through a private temporary file (mode 0o600); the cached
        # files get the modes any other file would (0o644 under umask 022).
        honour_umask(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process won the race (the target exists and is not empty): use its build.
            if not (final / marker).exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def tiny_model_dir() -> Path:
    """The tiny Z-Image's diffusers folder in the cache (``cache_root()``), built on first use."""
    return _cached_build(f"tiny-zimage-{TINY_VERSION}", build_tiny_model, "model_index.json")


def tiny_comfy_dir() -> Path:
    """A ComfyUI-style models folder with the tiny Z-Image, built into the cache on first use.

    Holds ``diffusion_models/z_image_turbo_bf16.safetensors``, ``text_encoders/qwen_3_4b.safetensors``,
    ``vae/ae.safetensors``, quantized copies under the official templates' names (the int8 ones of
    ComfyUI 0.33 among them), a tiny upscaler and the test LoRAs under ``loras/``.
    """
    # The folder's own version: bump it when its contents change (the weights follow TINY_VERSION).
    return _cached_build(f"tiny-zimage-comfy-{TINY_VERSION}.3",
                         lambda out: write_comfy_models_dir(build_components(), out), COMFY_TRANSFORMER)


# ---------------------------------------------------------------------------------------------
# ComfyUI single-file layouts (inverse of diffusers' single-file conversions)
# ---------------------------------------------------------------------------------------------

_TRANSFORMER_RENAMES = (
    ("all_final_layer.2-1.", "final_layer."),
    ("all_x_embedder.2-1.", "x_embedder."),
    (".attention.to_out.0.", ".attention.out."),
    (".attention.norm_q.", ".attention.q_norm."),
    (".attention.norm_k.", ".attention.k_norm."),
)


def transformer_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Diffusers ZImageTransformer2DModel keys -> the original Z-Image / ComfyUI keys.

    The inverse of ``convert_z_image_transformer_checkpoint_to_diffusers``: ``to_q/to_k/to_v`` are
    concatenated into ``attention.qkv`` and the embedder, final-layer, output and q/k-norm names
    are restored.
    """
    import torch

    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue
        if ".attention.to_q." in key:
            prefix, suffix = key.split(".attention.to_q.")
            parts = [state[f"{prefix}.attention.to_{n}.{suffix}"] for n in ("q", "k", "v")]
            out[f"{prefix}.attention.qkv.{suffix}"] = torch.cat(parts, dim=0)
            continue
        new_key = key
        for old, new in _TRANSFORMER_RENAMES:
            new_key = new_key.replace(old, new)
        out[new_key] = value
    return out


def text_encoder_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Qwen3Model keys -> the ``model.*`` keys of a Hugging Face Qwen3 checkpoint (ComfyUI's file)."""
    return {f"model.{k}": v for k, v in state.items()}


def _vae_attention_to_bfl(key: str, value: torch.Tensor) -> tuple[str, torch.Tensor]:
    names = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for old, new in names.items():
        marker = f".attentions.0.{old}."
        if marker in key:
            key = key.replace(marker, f".attn_1.{new}.")
            # The original attention projections are 1x1 convolutions.
            if key.endswith("weight") and new != "norm":
                value = value[:, :, None, None]
            return key, value
    raise KeyError(key)


def vae_to_bfl(state: dict[str, torch.Tensor], num_up_blocks: int) -> dict[str, torch.Tensor]:
    """Diffusers AutoencoderKL keys -> Black Forest Labs "ae" keys (``encoder.down.0.block.0...``).

    The inverse of diffusers' LDM VAE conversion: ``down_blocks/up_blocks`` become
    ``down/up`` (decoder levels numbered from the bottom), ``resnets`` become ``block``,
    ``conv_shortcut`` becomes ``nin_shortcut``, the mid attention becomes ``attn_1`` with 1x1
    convolution weights, and ``conv_norm_out`` becomes ``norm_out``.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut.", "nin_shortcut.")
        new = re.sub(r"\.down_blocks\.(\d+)\.resnets\.", r".down.\1.block.", new)
        new = re.sub(r"\.down_blocks\.(\d+)\.downsamplers\.0\.", r".down.\1.downsample.", new)
        match = re.search(r"\.up_blocks\.(\d+)\.", new)
        if match:
            level = num_up_blocks - 1 - int(match.group(1))
            new = new.replace(match.group(0), f".up.{level}.")
            new = new.replace(".resnets.", ".block.").replace(".upsamplers.0.", ".upsample.")
        new = re.sub(r"\.mid_block\.resnets\.(\d+)\.", lambda m: f".mid.block_{int(m.group(1)) + 1}.", new)
        if ".mid_block.attentions.0." in new:
            new, value = _vae_attention_to_bfl(new.replace(".mid_block.", ".mid."), value)
        out[new] = value.contiguous()
    return out


def write_comfy_files(components: dict[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write the transformer, text encoder and VAE as ComfyUI single files under ``out_dir``.

    Returns the written paths keyed ``transformer``, ``text_encoder`` and ``vae``. Settings that
    tensor shapes cannot reveal (the VAE's group count, the RoPE split) are recorded in the
    safetensors metadata under ``graphrun_config`` so the loaders rebuild the same architecture.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    paths = {
        "transformer": out / COMFY_TRANSFORMER,
        "text_encoder": out / COMFY_TEXT_ENCODER,
        "vae": out / COMFY_VAE,
    }
    transformer = components["transformer"]
    vae = components["vae"]
    text_encoder = components["text_encoder"]
    payloads = {
        "transformer": (
            transformer_to_original(transformer.state_dict()),
            {"axes_dims": list(transformer.config.axes_dims), "axes_lens": list(transformer.config.axes_lens)},
        ),
        "text_encoder": (
            text_encoder_to_hf(text_encoder.state_dict()),
            {"max_position_embeddings": text_encoder.config.max_position_embeddings},
        ),
        "vae": (
            vae_to_bfl(vae.state_dict(), len(vae.config.up_block_types)),
            {"norm_num_groups": vae.config.norm_num_groups},
        ),
    }
    for kind, (state, extra) in payloads.items():
        paths[kind].parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in sorted(state.items())}
        metadata = {"format": "pt", "graphrun_config": json.dumps(extra, sort_keys=True)}
        save_file(tensors, str(paths[kind]), metadata=metadata)
    return paths


# Other file names the official Z-Image templates refer to, served by the same tiny weights so
# `--models-dir tiny` runs those workflows offline.
COMFY_BASE_TRANSFORMER = "diffusion_models/z_image_bf16.safetensors"
COMFY_UPSCALER = "upscale_models/RealESRGAN_x4plus.safetensors"


def write_comfy_models_dir(components: dict[str, Any], out_dir: str | os.PathLike[str], *,
                           loras: bool = True) -> Path:
    """A ComfyUI models folder: the three single files (also under the base model's name), their
    quantized copies under the official int8 templates' names and a few more layouts
    (``graphrun.nodes.zimage.tiny_quantized.write_quantized_files``), a tiny x4 upscaler under
    ``upscale_models/`` and, with ``loras``, the test LoRAs
    (``graphrun.nodes.zimage.tiny_loras.write_test_loras``) under ``loras/``."""
    from graphrun.nodes.upscale import write_tiny_upscale_model

    from .tiny_quantized import write_quantized_files

    out = Path(out_dir)
    paths = write_comfy_files(components, out)
    shutil.copyfile(paths["transformer"], out / COMFY_BASE_TRANSFORMER)
    write_quantized_files(out)
    (out / COMFY_UPSCALER).parent.mkdir(parents=True, exist_ok=True)
    write_tiny_upscale_model(out / COMFY_UPSCALER)
    if loras:
        # Imported here: the LoRA fixtures are optional for the model files themselves.
        from .tiny_loras import write_test_loras

        (out / "loras").mkdir(parents=True, exist_ok=True)
        write_test_loras(components["transformer"], out / "loras", text_encoder=components["text_encoder"])
    return out
