"""Batches: run one graph once per row of a table, models loaded once.

``graphrun GRAPH --batch ROWS --out DIR`` or :func:`batch` from Python. ROWS is a ``.jsonl``
file (one JSON object a line), a ``.csv`` file (a header, then one row a line) or a ``.txt``
file (one prompt a line: it sets the ``prompt`` param). Blank lines are skipped. Each row's keys
name graph params (``--set`` values apply to every row; a row's own values win); the ``id`` key
names the row. A JSON ``null`` or an empty CSV cell leaves the param at its default.

One :class:`~graphrun.engine.executor.Runner` runs every row, so models and every result that
does not depend on the row's values are computed once.

Output naming
    Each row gets its own folder ``DIR/<id>/``; ``<id>`` is the row's ``id`` value (letters,
    digits, ``.``, ``_``, ``-``; not starting with ``.``) or else the row's position among the
    non-blank rows, zero-padded (``00000``, ``00001``, ...). The graph runs with that folder as its
    output folder (``RunOptions.output_dir``), so any output node that writes under the output
    folder works unchanged, with its own file names inside: ``DIR/00003/zimage_00001_.png``.
    A row runs in ``DIR/.partial/<id>/`` and that folder is renamed to ``DIR/<id>/`` only once the
    row has finished, so ``DIR/<id>/`` exists exactly when the row is complete: a re-run skips
    those rows, and an interrupted or failed row leaves nothing behind. To redo a row, delete its
    folder. Rows keyed by position shift when rows are inserted: give rows an ``id`` when the
    file will be edited between runs.

Manifest
    ``DIR/manifest.jsonl``: one JSON object per row outcome, appended and fsynced as each row
    ends, never rewritten. Keys: ``row`` (position), ``id`` (null for a row that could not be
    named: a bad or duplicate id), ``status`` (``ok``, ``failed`` or ``skipped``), ``params``
    (every param value the row ran with; for a row that failed validation, the values it gave),
    ``files`` (output files relative to DIR, in the order the output nodes returned them),
    ``error`` (null unless failed), ``seconds`` and ``time`` (UTC, ISO 8601). A re-run appends;
    for each id the last line wins (:func:`read_manifest`). ``skipped`` lines are written only for
    a complete row folder the manifest does not record as ``ok`` (say, a run killed between
    finishing a row and writing its line); rows already recorded ``ok`` are skipped silently.

Failures and Ctrl-C
    A row that cannot be read, has an unknown or mistyped param, or fails while running is
    recorded ``failed`` and the batch goes on. Ctrl-C stops at the next step boundary: finished
    rows stay, the current row's outputs are removed, the manifest stays valid. Exit codes
    (:func:`run_batch`): 0 all rows ok or skipped, 1 any row failed, 130 interrupted.

Ray
    ``--ray [ADDRESS]`` runs the rows on a Ray actor pool (see :mod:`.ray_executor`); the driver
    still validates rows, writes every file and the manifest, so the outputs and the manifest are
    those of a local run.

Modules
    This package's entry points are :func:`batch` and :func:`run_batch`; the work is split by
    concept: :mod:`.types` (options, results, exit codes), :mod:`.errors`, :mod:`.rows` (reading
    rows, id rules), :mod:`.manifest` (manifest and lock), :mod:`.staging` (``.partial`` folders
    and the commit rename), :mod:`.jobs` (running one row, the local executor),
    :mod:`.ray_executor` (the Ray executor), :mod:`.progress` (progress over rows),
    :mod:`.sigint` (Ctrl-C) and :mod:`.driver` (the loop that ties them together).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Union

from .driver import execute
from .errors import BatchAborted, BatchError
from .manifest import read_manifest
from .progress import mode_for
from .rows import read_rows
from .types import EXIT_FAILED, EXIT_INVALID, BatchOptions, BatchResult, ProgressMode, RowResult
from ..executor import Runner
from ..graph import Document
from ..node import Registry

# Part of the batch API too: the folder names and the row and job types.
from .jobs import Executor, Job, Outcome, run_row  # noqa: F401
from .manifest import MANIFEST  # noqa: F401
from .rows import BatchRow  # noqa: F401
from .staging import STAGING  # noqa: F401

if TYPE_CHECKING:
    from ..api import Graph


def run_batch(
    doc: Document, registry: Registry, runner: Runner, batch: BatchOptions, overrides: Mapping[str, Any]
) -> int:
    """The CLI's ``--batch``: run, print the manifest path on stdout, return the exit code.

    The output folder is ``runner.options.output_dir``; the row display follows the runner's
    reporter (``--progress``).
    """
    mode = batch.progress or mode_for(runner.reporter)
    if not batch.ray and (batch.workers != 1 or batch.gpus_per_worker):
        print("warning: --workers and --gpus-per-worker apply to --ray only; running locally", file=sys.stderr)
    try:
        result = execute(doc, registry, runner, batch, overrides, Path(runner.options.output_dir), mode)
    except BatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except BatchAborted as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(f"finished rows are recorded in {exc.result.manifest}; run again to do the rest", file=sys.stderr)
        return EXIT_FAILED
    print(result.manifest)
    return result.exit_code


def batch(
    graph: Union["Graph", str, Path, dict],
    rows: Union[str, Path, Iterable[Union[Mapping[str, Any], str]]],
    out_dir: Union[str, Path] = "output",
    *,
    params: Mapping[str, Any] | None = None,
    ray: Union[str, bool, None] = None,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float | None = None,
    progress: ProgressMode = "auto",
    runner: Runner | None = None,
    plugins: Iterable[Union[str, Path]] = (),
) -> BatchResult:
    """Run ``graph`` once per row and return every row's result.

    ``graph``: a :class:`~graphrun.engine.api.Graph` (its registry and runner are used, so its
    cached models serve the batch), or a path/YAML text/dict to load. ``rows``: a rows file or
    an iterable of mappings (param values, optional ``id``) or prompt strings. ``params`` apply
    to every row, under the row's own values. ``ray``: True or ``"auto"`` for a local Ray, or
    an address; a Ray already initialised in this process is used as it is. Outputs go to
    ``out_dir/<id>/`` and ``out_dir/manifest.jsonl`` (see the module docs).

    Ctrl-C (in the main thread) stops the batch cleanly and returns with ``interrupted=True``;
    ``result.exit_code`` is what the CLI would exit with. Raises :class:`BatchError` when the
    batch cannot start (unreadable rows file, output folder in use, Ray not installed).
    """
    from ..api import Graph, load

    if not isinstance(graph, Graph):
        graph = load(graph, plugins=list(plugins))
    use = runner or graph.runner
    options = BatchOptions(
        rows=Path(rows) if isinstance(rows, str) else rows,
        ray=("auto" if ray is True else ray) or None,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        cpus_per_worker=cpus_per_worker,
        progress=progress,
    )
    return execute(graph.document, graph.registry, use, options, dict(params or {}), Path(out_dir), progress)


__all__ = [
    "BatchAborted",
    "BatchError",
    "BatchOptions",
    "BatchResult",
    "RowResult",
    "batch",
    "read_manifest",
    "read_rows",
    "run_batch",
]
