"""Batches on Ray: Ray Data ``map_batches`` over an actor pool, each actor holding one Runner.

The driver (:mod:`.driver`) reads and validates the rows, decides which to skip, and commits
results; this module only runs the jobs. Each actor builds the registry and a
:class:`~graphrun.engine.executor.Runner` once (so each worker loads the models once), runs a
row into a private scratch folder, and returns the row's files as bytes. The driver writes
them into the row's staging folder and commits it as in a local run, so outputs and manifest are
the same, the output folder need not be shared with the workers, and a worker that dies loses
nothing already committed.

Workers need graphrun (and the graph's plugins, models and input files) where they run. On a
local Ray they chdir to the driver's working directory, so relative paths mean the same there.
"""
from __future__ import annotations

import importlib
import json
import os
import pickle
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .errors import BatchError
from .jobs import Executor, Job, Outcome, run_row
from .types import BatchOptions
from ..context import RunOptions
from ..executor import Runner
from ..graph import Document
from ..node import Registry, builtin_registry, make_registry

if TYPE_CHECKING:
    from .sigint import SigintStop

RAY_MISSING = "--ray needs Ray, which is not installed: pip install graphrun[ray]"
_PLUGIN_PREFIX = "graphrun_plugin_"  # module names Registry.load_plugin_file gives plugin files
_MAX_BLOCKS = 10_000


def require_ray() -> None:
    """Raise :class:`BatchError` naming the install command when Ray Data cannot be imported."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
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


class RowWorker:
    """A Ray Data actor: one Runner for every row it gets (models load once per actor)."""

    def __init__(
        self,
        document: Document,
        recipe: list[tuple[str, str]],
        node_types: list[str],
        options: RunOptions,
        cwd: str,
    ) -> None:
        if os.path.isdir(cwd):
            os.chdir(cwd)  # relative model, plugin and input paths resolve as on the driver
        self.document = document
        self.registry = rebuild_registry(recipe, node_types)
        self.runner = Runner(options)
        self.scratch = Path(tempfile.mkdtemp(prefix="graphrun-ray-"))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        payloads = []
        for row_id, params in zip(batch["id"], batch["params"]):
            folder = self.scratch / str(row_id)
            shutil.rmtree(folder, ignore_errors=True)
            outcome = run_row(self.runner, self.document, self.registry, json.loads(params), folder)
            files: dict[str, bytes] = {}
            if outcome.error is None and folder.is_dir():
                for path in sorted(folder.rglob("*")):
                    if path.is_file():
                        files[path.relative_to(folder).as_posix()] = path.read_bytes()
            shutil.rmtree(folder, ignore_errors=True)
            payloads.append(
                pickle.dumps(
                    {"error": outcome.error, "seconds": outcome.seconds, "reported": outcome.reported, "files": files}
                )
            )
        return {"position": np.asarray(batch["position"]), "payload": np.array(payloads, dtype=object)}


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    root = folder.resolve()
    for name, data in files.items():
        target = (folder / name).resolve()
        if os.path.commonpath([root, target]) != str(root):
            raise RuntimeError(f"a Ray worker returned a file outside its row folder: {name}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def ray_executor(
    document: Document, registry: Registry, options: RunOptions, batch: BatchOptions, guard: "SigintStop"
) -> Executor:
    """An executor running jobs on a Ray actor pool of ``batch.workers`` actors.

    Uses the Ray already initialised in this process, else starts or joins one
    (``batch.ray``: ``"auto"`` or an address) and shuts it down when done.
    """

    def outcomes(jobs: list[Job]) -> Iterator[Outcome]:
        import ray
        from ray.data import ActorPoolStrategy, DataContext

        started = False
        if not ray.is_initialized():
            address = None if batch.ray == "auto" else batch.ray
            ray.init(address=address, include_dashboard=False if address is None else None)
            started = True
            guard.install()  # Ray may have installed its own SIGINT handler
        context = DataContext.get_current()
        saved = (context.execution_options.preserve_order, context.enable_progress_bars)
        # Results in row order, so the manifest lists rows as a local run does; the driver's row
        # bar replaces Ray Data's own progress bars.
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        try:
            items = [
                {"position": i, "id": job.row.id, "params": json.dumps({k: job.resolved[k] for k in job.params})}
                for i, job in enumerate(jobs)
            ]
            remote: dict[str, Any] = {}
            if batch.gpus_per_worker:
                remote["num_gpus"] = batch.gpus_per_worker
            if batch.cpus_per_worker is not None:
                remote["num_cpus"] = batch.cpus_per_worker
            # One row per block: an actor takes whole blocks, so this spreads rows over actors.
            dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), _MAX_BLOCKS)))
            dataset = dataset.map_batches(
                RowWorker,
                batch_size=1,
                compute=ActorPoolStrategy(size=min(batch.workers, len(items))),
                fn_constructor_kwargs={
                    "document": document,
                    "recipe": registry_recipe(registry),
                    "node_types": sorted({node.type for node in document.nodes.values()}),
                    "options": options,
                    "cwd": os.getcwd(),
                },
                **remote,
            )
            waiting: dict[int, bytes] = {}
            expected = 0
            for row in dataset.iter_rows():
                waiting[int(row["position"])] = row["payload"]
                while expected in waiting:  # reorder, should Ray ever hand results out of order
                    data = pickle.loads(waiting.pop(expected))
                    job = jobs[expected]
                    expected += 1
                    error = job.error or data["error"]
                    if error is None:
                        try:
                            _write_files(job.staging, data["files"])
                        except OSError as exc:  # a full disk on the driver: this row fails, the batch goes on
                            error = f"cannot write the row's files into {job.staging}: {exc.strerror or exc}"
                    yield Outcome(error=error, seconds=data["seconds"], reported=data["reported"])
        finally:
            context.execution_options.preserve_order, context.enable_progress_bars = saved
            if started:
                ray.shutdown()

    return outcomes
