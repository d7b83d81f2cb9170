"""Diagnostic records: every user-facing problem with a graph, located and with a fix hint."""
from __future__ import annotations

import contextlib
import contextvars
import difflib
import json
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator, Literal

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


# Each hint compares the word with every candidate: in a graph of 100,000 nodes, as many misspelt
# references would cost 10^10 comparisons. Validation sets a budget (see `hint_budget`); once it is
# spent, hints are left out (the messages stay) and validation stays linear in the graph's size.
_BUDGET: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("graphrun_hint_budget", default=None)
HINT_COMPARISONS = 200_000
_LONGEST_WORD = 100  # a longer "name" is not a misspelling of one


@contextlib.contextmanager
def hint_budget(comparisons: int = HINT_COMPARISONS) -> Iterator[None]:
    """Within this block, did-you-mean hints compare at most ``comparisons`` candidates in all."""
    token = _BUDGET.set([comparisons])
    try:
        yield
    finally:
        _BUDGET.reset(token)


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """A 'did you mean' hint for a misspelt name, or None (also when the hint budget is spent)."""
    if not isinstance(word, str) or len(word) > _LONGEST_WORD:
        return None
    budget = _BUDGET.get()
    if budget is not None and hasattr(candidates, "__len__") and len(candidates) > budget[0]:
        return None  # checked before copying: a skipped hint costs nothing
    candidates = [c for c in candidates if isinstance(c, str)]
    if budget is not None:
        if len(candidates) > budget[0]:
            return None
        budget[0] -= len(candidates)
    matches = difflib.get_close_matches(word, candidates, n=3, cutoff=0.6)
    if not matches:
        lowered = {c.lower(): c for c in candidates}
        if word.lower() in lowered:
            matches = [lowered[word.lower()]]
    if not matches:
        return None
    return "did you mean " + " or ".join(repr(m) for m in matches) + "?"


def dumps(diagnostics: Iterable[Diagnostic]) -> str:
    return json.dumps([d.to_json() for d in diagnostics], indent=2)
