"""What goes into a batch and what comes out: :class:`BatchOptions`, per-row
:class:`RowResult` (and its manifest line), :class:`BatchResult` and the exit codes."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Union

from .manifest import MANIFEST

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130

Status = Literal["ok", "failed", "skipped"]
ProgressMode = Literal["auto", "tqdm", "plain", "json", "none"]


@dataclass
class BatchOptions:
    """How to run a batch (the CLI builds one from ``--batch/--ray/--workers/--gpus-per-worker``).

    ``rows``: a rows file, or an iterable of mappings (one per row) or strings (prompts).
    ``ray``: None runs locally; ``"auto"`` starts (or joins) a local Ray; else a Ray address.
    ``cpus_per_worker``: CPUs each Ray actor reserves (Ray's default, 1, when None); Ray sizes
    the actor's thread pools to it.
    """

    rows: Union[Path, Iterable[Union[Mapping[str, Any], str]]]
    ray: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None
    progress: ProgressMode | None = None  # None: follow the runner's reporter


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

    def record(self, out_dir: Path) -> dict[str, Any]:
        """The manifest line for this result."""
        return {
            "row": self.index,
            "id": self.id,
            "status": self.status,
            "params": self.params,
            "files": [_relative(path, out_dir) for path in self.files],
            "error": self.error,
            "seconds": round(self.seconds, 4),
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        }


@dataclass
class BatchResult:
    """Every row's result in row order (rows not reached after Ctrl-C are absent)."""

    rows: list[RowResult]
    out_dir: Path
    interrupted: bool = False

    @property
    def manifest(self) -> Path:
        return self.out_dir / MANIFEST

    def with_status(self, status: Status) -> list[RowResult]:
        return [r for r in self.rows if r.status == status]

    @property
    def ok(self) -> bool:
        """True when no row failed and the batch was not interrupted."""
        return not self.interrupted and not self.with_status("failed")

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if self.with_status("failed") else EXIT_OK


def _relative(path: Path, out_dir: Path) -> str:
    try:
        return path.resolve().relative_to(out_dir.resolve()).as_posix()
    except ValueError:  # an output node wrote outside the output folder: keep where it went
        return str(path)
