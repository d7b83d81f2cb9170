"""Patching a model's weights with LoRAs while a block runs, exactly as ComfyUI 0.33 or v0.18.1 patches them.

:func:`patched` applies the matches of :mod:`graphrun.nodes.lora` to the weights in place and restores the
untouched originals afterwards, so branches with different LoRAs share one base model. Float weights get
``W + strength * delta`` in ComfyUI's LoRA compute dtype; int8 and 4-bit layers of ComfyUI 0.33 checkpoints
are dequantized, patched and requantized with ComfyUI's seeded stochastic rounding (see
:mod:`graphrun.nodes.quantized_int8`, :mod:`graphrun.nodes.quantized_w4`).
"""
from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from graphrun.nodes.lora import LoraError, LoraWeights, WeightPatch, _int8_modules, _Target, key_map, match_lora
from graphrun.nodes.quantized_int8 import Int8Linear, Int8Weight, comfy_seed, dequantize_for_patch, requantize_patched
from graphrun.nodes.quantized_w4 import (W4A4_QUANT_GROUP, W4A4Linear, W4A4Weight, decode_w4a8,
                                         dequantize_w4a4_for_patch, requantize_w4a4, requantize_w4a8)

__all__ = ["lora_compute_dtype", "patched"]



@dataclass
class _PatchState:
    """What is applied to one model right now, and the untouched originals of the patched weights."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    applied: tuple[tuple[LoraWeights, float], ...] = ()
    backups: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


_STATES: weakref.WeakKeyDictionary[torch.nn.Module, _PatchState] = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


def _state_of(model: torch.nn.Module) -> _PatchState:
    with _STATES_LOCK:
        state = _STATES.get(model)
        if state is None:
            state = _STATES[model] = _PatchState()
        return state


@contextmanager
def patched(
    model: torch.nn.Module,
    loras: Sequence[tuple[LoraWeights, float]],
    *,
    backup_device: torch.device | str | None = None,
) -> Iterator[None]:
    """Apply ``(lora, strength)`` pairs to ``model``'s weights in place for the ``with`` block.

    Each patched weight is computed from its original value in float32 (float16 on the GPUs where
    ComfyUI does that, see :func:`lora_compute_dtype`), all patches of all LoRAs in order (ComfyUI's
    order), and cast back once. On exit the original weights are restored bit for bit
    from backups of just the touched weights (kept on ``backup_device``, default: the weight's own
    device; ``"cpu"`` saves accelerator memory at the cost of copies). Pairs with strength 0 are skipped.

    Entering again with the same LoRA objects and strengths while they are applied (a nested block)
    does nothing; a nested block with a different set swaps it in and puts the outer set back on
    exit. One model is patched by one thread at a time: a block waits for another thread's block on
    the same model to finish. Everything is matched (and any :class:`LoraError` raised) before a
    weight is touched.
    """
    wanted = tuple((lora, float(strength)) for lora, strength in loras if float(strength) != 0.0)
    state = _state_of(model)
    with state.lock:
        previous = state.applied
        if _same_set(previous, wanted):
            yield
            return
        plan = _plan(model, wanted)
        _restore(state)
        try:
            _apply(model, state, plan, wanted, backup_device)
            yield
        finally:
            _restore(state)
            if previous:
                _apply(model, state, _plan(model, previous), previous, backup_device)


def _same_set(a: tuple[tuple[LoraWeights, float], ...], b: tuple[tuple[LoraWeights, float], ...]) -> bool:
    return len(a) == len(b) and all(la is lb and sa == sb for (la, sa), (lb, sb) in zip(a, b))


def _plan(model: torch.nn.Module, loras: tuple[tuple[LoraWeights, float], ...]) -> list[tuple[WeightPatch, float]]:
    """Every patch of every LoRA with its strength, LoRAs in order, each LoRA's patches in ComfyUI's order.

    Raises :class:`LoraError` for a patch of an int8 layer that graphrun cannot patch as ComfyUI does
    (on an accelerator, see :func:`_int8_patch_device`)."""
    int8 = _int8_modules(model)
    plan = []
    for lora, strength in loras:
        for patch in match_lora(model, lora).patches:
            if int8 and _int8_parts(patch.target, int8):
                _check_int8_device(model, int8, patch, lora.name)
                _check_w4a4_inputs(int8, patch, lora.name)
            plan.append((patch, strength))
    return plan


# GPUs of compute capability 7.x on which ComfyUI does not use float16
_NO_FP16_GPUS = ("1660", "1650", "1630", "T500", "T550", "T600", "MX550", "MX450", "CMP 30HX", "T2000", "T1000", "T1200")


def lora_compute_dtype(weight: torch.Tensor, execution_device: torch.device | str | None = None) -> torch.dtype:
    """The dtype ComfyUI (v0.18.1, 0.33) patches a weight in: float16 where it would compute in float16 (CUDA
    GPUs of compute capability 7 and up, ROCm, Apple MPS, Intel XPUs with float16), else float32.

    ComfyUI switched to float16 for LoRA math on GPUs in December 2025 (its ``lora_compute_dtype``):
    the weight is cast to float16, each update is added in float16, and the sum is cast to the weight's
    dtype. graphrun follows that on such devices, except for float32 models, which correspond to
    ComfyUI's ``--force-fp32`` (float32 LoRA math everywhere), as does the CPU. ``execution_device``
    is where the model runs when that is not where its weights are (offloading).
    """
    if weight.dtype == torch.float32:
        return torch.float32
    device = torch.device(execution_device) if execution_device is not None else weight.device
    if device.type == "mps":
        return torch.float16
    if device.type == "xpu":
        return torch.float16 if torch.xpu.get_device_properties(device).has_fp16 else torch.float32
    if device.type != "cuda":
        return torch.float32
    if torch.version.hip:
        return torch.float16
    props = torch.cuda.get_device_properties(device)
    if props.major >= 8:
        return torch.float16
    if props.major < 7 or any(name in props.name for name in _NO_FP16_GPUS):
        return torch.float32
    return torch.float16


@torch.no_grad()
def _apply(
    model: torch.nn.Module,
    state: _PatchState,
    plan: list[tuple[WeightPatch, float]],
    loras: tuple[tuple[LoraWeights, float], ...],
    backup_device: torch.device | str | None,
) -> None:
    params = dict(model.named_parameters())
    state.applied = loras  # set first: a failure half-way still leaves `_restore` with the backups
    # One ComfyUI weight at a time (the fused qkv is three parameters here), so that only one weight's
    # working copy exists at once; within it, the patches keep their order.
    by_weight: dict[str, list[tuple[WeightPatch, float]]] = {}
    for patch, strength in plan:
        by_weight.setdefault(patch.weight, []).append((patch, strength))
    int8 = _int8_modules(model)
    for patches in by_weight.values():
        if int8 and _int8_parts(patches[0][0].target, int8):
            _apply_int8(model, state, patches, int8, backup_device)
            continue
        totals: dict[str, torch.Tensor] = {}
        for patch, strength in patches:
            first = params[patch.target.params[0][0]]
            dtype = lora_compute_dtype(first, getattr(model, "_graphrun_execution_device", None))
            block = patch.block(strength, first.device, dtype)
            for name, rows in patch.target.params:
                total = totals.get(name)
                if total is None:
                    total = totals[name] = params[name].detach().to(dtype, copy=True)
                part = block if rows is None else block[rows]
                if patch.kind == "set":
                    total.copy_(part.reshape(total.shape))
                else:
                    total += part.reshape(total.shape)
        for name, total in totals.items():
            weight = params[name]
            if id(weight) not in state.backups:
                backup = weight.detach().to(device=backup_device or weight.device, copy=True)
                state.backups[id(weight)] = (weight, backup)
            weight.copy_(total.to(weight.dtype))


def _int8_parts(target: _Target, int8: dict[str, Int8Linear]) -> list[tuple[Int8Linear, slice | None]]:
    """The int8 layers a patch target consists of, with their rows (empty: not an int8 weight)."""
    parts = []
    for name, rows in target.params:
        module, _, leaf = name.rpartition(".")
        if leaf == "weight" and module in int8:
            parts.append((int8[module], rows))
    return parts


def _int8_device(model: torch.nn.Module, module: Int8Linear) -> torch.device:
    """Where ComfyUI would patch an int8 layer: the device the model runs on."""
    return torch.device(getattr(model, "_graphrun_execution_device", None) or module.q_data.device)


def _check_int8_device(model: torch.nn.Module, int8: dict[str, Int8Linear], patch: WeightPatch,
                       lora_name: str) -> None:
    """Refuse to patch an int8 layer anywhere but on the CPU: graphrun reproduces ComfyUI 0.33's CPU
    path (checked bit for bit); on a GPU ComfyUI requantizes with comfy-kitchen's CUDA kernels and
    their own random numbers, or patches at call time when it streams weights, neither of which
    graphrun reproduces."""
    module = _int8_parts(patch.target, int8)[0][0]
    device = _int8_device(model, module)
    if device.type != "cpu":
        is_int8 = isinstance(module, Int8Linear) and module.w4a8 is None
        rot = " with ConvRot" if is_int8 and module.convrot else ""
        raise LoraError(
            f"LoRA {lora_name!r} patches {patch.weight!r}, {'an int8' if is_int8 else 'a 4-bit'} layer ('{module.layer}', "
            f"{module.format}{rot}), on {device}. ComfyUI 0.33 requantizes a patched quantized "
            "weight with stochastic rounding; on an accelerator it does so with comfy-kitchen's device kernels "
            "and random numbers (or at call time), which graphrun does not reproduce, so the picture would "
            "silently differ. Run this model on the CPU, or use the unquantized (bf16) model file with this LoRA."
        )


def _check_w4a4_inputs(int8: dict[str, Int8Linear | W4A4Linear], patch: WeightPatch, lora_name: str) -> None:
    """Refuse a patch of a ``convrot_w4a4`` layer whose inputs ComfyUI 0.33's 4-bit quantizer rejects (not a
    multiple of its int4 group size): ComfyUI fails on such a LoRA (ValueError while patching)."""
    module = _int8_parts(patch.target, int8)[0][0]
    if isinstance(module, W4A4Linear) and module.in_features % W4A4_QUANT_GROUP:
        raise LoraError(
            f"LoRA {lora_name!r} patches {patch.weight!r}, a convrot_w4a4 layer ('{module.layer}') with "
            f"{module.in_features} inputs, not a multiple of {W4A4_QUANT_GROUP}: ComfyUI 0.33's 4-bit quantizer "
            "cannot requantize it and fails on this LoRA too. Use the bf16 or int8 model file with this LoRA."
        )


@torch.no_grad()
def _apply_int8(
    model: torch.nn.Module,
    state: _PatchState,
    patches: list[tuple[WeightPatch, float]],
    int8: dict[str, Int8Linear | W4A4Linear],
    backup_device: torch.device | str | None,
) -> None:
    """Patch one int8 or 4-bit ComfyUI weight as ComfyUI 0.33 does when it loads the patched model: the
    whole weight (a fused qkv with all three parts, even when a LoRA patches only ``to_q``) is
    dequantized, every patch is added in order in the LoRA compute dtype, and the sum is quantized again
    into the layer's format with recalculated scales and stochastic rounding seeded by the weight's
    ComfyUI key (see :mod:`graphrun.nodes.quantized_int8`, :mod:`graphrun.nodes.quantized_w4`). The
    layers keep computing in their format."""
    first_patch = patches[0][0]
    key = first_patch.weight
    whole = key_map(model).weights[key]  # the full ComfyUI weight, whatever part a patch narrows to
    parts = _int8_parts(whole, int8)
    if len(parts) != len(whole.params):
        raise LoraError(f"{key!r} is int8 in some of its graphrun layers only "
                        f"({', '.join(name for name, _ in whole.params)}); graphrun cannot patch it as ComfyUI does.")
    modules = [module for module, _ in parts]
    head = modules[0]
    device = _int8_device(model, head)  # the CPU (_plan refuses others)
    scales = [module.q_scale.view(torch.float32).reshape(-1) for module in modules]
    per_row = any(scale.numel() > 1 for scale in scales)
    data = torch.cat([module.q_data for module in modules]) if len(modules) > 1 else head.q_data
    scale = torch.cat(scales) if per_row and len(scales) > 1 else scales[0]
    model_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    dtype = lora_compute_dtype(torch.empty(0, dtype=model_dtype, device=device), device)
    if isinstance(head, W4A4Linear):
        w = dequantize_w4a4_for_patch(W4A4Weight(head.layer, data, scale, head.group_size), dtype, device)
    else:
        weight = Int8Weight(head.layer, data, scale, head.convrot, head.group_size)
        w = dequantize_for_patch(weight, dtype, device)
    for patch, strength in patches:
        block = patch.block(strength, device, dtype)
        offset = patch.target.offset
        view = w if offset is None else w[offset[0]:offset[0] + offset[1]]
        if patch.kind == "set":
            view.copy_(block.reshape(view.shape))
        else:
            view += block.reshape(view.shape)
    seed = comfy_seed(key)
    if isinstance(head, W4A4Linear):
        codes, scale = requantize_w4a4(w, head.group_size, seed)
    elif head.w4a8 is not None:  # asym_w4a8_int8: requantized to 4 bits, then decoded to its int8 grid again
        params = head.w4a8
        packed, s_rel, s_channel = requantize_w4a8(w, group_size=params.group_size, convrot_groupsize=head.group_size,
                                                   codebook=params.codebook, scale_dtype=params.scale_dtype, seed=seed)
        decoded = decode_w4a8(head.layer, packed, s_rel, s_channel, params.codebook, params.group_size, head.group_size)
        codes, scale = decoded.data, decoded.scale
    else:
        codes, scale = requantize_patched(w, convrot=head.convrot, group_size=head.group_size, per_row=per_row,
                                          seed=seed)
    # The parts of a fused weight can share storage (views of one loaded tensor): back every buffer up
    # before writing any of them.
    buffers = [module.int8_buffers() for module in modules]
    for pair in buffers:
        for buffer in pair:
            if id(buffer) not in state.backups:
                backup = buffer.detach().to(device=backup_device or buffer.device, copy=True)
                state.backups[id(buffer)] = (buffer, backup)
    for (data, scale_bits), (_module, rows) in zip(buffers, parts):
        part_codes = codes if rows is None else codes[rows]
        part_scale = scale if scale.numel() == 1 or rows is None else scale[rows]
        data.copy_(part_codes.to(data.device))
        scale_bits.copy_(part_scale.reshape(scale_bits.shape).contiguous().view(torch.int32).to(scale_bits.device))


@torch.no_grad()
def _restore(state: _PatchState) -> None:
    for weight, backup in state.backups.values():
        weight.copy_(backup)
    state.backups.clear()
    state.applied = ()
