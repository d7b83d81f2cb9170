"""LoRA files: loading, matching against a model, and patching its weights (ComfyUI semantics).

A LoRA adds a low-rank update to some of a model's weight matrices. graphrun applies it the way
ComfyUI's LoraLoader does, by patching the weights in place::

    W' = W + strength · (alpha / rank) · (up @ down)        (scale 1.0 when the file has no alpha)

computed in float32 and cast back to the weight's dtype; several LoRAs are summed in order before
that single cast. :func:`patched` applies a list of ``(lora, strength)`` for the duration of a
``with`` block and then puts the original weights back bit for bit, so graph branches with different
LoRAs share one base model in memory.

Accepted files are safetensors only (pickle-based ``.pt``/``.ckpt``/``.bin`` files can run code when
loaded and are refused). Accepted key layouts, per LoRA'd module ``M``:

- diffusers / PEFT: ``transformer.M.lora_A.weight`` + ``.lora_B.weight``, also without the
  ``transformer.`` prefix, with ``.lora_A.default.weight``, or with PEFT's ``base_model.model.`` prefix;
- kohya / sd-scripts: ``lora_unet_<M with "_" for ".">.lora_down.weight`` + ``.lora_up.weight``
  (+ ``.alpha``); LyCORIS' plain-LoRA files the same with ``lycoris_``;
- ComfyUI: ``diffusion_model.M.lora_A/lora_B.weight`` or ``.lora_down/.lora_up.weight`` (+ ``.alpha``);
- the rarer spellings ComfyUI also reads: ``M.lora.down/up.weight``, ``M_lora.down/up.weight``,
  ``M.lora_linear_layer.down/up.weight`` and bare ``M.lora_A``/``M.lora_B``.

``M`` may be the diffusers module name or, for Z-Image, the original/ComfyUI-native name
(``layers.0.attention.qkv``, ``attention.out``, ``x_embedder``, ``final_layer.*``); native names are
translated with :mod:`graphrun.nodes.zimage.lora_keys`, and a fused ``attention.qkv`` LoRA (its up
matrix has 3·dim rows) becomes three patches of ``to_q``/``to_k``/``to_v`` that share its down matrix.
``alpha`` is read only from ``.alpha`` keys, as ComfyUI does: an ``lora_alpha`` kept in a PEFT file's
metadata is ignored.

Not supported: LoHa, LoKr, OFT, full ``.diff`` weights (reported as keys that were not applied),
and DoRA / LoCon-Tucker (``.dora_scale``, ``.lora_mid``), which are refused because applying their
up/down matrices alone would silently give a different result.
"""
from __future__ import annotations

import threading
import warnings
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from graphrun.nodes.zimage import lora_keys

__all__ = [
    "LoraEntry",
    "LoraError",
    "LoraMatch",
    "LoraWarning",
    "LoraWeights",
    "ModulePatch",
    "load_lora",
    "match_lora",
    "patched",
]

ACCEPTED_LAYOUTS = (
    "diffusers/PEFT `transformer.<module>.lora_A.weight`/`.lora_B.weight` (prefix optional, "
    "`.lora_A.default.weight` too); kohya `lora_unet_<module_with_underscores>.lora_down.weight`/"
    "`.lora_up.weight`/`.alpha` (or `lycoris_`); ComfyUI `diffusion_model.<module>.lora_A/lora_B.weight` "
    "or `.lora_down/lora_up.weight` (+ `.alpha`); <module> is a diffusers module name or, for Z-Image, "
    "the original name (`layers.0.attention.qkv`, `attention.out`, `x_embedder`, `final_layer.linear`)"
)

_PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle"}

# (prefix, module names written with "_" instead of ".")
_PREFIXES: tuple[tuple[str, bool], ...] = (
    ("base_model.model.", False),
    ("model.diffusion_model.", False),
    ("diffusion_model.", False),
    ("transformer.", False),
    ("lora_unet_", True),
    ("lycoris_", True),
)

_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".lora_A.default.weight", "down"),
    (".lora_B.default.weight", "up"),
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    ("_lora.down.weight", "down"),
    ("_lora.up.weight", "up"),
    (".lora_linear_layer.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"),
    (".lora_A", "down"),
    (".lora_B", "up"),
    (".alpha", "alpha"),
)

# Parts that change what the up/down pair means: applying the pair without them would be wrong.
_REFUSED_PARTS = {".dora_scale": "DoRA", ".lora_mid.weight": "LoCon (Tucker) `lora_mid`"}


