"""Bridge between the CLI and ComfyUI interop: graphrun documents and ComfyUI workflows load alike.

* ``graphrun X.json|X.png ...`` runs a ComfyUI workflow directly (:func:`load_any`);
* ``graphrun convert X.json|X.png -o OUT.yaml`` writes it as a graphrun graph (:func:`cmd_convert`);
* ``graphrun export GRAPH.yaml -o OUT.api.json`` writes a graph as a ComfyUI API prompt, ``--format ui`` as a UI
  workflow ComfyUI opens (:func:`cmd_export`).

Formats are told apart by content: a JSON file with a ``nodes`` mapping is a graphrun document; one with a
``nodes`` list (UI format), ``class_type`` entries (API format) or a queued-prompt envelope is a ComfyUI workflow.
A PNG graphrun wrote carries the graph document and the param values used (its ``graphrun`` chunk): that is read
first, so the graph's params and ``--set`` work as on the original file. From other PNGs the ``prompt`` chunk
(what actually ran) is preferred over ``workflow``. UI workflows go through
:func:`.comfy.ui_to_api.ui_to_api` with the widget layouts the registry declares, then every API prompt through
:func:`.comfy.api_to_graph.api_to_document`.

``convert`` and ``export`` validate the graph but skip the nodes' file checks (model and image files are the
business of the machine that runs the graph). Neither overwrites an existing output file.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import yaml

from .diagnostics import Diagnostic, GraphError
from .graph import Document, SourceMap, document_from_data, load_document, parse_overrides, to_yaml
from .node import Registry

if TYPE_CHECKING:
    from .comfy.api_to_graph import Conversion

EXIT_OK, EXIT_INVALID = 0, 2

__all__ = [
    "load_any", "load_comfy", "graphrun_png_document", "convert_file", "document_yaml", "promote_params",
    "without_file_checks", "cmd_convert", "cmd_export",
]


# --- loading ---------------------------------------------------------------------------------------------------------


def _is_graphrun_document(obj: Any) -> bool:
    return isinstance(obj, Mapping) and isinstance(obj.get("nodes"), Mapping)


def _comfy_candidate(path: Path) -> bool:
    """True when the file should be read as a ComfyUI workflow rather than a graphrun document."""
    suffix = path.suffix.lower()
    if suffix == ".png":
        return True
    if suffix != ".json":
        return False
    try:
        obj = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False  # load_document reports unreadable files and syntax errors with their position
    return isinstance(obj, Mapping) and not _is_graphrun_document(obj)


def load_any(path: Path, registry: Registry) -> Document:
    """A graphrun document from YAML/JSON, or converted from a ComfyUI workflow (.json or .png).

    Conversion notices (skipped display-only nodes, dropped frontend settings) travel as warnings in
    ``Document.problems``, so ``validate`` and ``run`` print them. Raises GraphError for anything that
    cannot be converted.
    """
    path = Path(path)
    if not _comfy_candidate(path):
        return load_document(path)
    data, notes = graphrun_png_document(path)
    if data is not None:
        return document_from_data(data, SourceMap(file=str(path)))
    document = load_comfy(path, registry)
    document.problems[:0] = notes
    return document


def graphrun_png_document(path: Path) -> tuple[dict[str, Any] | None, list[Diagnostic]]:
    """The graph document (params set to the values used) of a PNG graphrun wrote, from its ``graphrun`` chunk.

    ``(None, [])`` for anything else (not a PNG, no such chunk: the ComfyUI chunks are read instead);
    ``(None, [warning])`` when the chunk is there but unreadable.
    """
    if path.suffix.lower() != ".png":
        return None, []
    from .comfy.png import graphrun_document, read_png_chunks  # PIL: only for a PNG
    from .comfy.ui_to_api import ComfyFormatError

    try:
        chunks = read_png_chunks(path)
    except ComfyFormatError:
        return None, []  # convert_file reports unreadable files
    data, problem = graphrun_document(chunks)
    if problem is None:
        return data, []
    return None, [Diagnostic("comfy_workflow", f"{problem}; read the ComfyUI 'prompt'/'workflow' chunks instead",
                             severity="warning", file=str(path))]


def load_comfy(path: Path, registry: Registry) -> Document:
    """Convert a ComfyUI workflow file to a graphrun Document (warnings in ``problems``)."""
    conversion = convert_file(path, registry)
    document = document_from_data(conversion.document, SourceMap(file=str(path)))
    document.problems.extend(conversion.notes)
    document.origins = {name: _origin(comfy_id, conversion.document["nodes"].get(name, {}))
                        for comfy_id, name in conversion.names.items()}
    return document


def _origin(comfy_id: str, body: Mapping[str, Any]) -> str:
    title = body.get("description")
    return f"ComfyUI node {comfy_id}" + (f" '{title}'" if title else "")


def convert_file(path: Path, registry: Registry) -> Conversion:
    """Convert a ComfyUI workflow file (.json in API or UI format, or a .png) to a graph document.

    Raises GraphError listing every problem (unreadable file, unsupported node types, bad inputs).
    """
    from .comfy.api_to_graph import api_to_document
    from .comfy.formats import load_workflow
    from .comfy.specs import DISPLAY_ONLY, known_class_types, spec_lookup
    from .comfy.ui_to_api import ComfyConversionError, ComfyFormatError

    file = str(path)
    try:
        workflow = load_workflow(path)
        prompt, ui_notes = workflow.to_api(spec_lookup(registry), known=known_class_types(registry))
    except ComfyConversionError as exc:
        raise GraphError([_from_comfy(d, file) for d in exc.diagnostics]) from None
    except ComfyFormatError as exc:
        diagnostics = [_from_comfy(d, file) for d in exc.diagnostics] or [
            Diagnostic("GR017", str(exc), file=file, hint="give a graphrun YAML, or a ComfyUI workflow .json/.png")
        ]
        raise GraphError(diagnostics) from None
    display = {node_id for node_id, node in prompt.items() if node.get("class_type") in DISPLAY_ONLY}
    notes = [Diagnostic("comfy_workflow", note, severity="warning", file=file) for note in workflow.notes]
    notes += [_from_comfy(d, file) for d in ui_notes if d.node not in display]
    origin = "a PNG's 'prompt' chunk" if path.suffix.lower() == ".png" and workflow.format == "api" else (
        f"{workflow.format.upper()} format"
    )
    return api_to_document(
        prompt,
        registry,
        name=path.name.split(".")[0],
        description=f"Converted from the ComfyUI workflow {path.name} ({origin}).",
        file=file,
        notes=notes,
    )


def _from_comfy(diag: Any, file: str) -> Diagnostic:
    """A UI-converter diagnostic as a graphrun Diagnostic naming the ComfyUI node."""
    where = ""
    if diag.node is not None:
        where = f"ComfyUI node {diag.node}" + (f" input '{diag.input}'" if diag.input else "") + ": "
    return Diagnostic(diag.code, where + diag.message, severity=diag.severity, hint=diag.hint, file=file)


# --- YAML output -----------------------------------------------------------------------------------------------------


def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, allow_unicode=True, width=2**31 - 1)
    return text.removesuffix("\n...\n").strip()  # a plain scalar is dumped as a document ending in `...`


class _LiteralDumper(yaml.SafeDumper):
    """Writes multi-line text as a `|` block, the way people write prompts by hand."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _represent_str)


