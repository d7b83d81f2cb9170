"""Batches on Ray: a pool of Ray actors, each holding one Runner, fed by a scheduler in the driver.

The driver (:mod:`.driver`) reads and validates the rows, decides which to skip, and commits
results; this module only runs the jobs, handing each back as soon as it finishes (completion
order, not row order: a slow row holds no other back).

Why Ray core actors and our own scheduler rather than Ray Data's ``map_batches``: the batch
needs things Ray Data decides for itself. A row whose worker died must run again elsewhere
exactly once (we know which rows each worker holds); a cluster that cannot hold the workers must
fail within a stated time with one message, not wait printing resource warnings; a worker that
can reach ``--out`` must write there directly while another sends bytes; and the pool must grow
and shrink between ``workers`` and ``max_workers`` as the backlog and the cluster allow. Each is
a few lines over ``ray.wait`` and ``ray.kill``; none is a knob of Ray Data.

Workers
    Each actor builds the registry and a Runner once (models load once per worker), reserves
    ``cpus_per_worker`` CPUs (1 by default) and ``gpus_per_worker`` GPUs (a fraction packs
    several workers on one GPU: 0.5 puts two on each), and runs torch on as many threads as CPUs
    it reserved. The driver keeps two tasks queued on each worker (one running, one waiting), so
    a worker never idles between rows; a task carries up to ``batch_size`` rows
    (:meth:`RowActor.run_rows` is where they could run as one batched forward).

Where files go
    The driver writes a probe file with a random token under ``--out``; a worker that reads that
    token back writes each row straight into ``--out/.partial/.try<N>-<folder>/`` (a folder per
    attempt, so a retried row never mixes with a dead attempt's files), which the driver renames
    to the row's staging folder and commits. A worker that cannot read the probe (another machine
    without the shared path), or every worker with ``shared_out=False``, runs the row in a private
    scratch folder and returns the files as bytes, which the driver writes. Either way the outputs
    and the manifest are those of a local run.

Failures
    Actors restart after they die (``max_restarts=-1``); their in-flight tasks are not retried by
    Ray on the same actor (``max_task_retries=0``): the driver re-queues those rows at once for
    any live worker. Only the row a worker was running when it died counts an attempt; after
    ``1 + max_retries`` attempts the row is recorded failed. Workers that keep dying with no row
    finishing in between stop the batch. Before any actor starts, the request is compared with
    ``ray.nodes()``: a request no node set can hold (``--gpus-per-worker 1`` on a cluster without
    GPUs) fails at once; workers that Ray cannot place within ``start_timeout`` seconds fail the
    batch with the same kind of message (or, once one worker runs, are given up with a warning).

Workers need graphrun (and the graph's plugins, models and input files) where they run. On a
local Ray they chdir to the driver's working directory, so relative paths mean the same there.
"""
from __future__ import annotations

import importlib
import math
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .errors import BatchError, short_error
from .jobs import Job, Outcome, run_row
from .staging import discard, prepare
from .types import BatchOptions
from ..context import RunOptions
from ..executor import Runner
from ..graph import Document
from ..node import Registry, builtin_registry, make_registry

if TYPE_CHECKING:
    from .sigint import SigintStop

RAY_MISSING = "--ray needs Ray, which is not installed: pip install graphrun[ray]"
_PLUGIN_PREFIX = "graphrun_plugin_"  # module names Registry.load_plugin_file gives plugin files
_DEPTH = 2  # tasks in flight per worker: one running, one queued behind it
_TICK = 0.5  # seconds between checks of the pool (start timeouts, growth) while waiting for results
_ATTEMPT = ".try"  # .partial/.try<N>-<folder>: one attempt's files (row ids never start with ".")
_PROBE = ".probe-"  # .partial/.probe-<token>: read by workers to learn whether --out is shared
_EPS = 1e-6  # slack when dividing resources: 1 GPU / 0.5 is 2 workers, not 1.999...

