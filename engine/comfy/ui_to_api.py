"""Convert a ComfyUI UI-format workflow (litegraph serialisation) into the API ("prompt") format.

ComfyUI does this in the browser (`graphToPrompt`) on the live graph; graphrun reproduces it from the saved JSON,
following SEMANTICS.md §1.4:

* `widgets_values` are mapped through each node's widget order (`ComfyNodeSpec`), skipping the stored-only
  companions (`control_after_generate`, `control_filter_list`, `upload`); short lists keep defaults; dict-form
  values and `widgets_values_named` map by name.
* Links are resolved by the target input's *name* (never by slot index); a linked widget input takes the link.
* Reroutes pass through; PrimitiveNode and the Primitive* value nodes put their value into their consumers;
  notes are dropped; muted nodes (mode 2) are dropped and their consumers lose the input; bypassed nodes (mode 4)
  connect a consumer to one of their inputs by type.
* Subgraph instances are expanded with ids `instance:inner` (nested: `a:b:c`), including promoted widgets in both
  the `proxyWidgets` form and the io-widget form.
* The frontend's value transforms are applied: comment stripping in dynamic-prompt text, `{a|b}` choice groups
  (an error: ComfyUI would pick at random), `%date:…%` and `%Node.widget%` in save-node filename prefixes.

Problems are collected, not raised one by one: `ui_to_api` either returns the whole prompt plus warnings or raises
one `ComfyConversionError` carrying every error (nothing partially converted).
"""
from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum
from typing import Any, Callable, Iterable, Literal, Mapping

from .widgets import (
    CONTROL_AFTER_GENERATE,
    CONTROL_FILTER_LIST,
    NOTE_TYPES,
    PRIMITIVE_NODE,
    PRIMITIVE_VALUE_TYPES,
    REROUTE,
    ComfyNodeSpec,
    SpecLookup,
    builtin_spec,
    BUILTIN_SPECS,
)

__all__ = [
    "ComfyDiagnostic",
    "ComfyFormatError",
    "ComfyConversionError",
    "ui_to_api",
    "map_widgets_values",
    "expand_dynamic_prompt",
    "strip_prompt_comments",
    "apply_text_replacements",
    "format_date",
    "SAVE_NODE_TYPES",
]

# --- diagnostics ----------------------------------------------------------------------------------------------------

# Stable codes; tools may match on them.
UNSUPPORTED_NODE = "comfy_unsupported_node"
DYNAMIC_PROMPT_CHOICE = "comfy_dynamic_prompt_choice"
MALFORMED = "comfy_malformed"
SUBGRAPH_CYCLE = "comfy_subgraph_cycle"
LINK_CYCLE = "comfy_link_cycle"
DANGLING_LINK = "comfy_dangling_link"
MUTED_SOURCE = "comfy_muted_source"
BYPASS_UNMATCHED = "comfy_bypass_unmatched"
EXTRA_WIDGET_VALUES = "comfy_extra_widget_values"
NULL_WIDGET_VALUE = "comfy_null_widget_value"
LEGACY_MODE = "comfy_legacy_mode"
EMPTY_PRIMITIVE = "comfy_empty_primitive"

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class ComfyDiagnostic:
    """One problem found while reading or converting a ComfyUI workflow.

    node is the node id in API form (`"57:3"` inside subgraph instance 57), input the input name.
    """

    code: str
    message: str
    severity: Severity = "error"
    node: str | None = None
    input: str | None = None
    hint: str | None = None

    def format(self) -> str:
        """One human-readable line."""
        where = ""
        if self.node is not None:
            where = f"node {self.node}" + (f" input '{self.input}'" if self.input is not None else "") + ": "
        text = f"{self.severity}[{self.code}] {where}{self.message}"
        return text + (f" (hint: {self.hint})" if self.hint else "")


class ComfyFormatError(ValueError):
    """A ComfyUI workflow cannot be read or converted. `diagnostics` holds every problem found."""

    def __init__(self, message: str, diagnostics: Iterable[ComfyDiagnostic] = ()):
        super().__init__(message)
        self.diagnostics: tuple[ComfyDiagnostic, ...] = tuple(diagnostics)


class ComfyConversionError(ComfyFormatError):
    """UI→API conversion failed. `diagnostics` lists the errors first, then any warnings.

    `unsupported` maps each class_type the SpecLookup did not know to the node ids (API form) that use it.
    """

    def __init__(self, diagnostics: Iterable[ComfyDiagnostic], unsupported: Mapping[str, tuple[str, ...]] = {}):
        diags = sorted(diagnostics, key=lambda d: d.severity != "error")
        errors = [d for d in diags if d.severity == "error"]
        lines = "\n".join("  " + d.format() for d in errors)
        super().__init__(f"cannot convert the ComfyUI workflow ({len(errors)} error(s)):\n{lines}", diags)
        self.unsupported: dict[str, tuple[str, ...]] = dict(unsupported)

    @property
    def errors(self) -> list[ComfyDiagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]


# --- widgets_values -> named values ---------------------------------------------------------------------------------


def map_widgets_values(
    spec: ComfyNodeSpec, values: Any, named: Any = None
) -> tuple[dict[str, Any], list[ComfyDiagnostic]]:
    """Map a node's stored widget values to `{widget name: value}` for the widgets that reach the API prompt.

    values is the node's `widgets_values` (list or dict), named its `widgets_values_named` (preferred per name).
    Widgets the stored data does not reach keep their spec default. Returned diagnostics are warnings without a
    node id; the caller adds it.
    """
    result = {w.name: copy.deepcopy(w.default) for w in spec.widgets}
    problems: list[ComfyDiagnostic] = []
    if isinstance(values, Mapping):
        _take_by_name(spec, values, result)
    elif isinstance(values, list):
        _take_positional(spec, values, result, problems)
    if isinstance(named, Mapping):
        _take_by_name(spec, named, result)
    return result, problems


