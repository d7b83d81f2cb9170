"""The manifest: ``DIR/manifest.jsonl``, one fsynced JSON line per row outcome, appended and
never rewritten (the last line per id wins), and the lock that keeps a second batch out."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Union

from .errors import BatchError

MANIFEST = "manifest.jsonl"
# Append, never follow a link, and no newline translation (Windows).
_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)


def read_manifest(out_dir: Union[str, Path]) -> dict[str, dict[str, Any]]:
    """The latest manifest record per row id (later lines win). Torn or unnamed lines are ignored."""
    path = Path(out_dir) / MANIFEST
    latest: dict[str, dict[str, Any]] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:  # absent (or not a file: the batch refuses such a manifest itself)
        return latest
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue  # a line cut short by a crash mid-write, or not ours
        if isinstance(record, dict) and isinstance(record.get("id"), str):
            latest[record["id"]] = record
    return latest


class Manifest:
    """Append-only JSONL, one fsynced line per row; an exclusive lock keeps a second batch out.

    Lines are written with single ``os.write`` calls (no buffer that could replay a failed write
    later); after a failed write the next line starts on a new line, so a torn line stays alone.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._torn = False

    def __enter__(self) -> "Manifest":
        if self.path.is_symlink() or (self.path.exists() and not self.path.is_file()):
            raise BatchError(
                f"{self.path} is not a regular file (a link or a folder); graphrun appends the batch's "
                "records there: remove it or use another --out"
            )
        try:
            fd = os.open(self.path, _FLAGS, 0o644)
        except OSError as exc:
            raise BatchError(f"cannot write the manifest {self.path}: {exc.strerror or exc}; check --out") from None
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no fcntl (Windows): run unlocked
            pass
        except OSError:
            os.close(fd)
            raise BatchError(f"another batch is writing to {self.path.parent}; wait for it or use another --out")
        self._fd = fd
        size = os.fstat(fd).st_size
        if size > 0:
            os.lseek(fd, size - 1, os.SEEK_SET)  # reads only: O_APPEND writes go to the end anyway
            self._torn = os.read(fd, 1) != b"\n"  # a line torn by a crash: the next one starts anew
        return self

    def append(self, record: dict[str, Any]) -> None:
        """Append one line and fsync it. Raises OSError (say, a full disk) when it cannot."""
        assert self._fd is not None
        # A lone surrogate (from a JSON \ud800 escape in a row) is written as that same escape.
        data = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8", "backslashreplace")
        if self._torn:
            data = b"\n" + data
        self._torn = True  # until the whole line is down
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)
        self._torn = False

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None
