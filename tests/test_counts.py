"""The counts behind ``stats()`` stay exact through every kind of write."""

from __future__ import annotations

import random
from collections.abc import Callable

import gevent
import pytest
from helpers import edit_job, wait_for

import workmatic
from workmatic import _sql
from workmatic._sql import adding, counts


def truth(db: workmatic.Database) -> dict[tuple[str, str], int]:
    rows = db._read(
        lambda c: c.execute("SELECT queue, status, count(*) FROM jobs GROUP BY 1, 2").fetchall()
    )
    return {(q, s): n for q, s, n in rows}


def counted(db: workmatic.Database) -> dict[tuple[str, str], int]:
    """What the counts say (through the path ``stats()`` reads), zeros left out."""
    by_queue, _ = db._read(_sql.count_by_queue)
    return {(q, s): n for q, by_status in by_queue.items() for s, n in by_status.items()}


@pytest.fixture
def fold_every(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Set how many adds a connection folds after, counting from now."""

    def setter(n: int) -> None:
        for module in (counts, adding):  # the modules that read it
            monkeypatch.setattr(module, "FOLD_EVERY", n)
        for key in list(counts._unfolded):  # no count left by an earlier test (restored after)
            monkeypatch.delitem(counts._unfolded, key)

    return setter


def mark(db: workmatic.Database) -> int:
    return int(db._read(lambda c: c.execute("SELECT w FROM count_mark").fetchone()[0]))


def last_rowid(db: workmatic.Database) -> int:
    return int(db._read(lambda c: c.execute("SELECT coalesce(max(id), 0) FROM jobs").fetchone()[0]))


def test_counts_match_the_jobs_after_a_mixed_workload(db: workmatic.Database) -> None:
    rng = random.Random(7)
    queues = ["a", "b", "c"]
    clients = {q: workmatic.create_client(db, q) for q in queues}

    def handler(job: workmatic.Job) -> str:
        roll = job.payload["roll"]
        if roll < 0.2:
            raise RuntimeError("retry me")
        if roll < 0.3:
            raise workmatic.PermanentError("never")
        return "ok"

    workers = [
        workmatic.create_worker(db, q, concurrency=4, backoff=lambda n: 0, handler=handler)
        for q in queues[:2]
    ]
    for w in workers:
        w.start()
    ids: list[str] = []
    for step in range(300):
        q = rng.choice(queues)
        action = rng.random()
        if action < 0.4:
            ids.append(clients[q].add({"roll": rng.random()}, max_attempts=rng.randint(1, 3)))
        elif action < 0.55:
            ids += clients[q].add_many([{"roll": rng.random()} for _ in range(rng.randint(1, 30))])
        elif action < 0.6:
            ids.append(clients[q].add({"roll": 1}, key=f"k{rng.randint(0, 5)}"))
        elif action < 0.65 and ids:
            try:
                db.retry_job(rng.choice(ids))
            except workmatic.JobNotFoundError:
                pass
        elif action < 0.7:
            db.retry_jobs(queue=q)
        elif action < 0.75:
            db.purge(status=rng.choice(["done", "dead", "failed", "ready"]), queue=q)
        elif action < 0.8:
            db.transfer(q, rng.choice(queues), status=("ready", "dead", "done"),
                        limit=rng.randint(1, 20), reset=rng.random() < 0.5)  # fmt: skip
        elif action < 0.85 and ids:
            try:
                db.move_job(rng.choice(ids), rng.choice(queues))
            except (workmatic.JobNotFoundError, workmatic.InvalidStateError):
                pass
        elif action < 0.9:
            db.import_jobs(
                [{"public_id": f"imp-{step}-{i}", "queue": q, "payload": "{}",
                  "status": rng.choice(workmatic.STATUSES)} for i in range(3)]
            )  # fmt: skip
        if step % 25 == 0:
            gevent.sleep(0.01)
            assert counted(db) == truth(db), f"after step {step}"
    for w in workers:
        w.stop()
    assert counted(db) == truth(db)
    stats = db.stats()
    assert stats.total == sum(truth(db).values())


def test_reaping_keeps_counts(memdb: workmatic.Database) -> None:
    client = workmatic.create_client(memdb, "q")
    job_id = client.add({})
    edit_job(memdb, job_id, "status = 'running', lease_until = 1")
    assert client.stats().running == 1
    memdb._write(_sql.reap_expired, "q", 10**13)
    assert client.stats().ready == 1 and client.stats().running == 0
    worker = workmatic.create_worker(memdb, "q", handler=lambda job: None)
    worker.start()
    wait_for(lambda: client.stats().done == 1)
    worker.stop()
    assert counted(memdb) == truth(memdb)


def test_recount_repairs_hand_edits(memdb: workmatic.Database) -> None:
    client = workmatic.create_client(memdb, "q")
    client.add_many([{}] * 3)
    memdb._write(lambda c: c.execute("UPDATE jobs SET status = 'dead'"))
    assert client.stats().ready == 3  # counts do not see edits made behind workmatic's back
    memdb.recount()
    assert client.stats().dead == 3 and client.stats().ready == 0


def test_added_jobs_are_folded_into_the_totals_every_so_often(
    memdb: workmatic.Database, fold_every: Callable[[int], None]
) -> None:
    fold_every(10)
    client = workmatic.create_client(memdb, "q")
    for n in range(1, 36):
        client.add({"n": n})
        assert client.stats().ready == n
        # the jobs after the mark (scanned by every count) stay fewer than a fold's worth
        assert 0 <= last_rowid(memdb) - mark(memdb) < 10
    assert mark(memdb) == 30
    assert counted(memdb) == truth(memdb) == {("q", "ready"): 35}


def test_jobs_left_by_short_lived_producers_are_folded_too(
    db_path: str, fold_every: Callable[[int], None]
) -> None:
    fold_every(10)
    for n in range(1, 21):  # a process that opens the file, adds 3 jobs and exits
        with workmatic.create_database(db_path) as db:
            for _ in range(3):
                workmatic.create_client(db, "q").add({})
            assert 0 <= last_rowid(db) - mark(db) < 10 + 3
            assert db.stats().ready == 3 * n
    assert not _sql._unfolded  # closing forgets its connections


def test_a_large_batch_is_counted_as_it_is_inserted(
    memdb: workmatic.Database, fold_every: Callable[[int], None]
) -> None:
    fold_every(10)
    client = workmatic.create_client(memdb, "a")
    client.add_many([{}] * 4)  # a small one is left for the next fold
    assert mark(memdb) == 0
    client.add_many([{}] * 25)  # a large one folds the small one and counts itself
    assert mark(memdb) == last_rowid(memdb) == 29
    memdb.import_jobs([{"queue": "b", "payload": "{}", "status": s} for s in workmatic.STATUSES])
    assert counted(memdb) == truth(memdb)


def test_deleting_the_newest_jobs_lowers_the_mark_so_reused_rowids_count(
    memdb: workmatic.Database, fold_every: Callable[[int], None]
) -> None:
    fold_every(5)
    a, b = workmatic.create_client(memdb, "a"), workmatic.create_client(memdb, "b")
    for _ in range(10):
        a.add({})
    for _ in range(10):
        b.add({})
    assert mark(memdb) == 20
    memdb.purge(queue="b", status="ready")  # rowids 11-20: SQLite hands them out again
    assert mark(memdb) == last_rowid(memdb) == 10
    new = [b.add({}) for _ in range(3)]
    assert [int(job_id[:12], 16) for job_id in new] == [11, 12, 13]  # reused indeed
    assert counted(memdb) == truth(memdb) == {("a", "ready"): 10, ("b", "ready"): 3}
    memdb.purge(status="ready")
    assert mark(memdb) == 0 and counted(memdb) == truth(memdb) == {}
    a.add({})
    assert counted(memdb) == truth(memdb) == {("a", "ready"): 1}


def test_moving_jobs_across_the_mark_keeps_each_queues_counts(
    memdb: workmatic.Database, fold_every: Callable[[int], None]
) -> None:
    fold_every(4)
    client = workmatic.create_client(memdb, "a")
    ids = [client.add({}) for _ in range(6)]  # 4 up to the mark, 2 after it
    assert mark(memdb) == 4
    memdb.move_job(ids[0], "b")  # counted in the totals
    memdb.move_job(ids[5], "b")  # after the mark
    assert counted(memdb) == truth(memdb) == {("a", "ready"): 4, ("b", "ready"): 2}
    memdb.transfer("a", "c", limit=3)  # two before the mark, one after it
    assert (
        counted(memdb) == truth(memdb) == {("a", "ready"): 1, ("b", "ready"): 2, ("c", "ready"): 3}
    )
    memdb.recount()
    assert mark(memdb) == 6 and counted(memdb) == truth(memdb)
