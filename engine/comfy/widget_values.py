"""Map a UI node's stored `widgets_values` to the named widget values that reach the API prompt (SEMANTICS.md §1.4).

Positional lists follow the node's widget layout (`ComfyNodeSpec.widgets_values_layout`), skipping the stored-only
companions (`control_after_generate`, `control_filter_list`, `upload`); short lists keep defaults; dict-form values
and `widgets_values_named` map by name.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

from .diagnostics import EXTRA_WIDGET_VALUES, NULL_WIDGET_VALUE, ComfyDiagnostic
from .widgets import CONTROL_AFTER_GENERATE, ComfyNodeSpec

__all__ = ["map_widgets_values", "stored_controls", "CONTROL_MODES"]

#: The `control_after_generate` modes that change a widget after each run ("fixed" leaves it alone).
CONTROL_MODES: tuple[str, ...] = ("randomize", "increment", "decrement")


def map_widgets_values(
    spec: ComfyNodeSpec, values: Any, named: Any = None
) -> tuple[dict[str, Any], list[ComfyDiagnostic]]:
    """Map a node's stored widget values to `{widget name: value}` for the widgets that reach the API prompt.

    values is the node's `widgets_values` (list or dict), named its `widgets_values_named` (preferred per name).
    Widgets the stored data does not reach keep their spec default. Returned diagnostics are warnings without a
    node id; the caller adds it.
    """
    result = {w.name: copy.deepcopy(w.default) for w in spec.widgets}
    problems: list[ComfyDiagnostic] = []
    if isinstance(values, Mapping):
        _take_by_name(spec, values, result)
    elif isinstance(values, list):
        _take_positional(spec, values, result, problems)
    if isinstance(named, Mapping):
        _take_by_name(spec, named, result)
    return result, problems


def _take_by_name(spec: ComfyNodeSpec, values: Mapping[Any, Any], result: dict[str, Any]) -> None:
    for w in spec.widgets:
        if w.name in values and values[w.name] is not None:
            result[w.name] = values[w.name]


def _take_positional(
    spec: ComfyNodeSpec, values: list[Any], result: dict[str, Any], problems: list[ComfyDiagnostic]
) -> None:
    values = _drop_force_input_dummies(spec, values)
    layout = spec.widgets_values_layout()
    for slot, value in zip(layout, values):
        if not slot.serialized:
            continue
        if value is None:
            message = "stored value is null; using the default"
            problems.append(ComfyDiagnostic(NULL_WIDGET_VALUE, message, "warning", input=slot.name))
            continue
        result[slot.name] = value
    if len(values) > len(layout):
        problems.append(
            ComfyDiagnostic(
                EXTRA_WIDGET_VALUES,
                f"{len(values)} widget values stored but {spec.class_type} has {len(layout)} widget slots; "
                "the extra values are ignored",
                "warning",
                hint="the workflow may come from a different version of the node",
            )
        )


def _drop_force_input_dummies(spec: ComfyNodeSpec, values: list[Any]) -> list[Any]:
    """Frontends before 1.16 stored a dummy value for each forceInput input; drop them when the count matches."""
    if not spec.force_inputs:
        return values
    widgets = {w.name: w for w in spec.widgets}
    old_layout: list[bool] = []  # True = a forceInput dummy position
    placed: set[str] = set()
    for name in spec.inputs:
        if name in widgets:
            old_layout.extend([False] * len(widgets[name].stored_slots()))
            placed.add(name)
        elif name in spec.force_inputs:
            old_layout.append(True)
    for w in spec.widgets:
        if w.name not in placed:
            old_layout.extend([False] * len(w.stored_slots()))
    if len(values) != len(old_layout):
        return values
    return [v for v, dummy in zip(values, old_layout) if not dummy]


def stored_controls(spec: ComfyNodeSpec, values: Any) -> dict[str, str]:
    """The `control_after_generate` mode stored after each INT widget (`seed`: "randomize"), for the modes that
    change the value after a run (:data:`CONTROL_MODES`); "fixed" and unknown texts are left out.

    Reads the positional `widgets_values` list (the companion right after the widget) and the dict form
    (`{"seed": 5, "control_after_generate": "randomize"}` when the node has one such widget).
    """
    found: dict[str, str] = {}
    if isinstance(values, list):
        values = _drop_force_input_dummies(spec, values)
        layout = spec.widgets_values_layout()
        for slot, value in zip(layout, values):
            if not slot.serialized and slot.name == CONTROL_AFTER_GENERATE and slot.widget.kind == "INT":
                if isinstance(value, str) and value in CONTROL_MODES:
                    found[slot.widget.name] = value
    elif isinstance(values, Mapping):
        controlled = [w.name for w in spec.widgets if w.has_int_control]
        mode = values.get(CONTROL_AFTER_GENERATE)
        if len(controlled) == 1 and isinstance(mode, str) and mode in CONTROL_MODES:
            found[controlled[0]] = mode
    return found
