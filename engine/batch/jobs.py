"""Running rows: a :class:`Job` (a validated row and its staging folder), its :class:`Outcome`,
:func:`run_row` (one row on a Runner, locally or in a Ray actor) and the executors that turn
jobs into outcomes; the local one is here, the Ray one in :mod:`.ray_executor`."""
from __future__ import annotations

import dataclasses
import threading
import time
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
    return CheckEnv(graph_dir=Path(document.file).parent if document.file else None, options=dict(options.extra))


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
    reported = []
    root = out_dir.resolve()
    for path in result.files:
        try:
            reported.append(Path(path).resolve().relative_to(root).as_posix())
        except ValueError:
            continue  # written outside the row folder: not part of the row's outputs
    return Outcome(seconds=time.perf_counter() - started, reported=reported)


Executor = Callable[[list[Job]], Iterator[Outcome]]
"""Runs jobs in order, yielding one outcome per job with its files in the job's staging folder.
It may stop early (Ctrl-C), by returning or by yielding an interrupted outcome."""


def local_executor(
    runner: Runner, document: Document, registry: Registry, stop: threading.Event, reporter: Reporter
) -> Executor:
    """An executor running jobs one after another on ``runner`` in this process, until ``stop``."""

    def outcomes(jobs: list[Job]) -> Iterator[Outcome]:
        for job in jobs:
            if stop.is_set():
                return
            if job.error is not None:
                yield Outcome(error=job.error)
                continue
            yield run_row(runner, document, registry, job.params, job.staging, reporter)

    return outcomes
