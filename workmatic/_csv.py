"""CSV export and import of jobs, in the Node original's format (used by the CLI).

The columns, in order::

    public_id,queue,payload,status,priority,run_at,attempts,max_attempts,lease_until,
    created_at,updated_at,last_error,result,key

The first twelve are the Node original's; ``result`` and ``key`` are extra trailing columns
so that nothing is lost on a round trip. Timestamps are integer epoch milliseconds, an
empty ``lease_until`` (or ``0``) means no lease. Files are RFC 4180 (``csv`` module,
CRLF line ends, fields quoted when needed), UTF-8; a UTF-8 byte order mark is accepted on
import.

Export streams through :meth:`Database.iter_jobs` (constant memory). Import validates
every row with :class:`~workmatic.schemas.CsvRowSchema` and writes in one transaction
through :meth:`Database.import_jobs`, fed by a generator (constant memory).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import IO, TYPE_CHECKING, Any, TextIO

import marshmallow

from .exceptions import ValidationError
from .job import ORIGINAL_COLUMNS, BrokenPayload
from .schemas import CsvRowSchema

if TYPE_CHECKING:
    from .database import Database
    from .job import Job

__all__ = [
    "COLUMNS",
    "SEED_COLUMNS",
    "CsvFormatError",
    "CsvImportReport",
    "InvalidRowsError",
    "Progress",
    "RowError",
    "csv_input",
    "csv_output",
    "export_csv",
    "import_csv",
]

#: The Node original's columns, in its order.
SEED_COLUMNS: tuple[str, ...] = ORIGINAL_COLUMNS
#: Every column written on export: the seed's, then ``result`` and ``key``.
COLUMNS: tuple[str, ...] = (*SEED_COLUMNS, "result", "key")

#: Columns holding free text, where ``safe_formulas`` applies (numbers are ours).
_TEXT_COLUMNS = frozenset({"public_id", "queue", "payload", "last_error", "result", "key"})
#: A cell a spreadsheet would read as a formula, possibly already escaped by us.
_FORMULA = re.compile(r"'*[=+\-@\t\r]")
_ESCAPED_FORMULA = re.compile(r"'+[=+\-@\t\r]")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)
#: Keep at most this many row errors in memory (the count is always exact).
MAX_REPORTED_ERRORS = 1000


class CsvFormatError(ValueError):
    """The file is not a CSV file this importer can read (header, encoding, quoting)."""


@dataclass(frozen=True)
class RowError:
    """One invalid row: the line its record starts on, and why it is invalid."""

    line: int
    message: str


@dataclass
class CsvImportReport:
    """What an import did (or would have done)."""

    inserted: int = 0
    skipped: int = 0
    invalid: int = 0
    rows: int = 0
    errors: list[RowError] = field(default_factory=list)

    def add_error(self, line: int, message: str) -> None:
        """Count an invalid row and keep its error (the first :data:`MAX_REPORTED_ERRORS`)."""
        self.invalid += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(RowError(line, message))

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return {
            "inserted": self.inserted,
            "skipped": self.skipped,
            "invalid": self.invalid,
            "rows": self.rows,
            "errors": [{"line": e.line, "error": e.message} for e in self.errors],
        }


class InvalidRowsError(ValueError):
    """Some rows are invalid, so nothing was imported."""

    def __init__(self, report: CsvImportReport) -> None:
        self.report = report
        super().__init__(f"{report.invalid} invalid row(s): nothing was imported")


class _Abort(Exception):
    """Raised from inside the record generator to roll the import back."""


def _progress_interval() -> float:
    try:
        value = float(os.environ.get("WORKMATIC_PROGRESS_INTERVAL", "0.25"))
    except ValueError:
        return 0.25
    return value if 0 <= value < 3600 else 0.25


class Progress:
    """A one-line progress counter on a terminal (silent when the stream is not a tty).

    :param verb: what is counted, e.g. ``"exported"``.
    :param total: the expected count, if known, to show a percentage.
    :param stream: where to write; ``sys.stderr`` by default.
    :param interval: redraw at most this often (seconds), and draw first after it (so an
        operation quicker than that shows nothing); ``WORKMATIC_PROGRESS_INTERVAL`` in the
        environment, else 0.25 s.
    """

    def __init__(
        self,
        verb: str,
        total: int | None = None,
        stream: TextIO | None = None,
        interval: float | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval if interval is not None else _progress_interval()
        self.verb = verb
        self.total = total
        self.count = 0
        self.enabled = _isatty(self.stream)
        self._next = time.monotonic() + self.interval
        self._shown = False

    def update(self, count: int, fraction: float | None = None) -> None:
        """Record the current count; redraw at most every :attr:`interval` seconds."""
        self.count = count
        if self.enabled and time.monotonic() >= self._next:
            self._draw(fraction)
            self._next = time.monotonic() + self.interval

    def finish(self) -> None:
        """Draw the final count and end the line (only if something was drawn)."""
        if self.enabled and self._shown:
            self._draw(1.0 if self.total is None else None)
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, fraction: float | None) -> None:
        if fraction is None and self.total:
            fraction = self.count / self.total
        text = f"\r{self.verb} {self.count:,}"
        if self.total is not None:
            text += f" of {self.total:,}"
        if fraction is not None:
            text += f" ({min(fraction, 1.0):.0%})"
        self.stream.write(text)
        self.stream.flush()
        self._shown = True


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _ms(value: datetime | None) -> str:
    """Exact epoch milliseconds of a datetime as text ('' for None)."""
    if value is None:
        return ""
    return str((value - _EPOCH) // _MS)


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def job_to_row(job: Job) -> list[str]:
    """Return a job's CSV cells, in :data:`COLUMNS` order.

    A payload whose stored JSON is broken is written as its raw text (import rejects it).
    """
    payload = job.payload
    return [
        job.id,
        job.queue,
        payload if isinstance(payload, BrokenPayload) else _json_text(payload),
        job.status,
        str(job.priority),
        _ms(job.run_at),
        str(job.attempts),
        str(job.max_attempts),
        _ms(job.lease_until),
        _ms(job.created_at),
        _ms(job.updated_at),
        job.last_error if job.last_error is not None else "",
        _json_text(job.result) if job.result is not None else "",
        job.key if job.key is not None else "",
    ]


_TEXT_INDEXES = tuple(i for i, name in enumerate(COLUMNS) if name in _TEXT_COLUMNS)


def escape_formulas(row: list[str]) -> list[str]:
    """Prefix a quote to text cells a spreadsheet would read as a formula.

    A cell starting with ``= + - @``, a tab or a carriage return (after any quotes already
    there) gets one more leading ``'``; :func:`unescape_formulas` undoes exactly that.
    """
    for i in _TEXT_INDEXES:
        cell = row[i]
        if cell and _FORMULA.match(cell):
            row[i] = "'" + cell
    return row


def unescape_formulas(cell: str) -> str:
    """Undo :func:`escape_formulas` on one cell."""
    if cell.startswith("'") and _ESCAPED_FORMULA.match(cell):
        return cell[1:]
    return cell


def export_csv(
    db: Database,
    out: TextIO,
    *,
    queue: str | None = None,
    status: str | None = None,
    safe_formulas: bool = False,
    progress: Progress | None = None,
) -> int:
    """Write the selected jobs to ``out`` as CSV, oldest first, in constant memory.

    :param out: a text stream opened with ``newline=""``.
    :param safe_formulas: escape cells a spreadsheet would read as formulas (changes data;
        import with ``unescape=True`` to undo).
    :returns: the number of jobs written.
    """
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    count = 0
    for job in db.iter_jobs(queue=queue, status=status):
        row = job_to_row(job)
        writer.writerow(escape_formulas(row) if safe_formulas else row)
        count += 1
        if progress is not None and not count % 1000:
            progress.update(count)
    if progress is not None:
        progress.update(count)
        progress.finish()
    return count


@contextlib.contextmanager
def csv_output(path: str | None) -> Iterator[TextIO]:
    """Open where an export goes: stdout for ``None`` or ``"-"``, else ``path``.

    Yields a UTF-8 text stream with ``newline=""`` (as :mod:`csv` wants). A regular file is
    written under a temporary name beside it and renamed into place once complete, so a
    failed export never leaves half a file; FIFOs and devices are written directly.
    """
    if path is None or path == "-":
        buffer = getattr(sys.stdout, "buffer", None)
        if buffer is None:  # a replaced sys.stdout without bytes underneath
            yield sys.stdout
            return
        sys.stdout.flush()
        out = io.TextIOWrapper(buffer, encoding="utf-8", newline="")
        try:
            yield out
        finally:
            out.flush()
            out.detach()
        return
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):  # a FIFO, /dev/stdout...
        with open(path, "w", encoding="utf-8", newline="") as out:
            yield out
        return
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".workmatic-export-", suffix=".csv", dir=directory)
    try:
        with open(fd, "w", encoding="utf-8", newline="") as out:
            yield out
        if mode is not None:
            os.chmod(tmp, stat.S_IMODE(mode))
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def csv_input(path: str) -> Iterator[tuple[TextIO, Callable[[], float | None]]]:
    """Open a CSV file to import: ``path``, or stdin for ``"-"`` and ``/dev/stdin``.

    Yields a UTF-8 text stream (a byte order mark is dropped, ``newline=""``) and a
    function returning the fraction of the file read so far (``None`` if unknown).
    """
    raw: IO[bytes]
    if path in ("-", "/dev/stdin"):
        raw = sys.stdin.buffer
        size = 0
        close = False
    else:
        raw = open(path, "rb")  # noqa: SIM115 - closed below
        close = True
        try:
            size = os.fstat(raw.fileno()).st_size
        except OSError:
            size = 0
        if not stat.S_ISREG(os.fstat(raw.fileno()).st_mode):
            size = 0

    def fraction() -> float | None:
        if not size:
            return None
        try:
            return raw.tell() / size
        except OSError:
            return None

    text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
    try:
        yield text, fraction
    finally:
        if close:
            text.close()
        else:
            text.detach()


def _header(names: list[str]) -> list[str]:
    header = [name.strip().lower() for name in names]
    unknown = [name for name in header if name not in COLUMNS]
    if unknown:
        raise CsvFormatError(
            f"line 1: unknown column(s) {', '.join(map(repr, unknown))}; "
            f"expected some of: {','.join(COLUMNS)}"
        )
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise CsvFormatError(f"line 1: column {name!r} appears twice")
        seen.add(name)
    if "payload" not in seen:
        raise CsvFormatError("line 1: the header has no 'payload' column (it is required)")
    return header


def read_rows(
    source: Iterable[str],
    *,
    default_queue: str = "default",
    unescape: bool = False,
    now_ms: int | None = None,
) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """Parse and validate CSV rows.

    Yields ``(line, record, None)`` for a valid row and ``(line, None, reason)`` for an
    invalid one; ``line`` is the physical line its record starts on (the header is line 1).
    Blank lines are ignored.

    :raises CsvFormatError: no header, a bad header, broken quoting or encoding.
    """
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    reader = csv.reader(source, strict=True)
    if now_ms is None:  # one "now" for the whole file
        now_ms = time.time_ns() // 1_000_000
    schema = CsvRowSchema(default_queue=default_queue, now_ms=now_ms)
    try:
        first = next(reader, None)
        if first is None:
            raise CsvFormatError("the file is empty: a CSV header line is required")
        header = _header(first)
        width = len(header)
        line = reader.line_num + 1
        for cells in reader:
            start, line = line, reader.line_num + 1
            if not cells:
                continue
            if len(cells) != width:
                yield start, None, f"expected {width} fields (as in the header), got {len(cells)}"
                continue
            if unescape:
                cells = [unescape_formulas(cell) for cell in cells]
            try:
                record = schema.load_row(dict(zip(header, cells, strict=True)))
            except marshmallow.ValidationError as exc:
                messages = (
                    exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
                )
                yield start, None, ValidationError(messages).message
                continue
            yield start, record, None
    except csv.Error as exc:
        raise CsvFormatError(f"line {reader.line_num}: malformed CSV: {exc}") from None
    except UnicodeDecodeError as exc:
        raise CsvFormatError(f"not UTF-8 text (near line {reader.line_num}): {exc}") from None


def import_csv(
    db: Database,
    source: Iterable[str],
    *,
    default_queue: str = "default",
    skip_invalid: bool = False,
    unescape: bool = False,
    progress: Progress | None = None,
    position: Callable[[], float | None] | None = None,
) -> CsvImportReport:
    """Validate and import CSV rows in one transaction.

    Without ``skip_invalid``, one invalid row means nothing is imported: every row is
    still checked, so that the report names them all, then :class:`InvalidRowsError` is
    raised and the transaction rolled back. With it, invalid rows are reported and the
    others imported. A ``public_id`` already present is skipped, never replaced.

    :param source: lines of text (a file opened with ``newline=""``).
    :param default_queue: the queue of rows without one.
    :param unescape: undo ``export --safe-formulas``.
    :param position: returns the fraction of the input read so far, for ``progress``.
    :raises InvalidRowsError: invalid rows and not ``skip_invalid`` (nothing imported).
    :raises CsvFormatError: the file cannot be parsed (nothing imported).
    """
    report = CsvImportReport()

    def records() -> Iterator[Mapping[str, object]]:
        for line, record, error in read_rows(
            source, default_queue=default_queue, unescape=unescape
        ):
            report.rows += 1
            if progress is not None and not report.rows % 1000:
                progress.update(report.rows, position() if position is not None else None)
            if record is None:
                report.add_error(line, error or "invalid row")
            elif not report.invalid or skip_invalid:
                yield record
        if report.invalid and not skip_invalid:
            raise _Abort

    try:
        result = db.import_jobs(records())
    except _Abort:
        raise InvalidRowsError(report) from None
    finally:
        if progress is not None:
            progress.update(report.rows)
            progress.finish()
    report.inserted = result.inserted
    report.skipped = result.skipped
    return report
