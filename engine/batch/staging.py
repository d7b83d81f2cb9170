"""Output staging: a row runs in ``DIR/.partial/<id>/``, which is renamed to ``DIR/<id>/`` once
the row has finished, so a row folder exists exactly when its row is complete."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .jobs import Job, Outcome
from .types import RowResult

STAGING = ".partial"


def row_files(folder: Path, reported: list[str]) -> list[str]:
    """A row folder's files relative to it: those the output nodes returned first, in their
    order, then any other (non-hidden) file an output node wrote without returning it."""
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    ordered = [name for name in dict.fromkeys(reported) if name in present]
    # Hidden files nobody returned are scratch (previews, temporaries), not outputs.
    extra = {name for name in present - set(ordered) if not any(part.startswith(".") for part in name.split("/"))}
    return ordered + sorted(extra)


def commit(job: Job, outcome: Outcome, out_dir: Path) -> RowResult:
    """Publish a finished row: rename its staging folder to ``out_dir/<id>`` (the completion mark)."""
    row = job.row
    assert row.id is not None
    if outcome.error is not None:
        discard(job.staging)
        return RowResult(row.index, row.id, "failed", job.resolved, error=outcome.error, seconds=outcome.seconds)
    job.staging.mkdir(parents=True, exist_ok=True)  # a graph that wrote nothing still completes
    names = row_files(job.staging, outcome.reported)
    final = out_dir / row.id
    os.rename(job.staging, final)
    _fsync_dir(out_dir)
    return RowResult(row.index, row.id, "ok", job.resolved, [final / n for n in names], seconds=outcome.seconds)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot sync a folder; the rename itself stays atomic
        pass
    finally:
        os.close(fd)


def discard(path: Path) -> None:
    """Remove a staging folder and all in it; an absent one is fine."""
    shutil.rmtree(path, ignore_errors=True)
