"""Reading rows: ``.jsonl``/``.csv``/``.txt`` files or in-memory rows, and the id rules that
name each row's folder (see :mod:`.batch` for the file formats).

Row ids
    A row's ``id`` value names it when given (letters, digits, ``.``, ``_``, ``-``, at most 128,
    not starting with ``.``). A prompt row (a ``.txt`` line, or a string in memory) is named after
    its text: a short readable slug and 12 hex digits of the text's SHA-256
    (``a-lighthouse-at-dusk-3f2a9c1b0d4e``); the second and later copies of the same text get
    ``-2``, ``-3``, ... So inserting, deleting or moving lines never renames the other rows. A
    ``.jsonl``/``.csv``/in-memory row without an ``id`` is named by its position among the rows
    (``00000``, ``00001``, ...): those ids shift when rows are inserted above, which the batch then
    reports as changed rows (see :mod:`.rowkey`) instead of skipping the wrong work.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Union

from .errors import BatchError
from .manifest import MANIFEST

_ID = re.compile(r"\w[\w.\-]{0,127}")  # used with fullmatch: "$" would let a trailing newline in
MAX_ROW_CHARS = 1_000_000  # a row (line or CSV record) longer than this fails: no prompt is that long
MAX_DEPTH = 32  # JSON nesting deeper than this fails the row: no param takes nested values that deep
_SLUG_CHARS = 40

Raw = tuple[dict[str, Any] | None, str | None, bool]  # (values, error, is a prompt row)


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
    line never stops the batch. Raises :class:`BatchError` when the file itself is unusable
    (missing, not a regular file, not UTF-8 text, unknown suffix, no rows, a bad CSV header).
    """
    raw: list[Raw] = []  # (values, error, prompt row) per non-blank row
    if isinstance(source, (str, Path)):
        path = Path(source)
        text = _read_text(path)
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".ndjson"):
            raw = _jsonl_rows(text, path)
        elif suffix == ".csv":
            raw = _csv_rows(text, path)
        elif suffix == ".txt":
            raw = _txt_rows(text, path)
        else:
            raise BatchError(f"rows file {path}: use .jsonl (JSON objects), .csv (with a header) or .txt (prompts)")
        if not raw:
            header = " and a header" if suffix == ".csv" else ""
            raise BatchError(f"rows file {path} has no rows (only blank lines{header})")
    else:
        for item in source:
            if isinstance(item, str):
                if item.strip():
                    raw.append(({"prompt": item.strip()}, None, True))
            elif isinstance(item, Mapping):
                raw.append(({str(k): v for k, v in item.items() if v is not None}, None, False))
            else:
                raw.append((None, f"a row must be a mapping or a prompt string, got {type(item).__name__}", False))
    return _name_rows(raw)


def _read_text(path: Path) -> str:
    try:
        if not path.is_file():  # a folder, a FIFO or a device (/dev/zero) would never end
            if not path.exists():
                raise BatchError(f"rows file {path} does not exist")
            raise BatchError(f"rows file {path} is not a regular file")
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BatchError(
            f"rows file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "give a .jsonl, .csv or .txt file saved as UTF-8"
        ) from None
    except OSError as exc:
        raise BatchError(f"cannot read rows file {path}: {exc.strerror or exc}") from None


def _line_problem(line: str) -> str | None:
    """Why a line cannot be a row whatever its format, or None."""
    if "\x00" in line:
        return "contains a NUL byte (binary data?)"
    if len(line) > MAX_ROW_CHARS:
        return f"is {len(line):,} characters long; a row may be at most {MAX_ROW_CHARS:,}"
    return None


def _txt_rows(text: str, path: Path) -> list[Raw]:
    rows: list[Raw] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        problem = _line_problem(line)
        if problem is not None:
            rows.append((None, f"{path} line {number} {problem}", True))
            continue
        rows.append(({"prompt": line.strip()}, None, True))
    return rows


