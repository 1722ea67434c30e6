"""Reading: a job by id, lists and pages of jobs, counts by status and queue, and the
pragmas the database polls (checkpoints, ``data_version``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .adding import parse_id
from .counts import TOTAL
from .schema import JOB_COLUMNS


def _where(queue: str | None, statuses: Sequence[str] | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if queue is not None:
        clauses.append("queue = ?")
        params.append(queue)
    if statuses:
        clauses.append(f"status IN ({','.join('?' * len(statuses))})")
        params.extend(statuses)
        # Spell out a partial index's own condition so that SQLite may use it.
        if set(statuses) <= {"failed", "dead"}:
            clauses.append("status IN ('failed', 'dead')")
        elif set(statuses) == {"running"}:
            clauses.append("status = 'running'")
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


_BY_NATIVE_ID = "FROM jobs WHERE id = ? AND nonce = ? AND public_id IS NULL"
_BY_IMPORTED_ID = "FROM jobs WHERE public_id = ?"


def get_job(conn: Any, public_id: str) -> tuple[Any, ...] | None:
    """One job's row by public id."""
    row: tuple[Any, ...] | None = None
    parsed = parse_id(public_id)
    if parsed is not None:
        row = conn.execute(f"SELECT {JOB_COLUMNS} {_BY_NATIVE_ID}", parsed).fetchone()
    if row is None:
        row = conn.execute(f"SELECT {JOB_COLUMNS} {_BY_IMPORTED_ID}", (public_id,)).fetchone()
    return row


def locate(conn: Any, public_id: str) -> tuple[int, str, str] | None:
    """``(rowid, status, queue)`` of a job by public id."""
    row = None
    parsed = parse_id(public_id)
    if parsed is not None:
        row = conn.execute(f"SELECT id, status, queue {_BY_NATIVE_ID}", parsed).fetchone()
    if row is None:
        row = conn.execute(f"SELECT id, status, queue {_BY_IMPORTED_ID}", (public_id,)).fetchone()
    return None if row is None else (int(row[0]), str(row[1]), str(row[2]))


def list_jobs(
    conn: Any, queue: str | None, statuses: Sequence[str] | None, limit: int, offset: int
) -> list[tuple[Any, ...]]:
    """Jobs newest first."""
    where, params = _where(queue, statuses)
    sql = f"SELECT {JOB_COLUMNS} FROM jobs{where} ORDER BY id DESC LIMIT {int(limit)}"
    if offset:
        sql += f" OFFSET {int(offset)}"
    return list(conn.execute(sql, params).fetchall())


def page_jobs(
    conn: Any, queue: str | None, statuses: Sequence[str] | None, after: int, limit: int
) -> list[tuple[Any, ...]]:
    """Jobs in insertion order with rowid greater than ``after`` (keyset pagination)."""
    where, params = _where(queue, statuses)
    where = f"{where} AND id > ?" if where else " WHERE id > ?"
    sql = f"SELECT {JOB_COLUMNS} FROM jobs{where} ORDER BY id LIMIT {int(limit)}"
    return list(conn.execute(sql, (*params, after)).fetchall())


_COUNT_ROWS = (
    "SELECT queue, status, n FROM counts WHERE status != 'ready'{where}"
    f" UNION ALL SELECT queue, '{TOTAL}', count(*) FROM jobs"
    " WHERE id > (SELECT w FROM count_mark){where} GROUP BY queue"
)


_COUNT_OTHERS = (
    f"SELECT queue, status, n FROM counts WHERE status NOT IN ('ready', '{TOTAL}'){{where}}"
)


def _count_rows(conn: Any, queue: str | None, ready: bool = True) -> dict[str, dict[str, int]]:
    """``{queue: {status: n}}`` of one queue or all (zeros left out), with the ready jobs
    unless ``ready`` is False (they alone need the scan of the jobs after the mark). One
    statement, so the totals, the jobs after the mark and the other statuses are read in
    one snapshot."""
    sql = _COUNT_ROWS if ready else _COUNT_OTHERS
    if queue is None:
        rows = conn.execute(sql.format(where="")).fetchall()
    else:
        rows = conn.execute(sql.format(where=" AND queue = ?1"), (queue,)).fetchall()
    totals: dict[str, int] = {}
    counts: dict[str, dict[str, int]] = {}
    for q, status, n in rows:
        if status == TOTAL:
            totals[str(q)] = totals.get(str(q), 0) + int(n)
        elif n:
            counts.setdefault(str(q), {})[str(status)] = int(n)
    for q, total in totals.items():
        by_status = counts.setdefault(q, {})
        rest = total - sum(by_status.values())
        if rest:
            by_status["ready"] = rest
    return {q: by_status for q, by_status in counts.items() if by_status}


def count_jobs(conn: Any, queue: str | None, statuses: Sequence[str] | None) -> int:
    """How many jobs match (from the counts table; ready jobs also from the jobs added since
    the last fold: about :data:`FOLD_EVERY` per connection adding jobs)."""
    wanted = None if not statuses else set(statuses)
    counts = _count_rows(conn, queue, ready=wanted is None or "ready" in wanted)
    return sum(
        n
        for by_status in counts.values()
        for status, n in by_status.items()
        if wanted is None or status in wanted
    )


def count_by_status(conn: Any, queue: str | None) -> dict[str, int]:
    """``{status: count}`` for one queue or for all."""
    total: dict[str, int] = {}
    for by_status in _count_rows(conn, queue).values():
        for status, n in by_status.items():
            total[status] = total.get(status, 0) + n
    return total


def count_by_queue(conn: Any) -> tuple[dict[str, dict[str, int]], dict[str, bool]]:
    """``{queue: {status: count}}`` and ``{queue: paused}`` for every known queue."""
    counts = _count_rows(conn, None)
    paused = {str(name): bool(p) for name, p in conn.execute("SELECT name, paused FROM queues")}
    return counts, paused


def checkpoint(conn: Any) -> tuple[int, int, int]:
    """``PRAGMA wal_checkpoint(PASSIVE)``: (busy, WAL frames, frames checkpointed)."""
    row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(row[0]), int(row[1]), int(row[2])


def restart_wal(conn: Any, wait_ms: int) -> tuple[int, int, int]:
    """``PRAGMA wal_checkpoint(RESTART)``, waiting up to ``wait_ms`` for the write lock and
    for readers: (busy, WAL frames, frames checkpointed), busy 1 if it could not restart.

    A PASSIVE checkpoint never stops writers, so under a steady stream of commits it never
    catches up with the last one and the WAL is never started over. RESTART takes the
    write lock (writers wait, cooperatively, for as long as it runs) and, once every frame
    is copied and no reader still uses the WAL, makes the next commit write from its start.
    """
    conn.execute(f"PRAGMA busy_timeout = {int(wait_ms)}")
    try:
        row = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
    finally:
        conn.execute("PRAGMA busy_timeout = 0")
    return int(row[0]), int(row[1]), int(row[2])


def data_version(conn: Any) -> int:
    """``PRAGMA data_version``: changes when another connection commits."""
    return int(conn.execute("PRAGMA data_version").fetchone()[0])
