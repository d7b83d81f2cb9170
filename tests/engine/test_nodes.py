"""Pure-Python node types used by the engine tests (loaded as a plugin file; no torch)."""
from __future__ import annotations

import time
import weakref
from collections import Counter
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

from pydantic import Field

from graphrun import Context, Socket, node

CALLS: Counter[str] = Counter()
ALIVE: dict[str, weakref.ref] = {}


class Number(Socket):
    """NUMBER: a boxed number (weak-referenceable, so tests can watch it being freed)."""

    type_name = "NUMBER"


class Text(Socket):
    type_name = "TEXT"


class Box:
    def __init__(self, value: float, label: str) -> None:
        self.value = value
        ALIVE[label] = weakref.ref(self)


class Halves(NamedTuple):
    low: Number
    high: Number


@node("Const", category="test")
def const(value: Annotated[int, Field(ge=-1000, le=1000, description="the number")] = 0, label: str = "") -> Number:
    """Produce a number."""
    CALLS["Const"] += 1
    return Box(value, label or f"const{value}")


@node("Add", category="test")
def add(a: Number, b: Number) -> Number:
    """a + b."""
    CALLS["Add"] += 1
    return Box(a.value + b.value, "add")


@node("Scale", category="test", version=2)
def scale(x: Number, factor: Annotated[float, Field(ge=0.0, le=10.0)] = 1.0, label: str = "") -> Number:
    """x * factor."""
    CALLS["Scale"] += 1
    return Box(x.value * factor, label or "scale")


@node("Split", category="test")
def split(x: Number) -> Halves:
    """Two outputs: half and one and a half."""
    CALLS["Split"] += 1
    return Halves(Box(x.value / 2, "low"), Box(x.value * 1.5, "high"))


@node("Format", category="test")
def format_(x: Number, template: str = "{}", mode: Literal["plain", "upper"] = "plain") -> Text:
    """Format a number as text."""
    CALLS["Format"] += 1
    text = template.format(x.value)
    return text.upper() if mode == "upper" else text


@node("Count", category="test")
def count(x: Number) -> int:
    """An INT output, to feed primitive inputs through {from: ...}."""
    return int(x.value)


@node("Random", category="test", cacheable=False)
def random_(x: Number) -> Number:
    """Not deterministic: never cached."""
    CALLS["Random"] += 1
    return Box(x.value + time.perf_counter_ns() % 7, "random")


@node("Slow", category="test")
def slow(ctx: Context, x: Number, steps: int = 3, delay: float = 0.0, marker: str = "") -> Number:
    """Inner steps with progress; honours Ctrl-C between steps."""
    CALLS["Slow"] += 1
    if marker:
        Path(marker).write_text("started")
    for i in range(steps):
        time.sleep(delay)
        ctx.progress(i + 1, steps)
    return Box(x.value, "slow")


@node("Fail", category="test")
def fail(x: Number) -> Number:
    """Always fails."""
    raise ValueError("this node always fails")


@node("Probe", category="test")
def probe(x: Number, watch: str = "") -> Number:
    """Records whether the value labelled `watch` is still alive when this node runs."""
    import gc

    gc.collect()
    ref = ALIVE.get(watch)
    CALLS["probe_saw_alive" if ref is not None and ref() is not None else "probe_saw_dead"] += 1
    return Box(x.value, "probe")


@node("Collect", category="test", output=True)
def collect(ctx: Context, x: Number | None = None, text: Text | None = None, name: str = "result") -> list[Path]:
    """Output node: writes the value to OUT/name.txt atomically and returns the path."""
    CALLS["Collect"] += 1
    out = ctx.output_dir / f"{name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(str(text if text is not None else x.value if x is not None else ""))
    tmp.replace(out)
    return [out]
