"""LoRA files: which keys apply to a model, and patching its weights, exactly as ComfyUI 0.33 or v0.18.1.

A LoRA adds a low-rank update to some of a model's weights. graphrun reads a LoRA file the way
ComfyUI's ``LoraLoader`` does: ComfyUI builds, for the model it patches, a table from *key prefixes*
to the weights they patch, then looks up every prefix of that table in the file. A file key that no
prefix of the table claims is not applied ("lora key not loaded" in ComfyUI's log); graphrun ignores
the same keys and says so in one warning. Which prefixes exist therefore decides everything, and they
are, for the Z-Image transformer (``M`` a module in ComfyUI's own naming, ``D`` a diffusers module):

- ``diffusion_model.M`` and kohya's ``lora_unet_<M with "_" for ".">``, for every weight of ComfyUI's
  model (the original Z-Image names: ``layers.0.attention.qkv`` fused, ``attention.out``, ``x_embedder``,
  ``final_layer.linear``, ``feed_forward.w1``, ...), and ``diffusion_model.<param>`` for a bias;
- ``D``, ``transformer.D``, ``diffusion_model.D`` and LyCORIS' ``lycoris_<D with "_">`` for every
  diffusers module of Z-Image (``layers.0.attention.to_q`` patches the query third of the fused qkv,
  ``attention.to_out.0``, ``all_x_embedder.2-1``, ...).

So a *bare* original name that differs in diffusers (``layers.0.attention.qkv``, ``attention.out``,
``x_embedder``, ``final_layer.*``), ``lora_unet_``/``transformer.`` with the other naming, PEFT's
``base_model.model.`` prefix and ``model.diffusion_model.`` are ignored, as by ComfyUI. For the Qwen3
text encoder (``LoraLoader``'s ``strength_clip``) the prefixes are ``text_encoders.qwen3_4b.transformer.
model.X`` and ``text_encoders.transformer.model.X`` for every weight ``X`` (``layers.0.self_attn.q_proj``,
``embed_tokens``, ...), and, following ComfyUI 0.33 (the default ``comfy`` setting), kohya's
``lora_te_<X with "_" for ".">`` (``lora_te_layers_0_self_attn_q_proj``), listed after the other two. 0.33
adds that form for a text encoder whose weights all sit under one top-level prefix (Z-Image's
``qwen3_4b.``), naming each weight below ``qwen3_4b.transformer.model.``; so ``lora_te_model_layers_*``,
``lora_te1_*`` and ``lora_te2_*`` stay ignored there. ComfyUI v0.18.1 (the ``0.18.1`` and ``2025.10``
settings) reads no ``lora_te*`` key for Qwen3: graphrun ignores them too and names them in its warning.
The setting is fixed per loaded file (:func:`load_lora`'s ``comfy_version``).

For each prefix ``x`` the first of these pairs present is the LoRA (up, down):
``x.lora_up.weight``/``x.lora_down.weight``, ``x_lora.up/down.weight``, ``x.lora_B/lora_A.weight``,
``x.lora.up/down.weight``, ``x.lora_B``/``x.lora_A``, ``x.lora_linear_layer.up/down.weight``,
``x.lora_B.default/lora_A.default.weight``; ``x.alpha`` scales it. Full differences ``x.diff``,
``x.diff_b`` (the bias), ``x.w_norm``/``x.b_norm`` and ``x.set_weight`` are applied too. When two prefixes
patch the same weight (``transformer.D`` and ``D`` in one file) only the one ComfyUI's table lists last
applies, but a fused qkv pair and the split ``to_q``/``to_k``/``to_v`` pairs are different weights to
ComfyUI and both apply, as there. Each patched weight becomes::

    W' = W + strength · (alpha / rank) · (up @ down)        (scale 1.0 when the file has no alpha)
    W' = W + strength · diff                                (.diff / .w_norm / .diff_b / .b_norm)

computed in float32, in ComfyUI's order, and cast back to the weight's dtype once; several LoRAs are
applied in order before that cast. The text encoder's patches follow the same arithmetic as the
transformer's (ComfyUI patches both through one weight-patch routine). On GPUs where ComfyUI (v0.18.1
and 0.33 alike) does its LoRA math in float16 (see :func:`lora_compute_dtype`) graphrun does too, for a
bf16/fp16 model. :func:`~graphrun.nodes.lora_patching.patched` applies a list of ``(lora, strength)`` for the duration of a ``with``
block and puts the original weights back bit for bit after, so graph branches with different LoRAs
share one model in memory.

A weight of an ``int8_tensorwise`` layer (ComfyUI 0.33's int8 files, with or without ConvRot; graphrun's
:class:`~graphrun.nodes.quantized_int8.Int8Linear`) is patched as ComfyUI 0.33 patches it when it loads
the model: the whole ComfyUI weight (a fused qkv with all three parts) is dequantized, the patches are
added in the LoRA compute dtype, and the sum is quantized again into the same layout with a
recalculated scale and stochastic rounding seeded by the weight's key, so the layer keeps computing in
int8 (graphrun's own code, :mod:`graphrun.nodes.quantized_int8`; checked bit for bit against ComfyUI's
patched codes and scales on the CPU). Stochastic rounding draws its numbers on the device ComfyUI patches
on; on an accelerator ComfyUI uses comfy-kitchen's device kernels, which graphrun does not reproduce, so a
LoRA on an int8 layer is refused there (:class:`LoraError`) rather than applied differently. Weights of
the other quantized formats (dequantized at each call: fp8 mixed, nvfp4, mxfp8) are refused too. The 4-bit
layers (``convrot_w4a4``, and ``asym_w4a8_int8``, which computes as an int8 layer) are patched the same way,
requantized into their own format with comfy-kitchen's 4-bit quantizers' arithmetic
(:mod:`graphrun.nodes.quantized_w4`; checked bit for bit), except a ``convrot_w4a4`` layer whose inputs are
not a multiple of 64, which ComfyUI's quantizer rejects (refused).

Refused with a clear error, because graphrun does not implement them and ComfyUI would apply them
(the picture would silently differ): DoRA (``.dora_scale``), LoCon-Tucker (``.lora_mid.weight``),
``.reshape_weight``, LoHa, LoKr, GLoRA, OFT and BOFT keys on a prefix the model has. Only safetensors
files are read (pickle-based ``.pt``/``.ckpt``/``.bin`` files can run code when loaded).
"""
from __future__ import annotations

