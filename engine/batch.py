"""Batches: run one graph once per row of a table, models loaded once.

``graphrun GRAPH --batch ROWS --out DIR`` or :func:`batch` from Python. ROWS is a ``.jsonl``
file (one JSON object a line), a ``.csv`` file (a header, then one row a line) or a ``.txt``
file (one prompt a line: it sets the ``prompt`` param). Blank lines are skipped. Each row's keys
name graph params (``--set`` values apply to every row; a row's own values win); the ``id`` key
names the row. A JSON ``null`` or an empty CSV cell leaves the param at its default.

One :class:`~graphrun.engine.executor.Runner` runs every row, so models and every result that
does not depend on the row's values are computed once.

Output naming
    Each row gets its own folder ``DIR/<id>/``; ``<id>`` is the row's ``id`` value (letters,
    digits, ``.``, ``_``, ``-``; not starting with ``.``) or else the row's position among the
    non-blank rows, zero-padded (``00000``, ``00001``, ...). The graph runs with that folder as its
    output folder (``RunOptions.output_dir``), so any output node that writes under the output
    folder works unchanged, with its own file names inside: ``DIR/00003/zimage_00001_.png``.
    A row runs in ``DIR/.partial/<id>/`` and that folder is renamed to ``DIR/<id>/`` only once the
    row has finished, so ``DIR/<id>/`` exists exactly when the row is complete: a re-run skips
    those rows, and an interrupted or failed row leaves nothing behind. To redo a row, delete its
    folder. Rows keyed by position shift when rows are inserted: give rows an ``id`` when the
    file will be edited between runs.

Manifest
    ``DIR/manifest.jsonl``: one JSON object per row outcome, appended and fsynced as each row
    ends, never rewritten. Keys: ``row`` (position), ``id`` (null for a row that could not be
    named: a bad or duplicate id), ``status`` (``ok``, ``failed`` or ``skipped``), ``params``
    (every param value the row ran with; for a row that failed validation, the values it gave),
    ``files`` (output files relative to DIR, in the order the output nodes returned them),
    ``error`` (null unless failed), ``seconds`` and ``time`` (UTC, ISO 8601). A re-run appends;
    for each id the last line wins (:func:`read_manifest`). ``skipped`` lines are written only for
    a complete row folder the manifest does not record as ``ok`` (say, a run killed between
    finishing a row and writing its line); rows already recorded ``ok`` are skipped silently.

Failures and Ctrl-C
    A row that cannot be read, has an unknown or mistyped param, or fails while running is
    recorded ``failed`` and the batch goes on. Ctrl-C stops at the next step boundary: finished
    rows stay, the current row's outputs are removed, the manifest stays valid. Exit codes
    (:func:`run_batch`): 0 all rows ok or skipped, 1 any row failed, 130 interrupted.

Ray
    ``--ray [ADDRESS]`` runs the rows on a Ray actor pool (see :mod:`.batch_ray`); the driver
    still validates rows, writes every file and the manifest, so the outputs and the manifest are
    those of a local run.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Literal, Mapping, TextIO, Union

from .context import Interrupted
from .executor import Runner
from .graph import Document
from .node import Registry
from .progress import Event, JsonReporter, LineReporter, Reporter, TqdmReporter, quiet
from .validate import check

if TYPE_CHECKING:
    from .api import Graph

MANIFEST = "manifest.jsonl"
STAGING = ".partial"
EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130

Status = Literal["ok", "failed", "skipped"]
ProgressMode = Literal["auto", "tqdm", "plain", "json", "none"]
_ID = re.compile(r"\w[\w.\-]{0,127}")  # used with fullmatch: "$" would let a trailing newline in


class BatchError(ValueError):
    """The batch as a whole cannot run (unreadable rows file, output folder in use, no Ray)."""


class BatchAborted(RuntimeError):
    """The batch stopped midway for a reason outside any row (a Ray worker or cluster failed).

    Rows finished before it are committed and in the manifest; ``result`` holds them.
    """

    def __init__(self, message: str, result: "BatchResult") -> None:
        super().__init__(message)
        self.result = result


# ---------------------------------------------------------------- options and results


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
class BatchRow:
    """One row as read: its position, its folder name and its param values."""

    index: int
    id: str | None  # None when the row cannot be named (a bad or duplicate id)
    values: dict[str, Any]  # param values (without ``id``)
    error: str | None = None  # why the row cannot run before any validation
    named: bool = False  # the id came from the row (it then also feeds a graph param called `id`)


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


# ---------------------------------------------------------------- reading rows


def _row_error_text(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _short(exc: Exception) -> str:
    """A one-line account of an error whose text embeds a remote traceback (Ray's do): the
    first line says where, the last line says what."""
    lines = [line.strip() for line in _row_error_text(exc).splitlines() if line.strip()]
    return lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"


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


# ---------------------------------------------------------------- the manifest


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


class _Manifest:
    """Append-only JSONL, one fsynced line per row; an exclusive lock keeps a second batch out."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO | None = None

    def __enter__(self) -> "_Manifest":
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


# ---------------------------------------------------------------- running rows


@dataclass
class Job:
    """A row that will run: its validated param overrides and its staging folder."""

    row: BatchRow
    params: dict[str, Any]  # the overrides to bind with (already known to validate)
    resolved: dict[str, Any]  # every param value, for the manifest
    staging: Path


@dataclass
class Outcome:
    """A finished job. Its files are in ``job.staging`` by the time the outcome is handed over."""

    error: str | None = None
    seconds: float = 0.0
    reported: list[str] = field(default_factory=list)  # files the output nodes returned, relative to staging
    interrupted: bool = False


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
    graph, diags = check(document, registry, params)
    if graph is None:
        return Outcome(error=_diagnostics_text(diags), seconds=time.perf_counter() - started)
    base = runner.options
    runner.options = dataclasses.replace(base, output_dir=out_dir)
    try:
        result = runner.run(graph, reporter=reporter)
    except Interrupted:
        return Outcome(interrupted=True, seconds=time.perf_counter() - started)
    except Exception as exc:  # a failing row is data, not a crash: the batch goes on
        return Outcome(error=_row_error_text(exc), seconds=time.perf_counter() - started)
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


def _diagnostics_text(diags: list) -> str:
    return "; ".join(d.format() for d in diags if d.is_error)


def row_files(folder: Path, reported: list[str]) -> list[str]:
    """A row folder's files relative to it: those the output nodes returned first, in their
    order, then any other (non-hidden) file an output node wrote without returning it."""
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    ordered = [name for name in dict.fromkeys(reported) if name in present]
    # Hidden files nobody returned are scratch (previews, temporaries), not outputs.
    extra = {name for name in present - set(ordered) if not any(part.startswith(".") for part in name.split("/"))}
    return ordered + sorted(extra)


Executor = Callable[[list[Job]], Iterator[Outcome]]
"""Runs jobs in order, yielding one outcome per job with its files in the job's staging folder.
It may stop early (Ctrl-C), by returning or by yielding an interrupted outcome."""


def _local_executor(
    runner: Runner, document: Document, registry: Registry, stop: threading.Event, reporter: Reporter
) -> Executor:
    def outcomes(jobs: list[Job]) -> Iterator[Outcome]:
        for job in jobs:
            if stop.is_set():
                return
            yield run_row(runner, document, registry, job.params, job.staging, reporter)

    return outcomes


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


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- progress over rows


class RowProgress:
    """A bar over rows with ETA (tqdm), plain lines, JSON lines, or nothing; node progress is
    reduced to the bar's postfix (tqdm) or silence, so a batch prints one line per row at most."""

    def __init__(self, mode: ProgressMode, total: int, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "tqdm" if self.stream.isatty() else "plain"
        self.mode = mode
        self.total = total
        self.done = 0
        self.started = time.perf_counter()
        self._bar: Any = None
        if mode == "tqdm" and total:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="batch", unit="row", file=self.stream, dynamic_ncols=True)

    def node_reporter(self) -> Reporter:
        if self._bar is None:
            return quiet
        bar = self._bar

        def report(event: Event) -> None:
            if event.kind == "step":
                bar.set_postfix_str(f"{event.node} {event.info.get('step', 0)}/{event.info.get('total', 0)}", refresh=False)
                bar.update(0)  # redraws at most every mininterval
            elif event.kind == "start":
                bar.set_postfix_str(event.node, refresh=False)
                bar.update(0)

        return report

    def _eta(self) -> float | None:
        if not self.done:
            return None
        return (time.perf_counter() - self.started) / self.done * (self.total - self.done)

    def row(self, result: RowResult) -> None:
        self.done += 1
        name = result.id if result.id is not None else f"#{result.index}"
        if self._bar is not None:
            self._bar.set_postfix_str("", refresh=False)  # node progress belongs to the row just ended
            if result.status == "failed":
                self._bar.write(f"row {name} failed: {result.error}", file=self.stream)
            self._bar.update(1)
        elif self.mode == "plain":
            eta = self._eta()
            tail = f", eta {_duration(eta)}" if eta is not None and self.done < self.total else ""
            text = f"[{self.done}/{self.total}] row {name} {result.status} {result.seconds:.2f}s{tail}"
            if result.error:
                text += f": {result.error}"
            print(text, file=self.stream, flush=True)
        elif self.mode == "json":
            line = {"event": "row", "row": result.index, "id": result.id, "status": result.status,
                    "seconds": round(result.seconds, 4), "done": self.done, "total": self.total,
                    "eta": None if self._eta() is None else round(self._eta() or 0.0, 1)}
            if result.error:
                line["error"] = result.error
            print(json.dumps(line), file=self.stream, flush=True)

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self, result: BatchResult, skipped: int) -> None:
        self.close_bar()
        if self.mode == "none":
            return
        counts = {s: len(result.with_status(s)) for s in ("ok", "failed", "skipped")}
        if self.mode == "json":
            print(json.dumps({"event": "batch", **counts, "interrupted": result.interrupted,
                              "manifest": str(result.manifest)}), file=self.stream, flush=True)
            return
        state = "interrupted" if result.interrupted else "done"
        print(
            f"batch {state}: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped "
            f"in {_duration(time.perf_counter() - self.started)}; manifest {result.manifest}",
            file=self.stream,
            flush=True,
        )


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _mode_for(reporter: Reporter) -> ProgressMode:
    """The row display matching the node reporter the CLI chose from ``--progress``."""
    if reporter is quiet:
        return "none"
    if isinstance(reporter, JsonReporter):
        return "json"
    if isinstance(reporter, LineReporter):
        return "plain"
    if isinstance(reporter, TqdmReporter):
        return "tqdm"
    return "auto"