def _depth(value: Any, limit: int) -> bool:
    """True when ``value`` nests deeper than ``limit`` lists/objects (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return False


def _jsonl_rows(text: str, path: Path) -> list[Raw]:
    rows: list[Raw] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        problem = _line_problem(line)
        if problem is not None:
            rows.append((None, f"{where} {problem}", False))
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            rows.append((None, f"{where}: not valid JSON: {exc.msg} (column {exc.colno})", False))
            continue
        except RecursionError:
            rows.append((None, f"{where}: the JSON nests too deeply (at most {MAX_DEPTH} levels)", False))
            continue
        except ValueError:  # an integer of thousands of digits: over Python's int conversion limit
            rows.append((None, f"{where}: a number has more than {sys.get_int_max_str_digits()} digits", False))
            continue
        if not isinstance(value, dict):
            rows.append((None, f"{where}: expected a JSON object, got {type(value).__name__}", False))
            continue
        if _depth(value, MAX_DEPTH):
            rows.append((None, f"{where}: the JSON nests too deeply (at most {MAX_DEPTH} levels)", False))
            continue
        # null means "not given": the param keeps its default
        rows.append(({k: v for k, v in value.items() if v is not None}, None, False))
    return rows


class _FieldLimit:
    """Lift csv's 128 KiB field limit while parsing: long fields fail their row with our message."""

    def __enter__(self) -> None:
        self.saved = csv.field_size_limit()
        csv.field_size_limit(2**31 - 1)

    def __exit__(self, *exc: Any) -> None:
        csv.field_size_limit(self.saved)


def _csv_rows(text: str, path: Path) -> list[Raw]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[Raw] = []
    # An odd number of quote characters means a quoted field never closes: csv then reads the rest
    # of the file as one field of the last record, which must fail rather than run.
    unbalanced = text.count('"') % 2 == 1
    last: tuple[int, int, int] | None = None  # (row position, first line, last line) of the last record
    with _FieldLimit():
        while True:
            start = reader.line_num + 1
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:  # the reader goes on at the next line
                if header is None:
                    raise BatchError(f"rows file {path}: CSV error in the header (line {start}): {exc}") from None
                rows.append((None, f"{path} line {start}: not valid CSV: {exc}", False))
                continue
            where = f"{path} line {start}"
            if not any(cell.strip() for cell in record):
                continue
            problem = _line_problem(",".join(record))
            if header is None:
                if problem is not None:
                    raise BatchError(f"rows file {path}: the CSV header (line {start}) {problem}")
                header = [cell.strip() for cell in record]
                duplicates = sorted({h for h in header if header.count(h) > 1})
                if duplicates or not all(header):
                    raise BatchError(
                        f"rows file {path}: the CSV header needs unique, non-empty column names"
                        + (f" (repeated: {', '.join(duplicates)})" if duplicates else "")
                    )
                continue
            if problem is not None:
                rows.append((None, f"{where} {problem}", False))
                continue
            if len(record) > len(header):
                rows.append((None, f"{where}: {len(record)} fields but the header has {len(header)}", False))
                continue
            # An empty cell means "not given" (CSV cannot tell empty text from a missing value).
            rows.append(({k: v for k, v in zip(header, record) if v != ""}, None, False))
            last = (len(rows) - 1, start, reader.line_num)
    if unbalanced and last is not None and last[2] > last[1] and last[0] == len(rows) - 1:
        # The last record spans lines and the file's quotes do not pair up: its quoted field
        # swallowed the rest of the file.
        message = f"{path} line {last[1]}: a quoted field is never closed (it runs to the end of the file)"
        rows[last[0]] = (None, message, False)
    return rows


def prompt_id(text: str) -> str:
    """The id of a prompt row: a readable slug of the text and 12 hex digits of its SHA-256."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    slug = "-".join(re.findall(r"[a-z0-9]+", text.lower()))[:_SLUG_CHARS].strip("-")
    return f"{slug}-{digest}" if slug else digest


def _name_rows(raw: list[Raw]) -> list[BatchRow]:
    """Give every row its folder name; bad and duplicate ids make the row fail, unnamed."""
    rows: list[BatchRow] = []
    seen: dict[str, int] = {}
    copies: dict[str, int] = {}  # prompt id -> how many rows had that text so far
    for index, (values, error, prompt) in enumerate(raw):
        if values is None:  # unreadable: what it would be called is unknown
            rows.append(BatchRow(index, None, {}, error))
            continue
        given = values.pop("id", None)
        if prompt:
            row_id = prompt_id(str(values.get("prompt", "")))
            copies[row_id] = copies.get(row_id, 0) + 1
            if copies[row_id] > 1:
                row_id = f"{row_id}-{copies[row_id]}"
        elif given is None or given == "":
            row_id = f"{index:05d}"
        elif isinstance(given, (dict, list, bool)) or not _ID.fullmatch(str(given)) or str(given) == MANIFEST:
            shown = repr(given) if len(repr(given)) <= 60 else repr(given)[:57] + "..."
            rows.append(
                BatchRow(
                    index,
                    None,
                    values,
                    f"id {shown} cannot name a folder: use letters, digits, '.', '_' and '-' "
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
        rows.append(BatchRow(index, row_id, values, named=given is not None and given != "" and not prompt))
    return rows