import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open

from graphrun.engine.comfy.versions import DEFAULT_COMFY_VERSION, comfy_at_least, resolve_comfy_version
from graphrun.nodes.zimage import lora_keys
from graphrun.nodes.quantized_int8 import Int8Linear
from graphrun.nodes.quantized_w4 import W4A4Linear

__all__ = [
    "LoraError",
    "LoraMatch",
    "LoraWarning",
    "LoraWeights",
    "WeightPatch",
    "check_lora",
    "comfy_lora_name",
    "key_map",
    "load_lora",
    "match_lora",
]

def comfy_lora_name(comfy_version: str | None) -> str:
    """The ComfyUI release whose LoRA key table the ``comfy`` setting follows, for messages:
    "ComfyUI 0.33" for 0.33, else "ComfyUI v0.18.1" (the 2025.10 setting uses v0.18.1's table)."""
    return "ComfyUI 0.33" if _reads_kohya_te(comfy_version) else "ComfyUI v0.18.1"


def _reads_kohya_te(comfy_version: str | None) -> bool:
    """ComfyUI 0.33 (commit 0a7d2ffd) reads kohya ``lora_te_*`` keys for a single-prefix text encoder."""
    return comfy_at_least(resolve_comfy_version(comfy_version), "0.33")


ACCEPTED_LAYOUTS = (
    "for Z-Image: `diffusion_model.<module>` or kohya `lora_unet_<module_with_underscores>` with ComfyUI's "
    "module names (`layers.0.attention.qkv`, `attention.out`, `x_embedder`, `final_layer.linear`, "
    "`feed_forward.w1`); `<module>`, `transformer.<module>`, `diffusion_model.<module>` or "
    "`lycoris_<module_with_underscores>` with diffusers names (`layers.0.attention.to_q`, "
    "`attention.to_out.0`, `all_x_embedder.2-1`); for the Qwen3 text encoder `text_encoders.transformer.model."
    "<module>`, `text_encoders.qwen3_4b.transformer.model.<module>` or (ComfyUI 0.33) kohya "
    "`lora_te_<module_with_underscores>` (`lora_te_layers_0_self_attn_q_proj`); each followed by `.lora_A.weight`/"
    "`.lora_B.weight`, `.lora_down.weight`/`.lora_up.weight` (+ `.alpha`), or `.diff`/`.diff_b`"
)

_PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle"}

# ComfyUI's LoRA spellings, (up suffix, down suffix), in the order it tries them for one prefix.
_LORA_FORMS: tuple[tuple[str, str], ...] = (
    (".lora_up.weight", ".lora_down.weight"),
    ("_lora.up.weight", "_lora.down.weight"),
    (".lora_B.weight", ".lora_A.weight"),
    (".lora.up.weight", ".lora.down.weight"),
    (".lora_B", ".lora_A"),
    (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"),
    (".lora_B.default.weight", ".lora_A.default.weight"),
)

# Adapter types ComfyUI applies and graphrun does not: (what, key suffixes that make ComfyUI use it).
_UNSUPPORTED_ADAPTERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("LoHa", (".hada_w1_a",)),
    ("LoKr", (".lokr_w1", ".lokr_w2", ".lokr_w1_a", ".lokr_w2_a")),
    ("GLoRA", (".a1.weight",)),
    ("OFT/BOFT", (".oft_blocks",)),
)