# ---------------------------------------------------------------- Ctrl-C


class _SigintStop:
    """First Ctrl-C asks the batch to stop; a second one aborts at once (KeyboardInterrupt).

    ``eager`` (Ray) raises KeyboardInterrupt on the first Ctrl-C too, unless the driver is
    committing a row: every unfinished row lives on the workers, so nothing is lost by stopping
    now, and waiting for the next result could take a whole row.
    """

    def __init__(self, stop: threading.Event, on_stop: Callable[[], None], stream: TextIO) -> None:
        self.stop = stop
        self.on_stop = on_stop
        self.stream = stream
        self.eager = False
        self.committing = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt
        self.stop.set()
        self.on_stop()
        print("\ninterrupt: stopping the batch (Ctrl-C again to abort now)", file=self.stream, flush=True)
        if self.eager and not self.committing:
            raise KeyboardInterrupt

    def install(self) -> None:
        """(Re)install the handler: Ray's init may replace SIGINT handlers."""
        if threading.current_thread() is not threading.main_thread():
            return  # signals only reach the main thread
        previous = signal.signal(signal.SIGINT, self._handle)
        if not self._installed:
            self._previous = previous
            self._installed = True

    def __enter__(self) -> "_SigintStop":
        self.install()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False


# ---------------------------------------------------------------- the batch


