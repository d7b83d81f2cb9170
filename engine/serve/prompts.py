"""From a ``POST /prompt`` body to a validated graph, or to ComfyUI's error answer.

ComfyUI answers a prompt it cannot run with HTTP 400 and ``{"error": {...}, "node_errors": {...}}``:
``error`` has ``type``, ``message``, ``details`` and ``extra_info``; ``node_errors`` maps a ComfyUI node id to
``{"errors": [...], "dependent_outputs": [...], "class_type": ...}``. Clients show those messages, so
graphrun's diagnostics (from the conversion and the validation of the whole graph) are mapped onto
ComfyUI's error types here, naming the ComfyUI node and input; graphrun's own message and fix hint go
in ``details``.

A prompt whose links form a cycle is, from ComfyUI 0.33 on, a ``dependency_cycle`` error on every node of the
cycle, its ``details`` the path ``"9 (VAEDecode) -> 8 (KSampler) -> 21 (VAEEncode) -> 9 (VAEDecode)"`` and its
``extra_info`` ``{"node_id", "cycle_nodes"}``: :func:`find_cycles` walks the links from the outputs as ComfyUI's
validation does (v0.18.1 overflowed Python's stack there; graphrun then answers with its own cycle error).

graphrun is stricter than ComfyUI in one way: ComfyUI drops an output whose inputs are invalid and runs
the others; graphrun refuses the prompt, since a half-run workflow is rarely what the client wanted.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..diagnostics import Diagnostic, GraphError
from ..graph import document_from_data
from ..node import CheckEnv, Registry
from ..validate import BoundGraph, check
from .files import UnsafePath, safe_path, split_annotation

_COMFY_NODE = re.compile(r"ComfyUI node (\S+) \(")

#: graphrun diagnostic code -> ComfyUI validation error type (GR009 is decided from the value itself).
_ERROR_TYPES = {
    "GR005": "required_input_missing",
    "GR006": "bad_linked_input",
    "GR007": "bad_linked_input",
    "GR008": "return_type_mismatch",
    "GR012": "dependency_cycle",
    "GR018": "custom_validation_failed",
}


class PromptRejected(Exception):
    """The prompt cannot run; ``body`` is ComfyUI's 400 answer."""

    def __init__(self, error: dict[str, Any], node_errors: dict[str, Any] | None = None) -> None:
        super().__init__(error.get("message", "invalid prompt"))
        self.body = {"error": error, "node_errors": node_errors or {}}