class LoraError(ValueError):
    """A LoRA file that cannot be read, or that does not fit the model it is applied to."""


class LoraWarning(UserWarning):
    """A LoRA that only partly fits the model (some of its keys were not applied)."""


@dataclass(frozen=True, eq=False)
class LoraEntry:
    """One up/down pair of a LoRA file, normalised.

    ``target`` is the diffusers module name the pair patches or, when ``underscored`` (kohya and
    LyCORIS layouts), the name as written with ``_`` for ``.``; those are resolved against the real
    module names of a model by :func:`match_lora`. ``rows`` selects the output rows of ``up`` that
    belong to ``target`` when the file patched a fused module (Z-Image's ``attention.qkv``);
    ``third`` is the same selection, 0/1/2, before the up matrix's size is known to split it.
    """

    target: str
    down: torch.Tensor = field(repr=False)
    up: torch.Tensor = field(repr=False)
    alpha: float | None
    keys: tuple[str, ...]
    rows: slice | None = None
    underscored: bool = False
    third: int | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        """``alpha / rank``, or 1.0 without alpha (ComfyUI's rule)."""
        return 1.0 if self.alpha is None else self.alpha / self.rank


@dataclass(eq=False)
class LoraWeights:
    """The contents of one LoRA file, normalised by :func:`load_lora`.

    Compared and hashed by identity: load a file once and pass the same object around, so
    :func:`patched` can see that a LoRA set is already applied.
    """

    path: Path
    layout: str
    entries: tuple[LoraEntry, ...] = field(repr=False)
    unsupported_keys: tuple[str, ...] = field(default=(), repr=False)
    metadata: dict[str, str] = field(default_factory=dict, repr=False)
    _matches: weakref.WeakKeyDictionary = field(
        default_factory=weakref.WeakKeyDictionary, init=False, repr=False
    )

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def keys(self) -> tuple[str, ...]:
        """Every tensor key of the file (the LoRA pairs' keys, then the ones graphrun cannot use)."""
        # a fused qkv pair is three entries with the same keys: list each key once
        return tuple(dict.fromkeys(k for e in self.entries for k in e.keys)) + self.unsupported_keys

    def __repr__(self) -> str:
        return f"LoraWeights({self.name!r}, layout={self.layout!r}, entries={len(self.entries)})"


@dataclass(frozen=True, eq=False)
class ModulePatch:
    """One low-rank update of one module's weight, resolved against a concrete model."""

    module: str
    down: torch.Tensor = field(repr=False)
    up: torch.Tensor = field(repr=False)
    rows: slice | None
    scale: float
    keys: tuple[str, ...]

    def delta(self, weight_shape: torch.Size, device: torch.device | str) -> torch.Tensor:
        """``(up @ down)`` in float32, shaped like the weight, without strength or alpha scale."""
        up = self.up if self.rows is None else self.up[self.rows]
        up = up.to(device=device, dtype=torch.float32).flatten(1)
        down = self.down.to(device=device, dtype=torch.float32).flatten(1)
        return torch.mm(up, down).reshape(weight_shape)


@dataclass(frozen=True, eq=False)
class LoraMatch:
    """What a LoRA does to one model: the patches it applies and the keys that found no module."""

    lora_name: str
    patches: tuple[ModulePatch, ...] = field(repr=False)
    matched_modules: int
    model_modules: int
    unmatched_keys: tuple[str, ...]
    ignored_keys: tuple[str, ...] = ()

    @property
    def modules(self) -> tuple[str, ...]:
        """Names of the patched modules, in patch order, each once."""
        return tuple(dict.fromkeys(p.module for p in self.patches))


# ---------------------------------------------------------------------------------------------
# Loading


