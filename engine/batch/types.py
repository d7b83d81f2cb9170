"""What goes into a batch and what comes out: :class:`BatchOptions`, per-row
:class:`RowResult` (and its manifest line), :class:`BatchResult` and the exit codes."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Union

from .manifest import MANIFEST

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130

Status = Literal["ok", "failed", "skipped"]
ProgressMode = Literal["auto", "tqdm", "plain", "json", "none"]
Redo = Literal["changed"]
REDO_CHOICES: tuple[str, ...] = ("changed",)


def row_seed(row_id: str) -> int:
    """The seed ``seed_from_row_id`` gives a row: 32 bits of SHA-256 of its id, the same on every
    machine and every run (0 <= seed < 2**32)."""
    return int.from_bytes(hashlib.sha256(f"graphrun seed {row_id}".encode()).digest()[:4], "big")


@dataclass
class BatchOptions:
    """How to run a batch (the CLI builds one from ``--batch/--ray/--workers/--gpus-per-worker``).

    ``rows``: a rows file, or an iterable of mappings (one per row) or strings (prompts).
    ``ray``: None runs locally; ``"auto"`` starts (or joins) a local Ray; else a Ray address.
    ``cpus_per_worker``: CPUs each Ray actor reserves (Ray's default, 1, when None); Ray sizes
    the actor's thread pools to it.
    ``redo``: None refuses to start when a row's folder was made by different work (a changed
    prompt, param, graph, model file or ComfyUI version: see :mod:`.rowkey`); ``"changed"``
    renders those rows again into new folders ``<id>~2``, ``<id>~3``, ... and keeps the old ones.
    ``seed_from_row_id``: each row without its own ``seed`` gets a seed derived from its row id
    (:func:`row_seed`) instead of the graph's ``seed`` default; the graph must have a ``seed`` param.
    ``batch_size``: rows run together, N at a time (on each Ray worker too): what every row shares runs
    once, batchable nodes (samplers, latent resizes, VAE decode) run the group in one call, the rest row
    by row (see :mod:`graphrun.engine.batched`). Results, folders, manifest and failures stay per row.

    Ray only (see :mod:`.ray_executor`): ``workers`` is the pool's size, or its least size when
    ``max_workers`` is larger (the pool then grows while rows wait and the cluster has room, and
    shrinks as the work runs out). ``max_retries``: how often a row whose worker died runs again
    before it is recorded failed. ``start_timeout``: seconds to wait for Ray to place a worker
    before the batch fails (a request no cluster node can hold fails at once). ``shared_out``:
    workers that can read the output folder (checked with a probe file) write rows there
    directly; False sends every file through the driver.
    """

    rows: Union[Path, Iterable[Union[Mapping[str, Any], str]]]
    ray: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None
    progress: ProgressMode | None = None  # None: follow the runner's reporter
    redo: Redo | None = None
    seed_from_row_id: bool = False
    batch_size: int = 1
    max_workers: int | None = None
    max_retries: int = 3
    start_timeout: float = 60.0
    shared_out: bool = True


@dataclass
class RowResult:
    """What became of one row. ``files`` are absolute paths under the output folder."""

    index: int
    id: str | None
    status: Status
    params: dict[str, Any]
    files: list[Path] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    folder: str | None = None  # the row folder's name under the output folder (``<id>`` or ``<id>~N``)
    key: str | None = None  # the row key its folder was made with (see :mod:`.rowkey`)
    replaces: str | None = None  # a redone row: the folder of its earlier run (kept as it was)
    seed_source: str | None = None  # with seed_from_row_id: "row id" (derived) or "row" (the row's own)

    def record(self, out_dir: Path) -> dict[str, Any]:
        """The manifest line for this result."""
        line = {
            "row": self.index,
            "id": self.id,
            "status": self.status,
            "folder": self.folder,
            "params": self.params,
            "files": [_relative(path, out_dir) for path in self.files],
            "error": self.error,
            "seconds": round(self.seconds, 4),
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "key": self.key,
        }
        if self.replaces is not None:
            line["replaces"] = self.replaces
        if self.seed_source is not None:
            line["seed_source"] = self.seed_source
        return line


@dataclass
class BatchResult:
    """Every row's result in row order (rows not reached after Ctrl-C are absent)."""

    rows: list[RowResult]
    out_dir: Path
    interrupted: bool = False
    manifest_error: str | None = None  # why manifest lines could not be written (rows still ran)

    @property
    def manifest(self) -> Path:
        return self.out_dir / MANIFEST

    def with_status(self, status: Status) -> list[RowResult]:
        return [r for r in self.rows if r.status == status]

    @property
    def ok(self) -> bool:
        """True when no row failed, the manifest was written and the batch was not interrupted."""
        return not self.interrupted and not self.with_status("failed") and self.manifest_error is None

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if self.with_status("failed") or self.manifest_error is not None else EXIT_OK


def _relative(path: Path, out_dir: Path) -> str:
    try:
        return path.resolve().relative_to(out_dir.resolve()).as_posix()
    except ValueError:  # an output node wrote outside the output folder: keep where it went
        return str(path)
