"""Every SQL statement Workmatic runs, for SQLite: the storage interface.

Each function takes a DB-API connection (in autocommit mode; the caller owns the
transaction) and plain values. Another backend (PostgreSQL with ``FOR UPDATE SKIP
LOCKED`` and ``LISTEN/NOTIFY``) would provide a module with the same functions.

Design notes:

* ``id INTEGER PRIMARY KEY`` (no AUTOINCREMENT) orders jobs by insertion. A job's public
  id is derived from its row: 12 hex digits of ``id`` then 12 of a random ``nonce``
  (:func:`format_id`), so it needs no index of its own, sorts in insertion order, and is
  never reused even when SQLite reuses the rowid of a deleted job. Jobs imported with an
  id from elsewhere keep it in ``public_id`` (a partial unique index covers those only).
* A ``ready`` job is either *due* (``due = 1``: in ``jobs_claim``, ordered by priority then
  id) or *delayed* (``due = 0``: in ``jobs_delayed``, ordered by ``run_at``). Every claim
  first promotes delayed jobs whose time has come (an index seek that stops at the first
  future job), so the claim itself never rescans jobs that are not yet due, however many
  there are and whatever their priority.
* ``counts`` holds, by queue, the number of jobs in every status but ``ready`` and the
  number of jobs up to a rowid watermark (``count_mark.w``) in status ``'*'``; the ready
  count is derived: the jobs up to the mark, plus those after it (a short rowid range
  scan), minus the jobs in other statuses (:func:`_count_rows`, one statement, so one
  snapshot). So adding a job writes nothing but its row: no counter (its page in the WAL
  was a fifth of a lone add's cost), and a claim or a retry moves no ``ready`` counter.
  Every function here that changes a job's queue or status records the change with
  :func:`_bump`; the writer calls :func:`flush_counts` once before each commit
  (:func:`discard_counts` on rollback), so a group commit of many jobs costs one upsert
  per (queue, status) it touched. Every :data:`FOLD_EVERY` jobs a connection adds, its
  flush folds the jobs after the mark into the totals and moves the mark (:func:`_fold`);
  a batch larger than that is folded as it is inserted. Deletions lower the mark when they
  remove the newest rows, whose rowids SQLite hands out again. :func:`recount` rebuilds it
  all from the jobs (after a file was edited by hand).
* Limits are written into the SQL as literals, never bound: pysqlite3's SQLite is built
  with STAT4, which re-prepares a statement whenever a bound value the planner looked at
  changes (a bound ``LIMIT ?`` made every claim re-parse and re-plan its statement).
* ``token`` is the fencing token: each claim increments it, and completion, failure,
  renewal and release apply only with the token of the claim that took the job.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import gevent.monkey

SCHEMA_VERSION = 3

#: The columns every job read returns, in this order (see ``database.row_to_job``).
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
    # Counts by queue and status, kept exact by every write below (stats in O(1) at any
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

# Version 3: ready jobs counted from a rowid watermark instead of a counter (module notes).
_V3 = [
    "CREATE TABLE IF NOT EXISTS count_mark (w INTEGER NOT NULL)",
    "INSERT INTO count_mark (w) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM count_mark)",
    *_RECOUNT,
]

#: Migrations by the version they lead to.
MIGRATIONS: dict[int, list[str]] = {1: _V1, 2: _V2, 3: _V3}

LEASE_EXPIRED = (
    "lease expired: the worker holding this job stopped renewing its lease"
    " (it crashed, was killed, or was blocked for longer than the lease)"
)


# --- counts ----------------------------------------------------------------------------

_deltas: dict[int, dict[tuple[str, str], int]] = {}

#: How many jobs a connection saw after the mark: read from the file at its first add
#: after a fold (so that jobs left by processes that exited count too), then counted up
#: by its own adds. A heuristic: it only decides when to fold.
_unfolded: dict[int, int] = {}

#: A connection folds the jobs after the mark into the totals once it sees this many
#: after it: a ready count scans about that many rows per connection adding jobs.
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
        return  # derived from the totals (module notes)
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


# --- adding ----------------------------------------------------------------------------


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


# --- claiming and finishing ------------------------------------------------------------

_PAUSED = "SELECT paused FROM queues WHERE name = ?"
_PROMOTE = (
    "UPDATE jobs SET due = 1 WHERE queue = ? AND status = 'ready' AND due = 0 AND run_at <= ?"
)
_SELECT_DUE = (
    "SELECT id FROM jobs WHERE queue = ?1 AND status = 'ready' AND due = 1"
    " AND NOT EXISTS (SELECT 1 FROM queues WHERE name = ?1 AND paused = 1)"
    " ORDER BY priority, id LIMIT {limit}"
)
_TAKE = (
    "UPDATE jobs SET status = 'running', lease_until = ?, token = token + 1, updated_at = ?"
    " WHERE id IN ({marks}) RETURNING id, public_id, payload, priority, attempts, max_attempts,"
    " created_at, run_at, last_error, key, token, nonce"
)
#: Delayed jobs are promoted by at most one claim per this many ms (per connection and
#: queue) unless the claim asks for it; a due job waits at most that much longer.
PROMOTE_EVERY_MS = 10
_promoted: dict[tuple[int, str], int] = {}
_REAP = (
    "UPDATE jobs SET attempts = attempts + 1,"
    " status = CASE WHEN attempts + 1 >= max_attempts THEN 'dead' ELSE 'ready' END,"
    " due = 1, run_at = ?1, lease_until = 0, token = token + 1, updated_at = ?1, last_error = ?2"
    " WHERE queue = ?3 AND status = 'running' AND lease_until < ?1 RETURNING status"
)


@functools.lru_cache(maxsize=256)
def _select_due(limit: int) -> str:
    return _SELECT_DUE.format(limit=int(limit))  # a literal: see the module notes


@functools.lru_cache(maxsize=256)
def _take(count: int) -> str:
    return _TAKE.format(marks=",".join("?" * count))


def is_paused(conn: Any, queue: str) -> bool:
    """Whether the queue is paused (in every process)."""
    row = conn.execute(_PAUSED, (queue,)).fetchone()
    return bool(row and row[0])


def claim(
    conn: Any, queue: str, limit: int, now: int, lease_until: int, promote: bool = False
) -> list[tuple[Any, ...]]:
    """Claim up to ``limit`` due jobs of an unpaused queue: best priority first, then FIFO.

    :param promote: promote due delayed jobs first even if it was done just now.
    :returns: the claimed rows (``JOB_COLUMNS``) as they are after the claim, in order.
    """
    if limit <= 0:
        return []
    mark = (id(conn), queue)
    if promote or now - _promoted.get(mark, 0) >= PROMOTE_EVERY_MS:
        conn.execute(_PROMOTE, (queue, now))
        _promoted[mark] = now
    ids = [row[0] for row in conn.execute(_select_due(limit), (queue,)).fetchall()]
    if not ids:
        return []
    rows = conn.execute(_take(len(ids)), (lease_until, now, *ids)).fetchall()
    _move(conn, queue, "ready", "running", len(rows))
    if _fresh:
        _claimed_fresh(conn, queue, ids)
    if [r[0] for r in rows] != ids:  # RETURNING follows rowids; the claim order may not
        taken = {r[0]: r for r in rows}
        rows = [taken[i] for i in ids]
    # In claim order, and in JOB_COLUMNS order (the claim reads only what it does not know).
    return [
        (r[0], r[1], queue, r[2], "running", *r[3:9], None, now, lease_until, r[9], r[10], r[11])
        for r in rows
    ]


_PEEK = (
    "SELECT (SELECT paused FROM queues WHERE name = ?1),"
    " EXISTS (SELECT 1 FROM jobs WHERE queue = ?1 AND status = 'ready' AND due = 1),"
    " (SELECT run_at FROM jobs WHERE queue = ?1 AND status = 'ready' AND due = 0"
    "  ORDER BY run_at LIMIT 1),"
    " EXISTS (SELECT 1 FROM jobs WHERE queue = ?1 AND status = 'running' AND lease_until < ?2)"
)


def peek(conn: Any, queue: str, now: int) -> tuple[bool, bool, int | None, bool]:
    """A read-only look before claiming: (paused, has_due, next_delayed_run_at, has_expired)."""
    paused, has_due, next_delayed, expired = conn.execute(_PEEK, (queue, now)).fetchone()
    return bool(paused), bool(has_due), next_delayed, bool(expired)


def reap_and_claim(
    conn: Any, queue: str, limit: int, now: int, lease_until: int, reap: bool
) -> list[tuple[Any, ...]]:
    """Expire stale leases (if asked), then claim."""
    if reap:
        reap_expired(conn, queue, now)
    return claim(conn, queue, limit, now, lease_until, promote=True)


def reap_expired(conn: Any, queue: str, now: int) -> int:
    """Turn the queue's expired leases into failed attempts (``ready`` again, or ``dead``)."""
    statuses = [row[0] for row in conn.execute(_REAP, (now, LEASE_EXPIRED, queue)).fetchall()]
    for status in statuses:
        _move(conn, queue, "running", status)
    return len(statuses)


