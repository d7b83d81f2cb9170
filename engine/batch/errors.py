"""Batch errors: the two ways a whole batch fails, and the one-line texts row errors become."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .types import BatchResult


class BatchError(ValueError):
    """The batch as a whole cannot run (unreadable rows file, output folder unusable or in use,
    changed rows, no Ray)."""


class ChangedRows(BatchError):
    """Rows whose folders were made from different inputs (see :mod:`.rowkey`); nothing ran.

    ``ids`` names them; ``redo="changed"`` (``--redo changed``) renders them into new folders.
    """

    def __init__(self, message: str, ids: list[str]) -> None:
        super().__init__(message)
        self.ids = ids


class BatchAborted(RuntimeError):
    """The batch stopped midway for a reason outside any row (a Ray worker or cluster failed).

    Rows finished before it are committed and in the manifest; ``result`` holds them.
    """

    def __init__(self, message: str, result: "BatchResult") -> None:
        super().__init__(message)
        self.result = result


def row_error_text(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def short_error(exc: Exception) -> str:
    """A one-line account of an error whose text embeds a remote traceback (Ray's do): the
    first line says where, the last line says what."""
    lines = [line.strip() for line in row_error_text(exc).splitlines() if line.strip()]
    return lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"


def diagnostics_text(diags: list) -> str:
    """The validation errors among ``diags``, on one line."""
    return "; ".join(d.format() for d in diags if d.is_error)
