"""The batch driver: read the rows, settle which to skip or fail, run the rest through an
executor (local or Ray), and commit each finished row to its folder and the manifest."""
from __future__ import annotations

import json
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, TextIO

from .errors import BatchAborted, BatchError, ChangedRows, diagnostics_text, short_error
from .jobs import Job, Outcome, check_env, local_executor
from .manifest import MANIFEST, Manifest, read_manifest
from .progress import RowProgress
from .rowkey import FileIdentities, RowKey, explain, key_matches, read_record, row_key
from .rows import BatchRow, read_rows
from .sigint import SigintStop
from .staging import STAGING, check_staging_root, commit, discard, prepare, row_files
from .types import REDO_CHOICES, BatchOptions, BatchResult, ProgressMode, RowResult, row_seed
from ..executor import Runner
from ..graph import Document
from ..node import Registry
from ..validate import check

_REDONE = re.compile(r"(.+)~([0-9]+)")  # a redone row's folder: <id>~N, N >= 2
_LISTED = 20  # changed rows named in the error; the rest are counted


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
    output folder unusable or in use, rows whose folders were made by different work, no Ray)
    and :class:`BatchAborted` when the executor fails outside a row.
    """
    _check_options(document, options, overrides)
    if options.ray:
        from .ray_executor import require_ray

        require_ray()  # fail before touching the output folder
    rows = read_rows(options.rows)
    _prepare_out(out_dir)
    staging_root = out_dir / STAGING
    stream = sys.stderr
    with Manifest(out_dir / MANIFEST) as manifest:
        plan = _decide(rows, document, registry, runner, overrides, out_dir, options)
        if plan.changed:
            message = _changed_message(plan.changed, options, out_dir)
            raise ChangedRows(message, [row.id or "" for row, _ in plan.changed])
        decided, jobs = plan.decided, plan.jobs
        skipped = sum(r.status == "skipped" for r in decided.values())
        progress = RowProgress(mode, len(rows) - skipped, stream)
        stop = threading.Event()
        guard = SigintStop(stop, runner.interrupt, stream)
        results: list[RowResult] = []
        result = BatchResult(results, out_dir)
        writer = _ManifestWriter(manifest, result, out_dir, stream)
        if options.ray:
            from .ray_executor import ray_executor

            guard.eager = True
            run = ray_executor(document, registry, runner.options, options, guard)
            with guard:
                _run_unordered(rows, plan, run, result, writer, progress, guard, stop)
            progress.close(result)
            return result
        executor = local_executor(runner, document, registry, stop, progress.node_reporter(), options.batch_size)
        pending = iter(jobs)
        outcomes: Iterator[Outcome] | None = None
        current: Job | None = None
        with guard:
            try:
                for row in rows:
                    if row.index in decided:
                        done = decided[row.index]
                        results.append(done)
                        writer.append(done)
                        if done.status != "skipped":
                            progress.row(done)
                        continue
                    if stop.is_set():
                        result.interrupted = True
                        break
                    current = next(pending)
                    if options.batch_size == 1:  # a grouped executor prepares each group's folders itself
                        prepare_staging(current)
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
                    done = _commit(current, outcome, out_dir)
                    writer.append(done)
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


def _run_unordered(
    rows: list[BatchRow],
    plan: "_Plan",
    run: Any,
    result: BatchResult,
    writer: "_ManifestWriter",
    progress: RowProgress,
    guard: SigintStop,
    stop: threading.Event,
) -> None:
    """Ray: start the pool (a cluster that cannot hold it raises BatchError before any manifest
    line), record the rows that need no run, then commit each row as it finishes, in completion
    order: the manifest lists run rows in that order, ``result.rows`` ends in row order."""
    out_dir = result.out_dir
    uncommitted = {id(job): job for job in plan.jobs}
    outcomes = None
    try:
        if plan.jobs:
            try:
                outcomes = run(plan.jobs)
            except (BatchError, KeyboardInterrupt):
                raise
            except Exception as exc:
                raise BatchAborted(f"the batch stopped: {short_error(exc)}", result) from exc
        for row in rows:
            done = plan.decided.get(row.index)
            if done is not None:
                result.rows.append(done)
                writer.append(done)
                if done.status != "skipped":
                    progress.row(done)
        while outcomes is not None and not stop.is_set():
            try:
                item = next(outcomes, None)
            except (BatchError, KeyboardInterrupt):
                raise
            except Exception as exc:  # run_row never raises: this is Ray, not a row
                raise BatchAborted(f"the batch stopped: {short_error(exc)}", result) from exc
            if item is None:
                break
            job, outcome = item
            if outcome.interrupted:
                result.interrupted = True
                break
            guard.committing = True
            done = _commit(job, outcome, out_dir)
            writer.append(done)
            uncommitted.pop(id(job), None)
            guard.committing = False
            result.rows.append(done)
            progress.row(done)
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        progress.close_bar()
        if outcomes is not None:
            outcomes.close()
        for job in uncommitted.values():
            discard(job.staging)  # rows that were running: absent, never half there
        try:
            (out_dir / STAGING).rmdir()
        except OSError:
            pass  # absent, or holding another row's leftovers
        result.rows.sort(key=lambda r: r.index)
    result.interrupted = result.interrupted or stop.is_set() and len(result.rows) < len(rows)


def prepare_staging(job: Job) -> None:
    """The job's staging folder, fresh and real (what a killed run left there goes); a folder that
    cannot be made fails the row."""
    try:
        prepare(job.staging)
    except OSError as exc:
        job.error = f"cannot create the row's staging folder {job.staging}: {_os_text(exc)}"


def _commit(job: Job, outcome: Outcome, out_dir: Path) -> RowResult:
    """Commit a finished row; a row folder the disk refuses (full, quota, vanished) fails the row."""
    try:
        done = commit(job, outcome, out_dir)
    except OSError as exc:
        done = RowResult(
            job.row.index, job.row.id, "failed", job.resolved, seconds=outcome.seconds,
            error=f"cannot write the row folder {out_dir / job.folder}: {_os_text(exc)}",
        )
    done.seed_source = job.seed_source
    return done


def _os_text(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


class _ManifestWriter:
    """Appends manifest lines; a line that cannot be written is said once on stderr and the batch
    goes on (the row folders still carry their records), ending non-zero."""

    def __init__(self, manifest: Manifest, result: BatchResult, out_dir: Path, stream: TextIO) -> None:
        self.manifest = manifest
        self.result = result
        self.out_dir = out_dir
        self.stream = stream

    def append(self, done: RowResult) -> None:
        try:
            self.manifest.append(done.record(self.out_dir))
        except OSError as exc:
            if self.result.manifest_error is None:
                self.result.manifest_error = _os_text(exc)
                print(
                    f"error: cannot write the manifest {self.manifest.path}: {_os_text(exc)}; the batch goes on "
                    "and finished rows keep their folders, but the manifest misses rows: run the batch again "
                    "once fixed to record them (finished rows are then skipped)",
                    file=self.stream,
                    flush=True,
                )


def _check_options(document: Document, options: BatchOptions, overrides: Mapping[str, Any]) -> None:
    if options.workers < 1:
        raise BatchError("--workers must be at least 1")
    if options.gpus_per_worker < 0:
        raise BatchError("--gpus-per-worker cannot be negative")
    if options.cpus_per_worker is not None and options.cpus_per_worker < 0:
        raise BatchError("--cpus-per-worker cannot be negative")
    if options.max_workers is not None and options.max_workers < options.workers:
        raise BatchError(f"--workers {options.workers}:{options.max_workers}: the most workers cannot be "
                         "fewer than the least")
    if options.max_retries < 0:
        raise BatchError("--max-retries cannot be negative")
    if not options.start_timeout > 0:
        raise BatchError("--worker-start-timeout must be more than 0 seconds")
    if not isinstance(options.batch_size, int) or isinstance(options.batch_size, bool) or options.batch_size < 1:
        raise BatchError(f"--batch-size {options.batch_size!r}: give a whole number of rows, 1 or more")
    if options.redo is not None and options.redo not in REDO_CHOICES:
        raise BatchError(f"--redo {options.redo!r}: use --redo changed")
    if options.seed_from_row_id:
        if "seed" not in document.params:
            raise BatchError(
                "--seed-per-row sets the graph's `seed` param, but the graph declares none: add "
                "`seed: 0` under params and use $seed in the sampler"
            )
        if "seed" in overrides:
            raise BatchError("--seed-per-row gives every row its own seed; drop --set seed=... (or the option)")


def _prepare_out(out_dir: Path) -> None:
    """The output folder, created if needed; a clear error when it cannot hold a batch."""
    if out_dir.exists() and not out_dir.is_dir():
        raise BatchError(f"--out {out_dir} is a file, not a folder: give a folder for the row folders and the manifest")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BatchError(f"cannot create the output folder {out_dir}: {_os_text(exc)}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise BatchError(f"the output folder {out_dir} is not writable")
    check_staging_root(out_dir)


@dataclass
class _Plan:
    decided: dict[int, RowResult] = field(default_factory=dict)  # rows skipped or unable to run, by index
    jobs: list[Job] = field(default_factory=list)  # rows to run, in row order
    changed: list[tuple[BatchRow, str]] = field(default_factory=list)  # (row, what changed) when not redoing


def _existing_folders(out_dir: Path) -> dict[str, dict[int, str]]:
    """Row id -> {run number: folder name} for every entry in ``out_dir`` (``<id>`` is run 1)."""
    found: dict[str, dict[int, str]] = {}
    for entry in os.scandir(out_dir):
        match = _REDONE.fullmatch(entry.name)
        if match and int(match.group(2)) >= 2:
            found.setdefault(match.group(1), {})[int(match.group(2))] = entry.name
        else:
            found.setdefault(entry.name, {})[1] = entry.name
    return found


def _folder_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a row folder graphrun made (never followed when it is a link)."""
    if path.is_symlink():
        return "it is a symbolic link, not a row folder graphrun made"
    if not path.is_dir():
        return "it is a file, not a row folder"
    return None


