"""JSON Schema of the graph document, including every registered node type (for editors)."""
from __future__ import annotations

from typing import Any

from .comfy.versions import COMFY_VERSIONS, DEFAULT_COMFY_VERSION
from .graph import PARAM_TYPES
from .node import InputSpec, NodeSpec, Registry

_LINK = {"type": "string", "pattern": r"^[A-Za-z0-9_][A-Za-z0-9_\-]*(\.[A-Za-z_][A-Za-z0-9_]*)?$"}
_PARAM_REF = {"type": "string", "pattern": r"\$"}
_FROM = {
    "type": "object",
    "properties": {"from": _LINK},
    "required": ["from"],
    "additionalProperties": False,
}


def _input_schema(spec: InputSpec) -> dict[str, Any]:
    if spec.socket:
        return {**_LINK, "description": f"{spec.type_name}: node or node.output. {spec.description}".strip()}
    value = spec.adapter().json_schema()
    value.pop("title", None)
    schema: dict[str, Any] = {"anyOf": [value, _PARAM_REF, _FROM]}
    if spec.description:
        schema["description"] = spec.description
    if not spec.required:
        schema["default"] = spec.default
    return schema


def node_schema(spec: NodeSpec) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "type": {"const": spec.name},
        "description": {"type": "string"},
    }
    for ispec in spec.inputs:
        properties[ispec.name] = _input_schema(ispec)
    return {
        "type": "object",
        "title": spec.name,
        "description": spec.summary,
        "properties": properties,
        "required": ["type"] + [i.name for i in spec.inputs if i.required],
        "additionalProperties": False,
    }


def document_schema(registry: Registry) -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "graphrun graph",
        "type": "object",
        "properties": {
            "graph": {"type": "string"},
            "description": {"type": "string"},
            "comfy": {
                "enum": list(COMFY_VERSIONS),
                "description": "the ComfyUI version whose behaviour the graph follows (default "
                + DEFAULT_COMFY_VERSION + ")",
            },
            "params": {
                "type": "object",
                "additionalProperties": {
                    "anyOf": [
                        {"type": ["string", "number", "integer", "boolean"]},
                        {
                            "type": "object",
                            "properties": {
                                "type": {"enum": list(PARAM_TYPES)},
                                "default": {},
                                "description": {"type": "string"},
                            },
                            "additionalProperties": False,
                        },
                    ]
                },
            },
            "nodes": {
                "type": "object",
                "additionalProperties": {"oneOf": [node_schema(spec) for spec in registry]},
            },
        },
        "required": ["nodes"],
        "additionalProperties": False,
    }