def _error(kind: str, message: str, details: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


@dataclass
class Prepared:
    graph: BoundGraph
    outputs: list[str]  # ComfyUI ids of the output nodes that will run
    names: dict[str, str] = field(default_factory=dict)  # graphrun node name -> ComfyUI id
    warnings: list[Diagnostic] = field(default_factory=list)


@dataclass
class Folders:
    """The folders a client's file names are resolved in."""

    input: Path
    output: Path
    temp: Path

    def of(self, kind: str) -> Path:
        return {"input": self.input, "output": self.output, "temp": self.temp}[kind]


def _title(node: Mapping[str, Any], default: Any) -> Any:
    meta = node.get("_meta")
    return meta.get("title", default) if isinstance(meta, Mapping) else default


def _check_shape(prompt: Any, registry: Registry) -> None:
    """ComfyUI's first checks: a mapping of nodes, each with a class_type this server knows."""
    from ..comfy.specs import known_class_types

    if not isinstance(prompt, Mapping) or not prompt:
        raise PromptRejected(_error("invalid_prompt", "Invalid prompt",
                                    "'prompt' must be an object mapping node ids to nodes (ComfyUI's API format)"))
    known = set(known_class_types(registry)) | {spec.name for spec in registry}
    for node_id, node in prompt.items():
        if not isinstance(node, Mapping) or "class_type" not in node:
            title = _title(node, None) if isinstance(node, Mapping) else None
            raise PromptRejected(_error(
                "missing_node_type",
                f"Node '{title or f'ID #{node_id}'}' has no class_type. The workflow may be corrupted or a custom "
                "node is missing.",
                f"Node ID '#{node_id}'", node_id=str(node_id), class_type=None, node_title=title))
        class_type = node["class_type"]
        if not isinstance(class_type, str) or class_type not in known:
            title = _title(node, class_type)
            raise PromptRejected(_error(
                "missing_node_type",
                f"Node '{title}' not found. The custom node may not be installed.",
                f"Node ID '#{node_id}': graphrun has no node type {class_type!r} (GET /object_info lists them)",
                node_id=str(node_id), class_type=class_type, node_title=title))


def _is_output(registry: Registry, class_type: str) -> bool:
    found = registry.comfy_spec(class_type)
    spec = found[0] if found else registry.get(class_type)
    return bool(spec is not None and spec.output)


def _links(node: Mapping[str, Any]) -> list[str]:
    inputs = node.get("inputs")
    if not isinstance(inputs, Mapping):
        return []
    return [str(v[0]) for v in inputs.values() if isinstance(v, list) and len(v) == 2 and isinstance(v[1], int)]


def find_cycles(prompt: Mapping[str, Any], outputs: list[str]) -> dict[str, list[dict[str, Any]]]:
    """ComfyUI 0.33's ``dependency_cycle`` errors: node id -> its errors, for every cycle reached from the
    outputs.

    A depth-first walk from each output along the links of each node's inputs (in the prompt's order; ComfyUI
    walks its input names in set order, the same when one link enters the cycle): meeting a node that is
    still on the walk's path closes a cycle, reported on each of its nodes and walked no further, as ComfyUI
    records those nodes as validated. Iterative, so a long chain cannot overflow the stack.
    """
    done: set[str] = set()
    errors: dict[str, list[dict[str, Any]]] = {}
    for output in outputs:
        if output in done:
            continue
        path: list[str] = [output]
        stack = [iter(_links(prompt[output]))]
        while stack:
            target = next(stack[-1], None)
            if target is None:
                done.add(path.pop())
                stack.pop()
                continue
            if target not in prompt or target in done:
                continue
            if target in path:
                loop = path[path.index(target):] + [target]
                members = list(dict.fromkeys(loop))
                details = " -> ".join(f"{n} ({prompt[n]['class_type']})" for n in loop)
                for node_id in members:
                    errors[node_id] = [_error("dependency_cycle", "Dependency cycle detected", details,
                                              node_id=node_id, cycle_nodes=members)]
                done.update(members)
                continue
            path.append(target)
            stack.append(iter(_links(prompt[target])))
    return errors


def _dependents(prompt: Mapping[str, Any], outputs: list[str]) -> dict[str, list[str]]:
    """ComfyUI node id -> the outputs it feeds."""
    feeds: dict[str, list[str]] = {}
    for output in outputs:
        seen, stack = set(), [output]
        while stack:
            node_id = stack.pop()
            if node_id in seen or node_id not in prompt:
                continue
            seen.add(node_id)
            feeds.setdefault(node_id, []).append(output)
            stack.extend(_links(prompt[node_id]))
    return feeds


def _confine_images(prompt: dict[str, Any], registry: Registry, folders: Folders, errors: dict) -> None:
    """Image names of upload widgets (LoadImage) are files in the server's folders, nowhere else."""
    for node_id, node in prompt.items():
        found = registry.comfy_spec(node["class_type"])
        if not found or not isinstance(node.get("inputs"), dict):
            continue
        _, comfy = found
        for name in comfy.image_upload:
            theirs = comfy.comfy_name(name)
            value = node["inputs"].get(theirs)
            if not isinstance(value, str):
                continue
            filename, kind = split_annotation(value)
            try:
                path = safe_path(folders.of(kind or "input"), "", filename)
            except UnsafePath as exc:
                errors.setdefault(node_id, []).append(_error(
                    "custom_validation_failed", f"Invalid image file: {value}", str(exc), input_name=theirs))
                continue
            node["inputs"][theirs] = str(path)


def _comfy_input(registry: Registry, class_type: str, ours: str | None) -> str | None:
    found = registry.comfy_spec(class_type)
    if ours is None or not found:
        return ours
    return found[1].comfy_name(ours)


def _value_error(registry: Registry, node: Mapping[str, Any], diag: Diagnostic, theirs: str | None) -> dict:
    """GR009 as ComfyUI types it: out of range, not in the list, or not convertible."""
    found = registry.comfy_spec(node["class_type"])
    spec = found[0] if found else registry.get(node["class_type"])
    ispec = spec.input(diag.input) if spec is not None and diag.input else None
    value = (node.get("inputs") or {}).get(theirs) if theirs else None
    text = diag.message + (f" (hint: {diag.hint})" if diag.hint else "")
    extra = {"input_name": theirs, "received_value": value}
    if ispec is not None and ispec.choices and value not in ispec.choices:
        return _error("value_not_in_list", "Value not in list", f"{theirs}: {value!r} not in list; {text}", **extra)
    if ispec is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        low = ispec.constraints.get("ge", ispec.constraints.get("gt"))
        high = ispec.constraints.get("le", ispec.constraints.get("lt"))
        if low is not None and value < low:
            return _error("value_smaller_than_min", f"Value {value} smaller than min of {low}", f"{theirs}; {text}",
                          **extra)
        if high is not None and value > high:
            return _error("value_bigger_than_max", f"Value {value} bigger than max of {high}", f"{theirs}; {text}",
                          **extra)
    kind = ispec.type_name if ispec is not None else "input"
    return _error("invalid_input_type", f"Failed to convert an input value to a {kind} value", f"{theirs}; {text}",
                  **extra)


def _node_error(registry: Registry, node: Mapping[str, Any], diag: Diagnostic) -> dict[str, Any]:
    theirs = _comfy_input(registry, node["class_type"], diag.input)
    if diag.code == "GR009":
        return _value_error(registry, node, diag, theirs)
    kind = _ERROR_TYPES.get(diag.code, "custom_validation_failed")
    messages = {
        "required_input_missing": "Required input is missing",
        "bad_linked_input": "Bad linked input",
        "return_type_mismatch": "Return type mismatch between linked nodes",
        "dependency_cycle": "Dependency cycle detected",
    }
    details = diag.message + (f" (hint: {diag.hint})" if diag.hint else "")
    message = messages.get(kind, diag.message)
    if theirs:
        details = f"{theirs}: {details}"
    return _error(kind, message, details, input_name=theirs)


def _reject(prompt: Mapping[str, Any], registry: Registry, diagnostics: list[Diagnostic], names: dict[str, str],
            outputs: list[str], errors: dict[str, list[dict]], cycles: bool = False) -> PromptRejected:
    """ComfyUI's ``prompt_outputs_failed_validation`` answer for every error found (``cycles``: the cycles are
    in ``errors`` already, as ComfyUI 0.33 reports them, so graphrun's own cycle diagnostics are left out)."""
    loose: list[str] = []
    for diag in diagnostics:
        if not diag.is_error or (cycles and diag.code == "GR012"):
            continue
        node_id = names.get(diag.node) if diag.node else None
        if node_id is None:
            match = _COMFY_NODE.search(diag.message)
            node_id = match[1] if match and match[1] in prompt else None
        if node_id is None:
            loose.append(diag.format())
            continue
        errors.setdefault(node_id, []).append(_node_error(registry, prompt[node_id], diag))
    feeds = _dependents(prompt, outputs)
    node_errors = {
        node_id: {"errors": errs, "dependent_outputs": feeds.get(node_id, list(outputs)),
                  "class_type": prompt[node_id]["class_type"]}
        for node_id, errs in errors.items()
    }
    lines = list(dict.fromkeys([f"{e['message']}: {e['details']}" for n in node_errors.values()
                                for e in n["errors"]] + loose))  # a cycle's one line, not one per node
    if not node_errors and loose and all("no output node" in line for line in loose):
        return PromptRejected(_error("prompt_no_outputs", "Prompt has no outputs", "\n".join(loose)))
    return PromptRejected(
        _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", "\n".join(lines)), node_errors
    )


def prepare(prompt: Any, registry: Registry, env: CheckEnv, folders: Folders,
            targets: list[str] | None = None, v033: bool = True) -> Prepared:
    """Validate a ComfyUI API prompt as graphrun will run it; raises PromptRejected with ComfyUI's answer.

    ``targets`` (ComfyUI's ``partial_execution_targets``) limits the run to those output nodes; ``v033``:
    answer in ComfyUI 0.33's shapes where they differ from v0.18.1's (cycles).
    """
    from ..comfy.api_to_graph import api_to_document

    _check_shape(prompt, registry)
    prompt = {str(k): dict(v) for k, v in prompt.items()}
    for node in prompt.values():
        if isinstance(node.get("inputs"), Mapping):
            node["inputs"] = dict(node["inputs"])
    outputs = [i for i, n in prompt.items() if _is_output(registry, n["class_type"])]
    if targets is not None:
        outputs = [i for i in outputs if i in {str(t) for t in targets}]
    if not outputs:
        raise PromptRejected(_error("prompt_no_outputs", "Prompt has no outputs",
                                    "add an output node such as SaveImage or PreviewImage"))
    errors: dict[str, list[dict]] = find_cycles(prompt, outputs) if v033 else {}
    cycles = bool(errors)
    _confine_images(prompt, registry, folders, errors)
    try:
        conversion = api_to_document(prompt, registry, name="prompt")
    except GraphError as exc:
        raise _reject(prompt, registry, exc.diagnostics, {}, outputs, errors, cycles) from None
    names = {ours: theirs for theirs, ours in conversion.names.items()}
    data = conversion.document
    dropped = {ours for ours, theirs in names.items() if _is_output(registry, prompt[theirs]["class_type"])
               and theirs not in outputs}
    if dropped:  # outputs the client did not ask for, and what only they need, are left out
        data = {**data, "nodes": {k: v for k, v in data["nodes"].items() if k not in dropped}}
    document = document_from_data(data)
    document.problems.extend(conversion.notes)
    graph, diagnostics = check(document, registry, {}, env)
    if graph is None or errors:
        raise _reject(prompt, registry, diagnostics, names, outputs, errors, cycles)
    return Prepared(graph, outputs, names, [d for d in diagnostics if not d.is_error])
