"""A :class:`~workmatic.database.Database`'s public operations on jobs and queues: reads
(``get_job``, ``list_jobs``, counts and stats, ``queues``) and writes (pausing, retrying,
purging, importing, moving). Each checks its arguments and runs one statement of
``_sql`` through the database's doors (``_read``, ``_write``). ``Database`` inherits
them from :class:`_Operations`: they are its documented methods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from . import _sql
from ._rows import row_to_job
from .exceptions import InvalidStateError, JobNotFoundError, ValidationError
from .job import (
    STATUSES,
    ImportResult,
    Job,
    JobStats,
    QueueInfo,
    now_ms,
)
from .job import (
    new_nonce as _nonce,
)
from .schemas import validate_queue

T = TypeVar("T")


def _statuses(
    status: str | Sequence[str] | None, allowed: Sequence[str], name: str = "status"
) -> tuple[str, ...]:
    if status is None:
        return tuple(allowed)
    values = (status,) if isinstance(status, str) else tuple(status)
    bad = [s for s in values if s not in allowed]
    if not values or bad:
        raise ValidationError(
            {
                name: [
                    f"Must be one of: {', '.join(allowed)}." + (f" Got {bad[0]!r}." if bad else "")
                ]
            }
        )
    return values


class _Operations:
    """The :class:`~workmatic.database.Database`'s public operations on jobs and queues."""

    if TYPE_CHECKING:  # the Database's doors

        def _read(self, fn: Callable[..., T], *args: Any, offload: bool = False) -> T: ...

        def _write(
            self, fn: Callable[..., T], *args: Any, exclusive: bool = False, offload: bool = False
        ) -> T: ...

        def _notify(self, queue: str | None) -> None: ...

    # --- reads ------------------------------------------------------------------------------

    def get_job(self, job_id: str) -> Job | None:
        """Return the job with this public id, or None."""
        if not isinstance(job_id, str):
            raise ValidationError({"job_id": ["Must be a string."]})
        row = self._read(_sql.get_job, job_id)
        return row_to_job(row) if row is not None else None

    def list_jobs(
        self,
        *,
        queue: str | None = None,
        status: str | Sequence[str] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Job]:
        """Return jobs newest first, optionally of one queue and status.

        :param limit: at most this many (1 to 10,000).
        :param offset: skip this many first.
        """
        q = validate_queue(queue) if queue is not None else None
        statuses = _statuses(status, STATUSES) if status is not None else None
        limit = _bounded_int(limit, "limit", 1, 10_000)
        offset = _bounded_int(offset, "offset", 0, 2**62)
        rows = self._read(_sql.list_jobs, q, statuses, limit, offset, offload=offset > 10_000)
        return [row_to_job(r) for r in rows]

    def count_jobs(
        self, *, queue: str | None = None, status: str | Sequence[str] | None = None
    ) -> int:
        """Count jobs, optionally of one queue and status."""
        q = validate_queue(queue) if queue is not None else None
        statuses = _statuses(status, STATUSES) if status is not None else None
        return self._read(_sql.count_jobs, q, statuses)

    def iter_jobs(
        self,
        *,
        queue: str | None = None,
        status: str | Sequence[str] | None = None,
        batch_size: int = 1000,
    ) -> Iterator[Job]:
        """Yield jobs oldest first, in batches (constant memory: for exports)."""
        q = validate_queue(queue) if queue is not None else None
        statuses = _statuses(status, STATUSES) if status is not None else None
        size = _bounded_int(batch_size, "batch_size", 1, 100_000)

        def generate() -> Iterator[Job]:
            after = 0
            while True:
                rows = self._read(_sql.page_jobs, q, statuses, after, size)
                for row in rows:
                    yield row_to_job(row)
                if len(rows) < size:
                    return
                after = rows[-1][0]

        return generate()

    def stats(self, queue: str | None = None) -> JobStats:
        """Job counts by status for one queue, or for all queues."""
        q = validate_queue(queue) if queue is not None else None
        return JobStats.from_counts(self._read(_sql.count_by_status, q))

    def queue_stats(self) -> dict[str, JobStats]:
        """Job counts by status for every queue that has jobs or a pause setting."""
        return {q.name: q.stats for q in self.queues()}

    def queues(self) -> list[QueueInfo]:
        """Every queue with jobs or a pause setting, sorted by name."""
        counts, paused = self._read(_sql.count_by_queue)
        names = sorted(set(counts) | set(paused))
        return [
            QueueInfo(n, paused.get(n, False), JobStats.from_counts(counts.get(n, {})))
            for n in names
        ]

    def is_queue_paused(self, queue: str) -> bool:
        """Whether the queue is paused in every process."""
        return self._read(_sql.is_paused, validate_queue(queue))

    # --- writes --------------------------------------------------------------------------

    def pause_queue(self, queue: str) -> None:
        """Pause a queue: workers in every process stop starting its jobs (within ~1 s)."""
        self._write(_sql.set_paused, validate_queue(queue), True, now_ms())

    def resume_queue(self, queue: str) -> None:
        """Resume a paused queue."""
        q = validate_queue(queue)
        self._write(_sql.set_paused, q, False, now_ms())
        self._notify(q)

    def retry_job(self, job_id: str) -> bool:
        """Reset a ``dead`` or ``failed`` job to ``ready`` (attempts 0, due now).

        :returns: False if the job is in another status.
        :raises JobNotFoundError: no job has this id.
        """
        if not isinstance(job_id, str):
            raise ValidationError({"job_id": ["Must be a string."]})
        previous = self._write(_sql.retry_job, job_id, now_ms())
        if previous is None:
            raise JobNotFoundError(job_id)
        if previous in ("dead", "failed"):
            self._notify(None)
            return True
        return False

    def retry_jobs(
        self, *, status: str | Sequence[str] = ("dead", "failed"), queue: str | None = None
    ) -> int:
        """Reset every ``dead``/``failed`` (or ``done``) job to ``ready``; never running ones.

        :returns: how many jobs were reset.
        """
        statuses = _statuses(status, ("dead", "failed", "done"))
        q = validate_queue(queue) if queue is not None else None
        n = self._write(_sql.retry_jobs, q, statuses, now_ms(), offload=True)
        if n:
            self._notify(q)
        return n

    def purge(self, *, status: str | Sequence[str] | None = None, queue: str | None = None) -> int:
        """Delete jobs (never running ones). ``status=None`` means every status but running.

        :returns: how many jobs were deleted.
        """
        statuses = _statuses(status, ("ready", "done", "failed", "dead"))
        q = validate_queue(queue) if queue is not None else None
        return self._write(_sql.purge, q, statuses, offload=True)

    def import_jobs(self, records: Iterable[Mapping[str, Any]]) -> ImportResult:
        """Insert already-validated job records in one transaction (see the README's CSV
        section for the fields). A ``public_id`` already present is skipped, never replaced;
        a ``running`` record comes in as ``ready``. If ``records`` raises, nothing is
        imported."""
        now = now_ms()

        def normalised() -> Iterator[dict[str, Any]]:
            for record in records:
                row = dict(record)
                if not row.get("public_id"):
                    row["public_id"] = None
                row["nonce"] = _nonce()
                if row.get("status", "ready") == "running":
                    row["status"] = "ready"
                row.setdefault("status", "ready")
                row.setdefault("queue", "default")
                row.setdefault("priority", 0)
                row.setdefault("run_at", now)
                row.setdefault("attempts", 0)
                row.setdefault("max_attempts", 3)
                row.setdefault("created_at", now)
                row.setdefault("updated_at", now)
                row.setdefault("last_error", None)
                row.setdefault("result", None)
                row.setdefault("key", None)
                row["due"] = int(row["run_at"] <= now)
                yield row

        inserted, skipped = self._write(_sql.import_jobs, normalised(), offload=True)
        if inserted:
            self._notify(None)
        return ImportResult(inserted, skipped)

    def transfer(
        self,
        source: str,
        target: str,
        *,
        status: str | Sequence[str] = ("ready", "dead"),
        limit: int = 10_000,
        reset: bool = False,
    ) -> int:
        """Atomically move up to ``limit`` jobs (oldest first) from one queue to another.

        :param status: which statuses to move (never ``running``).
        :param reset: make moved jobs ``ready`` with attempts 0, due now.
        :returns: how many jobs moved.
        """
        src = validate_queue(source, "source")
        dst = validate_queue(target, "target")
        statuses = _statuses(status, ("ready", "done", "failed", "dead"))
        limit = _bounded_int(limit, "limit", 1, 2**62)
        if not isinstance(reset, bool):
            raise ValidationError({"reset": ["Must be a boolean."]})
        n = self._write(_sql.transfer, src, dst, statuses, limit, reset, now_ms(), offload=True)
        if n:
            self._notify(dst)
        return n

    def recount(self) -> None:
        """Rebuild the counts behind :meth:`stats` from the jobs themselves (needed only
        after the file was edited by other means than workmatic)."""
        self._write(_sql.recount, offload=True)

    def move_job(self, job_id: str, target: str) -> bool:
        """Move one job to another queue.

        :returns: True when moved.
        :raises JobNotFoundError: no job has this id.
        :raises InvalidStateError: the job is running.
        """
        if not isinstance(job_id, str):
            raise ValidationError({"job_id": ["Must be a string."]})
        dst = validate_queue(target, "target")
        status = self._write(_sql.move_job, job_id, dst, now_ms())
        if status is None:
            raise JobNotFoundError(job_id)
        if status == "running":
            raise InvalidStateError(f"job {job_id!r} is running; it cannot be moved")
        self._notify(dst)
        return True


def _bounded_int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError({name: [f"Must be an integer from {low} to {high}."]})
    return value
