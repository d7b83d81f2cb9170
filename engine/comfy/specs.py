"""The ComfyUI face of the node registry: which class_types graphrun can run, and how.

Every node type declares its ComfyUI counterparts with ``comfy=Comfy(...)`` (see
:mod:`graphrun.engine.node`). This module turns those declarations into what the importer and the
exporter need:

* :func:`comfy_inputs` — the ComfyUI inputs of one mapping, as ``(graphrun name, ComfyUI name)`` pairs.
* :func:`comfy_node_spec` / :func:`spec_lookup` — the widget layout the UI-format converter
  (:mod:`.ui_to_api`) needs: widget order = the mapping's declared ``widgets``, else the node's primitive
  inputs in declaration order (ComfyUI names); flags from ``control_after_generate``, ``image_upload`` and
  ``dynamic_prompts``; defaults from graphrun's input defaults; outputs those of :func:`comfy_outputs`.
* :func:`comfy_outputs` — the graphrun outputs a mapping has (``LoraLoaderModelOnly``: the model only).
* :func:`check_mapping` — the declaration checks of a mapping's editor facts (``@node`` runs them).
* A few ComfyUI class_types that no graphrun node declares but that the importer still understands (the
  *shims* below): display-only nodes it skips, value nodes it folds into constants, and aliases that run
  as another graphrun node when their extra options are at the values graphrun reproduces.

"Graphrun-only" inputs: an input that some mapping of a node sets through ``fixed`` (``EmptyLatent.channels``,
fixed to 4 by ``EmptyLatentImage``) is a graphrun-side knob; mappings that do not fix it (``EmptySD3LatentImage``)
have no ComfyUI input for it, so it is neither a widget nor exported there.

Torch-free.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..node import REQUIRED, Comfy, InputSpec, NodeDeclarationError, NodeSpec, OutputSpec, Registry
from .widgets import WIDGET_KINDS, ComfyNodeSpec, SpecLookup, WidgetSlot

__all__ = [
    "DISPLAY_ONLY",
    "FOLDED",
    "ALIASES",
    "Alias",
    "EDITOR_OPTIONS",
    "FoldedNode",
    "check_mapping",
    "comfy_inputs",
    "comfy_node_spec",
    "comfy_outputs",
    "graphrun_only_inputs",
    "known_class_types",
    "spec_lookup",
]


# --- registry declarations -> ComfyUI shapes ---------------------------------------------------------------------


def graphrun_only_inputs(spec: NodeSpec) -> frozenset[str]:
    """Inputs that a mapping of ``spec`` fixes: graphrun-side knobs with no ComfyUI input elsewhere."""
    return frozenset(name for comfy in spec.comfy for name in comfy.fixed)


def _widget_inputs(spec: NodeSpec, comfy: Comfy) -> list[InputSpec]:
    """The primitive inputs that are widgets of this mapping, in widget order (graphrun specs)."""
    if comfy.widgets is not None:
        by_comfy_name = {comfy.comfy_name(i.name): i for i in spec.inputs}
        return [by_comfy_name[name] for name in comfy.widgets if name in by_comfy_name]
    skip = graphrun_only_inputs(spec)
    return [i for i in spec.inputs if not i.socket and i.name not in skip]


def comfy_inputs(spec: NodeSpec, comfy: Comfy) -> list[tuple[str, str]]:
    """The ComfyUI inputs of one mapping as ``(graphrun name, ComfyUI name)``, in graphrun declaration order.

    A mapping with an explicit ``widgets`` list is a narrower ComfyUI node (``LoraLoaderModelOnly`` for
    ``LoadLora``): it has the required sockets and exactly those widgets. Otherwise every socket and every
    primitive input is a ComfyUI input, except graphrun-only ones.
    """
    widgets = {i.name for i in _widget_inputs(spec, comfy)}
    pairs = []
    for inp in spec.inputs:
        if inp.socket:
            keep = comfy.widgets is None or not inp.optional
        else:
            keep = inp.name in widgets
        if keep:
            pairs.append((inp.name, comfy.comfy_name(inp.name)))
    return pairs


def comfy_outputs(spec: NodeSpec, comfy: Comfy) -> tuple[OutputSpec, ...]:
    """The graphrun outputs the ComfyUI node has, in slot order: ``comfy.outputs``, else all of them."""
    if comfy.outputs is None:
        return spec.outputs
    return spec.outputs[: len(comfy.outputs)]  # check_mapping: a leading part, so slot numbers agree


#: The widget options a mapping may add (``Comfy.options``): they change how the editor shows a widget, never
#: which values graphrun takes (bounds, defaults and choices come from graphrun's declaration).
EDITOR_OPTIONS: frozenset[str] = frozenset({"step", "round", "advanced"})


def check_mapping(spec: NodeSpec, comfy: Comfy) -> None:
    """Raise NodeDeclarationError when a mapping's editor facts (outputs, optional, input_order, options,
    choices) name what the mapping does not have or could not be shown as declared."""
    where = f"{spec.name}: comfy mapping {comfy.class_type!r}"
    ours = [o.name for o in spec.outputs]
    if comfy.outputs is not None:
        unknown = [name for name in comfy.outputs if name not in ours]
        if unknown:
            raise NodeDeclarationError(f"{where}: outputs names unknown outputs {unknown}; the node has {ours}")
        if list(comfy.outputs) != ours[: len(comfy.outputs)]:
            # the importer and the exporter number a ComfyUI output slot as graphrun's output of that number
            raise NodeDeclarationError(
                f"{where}: outputs {list(comfy.outputs)} must be the first outputs of the node, in order ({ours})"
            )
    names = [theirs for _, theirs in comfy_inputs(spec, comfy)]
    for field_name, listed in (("optional", comfy.optional or ()), ("input_order", comfy.input_order),
                               ("options", comfy.options), ("choices", comfy.choices)):
        unknown = [name for name in listed if name not in names]
        if unknown:
            raise NodeDeclarationError(f"{where}: {field_name} names unknown inputs {unknown}; it has {names}")
    for name in comfy.optional or ():
        inp = spec.input(comfy.our_name(name))
        assert inp is not None
        if inp.required:  # the editor would let it be left empty, and graphrun refuse the prompt
            raise NodeDeclarationError(f"{where}: optional names {name!r}, which graphrun requires")
    widget_order = [comfy.comfy_name(i.name) for i in _widget_inputs(spec, comfy)]
    optional_widgets = [name for name in widget_order if name in (comfy.optional or ())]
    if optional_widgets != widget_order[len(widget_order) - len(optional_widgets):]:
        # the editor puts optional widgets after the required ones; the importer reads the widget order
        raise NodeDeclarationError(f"{where}: optional widgets {optional_widgets} must come last in the widget "
                                   f"order {widget_order}")
    for name, options in comfy.options.items():
        extra = sorted(set(options) - EDITOR_OPTIONS)
        if extra:
            raise NodeDeclarationError(f"{where}: options for {name!r} may only set {sorted(EDITOR_OPTIONS)}, "
                                       f"not {extra}")
    for name, values in comfy.choices.items():
        inp = spec.input(comfy.our_name(name))
        assert inp is not None
        if inp.type_name != "STRING" or not values:
            raise NodeDeclarationError(f"{where}: choices for {name!r} need a text input and at least one value "
                                       "(a fixed set graphrun checks is a Literal[...] annotation)")
        if inp.default is not REQUIRED and inp.default not in values:
            raise NodeDeclarationError(f"{where}: choices for {name!r} lack its default {inp.default!r}")
        if name in comfy.files or inp.name in comfy.files:
            raise NodeDeclarationError(f"{where}: {name!r} has both files and choices; give one")


def _widget_kind(inp: InputSpec) -> str:
    return inp.type_name if inp.type_name in WIDGET_KINDS else "STRING"


def _widget_default(inp: InputSpec) -> Any:
    """The value a widget has before the workflow sets it; None for a required input (stays missing)."""
    return None if inp.default is REQUIRED else inp.default


def comfy_node_spec(spec: NodeSpec, comfy: Comfy) -> ComfyNodeSpec:
    """The widget layout of ComfyUI ``comfy.class_type`` as graphrun's declaration describes it."""
    slots = []
    for inp in _widget_inputs(spec, comfy):
        name = comfy.comfy_name(inp.name)
        slots.append(
            WidgetSlot(
                name=name,
                kind=_widget_kind(inp),
                default=_widget_default(inp),
                control_after_generate=name in comfy.control_after_generate or inp.name in comfy.control_after_generate,
                image_upload=name in comfy.image_upload or inp.name in comfy.image_upload,
                dynamic_prompts=name in comfy.dynamic_prompts or inp.name in comfy.dynamic_prompts,
            )
        )
    return ComfyNodeSpec(
        class_type=comfy.class_type,
        inputs=tuple(theirs for _, theirs in comfy_inputs(spec, comfy)),
        widgets=tuple(slots),
        outputs=tuple(o.type_name for o in comfy_outputs(spec, comfy)),
    )


