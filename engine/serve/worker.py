"""The thread that runs queued prompts on one persistent Runner, telling clients what happens.

One worker, one :class:`~graphrun.engine.executor.Runner` for the server's life: loaded models and cached
results stay warm between prompts, so a second prompt that changes only the seed re-runs only the sampler
onwards. The runner's progress events become ComfyUI's WebSocket messages, sent to the client that queued
the prompt (``client_id``), or to everyone when it gave none:

``execution_start``, ``execution_cached`` (the nodes whose results are cached), then per node
``executing`` (and ``progress_state``), ``progress`` per inner step, ``executed`` with the files an output
node wrote; finally ``execution_success``, ``execution_error`` or ``execution_interrupted`` (to everyone),
then ``executing`` with ``node: null``. The history record keeps the status messages as ComfyUI does.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from ..context import Interrupted
from ..executor import NodeFailed, Runner
from ..progress import Event
from .events import EventHub
from .files import relative_name
from .jobs import Job, PromptQueue

log = logging.getLogger("graphrun.serve")


def _ms() -> int:
    return int(time.time() * 1000)


class Worker:
    def __init__(self, queue: PromptQueue, hub: EventHub, runner: Runner, out_dir: Path, temp_dir: Path) -> None:
        self.queue = queue
        self.hub = hub
        self.runner = runner
        self.out_dir = out_dir
        self.temp_dir = temp_dir
        self.current: Job | None = None
        self.current_node: str | None = None  # ComfyUI id of the node running now
        self._lock = threading.Lock()
        self._in_run = False  # the runner is executing ``current`` now
        self._stop_current = False  # ``current`` was interrupted before its run began
        self._stop_next: str | None = None  # a job taken from the queue, interrupted before it became current
        self._thread: threading.Thread | None = None

    # --- control

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="graphrun-serve-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.queue.close()
        self.interrupt()
        if self._thread is not None:
            self._thread.join(timeout)

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Stop the running prompt (only that one, when ``prompt_id`` is given) at its next step; True when
        a prompt was told to stop.

        Atomic, as ComfyUI 0.33's cancel needs: it acts only on the prompt running now, never on one that
        starts next. A job just taken from the queue, or not yet in its run, stops before its first node; the
        runner's stop flag is only ever set while that job's run executes.
        """
        with self._lock:
            job = self.current
            if job is None or (prompt_id is not None and job.prompt_id != prompt_id):
                if prompt_id is not None and any(j.prompt_id == prompt_id for j in self.queue.running()):
                    self._stop_next = prompt_id  # taken by the worker thread, not yet its current job
                    return True
                return False
            if self._in_run:
                self.runner.interrupt()
            else:
                self._stop_current = True
            return True

    # --- running

    def _loop(self) -> None:
        while True:
            job = self.queue.take()
            if job is None:
                return
            with self._lock:
                self.current = job
                self._stop_current = self._stop_next == job.prompt_id
                self._stop_next = None
            try:
                self._run(job)
            except Exception:  # noqa: BLE001 - a bug here must not kill the server's only worker
                log.exception("prompt %s: internal error", job.prompt_id)
            finally:
                with self._lock:
                    self.current = None
                    self.current_node = None
                    self._stop_current = False

    def _run(self, job: Job) -> None:
        sid = job.extra_data.get("client_id")
        sid = sid if isinstance(sid, str) and sid else None
        messages: list[list[Any]] = []
        outputs: dict[str, dict[str, Any]] = {}
        meta: dict[str, dict[str, Any]] = {}
        executed: list[str] = []

        def message(event: str, data: dict[str, Any], broadcast: bool = False) -> None:
            data = {**data, "timestamp": _ms()}
            messages.append([event, data])
            if sid is not None or broadcast:
                self.hub.publish(event, data, sid)

        def send(event: str, data: dict[str, Any]) -> None:
            self.hub.publish(event, data, sid)

        def comfy_id(node: str) -> str:
            return job.names.get(node, node)

        states: dict[str, dict[str, Any]] = {}

        def progress_state(node: str, state: str, value: float, maximum: float) -> None:
            states[node] = {"value": value, "max": maximum, "state": state, "node_id": node,
                            "prompt_id": job.prompt_id, "display_node_id": node, "parent_node_id": None,
                            "real_node_id": node}
            send("progress_state", {"prompt_id": job.prompt_id, "nodes": dict(states)})

        def report(event: Event) -> None:
            node = comfy_id(event.node)
            if event.kind == "start":
                self.current_node = node
                progress_state(node, "running", 0, 1)
                send("executing", {"node": node, "display_node": node, "prompt_id": job.prompt_id})
            elif event.kind == "step":
                if job.graph.nodes[event.node].spec.output:
                    return  # ComfyUI's SaveImage and PreviewImage have no progress bar
                value, maximum = event.info.get("step", 0), event.info.get("total", 0)
                send("progress", {"value": value, "max": maximum, "prompt_id": job.prompt_id, "node": node})
                progress_state(node, "running", value, maximum)
            elif event.kind == "end":
                executed.append(node)
                last = states.get(node, {}).get("max", 1) or 1
                progress_state(node, "finished", last, last)
                ui = self._ui_output(event.info.get("files", []))
                if ui:
                    outputs[node] = ui
                    meta[node] = {"node_id": node, "display_node": node, "parent_node": None, "real_node_id": node}
                    send("executed", {"node": node, "display_node": node, "output": ui, "prompt_id": job.prompt_id})

        message("execution_start", {"prompt_id": job.prompt_id})
        cached = [comfy_id(n) for n in self.runner.cached_nodes(job.graph)]
        message("execution_cached", {"nodes": cached, "prompt_id": job.prompt_id})
        status, completed = "success", True
        try:
            with self._lock:
                self._in_run = True
                if self._stop_current:
                    self.runner.interrupt()  # stops the run at its first node
            try:
                self.runner.run(job.graph, reporter=report)
            finally:
                with self._lock:
                    self._in_run = False
            message("execution_success", {"prompt_id": job.prompt_id})
        except Interrupted:
            status, completed = "error", False
            node = self.current_node
            message("execution_interrupted", {
                "prompt_id": job.prompt_id, "node_id": node, "node_type": self._class_type(job, node),
                "executed": executed}, broadcast=True)
        except NodeFailed as exc:
            status, completed = "error", False
            node = comfy_id(exc.node)
            error = exc.error
            message("execution_error", {
                "prompt_id": job.prompt_id, "node_id": node, "node_type": self._class_type(job, node),
                "executed": executed, "exception_message": str(error) or type(error).__name__,
                "exception_type": f"{type(error).__module__}.{type(error).__qualname__}",
                "traceback": traceback.format_tb(error.__traceback__), "current_inputs": {},
                "current_outputs": executed})
        except Exception as exc:  # noqa: BLE001 - reported to the client like a node failure
            status, completed = "error", False
            node = self.current_node
            message("execution_error", {
                "prompt_id": job.prompt_id, "node_id": node, "node_type": self._class_type(job, node),
                "executed": executed, "exception_message": f"internal error: {exc}",
                "exception_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "traceback": traceback.format_tb(exc.__traceback__), "current_inputs": {},
                "current_outputs": executed})
        self.queue.finish(job, {
            "outputs": outputs,
            "status": {"status_str": status, "completed": completed, "messages": messages},
            "meta": meta,
        })
        if sid is not None:
            send("executing", {"node": None, "prompt_id": job.prompt_id})

    @staticmethod
    def _class_type(job: Job, node: str | None) -> str | None:
        entry = job.prompt.get(node) if node is not None else None
        return entry.get("class_type") if isinstance(entry, dict) else None

    def _ui_output(self, files: list[str]) -> dict[str, Any]:
        """ComfyUI's ``{"images": [{"filename", "subfolder", "type"}]}`` for the files an output node wrote."""
        images = []
        for text in files:
            path = Path(text)
            for base, kind in ((self.temp_dir, "temp"), (self.out_dir, "output")):
                named = relative_name(base, path)
                if named is not None:
                    subfolder, filename = named
                    images.append({"filename": filename, "subfolder": subfolder, "type": kind})
                    break
        return {"images": images} if images else {}
