"""Adding jobs: public ids, one insert, a group commit's inserts, batches of ``add_many``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gevent.monkey

from .counts import (
    _TRACK_FRESH,
    FOLD_EVERY,
    _after_batch,
    _before_batch,
    _grow,
    _note_fresh,
    _unfolded,
)


def format_id(rowid: int, nonce: int) -> str:
    """The public id of a job that has no imported one."""
    return "%012x%012x" % (rowid, nonce)  # noqa: UP031 - 1.6x faster than an f-string


def parse_id(public_id: str) -> tuple[int, int] | None:
    """``(rowid, nonce)`` of an id in :func:`format_id`'s form, else None."""
    if len(public_id) < 24 or len(public_id) > 40:
        return None
    try:
        rowid, nonce = int(public_id[:-12], 16), int(public_id[-12:], 16)
    except ValueError:
        return None
    if format_id(rowid, nonce) != public_id or rowid >= 2**63:
        return None
    return rowid, nonce


def job_id(row: Sequence[Any]) -> str:
    """The public id of a row of ``JOB_COLUMNS``."""
    return str(row[1]) if row[1] is not None else format_id(row[0], row[16])


_INSERT = (
    "INSERT INTO jobs (nonce, queue, payload, status, priority, run_at, attempts,"
    " max_attempts, lease_until, created_at, updated_at, key, due)"
    " VALUES (?, ?, ?, 'ready', ?, ?, 0, ?, 0, ?, ?, ?, ?)"
)
_FIND_ACTIVE_KEY = (
    "SELECT id, public_id, nonce FROM jobs WHERE queue = ? AND key = ?"
    " AND status IN ('ready', 'running') LIMIT 1"
)

#: One new job: (nonce, queue, payload, priority, run_at, max_attempts, now, now, key, due)
NewJob = tuple[int, str, str, int, int, int, int, int, "str | None", int]


def insert_job(conn: Any, row: NewJob) -> str:
    """Insert one job; with a key, return the active job holding that key instead."""
    key = row[8]
    if key is not None:
        found = conn.execute(_FIND_ACTIVE_KEY, (row[1], key)).fetchone()
        if found is not None:
            return str(found[1]) if found[1] is not None else format_id(found[0], found[2])
    _grow(conn, 1)
    rowid = conn.execute(_INSERT, row).lastrowid
    if row[9]:
        _note_fresh(conn, row[1], (rowid,))
    return format_id(rowid, row[0])


def _insert_rows(conn: Any, rows: Sequence[NewJob]) -> list[str]:
    """Insert keyless rows with one ``executemany``. SQLite gives rows appended to the table
    consecutive rowids, so the ids follow from the last one (checked on the first)."""
    counted = _before_batch(conn, len(rows))
    conn.executemany(_INSERT, rows)
    first = _first_rowid(conn, len(rows), rows[0][0], rows[0][1])
    if counted:
        by_queue: dict[str, int] = {}
        for row in rows:
            by_queue[row[1]] = by_queue.get(row[1], 0) + 1
        _after_batch(conn, by_queue)
    if len(rows) > _TRACK_FRESH:
        for queue in {row[1] for row in rows if row[9]}:
            _note_fresh(conn, queue, None)
    else:
        for i, row in enumerate(rows):
            if row[9]:
                _note_fresh(conn, row[1], (first + i,))
    return _format_ids(first, [row[0] for row in rows])


_FIRST_OF_BATCH = "SELECT id, nonce, queue FROM jobs WHERE id = last_insert_rowid() - ?"


def _first_rowid(conn: Any, count: int, nonce: int, queue: str) -> int:
    """The rowid of the first of the ``count`` rows just inserted by one ``executemany``:
    SQLite gives rows appended to the table consecutive rowids (checked on the first: its
    random 48-bit nonce and its queue; one statement, which fetches no payload)."""
    row = conn.execute(_FIRST_OF_BATCH, (count - 1,)).fetchone()
    if row is None or row[1] != nonce or row[2] != queue:  # pragma: no cover
        raise RuntimeError("rowids of a batch insert were not consecutive")
    return int(row[0])


