"""The graph document: YAML (or JSON, or a Python dict) with `graph`, `description`, `params`, `nodes`.

```yaml
graph: demo
params:
  prompt: {type: STRING, default: "a fox"}
nodes:
  enc:  {type: TextEncode, clip: loader.clip, text: "a photo of ${prompt}"}
  save: {type: SaveImage, images: decode}
```

Input values, by form:
- a socket input (MODEL, LATENT, ...) takes ``node`` or ``node.output``;
- a primitive input takes a literal, ``$param`` (keeps the param's type), a string with
  ``${param}`` / ``$param`` inside (interpolated; ``$$`` is a literal ``$``), or
  ``{from: node.output}`` for a link.

This module parses; :mod:`graphrun.engine.validate` checks against the node registry.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Union

import yaml

from .diagnostics import Diagnostic, GraphError, did_you_mean
from .limits import (
    MAX_DOCUMENT_BYTES, MAX_INT_DIGITS, LimitError, YAMLSyntaxError, parse_yaml, short_repr, value_problems,
)

PARAM_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
# \Z, not $: `$` also matches before a final newline, which would let "save\n" pass as an id.
# Check with fullmatch (`.match` stays correct too, for callers elsewhere).
NODE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*\Z")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # param and output names (use fullmatch)
RESERVED_NODE_KEYS = ("type", "description")
_TEMPLATE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_WHOLE_PARAM = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")  # fullmatch

Path_ = tuple[Union[str, int], ...]


# ---------------------------------------------------------------- input value forms


@dataclass(frozen=True)
class Link:
    """A reference to another node's output (``output`` None = the node's first output)."""

    node: str
    output: str | None = None

    def __str__(self) -> str:
        return self.node if self.output is None else f"{self.node}.{self.output}"


@dataclass(frozen=True)
class ParamRef:
    name: str


@dataclass(frozen=True)
class Template:
    """A string with ``${param}`` parts; ``parts`` alternate literal text and ParamRef."""

    parts: tuple[Union[str, ParamRef], ...]

    def params(self) -> list[str]:
        return [p.name for p in self.parts if isinstance(p, ParamRef)]

    def render(self, values: dict[str, Any]) -> str:
        return "".join(p if isinstance(p, str) else _as_text(values[p.name]) for p in self.parts)


@dataclass(frozen=True)
class Literal_:
    value: Any


InputValue = Union[Link, ParamRef, Template, Literal_]


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_link(text: str) -> Link | None:
    """``node`` or ``node.output``; None when the text cannot be a reference."""
    if not isinstance(text, str) or not text:
        return None
    node, _, output = text.partition(".")
    if not NODE_ID.fullmatch(node) or (output and not IDENTIFIER.fullmatch(output)):
        return None
    return Link(node, output or None)


def parse_primitive(value: Any) -> InputValue | None:
    """Classify a primitive input's raw value. None when ``{from: ...}`` is malformed."""
    if isinstance(value, dict):
        if set(value) == {"from"} and isinstance(value["from"], str):
            return parse_link(value["from"])
        return None
    if isinstance(value, str) and "$" in value:
        whole = _WHOLE_PARAM.fullmatch(value)
        if whole:
            return ParamRef(whole.group(1) or whole.group(2))
        parts: list[Union[str, ParamRef]] = []
        pos = 0
        for m in _TEMPLATE.finditer(value):
            parts.append(value[pos : m.start()])
            parts.append("$" if m.group(0) == "$$" else ParamRef(m.group(1) or m.group(2)))
            pos = m.end()
        parts.append(value[pos:])
        merged: list[Union[str, ParamRef]] = []
        for part in parts:
            if isinstance(part, str) and merged and isinstance(merged[-1], str):
                merged[-1] += part
            elif part != "":
                merged.append(part)
        if not any(isinstance(p, ParamRef) for p in merged):
            return Literal_("".join(merged))  # only $$ escapes
        return Template(tuple(merged))
    return Literal_(value)


# ---------------------------------------------------------------- source positions


@dataclass
class SourceMap:
    """Where each value of the document sits in its file (1-based line and column)."""

    file: str | None = None
    positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: Path_) -> dict[str, Any]:
        """file/line/column keyword arguments for a Diagnostic, for the closest known path."""
        path = tuple(path)
        while path and path not in self.positions:
            path = path[:-1]
        pos = self.positions.get(path)
        if pos is None:
            return {"file": self.file}
        return {"file": self.file, "line": pos[0], "column": pos[1]}


_SYNTAX_HINT = (
    "check indentation, colons and quotes near this position; a string containing ': ', '{' or '#' needs quotes"
)