def load_lora(path: str | Path) -> LoraWeights:
    """Read a LoRA safetensors file and normalise its keys (see the module docs for the layouts).

    Raises :class:`LoraError` for a missing file, a pickle-based file, a file that is not valid
    safetensors, a file without any LoRA up/down pair, a pair with a missing half or mismatched
    ranks, and DoRA/LoCon files. Which modules the LoRA patches is only known against a model:
    see :func:`match_lora`.
    """
    path = Path(path)
    if not path.is_file():
        raise LoraError(f"LoRA file not found: {path}")
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise LoraError(
            f"LoRA {path.name!r} is a pickle-based file ({path.suffix}); graphrun only loads "
            ".safetensors, because unpickling can run arbitrary code. Convert it to safetensors first."
        )
    tensors, metadata = _read_safetensors(path)

    groups: dict[tuple[str, str], dict[str, tuple[str, torch.Tensor]]] = {}
    unsupported: list[str] = []
    for key, tensor in tensors.items():
        for part_suffix, kind in _REFUSED_PARTS.items():
            if key.endswith(part_suffix):
                raise LoraError(
                    f"LoRA {path.name!r} uses {kind} (key {key!r}); graphrun applies plain LoRA only, "
                    "and using its up/down matrices alone would give a different result."
                )
        parsed = _parse_key(key)
        if parsed is None:
            unsupported.append(key)
            continue
        prefix, module, part = parsed
        slot = groups.setdefault((prefix, module), {})
        if part in slot:
            raise LoraError(f"LoRA {path.name!r} has two {part} tensors for one module: {slot[part][0]!r} and {key!r}")
        slot[part] = (key, tensor)

    entries: list[LoraEntry] = []
    for (prefix, module), slot in groups.items():
        if "down" not in slot or "up" not in slot:
            present = ", ".join(k for k, _ in slot.values())
            if set(slot) == {"alpha"}:
                unsupported.append(slot["alpha"][0])  # an alpha for an adapter type we do not read
                continue
            raise LoraError(
                f"LoRA {path.name!r} is incomplete: module {module!r} has only {present} "
                "(a LoRA needs both its down/lora_A and up/lora_B matrices)."
            )
        entries.extend(_entries_for(path.name, prefix, module, slot))

    if not entries:
        sample = ", ".join(repr(k) for k in list(tensors)[:5])
        raise LoraError(
            f"{path.name!r} holds no LoRA weights that graphrun can read ({len(tensors)} tensors, e.g. "
            f"{sample}). Accepted layouts: {ACCEPTED_LAYOUTS}."
        )
    entries = _translate_native(entries)
    return LoraWeights(
        path=path,
        layout=_describe_layout(groups),
        entries=tuple(entries),
        unsupported_keys=tuple(unsupported),
        metadata=metadata,
    )


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
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
    return tensors, metadata


def _parse_key(key: str) -> tuple[str, str, str] | None:
    """Split a file key into (layout prefix, module name, part) with part in down/up/alpha."""
    for suffix, part in _SUFFIXES:
        if key.endswith(suffix):
            stem = key[: -len(suffix)]
            break
    else:
        return None
    for prefix, _ in _PREFIXES:
        if stem.startswith(prefix) and len(stem) > len(prefix):
            return prefix, stem[len(prefix):], part
    return "", stem, part


def _entries_for(file: str, prefix: str, module: str, slot: dict[str, tuple[str, torch.Tensor]]) -> list[LoraEntry]:
    down_key, down = slot["down"]
    up_key, up = slot["up"]
    if down.ndim < 2 or up.ndim < 2 or down.shape[0] != up.shape[1]:
        raise LoraError(
            f"LoRA {file!r}: {down_key!r} {tuple(down.shape)} and {up_key!r} {tuple(up.shape)} "
            "do not form a low-rank pair (down is [rank, in], up is [out, rank])."
        )
    alpha: float | None = None
    keys = [down_key, up_key]
    if "alpha" in slot:
        alpha_key, alpha_tensor = slot["alpha"]
        if alpha_tensor.numel() != 1:
            raise LoraError(f"LoRA {file!r}: {alpha_key!r} should be one number, has shape {tuple(alpha_tensor.shape)}")
        alpha = float(alpha_tensor.float().item())
        keys.append(alpha_key)
    underscored = dict(_PREFIXES).get(prefix, False)
    return [LoraEntry(target=module, down=down, up=up, alpha=alpha, keys=tuple(keys), underscored=underscored)]


def _translate_native(entries: list[LoraEntry]) -> list[LoraEntry]:
    """Rename Z-Image original/ComfyUI-native module names to diffusers names, splitting the fused qkv.

    Only done when the file spells at least one module the native way, so the names of other
    models (which could coincide with a native Z-Image spelling) are left alone."""
    dotted = [e.target for e in entries if not e.underscored]
    if not lora_keys.any_native(dotted):
        return entries
    out: list[LoraEntry] = []
    for e in entries:
        if e.underscored:
            out.append(e)
            continue
        targets = lora_keys.native_to_diffusers(e.target)
        if not targets:  # a native-only module diffusers does not have: stays unmatched
            out.append(e)
            continue
        for target, third in targets:
            rows = None if third is None else _third_rows(e.up.shape[0], third, e, target)
            out.append(LoraEntry(target, e.down, e.up, e.alpha, e.keys, rows=rows, third=third))
    return out


