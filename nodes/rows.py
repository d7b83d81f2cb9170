"""Helpers for nodes' batched forms (``@node(batch=...)``): several batch rows in one call.

A batched form gets one dict of keyword arguments per row. What must be the same for the rows to go
together (a model, a step count) is checked with :func:`same`, which raises ValueError otherwise (the
engine then runs those rows one by one); tensors are stacked along the batch dimension and split back.
"""
from __future__ import annotations

from typing import Any, Sequence


def same(calls: Sequence[dict[str, Any]], *names: str) -> None:
    """Raise ValueError unless every row has the first row's value for each of ``names``
    (objects such as model handles must be the very same object)."""
    first = calls[0]
    for name in names:
        for call in calls[1:]:
            a, b = first[name], call[name]
            if a is b:
                continue
            if isinstance(a, (int, float, str, bool, type(None))) and type(a) is type(b) and a == b:
                continue
            if _tensors_equal(a, b):
                continue
            raise ValueError(f"rows differ in {name!r}")


def _tensors_equal(a: Any, b: Any) -> bool:
    import torch

    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and bool(
        torch.equal(a, b))


def stack(tensors: Sequence[Any]) -> tuple[Any, list[int]]:
    """Tensors ``[B_k, ...]`` of equal trailing shape as one ``[sum B_k, ...]`` and the row sizes."""
    import torch

    shapes = {tuple(t.shape[1:]) for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"rows have different shapes {sorted(shapes)}")
    return torch.cat(list(tensors)), [int(t.shape[0]) for t in tensors]


def split(tensor: Any, sizes: list[int]) -> list[Any]:
    return list(tensor.split(sizes))


def no_batch_index(calls: Sequence[dict[str, Any]], name: str = "latent") -> None:
    """Latents picked from a larger batch (``batch_index``) keep their own noise streams: not stacked."""
    if any(getattr(call[name], "batch_index", None) is not None for call in calls):
        raise ValueError("latents with a batch_index are sampled one by one")


def one_by_one(fn: Any) -> Any:
    """A batched form that runs ``fn`` per row, each exactly as alone: for nodes whose rows gain nothing
    from stacking (a prompt's encoding), so that the rest of the group still runs together."""

    def rows(calls: Sequence[dict[str, Any]]) -> list[Any]:
        return [fn(**call) for call in calls]

    return rows
