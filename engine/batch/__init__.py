"""Batches: run one graph once per row of a table, models loaded once.

``graphrun GRAPH --batch ROWS --out DIR`` or :func:`batch` from Python. ROWS is a ``.jsonl``
file (one JSON object a line), a ``.csv`` file (a header, then one row a line) or a ``.txt``
file (one prompt a line: it sets the ``prompt`` param). Blank lines are skipped. Each row's keys
name graph params (``--set`` values apply to every row; a row's own values win); the ``id`` key
names the row. A JSON ``null`` or an empty CSV cell leaves the param at its default.

One :class:`~graphrun.engine.executor.Runner` runs every row, so models and every result that
does not depend on the row's values are computed once.

Output naming
    Each row gets its own folder ``DIR/<id>/`` (the id rules are in :mod:`.rows`: the ``id``
    value, else for a prompt row a slug and hash of its text, else the row's position). The graph
    runs with that folder as its output folder (``RunOptions.output_dir``), so any output node that
    writes under the output folder works unchanged, with its own file names inside:
    ``DIR/00003/zimage_00001_.png``. A row runs in ``DIR/.partial/<id>/`` and that folder is
    renamed to ``DIR/<id>/`` only once the row has finished, so ``DIR/<id>/`` exists exactly when
    the row is complete; an interrupted or failed row leaves nothing behind.

Resume
    Each row folder holds ``.graphrun-row.json``, the row's key: what produced it (the cache
    keys of the output nodes, so the graph and every value that reaches an output, ``--set``
    values included; the identity of the files it read; the ComfyUI version and ``--dtype``; see
    :mod:`.rowkey`). A re-run skips a row only when one of its folders has the row's key now. When a row's folder was made from
    different inputs (an edited prompt or param, a ``--set`` value, an edited graph, a replaced
    model file), or has no key (an older graphrun), the batch stops before rendering anything and
    lists those rows (:class:`ChangedRows`, exit 2). ``redo="changed"`` (``--redo changed``)
    renders them again into ``DIR/<id>~2/`` (``~3``, ... next time), never touching the old
    folder; the manifest line says which folder it ``replaces``. Later runs skip a row whose
    newest matching folder exists.

Seeds
    A row's seed is its ``seed`` value when it has one, else ``--set seed=N``, else the graph's
    ``seed`` default: the same for every row. ``seed_from_row_id=True`` (``--seed-per-row``) gives
    each row without its own seed one derived from its row id (:func:`row_seed`), the same on
    every run; the manifest records it in ``params`` and says ``"seed_source": "row id"``.

Manifest
    ``DIR/manifest.jsonl``: one JSON object per row outcome, appended and fsynced as each row
    ends, never rewritten. Keys: ``row`` (position), ``id`` (null for a row that could not be
    named: a bad or duplicate id), ``status`` (``ok``, ``failed`` or ``skipped``), ``folder`` (the
    row folder's name; null unless ok or skipped), ``params`` (every param value the row ran
    with; for a row that failed validation, the values it gave), ``files`` (output files relative
    to DIR, in the order the output nodes returned them), ``error`` (null unless failed),
    ``seconds``, ``time`` (UTC, ISO 8601) and ``key`` (the row key); ``replaces`` for a redone row
    and ``seed_source`` with ``seed_from_row_id``. Every row of every run gets a line, skipped rows
    too; for each id the last line wins (:func:`read_manifest`). If a line cannot be written (a
    full disk) the batch says so once on stderr, goes on, and ends with exit 1; the row folders
    still hold their keys, so a re-run records them as skipped.

Failures and Ctrl-C
    A row that cannot be read, has an unknown or mistyped param, or fails while running (a full
    disk included) is recorded ``failed`` and the batch goes on. Ctrl-C stops at the next step boundary: finished
    rows stay, the current row's outputs are removed, the manifest stays valid. Exit codes
    (:func:`run_batch`): 0 all rows ok or skipped, 1 any row failed (or the manifest could not be
    written), 2 the batch could not start (bad rows file or output folder, changed rows), 130
    interrupted.

Safety
    Nothing is written or deleted outside DIR: a symbolic link at ``DIR/.partial`` or at the
    manifest is refused; a link where a row folder or staging folder would be is never followed
    (a row folder that is a link counts as changed; a staging link is removed as a link).

Ray
    ``--ray [ADDRESS]`` runs the rows on a pool of Ray workers (see :mod:`.ray_executor`); the driver
    validates rows and commits each row as it finishes. Workers that can reach the output folder write
    rows there directly, the others send the files to the driver. Outputs and manifest lines are those
    of a local run; run rows are listed in the order they finished.

Modules
    This package's entry points are :func:`batch` and :func:`run_batch`; the work is split by
    concept: :mod:`.types` (options, results, exit codes), :mod:`.errors`, :mod:`.rows` (reading
    rows, id rules), :mod:`.rowkey` (what made a row folder), :mod:`.manifest` (manifest and lock),
    :mod:`.staging` (``.partial`` folders
    and the commit rename), :mod:`.jobs` (running one row, the local executor),
    :mod:`.ray_executor` (the Ray executor), :mod:`.progress` (progress over rows),
    :mod:`.sigint` (Ctrl-C) and :mod:`.driver` (the loop that ties them together).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Union

from .driver import execute
from .errors import BatchAborted, BatchError, ChangedRows
from .manifest import read_manifest
from .progress import mode_for
from .rows import read_rows
from .types import EXIT_FAILED, EXIT_INVALID, BatchOptions, BatchResult, ProgressMode, Redo, RowResult, row_seed
from ..executor import Runner
from ..graph import Document
from ..node import Registry

# Part of the batch API too: the folder names and the row and job types.
from .jobs import Executor, Job, Outcome, run_row  # noqa: F401
from .manifest import MANIFEST  # noqa: F401
from .rowkey import ROW_RECORD  # noqa: F401
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
    ray_only = batch.workers != 1 or batch.gpus_per_worker or batch.max_workers is not None or (
        batch.max_retries != 3 or batch.start_timeout != 60.0 or not batch.shared_out)
    if not batch.ray and ray_only:
        print("warning: --workers, --gpus-per-worker, --max-retries, --worker-start-timeout and --no-shared-out "
              "apply to --ray only; running locally", file=sys.stderr)
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
    redo: Redo | None = None,
    seed_from_row_id: bool = False,
    batch_size: int = 1,
    max_workers: int | None = None,
    max_retries: int = 3,
    start_timeout: float = 60.0,
    shared_out: bool = True,
) -> BatchResult:
    """Run ``graph`` once per row and return every row's result.

    ``graph``: a :class:`~graphrun.engine.api.Graph` (its registry and runner are used, so its
    cached models serve the batch), or a path/YAML text/dict to load. ``rows``: a rows file or
    an iterable of mappings (param values, optional ``id``) or prompt strings. ``params`` apply
    to every row, under the row's own values. ``ray``: True or ``"auto"`` for a local Ray, or
    an address; a Ray already initialised in this process is used as it is. Outputs go to
    ``out_dir/<id>/`` and ``out_dir/manifest.jsonl`` (see the module docs). ``redo="changed"``
    renders rows whose folders were made from different inputs into new folders ``<id>~N``
    (without it they raise :class:`ChangedRows`); ``seed_from_row_id`` derives each row's seed
    from its id (:func:`row_seed`). ``batch_size`` runs rows N at a time, batchable nodes on the whole group
    in one call (see :class:`BatchOptions`). On Ray, ``workers`` (to ``max_workers``: a pool that grows and
    shrinks), ``max_retries``, ``start_timeout`` and ``shared_out`` are as :class:`BatchOptions` describes.

    Ctrl-C (in the main thread) stops the batch cleanly and returns with ``interrupted=True``;
    ``result.exit_code`` is what the CLI would exit with. Raises :class:`BatchError` when the
    batch cannot start (unreadable rows file, output folder unusable or in use, changed rows,
    Ray not installed).
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
        redo=redo,
        seed_from_row_id=seed_from_row_id,
        batch_size=batch_size,
        max_workers=max_workers,
        max_retries=max_retries,
        start_timeout=start_timeout,
        shared_out=shared_out,
    )
    return execute(graph.document, graph.registry, use, options, dict(params or {}), Path(out_dir), progress)


__all__ = [
    "BatchAborted",
    "BatchError",
    "BatchOptions",
    "BatchResult",
    "ChangedRows",
    "RowResult",
    "batch",
    "read_manifest",
    "read_rows",
    "row_seed",
    "run_batch",
]
