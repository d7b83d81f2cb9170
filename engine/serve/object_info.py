"""ComfyUI's ``GET /object_info``, generated from graphrun's node registry.

ComfyUI's web editor draws every node, its sockets and widgets, from this answer, and it stores widget values
by position, in the order of ``input_order``. So the entries are built from the same declarations the UI-format
importer reads (:mod:`graphrun.engine.comfy.specs`): a workflow made in the editor converts back to the values
the user set. One entry per class_type graphrun runs:

* every ``Comfy(...)`` mapping of every registered node (built-ins and plugins), under the ComfyUI names: inputs
  renamed as the mapping says, graphrun-only inputs (those some mapping fixes) and ``fixed`` values left out,
  widgets in the widget order of :func:`~graphrun.engine.comfy.specs.comfy_node_spec`; the mapping's facts about
  ComfyUI's node where they are not graphrun's (``display_name``, ``category``, ``outputs``, ``optional``,
  ``input_order``, editor-only widget ``options`` such as cfg's step 0.1, ``choices`` for a free-text input), so
  the node library and the node boxes look like ComfyUI v0.18.1's;
* graphrun node types with no ComfyUI counterpart (``LoadZImage``), under their own names: the importer takes
  them and graphrun's PNG workflows contain them;
* the importer's shims: display-only nodes it skips, value nodes it folds, aliases it runs as another node
  (the notes, which the editor defines itself, are left out).

The shape is v0.18.1's ``node_info`` for classic nodes: ``input`` (``required``/``optional``, each input
``[TYPE, {options}]``, a combo ``[[values...], {options}]``), ``input_order``, ``is_input_list``, ``output``,
``output_is_list``, ``output_name``, ``name``, ``display_name``, ``description``, ``python_module``,
``category``, ``output_node``, ``has_intermediate_output`` and ``search_aliases``.

Widget options follow graphrun's declarations (pydantic bounds become ``min``/``max``, ``multiple_of`` the
``step``) and ComfyUI's conventions where graphrun declares nothing: INT step 1, FLOAT step and round 0.01, and
explicit bounds when a number is unbounded, because the editor clamps a number without ``min``/``max`` to
0..2048. Inputs that take a file name list the files of the ComfyUI folder their mapping names
(``Comfy(files=...)``), asked from ``files`` each time: the server's folders, not a table here.

Torch-free and cheap: the editor asks at every page load.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..comfy.specs import ALIASES, ASPECT_RATIOS, DISPLAY_ONLY, FOLDED, comfy_inputs, comfy_node_spec, comfy_outputs
from ..comfy.widgets import NOTE_TYPES, PRIMITIVE_NODE, REROUTE, WIDGET_KINDS, ComfyNodeSpec, WidgetSlot
from ..node import REQUIRED, Comfy, InputSpec, NodeSpec, Registry

__all__ = ["FRONTEND_ONLY", "FileLister", "INT_LIMIT", "object_info", "node_info", "served_class_types"]

#: The file names of one ComfyUI folder ("diffusion_models", "loras", ..., "input" for uploaded images).
FileLister = Callable[[str], list[str]]

#: Bound sent for a number graphrun leaves unbounded (ComfyUI's sys.maxsize): the editor would clamp to 0..2048.
INT_LIMIT = 2**63 - 1
#: The step of a FLOAT widget whose declaration says nothing (ComfyUI's usual 0.01; also its rounding).
FLOAT_STEP = 0.01

#: Node types the editor defines itself; an entry for them would replace the editor's own.
FRONTEND_ONLY: frozenset[str] = frozenset({REROUTE, PRIMITIVE_NODE, *NOTE_TYPES})


#: ComfyUI 0.33's editor titles and node-library folders where they differ from v0.18.1's (what graphrun's
#: node declarations give): 0.33 moved the model nodes under ``model/`` and renamed a few (read from a real
#: ComfyUI de6b062f's ``/object_info``; nodes it shows without a display name keep their class_type).
TITLES_033: dict[str, tuple[str, str]] = {
    "AddNoise": ("AddNoise", "model/sampling/noise"),
    "BasicGuider": ("Basic Guider", "model/sampling/guiders"),
    "BasicScheduler": ("BasicScheduler", "model/sampling/schedulers"),
    "CFGGuider": ("CFG Guider", "model/sampling/guiders"),
    "CLIPLoader": ("Load CLIP", "model/loaders"),
    "CLIPTextEncode": ("CLIP Text Encode (Prompt)", "model/conditioning"),
    "ConditioningZeroOut": ("Conditioning Zero Out", "model/conditioning/transform"),
    "DisableNoise": ("DisableNoise", "model/sampling/noise"),
    "EmptyLatentImage": ("Empty Latent Image", "model/latent"),
    "EmptySD3LatentImage": ("EmptySD3LatentImage", "model/latent/stable diffusion"),
    "ImageCompare": ("Compare Images", "image"),
    "ImageScaleToMaxDimension": ("Scale Image to Max Dimension", "image/upscaling"),
    "KSampler": ("KSampler", "model/sampling"),
    "KSamplerAdvanced": ("KSampler (Advanced)", "model/sampling"),
    "KSamplerSelect": ("KSamplerSelect", "model/sampling/samplers"),
    "LatentUpscale": ("Upscale Latent", "model/latent"),
    "LatentUpscaleBy": ("Upscale Latent By", "model/latent"),
    "LoraLoader": ("Load LoRA (Model and CLIP)", "model/loaders"),
    "LoraLoaderModelOnly": ("Load LoRA", "model/loaders"),
    "ManualSigmas": ("ManualSigmas", "model/sampling/sigmas"),
    "ModelSamplingAuraFlow": ("ModelSamplingAuraFlow", "model/patch"),
    "ModelSamplingSD3": ("ModelSamplingSD3", "model/patch/stable diffusion"),
    "PreviewAny": ("Preview as Text", "utilities"),
    "PrimitiveBoolean": ("Boolean", "utilities/primitive"),
    "PrimitiveFloat": ("Float", "utilities/primitive"),
    "PrimitiveInt": ("Int", "utilities/primitive"),
    "PrimitiveString": ("Text", "utilities/primitive"),
    "PrimitiveStringMultiline": ("Text (Multiline)", "utilities/primitive"),
    "RandomNoise": ("RandomNoise", "model/sampling/noise"),
    "ResolutionSelector": ("Resolution Selector", "utilities"),
    "SamplerCustom": ("SamplerCustom", "model/sampling/custom"),
    "SamplerCustomAdvanced": ("SamplerCustomAdvanced", "model/sampling/custom"),
    "SamplerER_SDE": ("SamplerER_SDE", "model/sampling/samplers"),
    "SamplerLCM": ("SamplerLCM", "model/sampling/samplers"),
    "SplitSigmas": ("SplitSigmas", "model/sampling/sigmas"),
    "SplitSigmasDenoise": ("SplitSigmasDenoise", "model/sampling/sigmas"),
    "UNETLoader": ("Load Diffusion Model", "model/loaders"),
    "UpscaleModelLoader": ("Load Upscale Model", "model/loaders"),
    "VAEDecode": ("VAE Decode", "model/latent"),
    "VAEEncode": ("VAE Encode", "model/latent"),
    "VAELoader": ("Load VAE", "model/loaders"),
}


def _titled(registry: Registry, entry: dict[str, Any], class_type: str, comfy_version: str) -> dict[str, Any]:
    """``entry`` with the display name, category and outputs of the ComfyUI version followed (a node whose
    outputs came later, ``Comfy(outputs_since=...)``, shows none under older settings)."""
    from ..comfy.versions import comfy_at_least

    if class_type in TITLES_033 and comfy_at_least(comfy_version, "0.33"):
        entry["display_name"], entry["category"] = TITLES_033[class_type]
    found = registry.comfy_spec(class_type)
    since = found[1].outputs_since if found is not None else ""
    if since and not comfy_at_least(comfy_version, since):
        entry["output"], entry["output_is_list"], entry["output_name"] = [], [], []
    return entry


def object_info(registry: Registry, files: FileLister, comfy_version: str = "") -> dict[str, dict[str, Any]]:
    """Every class_type graphrun runs -> its ComfyUI node description (``GET /object_info``), with the titles
    and categories of ``comfy_version``.

    ``files(folder)`` is asked once per folder for this answer, however many inputs list it.
    """
    listed = _once_per_folder(files)
    served = _served(registry)
    return {class_type: _titled(registry, _entry(registry, class_type, served[class_type], listed), class_type, comfy_version)
            for class_type in sorted(served)}


def node_info(registry: Registry, class_type: str, files: FileLister, comfy_version: str = ""
              ) -> dict[str, Any] | None:
    """The ComfyUI node description of one class_type (``GET /object_info/{class}``); None when graphrun has none."""
    kind = _served(registry).get(class_type)
    if kind is None:
        return None
    return _titled(registry, _entry(registry, class_type, kind, _once_per_folder(files)), class_type, comfy_version)


def served_class_types(registry: Registry) -> list[str]:
    """The class_types :func:`object_info` describes, sorted."""
    return sorted(_served(registry))


# --- which class_types ---------------------------------------------------------------------------------------------


def _served(registry: Registry) -> dict[str, str]:
    """class_type -> where its entry comes from: "comfy", "native", "alias", "folded" or "display"."""
    index = registry.comfy_index()
    served = {class_type: "comfy" for class_type in index}
    for spec in registry:
        if not spec.comfy and spec.name not in served:
            served[spec.name] = "native"
    for class_type, alias in ALIASES.items():
        if alias.target in index:  # the importer runs an alias only when its target is there
            served.setdefault(class_type, "alias")
    for class_type in FOLDED:
        served.setdefault(class_type, "folded")
    for class_type in DISPLAY_ONLY:
        if class_type not in FRONTEND_ONLY:
            served.setdefault(class_type, "display")
    return served


def _entry(registry: Registry, class_type: str, kind: str, files: FileLister) -> dict[str, Any]:
    if kind == "comfy":
        found = registry.comfy_spec(class_type)
        assert found is not None
        return _mapped_entry(*found, files)
    if kind == "native":
        spec = registry.get(class_type)
        assert spec is not None
        return _native_entry(spec)
    return _shim_entry(class_type, kind)


def _once_per_folder(files: FileLister) -> FileLister:
    cache: dict[str, list[str]] = {}

    def listed(folder: str) -> list[str]:
        if folder not in cache:
            cache[folder] = list(files(folder))
        return cache[folder]

    return listed


# --- registry nodes ------------------------------------------------------------------------------------------------


def _mapped_entry(spec: NodeSpec, comfy: Comfy, files: FileLister) -> dict[str, Any]:
    """The entry of a ``Comfy(...)`` mapping: ComfyUI names, widget order of ``comfy_node_spec``, and what the
    mapping says of ComfyUI's node (title, category, outputs, sections, input order, widget options)."""
    layout = comfy_node_spec(spec, comfy)
    slots = {slot.name: slot for slot in layout.widgets}
    widget_order = iter(layout.widget_names)
    ours_of = {theirs: ours for ours, theirs in comfy_inputs(spec, comfy)}
    places = [name for name in comfy.input_order if name in ours_of]
    places += [name for name in ours_of if name not in places]
    required: dict[str, list[Any]] = {}
    optional: dict[str, list[Any]] = {}
    # Sockets take their places (ComfyUI's input order, else graphrun's declaration order); the widget places are
    # filled in widget order, which an explicit ``widgets`` list may change (and which is what the editor indexes
    # ``widgets_values`` by). check_mapping keeps optional widgets last, where the editor reads them.
    for theirs in places:
        if theirs in slots:
            name = next(widget_order)
            section = optional if comfy.optional is not None and name in comfy.optional else required
            section[name] = _mapped_widget(spec, comfy, slots[name], files)
        else:
            inp = spec.input(ours_of[theirs])
            assert inp is not None
            is_optional = inp.optional if comfy.optional is None else theirs in comfy.optional
            (optional if is_optional else required)[theirs] = _socket(inp.type_name, inp.description)
    for name in widget_order:  # widgets of an explicit list that comfy_inputs did not place (none today)
        required[name] = _mapped_widget(spec, comfy, slots[name], files)
    return _info(
        name=comfy.class_type,
        required=required,
        optional=optional,
        outputs=[(o.name, o.type_name) for o in comfy_outputs(spec, comfy)],
        category=comfy.category or spec.category,
        description=spec.summary,
        python_module=_python_module(spec),
        output_node=spec.output,
        display_name=comfy.display_name,
    )