def _execute(
    document: Document,
    registry: Registry,
    runner: Runner,
    options: BatchOptions,
    overrides: Mapping[str, Any],
    out_dir: Path,
    mode: ProgressMode,
) -> BatchResult:
    if options.workers < 1:
        raise BatchError("--workers must be at least 1")
    if options.gpus_per_worker < 0:
        raise BatchError("--gpus-per-worker cannot be negative")
    if options.ray:
        from .batch_ray import require_ray

        require_ray()  # fail before touching the output folder
    rows = read_rows(options.rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging_root = out_dir / STAGING
    stream = sys.stderr
    with _Manifest(out_dir / MANIFEST) as manifest:
        decided, recover, jobs = _decide(rows, document, registry, overrides, out_dir)
        skipped = sum(r.status == "skipped" for r in decided.values())
        progress = RowProgress(mode, len(rows) - skipped, stream)
        stop = threading.Event()
        guard = _SigintStop(stop, runner.interrupt, stream)
        if options.ray:
            from .batch_ray import ray_executor

            guard.eager = True
            executor = ray_executor(document, registry, runner.options, options, guard)
        else:
            executor = _local_executor(runner, document, registry, stop, progress.node_reporter())
        results: list[RowResult] = []
        result = BatchResult(results, out_dir)
        pending = iter(jobs)
        outcomes: Iterator[Outcome] | None = None
        current: Job | None = None
        with guard:
            try:
                for row in rows:
                    if row.index in decided:
                        done = decided[row.index]
                        results.append(done)
                        if done.status == "failed" or row.index in recover:
                            manifest.append(done.record(out_dir))
                        if done.status != "skipped":
                            progress.row(done)
                        continue
                    if stop.is_set():
                        result.interrupted = True
                        break
                    current = next(pending)
                    _remove(current.staging)  # left by a run killed mid-row
                    if outcomes is None:
                        outcomes = executor(jobs)  # started lazily: no Ray start for a batch with nothing to run
                    try:
                        outcome = next(outcomes, None)
                    except Exception as exc:  # run_row never raises: this is Ray, not a row
                        raise BatchAborted(f"the batch stopped: {_short(exc)}", result) from exc
                    if outcome is None or outcome.interrupted:
                        result.interrupted = True
                        break
                    guard.committing = True
                    done = _commit(current, outcome, out_dir)
                    manifest.append(done.record(out_dir))
                    guard.committing = False
                    current = None
                    results.append(done)
                    progress.row(done)
            except KeyboardInterrupt:
                result.interrupted = True
            finally:
                progress.close_bar()
                if current is not None:
                    _remove(current.staging)  # the row that was running: absent, never half there
                if outcomes is not None:
                    close = getattr(outcomes, "close", None)
                    if close is not None:
                        close()
                try:
                    staging_root.rmdir()
                except OSError:
                    pass  # absent, or holding another row's leftovers
        result.interrupted = result.interrupted or stop.is_set() and len(results) < len(rows)
        progress.close(result, skipped)
    return result


def _decide(
    rows: list[BatchRow], document: Document, registry: Registry, overrides: Mapping[str, Any], out_dir: Path
) -> tuple[dict[int, RowResult], set[int], list[Job]]:
    """Settle every row before running any: (rows already complete or unable to run, by index;
    the complete ones the manifest must still record; the jobs to run, in row order)."""
    latest = read_manifest(out_dir)
    decided: dict[int, RowResult] = {}
    recover: set[int] = set()
    jobs: list[Job] = []
    for row in rows:
        params = {**overrides, **row.values}
        if row.named and "id" in document.params:
            params["id"] = row.id  # a graph that declares an `id` param receives the row's id
        if row.error is not None:
            decided[row.index] = RowResult(row.index, row.id, "failed", _json_safe(params), error=row.error)
            continue
        assert row.id is not None
        final = out_dir / row.id
        graph, diags = check(document, registry, params)
        resolved = dict(graph.params) if graph is not None else _json_safe(params)
        if final.is_dir():
            record = latest.get(row.id) or {}
            files = [final / name for name in row_files(final, _reported(record, row.id))]
            decided[row.index] = RowResult(row.index, row.id, "skipped", resolved, files)
            if record.get("status") != "ok":
                recover.add(row.index)  # complete on disk but not recorded (killed between the two)
            continue
        if graph is None:
            decided[row.index] = RowResult(row.index, row.id, "failed", resolved, error=_diagnostics_text(diags))
            continue
        jobs.append(Job(row, params, resolved, out_dir / STAGING / row.id))
    return decided, recover, jobs


def _reported(record: dict[str, Any], row_id: str) -> list[str]:
    """The files a manifest record lists, relative to the row folder."""
    if record.get("status") not in ("ok", "skipped"):
        return []
    prefix = f"{row_id}/"
    return [f[len(prefix):] for f in record.get("files") or [] if isinstance(f, str) and f.startswith(prefix)]


def _commit(job: Job, outcome: Outcome, out_dir: Path) -> RowResult:
    """Publish a finished row: rename its staging folder to ``out_dir/<id>`` (the completion mark)."""
    row = job.row
    assert row.id is not None
    if outcome.error is not None:
        _remove(job.staging)
        return RowResult(row.index, row.id, "failed", job.resolved, error=outcome.error, seconds=outcome.seconds)
    job.staging.mkdir(parents=True, exist_ok=True)  # a graph that wrote nothing still completes
    names = row_files(job.staging, outcome.reported)
    final = out_dir / row.id
    os.rename(job.staging, final)
    _fsync_dir(out_dir)
    return RowResult(row.index, row.id, "ok", job.resolved, [final / n for n in names], seconds=outcome.seconds)


def _json_safe(values: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(values), default=str))


