"""Progress reporting: per node and per inner step.

A reporter is any callable taking one :class:`Event`. Built-ins: a tqdm display for terminals,
plain lines for logs, JSON lines for machines, and nothing at all.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, TextIO

EventKind = Literal["start", "end", "cached", "step", "error"]


@dataclass
class Event:
    kind: EventKind
    node: str
    type: str
    index: int  # position of the node in the plan, 1-based
    total: int  # nodes in the plan
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v not in ({}, None)}, default=str)


Reporter = Callable[[Event], None]


def quiet(event: Event) -> None:
    """Report nothing."""


class LineReporter:
    """Plain lines: one per node, and step lines at most every tenth of a node's steps."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    def __call__(self, event: Event) -> None:
        head = f"[{event.index}/{event.total}] {event.node} ({event.type})"
        if event.kind == "end":
            print(f"{head} done in {event.seconds:.2f}s", file=self.stream, flush=True)
        elif event.kind == "cached":
            print(f"{head} cached", file=self.stream, flush=True)
        elif event.kind == "step":
            step, total = event.info.get("step", 0), event.info.get("total", 0)
            every = max(1, total // 10)
            if step == total or step % every == 0:
                print(f"{head} step {step}/{total}", file=self.stream, flush=True)
        elif event.kind == "error":
            print(f"{head} failed", file=self.stream, flush=True)


class JsonReporter:
    """One JSON object per event (for programs driving graphrun)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    def __call__(self, event: Event) -> None:
        print(event.to_json(), file=self.stream, flush=True)


class TqdmReporter:
    """A tqdm bar per node with inner steps; finished nodes leave one summary line."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._bar = None

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __call__(self, event: Event) -> None:
        from tqdm import tqdm

        head = f"[{event.index}/{event.total}] {event.node} ({event.type})"
        if event.kind == "start":
            # A transient line with the elapsed time, so a long model load is visibly alive.
            self._close()
            self._bar = tqdm(total=None, desc=head, file=self.stream, leave=False, bar_format="{desc} {elapsed}")
            return
        if event.kind == "step":
            total = event.info.get("total", 0)
            if self._bar is None or self._bar.total != total:
                self._close()
                self._bar = tqdm(total=total, desc=head, file=self.stream, leave=False, unit="step")
            self._bar.n = event.info.get("step", 0)
            self._bar.refresh()
            return
        self._close()
        if event.kind == "end":
            tqdm.write(f"{head} {event.seconds:.2f}s", file=self.stream)
        elif event.kind == "cached":
            tqdm.write(f"{head} cached", file=self.stream)


def default_reporter(stream: TextIO | None = None) -> Reporter:
    stream = stream or sys.stderr
    return TqdmReporter(stream) if stream.isatty() else LineReporter(stream)
