"""Small deterministic test LoRAs for a (tiny) Z-Image transformer, one file per accepted key layout.

Every file except ``unmatched`` and ``partial`` encodes the *same* update: one seeded set of
low-rank pairs over all of the transformer's linear layers, with the query/key/value projections
of each block sharing their down matrix so the set can also be written as a fused ``attention.qkv``
LoRA. Where a layout carries an ``alpha``, the up matrix is pre-scaled by ``rank / alpha`` (a power
of two), so ``(alpha / rank) · (up @ down)`` is bit-identical to the unscaled pair. Loading any of
them and patching must therefore give identical weights, which is what the tests check.

Magnitudes are comparable to the tiny model's own weights, so a patched model's output visibly
differs from the base model's.

``comfy_native_qkv`` uses *bare* original names (``layers.0.attention.qkv.lora_A.weight``): ComfyUI
v0.18.1 has no such prefix for Z-Image and ignores every key of it, and so does graphrun (the file
"matches nothing"). :func:`write_comfy_ignored_loras` writes further layouts that ComfyUI ignores
wholly or in part, for tests.

Given the text encoder, :func:`write_test_loras` also writes ``kohya_te``: a LoRA as kohya's trainers
ship them for Z-Image, ``lora_unet_*`` keys for the transformer (the same update as ``kohya``) plus
``lora_te_*`` keys for every Linear of the Qwen3 encoder. ComfyUI 0.33 applies both parts (the text
encoder at ``LoraLoader``'s ``strength_clip``); ComfyUI v0.18.1 ignores the ``lora_te_*`` keys.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from graphrun.nodes.zimage import lora_keys

__all__ = [
    "IGNORED_LAYOUTS",
    "LAYOUTS",
    "RANK",
    "TE_ALPHA",
    "TE_LAYOUTS",
    "canonical_pairs",
    "text_encoder_pairs",
    "write_comfy_ignored_loras",
    "write_test_loras",
]

#: Rank of the test LoRAs.
RANK = 4

#: The layouts `write_test_loras` writes, in order (the keys of its result).
LAYOUTS = (
    "peft",  # transformer.<diffusers>.lora_A.weight / lora_B.weight
    "peft_bare_default",  # <diffusers>.lora_A.default.weight / lora_B.default.weight
    "kohya",  # lora_unet_<native with _>.lora_down.weight / lora_up.weight / alpha (fused qkv)
    "lycoris",  # lycoris_<diffusers with _>.lora_down.weight / lora_up.weight / alpha
    "diffusion_model_ab",  # diffusion_model.<native>.lora_A.weight / lora_B.weight (fused qkv)
    "diffusion_model_updown",  # diffusion_model.<native>.lora_down.weight / lora_up.weight / alpha
    "diffusion_model_diffusers_names",  # diffusion_model.<diffusers>.lora_A/B.weight (ai-toolkit style)
    "comfy_native_qkv",  # <native>.lora_A/B.weight, only the fused attention.qkv modules (ComfyUI ignores it)
    "unmatched",  # SDXL UNet + CLIP keys: matches nothing in Z-Image
    "partial",  # half Z-Image keys, half keys for modules the tiny model does not have
)

#: The layouts `write_test_loras` writes in addition when it is given the text encoder.
TE_LAYOUTS = (
    "kohya_te",  # lora_unet_<native with _> (as "kohya") + lora_te_<Qwen3 module with _>.lora_down/up + alpha
)

#: alpha of the ``lora_te_*`` pairs of ``kohya_te`` (rank 4: each update is scaled by 0.75).
TE_ALPHA = 3.0

#: The layouts `write_comfy_ignored_loras` writes: every module of the canonical update under a key
#: spelling ComfyUI v0.18.1 does not read for Z-Image (in whole or, for bare_native, in part).
IGNORED_LAYOUTS = (
    "bare_native",  # <native>.lora_A/B.weight for every module: only names diffusers shares apply
    "peft_base_model",  # base_model.model.<diffusers>.lora_A/B.weight
    "model_diffusion_model",  # model.diffusion_model.<native>.lora_A/B.weight
    "transformer_native",  # transformer.<native>.lora_A/B.weight (qkv, out, x_embedder, final_layer ignored)
    "kohya_diffusers_names",  # lora_unet_<diffusers with _> (to_q, to_out_0, all_x_embedder ignored)
    "lycoris_native",  # lycoris_<native with _> (qkv, out, x_embedder, final_layer ignored)
)


def canonical_pairs(
    transformer: torch.nn.Module, seed: int = 20240607, rank: int = RANK
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Seeded ``{diffusers module name: (down [rank, in], up [out, rank])}`` for every linear layer.

    The to_q/to_k/to_v of a block share one down tensor (the same object), as a fused qkv LoRA does.
    """
    gen = torch.Generator().manual_seed(seed)
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    shared_down: dict[str, torch.Tensor] = {}
    for name, module in transformer.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        out_features, in_features = module.weight.shape
        native, third = lora_keys.diffusers_to_native(name)
        if third is not None:
            if native not in shared_down:
                shared_down[native] = torch.randn(rank, in_features, generator=gen) * 0.25
            down = shared_down[native]
        else:
            down = torch.randn(rank, in_features, generator=gen) * 0.25
        up = torch.randn(out_features, rank, generator=gen) * 0.25
        pairs[name] = (down, up)
    return pairs