def _take_by_name(spec: ComfyNodeSpec, values: Mapping[Any, Any], result: dict[str, Any]) -> None:
    for w in spec.widgets:
        if w.name in values and values[w.name] is not None:
            result[w.name] = values[w.name]


def _take_positional(
    spec: ComfyNodeSpec, values: list[Any], result: dict[str, Any], problems: list[ComfyDiagnostic]
) -> None:
    values = _drop_force_input_dummies(spec, values)
    layout = spec.widgets_values_layout()
    for slot, value in zip(layout, values):
        if not slot.serialized:
            continue
        if value is None:
            message = "stored value is null; using the default"
            problems.append(ComfyDiagnostic(NULL_WIDGET_VALUE, message, "warning", input=slot.name))
            continue
        result[slot.name] = value
    if len(values) > len(layout):
        problems.append(
            ComfyDiagnostic(
                EXTRA_WIDGET_VALUES,
                f"{len(values)} widget values stored but {spec.class_type} has {len(layout)} widget slots; "
                "the extra values are ignored",
                "warning",
                hint="the workflow may come from a different version of the node",
            )
        )


def _drop_force_input_dummies(spec: ComfyNodeSpec, values: list[Any]) -> list[Any]:
    """Frontends before 1.16 stored a dummy value for each forceInput input; drop them when the count matches."""
    if not spec.force_inputs:
        return values
    widgets = {w.name: w for w in spec.widgets}
    old_layout: list[bool] = []  # True = a forceInput dummy position
    placed: set[str] = set()
    for name in spec.inputs:
        if name in widgets:
            old_layout.extend([False] * len(widgets[name].stored_slots()))
            placed.add(name)
        elif name in spec.force_inputs:
            old_layout.append(True)
    for w in spec.widgets:
        if w.name not in placed:
            old_layout.extend([False] * len(w.stored_slots()))
    if len(values) != len(old_layout):
        return values
    return [v for v, dummy in zip(values, old_layout) if not dummy]


# --- frontend value transforms --------------------------------------------------------------------------------------

# The frontend's comment regex; JavaScript's `.` stops at any line terminator, hence the explicit class.
_COMMENT_RE = re.compile(r"/\*[\s\S]*?\*/|//[^\n\r\u2028\u2029]*")
_UNESCAPE_RE = re.compile(r"\\([{}|])")


def strip_prompt_comments(text: str) -> str:
    """Remove `/* … */` and `// …` comments like the frontend (which also eats the tail of `http://…`)."""
    return _COMMENT_RE.sub("", text)


def expand_dynamic_prompt(text: str) -> tuple[str, list[str]]:
    """Apply the frontend's dynamic-prompt processing as far as it is deterministic.

    Returns the processed text and the list of `{a|b}` choice groups found (outermost ones, as written).
    With no choice groups the text is exactly what ComfyUI sends: comments stripped, braces of groups without
    `|` removed, `\\{ \\} \\|` unescaped. With choice groups ComfyUI would pick options at random; the caller
    decides what to do, the returned text then still contains the groups.
    """
    body, choices = _expand_groups(strip_prompt_comments(text))
    return _UNESCAPE_RE.sub(r"\1", body), choices


@dataclass
class _GroupFrame:
    start: int  # index of the opening brace; -1 for the top level
    options: list[list[str]]
    choices_before: int  # number of choice groups recorded when this group opened


def _expand_groups(text: str) -> tuple[str, list[str]]:
    """Resolve `{…}` groups without `|` and record groups with `|`. Iterative: nesting depth is unbounded."""
    stack = [_GroupFrame(-1, [[]], 0)]
    choices: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        frame = stack[-1]
        if char == "\\" and i + 1 < len(text):
            frame.options[-1].append(text[i : i + 2])  # escapes survive until the final unescape
            i += 2
            continue
        if char == "{":
            stack.append(_GroupFrame(i, [[]], len(choices)))
        elif char == "|" and len(stack) > 1:
            frame.options.append([])
        elif char == "}" and len(stack) > 1:
            _close_group(stack, choices, text[frame.start : i + 1])
        else:
            frame.options[-1].append(char)
        i += 1
    while len(stack) > 1:  # an unclosed group runs to the end of the text
        _close_group(stack, choices, text[stack[-1].start :])
    return "".join(stack[0].options[0]), choices


def _close_group(stack: list[_GroupFrame], choices: list[str], source: str) -> None:
    frame = stack.pop()
    if len(frame.options) > 1:
        del choices[frame.choices_before :]  # report the outermost choice group only
        choices.append(source)
        piece = source
    else:
        piece = "".join(frame.options[0])
    stack[-1].options[-1].append(piece)


_REPLACE_RE = re.compile(r"%([^%]+)%")
_DATE_TOKEN_RE = re.compile(r"yyyy|yy|MM|M|dd|d|hh|h|mm|m|ss|s")

#: Node types whose `filename_prefix` the frontend passes through `applyTextReplacements`.
SAVE_NODE_TYPES: frozenset[str] = frozenset(
    {
        "SaveImage",
        "SaveAnimatedWEBP",
        "SaveAnimatedPNG",
        "SaveWEBM",
        "SaveVideo",
        "SaveAudio",
        "SaveAudioMP3",
        "SaveAudioOpus",
        "SaveLatent",
        "SaveGLB",
        "CheckpointSave",
        "ImageOnlyCheckpointSave",
        "CLIPSave",
        "VAESave",
        "ModelSave",
        "LoraSave",
    }
)

#: Returned by a widget finder when the node or widget does not exist.
NOT_FOUND = object()

WidgetFinder = Callable[[str, str], Any]


