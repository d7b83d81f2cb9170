"""What the benchmark scripts share: timings of repeated runs, the report table, fresh-process timing.

Imported by ``tools/bench.py`` (run as a script, so ``tools/`` is on the import path).
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Timing:
    """Wall and CPU seconds of repeated runs of one side of a comparison.

    With one compute thread, CPU time hardly moves when other processes load the machine, while
    wall time can swing by 10% or more; both are reported, the wall figures being the headline.
    """

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def measure(self, fn: Callable[[], Any], keep: bool = True) -> tuple[Any, float]:
        """Run ``fn``; record its times when ``keep`` (False for warm-ups). Returns (result, wall)."""
        w0, c0 = time.perf_counter(), time.process_time()
        value = fn()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        if keep:
            self.wall.append(wall)
            self.cpu.append(cpu)
        return value, wall

    def ms(self) -> str:
        return f"{median(self.wall) * 1000:.1f} ms"

    def cpu_note(self) -> str:
        return f"CPU {median(self.cpu) * 1000:.1f} ms"


def add_ratio(report: "Report", label: str, num: Timing, den: Timing, target: str, note: str = "") -> None:
    """The median wall ratio (headline), with the CPU-time ratio and the best-of-N wall ratio."""
    wall = median(num.wall) / median(den.wall)
    cpu = median(num.cpu) / median(den.cpu)
    best = min(num.wall) / min(den.wall)
    extra = f"CPU-time ratio {cpu:.4f}; best-of-{len(num.wall)} wall ratio {best:.4f}"
    report.add(label, f"{wall:.4f}", target, note=f"{extra}; {note}" if note else extra)


@dataclass
class Row:
    label: str
    value: str
    target: str = ""
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, label: str, value: str, target: str = "", note: str = "") -> None:
        self.rows.append(Row(label, value, target, note))
        print(f"  {label}: {value}" + (f"   (target {target})" if target else "") + (f"   {note}" if note else ""),
              flush=True)

    def add_timing(self, label: str, seconds: float, proc: subprocess.CompletedProcess) -> None:
        if proc.returncode == 0:
            self.add(label, f"{seconds * 1000:.0f} ms")
        else:
            self.add(label, "n/a", note=failure_reason(proc))

    def table(self) -> str:
        head = ("measure", "value", "target", "note")
        cells = [head] + [(r.label, r.value, r.target, r.note) for r in self.rows]
        widths = [max(len(c[i]) for c in cells) for i in range(3)]
        lines = []
        for k, c in enumerate(cells):
            lines.append("  ".join(c[i].ljust(widths[i]) for i in range(3)) + "  " + c[3])
            if k == 0:
                lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 4)
        return "\n".join(line.rstrip() for line in lines)


def graphrun_command() -> list[str]:
    script = Path(sys.executable).with_name("graphrun")
    return [str(script)] if script.exists() else [sys.executable, "-m", "graphrun.engine.cli"]


def time_command(
    cmd: list[str] | Callable[[int], list[str]], repeats: int, cwd: Path
) -> tuple[float, subprocess.CompletedProcess]:
    """Median wall time of a fresh process; ``cmd`` may depend on the repeat (distinct outputs)."""
    times, proc = cold_times(cmd, repeats, cwd)
    return median(times), proc


def failure_reason(proc: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    # The first line that names an error says more than the last ("run with --debug ...").
    errors = [line for line in lines if "error" in line.lower()]
    line = errors[0] if errors else (lines[-1] if lines else "no output")
    return f"exit {proc.returncode}: {line[:160]}"


def cold_times(cmd: list[str] | Callable[[int], list[str]], repeats: int,
               cwd: Path) -> tuple[list[float], subprocess.CompletedProcess]:
    """Wall seconds of ``repeats`` fresh processes (stops at the first failure)."""
    times: list[float] = []
    proc: subprocess.CompletedProcess | None = None
    for k in range(repeats):
        args = cmd(k) if callable(cmd) else cmd
        t0 = time.perf_counter()
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            break
    assert proc is not None
    return times, proc