Finished = tuple[Job, Outcome]
RayExecutor = Callable[[list[Job]], Iterator[Finished]]
"""Starts the pool for ``jobs`` (raising :class:`BatchError` when the cluster cannot hold it) and
returns an iterator of (job, outcome) in completion order, each job once, its files in
``job.staging``; the iterator's ``close()`` stops the pool."""


def require_ray() -> None:
    """Raise :class:`BatchError` naming the install command when Ray cannot be imported."""
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        raise BatchError(f"{RAY_MISSING} ({exc})") from None


def registry_recipe(registry: Registry) -> list[tuple[str, str]]:
    """How a worker rebuilds ``registry``: the node modules beyond the built-ins, as
    ``("file", path)`` for ``--plugin`` files and ``("module", name)`` for importable modules.
    Rebuilding beats pickling: plugin-file modules are not importable by name elsewhere."""
    builtins = builtin_registry()
    recipe: dict[tuple[str, str], None] = {}
    for spec in registry:
        if builtins.get(spec.name) is spec:
            continue
        module = spec.fn.__module__
        path = getattr(sys.modules.get(module), "__file__", None)
        if module.startswith(_PLUGIN_PREFIX) and path:
            recipe[("file", str(Path(path).resolve()))] = None
        else:
            recipe[("module", module)] = None
    return list(recipe)


def rebuild_registry(recipe: list[tuple[str, str]], node_types: list[str]) -> Registry:
    """The registry a recipe describes; raises when a node type the driver had is missing."""
    registry = make_registry([ref for kind, ref in recipe if kind == "file"])
    for kind, ref in recipe:
        if kind == "module":
            module = importlib.import_module(ref)
            for value in vars(module).values():
                spec = getattr(value, "__graphrun_node__", None)
                if spec is not None and spec.name not in registry:
                    registry.add(spec)
    missing = sorted(set(node_types) - set(registry.names()))
    if missing:
        raise RuntimeError(f"the Ray worker cannot find node types {', '.join(missing)}; install their plugin there")
    return registry