def parse_text(text: str, file: str | None = None) -> tuple[Any, SourceMap]:
    """Parse YAML (JSON is YAML) with positions, within :mod:`graphrun.engine.limits`.

    Raises GraphError: GR001 for a syntax error, GR002 for a duplicate key or a document beyond a
    limit (nesting, aliases, integer size, NUL or unpaired surrogates in text, unsupported tags).
    """
    source = SourceMap(file=file)
    try:
        result = parse_yaml(text)
    except YAMLSyntaxError as exc:
        raise GraphError(
            [
                Diagnostic(
                    "GR001", f"YAML syntax error: {exc.problem}", file=file, line=exc.line, column=exc.column,
                    hint=_SYNTAX_HINT if exc.line is not None else None,
                )
            ]
        ) from None
    except LimitError as exc:
        raise GraphError([Diagnostic("GR002", exc.message, file=file, line=exc.line, column=exc.column)]) from None
    source.positions = result.positions
    if result.duplicates:
        raise GraphError(
            [
                Diagnostic(
                    "GR002",
                    f"key {short_repr(path[-1], 60)} appears twice in the same mapping",
                    hint="YAML would silently keep only the last one; remove or rename the duplicate",
                    file=file,
                    line=line,
                    column=column,
                )
                for path, line, column in result.duplicates
            ]
        )
    return result.data, source


# ---------------------------------------------------------------- the document


@dataclass(frozen=True)
class ParamDecl:
    name: str
    type: str
    default: Any
    description: str = ""


@dataclass(frozen=True)
class NodeEntry:
    id: str
    type: str
    inputs: dict[str, Any]  # raw values, parsed per input kind by the validator
    description: str = ""


@dataclass
class Document:
    """A parsed (not yet validated) graph document."""

    name: str
    description: str
    params: dict[str, ParamDecl]
    nodes: dict[str, NodeEntry]
    source: SourceMap
    raw: Any
    problems: list[Diagnostic] = field(default_factory=list)  # structural problems found while parsing
    origins: dict[str, str] = field(default_factory=dict)  # node id -> where it came from (e.g. a ComfyUI node)
    comfy: str = ""  # the ComfyUI version the graph asks to follow (top-level `comfy:`); "" = not set

    @property
    def file(self) -> str | None:
        return self.source.file


def infer_type(value: Any) -> str | None:
    """The param type a literal implies (BOOLEAN, INT, FLOAT, STRING), or None for anything else."""
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int):
        return "INT"
    if isinstance(value, float):
        return "FLOAT"
    if isinstance(value, str):
        return "STRING"
    return None


def coerce_param(value: Any, type_name: str) -> Any:
    """Coerce a value (a string from --set, or YAML scalar) to a param type. Raises ValueError."""
    if type_name == "STRING":
        if isinstance(value, (dict, list)):
            raise ValueError(f"expected text, got {type(value).__name__}")
        return _as_text(value) if not isinstance(value, str) else value
    if type_name == "BOOLEAN":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {short_repr(value)}")
    if type_name == "INT":
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        text = str(value).strip() if isinstance(value, (str, float)) else None
        if text is not None and len(text.lstrip("+-")) > MAX_INT_DIGITS and text.lstrip("+-").isdigit():
            raise ValueError(f"expected an integer of at most {MAX_INT_DIGITS} digits, got {len(text)} digits")
        try:
            return int(text) if text is not None else int(value)
        except (ValueError, TypeError):
            raise ValueError(f"expected an integer, got {short_repr(value)}") from None
    if type_name == "FLOAT":
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            number = float(value) if isinstance(value, (int, float)) else float(str(value).strip())
        except (ValueError, TypeError):
            raise ValueError(f"expected a number, got {short_repr(value)}") from None
        except OverflowError:  # an int too large for a float
            raise ValueError(f"{short_repr(value)} is too large for a FLOAT") from None
        if not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {short_repr(value)}")
        return number
    raise ValueError(f"unknown param type {type_name!r}")


