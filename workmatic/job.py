"""The records Workmatic hands out: :class:`Job`, :class:`JobStats`, :class:`QueueInfo`."""

from __future__ import annotations

import json
import json.scanner
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

__all__ = ["STATUSES", "ImportResult", "Job", "JobStats", "QueueInfo"]

#: Every job status, in lifecycle order.
STATUSES: tuple[str, ...] = ("ready", "running", "done", "failed", "dead")

#: The columns of the Node original's jobs table and CSV format, in its order.
ORIGINAL_COLUMNS: tuple[str, ...] = (
    "public_id",
    "queue",
    "payload",
    "status",
    "priority",
    "run_at",
    "attempts",
    "max_attempts",
    "lease_until",
    "created_at",
    "updated_at",
    "last_error",
)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def now_ms() -> int:
    """Return the current time as integer epoch milliseconds."""
    return time.time_ns() // 1_000_000


_datetimes: dict[object, datetime] = {}


def ms_to_datetime(ms: object) -> datetime:
    """Convert stored epoch milliseconds to an aware UTC datetime (the epoch if unreadable).

    Timestamps repeat a lot (a batch shares its ``created_at``, a claim its ``updated_at``
    and ``lease_until``), so recent conversions are memoised.
    """
    value = _datetimes.get(ms)
    if value is not None:
        return value
    try:
        value = datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError, OSError):
        return _EPOCH
    if len(_datetimes) >= 4096:
        _datetimes.clear()
    _datetimes[ms] = value
    return value


def datetime_to_ms(value: datetime) -> int:
    """Convert a datetime (naive means UTC) to epoch milliseconds."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return (value - _EPOCH) // timedelta(milliseconds=1)  # exact: no float rounding


class _IdGenerator:
    """Unique, URL-safe ids for records that come without one (e.g. imported rows):
    12 hex digits of epoch ms, then 16 of a per-process random prefix and counter. (Jobs
    added through a client get ids derived from their row; see ``_sql.format_id``.)"""

    def __init__(self) -> None:
        self._reseed()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        rng = random.SystemRandom()
        self._prefix = rng.getrandbits(32)
        self._counter = rng.getrandbits(31)

    def __call__(self) -> str:
        self._counter = (self._counter + 1) & 0xFFFFFFFF
        return f"{time.time_ns() // 1_000_000:012x}{self._prefix:08x}{self._counter:08x}"


new_job_id = _IdGenerator()

_nonces = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_nonces.seed)


def new_nonce() -> int:
    """A random 48-bit number: the part of a job's public id that makes it unique."""
    return _nonces.getrandbits(48)


@dataclass(frozen=True)
class JobStats:
    """Job counts by status."""

    ready: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    dead: int = 0

    @property
    def total(self) -> int:
        """All jobs, whatever their status."""
        return self.ready + self.running + self.done + self.failed + self.dead

    def as_dict(self) -> dict[str, int]:
        """Return the counts and the total as a JSON-able dict."""
        return {
            "ready": self.ready,
            "running": self.running,
            "done": self.done,
            "failed": self.failed,
            "dead": self.dead,
            "total": self.total,
        }

    @classmethod
    def from_counts(cls, counts: dict[str, int]) -> JobStats:
        """Build from a ``{status: count}`` mapping; unknown statuses are ignored."""
        return cls(**{s: int(counts.get(s, 0)) for s in STATUSES})


@dataclass(frozen=True)
class QueueInfo:
    """A queue: its name, whether it is paused (in every process), and its counts."""

    name: str
    is_paused: bool
    stats: JobStats

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return {"name": self.name, "is_paused": self.is_paused, "stats": self.stats.as_dict()}


@dataclass(frozen=True)
class ImportResult:
    """What :meth:`Database.import_jobs` did."""

    inserted: int
    skipped: int


@dataclass(frozen=True)
class Job:
    """One job, as stored.

    ``attempts`` counts failed runs so far (0 on the first run); ``max_attempts`` bounds the
    runs. ``payload`` is the decoded JSON payload (the raw text if the stored JSON is
    broken); ``result`` is the handler's return value once ``done``.
    """

    id: str
    queue: str
    payload: Any
    status: str
    priority: int
    attempts: int
    max_attempts: int
    created_at: datetime
    run_at: datetime
    last_error: str | None
    result: Any
    updated_at: datetime = field(default=_EPOCH)
    lease_until: datetime | None = None
    key: str | None = None

    if not TYPE_CHECKING:  # hidden from type checkers: a typo must stay a typing error

        def __getattr__(self, name: str) -> Any:
            # Only called for an attribute not set yet: a field that ``row_to_job`` left in
            # the stored row (``_row``) is decoded on first use, then kept.
            try:
                decode = DEFERRED_FIELDS[name]
                row = self.__dict__["_row"]
            except KeyError:
                raise AttributeError(
                    f"{type(self).__name__!r} object has no attribute {name!r}"
                ) from None
            value = decode(row)
            object.__setattr__(self, name, value)
            return value

    def __getstate__(self) -> dict[str, Any]:
        # A job pickles (and copies) whole: every field decoded, never the stored row.
        return decode_deferred(self.__dict__.copy())

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict: datetimes as ISO 8601 strings plus ``*_ms`` integers."""
        lease = self.lease_until
        return {
            "id": self.id,
            "queue": self.queue,
            "payload": self.payload,
            "status": self.status,
            "priority": self.priority,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "created_at": self.created_at.isoformat(),
            "run_at": self.run_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "lease_until": lease.isoformat() if lease else None,
            "created_at_ms": datetime_to_ms(self.created_at),
            "run_at_ms": datetime_to_ms(self.run_at),
            "updated_at_ms": datetime_to_ms(self.updated_at),
            "lease_until_ms": datetime_to_ms(lease) if lease else 0,
            "last_error": self.last_error,
            "result": self.result,
            "key": self.key,
        }


#: Fields a job read may leave undecoded in the stored row: name -> decoder of the row
#: (filled in by ``database``, which knows the row's layout).
DEFERRED_FIELDS: dict[str, Callable[[Sequence[Any]], Any]] = {}


def decode_deferred(values: dict[str, Any]) -> dict[str, Any]:
    """Decode into ``values`` (a job's attributes) every field still left in its stored
    row, drop the row, and return ``values``."""
    row = values.pop("_row", None)
    if row is not None:
        for name, decode in DEFERRED_FIELDS.items():
            if name not in values:
                values[name] = decode(row)
    return values


# The dataclass keeps these defaults for __init__; as class attributes they would shadow
# __getattr__, so a job built by row_to_job would show the default instead of its row.
del Job.updated_at, Job.lease_until, Job.key


class BrokenPayload(str):
    """The raw text of a stored payload that is not valid JSON (or is nested too deeply
    for Python to decode)."""


#: The C scanner behind ``json.loads``, called directly: ``loads`` adds ~2 µs of checks
#: per call, and every claimed job decodes its payload.
_scan_json = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def decode_json(text: object) -> Any:
    """Decode stored JSON text; undecodable text comes back as :class:`BrokenPayload`."""
    if text is None:
        return None
    if type(text) is str:
        try:
            value, end = _scan_json(text, 0)
        except (StopIteration, ValueError, RecursionError):
            pass  # leading whitespace, a BOM, not JSON, too deep: json.loads decides below
        else:
            if end == len(text):
                return value
    elif not isinstance(text, str):
        text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than Python decodes
        return BrokenPayload(text)
