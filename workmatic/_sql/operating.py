"""Operating: what the admin API does to many jobs or one (import, pause, retry, purge,
transfer, move), each keeping the counts exact."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .counts import _LOWER_MARK, TOTAL, _bump, _grow, _mark, _move, _tally
from .reading import _where, locate

_IMPORT = (
    "INSERT INTO jobs (public_id, nonce, queue, payload, status, priority, run_at, attempts,"
    " max_attempts, lease_until, created_at, updated_at, last_error, result, key, due)"
    " VALUES (:public_id, :nonce, :queue, :payload, :status, :priority, :run_at, :attempts,"
    " :max_attempts, 0, :created_at, :updated_at, :last_error, :result, :key, :due)"
)


def import_jobs(conn: Any, records: Iterable[dict[str, Any]]) -> tuple[int, int]:
    """Insert records, skipping public ids already present. Returns (inserted, skipped)."""
    inserted = skipped = 0
    for record in records:
        public_id = record.get("public_id")
        if public_id and locate(conn, public_id) is not None:
            skipped += 1
            continue
        _grow(conn, 1)
        conn.execute(_IMPORT, record)
        inserted += 1
        _bump(conn, record["queue"], record["status"])
    return inserted, skipped


def set_paused(conn: Any, queue: str, paused: bool, now: int) -> None:
    """Pause or resume a queue, for every process."""
    conn.execute(
        "INSERT INTO queues (name, paused, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET paused = excluded.paused,"
        " updated_at = excluded.updated_at",
        (queue, int(paused), now),
    )


_RESET = (
    "status = 'ready', attempts = 0, due = 1, run_at = ?, lease_until = 0, result = NULL,"
    " updated_at = ?"
)


def retry_job(conn: Any, public_id: str, now: int) -> str | None:
    """Reset a dead or failed job to ready. Returns its previous status, None if unknown."""
    found = locate(conn, public_id)
    if found is None:
        return None
    rowid, status, queue = found
    if status in ("dead", "failed"):
        conn.execute(f"UPDATE jobs SET {_RESET} WHERE id = ?", (now, now, rowid))
        _move(conn, queue, status, "ready")
    return status


def retry_jobs(conn: Any, queue: str | None, statuses: Sequence[str], now: int) -> int:
    """Reset every matching job (never running or ready ones) to ready."""
    where, params = _where(queue, statuses)
    tally = _tally(conn, where, params)
    n = int(conn.execute(f"UPDATE jobs SET {_RESET}{where}", (now, now, *params)).rowcount)
    for (q, status), (k, _) in tally.items():
        _move(conn, q, status, "ready", k)
    return n


def purge(conn: Any, queue: str | None, statuses: Sequence[str]) -> int:
    """Delete matching jobs; the caller never passes ``running``."""
    where, params = _where(queue, statuses)
    tally = _tally(conn, where, params)
    n = int(conn.execute(f"DELETE FROM jobs{where}", params).rowcount)
    for (q, status), (k, counted) in tally.items():
        _bump(conn, q, status, -k)
        _bump(conn, q, TOTAL, -counted)
    if n:
        conn.execute(_LOWER_MARK)  # SQLite reuses the rowids of the newest rows deleted
    return n


def transfer(
    conn: Any, source: str, target: str, statuses: Sequence[str], limit: int, reset: bool, now: int
) -> int:
    """Move up to ``limit`` of a queue's jobs (oldest first) to another queue."""
    where, params = _where(source, statuses)
    sets = f"queue = ?, {_RESET}" if reset else "queue = ?"
    values: list[Any] = [target, now, now] if reset else [target]
    sql = (
        f"UPDATE jobs SET {sets} WHERE id IN"
        f" (SELECT id FROM jobs{where} ORDER BY id LIMIT {int(limit)})"
    )
    tally = _tally(conn, where, params, limit)
    n = int(conn.execute(sql, (*values, *params)).rowcount)
    for (_, status), (k, counted) in tally.items():
        _bump(conn, source, status, -k)
        _bump(conn, target, "ready" if reset else status, k)
        _bump(conn, source, TOTAL, -counted)
        _bump(conn, target, TOTAL, counted)
    return n


def move_job(conn: Any, public_id: str, target: str, now: int) -> str | None:
    """Move one job to another queue unless it is running. Returns its status, None if unknown."""
    found = locate(conn, public_id)
    if found is None:
        return None
    rowid, status, queue = found
    if status != "running":
        conn.execute("UPDATE jobs SET queue = ?, updated_at = ? WHERE id = ?", (target, now, rowid))
        _bump(conn, queue, status, -1)
        _bump(conn, target, status, 1)
        if rowid <= _mark(conn):
            _bump(conn, queue, TOTAL, -1)
            _bump(conn, target, TOTAL, 1)
    return status