def _parse_params(raw: Any, source: SourceMap, problems: list[Diagnostic]) -> dict[str, ParamDecl]:
    params: dict[str, ParamDecl] = {}
    if raw is None:
        return params
    if not isinstance(raw, dict):
        problems.append(
            Diagnostic("GR002", "'params' must be a mapping of name -> {type, default}", **source.locate(("params",)))
        )
        return params
    for name, decl in raw.items():
        loc = source.locate(("params", name))
        if not isinstance(name, str) or not IDENTIFIER.fullmatch(name):
            problems.append(Diagnostic("GR015", f"param name {name!r} is not an identifier", **loc))
            continue
        if not isinstance(decl, dict):  # shorthand: `seed: 42`
            type_name = infer_type(decl)
            if type_name is None:
                problems.append(
                    Diagnostic(
                        "GR015",
                        f"param '{name}' must be a scalar default or {{type, default, description}}",
                        input=name,
                        **loc,
                    )
                )
                continue
            params[name] = ParamDecl(name, type_name, decl)
            continue
        unknown = set(decl) - {"type", "default", "description"}
        if unknown:
            problems.append(
                Diagnostic(
                    "GR015",
                    f"param '{name}' has unknown key(s) {sorted(map(str, unknown))}",
                    input=name,
                    hint="a param takes type, default and description",
                    **loc,
                )
            )
        type_name = decl.get("type", infer_type(decl.get("default")))
        if type_name not in PARAM_TYPES:
            problems.append(
                Diagnostic(
                    "GR015",
                    f"param '{name}' has type {type_name!r}",
                    input=name,
                    hint=f"use one of {', '.join(PARAM_TYPES)}",
                    **source.locate(("params", name, "type")),
                )
            )
            continue
        default = decl.get("default")
        if default is not None:
            try:
                default = coerce_param(default, type_name)
            except ValueError as exc:
                problems.append(
                    Diagnostic(
                        "GR015",
                        f"param '{name}' default {short_repr(decl.get('default'))}: {exc}",
                        input=name,
                        **source.locate(("params", name, "default")),
                    )
                )
                continue
        description = decl.get("description") or ""
        if isinstance(description, (dict, list)):
            problems.append(
                Diagnostic(
                    "GR015", f"param '{name}' description must be text", input=name,
                    **source.locate(("params", name, "description")),
                )
            )
            continue
        params[name] = ParamDecl(name, type_name, default, str(description))
    return params


def _parse_nodes(raw: Any, source: SourceMap, problems: list[Diagnostic]) -> dict[str, NodeEntry]:
    nodes: dict[str, NodeEntry] = {}
    if not isinstance(raw, dict) or not raw:
        problems.append(
            Diagnostic(
                "GR002",
                "'nodes' must be a non-empty mapping of node id -> {type: ..., inputs...}",
                **source.locate(("nodes",)),
            )
        )
        return nodes
    for node_id, body in raw.items():
        loc = source.locate(("nodes", node_id))
        if not isinstance(node_id, str) or not NODE_ID.fullmatch(node_id):
            problems.append(
                Diagnostic(
                    "GR002",
                    f"node id {short_repr(node_id)} is not valid",
                    hint="use letters, digits, '_' and '-' (no dots: 'node.output' references outputs)"
                    + (_YAML_BOOL_HINT if isinstance(node_id, bool) or node_id is None else ""),
                    **loc,
                )
            )
            continue
        if not isinstance(body, dict):
            problems.append(
                Diagnostic("GR002", "a node must be a mapping with a 'type' key", node=node_id, **loc)
            )
            continue
        node_type = body.get("type")
        if not isinstance(node_type, str) or not node_type:
            problems.append(
                Diagnostic(
                    "GR002",
                    "node has no 'type'" if node_type in (None, "") else
                    f"the node's 'type' must be a node type name, got {short_repr(node_type)}",
                    node=node_id,
                    hint="add type: <NodeType>; `graphrun nodes` lists them",
                    **(loc if node_type in (None, "") else source.locate(("nodes", node_id, "type"))),
                )
            )
            continue
        description = body.get("description") or ""
        bad_keys = [k for k in body if not isinstance(k, str)]
        for key in bad_keys:  # str(key) could collide with a real input name, and never names an input
            problems.append(
                Diagnostic(
                    "GR002",
                    f"input name {short_repr(key)} is not text",
                    node=node_id,
                    hint="input names are words such as seed or text"
                    + (_YAML_BOOL_HINT if isinstance(key, bool) or key is None else ""),
                    **loc,
                )
            )
        if isinstance(description, (dict, list)):
            problems.append(
                Diagnostic("GR002", "a node's 'description' must be text", node=node_id,
                           **source.locate(("nodes", node_id, "description")))
            )
        if bad_keys or isinstance(description, (dict, list)):
            continue
        inputs = {k: v for k, v in body.items() if k not in RESERVED_NODE_KEYS}
        nodes[node_id] = NodeEntry(node_id, node_type, inputs, str(description))
    return nodes


_YAML_BOOL_HINT = "; YAML reads yes/no/on/off/true/false/null as booleans or null: quote the name"


