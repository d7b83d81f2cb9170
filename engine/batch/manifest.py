"""The manifest: ``DIR/manifest.jsonl``, one fsynced JSON line per row outcome, appended and
never rewritten (the last line per id wins), and the lock that keeps a second batch out."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TextIO, Union

from .errors import BatchError

MANIFEST = "manifest.jsonl"


def read_manifest(out_dir: Union[str, Path]) -> dict[str, dict[str, Any]]:
    """The latest manifest record per row id (later lines win). Torn or unnamed lines are ignored."""
    path = Path(out_dir) / MANIFEST
    latest: dict[str, dict[str, Any]] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return latest
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash mid-write
        if isinstance(record, dict) and isinstance(record.get("id"), str):
            latest[record["id"]] = record
    return latest


class Manifest:
    """Append-only JSONL, one fsynced line per row; an exclusive lock keeps a second batch out."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO | None = None

    def __enter__(self) -> "Manifest":
        self._file = open(self.path, "a+", encoding="utf-8")
        try:
            import fcntl

            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no fcntl (Windows): run unlocked
            pass
        except OSError:
            self._file.close()
            raise BatchError(f"another batch is writing to {self.path.parent}; wait for it or use another --out")
        self._file.seek(0, os.SEEK_END)
        if self._file.tell() > 0:
            self._file.seek(self._file.tell() - 1)
            if self._file.read(1) != "\n":
                self._file.write("\n")  # close a line torn by a crash, so the next one stands alone
        return self

    def append(self, record: dict[str, Any]) -> None:
        assert self._file is not None
        self._file.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def __exit__(self, *exc: Any) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the lock
            self._file = None