# Every suffix ComfyUI reads somewhere: a file with none of them is not a LoRA at all.
_KNOWN_SUFFIXES: tuple[str, ...] = tuple(
    {s for pair in _LORA_FORMS for s in pair}
    | {s for _, group in _UNSUPPORTED_ADAPTERS for s in group}
    | {".alpha", ".dora_scale", ".lora_mid.weight", ".reshape_weight", ".diff", ".diff_b", ".w_norm",
       ".b_norm", ".set_weight", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".lokr_w1_b", ".lokr_w2_b",
       ".lokr_t2", ".rescale"}
)


class LoraError(ValueError):
    """A LoRA file that cannot be read, or that does not fit the model it is applied to."""


class LoraWarning(UserWarning):
    """A LoRA whose keys are partly not applied (ComfyUI does not apply them either)."""


@dataclass(eq=False)
class LoraWeights:
    """The tensors of one LoRA file (see :func:`load_lora`).

    Compared and hashed by identity: load a file once and pass the same object around, so
    :func:`~graphrun.nodes.lora_patching.patched` can see that a LoRA set is already applied. ``comfy_version`` is the ``comfy``
    setting whose key table decides which keys apply (it travels with the file so that every model
    it patches, while sampling or encoding, reads it the same way).
    """

    path: Path
    tensors: dict[str, torch.Tensor] = field(repr=False)
    metadata: dict[str, str] = field(default_factory=dict, repr=False)
    comfy_version: str = DEFAULT_COMFY_VERSION
    _matches: weakref.WeakKeyDictionary = field(
        default_factory=weakref.WeakKeyDictionary, init=False, repr=False
    )

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def keys(self) -> tuple[str, ...]:
        """Every tensor key of the file, in file order."""
        return tuple(self.tensors)

    @property
    def layout(self) -> str:
        """A short description of the key families in the file (for messages)."""
        return _describe_layout(self.keys)

    def __repr__(self) -> str:
        return f"LoraWeights({self.name!r}, layout={self.layout!r}, keys={len(self.tensors)})"


@dataclass(frozen=True)
class _Target:
    """A weight ComfyUI patches (or a row range of it), as parameters of the graphrun model.

    ``weight`` is ComfyUI's state-dict key; ``offset`` the ``(first row, rows)`` ComfyUI narrows it to
    (diffusers' ``to_q``/``to_k``/``to_v`` inside the fused qkv), ``None`` for all of it; ``params`` the
    graphrun parameters it consists of, each with its rows of the patched block (``None``: all rows);
    ``shape`` the block's shape, the shape a patch for it must have.
    """

    weight: str
    offset: tuple[int, int] | None
    params: tuple[tuple[str, slice | None], ...]
    shape: tuple[int, ...]

    @property
    def ident(self) -> tuple[str, tuple[int, int] | None]:
        return self.weight, self.offset


@dataclass(frozen=True)
class _KeyMap:
    """ComfyUI's prefix table for one model (insertion order matters), and its weights by key."""

    prefixes: dict[str, _Target]
    weights: dict[str, _Target]
    model_kind: str