_COMPLETE = (
    "UPDATE jobs SET status = 'done', result = ?, lease_until = 0, updated_at = ?"
    " WHERE id = ? AND token = ? AND status = 'running'"
)
_RETRY_LATER = (
    "UPDATE jobs SET status = 'ready', attempts = attempts + 1, last_error = ?, run_at = ?,"
    " due = ?, lease_until = 0, updated_at = ? WHERE id = ? AND token = ? AND status = 'running'"
)
_FAIL = (
    "UPDATE jobs SET status = ?, attempts = attempts + 1, last_error = ?, lease_until = 0,"
    " updated_at = ? WHERE id = ? AND token = ? AND status = 'running'"
)
_RELEASE = (
    "UPDATE jobs SET status = 'ready', due = 1, lease_until = 0, updated_at = ?"
    " WHERE id = ? AND token = ? AND status = 'running'"
)
_RENEW = "UPDATE jobs SET lease_until = ? WHERE id = ? AND token = ? AND status = 'running'"

#: How a run ended: (kind, rowid, token, now, queue, data...) where kind is one of
#: "done" (result_json), "retry" (error, run_at, due), "dead"/"failed" (error), "release" ().
Outcome = tuple[Any, ...]


def finish(conn: Any, outcome: Outcome) -> bool:
    """Record a run's outcome, fenced by the claim's token. Returns False if the lease was lost."""
    kind, rowid, token, now, queue = outcome[:5]
    held = _finish(conn, kind, rowid, token, now, outcome)
    if held:
        _move(conn, queue, "running", _NEW_STATUS[kind])
    return held


