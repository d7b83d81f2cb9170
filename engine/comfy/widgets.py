"""What the UI-format importer needs to know about a ComfyUI node type.

A ComfyUI UI workflow stores widget values positionally (`widgets_values`), so turning it into the API format
requires knowing, for every node type, which inputs have widgets, in which order, and which extra values the
frontend stores next to them. The node registry supplies this through a `SpecLookup`: a function from a
ComfyUI `class_type` to a `ComfyNodeSpec`, or None when the type is not supported.

The order rules (SEMANTICS.md §1.4) the registry must follow when building a spec:

* `ComfyNodeSpec.widgets` lists the inputs that get a widget, in the node definition's **required-then-optional
  declaration order**; hidden inputs and `forceInput` inputs have no widget.
* Object-typed inputs (MODEL, LATENT, ...) are not widgets; list them only in `ComfyNodeSpec.inputs`.
* Flags on a `WidgetSlot` say which extra values the frontend stores right after the widget (see `stored_slots`).

The module also carries specs for the ComfyUI core nodes that exist only in the frontend or have no graphrun
counterpart (Reroute, PrimitiveNode, notes, the Primitive* value nodes); the importer consults them before the
registry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, NamedTuple

#: Widget kinds the importer understands; COMBO is a list-of-choices input.
WIDGET_KINDS: frozenset[str] = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})

#: INT widgets with these names get a `control_after_generate` companion even without the flag (frontend rule).
SEED_WIDGET_NAMES: frozenset[str] = frozenset({"seed", "noise_seed"})

#: Names of the extra values the frontend stores in `widgets_values` but never sends to the backend.
CONTROL_AFTER_GENERATE = "control_after_generate"
CONTROL_FILTER_LIST = "control_filter_list"
UPLOAD = "upload"


@dataclass(frozen=True)
class WidgetSlot:
    """One widget of a ComfyUI node, as the frontend creates it.

    name: the input name (also the key in the API prompt).
    kind: INT, FLOAT, STRING, BOOLEAN or COMBO.
    default: the value a widget gets when `widgets_values` is too short to reach it.
    control_after_generate: the input declares `control_after_generate` (INT: one extra stored value; COMBO: two).
        INT widgets named `seed`/`noise_seed` get the INT companion even when this is False.
    image_upload: a COMBO with `image_upload: True` (LoadImage); the frontend stores an `upload` value after it.
    dynamic_prompts: a STRING with `dynamicPrompts: True` (CLIPTextEncode `text`); the frontend strips comments
        and expands `{a|b}` groups before sending it.
    """

    name: str
    kind: str
    default: Any
    control_after_generate: bool = False
    image_upload: bool = False
    dynamic_prompts: bool = False

    def __post_init__(self) -> None:
        if self.kind not in WIDGET_KINDS:
            raise ValueError(f"widget {self.name!r}: kind must be one of {sorted(WIDGET_KINDS)}, got {self.kind!r}")

    @property
    def has_int_control(self) -> bool:
        """True when the frontend adds the one-value `control_after_generate` combo after this INT widget."""
        return self.kind == "INT" and (self.control_after_generate or self.name in SEED_WIDGET_NAMES)

    @property
    def has_combo_control(self) -> bool:
        """True when the frontend adds `control_after_generate` and `control_filter_list` after this COMBO."""
        return self.kind == "COMBO" and self.control_after_generate

    def stored_slots(self) -> tuple[str, ...]:
        """Names of the `widgets_values` entries this widget occupies, in order; the first is the widget itself."""
        extra: tuple[str, ...] = ()
        if self.has_int_control:
            extra = (CONTROL_AFTER_GENERATE,)
        elif self.has_combo_control:
            extra = (CONTROL_AFTER_GENERATE, CONTROL_FILTER_LIST)
        if self.image_upload:
            extra += (UPLOAD,)
        return (self.name, *extra)


class StoredSlot(NamedTuple):
    """One position in a node's `widgets_values` list."""

    name: str
    widget: WidgetSlot
    serialized: bool  # False for the frontend-only companions: present in widgets_values, absent from the API