def _mapped_widget(spec: NodeSpec, comfy: Comfy, slot: WidgetSlot, files: FileLister) -> list[Any]:
    inp = spec.input(comfy.our_name(slot.name))
    assert inp is not None
    folder = comfy.files.get(slot.name) or comfy.files.get(inp.name)
    values = files(folder) if folder is not None else comfy.choices.get(slot.name)
    widget = _widget(inp, slot, values)
    widget[1].update(comfy.options.get(slot.name, {}))  # editor-only options (step, round, advanced)
    return widget


def _native_entry(spec: NodeSpec) -> dict[str, Any]:
    """A graphrun node type with no ComfyUI counterpart, by graphrun's names: widgets are its primitive inputs in
    declaration order, as the API-to-UI converter lays them out."""
    required: dict[str, list[Any]] = {}
    optional: dict[str, list[Any]] = {}
    for inp in spec.inputs:
        if inp.socket:
            (optional if inp.optional else required)[inp.name] = _socket(inp.type_name, inp.description)
        else:
            kind = inp.type_name if inp.type_name in WIDGET_KINDS else "STRING"
            slot = WidgetSlot(inp.name, kind, None if inp.default is REQUIRED else inp.default)
            required[inp.name] = _widget(inp, slot, None)
    builtin = spec.fn.__module__.startswith("graphrun.")
    return _info(
        name=spec.name,
        required=required,
        optional=optional,
        outputs=[(o.name, o.type_name) for o in spec.outputs],
        category=spec.category,
        description=spec.summary,
        # a badge in the editor says the node is graphrun's own, not one of ComfyUI's
        python_module="custom_nodes.graphrun" if builtin else _python_module(spec),
        output_node=spec.output,
    )