_NEW_STATUS = {
    "done": "done",
    "retry": "ready",
    "dead": "dead",
    "failed": "failed",
    "release": "ready",
}


def _finish(conn: Any, kind: str, rowid: int, token: int, now: int, outcome: Outcome) -> bool:
    if kind == "done":
        cur = conn.execute(_COMPLETE, (outcome[5], now, rowid, token))
    elif kind == "retry":
        error, run_at, due = outcome[5:8]
        cur = conn.execute(_RETRY_LATER, (error, run_at, due, now, rowid, token))
    elif kind in ("dead", "failed"):
        cur = conn.execute(_FAIL, (kind, outcome[5], now, rowid, token))
    elif kind == "release":
        cur = conn.execute(_RELEASE, (now, rowid, token))
    else:  # pragma: no cover - programming error
        raise ValueError(f"unknown outcome {kind!r}")
    return bool(cur.rowcount)


def finish_and_claim(
    conn: Any, outcome: Outcome | None, queue: str, limit: int, now: int, lease_until: int
) -> tuple[bool, list[tuple[Any, ...]]]:
    """Record an outcome and claim the next jobs in the same transaction."""
    held = finish(conn, outcome) if outcome is not None else True
    return held, claim(conn, queue, limit, now, lease_until)


def _finish_and_claim_many(
    conn: Any, calls: Sequence[tuple[Outcome | None, str, int, int, int]]
) -> list[tuple[bool, list[tuple[Any, ...]]]]:
    """:func:`finish_and_claim` for many slots at once: the outcomes (each fenced), then one
    claim per queue for all the slots that want a job, shared out in order."""
    held = finish_many(conn, [call[0] for call in calls])
    wanted: dict[str, int] = {}
    for _, queue, limit, _, _ in calls:
        if limit > 0:
            wanted[queue] = wanted.get(queue, 0) + limit
    claimed: dict[str, list[tuple[Any, ...]]] = {}
    for queue, total in wanted.items():
        _, _, _, now, lease_until = next(c for c in calls if c[1] == queue and c[2] > 0)
        claimed[queue] = claim(conn, queue, total, now, lease_until)
    results = []
    taken: dict[str, int] = {}
    for ok, (_, queue, limit, _, _) in zip(held, calls, strict=True):
        start = taken.get(queue, 0)
        pool = claimed.get(queue, [])
        results.append((ok, pool[start : start + limit]))
        taken[queue] = start + limit
    return results