def _third_rows(n_rows: int, third: int, entry: LoraEntry, target: str) -> slice:
    if n_rows % 3:
        raise LoraError(
            f"LoRA key {entry.keys[1]!r} patches a fused qkv module but its {n_rows} output rows "
            f"do not split into three equal parts for {target!r}."
        )
    size = n_rows // 3
    return slice(third * size, (third + 1) * size)


def _describe_layout(groups: dict[tuple[str, str], dict]) -> str:
    names = {
        "": "diffusers/PEFT (no prefix)",
        "transformer.": "diffusers/PEFT (transformer.)",
        "base_model.model.": "PEFT (base_model.model.)",
        "diffusion_model.": "ComfyUI (diffusion_model.)",
        "model.diffusion_model.": "ComfyUI (model.diffusion_model.)",
        "lora_unet_": "kohya (lora_unet_)",
        "lycoris_": "LyCORIS (lycoris_)",
    }
    prefixes = dict.fromkeys(prefix for prefix, _ in groups)
    layout = " + ".join(names[p] for p in prefixes)
    if lora_keys.any_native(module for prefix, module in groups if not dict(_PREFIXES).get(prefix, False)):
        layout += ", Z-Image native names"
    return layout


# ---------------------------------------------------------------------------------------------
# Matching


def match_lora(model: torch.nn.Module, lora: LoraWeights) -> LoraMatch:
    """Resolve ``lora`` against the modules of ``model``.

    Raises :class:`LoraError` (naming the file, sample keys and the accepted layouts) when nothing
    matches, or when a matched pair has the wrong shape for its module (a LoRA for another model
    size). Warns with :class:`LoraWarning`, naming the keys, when only part of the file matches.
    The result is remembered per model, so the warning comes once and re-matching is free.
    """
    cached = lora._matches.get(model)
    if cached is not None:
        return cached

    weights = {
        name: module.weight
        for name, module in model.named_modules()
        if isinstance(getattr(module, "weight", None), torch.Tensor)
    }
    underscored_index: dict[str, list[tuple[str, int | None]]] | None = None
    unmatched: list[str] = []
    candidates: list[tuple[int, ModulePatch]] = []  # (priority: 0 = a module's own pair, 1 = a fused share)

    for entry in lora.entries:
        if entry.underscored:
            if underscored_index is None:
                underscored_index = _underscored_index(weights)
            resolved = underscored_index.get(entry.target, [])
        else:
            resolved = [(entry.target, entry.third)] if entry.target in weights else []
        if not resolved:
            unmatched.extend(entry.keys)
            continue
        for module, third in resolved:
            rows = entry.rows
            if rows is None and third is not None:
                rows = _third_rows(entry.up.shape[0], third, entry, module)
            patch = ModulePatch(module, entry.down, entry.up, rows, entry.scale, entry.keys)
            _check_shape(lora.name, patch, weights[module])
            candidates.append((0 if rows is None else 1, patch))

    # A file may carry the same update twice (e.g. a fused qkv pair next to split to_q/to_k/to_v
    # pairs, for loaders that read only one of them); apply one per module so it is not doubled.
    chosen: dict[str, tuple[int, ModulePatch]] = {}
    ignored: list[str] = []
    for priority, patch in candidates:
        kept = chosen.get(patch.module)
        if kept is None or priority < kept[0]:
            if kept is not None:
                ignored.extend(k for k in kept[1].keys if k not in ignored)
            chosen[patch.module] = (priority, patch)
        else:
            ignored.extend(k for k in patch.keys if k not in ignored)
    patches = tuple(p for _, p in chosen.values())
    used = {k for p in patches for k in p.keys}
    ignored = [k for k in ignored if k not in used]
    unmatched.extend(lora.unsupported_keys)

    if not patches:
        sample = ", ".join(repr(k) for k in lora.keys[:4])
        raise LoraError(
            f"LoRA {lora.name!r} matched none of the {len(weights)} weight modules of "
            f"{type(model).__name__} (detected layout: {lora.layout}; keys e.g. {sample}; "
            f"{len(lora.keys)} keys in all). It may be made for another model. Accepted layouts: "
            f"{ACCEPTED_LAYOUTS}."
        )
    match = LoraMatch(
        lora_name=lora.name,
        patches=patches,
        matched_modules=len(chosen),
        model_modules=len(weights),
        unmatched_keys=tuple(unmatched),
        ignored_keys=tuple(ignored),
    )
    if unmatched:
        warnings.warn(
            f"LoRA {lora.name!r}: {len(unmatched)} of {len(lora.keys)} keys were not applied (no matching "
            f"module in {type(model).__name__}, or an unsupported adapter type): {_few(unmatched)}; "
            f"{match.matched_modules} modules patched.",
            LoraWarning,
            stacklevel=2,
        )
    if ignored:
        warnings.warn(
            f"LoRA {lora.name!r} patches some modules more than once (fused and split keys, or one "
            f"module under two prefixes); applied one pair per module, preferring split keys, and "
            f"ignored {len(ignored)} keys: {_few(ignored)}.",
            LoraWarning,
            stacklevel=2,
        )
    lora._matches[model] = match
    return match