def _node_yaml(name: str, body: dict[str, Any]) -> str:
    """One node: a flow-style line, or a block when it holds multi-line text."""
    if not any(isinstance(v, str) and "\n" in v for v in body.values()):
        return f"  {_flow(name)}: {_flow(body)}"
    block = yaml.dump({name: body}, Dumper=_LiteralDumper, sort_keys=False, allow_unicode=True, width=100)
    return "\n".join("  " + line if line else line for line in block.rstrip("\n").split("\n"))


def document_yaml(data: dict[str, Any]) -> str:
    """A graph document as YAML: header keys in block style, one flow-style line per node (a block for
    nodes with multi-line text)."""
    header = {k: v for k, v in data.items() if k != "nodes"}
    lines = [yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=100).rstrip(), "nodes:"]
    lines += [_node_yaml(name, body) for name, body in data.get("nodes", {}).items()]
    text = "\n".join(lines) + "\n"
    if yaml.safe_load(text) != data:  # the compact form must mean exactly the same document
        return to_yaml(data)
    return text


# --- validation without file checks --------------------------------------------------------------------------------


def without_file_checks(registry: Registry) -> Registry:
    """A copy of the registry whose nodes skip their pre-run checks (missing model or image files)."""
    stripped = Registry()
    for spec in registry:
        if getattr(spec, "check", None) is not None:
            spec = dataclasses.replace(spec, check=None)
        stripped.add(spec)
    return stripped


def _validated(document: Document, registry: Registry, overrides: dict[str, Any]):
    """The bound graph; GraphError listing every problem when the graph is invalid."""
    from .validate import check

    graph, diagnostics = check(document, without_file_checks(registry), overrides)
    if graph is None:
        raise GraphError(diagnostics)
    return graph, diagnostics


# --- output ----------------------------------------------------------------------------------------------------------


def _print(diagnostics: list[Diagnostic]) -> None:
    for diag in diagnostics:
        print(diag.format(), file=sys.stderr)