def format_date(fmt: str, now: datetime) -> str:
    """Expand the frontend's date tokens (`yyyy yy MM M dd d hh h mm m ss s`, 24-hour clock)."""
    fields = {
        "yyyy": f"{now.year}",
        "yy": f"{now.year}"[2:],
        "MM": f"{now.month:02d}",
        "M": f"{now.month}",
        "dd": f"{now.day:02d}",
        "d": f"{now.day}",
        "hh": f"{now.hour:02d}",
        "h": f"{now.hour}",
        "mm": f"{now.minute:02d}",
        "m": f"{now.minute}",
        "ss": f"{now.second:02d}",
        "s": f"{now.second}",
    }
    return _DATE_TOKEN_RE.sub(lambda m: fields[m.group(0)], fmt)


def apply_text_replacements(value: str, now: datetime, find_widget: WidgetFinder | None = None) -> str:
    """The frontend's `applyTextReplacements` for save-node filename prefixes.

    `%Node.widget%` (node found by "Node name for S&R", then by title) becomes the widget value with `/` and `\\`
    replaced by `_`; any other `%text%` with no single dot and starting with `date:` becomes a formatted date.
    Everything else (`%width%`, unknown nodes) is left for the backend.
    """

    def substitute(match: re.Match[str]) -> str:
        text = match.group(1)
        parts = text.split(".")
        if len(parts) != 2:
            # Same as the frontend: with 0 or 2+ dots only the part before the first dot is considered.
            if parts[0].startswith("date:"):
                return format_date(parts[0][len("date:") :], now)
            return match.group(0)
        found = find_widget(parts[0], parts[1]) if find_widget else NOT_FOUND
        if found is NOT_FOUND:
            return match.group(0)
        return re.sub(r"[/\\]", "_", _js_string("" if found is None else found))

    return _REPLACE_RE.sub(substitute, value)


def _js_string(value: Any) -> str:
    """String(value) as JavaScript writes it, for the value kinds widgets hold."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value in (float("inf"), float("-inf")):
            return "Infinity" if value > 0 else "-Infinity"
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        text = repr(value)
        if "e" in text:
            mantissa, exponent = text.split("e")
            power = int(exponent)
            text = f"{mantissa}e{'+' if power > 0 else '-'}{abs(power)}"
        return text
    if isinstance(value, list):
        return ",".join(_js_string(v) for v in value)
    return str(value)


# --- the parsed workflow --------------------------------------------------------------------------------------------

SUBGRAPH_INPUT_NODE = "-10"
SUBGRAPH_OUTPUT_NODE = "-20"
MODE_MUTED = 2
MODE_BYPASS = 4
_KNOWN_MODES = (0, 1, 2, 3, 4)
_MAX_SUBGRAPH_DEPTH = 64
_WILDCARD_TYPES = ("*", "")


@dataclass
class _Input:
    name: str
    type: str
    link: str | None
    is_widget: bool


@dataclass
class _Output:
    name: str
    type: str


@dataclass
class _Node:
    id: str
    type: str
    mode: int
    title: str | None
    inputs: list[_Input]
    outputs: list[_Output]
    values: Any  # widgets_values: list, dict or None
    named: Any  # widgets_values_named
    properties: dict[str, Any]

    def input_named(self, name: str) -> _Input | None:
        return next((i for i in self.inputs if i.name == name), None)


@dataclass
class _Link:
    id: str
    origin: str
    origin_slot: int
    target: str
    target_slot: int


@dataclass
class _Level:
    nodes: dict[str, _Node]
    links: dict[str, _Link]


@dataclass
class _SubgraphIO:
    name: str
    type: str
    link_ids: list[str]


@dataclass
class _Subgraph:
    id: str
    name: str
    level: _Level
    inputs: list[_SubgraphIO]
    outputs: list[_SubgraphIO]


def _as_id(value: Any) -> str | None:
    """Node and link ids: ints (or integral floats) and non-empty strings, normalised to strings."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _as_index(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and value >= 0 else None


