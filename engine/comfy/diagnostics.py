"""What goes wrong when reading or converting a ComfyUI workflow: diagnostic codes, `ComfyDiagnostic` and the errors.

Importers collect problems instead of raising them one by one; an error carries every diagnostic found.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Mapping

__all__ = [
    "UNSUPPORTED_NODE",
    "DYNAMIC_PROMPT_CHOICE",
    "MALFORMED",
    "SUBGRAPH_CYCLE",
    "LINK_CYCLE",
    "DANGLING_LINK",
    "MUTED_SOURCE",
    "BYPASS_UNMATCHED",
    "EXTRA_WIDGET_VALUES",
    "NULL_WIDGET_VALUE",
    "LEGACY_MODE",
    "EMPTY_PRIMITIVE",
    "Severity",
    "ComfyDiagnostic",
    "ComfyFormatError",
    "ComfyConversionError",
]

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