@dataclass(frozen=True, eq=False)
class WeightPatch:
    """One update of one weight, resolved against a concrete model.

    ``kind`` is ``"lora"`` (``up @ down`` scaled by ``scale``), ``"diff"`` (``tensor`` added) or ``"set"``
    (the weight replaced by ``tensor``, regardless of strength, as ComfyUI's ``set_weight``).
    """

    kind: Literal["lora", "diff", "set"]
    target: _Target = field(repr=False)
    keys: tuple[str, ...]
    up: torch.Tensor | None = field(default=None, repr=False)
    down: torch.Tensor | None = field(default=None, repr=False)
    alpha: float | None = None
    tensor: torch.Tensor | None = field(default=None, repr=False)

    @property
    def weight(self) -> str:
        """ComfyUI's name of the patched weight (e.g. ``diffusion_model.layers.0.attention.qkv.weight``)."""
        return self.target.weight

    @property
    def params(self) -> tuple[str, ...]:
        """The graphrun parameters this patch changes."""
        return tuple(p for p, _ in self.target.params)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0]) if self.down is not None else 0

    @property
    def scale(self) -> float:
        """``alpha / rank``, or 1.0 without alpha (ComfyUI's rule)."""
        return 1.0 if self.alpha is None else self.alpha / self.rank

    def block(self, strength: float, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The amount this patch adds at ``strength`` (``kind`` lora/diff), or the new value (``set``), in
        ``dtype`` (the patch computation dtype), shaped like the patched block, in ComfyUI's operation
        order: a LoRA's ``up @ down`` is always float32 and scaled before the cast to ``dtype``; a diff is
        cast first and scaled in ``dtype``."""
        shape = self.target.shape
        if self.kind == "lora":
            up = self.up.to(device=device, dtype=torch.float32).flatten(1)
            down = self.down.to(device=device, dtype=torch.float32).flatten(1)
            return ((strength * self.scale) * torch.mm(up, down).reshape(shape)).to(dtype)
        value = self.tensor.to(device=device, dtype=dtype)
        return value if self.kind == "set" else strength * value


@dataclass(frozen=True, eq=False)
class LoraMatch:
    """What a LoRA does to one model: its patches in ComfyUI's order, and the file keys it used."""

    lora_name: str
    model_kind: str
    patches: tuple[WeightPatch, ...] = field(repr=False)
    used_keys: frozenset[str] = field(repr=False)
    model_weights: int

    @property
    def weights(self) -> tuple[str, ...]:
        """ComfyUI names of the patched weights, each once (the fused qkv counts as one, as there)."""
        return tuple(dict.fromkeys(p.weight for p in self.patches))

    @property
    def params(self) -> tuple[str, ...]:
        """Names of the patched graphrun parameters, in patch order, each once."""
        return tuple(dict.fromkeys(p for patch in self.patches for p in patch.params))


# ---------------------------------------------------------------------------------------------
# Loading


def load_lora(path: str | Path, comfy_version: str | None = None) -> LoraWeights:
    """Read a LoRA safetensors file, to be applied with the key table of ``comfy_version`` (a ``comfy``
    setting such as "0.33" or "0.18.1"; None: the default).

    Raises :class:`LoraError` for a missing file, a pickle-based file, a file that is not valid
    safetensors, and a file without a single key of any adapter type ComfyUI reads (a checkpoint, an
    embedding, ...). Which keys apply is only known against a model: see :func:`match_lora`.
    """
    version = resolve_comfy_version(comfy_version)
    path = Path(path)
    if not path.is_file():
        raise LoraError(f"LoRA file not found: {path}")
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise LoraError(
            f"LoRA {path.name!r} is a pickle-based file ({path.suffix}); graphrun only loads "
            ".safetensors, because unpickling can run arbitrary code. Convert it to safetensors first."
        )
    tensors, metadata = _read_safetensors(path)
    if not any(key.endswith(_KNOWN_SUFFIXES) for key in tensors):
        sample = ", ".join(repr(k) for k in list(tensors)[:5])
        raise LoraError(
            f"{path.name!r} holds no LoRA weights ({len(tensors)} tensors, e.g. {sample}); "
            f"{comfy_lora_name(version)} would ignore every key of it too. Accepted layouts: {ACCEPTED_LAYOUTS}."
        )
    return LoraWeights(path=path, tensors=tensors, metadata=metadata, comfy_version=version)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from .model_files import ModelFileError, read_safetensors_header, require_finite

    try:
        read_safetensors_header(path)  # says what is wrong with a damaged file, before reading it
    except ModelFileError as err:
        raise LoraError(f"LoRA {path.name!r} is not a valid safetensors file: {err}") from None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises several types for damaged files; all mean "unreadable"
        with path.open("rb") as fh:
            head = fh.read(4)
        if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
            raise LoraError(
                f"LoRA {path.name!r} is a pickle/torch.save file, not safetensors; graphrun refuses "
                "pickle because loading it can run arbitrary code. Convert it to safetensors first."
            ) from None
        raise LoraError(f"LoRA {path.name!r} is not a valid safetensors file (damaged or truncated?): {err}") from err
    # NaN/Inf weights would patch the model without any error and give black pictures.
    require_finite(tensors, path, "LoRA file", error=LoraError)
    return tensors, metadata


def _describe_layout(keys: Sequence[str]) -> str:
    families = (
        ("lora_unet_", "kohya (lora_unet_)"),
        ("lora_te", "kohya text encoder (lora_te*)"),
        ("lycoris_", "LyCORIS (lycoris_)"),
        ("base_model.model.", "PEFT (base_model.model.)"),
        ("model.diffusion_model.", "model.diffusion_model."),
        ("diffusion_model.", "ComfyUI (diffusion_model.)"),
        ("transformer.", "diffusers (transformer.)"),
        ("text_encoders.", "text encoder (text_encoders.)"),
    )
    found: dict[str, None] = {}
    for key in keys:
        label = next((name for prefix, name in families if key.startswith(prefix)), "no prefix")
        found[label] = None
    return " + ".join(found) or "empty"


# ---------------------------------------------------------------------------------------------
# ComfyUI's prefix tables


def key_map(model: torch.nn.Module, comfy_version: str | None = None) -> _KeyMap:
    """ComfyUI's LoRA prefix table for ``model`` (a diffusers Z-Image transformer or a transformers
    Qwen3 text encoder) under the ``comfy`` setting ``comfy_version`` (None: the default), expressed
    against the model's own parameter names. Only the text encoder's table differs between 0.33 and
    v0.18.1 (kohya ``lora_te_*``); the Z-Image transformer's is the same in both."""
    is_zimage = hasattr(model, "all_x_embedder") and hasattr(model, "layers")
    if not is_zimage and not (hasattr(model, "embed_tokens") and hasattr(model, "layers")):
        raise LoraError(
            f"graphrun applies LoRAs to Z-Image's transformer and its Qwen3 text encoder only, "
            f"not to {type(model).__name__}."
        )
    variant = None if is_zimage else _reads_kohya_te(comfy_version)  # one table per variant, per model
    cached = getattr(model, "_graphrun_lora_key_maps", None)
    if cached is None:
        cached = model._graphrun_lora_key_maps = {}
    if variant not in cached:
        cached[variant] = _zimage_key_map(model) if is_zimage else _qwen3_key_map(model, bool(variant))
    return cached[variant]


def _param_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    # A quantized Linear keeps no `weight` parameter, but ComfyUI's table lists its weight: list it
    # too, so that a LoRA for it is patched (int8) or refused by match_lora (other formats) instead of
    # silently ignored.
    for name in {*_int8_modules(model), *_quantized_modules(model)}:
        module = model.get_submodule(name)
        shapes[f"{name}.weight"] = (int(module.out_features), int(module.in_features))
    return shapes


def _stacked_target(comfy_key: str, pieces: list[tuple[str, tuple[int, ...]]]) -> _Target:
    """A ComfyUI weight made of graphrun parameters stacked along the rows (one, or q/k/v)."""
    if len(pieces) == 1:
        return _Target(comfy_key, None, ((pieces[0][0], None),), pieces[0][1])
    params: list[tuple[str, slice | None]] = []
    start = 0
    for name, shape in pieces:
        params.append((name, slice(start, start + shape[0])))
        start += shape[0]
    return _Target(comfy_key, None, tuple(params), (start, *pieces[0][1][1:]))


# diffusers module names (inside a block) that ComfyUI's Z-Image diffusers table lists
_ZIMAGE_BLOCK_MODULES = (
    "attention.to_q", "attention.to_k", "attention.to_v", "attention.norm_q", "attention.norm_k",
    "attention.to_out.0", "attention_norm1", "attention_norm2", "feed_forward.w1", "feed_forward.w2",
    "feed_forward.w3", "ffn_norm1", "ffn_norm2", "adaLN_modulation.0",
)
_ZIMAGE_GLOBAL_MODULES = (
    f"all_final_layer.{lora_keys.PATCH_KEY}.linear", f"all_final_layer.{lora_keys.PATCH_KEY}.adaLN_modulation.1",
    f"all_x_embedder.{lora_keys.PATCH_KEY}", "cap_embedder.0", "cap_embedder.1", "t_embedder.mlp.0",
    "t_embedder.mlp.2",
)


def _zimage_key_map(model: torch.nn.Module) -> _KeyMap:
    shapes = _param_shapes(model)
    # ComfyUI's weights (original Z-Image names), each as the graphrun parameters it consists of
    stacks: dict[str, list[tuple[int, str]]] = {}
    for name in shapes:
        module, dot, leaf = name.rpartition(".")
        if dot:
            native, third = lora_keys.diffusers_to_native(module)
            comfy_key = f"diffusion_model.{native}.{leaf}"
        else:
            comfy_key, third = f"diffusion_model.{name}", None
        stacks.setdefault(comfy_key, []).append((third or 0, name))
    weights = {
        key: _stacked_target(key, [(n, shapes[n]) for _, n in sorted(parts)]) for key, parts in stacks.items()
    }
    comfy_of = {p: key for key, target in weights.items() for p, _ in target.params}

    prefixes: dict[str, _Target] = {}
    # 1. every weight of ComfyUI's model under its own name, and kohya's flattened spelling of it
    for key, target in weights.items():
        if key.endswith(".weight"):
            module = key[len("diffusion_model."):-len(".weight")]
            prefixes["lora_unet_" + module.replace(".", "_")] = target
            prefixes["diffusion_model." + module] = target
        else:
            prefixes[key] = target
    # 2. the diffusers names ComfyUI's Z-Image table lists, with four prefixes each
    n_refiner = int(getattr(model.config, "n_refiner_layers", len(getattr(model, "noise_refiner", ()))))
    blocks = [f"layers.{i}" for i in range(len(model.layers))]
    blocks += [f"context_refiner.{i}" for i in range(n_refiner)] + [f"noise_refiner.{i}" for i in range(n_refiner)]
    hidden = int(model.config.dim)
    modules = [f"{b}.{m}" for b in blocks for m in _ZIMAGE_BLOCK_MODULES] + list(_ZIMAGE_GLOBAL_MODULES)
    for module in modules:
        param = module + ".weight"
        if param not in shapes:  # listed by ComfyUI for a weight Z-Image does not have: patches nothing
            continue
        target = weights[comfy_of[param]]
        if len(target.params) > 1:  # to_q/to_k/to_v: ComfyUI narrows the fused qkv to this third
            third = lora_keys.QKV_TARGETS.index(module.rsplit(".", 1)[1])
            if shapes[param][0] != hidden:
                raise LoraError(f"{module}: {shapes[param][0]} rows, ComfyUI's qkv split assumes {hidden}")
            target = _Target(target.weight, (third * hidden, hidden), ((param, None),), shapes[param])
        for prefix in (f"diffusion_model.{module}", f"transformer.{module}", "lycoris_" + module.replace(".", "_"), module):
            prefixes[prefix] = target
    return _KeyMap(prefixes, weights, "Z-Image transformer")


def _qwen3_key_map(model: torch.nn.Module, kohya_te: bool) -> _KeyMap:
    """ComfyUI's table for Z-Image's Qwen3 (model_lora_keys_clip): ComfyUI's state dict is graphrun's
    under ``qwen3_4b.transformer.model.``; every weight gets ``text_encoders.`` + that key and the same
    without the ``qwen3_4b.`` wrapper, and with ``kohya_te`` (0.33: the one top-level prefix
    ``qwen3_4b``) then, after all of those, kohya's ``lora_te_`` + the key below ``...model.`` with
    "_" for "." (so a file holding two spellings of one weight patches it with the kohya one)."""
    shapes = _param_shapes(model)
    weights = {f"qwen3_4b.transformer.model.{n}": _Target(f"qwen3_4b.transformer.model.{n}", None, ((n, None),), s)
               for n, s in shapes.items()}
    modules = [name[: -len(".weight")] for name in shapes if name.endswith(".weight")]
    prefixes: dict[str, _Target] = {}
    for module in modules:
        target = weights[f"qwen3_4b.transformer.model.{module}.weight"]
        prefixes[f"text_encoders.qwen3_4b.transformer.model.{module}"] = target
        prefixes[f"text_encoders.transformer.model.{module}"] = target
    if kohya_te:
        for module in modules:
            prefixes["lora_te_" + module.replace(".", "_")] = weights[f"qwen3_4b.transformer.model.{module}.weight"]
    return _KeyMap(prefixes, weights, "Qwen3 text encoder")


# ---------------------------------------------------------------------------------------------
# Matching


def match_lora(model: torch.nn.Module, lora: LoraWeights) -> LoraMatch:
    """Resolve ``lora`` against ``model`` with the rules of ComfyUI at ``lora.comfy_version`` (see the
    module docs).

    Returns the patches (possibly none) and the file keys they use; keys not used are what ComfyUI
    would not load either (:func:`check_lora` reports them). Raises :class:`LoraError` when a used
    key cannot be applied: a pair that does not fit its weight (a LoRA for another model size), a
    LoRA without its down matrix, or an adapter type graphrun does not implement. The result is
    remembered per model.
    """
    cached = lora._matches.get(model)
    if cached is not None:
        return cached
    table = key_map(model, lora.comfy_version)
    tensors = lora.tensors
    chosen: dict[tuple[str, tuple[int, int] | None], WeightPatch] = {}  # ComfyUI's patch dict
    used: set[str] = set()
    quantized = _quantized_modules(model)

    for prefix, target in table.prefixes.items():
        alpha_key = f"{prefix}.alpha"
        alpha = float(tensors[alpha_key].float().item()) if alpha_key in tensors else None
        if alpha is not None:
            used.add(alpha_key)
        dora_key = f"{prefix}.dora_scale"
        for up_suffix, down_suffix in _LORA_FORMS:
            up_key = prefix + up_suffix
            if up_key not in tensors:
                continue
            down_key = prefix + down_suffix
            if down_key not in tensors:
                raise LoraError(f"LoRA {lora.name!r} is incomplete: {up_key!r} has no {down_key!r} "
                                f"({comfy_lora_name(lora.comfy_version)} fails on it too).")
            for extra, what in ((dora_key, "DoRA"), (f"{prefix}.reshape_weight", "`reshape_weight`")):
                if extra in tensors:
                    raise _unsupported(lora, what, extra)
            if up_suffix == ".lora_up.weight" and f"{prefix}.lora_mid.weight" in tensors:
                raise _unsupported(lora, "LoCon (Tucker) `lora_mid`", f"{prefix}.lora_mid.weight")
            keys = (down_key, up_key) + ((alpha_key,) if alpha is not None else ())
            patch = WeightPatch("lora", target, keys, up=tensors[up_key], down=tensors[down_key], alpha=alpha)
            _check_fits(lora, patch)
            chosen[target.ident] = patch
            used.update((up_key, down_key))
            break
        for what, suffixes in _UNSUPPORTED_ADAPTERS:
            for suffix in suffixes:
                if prefix + suffix in tensors:
                    raise _unsupported(lora, what, prefix + suffix)
        for suffix, on_bias, kind in ((".w_norm", False, "diff"), (".b_norm", True, "diff"), (".diff", False, "diff"),
                                      (".diff_b", True, "diff"), (".set_weight", False, "set")):
            key = prefix + suffix
            if key not in tensors or (suffix == ".b_norm" and f"{prefix}.w_norm" not in tensors):
                continue
            where = _bias_target(table, target) if on_bias else target
            if where is None:  # ComfyUI derives a bias name that does not exist: not applied there either
                continue
            patch = WeightPatch(kind, where, (key,), tensor=tensors[key])
            _check_fits(lora, patch)
            chosen[where.ident] = patch
            used.add(key)

    patches = tuple(chosen.values())
    for patch in patches:
        for param in patch.params:
            if param.rpartition(".")[0] in quantized:
                raise LoraError(
                    f"LoRA {lora.name!r} patches {param!r}, a quantized layer; graphrun cannot patch "
                    "quantized weights (ComfyUI would). Load the model unquantized to use this LoRA."
                )
    # keys of patches that a later prefix overrode still count as loaded, as in ComfyUI
    match = LoraMatch(lora.name, table.model_kind, patches, frozenset(used), len(table.weights))
    lora._matches[model] = match
    return match


def _bias_target(table: _KeyMap, target: _Target) -> _Target | None:
    """The bias ComfyUI patches for a ``.diff_b``/``.b_norm`` key: named after the weight's key."""
    if target.offset is not None or not target.weight.endswith(".weight"):
        return None
    return table.weights.get(target.weight[: -len(".weight")] + ".bias")


def _quantized_modules(model: torch.nn.Module) -> set[str]:
    """Quantized layers graphrun cannot patch (the formats dequantized at each call)."""
    return {name for name, module in model.named_modules() if hasattr(module, "quantized_weight")}


def _int8_modules(model: torch.nn.Module) -> dict[str, Int8Linear | W4A4Linear]:
    """The int8 and 4-bit layers, which are patched as ComfyUI 0.33 patches them (:func:`_apply_int8`)."""
    return {name: module for name, module in model.named_modules() if isinstance(module, (Int8Linear, W4A4Linear))}


def _unsupported(lora: LoraWeights, what: str, key: str) -> LoraError:
    return LoraError(
        f"LoRA {lora.name!r} uses {what} (key {key!r}); {comfy_lora_name(lora.comfy_version)} applies it, graphrun "
        "does not implement it, so the result would silently differ. Use a plain LoRA."
    )


def _check_fits(lora: LoraWeights, patch: WeightPatch) -> None:
    target = patch.target
    numel = 1
    for size in target.shape:
        numel *= size
    if patch.kind == "lora":
        if patch.up.ndim < 2 or patch.down.ndim < 2 or patch.up.flatten(1).shape[1] != patch.down.shape[0]:
            raise LoraError(
                f"LoRA {lora.name!r}: {patch.keys[0]!r} {tuple(patch.down.shape)} and {patch.keys[1]!r} "
                f"{tuple(patch.up.shape)} do not form a low-rank pair (down is [rank, in], up is [out, rank])."
            )
        rows, cols = patch.up.shape[0], patch.down.flatten(1).shape[1]
        fits = rows * cols == numel  # ComfyUI reshapes up @ down to the weight's shape
        got = f"a {rows}x{cols} update"
    else:
        fits = tuple(patch.tensor.shape) == target.shape
        got = f"a {tuple(patch.tensor.shape)} tensor"
    if not fits:
        where = " + ".join(repr(p) for p, _ in target.params)
        key = patch.keys[1] if patch.kind == "lora" else patch.keys[0]
        raise LoraError(
            f"LoRA {lora.name!r} does not fit {where}: {key!r} gives {got} for a weight "
            f"of shape {target.shape} (a LoRA for another model or model size?)."
        )


def check_lora(lora: LoraWeights, models: Sequence[torch.nn.Module]) -> tuple[LoraMatch, ...]:
    """Match ``lora`` against every model ComfyUI's loader would see (the transformer, plus the text
    encoder for ``LoraLoader``) and report what is not applied, the way ComfyUI decides it.

    Warns once with :class:`LoraWarning`, naming the keys that none of the models uses (ComfyUI
    ignores the same keys). Raises :class:`LoraError` when no key applies at all, saying that ComfyUI
    would also ignore the file, unless every key is a text-encoder key: such a file (kohya `lora_te*`
    keys that the followed ComfyUI does not read for Qwen3, or text-encoder keys without a CLIP) runs
    in ComfyUI as a no-op, so it only warns here too.
    """
    comfy = comfy_lora_name(lora.comfy_version)
    matches = tuple(match_lora(model, lora) for model in models)
    used = set().union(*(m.used_keys for m in matches))
    ignored = [k for k in lora.keys if k not in used]
    kinds = " and the ".join(m.model_kind for m in matches)
    hints = _hints(lora, ignored, matches, models)
    if not used and all(k.startswith(_TEXT_ENCODER_KEY_PREFIXES) for k in lora.keys):
        warnings.warn(
            f"LoRA {lora.name!r}: none of its {len(lora.keys)} text-encoder keys is applied, and "
            f"{comfy} ignores them too ('lora key not loaded'): {_few(ignored)}; the model and "
            f"clip are unchanged.{hints}",
            LoraWarning,
            stacklevel=2,
        )
        return matches
    if not used:
        sample = ", ".join(repr(k) for k in lora.keys[:4])
        total = sum(m.model_weights for m in matches)
        raise LoraError(
            f"LoRA {lora.name!r} matched none of the {total} weights of the {kinds} (detected layout: "
            f"{lora.layout}; keys e.g. {sample}; {len(lora.keys)} keys in all). {comfy} "
            f"would ignore every key of it too and leave the model unchanged.{hints} It may be made for "
            f"another model. Accepted layouts: {ACCEPTED_LAYOUTS}."
        )
    if ignored:
        patched_weights = sum(len(m.weights) for m in matches)
        warnings.warn(
            f"LoRA {lora.name!r}: {len(ignored)} of {len(lora.keys)} keys are not applied, and "
            f"{comfy} ignores them too ('lora key not loaded'): {_few(ignored)}; "
            f"{patched_weights} weights patched.{hints}",
            LoraWarning,
            stacklevel=2,
        )
    return matches


_TEXT_ENCODER_KEY_PREFIXES = ("lora_te", "text_encoders.", "text_encoder.")


def _hints(lora: LoraWeights, ignored: Sequence[str], matches: Sequence[LoraMatch],
           models: Sequence[torch.nn.Module]) -> str:
    """Why text-encoder keys were ignored, when the reason is not the model: no CLIP, or a kohya
    spelling that the followed ComfyUI does not read for Qwen3."""
    notes: list[str] = []
    kohya_te = _reads_kohya_te(lora.comfy_version)
    with_clip = any(m.model_kind == "Qwen3 text encoder" for m in matches)
    te_keys = ("text_encoders.", "lora_te_") if kohya_te else ("text_encoders.",)
    if not with_clip and any(k.startswith(te_keys) for k in ignored):
        notes.append("its text-encoder keys apply only with a CLIP connected (ComfyUI's LoraLoader)")
    kohya_ignored = [k for k in ignored if k.startswith("lora_te") and "text_model" not in k]  # not a CLIP's keys
    if kohya_ignored and not kohya_te:
        encoders = [model for model, m in zip(models, matches) if m.model_kind == "Qwen3 text encoder"]
        later = key_map(encoders[0], "0.33").prefixes if encoders else {}
        readable = sum(1 for k in kohya_ignored if k.split(".", 1)[0] in later)
        notes.append("kohya `lora_te*` keys are not read for Z-Image's Qwen3 encoder by ComfyUI v0.18.1"
                     + (f" (ComfyUI 0.33 reads {readable} of these keys: run with --comfy 0.33 to apply them)"
                        if readable else ""))
    elif kohya_ignored and with_clip:
        notes.append("for Z-Image's Qwen3 encoder ComfyUI 0.33 reads kohya keys only as `lora_te_<module>`, "
                     "the encoder's module path with `_` (`lora_te_layers_0_self_attn_q_proj`); "
                     "`lora_te_model_*`, `lora_te1_*` and `lora_te2_*` keys and modules the encoder lacks "
                     "are not read")
    return "".join(f" Note: {n}." for n in notes)


def _few(keys: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" ... (+{len(keys) - n} more)" if len(keys) > n else "")