# ---------------------------------------------------------------- entry points


def run_batch(
    doc: Document, registry: Registry, runner: Runner, batch: BatchOptions, overrides: Mapping[str, Any]
) -> int:
    """The CLI's ``--batch``: run, print the manifest path on stdout, return the exit code.

    The output folder is ``runner.options.output_dir``; the row display follows the runner's
    reporter (``--progress``).
    """
    mode = batch.progress or _mode_for(runner.reporter)
    if not batch.ray and (batch.workers != 1 or batch.gpus_per_worker):
        print("warning: --workers and --gpus-per-worker apply to --ray only; running locally", file=sys.stderr)
    try:
        result = _execute(doc, registry, runner, batch, overrides, Path(runner.options.output_dir), mode)
    except BatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except BatchAborted as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(f"finished rows are recorded in {exc.result.manifest}; run again to do the rest", file=sys.stderr)
        return EXIT_FAILED
    print(result.manifest)
    return result.exit_code


def batch(
    graph: Union["Graph", str, Path, dict],
    rows: Union[str, Path, Iterable[Union[Mapping[str, Any], str]]],
    out_dir: Union[str, Path] = "output",
    *,
    params: Mapping[str, Any] | None = None,
    ray: Union[str, bool, None] = None,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float | None = None,
    progress: ProgressMode = "auto",
    runner: Runner | None = None,
    plugins: Iterable[Union[str, Path]] = (),
) -> BatchResult:
    """Run ``graph`` once per row and return every row's result.

    ``graph``: a :class:`~graphrun.engine.api.Graph` (its registry and runner are used, so its
    cached models serve the batch), or a path/YAML text/dict to load. ``rows``: a rows file or
    an iterable of mappings (param values, optional ``id``) or prompt strings. ``params`` apply
    to every row, under the row's own values. ``ray``: True or ``"auto"`` for a local Ray, or
    an address; a Ray already initialised in this process is used as it is. Outputs go to
    ``out_dir/<id>/`` and ``out_dir/manifest.jsonl`` (see the module docs).

    Ctrl-C (in the main thread) stops the batch cleanly and returns with ``interrupted=True``;
    ``result.exit_code`` is what the CLI would exit with. Raises :class:`BatchError` when the
    batch cannot start (unreadable rows file, output folder in use, Ray not installed).
    """
    from .api import Graph, load

    if not isinstance(graph, Graph):
        graph = load(graph, plugins=list(plugins))
    use = runner or graph.runner
    options = BatchOptions(
        rows=Path(rows) if isinstance(rows, str) else rows,
        ray=("auto" if ray is True else ray) or None,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        cpus_per_worker=cpus_per_worker,
        progress=progress,
    )
    return _execute(graph.document, graph.registry, use, options, dict(params or {}), Path(out_dir), progress)


__all__ = [
    "BatchAborted",
    "BatchError",
    "BatchOptions",
    "BatchResult",
    "RowResult",
    "batch",
    "read_manifest",
    "read_rows",
    "run_batch",
]
