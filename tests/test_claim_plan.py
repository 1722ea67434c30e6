"""The claim stays fast as the queue grows: its statements use indexes that match their
filter and order, and never rescan delayed jobs, with 100k ready plus 100k delayed jobs."""

from __future__ import annotations

import pytest

import workmatic
from workmatic import _sql
from workmatic.job import now_ms


def plan(conn: object, sql: str, params: tuple[object, ...]) -> str:
    rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()  # type: ignore[attr-defined]
    return "\n".join(str(r[-1]) for r in rows)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> workmatic.Database:
    db = workmatic.create_database(str(tmp_path_factory.mktemp("big") / "big.db"))
    client = workmatic.create_client(db, "q")
    client.add_many([{"n": i} for i in range(100_000)])
    # Delayed jobs with a *better* priority: a naive (queue, priority) index would walk
    # through all of them on every claim.
    client.add_many([{"d": i} for i in range(100_000)], delay=3600, priority=-5)
    db._write(lambda c: c.execute("ANALYZE"))
    return db


def test_claim_select_uses_the_claim_index_without_sorting(big: workmatic.Database) -> None:
    text = plan(big._reader().raw, _sql._SELECT_DUE.format(limit=64), ("q",))
    assert "jobs_claim" in text
    assert "TEMP B-TREE" not in text


def test_promotion_seeks_the_delayed_index(big: workmatic.Database) -> None:
    text = plan(big._reader().raw, _sql._PROMOTE, ("q", now_ms()))
    assert "jobs_delayed" in text and "run_at<?" in text.replace(" ", "")


def test_peek_and_reap_use_partial_indexes(big: workmatic.Database) -> None:
    text = plan(big._reader().raw, _sql._PEEK, ("q", now_ms()))
    assert "jobs_claim" in text and "jobs_delayed" in text and "jobs_lease" in text
    assert "SCAN jobs" not in text
    reap = plan(big._reader().raw, _sql._REAP, (now_ms(), "x", "q"))
    assert "jobs_lease" in reap


def test_claim_skips_not_yet_due_better_priority_jobs(big: workmatic.Database) -> None:
    now = now_ms()
    rows = big._write(_sql.claim, "q", 64, now, now + 30_000)
    assert len(rows) == 64
    assert all(row[5] == 0 for row in rows), "only due jobs are claimed"