def _decide(
    rows: list[BatchRow],
    document: Document,
    registry: Registry,
    runner: Runner,
    overrides: Mapping[str, Any],
    out_dir: Path,
    options: BatchOptions,
) -> _Plan:
    """Settle every row before running any: skip a row only when one of its folders was made
    with the row's current key; a row whose folders were made otherwise is changed."""
    latest = read_manifest(out_dir)
    folders = _existing_folders(out_dir)
    env = check_env(document, runner.options)
    identities = FileIdentities(runner.options, env.graph_dir, out_dir)
    plan = _Plan()
    for row in rows:
        params = {**overrides, **row.values}
        if row.named and "id" in document.params:
            params["id"] = row.id  # a graph that declares an `id` param receives the row's id
        seed_source = None
        if options.seed_from_row_id:
            seed_source = "row" if "seed" in row.values else "row id"
            if row.id is not None and "seed" not in row.values:
                params["seed"] = row_seed(row.id)
        if row.error is not None:
            plan.decided[row.index] = RowResult(row.index, row.id, "failed", _json_safe(params), error=row.error,
                                                seed_source=seed_source)
            continue
        assert row.id is not None
        graph, diags = check(document, registry, params, env)
        if graph is None:
            plan.decided[row.index] = RowResult(row.index, row.id, "failed", _json_safe(params),
                                                error=diagnostics_text(diags), seed_source=seed_source)
            continue
        key = row_key(graph, runner.options, identities)
        resolved = key.params
        runs = folders.get(row.id, {})
        match, newest_problem = _match(out_dir, runs, key)
        if match is not None:
            names = row_files(out_dir / match, _reported(latest.get(row.id), match))
            files = [out_dir / match / name for name in names]
            plan.decided[row.index] = RowResult(row.index, row.id, "skipped", resolved, files, folder=match,
                                                key=key.key, seed_source=seed_source)
            continue
        folder, replaces = row.id, None
        if runs:
            if options.redo != "changed":
                plan.changed.append((row, f"{out_dir / runs[max(runs)]}: {newest_problem}"))
                continue
            folder, replaces = f"{row.id}~{max(max(runs), 1) + 1}", runs[max(runs)]
        plan.jobs.append(Job(row, params, resolved, out_dir / STAGING / folder, folder=folder, key=key,
                             replaces=replaces, seed_source=seed_source))
    return plan


