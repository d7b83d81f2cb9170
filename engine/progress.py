"""Progress reporting: per node and per inner step.

A reporter is any callable taking one :class:`Event`. Built-ins: a tqdm display for terminals,
plain lines for logs, JSON lines for machines, and nothing at all.

Reporters may also have ``write(text)``, a message line (a warning) that must not garble the
display, and ``finish(kind, **fields)``, the run's last event (``done``, ``failed``,
``interrupted``); the CLI calls both when they are there.
"""
from __future__ import annotations

import json
import sys
import threading
import time
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

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in ({}, None)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=str)


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

    def write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


class JsonReporter:
    """One JSON object per line (for programs driving graphrun).

    Every line has ``event`` (its kind: start, end, cached, step, error, then one of done,
    failed, interrupted; ``kind`` repeats it), ``t`` (Unix time, seconds) and ``elapsed``
    (seconds since the reporter started). Node events add ``node``, ``type``, ``index``,
    ``total``, ``seconds`` and ``info``; ``done`` adds ``files`` and ``seconds``, ``failed``
    adds ``node``, ``type`` and ``error``; warnings come as ``{"event": "warning", "message": ...}``.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.started = time.time()
        self._lock = threading.Lock()

    def _emit(self, kind: str, fields: dict[str, Any]) -> None:
        now = time.time()
        record = {"event": kind, "kind": kind, **fields, "t": round(now, 6), "elapsed": round(now - self.started, 6)}
        line = json.dumps(record, default=str)
        with self._lock:
            print(line, file=self.stream, flush=True)

    def __call__(self, event: Event) -> None:
        self._emit(event.kind, event.to_dict())

    def write(self, text: str) -> None:
        self._emit("warning", {"message": text.removeprefix("warning: ")})

    def event(self, kind: str, **fields: Any) -> None:
        """A line that is not a node's: ``run`` (one of ``--count``), or the last one (``finish``)."""
        self._emit(kind, fields)

    finish = event


_UNICODE_FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_ASCII_FRAMES = "|/-\\"


class TqdmReporter:
    """A tqdm bar per node with inner steps; finished nodes leave one summary line.

    A node without inner steps (a model load) shows a spinner and its elapsed seconds once it
    has run ``spinner_after`` seconds, redrawn every ``interval`` seconds, so the line stays alive.
    """

    def __init__(self, stream: TextIO | None = None, *, spinner_after: float = 1.0, interval: float = 0.2) -> None:
        self.stream = stream or sys.stderr
        self.spinner_after = spinner_after
        self.interval = interval
        encoding = (getattr(self.stream, "encoding", None) or "").lower().replace("-", "")
        self.frames = _UNICODE_FRAMES if encoding.startswith("utf") else _ASCII_FRAMES
        self._bar: Any = None
        self._lock = threading.RLock()
        self._cancel = threading.Event()  # set when the spinning node's line is replaced

    def _close(self) -> None:
        self._cancel.set()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __call__(self, event: Event) -> None:
        from tqdm import tqdm

        head = f"[{event.index}/{event.total}] {event.node} ({event.type})"
        with self._lock:
            if event.kind == "start":
                self._close()
                self._bar = tqdm(total=None, desc=head, file=self.stream, leave=False, bar_format="{desc}")
                self._cancel = threading.Event()
                spinner = threading.Thread(
                    target=self._spin, args=(self._bar, head, self._cancel, time.monotonic()), daemon=True
                )
                spinner.start()
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
            elif event.kind == "error":
                tqdm.write(f"{head} failed", file=self.stream)

    def _spin(self, bar: Any, head: str, cancel: threading.Event, started: float) -> None:
        """Redraw ``head`` with a spinner and the elapsed time until the node's line is replaced."""
        if cancel.wait(self.spinner_after):
            return
        frame = 0
        while True:
            with self._lock:
                if cancel.is_set() or bar is not self._bar:
                    return
                elapsed = time.monotonic() - started
                bar.set_description_str(f"{head} {self.frames[frame % len(self.frames)]} {elapsed:.1f}s", refresh=False)
                bar.refresh()
            frame += 1
            if cancel.wait(self.interval):
                return

    def write(self, text: str) -> None:
        from tqdm import tqdm

        with self._lock:
            tqdm.write(text, file=self.stream)

    def finish(self, kind: str, **fields: Any) -> None:
        with self._lock:
            self._close()


def default_reporter(stream: TextIO | None = None) -> Reporter:
    stream = stream or sys.stderr
    return TqdmReporter(stream) if stream.isatty() else LineReporter(stream)