# --- shims: ComfyUI class_types handled inside the importer ------------------------------------------------------

W = WidgetSlot

#: Nodes that only show something in ComfyUI's browser tab. They are accepted and skipped with a notice.
DISPLAY_ONLY: dict[str, ComfyNodeSpec] = {
    spec.class_type: spec
    for spec in (
        ComfyNodeSpec("ImageCompare", ("image_a", "image_b"), (), ()),
        ComfyNodeSpec("PreviewAny", ("source",), (), ()),
        ComfyNodeSpec("MarkdownNote", ("text",), (W("text", "STRING", ""),), ()),
        ComfyNodeSpec("Note", ("text",), (W("text", "STRING", ""),), ()),
    )
}


@dataclass(frozen=True)
class FoldedNode:
    """A ComfyUI node whose outputs are a pure function of constant inputs: the importer puts the values
    straight into the consumers. ``compute`` gets ``{ComfyUI input: value}`` (defaults filled) and returns
    the outputs by slot, or raises ValueError with a readable reason."""

    spec: ComfyNodeSpec
    defaults: Mapping[str, Any]
    compute: Callable[[dict[str, Any]], tuple[Any, ...]]


def _value(inputs: dict[str, Any]) -> tuple[Any, ...]:
    return (inputs["value"],)


