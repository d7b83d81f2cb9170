"""Content-addressed result cache with a byte budget and LRU eviction.

Keys are Merkle keys computed by the executor (node type, version, literal inputs, upstream
keys); values are the node's output tuples. Sizes are estimated without touching tensor
contents: anything with ``element_size()`` and ``nelement()`` counts its storage.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

DEFAULT_BUDGET = 2 * 1024**3


def estimate_nbytes(value: Any, _depth: int = 0) -> int:
    """Rough bytes held by a value: tensors and containers of them; other objects count 0."""
    if _depth > 4 or value is None or isinstance(value, (int, float, str, bool, bytes)):
        return len(value) if isinstance(value, bytes) else 0
    custom = getattr(value, "__graphrun_nbytes__", None)
    if callable(custom):
        return int(custom())
    if hasattr(value, "element_size") and hasattr(value, "nelement"):
        return int(value.element_size() * value.nelement())
    if isinstance(value, dict):
        return sum(estimate_nbytes(v, _depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(estimate_nbytes(v, _depth + 1) for v in value)
    if is_dataclass(value) and not isinstance(value, type):
        return sum(estimate_nbytes(getattr(value, f.name), _depth + 1) for f in fields(value))
    return 0


@dataclass
class CacheEntry:
    outputs: tuple[Any, ...]
    nbytes: int
    keep: bool


class ResultCache:
    """LRU over node results. ``keep`` entries (loaded models) are exempt from the budget."""

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> tuple[Any, ...] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry.outputs

    def put(self, key: str, outputs: tuple[Any, ...], keep: bool = False) -> None:
        if key in self._entries:
            self._drop(key)
        if not keep and self.budget_bytes <= 0:
            return  # caching disabled
        nbytes = 0 if keep else estimate_nbytes(outputs)
        if not keep and nbytes > self.budget_bytes:
            return  # would evict everything else and still not fit
        self._entries[key] = CacheEntry(outputs, nbytes, keep)
        self.bytes += nbytes
        self._evict()

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.nbytes

    def _evict(self) -> None:
        if self.bytes <= self.budget_bytes:
            return
        for key in [k for k, e in self._entries.items() if not e.keep]:
            if self.bytes <= self.budget_bytes:
                break
            self._drop(key)

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