def _type_name(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "COMBO"  # old serialisations wrote the option list as the socket type
    return "*"  # litegraph treats 0/None as "any"


class _Parser:
    """Turns the raw JSON into typed structures, recording every structural problem as an error."""

    def __init__(self) -> None:
        self.errors: list[ComfyDiagnostic] = []

    def error(self, message: str, node: str | None = None, hint: str | None = None) -> None:
        self.errors.append(ComfyDiagnostic(MALFORMED, message, node=node, hint=hint))

    def level(self, raw_nodes: Any, raw_links: Any, where: str) -> _Level:
        nodes: dict[str, _Node] = {}
        if not isinstance(raw_nodes, list):
            self.error(f"{where}: 'nodes' must be a list, got {type(raw_nodes).__name__}")
            raw_nodes = []
        for index, raw in enumerate(raw_nodes):
            node = self.node(raw, f"{where} nodes[{index}]")
            if node is None:
                continue
            if node.id in nodes:
                self.error(f"{where}: two nodes have id {node.id}", node=node.id)
                continue
            nodes[node.id] = node
        return _Level(nodes, self.links(raw_links, where))

    def node(self, raw: Any, where: str) -> _Node | None:
        if not isinstance(raw, Mapping):
            self.error(f"{where} must be an object, got {type(raw).__name__}")
            return None
        node_id = _as_id(raw.get("id"))
        class_type = raw.get("type")
        if node_id is None or not isinstance(class_type, str) or not class_type:
            self.error(f"{where} needs an integer 'id' and a non-empty string 'type'")
            return None
        where = f"{where} (id {node_id}, {class_type})"
        mode = raw.get("mode", 0)
        if mode is None:
            mode = 0
        if isinstance(mode, bool) or not isinstance(mode, int):
            self.error(f"{where}: 'mode' must be an integer, got {mode!r}", node=node_id)
            return None
        values = raw.get("widgets_values")
        if values is not None and not isinstance(values, (list, Mapping)):
            self.error(f"{where}: 'widgets_values' must be a list or an object", node=node_id)
            return None
        title = raw.get("title")
        properties = raw.get("properties")
        inputs = self.sockets(raw.get("inputs"), where, node_id, self.input)
        outputs = self.sockets(raw.get("outputs"), where, node_id, self.output)
        if inputs is None or outputs is None:
            return None
        return _Node(
            id=node_id,
            type=class_type,
            mode=mode,
            title=title if isinstance(title, str) else None,
            inputs=inputs,
            outputs=outputs,
            values=values,
            named=raw.get("widgets_values_named"),
            properties=dict(properties) if isinstance(properties, Mapping) else {},
        )

    def sockets(self, raw: Any, where: str, node_id: str, make: Callable[[Mapping[str, Any]], Any]) -> list | None:
        if raw is None:
            return []
        if not isinstance(raw, list) or not all(isinstance(s, Mapping) for s in raw):
            self.error(f"{where}: 'inputs' and 'outputs' must be lists of objects", node=node_id)
            return None
        made = [make(s) for s in raw]
        if any(m is None for m in made):
            self.error(f"{where}: a socket has a non-string 'name' or a bad 'link'", node=node_id)
            return None
        return made

    @staticmethod
    def input(raw: Mapping[str, Any]) -> _Input | None:
        name = raw.get("name", "")
        link = raw.get("link")
        link_id = _as_id(link)
        if not isinstance(name, str) or (link is not None and link_id is None):
            return None
        widget = raw.get("widget")
        return _Input(name, _type_name(raw.get("type")), link_id, bool(widget))

    @staticmethod
    def output(raw: Mapping[str, Any]) -> _Output | None:
        name = raw.get("name", "")
        if not isinstance(name, str):
            return None
        return _Output(name, _type_name(raw.get("type")))

    def links(self, raw: Any, where: str) -> dict[str, _Link]:
        if raw is None:
            return {}
        if not isinstance(raw, list):
            self.error(f"{where}: 'links' must be a list, got {type(raw).__name__}")
            return {}
        links: dict[str, _Link] = {}
        for index, item in enumerate(raw):
            link = self.link(item)
            if link is None:
                self.error(
                    f"{where} links[{index}] is malformed",
                    hint="a link is [id, origin_id, origin_slot, target_id, target_slot, type] "
                    "or an object with those keys",
                )
                continue
            links[link.id] = link
        return links

    @staticmethod
    def link(item: Any) -> _Link | None:
        if isinstance(item, Mapping):
            fields = [item.get(k) for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot")]
        elif isinstance(item, list) and len(item) >= 5:
            fields = item[:5]
        else:
            return None
        link_id, origin, target = _as_id(fields[0]), _as_id(fields[1]), _as_id(fields[3])
        origin_slot, target_slot = _as_index(fields[2]), _as_index(fields[4])
        if None in (link_id, origin, target, origin_slot, target_slot):
            return None
        return _Link(link_id, origin, origin_slot, target, target_slot)  # type: ignore[arg-type]

    def subgraphs(self, workflow: Mapping[str, Any]) -> dict[str, _Subgraph]:
        """Every subgraph definition, including ones nested in other definitions."""
        found: dict[str, _Subgraph] = {}
        pending = [(workflow.get("definitions"), "workflow")]
        while pending:
            definitions, where = pending.pop()
            if definitions is None:
                continue
            raw_list = definitions.get("subgraphs") if isinstance(definitions, Mapping) else None
            if raw_list is None and isinstance(definitions, Mapping):
                continue
            if not isinstance(raw_list, list):
                self.error(f"{where}: 'definitions.subgraphs' must be a list")
                continue
            for index, raw in enumerate(raw_list):
                sub = self.subgraph(raw, f"{where} subgraph[{index}]")
                if sub is None:
                    continue
                found.setdefault(sub.id, sub)
                pending.append((raw.get("definitions"), f"subgraph '{sub.name}'"))
        return found

    def subgraph(self, raw: Any, where: str) -> _Subgraph | None:
        if not isinstance(raw, Mapping) or not isinstance(raw.get("id"), str) or not raw["id"]:
            self.error(f"{where} must be an object with a string 'id'")
            return None
        name = raw.get("name") if isinstance(raw.get("name"), str) else raw["id"]
        where = f"subgraph '{name}'"
        inputs = self.subgraph_io(raw.get("inputs"), f"{where} inputs")
        outputs = self.subgraph_io(raw.get("outputs"), f"{where} outputs")
        level = self.level(raw.get("nodes"), raw.get("links"), where)
        if inputs is None or outputs is None:
            return None
        return _Subgraph(raw["id"], name, level, inputs, outputs)

    def subgraph_io(self, raw: Any, where: str) -> list[_SubgraphIO] | None:
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.error(f"{where} must be a list")
            return None
        result = []
        for item in raw:
            if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
                self.error(f"{where}: each entry needs a string 'name'")
                return None
            link_ids = item.get("linkIds")
            ids = [i for i in (_as_id(x) for x in link_ids) if i] if isinstance(link_ids, list) else []
            result.append(_SubgraphIO(item["name"], _type_name(item.get("type")), ids))
        return result


# --- resolution -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ref:
    """A link to an emitted node's output."""

    node: str
    slot: int


@dataclass(frozen=True)
class _Const:
    """A constant. via_widget: it sits in the consumer's widget (frontend transforms apply to it)."""

    value: Any
    via_widget: bool


class _Nothing(Enum):
    UNCONNECTED = "unconnected"  # nothing feeds the input; a widget keeps its own value
    REMOVED = "removed"  # the source was muted: ComfyUI deletes the input, widget value included


_Resolved = _Ref | _Const | _Nothing


@dataclass
class _Ctx:
    """One instance of a graph level: the root graph or an expanded subgraph instance."""

    level: _Level
    prefix: str  # API id prefix of nodes in this level: "" or "57:" or "57:12:"
    parent: _Ctx | None = None
    instance: _Node | None = None
    subgraph: _Subgraph | None = None
    chain: tuple[str, ...] = ()  # subgraph ids from the root, to detect recursive definitions
    promoted: dict[str, Any] = field(default_factory=dict)  # subgraph input name -> promoted widget value
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # inner node id -> widget -> value
    children: dict[str, _Ctx | None] = field(default_factory=dict)

    def api_id(self, node: _Node) -> str:
        return self.prefix + node.id

    def root(self) -> _Ctx:
        ctx = self
        while ctx.parent is not None:
            ctx = ctx.parent
        return ctx


@dataclass(frozen=True)
class _Site:
    """The consumer a resolution started from, for messages."""

    node: str
    input: str


def _types_compatible(a: str, b: str) -> bool:
    """litegraph's link type check: wildcards, case-insensitive equality, comma-separated unions."""
    if a in _WILDCARD_TYPES or b in _WILDCARD_TYPES:
        return True
    left = {t.strip().lower() for t in a.split(",")}
    right = {t.strip().lower() for t in b.split(",")}
    return bool(left & right)


def _bypass_input(node: _Node, slot: int, consumer_type: str) -> _Input | None:
    """The input a bypassed node's output `slot` stands for, per the frontend's matching order."""
    inputs = node.inputs
    if consumer_type in _WILDCARD_TYPES:
        if slot < len(inputs):
            return inputs[slot]
        return inputs[0] if inputs else None
    output_type = node.outputs[slot].type if slot < len(node.outputs) else "*"
    if slot < len(inputs):
        same = inputs[slot]
        if _types_compatible(same.type, output_type) and _types_compatible(same.type, consumer_type):
            return same
    exact = next((i for i in inputs if i.type == consumer_type), None)
    if exact is not None:
        return exact
    return next((i for i in inputs if _types_compatible(i.type, consumer_type)), None)


def _api_value(value: Any) -> Any:
    """A constant as the API prompt carries it: a copy, lists wrapped in {"__value__": …}."""
    value = copy.deepcopy(value)
    return {"__value__": value} if isinstance(value, list) else value


class _Converter:
    """Expands subgraphs, resolves every linked input to a node output or a constant, and emits API nodes."""

    def __init__(
        self,
        root: _Level,
        subgraphs: dict[str, _Subgraph],
        lookup: SpecLookup,
        known: Iterable[str],
        now: datetime,
    ) -> None:
        self.root = _Ctx(root, "")
        self.subgraphs = subgraphs
        self.lookup = lookup
        self.known = sorted(set(known) | set(BUILTIN_SPECS))
        self.now = now
        self.prompt: dict[str, dict[str, Any]] = {}
        self.diagnostics: list[ComfyDiagnostic] = []
        self.unsupported: dict[str, list[str]] = {}
        self._specs: dict[str, ComfyNodeSpec | None] = {}
        self._backed: dict[str, list[str]] = {}

    # -- bookkeeping

    def spec(self, class_type: str) -> ComfyNodeSpec | None:
        if class_type not in self._specs:
            self._specs[class_type] = builtin_spec(class_type) or self.lookup(class_type)
        return self._specs[class_type]

    def report(self, code: str, message: str, severity: Severity = "warning", **where: Any) -> None:
        self.diagnostics.append(ComfyDiagnostic(code, message, severity, **where))

    # -- emission

    def run(self) -> dict[str, dict[str, Any]]:
        self.emit_level(self.root)
        self.report_unsupported()
        return self.prompt

    def emit_level(self, ctx: _Ctx) -> None:
        for node in ctx.level.nodes.values():
            if node.type in NOTE_TYPES or node.type in (REROUTE, PRIMITIVE_NODE) or node.type in PRIMITIVE_VALUE_TYPES:
                continue  # never emitted: their values reach consumers through resolution
            if node.mode in (MODE_MUTED, MODE_BYPASS):
                continue
            if node.mode not in _KNOWN_MODES or node.mode in (1, 3):
                self.report(
                    LEGACY_MODE, f"mode {node.mode} is treated as 'always' (mode 0)", node=ctx.api_id(node)
                )
            if node.type in self.subgraphs:
                child = self.child(ctx, node)
                if child is not None:
                    self.emit_level(child)
                continue
            self.emit_node(ctx, node)

    def emit_node(self, ctx: _Ctx, node: _Node) -> None:
        api_id = ctx.api_id(node)
        spec = self.spec(node.type)
        if spec is None:
            label = f"{api_id} '{node.title}'" if node.title else api_id
            self.unsupported.setdefault(node.type, []).append(label)
            return
        values = self.widget_values(ctx, node, spec)
        resolved = [(inp.name, self.resolve_input(ctx, node, inp)) for inp in node.inputs if inp.link is not None]
        replaced: set[str] = set()  # widget values the prompt will not carry: links and removals win
        for name, result in resolved:
            if isinstance(result, _Const) and result.via_widget and name in values:
                values[name] = result.value
                replaced.discard(name)
            elif result is not _Nothing.UNCONNECTED:
                replaced.add(name)
        self.transform_widget_values(ctx, node, spec, values, skip=replaced)
        inputs = {name: _api_value(value) for name, value in values.items()}
        for name, result in resolved:
            if isinstance(result, _Ref):
                inputs[name] = [result.node, result.slot]
            elif isinstance(result, _Const) and not (result.via_widget and name in values):
                inputs[name] = _api_value(result.value)
            elif result is _Nothing.REMOVED:
                inputs.pop(name, None)
        self.prompt[api_id] = {"inputs": inputs, "class_type": node.type, "_meta": {"title": node.title or node.type}}

    def widget_values(self, ctx: _Ctx, node: _Node, spec: ComfyNodeSpec) -> dict[str, Any]:
        values, problems = map_widgets_values(spec, node.values, node.named)
        self.diagnostics.extend(replace(p, node=ctx.api_id(node)) for p in problems)
        for name, value in ctx.overrides.get(node.id, {}).items():
            if name in values:
                values[name] = value
        return values

    def transform_widget_values(
        self, ctx: _Ctx, node: _Node, spec: ComfyNodeSpec, values: dict[str, Any], skip: set[str]
    ) -> None:
        """The frontend's serializeValue hooks: dynamic prompts, and text replacements in save-node prefixes."""
        for widget in spec.widgets:
            value = values.get(widget.name)
            if not isinstance(value, str) or widget.name in skip:
                continue
            if widget.dynamic_prompts:
                value = self.dynamic_prompt(value, _Site(ctx.api_id(node), widget.name))
            if node.type in SAVE_NODE_TYPES and widget.name == "filename_prefix":
                value = apply_text_replacements(value, self.now, self.widget_finder(ctx))
            values[widget.name] = value

    def dynamic_prompt(self, text: str, site: _Site) -> str:
        processed, choices = expand_dynamic_prompt(text)
        if choices:
            self.report(
                DYNAMIC_PROMPT_CHOICE,
                f"the prompt contains the choice group(s) {', '.join(choices)}: ComfyUI replaces each with a "
                "randomly chosen option on every run, so the result cannot be reproduced",
                "error",
                node=site.node,
                input=site.input,
                hint="keep the option you want and delete the braces; write literal braces as \\{ \\}",
            )
        return processed

    def widget_finder(self, ctx: _Ctx) -> WidgetFinder:
        """Looks up `%Node.widget%` targets in the node's own graph level, then in the root graph."""
        levels = [ctx] if ctx.parent is None else [ctx, ctx.root()]

        def find(node_name: str, widget_name: str) -> Any:
            for level_ctx in levels:
                nodes = list(level_ctx.level.nodes.values())
                matches = [n for n in nodes if n.properties.get("Node name for S&R") == node_name]
                matches = matches or [n for n in nodes if n.title == node_name]
                if not matches:
                    continue
                spec = self.spec(matches[0].type)
                if spec is None:
                    return NOT_FOUND
                values, _ = map_widgets_values(spec, matches[0].values, matches[0].named)
                values.update(level_ctx.overrides.get(matches[0].id, {}))
                return values.get(widget_name, NOT_FOUND)
            return NOT_FOUND

        return find

    # -- resolution

    def resolve_input(self, ctx: _Ctx, node: _Node, inp: _Input) -> _Resolved:
        site = _Site(ctx.api_id(node), inp.name)
        return self.resolve_link(ctx, inp.link, inp.type, frozenset(), site)  # type: ignore[arg-type]

    def resolve_link(
        self, ctx: _Ctx, link_id: str, consumer_type: str, visiting: frozenset, site: _Site
    ) -> _Resolved:
        link = ctx.level.links.get(link_id)
        if link is None:
            self.report(
                DANGLING_LINK, f"link {link_id} does not exist; the input is left unconnected",
                node=site.node, input=site.input,
            )
            return _Nothing.UNCONNECTED
        return self.resolve_output(ctx, link.origin, link.origin_slot, consumer_type, visiting, site)

    def resolve_output(
        self, ctx: _Ctx, origin: str, slot: int, consumer_type: str, visiting: frozenset, site: _Site
    ) -> _Resolved:
        key = (ctx.prefix, origin, slot)
        if key in visiting:
            self.report(
                LINK_CYCLE, "links through reroutes or bypassed nodes form a cycle", "error",
                node=site.node, input=site.input,
            )
            return _Nothing.UNCONNECTED
        visiting = visiting | {key}
        if origin == SUBGRAPH_INPUT_NODE:
            return self.resolve_subgraph_input(ctx, slot, consumer_type, visiting, site)
        node = ctx.level.nodes.get(origin)
        if node is None:
            self.report(
                DANGLING_LINK, f"the link's source node {ctx.prefix}{origin} does not exist",
                node=site.node, input=site.input,
            )
            return _Nothing.UNCONNECTED
        return self.resolve_node_output(ctx, node, slot, consumer_type, visiting, site)

    def resolve_node_output(
        self, ctx: _Ctx, node: _Node, slot: int, consumer_type: str, visiting: frozenset, site: _Site
    ) -> _Resolved:
        if node.type in NOTE_TYPES:
            return _Nothing.UNCONNECTED
        if node.type == REROUTE:
            source = next((i for i in node.inputs if i.link is not None), None)
            if source is None:
                return _Nothing.UNCONNECTED
            return self.resolve_link(ctx, source.link, consumer_type, visiting, site)  # type: ignore[arg-type]
        if node.type == PRIMITIVE_NODE:
            return self.primitive_node_value(ctx, node, site)
        if node.mode == MODE_MUTED:
            self.report(
                MUTED_SOURCE,
                f"the source node {ctx.api_id(node)} ({node.type}) is muted; the input is removed like ComfyUI does",
                node=site.node, input=site.input,
            )
            return _Nothing.REMOVED
        if node.mode == MODE_BYPASS:
            return self.resolve_bypass(ctx, node, slot, consumer_type, visiting, site)
        if node.type in PRIMITIVE_VALUE_TYPES:
            return self.primitive_value(ctx, node, visiting, site)
        if node.type in self.subgraphs:
            return self.resolve_subgraph_output(ctx, node, slot, consumer_type, visiting, site)
        return _Ref(ctx.api_id(node), slot)

    def resolve_bypass(
        self, ctx: _Ctx, node: _Node, slot: int, consumer_type: str, visiting: frozenset, site: _Site
    ) -> _Resolved:
        chosen = _bypass_input(node, slot, consumer_type)
        if chosen is None:
            self.report(
                BYPASS_UNMATCHED,
                f"bypassed node {ctx.api_id(node)} ({node.type}) has no input of type {consumer_type}; "
                "the input is left unconnected",
                node=site.node, input=site.input,
            )
            return _Nothing.UNCONNECTED
        if chosen.link is None:
            return _Nothing.UNCONNECTED
        return self.resolve_link(ctx, chosen.link, consumer_type, visiting, site)

    def primitive_node_value(self, ctx: _Ctx, node: _Node, site: _Site) -> _Resolved:
        """PrimitiveNode: widgets_values = [value, control, filter]; the value is pushed into each target widget."""
        overrides = ctx.overrides.get(node.id)
        if overrides:
            value = next(iter(overrides.values()))
        elif isinstance(node.named, Mapping) and node.named:
            value = next(iter(node.named.values()))
        elif isinstance(node.values, list) and node.values:
            value = node.values[0]
        elif isinstance(node.values, Mapping) and node.values:
            value = next(iter(node.values.values()))
        else:
            self.report(
                EMPTY_PRIMITIVE, f"PrimitiveNode {ctx.api_id(node)} stores no value; the target keeps its own",
                node=site.node, input=site.input,
            )
            return _Nothing.UNCONNECTED
        if isinstance(value, str) and node.properties.get("Run widget replace on values"):
            value = apply_text_replacements(value, self.now, self.widget_finder(ctx))
        return _Const(value, via_widget=True)

    def primitive_value(self, ctx: _Ctx, node: _Node, visiting: frozenset, site: _Site) -> _Resolved:
        """Primitive* backend nodes output their `value` input; the value is not a widget of the consumer."""
        source = node.input_named("value")
        if source is not None and source.link is not None:
            result = self.resolve_link(ctx, source.link, source.type, visiting, site)
            if isinstance(result, _Const):
                return _Const(result.value, via_widget=False)
            if result is not _Nothing.UNCONNECTED:
                return result
        spec = BUILTIN_SPECS[node.type]
        values = self.widget_values(ctx, node, spec)
        return _Const(values["value"], via_widget=False)

    # -- subgraphs

    def child(self, ctx: _Ctx, node: _Node) -> _Ctx | None:
        """The expanded context of subgraph instance `node` (created once per instance)."""
        if node.id in ctx.children:
            return ctx.children[node.id]
        sub = self.subgraphs[node.type]
        child: _Ctx | None = None
        if sub.id in ctx.chain or len(ctx.chain) >= _MAX_SUBGRAPH_DEPTH:
            self.report(
                SUBGRAPH_CYCLE, f"subgraph '{sub.name}' contains itself", "error", node=ctx.api_id(node),
            )
        else:
            promoted, overrides = self.promoted_values(ctx, node, sub)
            child = _Ctx(
                level=sub.level,
                prefix=f"{ctx.api_id(node)}:",
                parent=ctx,
                instance=node,
                subgraph=sub,
                chain=ctx.chain + (sub.id,),
                promoted=promoted,
                overrides=overrides,
            )
        ctx.children[node.id] = child
        return child

    def promoted_values(
        self, ctx: _Ctx, node: _Node, sub: _Subgraph
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """Values of an instance's promoted widgets: by subgraph input name, and by inner node and widget."""
        promoted: dict[str, Any] = {}
        overrides: dict[str, dict[str, Any]] = {}
        from_parent = ctx.overrides.get(node.id, {})  # the instance's own widgets promoted one level further up
        proxies = node.properties.get("proxyWidgets")
        if isinstance(proxies, list):
            entries = [_proxy_entry(p) for p in proxies]
            if isinstance(node.values, list):
                for entry, value in zip(entries, node.values):
                    if entry is not None and value is not None:
                        _set_promoted(entry, value, promoted, overrides)
            for name, value in from_parent.items():
                entry = next((e for e in entries if e is not None and e[1] == name), ("-1", name))
                _set_promoted(entry, value, promoted, overrides)
            return promoted, overrides
        backed = self.widget_backed_inputs(sub)
        if isinstance(node.values, list):
            promoted.update((n, v) for n, v in zip(backed, node.values) if v is not None)
        for by_name in (node.values, node.named, from_parent):
            if isinstance(by_name, Mapping):
                promoted.update((n, by_name[n]) for n in backed if by_name.get(n) is not None)
        return promoted, overrides

    def widget_backed_inputs(self, sub: _Subgraph) -> list[str]:
        """Subgraph inputs that feed a widget inside: the positions of an io-widget-era instance's values."""
        if sub.id not in self._backed:
            self._backed[sub.id] = [
                sin.name for index, sin in enumerate(sub.inputs) if self.feeds_widget(sub, index, sin)
            ]
        return self._backed[sub.id]

    def feeds_widget(self, sub: _Subgraph, index: int, sin: _SubgraphIO) -> bool:
        links = sub.level.links
        ids = set(sin.link_ids) | {
            lk.id for lk in links.values() if lk.origin == SUBGRAPH_INPUT_NODE and lk.origin_slot == index
        }
        for link_id in ids:
            link = links.get(link_id)
            target = sub.level.nodes.get(link.target) if link is not None else None
            if target is None or link is None or link.origin != SUBGRAPH_INPUT_NODE:
                continue
            inp = next((i for i in target.inputs if i.link == link_id), None)
            if inp is None:
                continue
            spec = None if target.type in self.subgraphs else self.spec(target.type)
            if inp.is_widget or (spec is not None and spec.widget(inp.name) is not None):
                return True
        return False

    def resolve_subgraph_input(
        self, ctx: _Ctx, slot: int, consumer_type: str, visiting: frozenset, site: _Site
    ) -> _Resolved:
        """A link from the subgraph input node: whatever feeds the instance there, else its promoted widget."""
        sub, instance, parent = ctx.subgraph, ctx.instance, ctx.parent
        if sub is None or instance is None or parent is None or slot >= len(sub.inputs):
            self.report(
                DANGLING_LINK, f"link from subgraph input {slot}, which does not exist here",
                node=site.node, input=site.input,
            )
            return _Nothing.UNCONNECTED
        name = sub.inputs[slot].name
        outer = instance.input_named(name)
        if outer is not None and outer.link is not None:
            return self.resolve_link(parent, outer.link, consumer_type, visiting, site)
        if name in ctx.promoted:
            return _Const(ctx.promoted[name], via_widget=True)
        return _Nothing.UNCONNECTED

    def resolve_subgraph_output(
        self, ctx: _Ctx, node: _Node, slot: int, consumer_type: str, visiting: frozenset, site: _Site
    ) -> _Resolved:
        child = self.child(ctx, node)
        if child is None or child.subgraph is None:
            return _Nothing.UNCONNECTED
        link = _output_link(child.subgraph, slot)
        if link is None:
            self.report(
                DANGLING_LINK, f"output {slot} of subgraph instance {ctx.api_id(node)} is not connected inside",
                node=site.node, input=site.input,
            )
            return _Nothing.UNCONNECTED
        return self.resolve_output(child, link.origin, link.origin_slot, consumer_type, visiting, site)

    # -- unsupported types

    def report_unsupported(self) -> None:
        if not self.unsupported:
            return
        listing = "; ".join(f"'{t}' (node {', '.join(ids)})" for t, ids in self.unsupported.items())
        suggestions = []
        for class_type in self.unsupported:
            close = _close_matches(class_type, self.known)
            if close:
                suggestions.append(f"'{class_type}' -> " + " or ".join(f"'{c}'" for c in close))
        hint = "did you mean " + "; ".join(suggestions) if suggestions else (
            "install a graphrun plugin that declares these ComfyUI types, or replace the nodes in ComfyUI"
        )
        if any(t.startswith(("workflow>", "workflow/")) for t in self.unsupported):
            hint += "; legacy group nodes: convert them to subgraphs in ComfyUI first"
        count = len(self.unsupported)
        self.report(
            UNSUPPORTED_NODE,
            f"{count} node type{'s' if count > 1 else ''} not supported by graphrun: {listing}",
            "error",
            hint=hint,
        )


def _close_matches(class_type: str, known: list[str]) -> list[str]:
    lowered = {k.lower(): k for k in known}
    same_case = [lowered[class_type.lower()]] if class_type.lower() in lowered else []
    return same_case or difflib.get_close_matches(class_type, known, n=3, cutoff=0.6)


def _proxy_entry(raw: Any) -> tuple[str, str] | None:
    """A proxyWidgets entry [innerNodeId | "-1", widgetName], normalised; None when malformed."""
    if isinstance(raw, list) and len(raw) >= 2 and isinstance(raw[1], str):
        node_id = _as_id(raw[0])
        if node_id is not None:
            return node_id, raw[1]
    return None


def _set_promoted(
    entry: tuple[str, str], value: Any, promoted: dict[str, Any], overrides: dict[str, dict[str, Any]]
) -> None:
    node_id, widget = entry
    if widget in (CONTROL_AFTER_GENERATE, CONTROL_FILTER_LIST):
        return  # frontend-only companions; the run uses the stored value as "fixed"
    if node_id == "-1":
        promoted[widget] = value
    else:
        overrides.setdefault(node_id, {})[widget] = value


def _output_link(sub: _Subgraph, slot: int) -> _Link | None:
    """The link into the subgraph output node at `slot` (the most recent one if the file lists several)."""
    links = sub.level.links
    ids = sub.outputs[slot].link_ids if slot < len(sub.outputs) else []
    for link_id in reversed(ids):
        link = links.get(link_id)
        if link is not None and link.target == SUBGRAPH_OUTPUT_NODE and link.target_slot == slot:
            return link
    candidates = [lk for lk in links.values() if lk.target == SUBGRAPH_OUTPUT_NODE and lk.target_slot == slot]
    return candidates[-1] if candidates else None


# --- entry point ----------------------------------------------------------------------------------------------------


def ui_to_api(
    workflow: Mapping[str, Any],
    spec: SpecLookup,
    *,
    known: Iterable[str] = (),
    now: datetime | None = None,
) -> tuple[dict[str, dict[str, Any]], list[ComfyDiagnostic]]:
    """Convert a UI-format workflow into an API-format prompt, as ComfyUI's frontend would queue it.

    spec: looks up each ComfyUI class_type; None means graphrun cannot run that type.
    known: every class_type graphrun supports, used for did-you-mean suggestions.
    now: the local time for `%date:…%` in filename prefixes (default: now).

    Returns `(prompt, warnings)`. Raises `ComfyConversionError` with every error at once (unsupported node types
    in one diagnostic, `{a|b}` choice groups, malformed structure, recursive subgraphs, cycles). The input is never
    modified and the prompt shares no objects with it.
    """
    if not isinstance(workflow, Mapping):
        raise ComfyConversionError(
            [ComfyDiagnostic(MALFORMED, f"a UI workflow is a JSON object, got {type(workflow).__name__}")]
        )
    parser = _Parser()
    root = parser.level(workflow.get("nodes"), workflow.get("links"), "workflow")
    subgraphs = parser.subgraphs(workflow)
    if parser.errors:
        raise ComfyConversionError(parser.errors)
    converter = _Converter(root, subgraphs, spec, known, now or datetime.now())
    try:
        prompt = converter.run()
    except RecursionError:
        converter.report(MALFORMED, "the workflow nests reroutes, bypasses or subgraphs too deeply", "error")
        prompt = {}
    diagnostics = list(dict.fromkeys(converter.diagnostics))  # a source reached by several consumers reports once
    if any(d.severity == "error" for d in diagnostics):
        raise ComfyConversionError(diagnostics, {t: tuple(ids) for t, ids in converter.unsupported.items()})
    return prompt, diagnostics
