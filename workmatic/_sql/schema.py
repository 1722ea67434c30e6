"""The schema: the tables and indexes of each version, the migrations that lead to them,
and the file's ``user_version``."""

from __future__ import annotations

from typing import Any

from .counts import _RECOUNT

SCHEMA_VERSION = 3

#: The columns every job read returns, in this order (see ``_rows.row_to_job``).
JOB_COLUMNS = (
    "id, public_id, queue, payload, status, priority, attempts, max_attempts, created_at,"
    " run_at, last_error, result, updated_at, lease_until, key, token, nonce"
)

# Version 1: the original columns (those of the Node original's CSV format).
_V1 = [
    """CREATE TABLE IF NOT EXISTS jobs (
        id INTEGER PRIMARY KEY,
        public_id TEXT NOT NULL UNIQUE,
        queue TEXT NOT NULL,
        payload TEXT NOT NULL,
        status TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        run_at INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL DEFAULT 3,
        lease_until INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        last_error TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS queues (
        name TEXT PRIMARY KEY,
        paused INTEGER NOT NULL DEFAULT 0,
        updated_at INTEGER NOT NULL DEFAULT 0
    )""",
]

# Version 2: the table rebuilt: derived public ids (nonce), results, idempotency keys,
# fencing tokens, the due flag; the claim, lease and failure indexes; the counts table.
_V2 = [
    """CREATE TABLE jobs_v2 (
        id INTEGER PRIMARY KEY,
        public_id TEXT,
        nonce INTEGER NOT NULL DEFAULT 0,
        queue TEXT NOT NULL,
        payload TEXT NOT NULL,
        status TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        run_at INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL DEFAULT 3,
        lease_until INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        last_error TEXT,
        result TEXT,
        key TEXT,
        token INTEGER NOT NULL DEFAULT 0,
        due INTEGER NOT NULL DEFAULT 1
    )""",
    "INSERT INTO jobs_v2 (id, public_id, queue, payload, status, priority, run_at, attempts,"
    " max_attempts, lease_until, created_at, updated_at, last_error, due)"
    " SELECT id, public_id, queue, payload, status, priority, run_at, attempts, max_attempts,"
    " lease_until, created_at, updated_at, last_error,"
    " CASE WHEN status = 'ready' AND run_at > CAST(unixepoch('subsec') * 1000 AS INTEGER)"
    " THEN 0 ELSE 1 END FROM jobs",
    "DROP TABLE jobs",
    "ALTER TABLE jobs_v2 RENAME TO jobs",
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_public_id ON jobs (public_id)"
    " WHERE public_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS jobs_claim ON jobs (queue, priority, id)"
    " WHERE status = 'ready' AND due = 1",
    "CREATE INDEX IF NOT EXISTS jobs_delayed ON jobs (queue, run_at)"
    " WHERE status = 'ready' AND due = 0",
    "CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (queue, lease_until) WHERE status = 'running'",
    "CREATE INDEX IF NOT EXISTS jobs_failed ON jobs (queue, id) WHERE status IN ('failed', 'dead')",
    "CREATE INDEX IF NOT EXISTS jobs_key ON jobs (queue, key) WHERE key IS NOT NULL",
    # Counts by queue and status, kept exact by every write of this package (stats in O(1) at any
    # size; one upsert per transaction, cheaper than status indexes or triggers).
    """CREATE TABLE IF NOT EXISTS counts (
        queue TEXT NOT NULL,
        status TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (queue, status)
    ) WITHOUT ROWID""",
    "INSERT INTO counts (queue, status, n) SELECT queue, status, count(*) FROM jobs"
    " GROUP BY queue, status",
]

# Version 3: ready jobs counted from a rowid watermark instead of a counter (package notes).
_V3 = [
    "CREATE TABLE IF NOT EXISTS count_mark (w INTEGER NOT NULL)",
    "INSERT INTO count_mark (w) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM count_mark)",
    *_RECOUNT,
]

#: Migrations by the version they lead to.
MIGRATIONS: dict[int, list[str]] = {1: _V1, 2: _V2, 3: _V3}


def schema_version(conn: Any) -> int:
    """Return ``PRAGMA user_version``."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def has_jobs_table(conn: Any) -> bool:
    """Whether the file has a ``jobs`` table (of any shape)."""
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'")
    return row.fetchone() is not None


def migrate(conn: Any, current: int) -> int:
    """Apply every migration after ``current`` (inside the caller's transaction)."""
    version = current
    for target in sorted(MIGRATIONS):
        if target <= version:
            continue
        for statement in MIGRATIONS[target]:
            if target == 2 and "unixepoch" in statement and not _has_unixepoch(conn):
                statement = statement.replace(
                    "CAST(unixepoch('subsec') * 1000 AS INTEGER)",
                    "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
                )
            conn.execute(statement)
        version = target
    conn.execute(f"PRAGMA user_version = {int(version)}")
    return version


def _has_unixepoch(conn: Any) -> bool:
    try:
        conn.execute("SELECT unixepoch('subsec')").fetchone()
    except Exception:
        return False
    return True
