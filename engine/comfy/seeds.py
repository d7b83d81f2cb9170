"""ComfyUI's ``control_after_generate`` for the seeds of converted UI workflows.

In ComfyUI a seed widget has a companion, ``control_after_generate``: ``fixed``, ``randomize``,
``increment`` or ``decrement``. The value saved in the workflow is the seed the *next* queued run
uses (by default the frontend changes the widget only after queueing), and the mode then changes
it for the run after. graphrun follows that:

* one run (``graphrun WORKFLOW.json``, ``graph.run()``) uses the saved value, as ComfyUI's next run
  would: the same workflow gives the same image every time;
* ``graphrun WORKFLOW.json --count N`` runs N times, like ComfyUI's batch count: the first run
  uses the saved value, and before each later run ``randomize`` draws a new seed (in ComfyUI's
  range, 0 to 2**50), ``increment`` adds 1 and ``decrement`` subtracts 1 (kept within the
  input's range, as the frontend does). Every seed used is printed and stored in the PNG.
* ``--set NODE.seed=N`` replaces the saved value (the start for ``--count``).

Seeds fed by one PrimitiveNode (or PrimitiveInt) share its mode and stay equal. API-format
prompts (and a PNG's ``prompt`` chunk) record one run and carry no mode: their seeds are fixed.

The importer (:mod:`.api_to_graph`) hands each controlled seed over as a :class:`SeedControl`
notice in the converted document's ``problems``; it prints as a warning saying what happens.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..diagnostics import Diagnostic

__all__ = ["SEED_CONTROL", "SeedControl", "seed_controls", "seeds_for_run", "RANDOM_SEED_MAX"]

SEED_CONTROL = "comfy_seed_control"

#: The frontend draws random seeds below min(2**50, the widget's max) (it keeps them exact in JavaScript).
RANDOM_SEED_MAX = 1125899906842624

_VERBS = {  # what ComfyUI does after each run, and what each later run of --count does
    "randomize": ("draws a new seed", "draws a new one"),
    "increment": ("adds 1 to this seed", "adds 1"),
    "decrement": ("subtracts 1 from this seed", "subtracts 1"),
}


@dataclass(frozen=True)
class SeedControl(Diagnostic):
    """A seed that ComfyUI changes after each run: which input, the mode, and the saved value.

    ``group`` is the same for seeds fed by one ComfyUI primitive (they move together).
    """

    mode: str = "fixed"
    group: str = ""
    value: Any = None

    @property
    def key(self) -> str:
        """``node.input``, as ``--set`` writes it."""
        return f"{self.node}.{self.input}"


def seed_note(node: str, input_name: str, mode: str, group: str, value: Any, file: str | None) -> SeedControl:
    """The notice the importer adds for one controlled seed."""
    return SeedControl(
        SEED_CONTROL,
        f"ComfyUI {_VERBS[mode][0]} after each run (control_after_generate '{mode}'): graphrun uses the saved "
        f"seed {value!r}; run with --count N, each later run of this workflow {_VERBS[mode][1]}",
        severity="warning",
        node=node,
        input=input_name,
        hint=f"--set {node}.{input_name}=N picks the seed",
        file=file,
        mode=mode,
        group=group,
        value=value,
    )


def seed_controls(problems: Iterable[Diagnostic]) -> list[SeedControl]:
    """The controlled seeds among a document's problems (``Document.problems``)."""
    return [d for d in problems if isinstance(d, SeedControl) and d.mode in _VERBS]


def seeds_for_run(
    controls: Iterable[SeedControl],
    run: int,
    start: Mapping[str, int],
    bounds: Mapping[str, tuple[int, int]],
    rng: random.Random,
) -> dict[str, int]:
    """``{"node.input": seed}`` for run ``run`` (0-based) of a ``--count`` series.

    ``start``: each seed's value for run 0 (the saved value, or the user's ``--set``); ``bounds``:
    each input's (min, max). Run 0 uses ``start``; each later run applies the mode once more
    (randomize draws afresh for every run), one value per group.
    """
    seeds: dict[str, int] = {}
    drawn: dict[str, int] = {}
    for control in controls:
        first = int(start.get(control.key, control.value or 0))
        low, high = bounds.get(control.key, (0, 2**64 - 1))
        if run == 0:
            value = first
        elif control.group in drawn:
            value = drawn[control.group]
        elif control.mode == "randomize":
            value = rng.randint(low, max(low, min(high, RANDOM_SEED_MAX)))
        elif control.mode == "increment":
            value = first + run
        else:
            value = first - run
        value = min(max(value, low), high)
        drawn.setdefault(control.group, value)
        seeds[control.key] = value
    return seeds