def text_encoder_pairs(
    text_encoder: torch.nn.Module, seed: int = 20240607, rank: int = RANK
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Seeded ``{Qwen3 module name: (down [rank, in], up [out, rank])}`` for every Linear of the encoder
    (``layers.0.self_attn.q_proj``, ..., ``layers.N.mlp.down_proj``), the modules kohya trains."""
    gen = torch.Generator().manual_seed(seed + 2)
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, module in text_encoder.named_modules():
        if isinstance(module, torch.nn.Linear):
            out_features, in_features = module.weight.shape
            down = torch.randn(rank, in_features, generator=gen) * 0.25
            pairs[name] = (down, torch.randn(out_features, rank, generator=gen) * 0.25)
    return pairs


def _kohya_te(pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], alpha: float) -> dict[str, torch.Tensor]:
    """kohya's text-encoder keys: ``lora_te_<module with _>.lora_down/lora_up.weight`` and ``.alpha``."""
    out: dict[str, torch.Tensor] = {}
    for name, (down, up) in pairs.items():
        key = "lora_te_" + name.replace(".", "_")
        out[f"{key}.lora_down.weight"] = down
        out[f"{key}.lora_up.weight"] = up
        out[f"{key}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return out


def _native_pairs(pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The same pairs under original/ComfyUI-native names, q/k/v fused into one qkv pair."""
    native: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    fused: dict[str, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
    for name, (down, up) in pairs.items():
        native_name, third = lora_keys.diffusers_to_native(name)
        if third is None:
            native[native_name] = (down, up)
        else:
            fused.setdefault(native_name, []).append((third, down, up))
    for native_name, parts in fused.items():
        parts.sort(key=lambda p: p[0])
        native[native_name] = (parts[0][1], torch.cat([up for _, _, up in parts], dim=0))
    return native


def _ab(pairs, prefix: str, down_suffix: str, up_suffix: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, (down, up) in pairs.items():
        out[f"{prefix}{name}{down_suffix}"] = down
        out[f"{prefix}{name}{up_suffix}"] = up
    return out


def _with_alpha(pairs, prefix: str, alpha_factor: float, underscore: bool) -> dict[str, torch.Tensor]:
    """lora_down/lora_up/alpha keys with alpha = rank·alpha_factor and up pre-divided by it."""
    out: dict[str, torch.Tensor] = {}
    for name, (down, up) in pairs.items():
        key = name.replace(".", "_") if underscore else name
        rank = down.shape[0]
        out[f"{prefix}{key}.lora_down.weight"] = down
        out[f"{prefix}{key}.lora_up.weight"] = up / alpha_factor
        out[f"{prefix}{key}.alpha"] = torch.tensor(rank * alpha_factor, dtype=torch.float32)
    return out


def _foreign_keys(gen: torch.Generator, rank: int) -> dict[str, torch.Tensor]:
    """Keys of an SDXL LoRA (UNet and CLIP): none of them exists in Z-Image."""
    out: dict[str, torch.Tensor] = {}
    for module, width in (
        ("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q", 640),
        ("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k", 640),
        ("lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2", 1280),
        ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 768),
    ):
        out[f"{module}.lora_down.weight"] = torch.randn(rank, width, generator=gen)
        out[f"{module}.lora_up.weight"] = torch.randn(width, rank, generator=gen)
        out[f"{module}.alpha"] = torch.tensor(float(rank))
    return out


def write_test_loras(
    transformer: torch.nn.Module,
    out_dir: Path,
    seed: int = 20240607,
    text_encoder: torch.nn.Module | None = None,
) -> dict[str, Path]:
    """Write one LoRA per layout (see ``LAYOUTS``) for ``transformer`` into ``out_dir``, and with
    ``text_encoder`` (the Qwen3 encoder) also those of ``TE_LAYOUTS``.

    Returns ``{layout: path}``. Deterministic for a given model config and seed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = canonical_pairs(transformer, seed)
    native = _native_pairs(pairs)
    fused_only = {n: p for n, p in native.items() if n.endswith(".attention.qkv")}
    gen = torch.Generator().manual_seed(seed + 1)

    half = dict(list(pairs.items())[: len(pairs) // 2])
    dim = next(up.shape[0] for name, (_, up) in pairs.items() if name.endswith(".attention.to_q"))
    missing = {  # blocks far past the tiny model's depth
        f"layers.{i + 40}.attention.to_q": (torch.randn(RANK, dim, generator=gen), torch.randn(dim, RANK, generator=gen))
        for i in range(len(half))
    }

    files: dict[str, dict[str, torch.Tensor]] = {
        "peft": _ab(pairs, "transformer.", ".lora_A.weight", ".lora_B.weight"),
        "peft_bare_default": _ab(pairs, "", ".lora_A.default.weight", ".lora_B.default.weight"),
        "kohya": _with_alpha(native, "lora_unet_", 0.5, underscore=True),
        "lycoris": _with_alpha(pairs, "lycoris_", 2.0, underscore=True),
        "diffusion_model_ab": _ab(native, "diffusion_model.", ".lora_A.weight", ".lora_B.weight"),
        "diffusion_model_updown": _with_alpha(native, "diffusion_model.", 0.5, underscore=False),
        "diffusion_model_diffusers_names": _ab(pairs, "diffusion_model.", ".lora_A.weight", ".lora_B.weight"),
        "comfy_native_qkv": _ab(fused_only, "", ".lora_A.weight", ".lora_B.weight"),
        "unmatched": _foreign_keys(gen, RANK),
        "partial": _ab({**half, **missing}, "transformer.", ".lora_A.weight", ".lora_B.weight"),
    }
    layouts = LAYOUTS
    if text_encoder is not None:
        files["kohya_te"] = {**files["kohya"], **_kohya_te(text_encoder_pairs(text_encoder, seed), TE_ALPHA)}
        layouts += TE_LAYOUTS
    paths: dict[str, Path] = {}
    for layout in layouts:
        path = out_dir / f"tiny_lora_{layout}.safetensors"
        # safetensors refuses tensors that share memory (the shared q/k/v down): store copies
        save_file({k: v.contiguous().clone() for k, v in files[layout].items()}, str(path), metadata={"layout": layout})
        paths[layout] = path
    return paths


def write_comfy_ignored_loras(transformer: torch.nn.Module, out_dir: Path, seed: int = 20240607) -> dict[str, Path]:
    """Write the canonical update once per layout of ``IGNORED_LAYOUTS`` into ``out_dir``.

    Returns ``{layout: path}``. The keys are those a user might expect to work but ComfyUI v0.18.1
    does not read for Z-Image (``bare_native`` and the ``transformer_``/``kohya_``/``lycoris_`` ones
    partly work: where the original and diffusers names agree, as for ``feed_forward.w1``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = canonical_pairs(transformer, seed)
    native = _native_pairs(pairs)
    underscored = {name.replace(".", "_"): pair for name, pair in pairs.items()}
    native_underscored = {name.replace(".", "_"): pair for name, pair in native.items()}
    files: dict[str, dict[str, torch.Tensor]] = {
        "bare_native": _ab(native, "", ".lora_A.weight", ".lora_B.weight"),
        "peft_base_model": _ab(pairs, "base_model.model.", ".lora_A.weight", ".lora_B.weight"),
        "model_diffusion_model": _ab(native, "model.diffusion_model.", ".lora_A.weight", ".lora_B.weight"),
        "transformer_native": _ab(native, "transformer.", ".lora_A.weight", ".lora_B.weight"),
        "kohya_diffusers_names": _ab(underscored, "lora_unet_", ".lora_down.weight", ".lora_up.weight"),
        "lycoris_native": _ab(native_underscored, "lycoris_", ".lora_down.weight", ".lora_up.weight"),
    }
    paths: dict[str, Path] = {}
    for layout in IGNORED_LAYOUTS:
        path = out_dir / f"tiny_lora_{layout}.safetensors"
        save_file({k: v.contiguous().clone() for k, v in files[layout].items()}, str(path), metadata={"layout": layout})
        paths[layout] = path
    return paths