def _limit_threads(threads: int) -> None:
    """Run torch on ``threads`` threads: workers sharing a machine would otherwise each start one
    thread per core and slow each other down. The environment covers a torch imported later."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


class RowActor:
    """A Ray actor: one Runner for every row it gets (models load once per worker)."""

    def __init__(
        self,
        document: Document,
        recipe: list[tuple[str, str]],
        node_types: list[str],
        options: RunOptions,
        cwd: str,
        threads: int = 1,
    ) -> None:
        self.threads = threads
        _limit_threads(threads)
        if os.path.isdir(cwd):
            os.chdir(cwd)  # relative model, plugin and input paths resolve as on the driver
        self.document = document
        self.registry = rebuild_registry(recipe, node_types)
        self.runner = Runner(options)
        self.scratch = Path(tempfile.mkdtemp(prefix="graphrun-ray-"))
        _limit_threads(threads)  # a plugin may have imported torch

    def ready(self, probe: str, token: str) -> dict[str, Any]:
        """This worker's process id, and whether it reads ``token`` from the ``probe`` file
        (then it shares the driver's output folder and writes rows there itself)."""
        try:
            shared = Path(probe).read_text(encoding="utf-8") == token
        except OSError:
            shared = False
        return {"pid": os.getpid(), "shared": shared}

    def run_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run a group of up to ``batch_size`` rows sent as one task; one result each, in order.

        The seam for ``--batch-size``: one row runs through :func:`run_row`, a group through
        :func:`run_row_group` (the local executor's grouped path), each row in its own folder.
        """
        _limit_threads(self.threads)
        folders = [self._folder(row) for row in rows]
        if len(rows) == 1:
            outcomes = [run_row(self.runner, self.document, self.registry, rows[0]["params"], folders[0])]
        else:
            from .jobs import run_row_group

            outcomes = run_row_group(self.runner, self.document, self.registry,
                                     [(row["params"], folder) for row, folder in zip(rows, folders)])
        return [self._result(row, folder, outcome) for row, folder, outcome in zip(rows, folders, outcomes)]

    def _folder(self, row: dict[str, Any]) -> Path:
        """The row's output folder, empty: its attempt folder under --out, else a scratch folder."""
        direct = row["folder"] is not None
        folder = Path(row["folder"]) if direct else self.scratch / row["name"]
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=not direct)  # an attempt folder's parent is the driver's .partial
        return folder

    def _result(self, row: dict[str, Any], folder: Path, outcome: Outcome) -> dict[str, Any]:
        files: dict[str, bytes] | None = None
        if row["folder"] is None:  # not shared: the files travel back as bytes
            files = {}
            if outcome.error is None:
                for path in sorted(folder.rglob("*")):
                    if path.is_file():
                        files[path.relative_to(folder).as_posix()] = path.read_bytes()
            shutil.rmtree(folder, ignore_errors=True)
        return {"error": outcome.error, "seconds": outcome.seconds, "reported": outcome.reported, "files": files,
                "interrupted": outcome.interrupted}


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    root = folder.resolve()
    for name, data in files.items():
        target = (folder / name).resolve()
        if os.path.commonpath([root, target]) != str(root):
            raise RuntimeError(f"a Ray worker returned a file outside its row folder: {name}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


# ---------------------------------------------------------------------------------------------------
# Resources


def worker_request(batch: BatchOptions) -> dict[str, float]:
    """What one worker asks Ray for (a CPU unless told otherwise: an actor reserving none would
    let Ray start any number of them on one core)."""
    request = {"CPU": 1.0 if batch.cpus_per_worker is None else float(batch.cpus_per_worker)}
    if batch.gpus_per_worker:
        request["GPU"] = float(batch.gpus_per_worker)
    return request


def workers_that_fit(request: dict[str, float], nodes: list[dict[str, float]]) -> int | None:
    """How many workers asking ``request`` the nodes (their resources) can hold at once; None
    when the request asks for nothing (no limit). A worker lives on one node."""
    wanted = {name: amount for name, amount in request.items() if amount > 0}
    if not wanted:
        return None
    return sum(min(math.floor(node.get(name, 0.0) / amount + _EPS) for name, amount in wanted.items())
               for node in nodes)


def _amounts(resources: dict[str, float], names: list[str]) -> str:
    parts = []
    for name in names:
        value = resources.get(name, 0.0)
        text = f"{value:g}"
        parts.append(f"{text} {name}{'s' if value != 1 else ''}")
    return ", ".join(parts)


def check_fits(request: dict[str, float], count: int, nodes: list[dict[str, float]]) -> None:
    """Raise :class:`BatchError` when ``count`` workers asking ``request`` cannot all be placed
    on ``nodes`` (the resources of the cluster's live nodes), however long one waits."""
    fit = workers_that_fit(request, nodes)
    if fit is None or fit >= count:
        return
    names = sorted(request, key=lambda n: (n != "GPU", n))  # GPUs first: the usual shortfall
    total: dict[str, float] = {}
    for node in nodes:
        for name in names:
            total[name] = total.get(name, 0.0) + node.get(name, 0.0)
    asked = _amounts(request, names)
    had = f"{_amounts(total, names)} on {len(nodes)} node{'s' if len(nodes) != 1 else ''}"
    room = "not one fits" if fit == 0 else f"only {fit} fit{'s' if fit == 1 else ''}"
    raise BatchError(
        f"the Ray cluster cannot run {count} worker{'s' if count != 1 else ''} asking for {asked} each: "
        f"it has {had}, so {room}; use {_fit_hint(request, nodes, fit)}"
    )


def _fit_hint(request: dict[str, float], nodes: list[dict[str, float]], fit: int) -> str:
    gpus = request.get("GPU", 0.0)
    most_gpus = max((node.get("GPU", 0.0) for node in nodes), default=0.0)
    if fit == 0:
        if gpus and most_gpus < gpus:
            if not most_gpus:
                return "--gpus-per-worker 0 for CPU workers, or a Ray address of a cluster with GPUs"
            return f"--gpus-per-worker {most_gpus:g} or less (the most one node has)"
        return "a smaller --cpus-per-worker"
    by_gpus = bool(gpus) and workers_that_fit({"GPU": gpus}, nodes) == fit
    smaller = "--gpus-per-worker (0.5 puts two workers on a GPU)" if by_gpus else "--cpus-per-worker"
    return f"--workers {fit} or fewer, or a smaller {smaller}"


def _live_nodes(ray: Any) -> list[dict[str, float]]:
    return [dict(node.get("Resources") or {}) for node in ray.nodes() if node.get("Alive")]


# ---------------------------------------------------------------------------------------------------
# The pool


@dataclass
class _Try:
    index: int  # the job's position in the batch's jobs
    folder: Path | None  # the attempt folder the worker writes into (shared --out), else None


@dataclass
class _Task:
    ref: Any
    tries: list[_Try]
    life: int  # the worker's life (restarts so far) it was sent to
    seq: int  # order of sending: a worker runs its tasks in this order
    running: bool = False  # it was the one running when its worker died


@dataclass
class _Worker:
    handle: Any
    number: int
    since: float  # when it was created or last lost (a restart is timed from there)
    ready: Any = None  # the pending ready() call; None while the worker takes rows
    started: bool = False  # it has been ready at least once
    shared: bool = False  # writes rows into --out itself
    pid: int | None = None
    life: int = 0  # deaths noticed so far
    tasks: list[_Task] = field(default_factory=list)  # in flight, in the order it runs them


class _Pool:
    """Workers between ``workers`` and ``max_workers``, the rows still to run, and what each
    worker holds; :meth:`stream` runs the rows and yields them as they finish."""

    def __init__(self, document: Document, registry: Registry, options: RunOptions, batch: BatchOptions,
                 guard: "SigintStop", stream: Any = None) -> None:
        self.document = document
        self.registry = registry
        self.options = options
        self.batch = batch
        self.guard = guard
        self.stderr = stream or sys.stderr
        self.ray: Any = None
        self.started_ray = False
        self.workers: list[_Worker] = []
        self.numbers = 0
        self.attempts_made = 0
        self.folders: set[Path] = set()  # attempt folders not yet taken over or removed
        self.probe: Path | None = None
        self.token = secrets.token_hex(16)
        self.jobs: list[Job] = []
        self.low = self.high = 1
        self.next_growth = 0.0  # no growth before this time (a worker that could not start)
        self.warned_short = False
        self.queue: deque[int] = deque()  # rows to hand out (positions in jobs); retried ones in front
        self.attempts: list[int] = []  # per row: runs cut short by its worker dying
        self.finished: set[int] = set()  # rows handed back to the driver
        self.requeued: set[int] = set()  # rows put back in the queue after a loss (a copy may still finish)
        self.lost = ""  # why the last worker was lost
        self.sent = 0  # tasks sent
        self.deaths = 0  # worker deaths since a row last finished

    # ---- start and stop

    def start(self, jobs: list[Job]) -> None:
        import ray

        self.ray = ray
        self.jobs = jobs
        runnable = sum(job.error is None for job in jobs)
        self.low = max(1, min(self.batch.workers, runnable))
        self.high = max(self.low, min(self.batch.max_workers or self.batch.workers, runnable))
        if not runnable:
            return
        if not ray.is_initialized():
            address = None if self.batch.ray == "auto" else self.batch.ray
            ray.init(address=address, include_dashboard=False if address is None else None)
            self.started_ray = True
            self.guard.install()  # Ray may have installed its own SIGINT handler
        self.request = worker_request(self.batch)
        check_fits(self.request, self.low, _live_nodes(ray))
        root = jobs[0].staging.parent
        root.mkdir(exist_ok=True)
        _remove_leftovers(root)
        self.probe = root / f"{_PROBE}{self.token}"
        self.probe.write_text(self.token, encoding="utf-8")
        cpus = self.request["CPU"]
        self.actor = ray.remote(RowActor).options(
            num_cpus=cpus, num_gpus=self.request.get("GPU", 0.0), max_restarts=-1, max_task_retries=0,
            max_concurrency=1,
        )
        self.constructor = {
            "document": self.document,
            "recipe": registry_recipe(self.registry),
            "node_types": sorted({node.type for node in self.document.nodes.values()}),
            "options": self.options,
            "cwd": os.getcwd(),
            "threads": max(1, int(cpus)),
        }
        for _ in range(self.low):
            self._spawn()

    def close(self) -> None:
        """Stop every worker, remove the attempt folders and the probe; shut down a Ray we started."""
        ray = self.ray
        if ray is not None and ray.is_initialized():
            for worker in self.workers:
                try:
                    ray.kill(worker.handle, no_restart=True)
                except Exception:  # already gone
                    pass
        self.workers = []
        for folder in list(self.folders):
            discard(folder)
        self.folders.clear()
        if self.probe is not None:
            self.probe.unlink(missing_ok=True)
            self.probe = None
        if self.started_ray and ray is not None:
            ray.shutdown()
            self.started_ray = False

    # ---- workers

    def _spawn(self) -> None:
        handle = self.actor.remote(**self.constructor)
        worker = _Worker(handle, self.numbers, time.monotonic())
        self.numbers += 1
        self._await_ready(worker)
        self.workers.append(worker)

    def _await_ready(self, worker: _Worker) -> None:
        worker.ready = worker.handle.ready.remote(str(self.probe), self.token)

    def _drop(self, worker: _Worker) -> None:
        """Stop a worker; the rows it still held go back to the queue (no attempt counted)."""
        self.workers.remove(worker)
        try:
            self.ray.kill(worker.handle, no_restart=True)
        except Exception:  # already gone
            pass
        for task in reversed(worker.tasks):
            for attempt in reversed(task.tries):
                self._forget(attempt)
                if attempt.index not in self.finished:
                    self.queue.appendleft(attempt.index)
                    self.requeued.add(attempt.index)
        worker.tasks = []

    def _on_ready(self, worker: _Worker) -> None:
        from ray.exceptions import ActorUnavailableError, RayActorError

        ref, worker.ready = worker.ready, None
        try:
            info = self.ray.get(ref)
        except ActorUnavailableError:  # unreachable for the moment: ask again
            self._await_ready(worker)
            return
        except RayActorError as exc:
            if exc.actor_init_failed:  # the same code would fail on every worker
                raise RuntimeError(f"a Ray worker could not start: {short_error(exc)}") from None
            self._drop(worker)
            self.lost = short_error(exc)
            return
        worker.started = True
        worker.pid = info["pid"]
        worker.shared = bool(info["shared"]) and self.batch.shared_out

    def _check_starts(self) -> None:
        """Give up workers Ray could not place within the start timeout; fail when none runs."""
        now = time.monotonic()
        late = [w for w in self.workers if w.ready is not None and now - w.since > self.batch.start_timeout]
        if not late:
            return
        running = [w for w in self.workers if w.ready is None]
        if not running:
            if self.finished or any(w.started for w in self.workers):  # lost midway: rows are committed
                raise RuntimeError(self._unplaced_message("restarted"))
            raise BatchError(self._unplaced_message("started"))
        for worker in late:
            self._drop(worker)
        self.next_growth = now + self.batch.start_timeout  # the cluster is full for now
        if not self.warned_short and len(self.workers) < self.low:
            self.warned_short = True
            print(f"warning: only {len(running)} of {self.low} Ray workers started within "
                  f"{self.batch.start_timeout:g} s ({self._cluster_text()}); going on with {len(running)}",
                  file=self.stderr, flush=True)

    def _cluster_text(self) -> str:
        names = sorted(self.request, key=lambda n: (n != "GPU", n))
        free = self.ray.available_resources()
        return f"each asks for {_amounts(self.request, names)}; the cluster has {_amounts(free, names)} free"

    def _unplaced_message(self, what: str) -> str:
        return (f"no Ray worker {what} within {self.batch.start_timeout:g} s: {self._cluster_text()}, and "
                "Ray could not place one (the cluster is busy, or lacks what was asked for); free the "
                "resources, ask for less, or wait longer with --worker-start-timeout")

    def _resize(self) -> None:
        """Grow by one worker while rows wait and the cluster has room; shrink idle workers to
        ``low`` once every row is handed out."""
        queue = self.queue
        starting = any(not w.started and w.ready is not None for w in self.workers)
        if queue and len(queue) > len(self.workers) and len(self.workers) < self.high and not starting:
            now = time.monotonic()
            if now >= self.next_growth:
                self.next_growth = now + 1.0  # asking Ray what is free costs a round trip
                fit = workers_that_fit(self.request, [self.ray.available_resources()])
                if fit is None or fit >= 1:
                    self._spawn()
            return
        if not queue and len(self.workers) > self.low:
            for worker in [w for w in self.workers if w.ready is None and not w.tasks]:
                if len(self.workers) <= self.low:
                    break
                self._drop(worker)  # frees its CPUs/GPUs for the rest of the cluster

    # ---- rows

    def _row(self, index: int, shared: bool) -> tuple[_Try, dict[str, Any]]:
        job = self.jobs[index]
        folder = None
        if shared:
            self.attempts_made += 1
            folder = job.staging.parent / f"{_ATTEMPT}{self.attempts_made}-{job.folder}"
            self.folders.add(folder)
        # The row's own values as they validated on the driver (JSON-safe), under the row's keys.
        params = {key: job.resolved[key] for key in job.params}
        return _Try(index, folder), {"params": params, "folder": None if folder is None else str(folder),
                                     "name": job.folder}

    def _dispatch(self) -> None:
        queue = self.queue
        for worker in self.workers:
            while worker.ready is None and queue and len(worker.tasks) < _DEPTH:
                group = [queue.popleft() for _ in range(min(self.batch.batch_size, len(queue)))]
                tries, rows = zip(*(self._row(index, worker.shared) for index in group))
                self.sent += 1
                worker.tasks.append(_Task(worker.handle.run_rows.remote(list(rows)), list(tries), worker.life,
                                          self.sent))

    def _take_files(self, job: Job, attempt: _Try, data: dict[str, Any]) -> str | None:
        """Put a finished row's files into its staging folder; an error text when the disk refuses."""
        try:
            if attempt.folder is not None:
                discard(job.staging)  # left by a killed run
                os.rename(attempt.folder, job.staging)
                self.folders.discard(attempt.folder)
            else:
                prepare(job.staging)
                _write_files(job.staging, data["files"] or {})
        except OSError as exc:  # a full disk on the driver: this row fails, the batch goes on
            return f"cannot write the row's files into {job.staging}: {exc.strerror or exc}"
        return None

    def _forget(self, attempt: _Try) -> None:
        if attempt.folder is not None:
            discard(attempt.folder)
            self.folders.discard(attempt.folder)

    def stream(self) -> Iterator[Finished]:
        ray = self.ray
        self.attempts = [0] * len(self.jobs)
        for index, job in enumerate(self.jobs):
            if job.error is not None:
                self.finished.add(index)
                yield job, Outcome(error=job.error)
            else:
                self.queue.append(index)
        while len(self.finished) < len(self.jobs):
            self._check_starts()
            self._dispatch()
            self._resize()
            if not self.workers:
                raise RuntimeError(f"no Ray worker is left to run the rows{f': {self.lost}' if self.lost else ''}")
            owners: dict[Any, tuple[_Worker, _Task | None]] = {}
            for worker in self.workers:
                if worker.ready is not None:
                    owners[worker.ready] = (worker, None)
                for task in worker.tasks:
                    owners[task.ref] = (worker, task)
            done, _ = ray.wait(list(owners), num_returns=1, timeout=_TICK)
            for ref in done:
                worker, task = owners[ref]
                if task is None:
                    self._on_ready(worker)
                else:
                    yield from self._on_task(worker, task)

    def _on_task(self, worker: _Worker, task: _Task) -> Iterator[Finished]:
        from ray.exceptions import RayActorError

        worker.tasks.remove(task)
        try:
            results = self.ray.get(task.ref)
        except RayActorError as exc:
            yield from self._on_loss(worker, task, short_error(exc))
            return
        self.deaths = 0
        for attempt, data in zip(task.tries, results):
            if attempt.index in self.finished:  # a copy of a row already handed back: never twice
                self._forget(attempt)
                continue
            if attempt.index in self.requeued and attempt.index in self.queue:  # finished after all
                self.queue.remove(attempt.index)
            job = self.jobs[attempt.index]
            if data["interrupted"]:  # Ctrl-C reached the worker: the batch stops, this row is not done
                self._forget(attempt)
                yield job, Outcome(interrupted=True)
                return
            error = data["error"]
            if error is None:
                error = self._take_files(job, attempt, data)
            else:
                self._forget(attempt)
            self.finished.add(attempt.index)
            yield job, Outcome(error=error, seconds=data["seconds"], reported=data["reported"])

    def _on_loss(self, worker: _Worker, task: _Task, cause: str) -> Iterator[Finished]:
        """A task whose worker died (or cannot be reached). Its rows go back to the front of the
        queue for any worker; only the task it was running counts an attempt for its rows."""
        self.lost = cause
        if task.life == worker.life and worker in self.workers:  # first news of this death
            self.deaths += 1
            # A worker runs its tasks in the order sent: the oldest of this life was running.
            min((t for t in [task, *worker.tasks] if t.life == worker.life), key=lambda t: t.seq).running = True
            worker.life += 1
            worker.since = time.monotonic()
            if worker.ready is None:
                self._await_ready(worker)  # answers once Ray has restarted it
        for attempt in reversed(task.tries):
            self._forget(attempt)
            if attempt.index in self.finished or attempt.index in self.queue:
                continue
            if task.running:
                self.attempts[attempt.index] += 1
            runs = self.attempts[attempt.index]
            if runs > self.batch.max_retries:
                self.finished.add(attempt.index)
                yield self.jobs[attempt.index], Outcome(
                    error=f"its Ray worker died {runs} time{'s' if runs != 1 else ''} while running it "
                    f"(the last: {cause})")
            else:
                self.queue.appendleft(attempt.index)
                self.requeued.add(attempt.index)
        if self.deaths > (self.batch.max_retries + 1) * self.high:
            raise RuntimeError(f"Ray workers keep dying ({self.deaths} times with no row finished in between); "
                               f"the last: {cause}")


class _Stream:
    """The pool's results as an iterator whose ``close()`` always stops the pool (a generator
    never started would skip its ``finally``)."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.results = pool.stream()

    def __iter__(self) -> "_Stream":
        return self

    def __next__(self) -> Finished:
        try:
            return next(self.results)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        try:
            self.results.close()
        finally:
            self.pool.close()


def _remove_leftovers(root: Path) -> None:
    """Attempt folders and probes a killed batch left in ``.partial`` (only one batch writes to an
    output folder at a time: the manifest lock)."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith((_ATTEMPT, _PROBE)):
            discard(Path(entry.path))


def ray_executor(
    document: Document, registry: Registry, options: RunOptions, batch: BatchOptions, guard: "SigintStop"
) -> RayExecutor:
    """A :data:`RayExecutor` running jobs on a pool of ``batch.workers`` (up to
    ``batch.max_workers``) Ray actors.

    Uses the Ray already initialised in this process, else starts or joins one
    (``batch.ray``: ``"auto"`` or an address) and shuts it down when done.
    """

    def outcomes(jobs: list[Job]) -> Iterator[Finished]:
        pool = _Pool(document, registry, options, batch, guard)
        try:
            pool.start(jobs)
        except BaseException:
            pool.close()
            raise
        return _Stream(pool)

    return outcomes