def _write_new(path: str | None, text: str) -> int:
    """Write to a new file (never overwriting), or to stdout when no path is given."""
    if not path:
        sys.stdout.write(text)
        return EXIT_OK
    created = False
    try:
        # "x": never overwrite; mode 0o666 less the umask, like any file a user's tools write.
        with open(path, "x", encoding="utf-8") as handle:
            created = True
            handle.write(text)
    except FileExistsError:
        print(f"error: {path} already exists; graphrun never overwrites files (choose another -o name)",
              file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:
        if created:  # nothing half-written stays behind (a full disk, a quota)
            Path(path).unlink(missing_ok=True)
        print(f"error: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_INVALID
    print(f"wrote {path}", file=sys.stderr)
    return EXIT_OK


def cmd_convert(args: argparse.Namespace, registry: Registry) -> int:
    """`graphrun convert IN.json|IN.png [-o OUT.yaml]`: a ComfyUI workflow as a graphrun graph."""
    path = Path(args.file)
    if not path.exists():
        raise GraphError([Diagnostic("GR017", f"{path} does not exist", file=str(path))])
    if not _comfy_candidate(path):
        raise GraphError([
            Diagnostic("GR017", f"{path} is not a ComfyUI workflow", file=str(path),
                       hint="convert reads ComfyUI .json (API or UI format) or a PNG made by ComfyUI or graphrun")
        ])
    data, notes = graphrun_png_document(path)
    if data is None:  # a ComfyUI workflow (or a PNG without graphrun's chunk)
        conversion = convert_file(path, registry)
        data, notes = conversion.document, notes + conversion.notes
    data = promote_params(data, getattr(args, "param", None) or [], registry)
    document = document_from_data(data, SourceMap(file=str(path)))
    document.problems.extend(notes)
    _, diagnostics = _validated(document, registry, parse_overrides(getattr(args, "set", None) or []))
    _print(diagnostics)
    return _write_new(args.output, document_yaml(data))


_PARAM_TYPES = {"INT": "INT", "FLOAT": "FLOAT", "STRING": "STRING", "BOOLEAN": "BOOLEAN", "COMBO": "STRING"}


def promote_params(data: dict[str, Any], specs: list[str], registry: Registry) -> dict[str, Any]:
    """Turn node inputs into graph params: ``NAME=node.input[,node.input...]``.

    The param's default is the input's current value (all listed inputs must agree) and each
    input becomes ``$NAME``, so ``--set NAME=...`` reaches every one of them. Raises GraphError
    naming each bad spec.
    """
    import copy
    import re

    data = copy.deepcopy(data)
    params = data.setdefault("params", {}) if specs else data.get("params", {})
    problems: list[Diagnostic] = []
    for spec in specs:
        name, sep, targets = spec.partition("=")
        name = name.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or not targets.strip():
            problems.append(Diagnostic("GR016", f"--param {spec!r} is not NAME=node.input[,node.input...]",
                                       hint="e.g. --param prompt=positive.text --param seed=sampler.seed"))
            continue
        values: list[Any] = []
        type_names: set[str] = set()
        places: list[tuple[dict[str, Any], str]] = []
        for target in (t.strip() for t in targets.split(",")):
            node_id, _, input_name = target.partition(".")
            body = data["nodes"].get(node_id)
            node_spec = registry.get(body["type"]) if isinstance(body, dict) else None
            input_spec = node_spec.input(input_name) if node_spec is not None else None
            if body is None or input_spec is None or input_spec.socket:
                known = ", ".join(sorted(data["nodes"]))
                problems.append(Diagnostic(
                    "GR016", f"--param {name}: '{target}' is not a primitive input of a node in this workflow",
                    input=name, hint=f"write node.input with one of the nodes: {known}"))
                continue
            values.append(body.get(input_name, input_spec.default))
            type_names.add(_PARAM_TYPES.get(input_spec.type_name, "STRING"))
            places.append((body, input_name))
        if len(places) != len(targets.split(",")):
            continue
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1 or len(type_names) > 1:
            problems.append(Diagnostic(
                "GR016", f"--param {name}: the inputs differ ({', '.join(map(repr, values))})", input=name,
                hint="promote inputs that share one value, or give each its own param"))
            continue
        default = values[0]
        if isinstance(default, str) and "$" in default:
            default = default.replace("$$", "$")  # the converter escaped literal dollars
        params[name] = {"type": type_names.pop(), "default": default}
        for body, input_name in places:
            body[input_name] = f"${name}"
    if problems:
        raise GraphError(problems)
    return data


def cmd_export(args: argparse.Namespace, registry: Registry) -> int:
    """`graphrun export GRAPH [--set k=v] [--format api|ui] [-o OUT.json]`: a graph as a ComfyUI API prompt, or as
    a UI workflow (what ComfyUI's Load / drag-and-drop opens)."""
    from .comfy.api_to_ui import api_to_ui
    from .comfy.export import graph_to_api

    document = load_any(Path(args.file), registry)
    graph, diagnostics = _validated(document, registry, parse_overrides(getattr(args, "set", None) or []))
    _print(diagnostics)
    notes: list[str] = []
    prompt = graph_to_api(graph, notes)
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    data = api_to_ui(prompt, registry) if getattr(args, "format", "api") == "ui" else prompt
    return _write_new(args.output, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