def _python_module(spec: NodeSpec) -> str:
    """ComfyUI's ``python_module``: "nodes" for the built-ins (ComfyUI's core nodes), ``custom_nodes.NAME`` for
    plugins (the editor shows NAME as the node's pack)."""
    module = spec.fn.__module__
    if module.startswith("graphrun.nodes.plugins."):
        return "custom_nodes." + module.rsplit(".", 1)[1]
    if module.startswith("graphrun."):
        return "nodes"
    if module.startswith("graphrun_plugin_"):  # a plugin file, imported as graphrun_plugin_<stem>_<hash>
        return "custom_nodes." + module.removeprefix("graphrun_plugin_").rsplit("_", 1)[0]
    return "custom_nodes." + module.split(".", 1)[0]


def _socket(type_name: str, description: str = "") -> list[Any]:
    return [type_name, {"tooltip": description}] if description else [type_name]


def _bounds(inp: InputSpec, integer: bool) -> tuple[Any, Any]:
    """``(min, max)`` from the pydantic bounds; a strict bound of an INT moves to the next whole number."""
    c = inp.constraints
    low: Any = -INT_LIMIT
    if "ge" in c:
        low = c["ge"]
    elif "gt" in c:
        low = c["gt"] + 1 if integer else c["gt"]
    high: Any = INT_LIMIT
    if "le" in c:
        high = c["le"]
    elif "lt" in c:
        high = c["lt"] - 1 if integer else c["lt"]
    return low, high