_HOLDS = "SELECT token, status FROM jobs WHERE id = ?"


def finish_many(conn: Any, outcomes: Sequence[Outcome | None]) -> list[bool]:
    """:func:`finish` for many outcomes (None: nothing to record, counts as held).

    The ``done`` outcomes, nearly all of them under load, go in one ``executemany`` in row
    order; when it changed fewer rows than it was given, each row is read back to find the
    ones whose lease was lost (a row we finished is ``done`` with our token; a lost one has
    another token, another status, or is gone)."""
    held = [True] * len(outcomes)
    done = sorted(
        ((o[1], o[2], o[3], o[4], o[5], i) for i, o in enumerate(outcomes)
         if o is not None and o[0] == "done"),
        key=lambda d: (d[0], d[5]),  # row order (ids, then position: never the results)
    )  # fmt: skip
    if len(done) < 2:
        done = []  # a lone one goes through finish() like every other outcome
    else:
        changed = conn.executemany(
            _COMPLETE, [(result, now, rowid, token) for rowid, token, now, _, result, _ in done]
        ).rowcount
        if changed != len(done):
            for rowid, token, _, _, _, i in done:
                row = conn.execute(_HOLDS, (rowid,)).fetchone()
                held[i] = row is not None and row[0] == token and row[1] == "done"
        by_queue: dict[str, int] = {}
        for _, _, _, queue, _, i in done:
            if held[i]:
                by_queue[queue] = by_queue.get(queue, 0) + 1
        for queue, n in by_queue.items():
            _move(conn, queue, "running", "done", n)
    batched = {d[5] for d in done}
    for i, outcome in enumerate(outcomes):
        if outcome is not None and i not in batched:
            held[i] = finish(conn, outcome)
    return held


finish_and_claim.many = _finish_and_claim_many  # type: ignore[attr-defined]


def renew(conn: Any, leases: Sequence[tuple[int, int]], lease_until: int) -> list[int]:
    """Extend the leases of ``(rowid, token)`` pairs; return the rowids no longer held."""
    lost = []
    for rowid, token in leases:
        if not conn.execute(_RENEW, (lease_until, rowid, token)).rowcount:
            lost.append(rowid)
    return lost


def renew_and_reap(
    conn: Any, queue: str, leases: Sequence[tuple[int, int]], now: int, lease_ms: int
) -> list[int]:
    """Renew this worker's leases and expire other holders' stale ones (so that a busy
    worker, whose slots always claim their next job directly, still rescues the jobs of a
    crashed one). Returns the rowids no longer held."""
    lost = renew(conn, leases, now + lease_ms)
    reap_expired(conn, queue, now)
    return lost


# --- reading ---------------------------------------------------------------------------


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


# --- operating -------------------------------------------------------------------------


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