@dataclass(frozen=True)
class ComfyNodeSpec:
    """The ComfyUI-facing shape of one node type.

    class_type: the ComfyUI node class name (`KSampler`).
    inputs: every input name (sockets and widgets) in declaration order, required then optional.
    widgets: the widget inputs in widget order (a subsequence of `inputs`, see the module docstring).
    outputs: the output type names in slot order (`("LATENT",)`).
    force_inputs: primitive inputs declared with `forceInput` (no widget). Frontends before 1.16 stored a dummy
        value for them in `widgets_values`; the importer drops those when the count matches exactly.
    """

    class_type: str
    inputs: tuple[str, ...]
    widgets: tuple[WidgetSlot, ...]
    outputs: tuple[str, ...]
    force_inputs: tuple[str, ...] = ()

    def widget(self, name: str) -> WidgetSlot | None:
        """The widget called `name`, or None."""
        for w in self.widgets:
            if w.name == name:
                return w
        return None

    @property
    def widget_names(self) -> tuple[str, ...]:
        return tuple(w.name for w in self.widgets)

    def widgets_values_layout(self) -> tuple[StoredSlot, ...]:
        """The meaning of each position of `widgets_values` as written by the current frontend."""
        layout: list[StoredSlot] = []
        for w in self.widgets:
            names = w.stored_slots()
            layout.append(StoredSlot(names[0], w, True))
            layout.extend(StoredSlot(extra, w, False) for extra in names[1:])
        return tuple(layout)


#: Looks up the spec of a ComfyUI class_type; returns None for types graphrun cannot run.
SpecLookup = Callable[[str], "ComfyNodeSpec | None"]


def spec_table(specs: Iterable[ComfyNodeSpec]) -> SpecLookup:
    """A SpecLookup over a fixed collection of specs (later duplicates win)."""
    table = {s.class_type: s for s in specs}
    return table.get


# --- ComfyUI core nodes with no graphrun counterpart -------------------------------------------------------------

REROUTE = "Reroute"
PRIMITIVE_NODE = "PrimitiveNode"
NOTE_TYPES: frozenset[str] = frozenset({"Note", "MarkdownNote"})

#: Backend value nodes (comfy_extras/nodes_primitive.py). Their single output equals their `value` input, so the
#: importer writes the value straight into the consumers instead of emitting the node.
PRIMITIVE_VALUE_TYPES: frozenset[str] = frozenset(
    {"PrimitiveInt", "PrimitiveFloat", "PrimitiveString", "PrimitiveStringMultiline", "PrimitiveBoolean"}
)


def _value_node(class_type: str, kind: str, default: Any, *, control: bool = False) -> ComfyNodeSpec:
    return ComfyNodeSpec(
        class_type=class_type,
        inputs=("value",),
        widgets=(WidgetSlot("value", kind, default, control_after_generate=control),),
        outputs=(kind,),
    )


BUILTIN_SPECS: dict[str, ComfyNodeSpec] = {
    # Reroute passes input 0 through; its socket types are "*".
    REROUTE: ComfyNodeSpec(REROUTE, inputs=("",), widgets=(), outputs=("*",)),
    # PrimitiveNode's widgets mirror whatever widget it is connected to: widgets_values = [value, control, filter].
    # The importer reads position 0 itself, so the spec declares no widgets.
    PRIMITIVE_NODE: ComfyNodeSpec(PRIMITIVE_NODE, inputs=(), widgets=(), outputs=("*",)),
    "Note": ComfyNodeSpec("Note", inputs=("text",), widgets=(WidgetSlot("text", "STRING", ""),), outputs=()),
    "MarkdownNote": ComfyNodeSpec(
        "MarkdownNote", inputs=("text",), widgets=(WidgetSlot("text", "STRING", ""),), outputs=()
    ),
    "PrimitiveInt": _value_node("PrimitiveInt", "INT", 0, control=True),
    "PrimitiveFloat": _value_node("PrimitiveFloat", "FLOAT", 0.0),
    "PrimitiveString": _value_node("PrimitiveString", "STRING", ""),
    "PrimitiveStringMultiline": _value_node("PrimitiveStringMultiline", "STRING", ""),
    "PrimitiveBoolean": _value_node("PrimitiveBoolean", "BOOLEAN", False),
}


def builtin_spec(class_type: str) -> ComfyNodeSpec | None:
    """The importer's own spec for a ComfyUI core frontend-only or value node, or None."""
    return BUILTIN_SPECS.get(class_type)
