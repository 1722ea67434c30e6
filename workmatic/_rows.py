"""Jobs from rows: a :class:`~workmatic.job.Job` built from a row of
``_sql.JOB_COLUMNS``, whole for a user's read, lazily for a job a worker claimed."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from . import _sql
from .job import DEFERRED_FIELDS, Job, decode_deferred, decode_json, ms_to_datetime


def row_to_job(row: Sequence[Any]) -> Job:
    """Build a :class:`Job` from a row of ``_sql.JOB_COLUMNS``; tolerant of broken rows."""
    job = claimed_job(row)
    decode_deferred(job.__dict__)  # a job read for a user is complete
    return job


def claimed_job(row: Sequence[Any]) -> Job:
    """:func:`row_to_job` for a job a worker claimed: what a handler needs is decoded at
    once; the id, the timestamps, the error, the result and the key are decoded from the
    row on first access (``Job.__getattr__``). Building them costs about half of a
    claimed job's Python time, and most handlers never read them."""
    job = _new_job(Job)
    # A frozen dataclass's __init__ sets each field through object.__setattr__; giving the
    # instance its dict whole is several times cheaper (this runs once per job claimed).
    _set_attr(
        job,
        "__dict__",
        {
            "queue": str(row[2]),
            "payload": decode_json(row[3]),
            "status": str(row[4]),
            "priority": row[5] if type(row[5]) is int else _int(row[5]),
            "attempts": row[6] if type(row[6]) is int else _int(row[6]),
            "max_attempts": row[7] if type(row[7]) is int else _int(row[7]),
            "_row": row,
        },
    )
    return job


def _lease_until(row: Sequence[Any]) -> datetime | None:
    lease = row[13]
    return ms_to_datetime(lease) if type(lease) is int and lease > 0 else None


DEFERRED_FIELDS.update(
    {
        "id": _sql.job_id,
        "created_at": lambda row: ms_to_datetime(row[8]),
        "run_at": lambda row: ms_to_datetime(row[9]),
        "last_error": lambda row: None if row[10] is None else str(row[10]),
        "result": lambda row: None if row[11] is None else decode_json(row[11]),
        "updated_at": lambda row: ms_to_datetime(row[12]),
        "lease_until": _lease_until,
        "key": lambda row: None if row[14] is None else str(row[14]),
    }
)


_new_job = object.__new__
_set_attr = object.__setattr__


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
