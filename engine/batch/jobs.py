"""Running rows: a :class:`Job` (a validated row and its staging folder), its :class:`Outcome`,
:func:`run_row` (one row on a Runner, locally or in a Ray actor) and the executors that turn
jobs into outcomes; the local one is here, the Ray one in :mod:`.ray_executor`."""
from __future__ import annotations

import dataclasses
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import diagnostics_text, row_error_text
from .rows import BatchRow
from .rowkey import RowKey
from ..context import Interrupted, RunOptions
from ..executor import Runner
from ..graph import Document
from ..node import CheckEnv, Registry
from ..progress import Reporter
from ..validate import check


@dataclass
class Job:
    """A row that will run: its validated param overrides, its staging folder and the folder it
    becomes (the row id, or ``<id>~N`` when a changed row is redone)."""

    row: BatchRow
    params: dict[str, Any]  # the overrides to bind with (already known to validate)
    resolved: dict[str, Any]  # every param value, for the manifest
    staging: Path
    folder: str = ""
    key: RowKey | None = None
    replaces: str | None = None  # the folder of an earlier, different run of this row (kept)
    seed_source: str | None = None  # with seed_from_row_id: where the row's seed came from
    error: str | None = None  # set when the row cannot run after all (its staging folder failed)


@dataclass
class Outcome:
    """A finished job. Its files are in ``job.staging`` by the time the outcome is handed over."""

    error: str | None = None
    seconds: float = 0.0
    reported: list[str] = field(default_factory=list)  # files the output nodes returned, relative to staging
    interrupted: bool = False


def check_env(document: Document, options: RunOptions) -> CheckEnv:
    """What a row's validation consults: the graph's folder and the run's model search settings
    (``--models-dir``, ``--extra-model-paths``), as for a single run."""
    return CheckEnv(graph_dir=Path(document.file).parent if document.file else None, options=dict(options.extra),
                    comfy_version=options.comfy or "")


def run_row(
    runner: Runner,
    document: Document,
    registry: Registry,
    params: dict[str, Any],
    out_dir: Path,
    reporter: Reporter | None = None,
) -> Outcome:
    """Run one row with ``out_dir`` as the output folder (used locally and by Ray actors).

    Never raises for a failing row: the error is in the outcome. Ctrl-C (``Interrupted``) comes
    back as ``interrupted``.
    """
    started = time.perf_counter()
    graph, diags = check(document, registry, params, check_env(document, runner.options))
    if graph is None:
        return Outcome(error=diagnostics_text(diags), seconds=time.perf_counter() - started)
    base = runner.options
    runner.options = dataclasses.replace(base, output_dir=out_dir)
    try:
        result = runner.run(graph, reporter=reporter)
    except Interrupted:
        return Outcome(interrupted=True, seconds=time.perf_counter() - started)
    except Exception as exc:  # a failing row is data, not a crash: the batch goes on
        return Outcome(error=row_error_text(exc), seconds=time.perf_counter() - started)
    finally:
        runner.options = base
    return Outcome(seconds=time.perf_counter() - started, reported=_reported(result, out_dir))


def _reported(result: Any, out_dir: Path) -> list[str]:
    reported = []
    root = out_dir.resolve()
    for path in result.files:
        try:
            reported.append(Path(path).resolve().relative_to(root).as_posix())
        except ValueError:
            continue  # written outside the row folder: not part of the row's outputs
    return reported


def run_row_group(
    runner: Runner,
    document: Document,
    registry: Registry,
    rows: list[tuple[dict[str, Any], Path]],
    reporter: Reporter | None = None,
    notes: Any = None,
) -> list[Outcome]:
    """Run several rows (``(params, out_dir)`` each) together (see :mod:`graphrun.engine.batched`): one
    Outcome per row, in order. A row that fails validation or a node fails alone; Ctrl-C interrupts all."""
    from ..batched import run_rows

    started = time.perf_counter()
    outcomes: list[Outcome | None] = [None] * len(rows)
    graphs, places = [], []
    for i, (params, _) in enumerate(rows):
        graph, diags = check(document, registry, params, check_env(document, runner.options))
        if graph is None:
            outcomes[i] = Outcome(error=diagnostics_text(diags))
        else:
            graphs.append(graph)
            places.append(i)
    options = [dataclasses.replace(runner.options, output_dir=rows[i][1]) for i in places]
    try:
        results = run_rows(runner, graphs, options, reporter=reporter, report=notes)
    except Interrupted:
        return [o if o is not None else Outcome(interrupted=True) for o in outcomes]
    except Exception as exc:  # a bug in grouping: every row of the group says so, the batch goes on
        return [o if o is not None else Outcome(error=row_error_text(exc)) for o in outcomes]
    seconds = (time.perf_counter() - started) / max(len(rows), 1)
    for i, result in zip(places, results):
        if isinstance(result, Exception):
            outcomes[i] = Outcome(error=row_error_text(result), seconds=seconds)
        else:
            outcomes[i] = Outcome(seconds=seconds, reported=_reported(result, rows[i][1]))
    return [o for o in outcomes if o is not None]


Executor = Callable[[list[Job]], Iterator[Outcome]]
"""Runs jobs in order, yielding one outcome per job with its files in the job's staging folder.
It may stop early (Ctrl-C), by returning or by yielding an interrupted outcome."""


def local_executor(
    runner: Runner, document: Document, registry: Registry, stop: threading.Event, reporter: Reporter,
    batch_size: int = 1,
) -> Executor:
    """An executor running jobs on ``runner`` in this process until ``stop``: one after another, or
    ``batch_size`` at a time through :func:`run_row_group`."""

    def one_by_one(jobs: list[Job]) -> Iterator[Outcome]:
        for job in jobs:
            if stop.is_set():
                return
            if job.error is not None:
                yield Outcome(error=job.error)
                continue
            yield run_row(runner, document, registry, job.params, job.staging, reporter)

    def grouped(jobs: list[Job]) -> Iterator[Outcome]:
        from ..batched import RowsReport
        from .driver import prepare_staging

        notes = RowsReport()
        told = False
        for start in range(0, len(jobs), batch_size):
            if stop.is_set():
                return
            group = jobs[start:start + batch_size]
            for job in group:
                if job.error is None:
                    prepare_staging(job)
            runnable = [job for job in group if job.error is None]
            done = iter(run_row_group(runner, document, registry, [(j.params, j.staging) for j in runnable],
                                      reporter, notes))
            if notes.one_by_one and not told:
                told = True
                warnings.warn(f"--batch-size {batch_size}: node(s) {', '.join(notes.one_by_one)} have no batched "
                              "form and run one row at a time (the rest of each group still runs together)")
            for job in group:
                outcome = Outcome(error=job.error) if job.error is not None else next(done)
                yield outcome
                if outcome.interrupted:
                    return

    return grouped if batch_size > 1 else one_by_one
