"""Reading rows: ``.jsonl``/``.csv``/``.txt`` files or in-memory rows, and the id rules that
name each row's folder (see :mod:`.batch` for the file formats)."""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Union

from .errors import BatchError
from .manifest import MANIFEST

_ID = re.compile(r"\w[\w.\-]{0,127}")  # used with fullmatch: "$" would let a trailing newline in


@dataclass
class BatchRow:
    """One row as read: its position, its folder name and its param values."""

    index: int
    id: str | None  # None when the row cannot be named (a bad or duplicate id)
    values: dict[str, Any]  # param values (without ``id``)
    error: str | None = None  # why the row cannot run before any validation
    named: bool = False  # the id came from the row (it then also feeds a graph param called `id`)


def read_rows(source: Union[str, Path, Iterable[Union[Mapping[str, Any], str]]]) -> list[BatchRow]:
    """Rows from a ``.jsonl``/``.csv``/``.txt`` file, or from mappings/strings in memory.

    A line that cannot be read becomes a row with ``error`` set (recorded as failed), so one bad
    line never stops the batch. Raises :class:`BatchError` when the file itself is unusable.
    """
    raw: list[tuple[dict[str, Any] | None, str | None]] = []  # (values, error) per non-blank row
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise BatchError(f"rows file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise BatchError(f"cannot read rows file {path}: {exc}") from None
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".ndjson"):
            raw = _jsonl_rows(text)
        elif suffix == ".csv":
            raw = _csv_rows(text, path)
        elif suffix == ".txt":
            raw = [({"prompt": line.strip()}, None) for line in text.splitlines() if line.strip()]
        else:
            raise BatchError(f"rows file {path}: use .jsonl (JSON objects), .csv (with a header) or .txt (prompts)")
    else:
        for item in source:
            if isinstance(item, str):
                if item.strip():
                    raw.append(({"prompt": item.strip()}, None))
            elif isinstance(item, Mapping):
                raw.append(({str(k): v for k, v in item.items() if v is not None}, None))
            else:
                raw.append((None, f"a row must be a mapping or a prompt string, got {type(item).__name__}"))
    return _name_rows(raw)


def _jsonl_rows(text: str) -> list[tuple[dict[str, Any] | None, str | None]]:
    rows: list[tuple[dict[str, Any] | None, str | None]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            rows.append((None, f"line {number}: not valid JSON: {exc.msg} (column {exc.colno})"))
            continue
        if not isinstance(value, dict):
            rows.append((None, f"line {number}: expected a JSON object, got {type(value).__name__}"))
            continue
        # null means "not given": the param keeps its default
        rows.append(({k: v for k, v in value.items() if v is not None}, None))
    return rows


def _csv_rows(text: str, path: Path) -> list[tuple[dict[str, Any] | None, str | None]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[tuple[dict[str, Any] | None, str | None]] = []
    try:
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue
            if header is None:
                header = [cell.strip() for cell in record]
                duplicates = sorted({h for h in header if header.count(h) > 1})
                if duplicates or not all(header):
                    raise BatchError(
                        f"rows file {path}: the CSV header needs unique, non-empty column names"
                        + (f" (repeated: {', '.join(duplicates)})" if duplicates else "")
                    )
                continue
            if len(record) > len(header):
                rows.append((None, f"line {reader.line_num}: {len(record)} fields but the header has {len(header)}"))
                continue
            # An empty cell means "not given" (CSV cannot tell empty text from a missing value).
            rows.append(({k: v for k, v in zip(header, record) if v != ""}, None))
    except csv.Error as exc:
        raise BatchError(f"rows file {path}: CSV error at line {reader.line_num}: {exc}") from None
    return rows


def _name_rows(raw: list[tuple[dict[str, Any] | None, str | None]]) -> list[BatchRow]:
    """Give every row its folder name; bad and duplicate ids make the row fail, unnamed."""
    rows: list[BatchRow] = []
    seen: dict[str, int] = {}
    for index, (values, error) in enumerate(raw):
        if values is None:  # unreadable: what it would be called is unknown
            rows.append(BatchRow(index, None, {}, error))
            continue
        given = values.pop("id", None)
        if given is None or given == "":
            row_id = f"{index:05d}"
        elif isinstance(given, (dict, list, bool)) or not _ID.fullmatch(str(given)) or str(given) == MANIFEST:
            rows.append(
                BatchRow(
                    index,
                    None,
                    values,
                    f"id {given!r} cannot name a folder: use letters, digits, '.', '_' and '-' "
                    "(at most 128, not starting with '.')",
                )
            )
            continue
        else:
            row_id = str(given)
        # Case-insensitive: on macOS and Windows "A" and "a" are the same folder.
        first = seen.setdefault(row_id.casefold(), index)
        if first != index:
            rows.append(BatchRow(index, None, values, f"id {row_id!r} is used by row {first} already"))
            continue
        rows.append(BatchRow(index, row_id, values, named=given is not None and given != ""))
    return rows
