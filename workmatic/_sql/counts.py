"""The counts behind ``stats()`` (see the package notes), and what the storage layer keeps
per connection between statements: the count changes of the open transaction, the jobs
added since the last fold, the fresh jobs to wake workers for, and when delayed jobs were
last promoted. :func:`forget` drops it all when a connection closes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

#: The pseudo-status under which ``counts`` holds a queue's jobs up to the mark.
TOTAL = "*"

_LAST_ROWID = "(SELECT coalesce(max(id), 0) FROM jobs)"
_SET_MARK = f"UPDATE count_mark SET w = {_LAST_ROWID}"

_RECOUNT = [
    "DELETE FROM counts",
    "INSERT INTO counts (queue, status, n) SELECT queue, status, count(*) FROM jobs"
    " WHERE status != 'ready' GROUP BY queue, status",
    f"INSERT INTO counts (queue, status, n) SELECT queue, '{TOTAL}', count(*) FROM jobs"
    " WHERE true GROUP BY queue",
    _SET_MARK,
]

_deltas: dict[int, dict[tuple[str, str], int]] = {}

#: How many jobs a connection saw after the mark: read from the file at its first add
#: after a fold (so that jobs left by processes that exited count too), then counted up
#: by its own adds. A heuristic: it only decides when to fold.
_unfolded: dict[int, int] = {}

#: A connection folds the jobs after the mark into the totals once it sees this many
#: after it: a ready count scans about that many rows per connection adding jobs.
#: (``adding`` reads it too, through its own import: a test patches both.)
FOLD_EVERY = 250

_UPSERT_COUNT = (
    "INSERT INTO counts (queue, status, n) VALUES (?, ?, ?)"
    " ON CONFLICT (queue, status) DO UPDATE SET n = n + excluded.n"
)
_MARK = "SELECT w FROM count_mark"
_FOLD = (
    f"INSERT INTO counts (queue, status, n) SELECT queue, '{TOTAL}', count(*) FROM jobs"
    " WHERE id > (SELECT w FROM count_mark) GROUP BY queue"
    " ON CONFLICT (queue, status) DO UPDATE SET n = n + excluded.n"
)
_AFTER_MARK = f"SELECT {_LAST_ROWID} - w FROM count_mark"
_LOWER_MARK = f"{_SET_MARK} WHERE w > {_LAST_ROWID}"


def _bump(conn: Any, queue: str, status: str, n: int = 1) -> None:
    if status == "ready":
        return  # derived from the totals (package notes)
    pending = _deltas.setdefault(id(conn), {})
    key = (queue, status)
    pending[key] = pending.get(key, 0) + n


def _move(conn: Any, queue: str, old: str, new: str, n: int = 1) -> None:
    if n:
        _bump(conn, queue, old, -n)
        _bump(conn, queue, new, n)


def _grow(conn: Any, n: int) -> None:
    """Note ``n`` jobs about to be added after the mark (call before inserting them)."""
    key = id(conn)
    seen = _unfolded.get(key)
    if seen is None:  # an index seek, once per fold
        seen = int(conn.execute(_AFTER_MARK).fetchone()[0])
    _unfolded[key] = seen + n


def _mark(conn: Any) -> int:
    """The rowid up to which the totals count the jobs."""
    return int(conn.execute(_MARK).fetchone()[0])


def _fold(conn: Any) -> None:
    """Count the jobs after the mark into the totals and move the mark to the last job."""
    conn.execute(_FOLD)
    conn.execute(_SET_MARK)
    _unfolded.pop(id(conn), None)


def flush_counts(conn: Any) -> None:
    """Apply the count changes of the open transaction (call just before COMMIT)."""
    pending = _deltas.pop(id(conn), None)
    if pending:
        rows = [(q, st, n) for (q, st), n in pending.items() if n]
        if rows:
            conn.executemany(_UPSERT_COUNT, rows)
    if _unfolded and _unfolded.get(id(conn), 0) >= FOLD_EVERY:
        _fold(conn)


def discard_counts(conn: Any) -> None:
    """Forget the count changes, fresh jobs and adds since the last fold noted for a
    transaction that was rolled back."""
    _deltas.pop(id(conn), None)
    _fresh.pop(id(conn), None)
    _unfolded.pop(id(conn), None)


#: When each (connection, queue) last promoted its delayed jobs (``claiming.claim``).
_promoted: dict[tuple[int, str], int] = {}


def forget(conn: Any) -> None:
    """Drop what this module keeps about a connection that is being closed."""
    discard_counts(conn)
    for mark in [mark for mark in _promoted if mark[0] == id(conn)]:
        _promoted.pop(mark, None)


# --- fresh jobs -------------------------------------------------------------------------

#: Due jobs added by the open transaction of a connection and not claimed in it, by queue
#: (None: too many to track, count the queue as fresh). After the commit the writer wakes
#: this process's workers of those queues only: a job a finishing slot already claimed in
#: the same transaction needs no pump.
_fresh: dict[int, dict[str, set[int] | None]] = {}
_TRACK_FRESH = 64


def _note_fresh(conn: Any, queue: str, rowids: Sequence[int] | None) -> None:
    fresh = _fresh.setdefault(id(conn), {})
    if rowids is None or len(rowids) > _TRACK_FRESH:
        fresh[queue] = None
    elif queue not in fresh:
        fresh[queue] = set(rowids)
    else:
        known = fresh[queue]
        if known is not None:
            known.update(rowids)


def _claimed_fresh(conn: Any, queue: str, rowids: Iterable[int]) -> None:
    fresh = _fresh.get(id(conn))
    if fresh:
        known = fresh.get(queue)
        if known:
            known.difference_update(rowids)


def take_fresh(conn: Any) -> list[str]:
    """The queues with due jobs that the transaction just committed added and left
    unclaimed (call once after each commit)."""
    fresh = _fresh.pop(id(conn), None)
    if not fresh:
        return []
    return [queue for queue, rowids in fresh.items() if rowids is None or rowids]


def recount(conn: Any) -> None:
    """Rebuild the counts table (and the mark) from the jobs themselves."""
    discard_counts(conn)
    for statement in _RECOUNT:
        conn.execute(statement)


def _tally(
    conn: Any, where: str, params: Sequence[Any], limit: int | None = None
) -> dict[tuple[str, str], tuple[int, int]]:
    """``{(queue, status): (n, up to the mark)}`` of the jobs a set-based statement is about
    to change: how many, and how many of them the totals count."""
    mark = _mark(conn)
    if limit is None:
        sql = (
            f"SELECT queue, status, count(*), sum(id <= {mark}) FROM jobs{where}"
            " GROUP BY queue, status"
        )
    else:
        sql = (
            f"SELECT queue, status, count(*), sum(id <= {mark}) FROM (SELECT id, queue, status"
            f" FROM jobs{where} ORDER BY id LIMIT {int(limit)}) GROUP BY queue, status"
        )
    rows = conn.execute(sql, params).fetchall()
    return {(str(q), str(st)): (int(n), int(k or 0)) for q, st, n, k in rows}


def _before_batch(conn: Any, count: int) -> bool:
    """Before inserting ``count`` jobs: True if they are to be counted into the totals as
    they are inserted (a large batch: the jobs after the mark are folded first, so that the
    batch is all there is after it), else False (they are noted for the next fold)."""
    if count <= FOLD_EVERY:
        _grow(conn, count)
        return False
    _fold(conn)
    return True


def _after_batch(conn: Any, by_queue: dict[str, int]) -> None:
    """Count a batch :func:`_before_batch` chose to count (``{queue: jobs}``) into the
    totals, and move the mark past it."""
    for queue, count in by_queue.items():
        _bump(conn, queue, TOTAL, count)
    conn.execute(_SET_MARK)