def document_from_data(data: Any, source: SourceMap | None = None, *, checked: bool = False) -> Document:
    """Build a Document from already-parsed data (dict), collecting structural problems.

    Unless ``checked`` (the data came from :func:`parse_text`), the data is first checked against
    :mod:`graphrun.engine.limits` (nesting, self-containing values, integer size, NUL or unpaired
    surrogates in text): GraphError(GR002) naming each place.
    """
    source = source or SourceMap()
    if not checked:
        limit_problems = [
            Diagnostic("GR002", f"{exc.where()}{exc.message}", **source.locate(exc.path))
            for exc in value_problems(data)
        ]
        if limit_problems:
            raise GraphError(limit_problems)
    problems: list[Diagnostic] = []
    if not isinstance(data, dict):
        problems.append(
            Diagnostic(
                "GR002",
                f"a graph document must be a mapping with 'nodes', got {type(data).__name__}",
                file=source.file,
                line=1 if source.file else None,
                column=1 if source.file else None,
            )
        )
        return Document("untitled", "", {}, {}, source, data, problems)
    unknown = [k for k in data if k not in TOP_LEVEL_KEYS]
    for key in unknown:
        hint = did_you_mean(str(key), list(TOP_LEVEL_KEYS)) if isinstance(key, str) else None
        problems.append(
            Diagnostic(
                "GR002",
                f"unknown top-level key {short_repr(key)}",
                hint=hint or "a document has graph, description, comfy, params and nodes",
                **source.locate((key,)),
            )
        )
    for key in ("graph", "description"):
        if isinstance(data.get(key), (dict, list)):
            problems.append(Diagnostic("GR002", f"'{key}' must be text", **source.locate((key,))))
    name = data.get("graph") or (Path(source.file).stem if source.file else "untitled")
    params = _parse_params(data.get("params"), source, problems)
    nodes = _parse_nodes(data.get("nodes"), source, problems)
    comfy = _parse_comfy(data.get("comfy"), source, problems)
    return Document(
        str(name), str(data.get("description") or ""), params, nodes, source, data, problems, comfy=comfy
    )


TOP_LEVEL_KEYS = ("graph", "description", "comfy", "params", "nodes")


def _parse_comfy(value: Any, source: SourceMap, problems: list[Diagnostic]) -> str:
    """The top-level ``comfy:`` setting: which ComfyUI version's behaviour the graph follows."""
    from .comfy.versions import COMFY_VERSIONS, resolve_comfy_version

    if value is None or value == "":
        return ""
    try:
        return resolve_comfy_version(str(value))
    except ValueError as exc:
        problems.append(
            Diagnostic(
                "GR002",
                str(exc),
                hint="write for example  comfy: \"" + next(iter(COMFY_VERSIONS)) + "\"",
                **source.locate(("comfy",)),
            )
        )
        return ""


def load_document(doc: Union[str, Path, dict]) -> Document:
    """Load a document from a path, a YAML/JSON string, or a dict. Raises GraphError on syntax errors."""
    if isinstance(doc, dict):
        return document_from_data(doc)
    if isinstance(doc, Path) or (isinstance(doc, str) and "\n" not in doc and not doc.lstrip().startswith("{")):
        path = Path(doc)
        text = read_document_text(path)
        data, source = parse_text(text, str(path))
        return document_from_data(data, source, checked=True)
    data, source = parse_text(str(doc))
    return document_from_data(data, source, checked=True)


def read_document_text(path: Path) -> str:
    """A YAML/JSON document file's text (UTF-8, at most MAX_DOCUMENT_BYTES); GraphError(GR017) otherwise."""
    file = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            raise GraphError([Diagnostic(
                "GR017", f"graph file {path} is {size / 2**20:.0f} MiB; graphrun reads documents of at most "
                f"{MAX_DOCUMENT_BYTES // 2**20} MiB", file=file)])
        data = path.read_bytes()
    except FileNotFoundError:
        raise GraphError([Diagnostic("GR017", f"graph file {path} does not exist", file=file)]) from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = getattr(exc, "strerror", None) or exc
        raise GraphError([Diagnostic("GR017", f"cannot read graph file {path}: {reason}", file=file)]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise GraphError([Diagnostic(
            "GR017", f"graph file {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} cannot start or continue "
            "a UTF-8 character)", file=file, line=line, column=column,
            hint="save the file as UTF-8")]) from None


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """``["k=v", ...]`` from ``--set`` into a dict (values stay strings; coerced per param or input later).

    ``name=value`` sets a param, ``node.input=value`` a node's input (see :mod:`graphrun.engine.overrides`).
    """
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise GraphError(
                [Diagnostic("GR016", f"--set {item!r} is not name=value",
                            hint="write --set seed=7 (a param) or --set NODE.INPUT=VALUE (a node input)")]
            )
        out[key.strip()] = value
    return out


def to_yaml(data: Any) -> str:
    """Serialise a document dict readably (flow style for each node's inputs)."""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)