def _format_ids(first: int, nonces: Sequence[int]) -> list[str]:
    """:func:`format_id` of consecutive rowids from ``first`` (inlined: 100,000 calls of
    it cost ~30 ms).

    A large batch runs in a real thread, which holds the GIL while it formats: the hub's
    thread would wait up to the interpreter's switch interval (5 ms) at a time, so the
    ids are formatted in slices of ~2 ms with the GIL released between them."""
    if len(nonces) <= FORMAT_SLICE:
        return ["%012x%012x" % (first + i, nonce) for i, nonce in enumerate(nonces)]  # noqa: UP031
    ids: list[str] = []
    for start in range(0, len(nonces), FORMAT_SLICE):
        part = nonces[start : start + FORMAT_SLICE]
        ids += ["%012x%012x" % (first + i, n) for i, n in enumerate(part, start)]  # noqa: UP031
        _release_gil(0)
    return ids


#: Ids formatted between two releases of the GIL (see ``_format_ids``).
FORMAT_SLICE = 4096
#: The unpatched ``time.sleep``: ``sleep(0)`` releases the GIL, and never yields to gevent.
_release_gil: Callable[[float], None] = gevent.monkey.get_original("time", "sleep")


def _insert_job_many(conn: Any, calls: Sequence[tuple[NewJob]]) -> list[str]:
    """:func:`insert_job` for many callers at once: keyless rows in one ``executemany``."""
    plain = [row for (row,) in calls if row[8] is None]
    ids = iter(_insert_rows(conn, plain) if plain else [])
    return [next(ids) if row[8] is None else insert_job(conn, row) for (row,) in calls]


def _insert_job_alone(conn: Any, row: NewJob) -> str | None:
    """:func:`insert_job` as one statement outside any transaction, which SQLite commits
    as it ends (call it with none open): two statements fewer than ``BEGIN IMMEDIATE`` ...
    ``COMMIT``, 3-4 µs of a lone add. Only when the insert is the whole transaction: no
    key to look up first, and no fold of the counts due (:func:`flush_counts`). Returns
    the job's id, or None when it ran nothing (run :func:`insert_job` in a transaction).
    If the statement fails (another connection holds the lock, say), SQLite rolls it
    back: nothing is written, and nothing is noted."""
    seen = _unfolded.get(id(conn))
    if row[8] is not None or seen is None or seen + 1 >= FOLD_EVERY:
        return None
    rowid = conn.execute(_INSERT, row).lastrowid
    _unfolded[id(conn)] = seen + 1
    if row[9]:
        _note_fresh(conn, row[1], (rowid,))
    return format_id(rowid, row[0])


insert_job.many = _insert_job_many  # type: ignore[attr-defined]
insert_job.alone = _insert_job_alone  # type: ignore[attr-defined]
insert_job.runs_first = True  # type: ignore[attr-defined]


def insert_jobs(conn: Any, rows: Sequence[NewJob]) -> list[str]:
    """Insert many keyless jobs in one statement batch."""
    return _insert_rows(conn, rows) if rows else []


#: What the jobs of one ``add_many`` share: (queue, priority, run_at, max_attempts, now, due)
Batch = tuple[str, int, int, int, int, int]


def insert_batch(conn: Any, batch: Batch, items: Sequence[tuple[int, str]]) -> list[str]:
    """Insert keyless jobs that share everything but their (nonce, payload) ``items``.

    What they share is written into the statement (the integers as integers, the queue as
    a quoted SQL string), so each row binds two values instead of ten: binding is half the
    cost of a bulk insert."""
    if not items:
        return []
    queue, priority, run_at, attempts, now, due = batch
    if "\x00" in queue:  # a NUL cannot appear in SQL text: bind everything instead
        rows = [(nonce, queue, text, priority, run_at, attempts, now, now, None, due)
                for nonce, text in items]  # fmt: skip
        return _insert_rows(conn, rows)
    quoted = "'" + queue.replace("'", "''") + "'"
    sql = (
        "INSERT INTO jobs (nonce, queue, payload, status, priority, run_at, attempts,"
        " max_attempts, lease_until, created_at, updated_at, key, due)"
        f" VALUES (?, {quoted}, ?, 'ready', {int(priority)}, {int(run_at)}, 0, {int(attempts)},"
        f" 0, {int(now)}, {int(now)}, NULL, {int(due)})"
    )
    counted = _before_batch(conn, len(items))
    conn.executemany(sql, items)
    first = _first_rowid(conn, len(items), items[0][0], queue)
    if counted:
        _after_batch(conn, {queue: len(items)})
    if due:
        _note_fresh(conn, queue, range(first, first + len(items)))
    return _format_ids(first, [nonce for nonce, _ in items])
