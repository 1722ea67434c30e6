"""Every SQL statement Workmatic runs, for SQLite: the storage interface.

Each function takes a DB-API connection (in autocommit mode; the caller owns the
transaction) and plain values. Another backend (PostgreSQL with ``FOR UPDATE SKIP
LOCKED`` and ``LISTEN/NOTIFY``) would provide a package with the same functions.

Its modules, by responsibility:

* :mod:`.schema`: the tables and indexes of each version, migrations, ``user_version``;
* :mod:`.counts`: the counts behind ``stats()``, and all the state kept per connection;
* :mod:`.adding`: public ids, inserts;
* :mod:`.claiming`: claim, peek, reap, finish, renew;
* :mod:`.reading`: jobs by id, lists, pages, counts; checkpoints, ``data_version``;
* :mod:`.operating`: import, pause, retry, purge, transfer, move.

Callers use this package's names (``_sql.claim(...)``): plain re-exports of the
modules' own. Each module reads its names from itself, so setting one here (a test's
patch) changes only what ``_sql.<name>`` callers see: patch the modules that read it
(``FOLD_EVERY``: ``counts`` and ``adding``; ``PROMOTE_EVERY_MS``: ``claiming``).

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
  scan), minus the jobs in other statuses (:func:`reading._count_rows`, one statement,
  so one snapshot). So adding a job writes nothing but its row: no counter (its page in
  the WAL was a fifth of a lone add's cost), and a claim or a retry moves no ``ready``
  counter. Every function of this package that changes a job's queue or status records
  the change with :func:`counts._bump`; the writer calls :func:`flush_counts` once before
  each commit (:func:`discard_counts` on rollback), so a group commit of many jobs costs
  one upsert per (queue, status) it touched. Every :data:`FOLD_EVERY` jobs a connection
  adds, its flush folds the jobs after the mark into the totals and moves the mark
  (:func:`counts._fold`); a batch larger than that is folded as it is inserted. Deletions
  lower the mark when they remove the newest rows, whose rowids SQLite hands out again.
  :func:`recount` rebuilds it all from the jobs (after a file was edited by hand).
* Limits are written into the SQL as literals, never bound: pysqlite3's SQLite is built
  with STAT4, which re-prepares a statement whenever a bound value the planner looked at
  changes (a bound ``LIMIT ?`` made every claim re-parse and re-plan its statement).
* ``token`` is the fencing token: each claim increments it, and completion, failure,
  renewal and release apply only with the token of the claim that took the job.
"""

from __future__ import annotations

from .adding import (
    FORMAT_SLICE,
    Batch,
    NewJob,
    _format_ids,
    format_id,
    insert_batch,
    insert_job,
    insert_jobs,
    job_id,
    parse_id,
)
from .claiming import (
    _PEEK,
    _PROMOTE,
    _REAP,
    _SELECT_DUE,
    LEASE_EXPIRED,
    PROMOTE_EVERY_MS,
    Outcome,
    claim,
    finish,
    finish_and_claim,
    finish_many,
    is_paused,
    peek,
    reap_and_claim,
    reap_expired,
    renew,
    renew_and_reap,
)
from .counts import (
    FOLD_EVERY,
    TOTAL,
    _unfolded,
    discard_counts,
    flush_counts,
    forget,
    recount,
    take_fresh,
)
from .operating import (
    import_jobs,
    move_job,
    purge,
    retry_job,
    retry_jobs,
    set_paused,
    transfer,
)
from .reading import (
    checkpoint,
    count_by_queue,
    count_by_status,
    count_jobs,
    data_version,
    get_job,
    list_jobs,
    locate,
    page_jobs,
    restart_wal,
)
from .schema import (
    JOB_COLUMNS,
    MIGRATIONS,
    SCHEMA_VERSION,
    has_jobs_table,
    migrate,
    schema_version,
)

__all__ = [
    "FOLD_EVERY",
    "FORMAT_SLICE",
    "JOB_COLUMNS",
    "LEASE_EXPIRED",
    "MIGRATIONS",
    "PROMOTE_EVERY_MS",
    "SCHEMA_VERSION",
    "TOTAL",
    "_PEEK",
    "_PROMOTE",
    "_REAP",
    "_SELECT_DUE",
    "Batch",
    "NewJob",
    "Outcome",
    "_format_ids",
    "_unfolded",
    "checkpoint",
    "claim",
    "count_by_queue",
    "count_by_status",
    "count_jobs",
    "data_version",
    "discard_counts",
    "finish",
    "finish_and_claim",
    "finish_many",
    "flush_counts",
    "forget",
    "format_id",
    "get_job",
    "has_jobs_table",
    "import_jobs",
    "insert_batch",
    "insert_job",
    "insert_jobs",
    "is_paused",
    "job_id",
    "list_jobs",
    "locate",
    "migrate",
    "move_job",
    "page_jobs",
    "parse_id",
    "peek",
    "purge",
    "reap_and_claim",
    "reap_expired",
    "recount",
    "renew",
    "renew_and_reap",
    "restart_wal",
    "retry_job",
    "retry_jobs",
    "schema_version",
    "set_paused",
    "take_fresh",
    "transfer",
]