def _widget(inp: InputSpec, slot: WidgetSlot, values: Sequence[Any] | None) -> list[Any]:
    """``[TYPE, {options}]`` (``[[values...], {options}]`` for a combo, or for a text input offered as the given
    ``values``: a folder's files, a mapping's choices) of one widget input."""
    options: dict[str, Any] = {}
    if inp.default is not REQUIRED:
        options["default"] = inp.default
    if inp.description:
        options["tooltip"] = inp.description
    if slot.has_int_control or slot.has_combo_control:
        options["control_after_generate"] = True
    if slot.image_upload:
        options["image_upload"] = True
    if values is not None:
        return [list(values), options]
    if inp.type_name == "COMBO":
        return [list(inp.choices), options]
    if inp.type_name in ("INT", "FLOAT"):
        integer = inp.type_name == "INT"
        options["min"], options["max"] = _bounds(inp, integer)
        options["step"] = inp.constraints.get("multiple_of", 1 if integer else FLOAT_STEP)
        if not integer:
            options["round"] = options["step"]
        return [inp.type_name, options]
    if slot.dynamic_prompts:  # a prompt: the big text box, and the editor's {a|b} / comment handling
        options["multiline"] = True
        options["dynamicPrompts"] = True
    return [inp.type_name if inp.type_name in WIDGET_KINDS else "STRING", options]