def _underscored_index(weights: dict[str, torch.Tensor]) -> dict[str, list[tuple[str, int | None]]]:
    """kohya names replace every "." with "_", so `feed_forward_w1` cannot be split back without
    knowing the model: index the model's module names (and their Z-Image native spellings) that way."""
    index: dict[str, list[tuple[str, int | None]]] = {}
    for name in weights:
        index.setdefault(name.replace(".", "_"), []).append((name, None))
        native, third = lora_keys.diffusers_to_native(name)
        if native != name:
            index.setdefault(native.replace(".", "_"), []).append((name, third))
    # Two different modules that flatten to the same string cannot be told apart: leave them unmatched.
    return {
        key: targets
        for key, targets in index.items()
        if len(targets) == 1 or all(third is not None for _, third in targets)
    }


def _check_shape(file: str, patch: ModulePatch, weight: torch.Tensor) -> None:
    out_rows = patch.up.shape[0] if patch.rows is None else len(range(*patch.rows.indices(patch.up.shape[0])))
    in_size = patch.down.flatten(1).shape[1]
    if weight.ndim < 2 or out_rows != weight.shape[0] or in_size != weight[0].numel():
        raise LoraError(
            f"LoRA {file!r} does not fit module {patch.module!r}: {patch.keys[0]!r} / {patch.keys[1]!r} give a "
            f"{out_rows}x{in_size} update for a weight of shape {tuple(weight.shape)} "
            "(a LoRA for another model or model size?)."
        )


def _few(keys: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" ... (+{len(keys) - n} more)" if len(keys) > n else "")


# ---------------------------------------------------------------------------------------------
# Patching


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

    Each patched weight becomes ``W + Σ strength·(alpha/rank)·(up @ down)``, summed in float32 in the
    given order and cast back once. On exit the original weights are restored bit for bit from
    backups of just the touched weights (kept on ``backup_device``, default: the weight's own device;
    ``"cpu"`` saves accelerator memory at the cost of copies). Pairs with strength 0 are skipped.

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


def _plan(model: torch.nn.Module, loras: tuple[tuple[LoraWeights, float], ...]) -> dict[str, list[tuple[ModulePatch, float]]]:
    """Group the patches of all LoRAs by module, keeping the LoRAs' order within each module."""
    plan: dict[str, list[tuple[ModulePatch, float]]] = {}
    for lora, strength in loras:
        for patch in match_lora(model, lora).patches:
            plan.setdefault(patch.module, []).append((patch, strength))
    return plan


@torch.no_grad()
def _apply(
    model: torch.nn.Module,
    state: _PatchState,
    plan: dict[str, list[tuple[ModulePatch, float]]],
    loras: tuple[tuple[LoraWeights, float], ...],
    backup_device: torch.device | str | None,
) -> None:
    modules = dict(model.named_modules())
    state.applied = loras  # set first: a failure half-way still leaves `_restore` with the backups
    for name, patches in plan.items():
        weight = modules[name].weight
        if id(weight) not in state.backups:
            backup = weight.detach().to(device=backup_device or weight.device, copy=True)
            state.backups[id(weight)] = (weight, backup)
        total = weight.detach().to(torch.float32, copy=True)
        for patch, strength in patches:
            total += (strength * patch.scale) * patch.delta(total.shape, total.device)
        weight.copy_(total.to(weight.dtype))


@torch.no_grad()
def _restore(state: _PatchState) -> None:
    for weight, backup in state.backups.values():
        weight.copy_(backup)
    state.backups.clear()
    state.applied = ()
