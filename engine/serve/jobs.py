"""The prompt queue and the history of ``graphrun serve``, in ComfyUI's shapes.

A queued item is what ComfyUI lists in ``GET /queue``: ``[number, prompt_id, prompt, extra_data,
outputs_to_execute]``; the bound graph graphrun made from it travels beside it (never serialised). The
queue runs the lowest number first (``front: true`` queues with a negative number, as in ComfyUI) and
holds at most ``max_pending`` items: a full queue refuses new prompts instead of growing without bound.
History records are ``{"prompt": item, "outputs": {node: ui}, "status": {...}, "meta": {node: ...}}``.
"""
from __future__ import annotations

import copy
import heapq
import threading
from dataclasses import dataclass, field
from typing import Any, Callable


class QueueFull(Exception):
    """The queue holds ``max_pending`` prompts already."""


@dataclass(order=True)
class Job:
    number: float
    prompt_id: str = field(compare=False)
    prompt: dict[str, Any] = field(compare=False)
    extra_data: dict[str, Any] = field(compare=False)
    outputs: list[str] = field(compare=False)  # ComfyUI ids of the output nodes to execute
    graph: Any = field(compare=False, repr=False, default=None)  # the validated BoundGraph
    names: dict[str, str] = field(compare=False, repr=False, default_factory=dict)  # graphrun name -> ComfyUI id
    sequence: int = field(compare=True, default=0)  # ties keep submission order

    def item(self) -> list[Any]:
        """The job as ComfyUI lists it in /queue and history records."""
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


class PromptQueue:
    """Thread-safe: the HTTP handlers put and delete, the worker thread takes and finishes."""

    def __init__(self, max_pending: int, max_history: int, on_change: Callable[[], None] = lambda: None) -> None:
        self.max_pending = max_pending
        self.max_history = max_history
        self._on_change = on_change
        self._lock = threading.RLock()
        self._not_empty = threading.Condition(self._lock)
        self._pending: list[Job] = []
        self._running: dict[str, Job] = {}
        self._history: dict[str, dict[str, Any]] = {}
        self._sequence = 0
        self._closed = False

    # --- the queue

    def put(self, job: Job) -> None:
        with self._lock:
            if len(self._pending) >= self.max_pending:
                raise QueueFull(f"the queue already holds {self.max_pending} prompts")
            self._sequence += 1
            job.sequence = self._sequence
            heapq.heappush(self._pending, job)
            self._not_empty.notify()
        self._on_change()

    def take(self, timeout: float | None = None) -> Job | None:
        """The next job, marked running; None on timeout or once closed."""
        with self._not_empty:
            while not self._pending and not self._closed:
                if not self._not_empty.wait(timeout):
                    return None
            if self._closed:
                return None
            job = heapq.heappop(self._pending)
            self._running[job.prompt_id] = job
        self._on_change()
        return job

    def close(self) -> None:
        with self._not_empty:
            self._closed = True
            self._not_empty.notify_all()

    def running(self) -> list[Job]:
        with self._lock:
            return list(self._running.values())

    def snapshot(self) -> tuple[list[list[Any]], list[list[Any]]]:
        """(running items, pending items in run order), as /queue lists them."""
        with self._lock:
            return [j.item() for j in self._running.values()], [j.item() for j in sorted(self._pending)]

    def remaining(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._running)

    def clear(self) -> None:
        with self._lock:
            self._pending = []
        self._on_change()

    def delete(self, prompt_id: str) -> bool:
        with self._lock:
            kept = [j for j in self._pending if j.prompt_id != prompt_id]
            found = len(kept) != len(self._pending)
            if found:
                heapq.heapify(kept)
                self._pending = kept
        if found:
            self._on_change()
        return found

    # --- history

    def finish(self, job: Job, record: dict[str, Any]) -> None:
        """Move a running job into the history with its outputs and status."""
        with self._lock:
            self._running.pop(job.prompt_id, None)
            while len(self._history) >= self.max_history:
                self._history.pop(next(iter(self._history)))
            self._history[job.prompt_id] = {"prompt": job.item(), **record}
        self._on_change()

    def history(self, prompt_id: str | None = None, max_items: int | None = None, offset: int = -1) -> dict:
        """ComfyUI's history answer: every record (oldest first), or the last ``max_items``, or one prompt."""
        with self._lock:
            if prompt_id is not None:
                record = self._history.get(prompt_id)
                return {prompt_id: copy.deepcopy(record)} if record is not None else {}
            items = list(self._history.items())
            if offset < 0 and max_items is not None:
                offset = len(items) - max_items
            items = items[max(offset, 0):]
            if max_items is not None:
                items = items[:max_items]
            return copy.deepcopy(dict(items))

    def clear_history(self) -> None:
        with self._lock:
            self._history = {}

    def delete_history(self, prompt_id: str) -> None:
        with self._lock:
            self._history.pop(prompt_id, None)