def _output_name(name: str, type_name: str) -> str:
    # ComfyUI names an output by its type unless the node gives names (RETURN_NAMES): graphrun's "model" for
    # MODEL is such a default, SamplerCustom's "denoised_output" a real name.
    return type_name if name.upper() == type_name else name


def _info(
    *,
    name: str,
    required: dict[str, list[Any]],
    optional: dict[str, list[Any]],
    outputs: list[tuple[str, str]],
    category: str,
    description: str,
    python_module: str,
    output_node: bool,
    display_name: str = "",
) -> dict[str, Any]:
    inputs: dict[str, dict[str, list[Any]]] = {"required": required}
    if optional:
        inputs["optional"] = optional
    return {
        "input": inputs,
        "input_order": {section: list(values) for section, values in inputs.items()},
        "is_input_list": False,
        "output": [type_name for _, type_name in outputs],
        "output_is_list": [False] * len(outputs),
        "output_name": [_output_name(n, t) for n, t in outputs],
        "name": name,
        "display_name": display_name or name,
        "description": description,
        "python_module": python_module,
        "category": category,
        "output_node": output_node,
        "has_intermediate_output": False,
        "search_aliases": [],
    }


# --- shims ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shim:
    """What the importer's shim specs do not say about a ComfyUI node: socket types, widget options (as ComfyUI
    v0.18.1 declares them, or later versions for the nodes it lacks), where the editor lists the node."""

    display_name: str
    category: str
    python_module: str
    sockets: Mapping[str, tuple[str, bool]] = field(default_factory=dict)  # name -> (type, optional)
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # widget -> options
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)  # combo widget -> values
    output_names: tuple[str, ...] = ()
    output_node: bool = False


_UNBOUNDED = {"min": -INT_LIMIT, "max": INT_LIMIT}
_PRIMITIVES = "comfy_extras.nodes_primitive"

