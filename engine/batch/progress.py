"""Progress over rows: a bar with ETA (tqdm), plain lines, JSON lines or nothing.

Rates and ETAs count every row settled over the whole batch, whichever worker finished it and in
whatever order (a Ray pool), from the first row settled on: the time before it (starting Ray,
loading models) says nothing about the pace of the rest. The closing line gives the overall rate.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from .types import BatchResult, ProgressMode, RowResult
from ..progress import Event, JsonReporter, LineReporter, Reporter, TqdmReporter, quiet

_MODES: tuple[tuple[type, ProgressMode], ...] = (
    (JsonReporter, "json"),
    (LineReporter, "plain"),
    (TqdmReporter, "tqdm"),
)  # the node reporters --progress picks, in the order they are tested


class RowProgress:
    """A bar over rows with ETA (tqdm), plain lines, JSON lines, or nothing; node progress is
    reduced to the bar's postfix (tqdm) or silence, so a batch prints one line per row at most."""

    def __init__(self, mode: ProgressMode, total: int, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "tqdm" if self.stream.isatty() else "plain"
        self.mode = mode
        self.total = total
        self.done = 0
        self.started = time.perf_counter()
        self.first: float | None = None  # when the first row settled
        self._bar: Any = None
        if mode == "tqdm" and total:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="batch", unit="row", file=self.stream, dynamic_ncols=True)

    def node_reporter(self) -> Reporter:
        if self._bar is None:
            return quiet
        bar = self._bar

        def report(event: Event) -> None:
            if event.kind == "step":
                bar.set_postfix_str(f"{event.node} {event.info.get('step', 0)}/{event.info.get('total', 0)}", refresh=False)
                bar.update(0)  # redraws at most every mininterval
            elif event.kind == "start":
                bar.set_postfix_str(event.node, refresh=False)
                bar.update(0)

        return report

    def _eta(self) -> float | None:
        if not self.done:
            return None
        return (self.total - self.done) / max(self.rate(), 1e-9)

    def rate(self) -> float:
        """Rows settled per second since the first one (before a second: since the start)."""
        now = time.perf_counter()
        if self.done >= 2 and self.first is not None and now > self.first:
            return (self.done - 1) / (now - self.first)
        return self.done / max(now - self.started, 1e-9)

    def row(self, result: RowResult) -> None:
        self.done += 1
        if self.first is None:
            self.first = time.perf_counter()
        name = result.id if result.id is not None else f"#{result.index}"
        if self._bar is not None:
            self._bar.set_postfix_str("", refresh=False)  # node progress belongs to the row just ended
            if result.status == "failed":
                self._bar.write(f"row {name} failed: {result.error}", file=self.stream)
            self._bar.update(1)
        elif self.mode == "plain":
            eta = self._eta()
            tail = f", eta {_duration(eta)}" if eta is not None and self.done < self.total else ""
            text = (f"[{self.done}/{self.total}] row {name} {result.status} {result.seconds:.2f}s, "
                    f"{_rate(self.rate())}{tail}")
            if result.error:
                text += f": {result.error}"
            print(text, file=self.stream, flush=True)
        elif self.mode == "json":
            line = {"event": "row", "row": result.index, "id": result.id, "status": result.status,
                    "seconds": round(result.seconds, 4), "done": self.done, "total": self.total,
                    "rows_per_s": round(self.rate(), 3),
                    "eta": None if self._eta() is None else round(self._eta() or 0.0, 1)}
            if result.error:
                line["error"] = result.error
            print(json.dumps(line), file=self.stream, flush=True)

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self, result: BatchResult) -> None:
        self.close_bar()
        if self.mode == "none":
            return
        counts = {s: len(result.with_status(s)) for s in ("ok", "failed", "skipped")}
        if self.mode == "json":
            print(json.dumps({"event": "batch", **counts, "interrupted": result.interrupted,
                              "manifest": str(result.manifest)}), file=self.stream, flush=True)
            return
        state = "interrupted" if result.interrupted else "done"
        elapsed = time.perf_counter() - self.started
        speed = f", {_rate(self.done / max(elapsed, 1e-9))}" if self.done else ""
        print(
            f"batch {state}: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped "
            f"in {_duration(elapsed)}{speed}; manifest {result.manifest}",
            file=self.stream,
            flush=True,
        )


def _rate(rows_per_s: float) -> str:
    return f"{rows_per_s:.2f} rows/s" if rows_per_s < 10 else f"{rows_per_s:.0f} rows/s"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def mode_for(reporter: Reporter) -> ProgressMode:
    """The row display matching the node reporter the CLI chose from ``--progress``."""
    if reporter is quiet:
        return "none"
    for kind, mode in _MODES:
        if isinstance(reporter, kind):
            return mode
    return "auto"
