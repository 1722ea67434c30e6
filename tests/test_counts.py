"""The counts behind ``stats()`` stay exact through every kind of write."""

from __future__ import annotations

import random

import gevent
from helpers import edit_job, wait_for

import workmatic
from workmatic import _sql


def truth(db: workmatic.Database) -> dict[tuple[str, str], int]:
    rows = db._read(
        lambda c: c.execute("SELECT queue, status, count(*) FROM jobs GROUP BY 1, 2").fetchall()
    )
    return {(q, s): n for q, s, n in rows}


def counted(db: workmatic.Database) -> dict[tuple[str, str], int]:
    rows = db._read(lambda c: c.execute("SELECT queue, status, n FROM counts WHERE n").fetchall())
    return {(q, s): n for q, s, n in rows}


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
