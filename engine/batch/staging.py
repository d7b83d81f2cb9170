"""Output staging: a row runs in ``DIR/.partial/<folder>/``, which is renamed to ``DIR/<folder>/``
once the row has finished, so a row folder exists exactly when its row is complete.

Links are never followed for writing or deleting: a symbolic link where the staging area or a
row folder should be is refused or removed as a link (its target is left alone), so a batch
never writes or deletes anything outside its output folder.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .errors import BatchError
from .jobs import Job, Outcome
from .rowkey import ROW_RECORD
from .types import RowResult

STAGING = ".partial"


def row_files(folder: Path, reported: list[str]) -> list[str]:
    """A row folder's files relative to it: those the output nodes returned first, in their
    order, then any other (non-hidden) file an output node wrote without returning it."""
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    ordered = [name for name in dict.fromkeys(reported) if name in present]
    # Hidden files nobody returned are scratch (previews, temporaries) or our own row record.
    extra = {name for name in present - set(ordered) if not any(part.startswith(".") for part in name.split("/"))}
    return ordered + sorted(extra)


def check_staging_root(out_dir: Path) -> None:
    """Refuse a ``DIR/.partial`` that is a link or a file: rows are staged only in a real folder."""
    root = out_dir / STAGING
    if root.is_symlink():
        raise BatchError(
            f"{root} is a symbolic link; graphrun stages unfinished rows there and never writes through "
            "a link: remove the link (its target is not touched) or use another --out"
        )
    if root.exists() and not root.is_dir():
        raise BatchError(
            f"{root} is a file; graphrun stages unfinished rows in that folder: remove it or use another --out"
        )


def prepare(path: Path) -> None:
    """A fresh, empty, real staging folder at ``path`` (anything left there by a killed run goes)."""
    discard(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.parent.is_symlink():  # checked at the start too; a link made since is not followed
        raise OSError(f"{path.parent} became a symbolic link")
    path.mkdir()


def commit(job: Job, outcome: Outcome, out_dir: Path) -> RowResult:
    """Publish a finished row: write its row record, then rename its staging folder to
    ``out_dir/<folder>`` (the completion mark). Raises OSError when the disk refuses; the staging
    folder is then removed and nothing is published."""
    row = job.row
    assert row.id is not None
    if outcome.error is not None:
        discard(job.staging)
        return RowResult(row.index, row.id, "failed", job.resolved, error=outcome.error, seconds=outcome.seconds)
    final = out_dir / job.folder
    try:
        if job.staging.is_symlink() or not job.staging.is_dir():
            job.staging.unlink(missing_ok=True)
            job.staging.mkdir()  # a graph that wrote nothing still completes
        names = row_files(job.staging, outcome.reported)
        if job.key is not None:
            _write_synced(job.staging / ROW_RECORD, json.dumps(job.key.record(row.id), indent=1))
        if os.path.lexists(final):  # appeared since the rows were settled: never replaced
            raise FileExistsError(f"{final} appeared while the row ran; it is left as it is")
        os.rename(job.staging, final)
    except OSError:
        discard(job.staging)
        raise
    _fsync_dir(out_dir)
    return RowResult(row.index, row.id, "ok", job.resolved, [final / n for n in names], seconds=outcome.seconds,
                     folder=job.folder, key=job.key.key if job.key else None, replaces=job.replaces)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "x", encoding="utf-8") as handle:
        handle.write(text + "\n")
        handle.flush()
        os.fsync(handle.fileno())


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
    """Remove a staging folder and all in it; an absent one is fine. A link (or file) there is
    removed as itself: what it points to is never touched."""
    try:
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            path.unlink()
            return
    except OSError:
        return
    shutil.rmtree(path, ignore_errors=True)  # rmtree itself never follows links inside the folder
