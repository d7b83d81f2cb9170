"""Diagnostic records: every user-facing problem with a graph, located and with a fix hint."""
from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass
from typing import Iterable, Literal

Severity = Literal["error", "warning"]

# Stable codes. Tools may match on them; never renumber, only add.
CODES: dict[str, str] = {
    "GR001": "YAML or JSON syntax error",
    "GR002": "malformed document structure",
    "GR003": "unknown node type",
    "GR004": "unknown input",
    "GR005": "missing required input",
    "GR006": "reference to a missing node",
    "GR007": "reference to a missing output",
    "GR008": "type mismatch on a link",
    "GR009": "value fails its type, range or choices",
    "GR010": "undefined $param",
    "GR011": "unused param (warning)",
    "GR012": "cycle",
    "GR013": "no output node",
    "GR014": "node does not feed any output (warning)",
    "GR015": "malformed param declaration",
    "GR016": "bad --set override",
    "GR017": "file not found or unreadable",
    "GR018": "a node's own pre-run check failed (e.g. a model or image file is missing)",
}


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in a graph document."""

    code: str
    message: str
    severity: Severity = "error"
    node: str | None = None
    input: str | None = None
    hint: str | None = None
    file: str | None = None
    line: int | None = None
    column: int | None = None

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def format(self) -> str:
        where = ""
        if self.file or self.line is not None:
            where = self.file or "<text>"
            if self.line is not None:
                where += f":{self.line}:{self.column or 1}"
            where += ": "
        subject = ""
        if self.node is not None:
            subject = f"node '{self.node}'"
            if self.input is not None:
                subject += f" input '{self.input}'"
            subject += ": "
        elif self.input is not None:
            subject = f"'{self.input}': "
        text = f"{where}{self.severity}[{self.code}] {subject}{self.message}"
        if self.hint:
            text += f" (hint: {self.hint})"
        return text

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


class GraphError(Exception):
    """A graph cannot be loaded or run as written; carries every diagnostic found."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics = list(diagnostics)
        errors = [d for d in self.diagnostics if d.is_error]
        super().__init__("\n".join(d.format() for d in errors) or "invalid graph")


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """A 'did you mean' hint for a misspelt name, or None."""
    matches = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)
    if not matches:
        lowered = {c.lower(): c for c in candidates}
        if word.lower() in lowered:
            matches = [lowered[word.lower()]]
    if not matches:
        return None
    return "did you mean " + " or ".join(repr(m) for m in matches) + "?"


def dumps(diagnostics: Iterable[Diagnostic]) -> str:
    return json.dumps([d.to_json() for d in diagnostics], indent=2)