def _match(out_dir: Path, runs: dict[int, str], key: RowKey) -> tuple[str | None, str]:
    """(the newest of a row's folders made with ``key``, or None; what differs in its newest folder)."""
    newest_problem = ""
    for number in sorted(runs, reverse=True):
        path = out_dir / runs[number]
        problem = _folder_problem(path)
        if problem is None:
            record = read_record(path)
            if key_matches(record, key):
                return runs[number], ""
            problem = explain(record, key)
        if not newest_problem:
            newest_problem = problem
    return None, newest_problem


def _changed_message(changed: list[tuple[BatchRow, str]], options: BatchOptions, out_dir: Path) -> str:
    source = f"of {options.rows} " if isinstance(options.rows, Path) else ""
    count = len(changed)
    lines = [
        f"{count} row{'s' if count != 1 else ''} {source}already {'have folders' if count != 1 else 'has a folder'} "
        "made from different inputs, so skipping "
        f"{'them' if count != 1 else 'it'} would keep a stale result:"
    ]
    lines += [f"  {reason}" for _, reason in changed[:_LISTED]]
    if count > _LISTED:
        lines.append(f"  ... and {count - _LISTED} more")
    if any(not row.named and row.id == f"{row.index:05d}" for row, _ in changed):
        lines.append(
            "Rows without an `id` are named by their position, so adding or removing a row renames the rows "
            "after it: give each row an `id` (a .txt line is named by its text)."
        )
    lines.append(
        f"Nothing was rendered. To render them again into new folders ({out_dir}/<id>~2/; the old folders are "
        "kept), add --redo changed (Python: redo=\"changed\"); or delete those folders, or use another --out."
    )
    return "\n".join(lines)


def _reported(record: dict[str, Any] | None, folder: str) -> list[str]:
    """The files a manifest record lists, relative to the row folder."""
    if not record or record.get("status") not in ("ok", "skipped"):
        return []
    prefix = f"{folder}/"
    return [f[len(prefix):] for f in record.get("files") or [] if isinstance(f, str) and f.startswith(prefix)]


def _json_safe(values: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(values), default=str))
