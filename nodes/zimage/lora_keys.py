"""Z-Image module names: the original (ComfyUI-native) tree versus diffusers' ``ZImageTransformer2DModel``.

The original Z-Image code (and ComfyUI's Lumina2/NextDiT port of it) names the transformer's modules
differently from diffusers in a handful of places. The mapping here is the one diffusers' own
single-file converter (``convert_z_image_transformer_checkpoint_to_diffusers``) applies to full
checkpoints, restated for *module* names so that LoRA keys can be translated:

===========================================  ==============================================
original / ComfyUI-native                    diffusers
===========================================  ==============================================
``x_embedder``                               ``all_x_embedder.2-1``
``final_layer.<rest>``                       ``all_final_layer.2-1.<rest>``
``<block>.attention.qkv`` (fused, 3·dim out)  ``<block>.attention.to_q`` / ``to_k`` / ``to_v``
                                             (rows ``[0:d]``, ``[d:2d]``, ``[2d:3d]``)
``<block>.attention.out``                    ``<block>.attention.to_out.0``
``<block>.attention.q_norm`` / ``k_norm``    ``<block>.attention.norm_q`` / ``norm_k``
``norm_final``                               (dropped: diffusers has no such module)
everything else                              unchanged (``layers.N.feed_forward.w1``,
                                             ``t_embedder.mlp.0``, ``cap_embedder.1``,
                                             ``<block>.adaLN_modulation.0``, ...)
===========================================  ==============================================

``<block>`` is ``layers.N``, ``noise_refiner.N`` or ``context_refiner.N``. ``2-1`` is diffusers' key for
patch size 2 and frame-patch size 1, the only combination Z-Image ships (the converter hard-codes it too).
The fused ``qkv`` splits into three equal thirds because diffusers builds Z-Image's key and value
projections with ``n_heads`` heads, exactly like the query.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "PATCH_KEY",
    "QKV_TARGETS",
    "any_native",
    "diffusers_to_native",
    "is_native_name",
    "native_key_to_diffusers",
    "native_to_diffusers",
]

#: diffusers' suffix for the (patch_size, f_patch_size) = (2, 1) embedder and final layer.
PATCH_KEY = "2-1"

#: The diffusers projections the fused ``attention.qkv`` splits into, in row order.
QKV_TARGETS: tuple[str, str, str] = ("to_q", "to_k", "to_v")

_BLOCK = r"(?:layers|noise_refiner|context_refiner)\.\d+"
_NATIVE_QKV = re.compile(rf"^({_BLOCK})\.attention\.qkv$")
_NATIVE_OUT = re.compile(rf"^({_BLOCK})\.attention\.out$")
_NATIVE_NORM = re.compile(rf"^({_BLOCK})\.attention\.(q|k)_norm$")
_DIFFUSERS_QKV = re.compile(rf"^({_BLOCK})\.attention\.(to_q|to_k|to_v)$")
_DIFFUSERS_OUT = re.compile(rf"^({_BLOCK})\.attention\.to_out\.0$")
_DIFFUSERS_NORM = re.compile(rf"^({_BLOCK})\.attention\.norm_(q|k)$")


def native_to_diffusers(name: str, patch_key: str = PATCH_KEY) -> list[tuple[str, int | None]]:
    """Translate an original/ComfyUI-native Z-Image *module* name to diffusers module name(s).

    Returns a list of ``(diffusers_name, third)``: ``third`` is ``None`` for a one-to-one rename and
    0/1/2 for the query/key/value thirds of the fused ``attention.qkv`` output rows. Names that are not
    native-specific come back unchanged (so a diffusers name passes through as itself); ``norm_final``,
    which diffusers drops, gives an empty list.
    """
    if name == "x_embedder":
        return [(f"all_x_embedder.{patch_key}", None)]
    if name.startswith("final_layer."):
        return [(f"all_final_layer.{patch_key}." + name[len("final_layer."):], None)]
    if name == "norm_final":
        return []
    if m := _NATIVE_QKV.match(name):
        return [(f"{m[1]}.attention.{proj}", i) for i, proj in enumerate(QKV_TARGETS)]
    if m := _NATIVE_OUT.match(name):
        return [(f"{m[1]}.attention.to_out.0", None)]
    if m := _NATIVE_NORM.match(name):
        return [(f"{m[1]}.attention.norm_{m[2]}", None)]
    return [(name, None)]


def diffusers_to_native(name: str, patch_key: str = PATCH_KEY) -> tuple[str, int | None]:
    """Translate a diffusers Z-Image *module* name to its original/ComfyUI-native name.

    Returns ``(native_name, third)``; ``third`` (0/1/2) says which third of the fused ``attention.qkv``
    output rows the diffusers ``to_q``/``to_k``/``to_v`` projection is, else ``None``. Names without a
    native-specific spelling come back unchanged.
    """
    x_embedder = f"all_x_embedder.{patch_key}"
    final_layer = f"all_final_layer.{patch_key}."
    if name == x_embedder:
        return "x_embedder", None
    if name.startswith(final_layer):
        return "final_layer." + name[len(final_layer):], None
    if m := _DIFFUSERS_QKV.match(name):
        return f"{m[1]}.attention.qkv", QKV_TARGETS.index(m[2])
    if m := _DIFFUSERS_OUT.match(name):
        return f"{m[1]}.attention.out", None
    if m := _DIFFUSERS_NORM.match(name):
        return f"{m[1]}.attention.{m[2]}_norm", None
    return name, None


def native_key_to_diffusers(key: str, patch_key: str = PATCH_KEY) -> list[tuple[str, int | None]]:
    """Translate an original checkpoint *parameter* key (``layers.0.attention.qkv.weight``) like
    :func:`native_to_diffusers`, keeping the trailing ``.weight``/``.bias``; also strips ComfyUI's
    ``model.diffusion_model.`` prefix. Parameters that are not a module's weight/bias (``x_pad_token``)
    pass through unchanged."""
    key = key.removeprefix("model.diffusion_model.")
    module, dot, param = key.rpartition(".")
    if not dot or param not in ("weight", "bias"):
        return [(key, None)]
    return [(f"{name}.{param}", third) for name, third in native_to_diffusers(module, patch_key)]


def is_native_name(name: str) -> bool:
    """True when a module name is spelled the original/ComfyUI-native way and differs in diffusers
    (``attention.qkv``, ``attention.out``, ``x_embedder``, ``final_layer.*``, ``q_norm``/``k_norm``)."""
    return native_to_diffusers(name) != [(name, None)]


def any_native(names: Iterable[str]) -> bool:
    """True when any of ``names`` is a native-only spelling (see :func:`is_native_name`)."""
    return any(is_native_name(n) for n in names)
