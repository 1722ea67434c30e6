"""The floor: the bare SQL cost of the statements Workmatic runs, on a raw connection.

The schema comes from Workmatic itself (``create_database`` for a file, the same
migrations for ``:memory:``), and the statements are those of ``workmatic._sql``: its
functions are called directly on a raw pysqlite3 connection with the same pragmas
(WAL, ``synchronous=NORMAL``, ``temp_store=MEMORY``). Parameters (ids, payload JSON) are
prepared before the clock starts, so what is timed is SQLite plus the thin ``_sql``
wrappers: the best a perfect Python layer could do with those statements.

Transactions are grouped the way an ideal group commit would group them:

* ``seq_add``: one INSERT per transaction (a lone caller cannot be grouped), as one
  self-committing statement when the core runs a lone add so (``insert_job.alone``);
* ``par_add``: 100 INSERTs per transaction (the 100 waiting callers), through
  ``_sql.insert_job.many`` when the core has it (as its writer does);
* ``add_many``: one ``executemany`` in one transaction (``_sql.insert_batch``, as the core);
* ``process`` at concurrency *c*: one transaction per round that finishes the *c* jobs of
  the previous round and claims the next *c* (``_sql.finish_many``, as a worker's round
  records its outcomes, or ``_sql.finish`` for each job where the core has no
  ``finish_many``; then ``_sql.claim``);
* ``mixed``: one transaction per round with one INSERT per producer plus the round's
  finish-and-claim.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from _common import Result, import_workmatic, payloads, rate

workmatic = import_workmatic()
from workmatic import _driver, _sql  # noqa: E402
from workmatic import job as _job  # noqa: E402
from workmatic.job import now_ms  # noqa: E402

#: What ``Client.add`` puts first in an insert row (a nonce, or a public id before).
_first_column: Callable[[], Any] = getattr(_job, "new_nonce", None) or _job.new_job_id

QUEUE = "bench"
PRAGMAS = (
    "PRAGMA busy_timeout = 0",
    "PRAGMA synchronous = {sync}",
    "PRAGMA temp_store = MEMORY",
)


def connect(path: str, durability: str) -> Any:
    """Return a raw connection to a Workmatic-schema database at *path*."""
    sync = "FULL" if durability == "full" else "NORMAL"
    if path == ":memory:":
        conn = _driver.sqlite.connect(":memory:", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        _sql.migrate(conn, 0)
        commit(conn)
    else:
        workmatic.create_database(path, durability=durability).close()
        conn = _driver.sqlite.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
    for pragma in PRAGMAS:
        conn.execute(pragma.format(sync=sync))
    return conn


def take_fresh(conn: Any) -> None:
    """Drop the fresh-job notes of a commit, as the writer takes them after each."""
    take = getattr(_sql, "take_fresh", None)
    if take is not None:
        take(conn)


def commit(conn: Any) -> None:
    """Commit as the core does (flushing its per-transaction count deltas, if it keeps any)."""
    flush = getattr(_sql, "flush_counts", None)
    if flush is not None:
        flush(conn)
    conn.execute("COMMIT")
    take_fresh(conn)


def new_rows(count: int, start: int = 0) -> list[Any]:
    """Return *count* insert rows shaped exactly as ``Client.add`` builds them."""
    now = now_ms()
    return [
        (_first_column(), QUEUE, json.dumps(p, separators=(",", ":")), 0, now, 3, now, now, None, 1)
        for p in payloads(count, start)
    ]


def _process(conn: Any, jobs: int, concurrency: int, producers: int = 0) -> int:
    """Finish-and-claim rounds until *jobs* jobs are done; return the done count."""
    held: list[tuple[Any, ...]] = []
    done = 0
    pending = new_rows(jobs) if producers else []
    lease = 30_000
    finish_many = getattr(_sql, "finish_many", None)
    while done < jobs:
        now = now_ms()
        conn.execute("BEGIN IMMEDIATE")
        for _ in range(producers):
            if pending:
                _sql.insert_job(conn, pending.pop())
        outcomes = [("done", row[0], row[15], now, row[2], None) for row in held]
        if finish_many is not None:  # as the worker records a round's outcomes
            done += sum(finish_many(conn, outcomes))
        else:
            for outcome in outcomes:
                done += _sql.finish(conn, outcome)
        held = _sql.claim(conn, QUEUE, concurrency, now, now + lease)
        commit(conn)
    return done


def run(case: str, path: str, durability: str, jobs: int, options: dict[str, Any]) -> Result:
    """Run one case's bare SQL and return its measurement."""
    conn = connect(path, durability)
    concurrency = int(options.get("concurrency", 1))
    if case in ("seq_add", "par_add", "add_many"):
        rows = new_rows(jobs)
        many = getattr(_sql.insert_job, "many", None)
        batch_insert = getattr(_sql, "insert_batch", None)  # what add_many runs, if the core has it
        batch = (QUEUE, rows[0][3], rows[0][4], rows[0][5], rows[0][6], rows[0][9])
        items = [(row[0], row[2]) for row in rows]
        group = {"seq_add": 1, "par_add": int(options.get("greenlets", 100))}.get(case, jobs)
        alone = getattr(_sql.insert_job, "alone", None) if case == "seq_add" else None
        start = time.perf_counter()
        for base in range(0, jobs, group):
            if alone is not None and alone(conn, rows[base]) is not None:
                take_fresh(conn)  # one self-committing INSERT, as a lone add runs
                continue
            conn.execute("BEGIN IMMEDIATE")
            if case == "add_many" and batch_insert is not None:
                batch_insert(conn, batch, items)
            elif case == "add_many":
                _sql.insert_jobs(conn, rows)
            elif group > 1 and many is not None:  # how the writer runs a group of adds
                many(conn, [(row,) for row in rows[base : base + group]])
            else:
                for row in rows[base : base + group]:
                    _sql.insert_job(conn, row)
            commit(conn)
        elapsed = time.perf_counter() - start
    elif case == "process":
        rows = new_rows(jobs)
        conn.execute("BEGIN IMMEDIATE")
        _sql.insert_jobs(conn, rows)
        commit(conn)
        start = time.perf_counter()
        _process(conn, jobs, concurrency)
        elapsed = time.perf_counter() - start
    elif case == "mixed":
        start = time.perf_counter()
        _process(conn, jobs, concurrency, producers=int(options.get("producers", 4)))
        elapsed = time.perf_counter() - start
    else:
        raise SystemExit(f"floor: unknown case {case!r}")
    counts = _sql.count_by_status(conn, QUEUE)
    conn.close()
    result: Result = {
        "jobs": jobs,
        "seconds": elapsed,
        "rate": rate(jobs, elapsed),
        "sqlite_version": _driver.SQLITE_VERSION,
        "floor_driver": _driver.DRIVER,
    }
    expected = "done" if case in ("process", "mixed") else "ready"
    if counts.get(expected, 0) != jobs:
        result["warning"] = f"expected {jobs} {expected} jobs, found {counts}"
    return result
