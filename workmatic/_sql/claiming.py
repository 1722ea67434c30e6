"""Claiming and finishing: the claim (with the promotion of delayed jobs), the look before
it, the reaping of expired leases, outcomes fenced by the claim's token, lease renewal."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from .counts import _claimed_fresh, _fresh, _move, _promoted

LEASE_EXPIRED = (
    "lease expired: the worker holding this job stopped renewing its lease"
    " (it crashed, was killed, or was blocked for longer than the lease)"
)

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
_REAP = (
    "UPDATE jobs SET attempts = attempts + 1,"
    " status = CASE WHEN attempts + 1 >= max_attempts THEN 'dead' ELSE 'ready' END,"
    " due = 1, run_at = ?1, lease_until = 0, token = token + 1, updated_at = ?1, last_error = ?2"
    " WHERE queue = ?3 AND status = 'running' AND lease_until < ?1 RETURNING status"
)


@functools.lru_cache(maxsize=256)
def _select_due(limit: int) -> str:
    return _SELECT_DUE.format(limit=int(limit))  # a literal: see the package notes


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