_SHIMS: dict[str, _Shim] = {
    "ImageCompare": _Shim("Image Compare", "image", "comfy_extras.nodes_image_compare",
                          sockets={"image_a": ("IMAGE", True), "image_b": ("IMAGE", True)}, output_node=True),
    "PreviewAny": _Shim("Preview as Text", "utils", "comfy_extras.nodes_preview_any",
                        sockets={"source": ("*", False)}, output_node=True),
    "PrimitiveInt": _Shim("Int", "utils/primitive", _PRIMITIVES, options={"value": _UNBOUNDED}),
    "PrimitiveFloat": _Shim("Float", "utils/primitive", _PRIMITIVES, options={"value": {**_UNBOUNDED, "step": 0.1}}),
    "PrimitiveString": _Shim("String", "utils/primitive", _PRIMITIVES),
    "PrimitiveStringMultiline": _Shim("String (Multiline)", "utils/primitive", _PRIMITIVES,
                                      options={"value": {"multiline": True}}),
    "PrimitiveBoolean": _Shim("Boolean", "utils/primitive", _PRIMITIVES),
    "ResolutionSelector": _Shim(
        "Resolution Selector", "utils", "comfy_extras.nodes_resolution",
        options={"megapixels": {"min": 0.1, "max": 16.0, "step": 0.1},
                 "multiple": {"min": 1, "max": 1024}, "minimum": {"min": 1, "max": 16384}},
        choices={"aspect_ratio": tuple(ASPECT_RATIOS)},
        output_names=("width", "height"),
    ),
    "SaveImageAdvanced": _Shim(
        "Save Image (Advanced)", "image", "comfy_extras.nodes_images",
        sockets={"images": ("IMAGE", False)},
        # only the values graphrun reproduces: any other is refused when the prompt is queued
        choices={name: (value,) for name, value in ALIASES["SaveImageAdvanced"].required.items()},
        output_node=True,
    ),
}

_SHIM_DESCRIPTIONS = {
    "display": "Accepted by graphrun and skipped: it only shows something in ComfyUI's browser tab.",
    "folded": "A constant: graphrun puts its value straight into the nodes it feeds.",
}


def _shim_widget(slot: WidgetSlot, shim: _Shim) -> list[Any]:
    options: dict[str, Any] = {"default": slot.default}
    if slot.has_int_control or slot.has_combo_control:
        options["control_after_generate"] = True
    if slot.kind == "COMBO":
        return [list(shim.choices.get(slot.name, (slot.default,))), {**options, **shim.options.get(slot.name, {})}]
    if slot.kind == "INT":
        options.update(_UNBOUNDED, step=1)
    elif slot.kind == "FLOAT":
        options.update(_UNBOUNDED, step=FLOAT_STEP)
    options.update(shim.options.get(slot.name, {}))
    if slot.kind == "FLOAT":
        options["round"] = options["step"]
    if slot.dynamic_prompts:
        options.update(multiline=True, dynamicPrompts=True)
    return [slot.kind, options]


def _shim_layout(class_type: str, kind: str) -> tuple[ComfyNodeSpec, str]:
    if kind == "alias":
        alias = ALIASES[class_type]
        return alias.spec, f"Runs as {alias.target}: {alias.note}." if alias.note else f"Runs as {alias.target}."
    if kind == "folded":
        return FOLDED[class_type].spec, _SHIM_DESCRIPTIONS["folded"]
    return DISPLAY_ONLY[class_type], _SHIM_DESCRIPTIONS["display"]


def _shim_entry(class_type: str, kind: str) -> dict[str, Any]:
    layout, description = _shim_layout(class_type, kind)
    shim = _SHIMS.get(class_type) or _Shim(class_type, "utils", "nodes")
    slots = {slot.name: slot for slot in layout.widgets}
    widget_order = iter(layout.widgets)
    required: dict[str, list[Any]] = {}
    optional: dict[str, list[Any]] = {}
    for name in layout.inputs:  # as for mapped nodes: widget places filled in widget order
        if name in slots:
            slot = next(widget_order)
            required[slot.name] = _shim_widget(slot, shim)
        else:
            type_name, is_optional = shim.sockets.get(name, ("*", False))
            (optional if is_optional else required)[name] = _socket(type_name)
    names = shim.output_names or layout.outputs
    return _info(
        name=class_type,
        required=required,
        optional=optional,
        outputs=list(zip(names, layout.outputs)),
        category=shim.category,
        description=description,
        python_module=shim.python_module,
        output_node=shim.output_node,
        display_name=shim.display_name,
    )