#: ComfyUI's ResolutionSelector aspect ratios (label -> width:height).
ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1 (Square)": (1, 1),
    "3:2 (Photo)": (3, 2),
    "4:3 (Standard)": (4, 3),
    "16:9 (Widescreen)": (16, 9),
    "21:9 (Ultrawide)": (21, 9),
    "2:3 (Portrait Photo)": (2, 3),
    "3:4 (Portrait Standard)": (3, 4),
    "9:16 (Portrait Widescreen)": (9, 16),
}


def resolution_selector(inputs: dict[str, Any]) -> tuple[int, int]:
    """ComfyUI ResolutionSelector: width x height of about ``megapixels`` (x 2^20) at an aspect ratio.

    Each side is ``ratio_side * sqrt(pixels / (rw * rh))`` rounded to the nearest ``multiple`` (Python's
    round). When a side falls below ``minimum`` the size becomes the smallest ``(rw * k, rh * k)`` with both
    sides at least ``minimum`` and both multiples of ``multiple``.
    """
    label = inputs["aspect_ratio"]
    if label not in ASPECT_RATIOS:
        raise ValueError(f"aspect_ratio {label!r} is not one of {', '.join(map(repr, ASPECT_RATIOS))}")
    try:
        megapixels, multiple, minimum = float(inputs["megapixels"]), int(inputs["multiple"]), int(inputs["minimum"])
    except (TypeError, ValueError):
        raise ValueError("megapixels, multiple and minimum must be numbers") from None
    if megapixels <= 0 or multiple <= 0 or minimum <= 0:
        raise ValueError("megapixels, multiple and minimum must be positive")
    rw, rh = ASPECT_RATIOS[label]
    scale = math.sqrt(megapixels * 1024 * 1024 / (rw * rh))
    width = round(rw * scale / multiple) * multiple
    height = round(rh * scale / multiple) * multiple
    if width < minimum or height < minimum:
        # k must make rw*k and rh*k multiples of `multiple`: k is a multiple of lcm(step_w, step_h).
        step = math.lcm(multiple // math.gcd(rw, multiple), multiple // math.gcd(rh, multiple))
        k = math.ceil(max(minimum / rw, minimum / rh))
        k = math.ceil(k / step) * step
        width, height = rw * k, rh * k
    return width, height


def _value_node(class_type: str, kind: str, default: Any, control: bool = False) -> FoldedNode:
    widget = W("value", kind, default, control_after_generate=control)
    return FoldedNode(ComfyNodeSpec(class_type, ("value",), (widget,), (kind,)), {"value": default}, _value)


#: Value nodes folded into their consumers. (The UI converter already inlines the Primitive* nodes; API-format
#: prompts still contain them, since the ComfyUI backend runs them as nodes.)
FOLDED: dict[str, FoldedNode] = {
    "PrimitiveInt": _value_node("PrimitiveInt", "INT", 0, control=True),
    "PrimitiveFloat": _value_node("PrimitiveFloat", "FLOAT", 0.0),
    "PrimitiveString": _value_node("PrimitiveString", "STRING", ""),
    "PrimitiveStringMultiline": _value_node("PrimitiveStringMultiline", "STRING", ""),
    "PrimitiveBoolean": _value_node("PrimitiveBoolean", "BOOLEAN", False),
    "ResolutionSelector": FoldedNode(
        ComfyNodeSpec(
            "ResolutionSelector",
            ("aspect_ratio", "megapixels", "multiple", "minimum"),
            (
                W("aspect_ratio", "COMBO", "1:1 (Square)"),
                W("megapixels", "FLOAT", 1.0),
                W("multiple", "INT", 8),
                W("minimum", "INT", 256),
            ),
            ("INT", "INT"),
        ),
        {"aspect_ratio": "1:1 (Square)", "megapixels": 1.0, "multiple": 8, "minimum": 256},
        resolution_selector,
    ),
}


@dataclass(frozen=True)
class Alias:
    """A ComfyUI node that graphrun runs as the node declaring ``target`` (another ComfyUI class_type).

    ``inputs`` maps the alias's inputs to the target's ComfyUI inputs; ``required`` lists options that
    must have the given value (anything else is an error: graphrun cannot reproduce it); ``dropped`` are
    options accepted at any value and ignored, with a warning (``note`` says what differs).
    """

    spec: ComfyNodeSpec
    target: str
    inputs: Mapping[str, str]
    required: Mapping[str, Any] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()
    note: str = ""


#: ComfyUI nodes run as another graphrun node when their extra options are at values graphrun reproduces.
ALIASES: dict[str, Alias] = {
    "SaveImageAdvanced": Alias(
        spec=ComfyNodeSpec(
            "SaveImageAdvanced",
            ("images", "filename_prefix", "format", "format.bit_depth", "format.input_color_space"),
            (
                W("filename_prefix", "STRING", "ComfyUI"),
                W("format", "COMBO", "png"),
                W("format.bit_depth", "COMBO", "8-bit"),
                W("format.input_color_space", "COMBO", "sRGB"),
            ),
            ("IMAGE",),
        ),
        target="SaveImage",
        inputs={"images": "images", "filename_prefix": "filename_prefix"},
        required={"format": "png", "format.bit_depth": "8-bit", "format.input_color_space": "sRGB"},
        note="saved as 8-bit PNG by SaveImage (file names end in _00001_.png instead of _00001.png)",
    ),
}


# --- lookups -----------------------------------------------------------------------------------------------------


def shim_spec(class_type: str) -> ComfyNodeSpec | None:
    """The widget layout of a shim class_type (display-only, folded or alias), or None."""
    if class_type in DISPLAY_ONLY:
        return DISPLAY_ONLY[class_type]
    if class_type in FOLDED:
        return FOLDED[class_type].spec
    if class_type in ALIASES:
        return ALIASES[class_type].spec
    return None


def spec_lookup(registry: Registry) -> SpecLookup:
    """A SpecLookup for :func:`~.ui_to_api.ui_to_api`: declared ComfyUI types first, then the shims."""
    table = {class_type: comfy_node_spec(spec, comfy) for class_type, (spec, comfy) in registry.comfy_index().items()}

    def lookup(class_type: str) -> ComfyNodeSpec | None:
        return table.get(class_type) or shim_spec(class_type)

    return lookup


def known_class_types(registry: Registry) -> list[str]:
    """Every ComfyUI class_type graphrun accepts (for did-you-mean suggestions)."""
    return sorted({*registry.comfy_index(), *DISPLAY_ONLY, *FOLDED, *ALIASES})
