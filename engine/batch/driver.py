"""The batch driver: read the rows, settle which to skip or fail, run the rest through an
executor (local or Ray), and commit each finished row to its folder and the manifest."""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping

from .errors import BatchAborted, BatchError, diagnostics_text, short_error
from .jobs import Job, Outcome, local_executor
from .manifest import MANIFEST, Manifest, read_manifest
from .progress import RowProgress
from .rows import BatchRow, read_rows
from .sigint import SigintStop
from .staging import STAGING, commit, discard, row_files
from .types import BatchOptions, BatchResult, ProgressMode, RowResult
from ..executor import Runner
from ..graph import Document
from ..node import Registry
from ..validate import check


def execute(
    document: Document,
    registry: Registry,
    runner: Runner,
    options: BatchOptions,
    overrides: Mapping[str, Any],
    out_dir: Path,
    mode: ProgressMode,
) -> BatchResult:
    """Run the batch ``options`` describes into ``out_dir``; ``overrides`` apply under each row's values.

    Raises :class:`BatchError` when the batch cannot start (bad options, unreadable rows file,
    output folder in use, no Ray) and :class:`BatchAborted` when the executor fails outside a row.
    """
    if options.workers < 1:
        raise BatchError("--workers must be at least 1")
    if options.gpus_per_worker < 0:
        raise BatchError("--gpus-per-worker cannot be negative")
    if options.ray:
        from .ray_executor import require_ray

        require_ray()  # fail before touching the output folder
    rows = read_rows(options.rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging_root = out_dir / STAGING
    stream = sys.stderr
    with Manifest(out_dir / MANIFEST) as manifest:
        decided, recover, jobs = _decide(rows, document, registry, overrides, out_dir)
        skipped = sum(r.status == "skipped" for r in decided.values())
        progress = RowProgress(mode, len(rows) - skipped, stream)
        stop = threading.Event()
        guard = SigintStop(stop, runner.interrupt, stream)
        if options.ray:
            from .ray_executor import ray_executor

            guard.eager = True
            executor = ray_executor(document, registry, runner.options, options, guard)
        else:
            executor = local_executor(runner, document, registry, stop, progress.node_reporter())
        results: list[RowResult] = []
        result = BatchResult(results, out_dir)
        pending = iter(jobs)
        outcomes: Iterator[Outcome] | None = None
        current: Job | None = None
        with guard:
            try:
                for row in rows:
                    if row.index in decided:
                        done = decided[row.index]
                        results.append(done)
                        if done.status == "failed" or row.index in recover:
                            manifest.append(done.record(out_dir))
                        if done.status != "skipped":
                            progress.row(done)
                        continue
                    if stop.is_set():
                        result.interrupted = True
                        break
                    current = next(pending)
                    discard(current.staging)  # left by a run killed mid-row
                    if outcomes is None:
                        outcomes = executor(jobs)  # started lazily: no Ray start for a batch with nothing to run
                    try:
                        outcome = next(outcomes, None)
                    except Exception as exc:  # run_row never raises: this is Ray, not a row
                        raise BatchAborted(f"the batch stopped: {short_error(exc)}", result) from exc
                    if outcome is None or outcome.interrupted:
                        result.interrupted = True
                        break
                    guard.committing = True
                    done = commit(current, outcome, out_dir)
                    manifest.append(done.record(out_dir))
                    guard.committing = False
                    current = None
                    results.append(done)
                    progress.row(done)
            except KeyboardInterrupt:
                result.interrupted = True
            finally:
                progress.close_bar()
                if current is not None:
                    discard(current.staging)  # the row that was running: absent, never half there
                if outcomes is not None:
                    close = getattr(outcomes, "close", None)
                    if close is not None:
                        close()
                try:
                    staging_root.rmdir()
                except OSError:
                    pass  # absent, or holding another row's leftovers
        result.interrupted = result.interrupted or stop.is_set() and len(results) < len(rows)
        progress.close(result)
    return result


def _decide(
    rows: list[BatchRow], document: Document, registry: Registry, overrides: Mapping[str, Any], out_dir: Path
) -> tuple[dict[int, RowResult], set[int], list[Job]]:
    """Settle every row before running any: (rows already complete or unable to run, by index;
    the complete ones the manifest must still record; the jobs to run, in row order)."""
    latest = read_manifest(out_dir)
    decided: dict[int, RowResult] = {}
    recover: set[int] = set()
    jobs: list[Job] = []
    for row in rows:
        params = {**overrides, **row.values}
        if row.named and "id" in document.params:
            params["id"] = row.id  # a graph that declares an `id` param receives the row's id
        if row.error is not None:
            decided[row.index] = RowResult(row.index, row.id, "failed", _json_safe(params), error=row.error)
            continue
        assert row.id is not None
        final = out_dir / row.id
        graph, diags = check(document, registry, params)
        resolved = dict(graph.params) if graph is not None else _json_safe(params)
        if final.is_dir():
            record = latest.get(row.id) or {}
            files = [final / name for name in row_files(final, _reported(record, row.id))]
            decided[row.index] = RowResult(row.index, row.id, "skipped", resolved, files)
            if record.get("status") != "ok":
                recover.add(row.index)  # complete on disk but not recorded (killed between the two)
            continue
        if graph is None:
            decided[row.index] = RowResult(row.index, row.id, "failed", resolved, error=diagnostics_text(diags))
            continue
        jobs.append(Job(row, params, resolved, out_dir / STAGING / row.id))
    return decided, recover, jobs


def _reported(record: dict[str, Any], row_id: str) -> list[str]:
    """The files a manifest record lists, relative to the row folder."""
    if record.get("status") not in ("ok", "skipped"):
        return []
    prefix = f"{row_id}/"
    return [f[len(prefix):] for f in record.get("files") or [] if isinstance(f, str) and f.startswith(prefix)]


def _json_safe(values: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(values), default=str))
