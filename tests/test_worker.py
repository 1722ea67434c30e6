"""The worker: every rule of the SPEC's Worker section, each with its own test."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import gc
import inspect
import logging
import pickle
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import pytest
from helpers import LockHolder, edit, edit_job, script, wait_for
from marshmallow import Schema, fields

import workmatic


def make(db: workmatic.Database, handler: Any, **options: Any) -> workmatic.Worker:
    worker = workmatic.create_worker(db, options.pop("queue", "q"), **options)
    worker.process(handler)
    return worker


def job_of(db: workmatic.Database, job_id: str) -> workmatic.Job:
    job = db.get_job(job_id)
    assert job is not None
    return job


def raw_sql(db: workmatic.Database, sql: str, *params: Any) -> None:
    edit(db, sql, *params)


def test_defaults(memdb: workmatic.Database) -> None:
    worker = workmatic.create_worker(memdb)
    assert (worker.queue, worker.concurrency, worker.lease, worker.poll_interval) == (
        "default",
        1,
        30.0,
        1.0,
    )
    assert worker.timeout is None and worker.backoff is None
    assert not worker.is_running and not worker.is_paused


@pytest.mark.parametrize(
    "options",
    [
        {"concurrency": 0},
        {"concurrency": 1.5},
        {"lease": 0},
        {"lease": "30"},
        {"poll_interval": -1},
        {"timeout": 0},
        {"backoff": 5},
        {"speed": 1},
    ],
    ids=[
        "zero-concurrency",
        "float-concurrency",
        "zero-lease",
        "string-lease",
        "negative-poll",
        "zero-timeout",
        "uncallable-backoff",
        "unknown",
    ],
)
def test_bad_worker_options_raise(memdb: workmatic.Database, options: dict[str, Any]) -> None:
    with pytest.raises(workmatic.ValidationError):
        workmatic.create_worker(memdb, "q", **options)


def test_start_without_handler_raises(memdb: workmatic.Database) -> None:
    with pytest.raises(workmatic.WorkmaticError, match="handler"):
        workmatic.create_worker(memdb).start()


def test_processes_jobs_and_stores_results(db: workmatic.Database) -> None:
    client = workmatic.create_client(db, "q")
    ids = client.add_many([{"n": i} for i in range(20)])
    worker = make(db, lambda job: {"double": job.payload["n"] * 2}, concurrency=4)
    worker.start()
    assert worker.is_running
    wait_for(lambda: client.stats().done == 20)
    worker.stop()
    assert not worker.is_running
    assert [job_of(db, i).result for i in ids] == [{"double": n * 2} for n in range(20)]
    assert worker.processed == 20


def test_the_handlers_job_is_the_stored_job(db: workmatic.Database) -> None:
    """Every field a handler reads is the job as stored while it runs (the worker decodes
    most of them only when read); a job read in the handler compares equal to it."""
    client = workmatic.create_client(db, "q")
    first = client.add({"n": 1}, key="k-1", priority=2, max_attempts=5)
    edit_job(db, first, "attempts = 1, last_error = 'boom'")
    seen: list[tuple[workmatic.Job, workmatic.Job | None]] = []
    ran = gevent.event.Event()

    def handler(job: workmatic.Job) -> None:
        seen.append((job, db.get_job(job.id)))
        ran.set()

    worker = make(db, handler)
    worker.start()
    assert ran.wait(10)
    worker.stop()
    job, stored = seen[0]
    assert stored is not None
    assert job == stored
    assert dataclasses.asdict(job) == dataclasses.asdict(stored)
    assert (job.id, job.key, job.priority, job.attempts, job.max_attempts) == (
        first, "k-1", 2, 1, 5
    )  # fmt: skip
    assert (job.status, job.last_error, job.result) == ("running", "boom", None)
    assert job.lease_until is not None and job.lease_until > job.updated_at >= job.created_at
    assert "key='k-1'" in repr(job) and first in repr(job)
    for copied in (pickle.loads(pickle.dumps(job)), copy.deepcopy(job), copy.copy(job)):
        assert copied == stored and vars(copied) == vars(stored)  # whole, no stored row
    with pytest.raises(AttributeError):
        job.no_such_field  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.key = "other"  # type: ignore[misc]
    built = workmatic.Job(first, "q", 1, "ready", 0, 0, 3, job.created_at, job.run_at, None, None)
    assert (built.updated_at.year, built.lease_until, built.key) == (1970, None, None)


def test_at_most_concurrency_handlers_and_no_claim_ahead(db: workmatic.Database) -> None:
    client = workmatic.create_client(db, "q")
    client.add_many([{}] * 10)
    release = gevent.event.Event()
    active = [0]
    peak = [0]

    def handler(job: workmatic.Job) -> None:
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        release.wait()
        active[0] -= 1

    worker = make(db, handler, concurrency=3)
    worker.start()
    wait_for(lambda: active[0] == 3)
    gevent.sleep(0.2)  # give a claim-ahead bug the time to show
    assert client.stats().running == 3 and client.stats().ready == 7
    assert worker.active == 3
    release.set()
    wait_for(lambda: client.stats().done == 10)
    worker.stop()
    assert peak[0] == 3


def test_priority_then_fifo(memdb: workmatic.Database) -> None:
    client = workmatic.create_client(memdb, "q")
    order: list[str] = []
    client.add("p5-a", priority=5)
    client.add("p0-a")
    client.add("p-1", priority=-1)
    client.add("p0-b")
    client.add("p5-b", priority=5)
    worker = make(memdb, lambda job: order.append(job.payload))
    worker.start()
    wait_for(lambda: len(order) == 5)
    worker.stop()
    assert order == ["p-1", "p0-a", "p0-b", "p5-a", "p5-b"]


def test_delayed_job_waits_for_its_time(memdb: workmatic.Database) -> None:
    client = workmatic.create_client(memdb, "q")
    started: dict[str, float] = {}
    added = time.monotonic()
    client.add("later", delay=0.5, priority=-10)
    client.add("now")
    # Polling once a minute: the worker wakes for the delayed job's time, not for a poll.
    worker = make(
        memdb, lambda job: started.setdefault(job.payload, time.monotonic()), poll_interval=60
    )
    worker.start()
    wait_for(lambda: len(started) == 2, timeout=30)
    worker.stop()
    assert started["now"] < started["later"]
    assert started["later"] - added >= 0.5
    assert started["later"] - added < 10, "a delayed job should start when it is due"


def idle_after_start(worker: workmatic.Worker) -> None:
    """Start ``worker`` and return once its pump found nothing to claim and waits (for the
    whole poll interval, unless woken)."""
    idle = gevent.event.Event()
    fill = worker._fill

    def watched(free: int) -> float | None:
        waited = fill(free)
        if waited is not None and waited >= worker.poll_interval:
            idle.set()  # the pump waits next, without yielding before
        return waited

    worker._fill = watched  # type: ignore[method-assign]
    worker.start()
    assert idle.wait(10)


def test_in_process_add_starts_without_waiting_for_poll_interval(db: workmatic.Database) -> None:
    started = gevent.event.Event()
    worker = make(db, lambda job: started.set(), poll_interval=60)
    idle_after_start(worker)  # the pump waits, for up to 60 s
    t0 = time.monotonic()
    workmatic.create_client(db, "q").add({})
    assert started.wait(30)
    worker.stop()
    assert time.monotonic() - t0 < 10  # woken by the add (typically well under 1 ms)


def test_other_process_add_is_noticed_quickly(db: workmatic.Database, db_path: str) -> None:
    started = gevent.event.Event()
    worker = make(db, lambda job: started.set(), poll_interval=60)
    idle_after_start(worker)
    producer = script("producer", db_path, "q", "1")
    assert producer.stdout is not None
    producer.stdout.readline()  # the job id: printed once add() has committed
    t0 = time.monotonic()
    assert started.wait(20)
    latency = time.monotonic() - t0
    producer.wait(10)
    worker.stop()
    # The watcher polls PRAGMA data_version every 5 ms: typically a few ms; the bound is
    # generous for a loaded CI machine, and far below the 60 s poll interval.
    assert latency < 10, f"noticed after {latency * 1000:.0f} ms"


def test_failure_retries_with_backoff_then_succeeds(memdb: workmatic.Database) -> None:
    client = workmatic.create_client(memdb, "q")
    seen: list[int] = []

    def flaky(job: workmatic.Job) -> str:
        seen.append(job.attempts)
        if job.attempts < 2:
            raise RuntimeError(f"fail {job.attempts}")
        return "ok"

    job_id = client.add({})
    worker = make(memdb, flaky, backoff=lambda n: 0.01 * n)
    worker.start()
    wait_for(lambda: job_of(memdb, job_id).status == "done")
    worker.stop()
    job = job_of(memdb, job_id)
    assert seen == [0, 1, 2]
    assert (job.attempts, job.result) == (2, "ok")
    assert job.last_error is not None and "fail 1" in job.last_error


def test_default_backoff_is_two_to_the_n(memdb: workmatic.Database) -> None:
    client = workmatic.create_client(memdb, "q")
    job_id = client.add({})

    def fail(job: workmatic.Job) -> None:
        raise ValueError("nope")

    worker = make(memdb, fail)
    worker.start()
    wait_for(lambda: job_of(memdb, job_id).attempts == 1)
    worker.stop()
    job = job_of(memdb, job_id)
    assert job.status == "ready"
    assert 1.9 <= (job.run_at - job.updated_at).total_seconds() <= 2.1
    assert job.last_error is not None and job.last_error.startswith("ValueError: nope")


def test_no_attempts_left_is_dead(memdb: workmatic.Database) -> None:
    client = workmatic.create_client(memdb, "q")
    job_id = client.add({}, max_attempts=3)
    runs = [0]

    def fail(job: workmatic.Job) -> None:
        runs[0] += 1
        raise RuntimeError("always")

    worker = make(memdb, fail, backoff=lambda n: 0)
    worker.start()
    wait_for(lambda: job_of(memdb, job_id).status == "dead")
    worker.stop()
    job = job_of(memdb, job_id)
    assert runs[0] == 3 and job.attempts == 3
    assert job.last_error is not None and "always" in job.last_error


def test_permanent_error_fails_without_retry(memdb: workmatic.Database) -> None:
    client = workmatic.create_client(memdb, "q")
    job_id = client.add({})
    runs = [0]

    def refuse(job: workmatic.Job) -> None:
        runs[0] += 1
        raise workmatic.PermanentError("bad address")

    worker = make(memdb, refuse)
    worker.start()
    wait_for(lambda: job_of(memdb, job_id).status == "failed")
    gevent.sleep(0.1)
    worker.stop()
    assert runs[0] == 1
    assert "bad address" in (job_of(memdb, job_id).last_error or "")


class Order(Schema):
    item = fields.String(required=True)
    when = fields.Date(required=True)


def test_worker_schema_loads_payloads_and_fails_bad_ones(memdb: workmatic.Database) -> None:
    client = workmatic.create_client(memdb, "q")
    good = client.add({"item": "book", "when": "2026-12-03"})
    bad = client.add({"item": "book"})
    seen: list[Any] = []
    worker = make(memdb, lambda job: seen.append(job.payload), schema=Order())
    worker.start()
    wait_for(lambda: job_of(memdb, bad).status == "failed" and job_of(memdb, good).status == "done")
    worker.stop()
    assert seen == [{"item": "book", "when": dt.date(2026, 12, 3)}]
    assert "when" in (job_of(memdb, bad).last_error or "")
    assert (worker.processed, worker.failed) == (1, 1)


def test_unserialisable_result_fails_the_job(memdb: workmatic.Database) -> None:
    job_id = workmatic.create_client(memdb, "q").add({})
    worker = make(memdb, lambda job: object())
    worker.start()
    wait_for(lambda: job_of(memdb, job_id).status == "failed")
    worker.stop()
    assert "not JSON-serialisable" in (job_of(memdb, job_id).last_error or "")
    assert (worker.processed, worker.failed) == (0, 1)


def test_timeout_stops_the_handler(memdb: workmatic.Database) -> None:
    job_id = workmatic.create_client(memdb, "q").add({}, max_attempts=1)
    finished = []

    def slow(job: workmatic.Job) -> None:
        gevent.sleep(5)
        finished.append(job.id)

    worker = make(memdb, slow, timeout=0.1)
    worker.start()
    wait_for(lambda: job_of(memdb, job_id).status == "dead")
    gevent.sleep(0.2)
    worker.stop()
    assert finished == []
    assert "timed out after 0.1 s" in (job_of(memdb, job_id).last_error or "")


def test_handler_exceptions_never_kill_the_worker(memdb: workmatic.Database) -> None:
    client = workmatic.create_client(memdb, "q")
    client.add_many([{"n": i} for i in range(10)], max_attempts=1)

    def half(job: workmatic.Job) -> None:
        if job.payload["n"] % 2:
            raise KeyError("odd")

    worker = make(memdb, half, concurrency=2)
    worker.start()
    wait_for(lambda: client.stats().done == 5 and client.stats().dead == 5)
    assert worker.is_running
    client.add({"n": 100})
    wait_for(lambda: client.stats().done == 6)
    worker.stop()


def test_lease_is_renewed_while_a_long_job_runs(db: workmatic.Database, db_path: str) -> None:
    client = workmatic.create_client(db, "q")
    job_id = client.add({})
    runs: list[str] = []

    def long(job: workmatic.Job) -> None:
        runs.append("a")
        gevent.sleep(4.5)  # three leases: unrenewed, it would expire twice

    a = make(db, long, lease=1.5)  # renewed every 0.5 s
    a.start()
    wait_for(lambda: runs == ["a"])
    first_lease = job_of(db, job_id).lease_until
    assert first_lease is not None

    def renewed() -> bool:
        lease_until = job_of(db, job_id).lease_until
        return lease_until is not None and lease_until > first_lease

    wait_for(renewed, timeout=10)  # while it runs, its lease is pushed on
    with workmatic.create_database(db_path) as other:  # a second worker, its own connection
        b = make(other, lambda job: runs.append("b"), lease=1.5, poll_interval=0.05)
        b.start()
        wait_for(lambda: job_of(db, job_id).status == "done", timeout=30)
        b.stop()
    a.stop()
    assert runs == ["a"]
    assert job_of(db, job_id).attempts == 0


def test_fencing_a_worker_that_lost_its_lease_cannot_overwrite(db: workmatic.Database) -> None:
    client = workmatic.create_client(db, "q")
    job_id = client.add({})
    release_a = gevent.event.Event()

    def a_handler(job: workmatic.Job) -> str:
        release_a.wait()
        return "from A"

    a = make(db, a_handler)
    a.start()
    wait_for(lambda: job_of(db, job_id).status == "running")
    # A's lease runs out (as if A had stalled): B reaps and takes the job.
    edit_job(db, job_id, "lease_until = 1")
    b = make(db, lambda job: f"from B after {job.attempts}")
    b.start()
    wait_for(lambda: job_of(db, job_id).status == "done")
    release_a.set()
    wait_for(lambda: a.active == 0)
    a.stop()
    b.stop()
    job = job_of(db, job_id)
    assert job.result == "from B after 1"
    assert job.attempts == 1
    assert a.processed == 0 and b.processed == 1


def test_fencing_holds_when_lost_and_held_jobs_finish_in_one_commit(
    db: workmatic.Database,
) -> None:
    """Four handlers of A return together (their outcomes share one transaction); two of
    the jobs were taken over by B meanwhile: only A's two held outcomes are recorded."""
    client = workmatic.create_client(db, "q")
    ids = [client.add({"n": n}) for n in range(4)]
    release_a = gevent.event.Event()

    def a_handler(job: workmatic.Job) -> str:
        release_a.wait()
        return "from A"

    a = make(db, a_handler, concurrency=4)
    a.start()
    wait_for(lambda: a.active == 4)
    lost = ids[:2]
    for job_id in lost:
        edit_job(db, job_id, "lease_until = 1")
    b = make(db, lambda job: "from B")
    b.start()
    wait_for(lambda: all(job_of(db, job_id).status == "done" for job_id in lost))
    b.stop()
    commits = db._writer().commits
    release_a.set()
    wait_for(lambda: a.active == 0)
    a.stop()
    assert db._writer().commits - commits == 1, "A's four outcomes shared one commit"
    assert [job_of(db, job_id).result for job_id in ids] == ["from B"] * 2 + ["from A"] * 2
    assert a.processed == 2 and b.processed == 2
    stats = db.stats("q")
    assert (stats.done, stats.running, stats.ready) == (4, 0, 0)


def test_expired_lease_counts_as_an_attempt(memdb: workmatic.Database) -> None:
    client = workmatic.create_client(memdb, "q")
    retried = client.add({"n": 1})
    doomed = client.add({"n": 2}, max_attempts=1)
    for job_id in (retried, doomed):  # as if a worker had claimed them and died
        edit_job(memdb, job_id, "status = 'running', lease_until = 1, token = 7")
    seen: list[tuple[int, str | None]] = []
    worker = make(memdb, lambda job: seen.append((job.attempts, job.last_error)))
    worker.start()
    wait_for(lambda: job_of(memdb, retried).status == "done")
    worker.stop()
    assert len(seen) == 1 and seen[0][0] == 1
    assert "lease expired" in (seen[0][1] or "")
    assert job_of(memdb, doomed).status == "dead"
    assert "lease expired" in (job_of(memdb, doomed).last_error or "")


def test_worker_pause_stops_new_starts_at_once(memdb: workmatic.Database) -> None:
    client = workmatic.create_client(memdb, "q")
    started: list[int] = []
    gate = gevent.event.Event()

    def handler(job: workmatic.Job) -> None:
        started.append(job.payload)
        gate.wait()

    worker = make(memdb, handler)
    client.add_many(list(range(5)))
    worker.start()
    wait_for(lambda: len(started) == 1)
    worker.pause()
    assert worker.is_paused
    gate.set()
    wait_for(lambda: client.stats().done == 1)
    gevent.sleep(0.2)
    assert started == [0] and client.stats().ready == 4 and client.stats().running == 0
    worker.resume()
    wait_for(lambda: client.stats().done == 5)
    worker.stop()


def test_queue_pause_from_another_process_is_honoured(db: workmatic.Database, db_path: str) -> None:
    client = workmatic.create_client(db, "q")
    done: list[int] = []
    worker = make(db, lambda job: done.append(job.payload["n"]))
    worker.start()
    assert script("producer", db_path, "q", "0", "--pause").wait(20) == 0
    client.add({"n": 1})
    gevent.sleep(1.0)  # a window for it to (wrongly) start: no event marks "nothing"
    assert done == [] and client.stats().ready == 1
    assert script("producer", db_path, "q", "0", "--resume").wait(20) == 0
    wait_for(lambda: done == [1], timeout=30)
    worker.stop()


def test_stop_finishes_running_jobs(memdb: workmatic.Database) -> None:
    client = workmatic.create_client(memdb, "q")
    job_id = client.add({})
    started = gevent.event.Event()

    def handler(job: workmatic.Job) -> str:
        started.set()
        gevent.sleep(0.3)
        return "finished"

    worker = make(memdb, handler)
    worker.start()
    assert started.wait(5)
    worker.stop()
    assert job_of(memdb, job_id).result == "finished"


def test_stop_with_timeout_releases_unfinished_jobs_without_an_attempt(
    memdb: workmatic.Database,
) -> None:
    client = workmatic.create_client(memdb, "q")
    job_id = client.add({})
    started = gevent.event.Event()

    def forever(job: workmatic.Job) -> None:
        started.set()
        gevent.sleep(3600)

    worker = make(memdb, forever)
    worker.start()
    assert started.wait(5)
    t0 = time.monotonic()
    worker.stop(timeout=0.2)
    assert time.monotonic() - t0 < 10
    job = job_of(memdb, job_id)
    assert (job.status, job.attempts, job.last_error) == ("ready", 0, None)


def test_stop_with_timeout_gives_up_recording_a_job_while_the_database_fails(
    db: workmatic.Database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: a slot that could not record its job's outcome (the disk full, say)
    retried forever, so stop(timeout) returned with it still running and holding the job.
    Once the timeout has passed it gives up: the job stays claimed until its lease expires
    (then it runs again, as after a crash), and stop() returns with no slot left."""
    from workmatic import _driver, _sql

    caplog.set_level(logging.WARNING, logger="workmatic")
    job_id = workmatic.create_client(db, "q").add({})

    def disk_full(*args: Any) -> Any:
        raise _driver.sqlite.OperationalError("database or disk is full")

    monkeypatch.setattr(_sql, "finish_and_claim", disk_full)
    worker = make(db, lambda job: "ok")
    worker.start()
    wait_for(lambda: any("cannot record job" in r.getMessage() for r in caplog.records))
    worker.stop(timeout=0.2)
    assert worker.active == 0 and not worker.is_running and len(worker._pool) == 0
    assert any("was not recorded" in r.getMessage() for r in caplog.records)
    job = job_of(db, job_id)
    assert job.status == "running" and job.attempts == 0  # until its lease expires


def test_slots_that_finish_together_record_and_claim_in_one_transaction(
    db: workmatic.Database,
) -> None:
    """Eight handlers return together: their eight outcomes and the eight next jobs of
    their slots are one transaction (a round), and every slot runs its next job at once,
    without waiting for the pump."""
    client = workmatic.create_client(db, "q")
    first = [client.add({"batch": 1, "n": n}) for n in range(8)]
    second = [client.add({"batch": 2, "n": n}) for n in range(8)]
    gates = {1: gevent.event.Event(), 2: gevent.event.Event()}
    started: dict[int, int] = {1: 0, 2: 0}

    def handler(job: workmatic.Job) -> int:
        started[job.payload["batch"]] += 1
        gates[job.payload["batch"]].wait()
        return int(job.payload["n"])

    worker = make(db, handler, concurrency=8, poll_interval=60)
    worker.start()
    wait_for(lambda: started[1] == 8)
    commits = db._writer().commits
    gates[1].set()
    wait_for(lambda: started[2] == 8)
    assert db._writer().commits - commits == 1, "eight outcomes and eight claims, one commit"
    assert [job_of(db, job_id).status for job_id in first] == ["done"] * 8
    assert [job_of(db, job_id).status for job_id in second] == ["running"] * 8
    gates[2].set()
    wait_for(lambda: worker.processed == 16)
    worker.stop()
    assert [job_of(db, job_id).result for job_id in first + second] == list(range(8)) * 2
    assert worker.active == 0 and db.stats("q").done == 16


def test_a_round_that_meets_a_lock_is_retried_whole(
    db_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Four outcomes finish together while another process holds the write lock for longer
    than lock_timeout: the worker says so and retries the round as a whole; once the lock
    is free, all four are recorded and the slots go on to the next jobs."""
    caplog.set_level(logging.WARNING, logger="workmatic")
    with workmatic.create_database(db_path, lock_timeout=0.2) as db:
        client = workmatic.create_client(db, "q")
        ids = [client.add({"n": n}) for n in range(8)]
        gate = gevent.event.Event()

        def handler(job: workmatic.Job) -> int:
            gate.wait()
            return int(job.payload["n"])

        worker = make(db, handler, concurrency=4, poll_interval=60)
        worker.start()
        wait_for(lambda: worker.active == 4)
        with LockHolder(db_path):
            gate.set()
            wait_for(
                lambda: any("and 3 more (" in r.getMessage() for r in caplog.records), timeout=30
            )
            assert db.stats("q").done == 0
        wait_for(lambda: worker.processed == 8, timeout=30)
        worker.stop()
        assert [job_of(db, job_id).result for job_id in ids] == list(range(8))
        assert not any("on its own" in r.getMessage() for r in caplog.records)


def test_stop_with_timeout_gives_up_a_round_held_up_by_a_lock(
    db_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A round of three outcomes cannot be recorded while another process holds the lock:
    once stop()'s timeout has passed the leader gives up, every slot of the round ends
    (none is left waiting for its next job), and the three jobs stay claimed until their
    leases expire."""
    caplog.set_level(logging.WARNING, logger="workmatic")
    with workmatic.create_database(db_path, lock_timeout=0.2) as db:
        client = workmatic.create_client(db, "q")
        ids = [client.add({"n": n}) for n in range(3)]
        gate = gevent.event.Event()
        worker = make(db, lambda job: gate.wait(), concurrency=3, poll_interval=60)
        worker.start()
        wait_for(lambda: worker.active == 3)
        with LockHolder(db_path):
            gate.set()
            wait_for(
                lambda: any("and 2 more (" in r.getMessage() for r in caplog.records), timeout=30
            )
            worker.stop(timeout=0.2)
            assert worker.active == 0 and not worker.is_running and len(worker._pool) == 0
        given_up = [r.getMessage() for r in caplog.records if "was not recorded" in r.getMessage()]
        assert len(given_up) == 3
        assert [job_of(db, job_id).status for job_id in ids] == ["running"] * 3
        assert all(job_of(db, job_id).attempts == 0 for job_id in ids)


def refusing_job_1(
    db: workmatic.Database,
) -> tuple[gevent.event.Event, Callable[[workmatic.Job], Any]]:
    """A trigger by which the database refuses to record the result "refuse me", and a
    handler that waits for the gate returned, then returns its job's ``n`` (that result
    for ``n == 1``)."""
    edit(
        db,
        "CREATE TRIGGER refuse BEFORE UPDATE OF status ON jobs"
        " WHEN NEW.result = '\"refuse me\"' BEGIN SELECT RAISE(ABORT, 'refused'); END",
    )
    gate = gevent.event.Event()

    def handler(job: workmatic.Job) -> Any:
        gate.wait()
        return "refuse me" if job.payload["n"] == 1 else job.payload["n"]

    return gate, handler


def start_refusing_worker(
    db: workmatic.Database, jobs: int, **options: Any
) -> tuple[list[str], gevent.event.Event, workmatic.Worker]:
    """Add ``jobs`` jobs (``{"n": n}``) and start a worker of 4 slots on them with the
    handler of :func:`refusing_job_1`; return the ids, its gate and the worker, once all
    four slots wait at the gate."""
    client = workmatic.create_client(db, "q")
    ids = [client.add({"n": n}) for n in range(jobs)]
    gate, handler = refusing_job_1(db)
    worker = make(db, handler, concurrency=4, **options)
    worker.start()
    wait_for(lambda: worker.active == 4)
    return ids, gate, worker


def test_an_outcome_the_database_refuses_holds_up_no_other(
    db: workmatic.Database, caplog: pytest.LogCaptureFixture
) -> None:
    """One of four outcomes that finish together is refused by the database (here a
    trigger; a result over SQLite's size limit would be another): the round fails, each
    slot records its own job, the other three are recorded and the worker goes on; only
    the refused job's slot keeps retrying it."""
    caplog.set_level(logging.WARNING, logger="workmatic")
    ids, gate, worker = start_refusing_worker(db, 8, poll_interval=0.05)
    gate.set()
    wait_for(lambda: worker.processed == 7, timeout=30)
    assert any("on its own" in r.getMessage() for r in caplog.records)
    assert job_of(db, ids[1]).status == "running"
    assert [job_of(db, ids[n]).result for n in (0, 2, 3, 4, 5, 6, 7)] == [0, 2, 3, 4, 5, 6, 7]
    worker.stop(timeout=0.2)
    assert worker.active == 0 and len(worker._pool) == 0


def test_a_leader_killed_while_handing_out_leaves_no_slot_waiting(
    memdb: workmatic.Database,
) -> None:
    """Four jobs finish together and every lease turns out lost. While the round's leader
    logs the first lost lease to a handler that yields (one writing to a monkey-patched
    socket, say), the leader is killed. The slots it had not handed a job to yet must be
    woken all the same: the jobs run again once their leases expire, and stop() returns."""
    client = workmatic.create_client(memdb, "q")
    ids = [client.add({"n": n}) for n in range(12)]
    killed: list[gevent.Greenlet] = []

    class KillDuringHandOut(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            handing_out = any(f.function == "_hand_out" for f in inspect.stack(0))
            if "lease lost" in record.getMessage() and not killed and handing_out:
                leader = gevent.getcurrent()
                killed.append(leader)
                gevent.spawn(leader.kill, block=False)
                gevent.sleep(0.01)  # the kill lands here, in the middle of the hand-out

    handler = KillDuringHandOut()
    logging.getLogger("workmatic").addHandler(handler)
    gate = gevent.event.Event()

    def gated(job: workmatic.Job) -> Any:
        gate.wait()
        gevent.sleep(0)  # all four are runnable when the first finishes: they share a round
        return job.payload["n"]

    worker = make(memdb, gated, concurrency=4, lease=0.5, poll_interval=0.05)
    try:
        worker.start()
        wait_for(lambda: worker.active == 4)
        raw_sql(memdb, "UPDATE jobs SET token = token + 100 WHERE status = 'running'")
        gate.set()
        wait_for(lambda: memdb.stats("q").done == 12, timeout=30)
        assert len(killed) == 1
        with gevent.Timeout(10):
            worker.stop()  # would wait forever for a slot left waiting
    finally:
        logging.getLogger("workmatic").removeHandler(handler)
    assert len(worker._pool) == 0
    assert [job_of(memdb, job_id).result for job_id in ids] == list(range(12))


def test_a_payload_nested_too_deeply_to_decode_fails_its_job_alone(
    memdb: workmatic.Database,
) -> None:
    """A stored payload nested deeper than Python decodes (add() accepts up to about the
    interpreter's recursion limit; decoding takes more) fails its job ("not valid JSON
    (or nested too deeply)") instead of failing the claim of every job claimed with it."""
    client = workmatic.create_client(memdb, "q")
    bad = client.add([])
    edit_job(memdb, bad, "payload = '" + "[" * 5000 + "]" * 5000 + "'")  # valid JSON
    good = [client.add({"n": n}) for n in range(6)]
    worker = make(memdb, lambda job: job.payload["n"], concurrency=4)
    worker.start()
    wait_for(lambda: memdb.stats("q").done == 6 and memdb.stats("q").failed == 1)
    worker.stop()
    assert "nested too deeply" in (job_of(memdb, bad).last_error or "")
    assert [job_of(memdb, job_id).result for job_id in good] == list(range(6))
    assert worker.active == 0
    assert (worker.processed, worker.failed) == (6, 1)


@pytest.mark.parametrize("stray", ["leader", "joined"])
def test_a_slot_ended_by_a_stray_exception_mid_round_loses_no_job(db_path: str, stray: str) -> None:
    """A handler starts a gevent.Timeout and never cancels it (an application's bug): it
    fires while its slot waits in a round, the round's leader or a slot that joined it,
    held up by another process's lock. No other slot is left waiting, no job is left
    claimed and renewed with nobody running it: the job claimed for the ended slot runs
    again once its lease expires, and every job is done."""
    with workmatic.create_database(db_path, lock_timeout=30) as db:
        client = workmatic.create_client(db, "q")
        ids = [client.add({"n": n}) for n in range(8)]
        gates = {0: gevent.event.Event(), 1: gevent.event.Event()}
        strayed = 0 if stray == "leader" else 1

        def handler(job: workmatic.Job) -> int:
            n = int(job.payload["n"])
            if n in gates:
                gates[n].wait()
                if n == strayed:
                    gevent.Timeout(0.3).start()  # never cancelled: fires in the round
            return n

        worker = make(db, handler, concurrency=2, poll_interval=0.05, lease=1)
        worker.start()
        wait_for(lambda: worker.active == 2)
        with LockHolder(db_path):
            gates[0].set()  # slot 0 leads a round, which waits for the lock
            wait_for(lambda: worker._round is not None)
            gates[1].set()  # slot 1 joins it
            wait_for(lambda: len(worker._pool) < 2)  # the stray timeout ended a slot
        wait_for(lambda: db.stats("q").done == 8, timeout=30)
        worker.stop(timeout=5)
        assert worker.active == 0 and len(worker._pool) == 0
        assert [job_of(db, job_id).result for job_id in ids] == list(range(8))
        assert db.stats("q").running == 0


def test_a_job_claimed_again_in_its_own_round_stays_tracked(memdb: workmatic.Database) -> None:
    """A job that fails with a retry at once is claimed again in the same round, for the
    other slot (a higher-priority job goes to its own slot first). Settling the old claim
    must not untrack the new one: the job's lease is renewed while it runs, and it runs
    twice in all, one run after the other."""
    client = workmatic.create_client(memdb, "q")
    client.add({"n": "K"})
    retried = client.add({"n": "J"})
    gates = {"J": gevent.event.Event(), "K": gevent.event.Event()}
    second = gevent.event.Event()
    runs: dict[str, int] = {}
    live: dict[str, int] = {}
    overlapped: list[str] = []

    def handler(job: workmatic.Job) -> str:
        n = job.payload["n"]
        runs[n] = runs.get(n, 0) + 1
        if n in gates and runs[n] == 1:
            gates[n].wait()
            if n == "J":
                raise RuntimeError("the first attempt fails; retried at once")
            return str(n)
        if live.get(n):
            overlapped.append(n)
        live[n] = live.get(n, 0) + 1
        try:
            if n == "J":
                second.set()
                gevent.sleep(1.5)  # three leases of 0.5 s
            return str(n)
        finally:
            live[n] -= 1

    worker = make(memdb, handler, concurrency=2, poll_interval=0.05, lease=0.5)
    worker.backoff = lambda attempts: 0
    worker.start()
    wait_for(lambda: worker.active == 2)
    client.add({"n": "X"}, priority=-5)  # the round claims X first, then J
    gates["J"].set()
    gates["K"].set()
    assert second.wait(10)
    rowid = int(retried[:12], 16)
    assert rowid in worker._running and worker.active == 2
    wait_for(lambda: memdb.stats("q").done == 3, timeout=30)
    worker.stop()
    assert runs["J"] == 2 and not overlapped
    assert (job_of(memdb, retried).status, job_of(memdb, retried).attempts) == ("done", 1)


def test_a_slot_that_records_its_job_alone_after_a_round_claims_with_a_live_lease(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round waits for another process's lock, then fails (one outcome refused): each
    slot records its own job. The next job each claims then gets a lease counted from
    the claim, not from when its handler returned (by then longer ago than the lease)."""
    from workmatic import _sql
    from workmatic._sql import claiming

    claims: list[tuple[int, int]] = []
    claim = _sql.claim

    def spy(conn: Any, queue: str, limit: int, now: int, lease_until: int, **kw: Any) -> Any:
        claims.append((lease_until, int(time.time() * 1000)))
        return claim(conn, queue, limit, now, lease_until, **kw)

    with workmatic.create_database(db_path, lock_timeout=30) as db:
        client = workmatic.create_client(db, "q")
        for n in range(6):
            client.add({"n": n})
        gate, handler = refusing_job_1(db)
        worker = make(db, handler, concurrency=3, poll_interval=60, lease=0.5)
        worker.start()
        wait_for(lambda: worker.active == 3)
        # Every claim: a round's (the worker calls _sql.claim) and a slot's own (in
        # finish_and_claim, which calls the claim of its module).
        monkeypatch.setattr(_sql, "claim", spy)
        monkeypatch.setattr(claiming, "claim", spy)
        with LockHolder(db_path):
            gate.set()
            wait_for(lambda: worker._round is not None and len(worker._round.joined) == 2)
            gevent.sleep(1.0)  # the round waits for the lock: its handlers returned 1 s ago
        wait_for(lambda: worker.processed >= 4, timeout=30)
        worker.stop(timeout=0.2)
    assert claims
    assert all(lease_until > at for lease_until, at in claims), claims


def test_a_bug_handing_out_a_rounds_next_jobs_leaves_no_slot_waiting(
    memdb: workmatic.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building the next job of a slot in a round fails (a bug, simulated): every other
    slot of the round is still woken, the worker goes on, and the job that could not be
    handed out runs again once its lease expires (it was claimed, never renewed), as does
    the leader's own next job when the failure ended the leader's greenlet."""
    from workmatic import _rounds

    client = workmatic.create_client(memdb, "q")
    ids = [client.add({"n": n}) for n in range(12)]
    gate = gevent.event.Event()
    built = [0]
    claimed_job = _rounds.claimed_job

    def flaky(row: Any) -> workmatic.Job:
        built[0] += 1
        if built[0] == 6:  # the second of the round's next jobs
            raise RuntimeError("simulated bug")
        return claimed_job(row)

    monkeypatch.setattr(_rounds, "claimed_job", flaky)  # read by the worker's _Finishing
    worker = make(memdb, lambda job: gate.wait(), concurrency=4, lease=0.5, poll_interval=0.05)
    worker.start()
    wait_for(lambda: worker.active == 4)
    gate.set()
    wait_for(lambda: memdb.stats("q").done == 12, timeout=30)
    worker.stop(timeout=5)
    assert not worker.is_running and len(worker._pool) == 0 and worker.active == 0
    rerun = [job_of(memdb, job_id) for job_id in ids if job_of(memdb, job_id).attempts]
    assert 1 <= len(rerun) <= 2
    assert all((job.status, job.attempts) == ("done", 1) for job in rerun)


class GatedBatches:
    """Batches of ``size`` jobs (12), added in order, for a worker of as many slots: each
    of its rounds claims the next batch. A job's handler records the writer's commit count as it
    starts, waits for its batch's gate, and returns its ``n``. A batch's handlers return
    together (``release``) after running for 50 ms: handlers that wait on I/O, for far
    longer than a round takes."""

    def __init__(self, db: workmatic.Database, batches: int, size: int = 12) -> None:
        self.db = db
        self.size = size
        client = workmatic.create_client(db, "q")
        self.ids = [client.add({"b": b, "n": n}) for b in range(batches) for n in range(size)]
        self.gates = [gevent.event.Event() for _ in range(batches)]
        self.started: list[list[int]] = [[] for _ in range(batches)]
        self.on_start: Callable[[int], None] = lambda batch: None

    def handler(self, job: workmatic.Job) -> int:
        batch = int(job.payload["b"])
        self.started[batch].append(self.db._writer().commits)
        self.on_start(batch)
        self.gates[batch].wait()
        return int(job.payload["n"])

    def release(self, batch: int) -> None:
        gevent.sleep(0.05)  # the workload: handlers busy for 50 ms (not a synchronisation)
        self.gates[batch].set()

    def start(self, worker: workmatic.Worker) -> None:
        """Start ``worker`` (``size`` slots) and let batches 0 and 1 return: its first round
        (whole: it has no measure of a round's cost yet) claims batch 1; its second,
        split, records batch 1 and claims batch 2."""
        worker.start()
        wait_for(lambda: len(self.started[0]) == self.size)
        self.release(0)
        wait_for(lambda: len(self.started[1]) == self.size)
        self.release(1)

    def finish(self, worker: workmatic.Worker) -> None:
        """Let the other batches return as they start; check every job was done once."""
        for batch in range(2, len(self.gates)):
            wait_for(lambda: len(self.started[batch]) == self.size)  # noqa: B023 (called at once)
            self.release(batch)
        wait_for(lambda: worker.processed == len(self.ids), timeout=30)
        worker.stop()
        results = [job_of(self.db, job_id).result for job_id in self.ids]
        assert results == list(range(self.size)) * len(self.gates)
        assert all(job_of(self.db, job_id).attempts == 0 for job_id in self.ids)


def count_lead_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count how often a split round's rest is passed to the next chunk's leader."""
    from workmatic import _rounds

    passes = [0]
    pass_lead = _rounds._Finishing._pass_lead

    def counted(self: Any, rest: Any) -> None:
        passes[0] += 1
        pass_lead(self, rest)

    monkeypatch.setattr(_rounds._Finishing, "_pass_lead", counted)
    return passes


def test_slots_back_from_long_handlers_start_their_next_jobs_chunk_by_chunk(
    db: workmatic.Database,
) -> None:
    """Twelve slots whose handlers ran long return together. The worker's first round
    records all twelve in one commit (it has no measure of a round's cost yet). The next
    is split: one commit records four outcomes and claims four next jobs, and those four
    slots start them before the next four outcomes commit, and so on: three commits,
    each slot starting its job after its own chunk's. Every job is done once."""
    jobs = GatedBatches(db, batches=4)
    worker = make(db, jobs.handler, concurrency=12, poll_interval=60)
    jobs.start(worker)
    wait_for(lambda: len(jobs.started[2]) == 12)
    assert len(set(jobs.started[1])) == 1, "a whole round: twelve slots after one commit"
    first = jobs.started[2][0]
    assert jobs.started[2] == [first] * 4 + [first + 1] * 4 + [first + 2] * 4
    jobs.finish(worker)


def test_rounds_of_slots_that_keep_the_database_busy_stay_whole(
    memdb: workmatic.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No-op handlers: their slots wait for the database, not the other way round, so no
    round is split (more commits would only cost throughput). And rounds are freed as
    they end, by reference counting: a reference cycle through a round kept every round
    and what it held alive until the cyclic GC ran, 12-20 % slower at concurrency 64."""
    from workmatic import _rounds

    passes = count_lead_passes(monkeypatch)
    client = workmatic.create_client(memdb, "q")
    client.add_many([{"n": n} for n in range(2000)])
    worker = make(memdb, lambda job: job.payload["n"], concurrency=8, poll_interval=60)
    gc.disable()  # a full collection inside a handler would make it a long one
    try:
        worker.start()
        wait_for(lambda: worker.processed == 2000, timeout=30)
        alive = sum(isinstance(o, _rounds._Round) for o in gc.get_objects())
    finally:
        gc.enable()
    assert alive <= 1, f"{alive} rounds left for the cyclic GC"
    worker.stop()
    assert passes[0] == 0
    assert memdb._writer().commits < 2000 / 4, "rounds of several jobs"


@pytest.mark.parametrize("when", ["before it leads", "as it leads"])
def test_a_slot_killed_when_passed_the_lead_of_a_split_round_leaves_none_waiting(
    db: workmatic.Database, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """The slot handed the rest of a split round is killed, before it could lead the next
    chunk or while it leads it (the kill lands as it yields before its transaction). The
    next slot still waiting leads in its place, and records the killed slot's outcome
    too: no job runs again, and no slot is left waiting."""
    from workmatic import _rounds

    killed: list[int] = []
    pass_lead = _rounds._Finishing._pass_lead

    def kill_head(self: Any, rest: list[Any]) -> None:
        head = next(turn for turn in rest if not turn.gone)
        if when == "as it leads":
            pass_lead(self, rest)
        if not killed:
            killed.append(int(head.running.job.payload["n"]))
            head.running.greenlet.kill(block=False)
        if when == "before it leads":
            pass_lead(self, rest)

    monkeypatch.setattr(_rounds._Finishing, "_pass_lead", kill_head)
    jobs = GatedBatches(db, batches=4)
    worker = make(db, jobs.handler, concurrency=12, poll_interval=0.05, lease=0.5)
    jobs.start(worker)
    wait_for(lambda: len(killed) == 1 and len(jobs.started[2]) >= 4)
    jobs.release(2)
    jobs.release(3)
    wait_for(lambda: db.stats("q").done == 48, timeout=30)
    with gevent.Timeout(10):
        worker.stop()
    assert len(worker._pool) == 0 and worker.active == 0
    assert [job_of(db, job_id).result for job_id in jobs.ids] == list(range(12)) * 4
    rerun = [job_id for job_id in jobs.ids if job_of(db, job_id).attempts]
    assert rerun == []


def test_slots_waiting_for_a_later_chunk_keep_their_leases(
    db: workmatic.Database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each chunk of a split round is passed on 0.7 s late (simulated), so the slots left
    for later chunks wait longer than the 0.5 s lease: their claims are renewed meanwhile,
    so every outcome is recorded and no job runs again."""
    from workmatic import _rounds

    caplog.set_level(logging.WARNING, logger="workmatic")
    pass_lead = _rounds._Finishing._pass_lead
    delayed = [0]

    def late(self: Any, rest: Any) -> None:
        delayed[0] += 1
        gevent.spawn_later(0.7, pass_lead, self, rest)

    monkeypatch.setattr(_rounds._Finishing, "_pass_lead", late)
    jobs = GatedBatches(db, batches=4)
    worker = make(db, jobs.handler, concurrency=12, poll_interval=60, lease=0.5)
    jobs.start(worker)
    jobs.finish(worker)  # every job done once (attempts 0)
    assert delayed[0] >= 2
    assert not [r for r in caplog.records if "lease" in r.getMessage()]


def test_a_leader_killed_while_its_write_is_queued_records_every_outcome_and_claims_none(
    db: workmatic.Database,
) -> None:
    """A round's leader is killed while its write waits for the writer: the slots that
    joined it are woken with no job and end; the write then runs all the same, whole (not
    split): it records all twelve outcomes and claims no job for slots that are gone (a
    claim nobody would run, left to expire). The pump starts new slots, and every job is
    done once."""
    jobs = GatedBatches(db, batches=3)
    worker = make(db, jobs.handler, concurrency=12, poll_interval=0.05)
    worker.start()
    wait_for(lambda: len(jobs.started[0]) == 12)
    jobs.release(0)
    wait_for(lambda: len(jobs.started[1]) == 12)
    writer = db._writer()
    assert writer.hold(5)  # the writer busy: the next round's write queues
    try:
        jobs.release(1)
        wait_for(lambda: worker._round is not None and len(worker._round.joined) == 11)
        gevent.sleep(0)  # the leader queues its write (it yielded once to let them join)
        leader = worker._round.running.greenlet
        assert leader is not None
        leader.kill(block=True)
    finally:
        writer.release()
    wait_for(lambda: db.stats("q").done == 24)
    # The pump claims batch 2 for new slots at once; had the dead round's write claimed
    # it, it would wait for its leases (30 s) to expire, and run with an attempt counted.
    wait_for(lambda: len(jobs.started[2]) == 12)
    jobs.finish(worker)


def test_a_round_of_jobs_released_without_running_is_not_split(
    db: workmatic.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker is paused as a round hands its slots their next jobs: the first starts
    its job, the other eleven release theirs without running a handler. Their round is
    one commit, not split (no handler ran long), and on resume every job runs once."""
    passes = count_lead_passes(monkeypatch)
    jobs = GatedBatches(db, batches=3)
    worker = make(db, jobs.handler, concurrency=12, poll_interval=60)
    jobs.on_start = lambda batch: worker.pause() if batch == 1 else None
    worker.start()
    wait_for(lambda: len(jobs.started[0]) == 12)
    jobs.release(0)
    wait_for(lambda: len(worker._pool) == 1)
    assert db.stats("q").ready == 11 + 12 and passes[0] == 0
    jobs.on_start = lambda batch: None
    worker.resume()
    wait_for(lambda: len(jobs.started[1]) == 12)
    jobs.release(1)
    jobs.finish(worker)


def test_no_round_is_split_while_another_process_contends_for_the_lock(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An add meets another process's lock (it waits until the lock is released). For
    the next SPLIT_UNCONTENDED seconds (0.3 here) no round is split, even of slots back
    from long handlers: each chunk would take the lock anew. After that, rounds split
    again."""
    from workmatic import _rounds

    monkeypatch.setattr(_rounds, "SPLIT_UNCONTENDED", 0.3)
    passes = count_lead_passes(monkeypatch)
    with workmatic.create_database(db_path) as db:
        jobs = GatedBatches(db, batches=5)
        worker = make(db, jobs.handler, concurrency=12, poll_interval=60)
        worker.start()
        wait_for(lambda: len(jobs.started[0]) == 12)
        jobs.release(0)  # the first round: whole
        wait_for(lambda: len(jobs.started[1]) == 12)
        holder = LockHolder(db_path)
        added = gevent.spawn(workmatic.create_client(db, "other").add, {})
        wait_for(lambda: db._writer().contended > 0)  # the add met the lock
        holder.release()
        added.get(timeout=10)
        jobs.release(1)  # handlers ran long, but the lock was contended just now
        wait_for(lambda: len(jobs.started[2]) == 12)
        assert len(set(jobs.started[2])) == 1 and passes[0] == 0, "one commit: whole"
        gevent.sleep(0.3)
        jobs.release(2)
        wait_for(lambda: len(jobs.started[3]) == 12)
        assert len(set(jobs.started[3])) == 3 and passes[0] == 2, "split in three chunks"
        jobs.finish(worker)


def test_a_chunk_that_starts_late_records_every_slot_left(
    db: workmatic.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub is busy for 50 ms (simulated: a blocking sleep) just after the first chunk
    of a split round passes the rest on: the next chunk's transaction starts late, so it
    records all eight slots left at once, as a whole round would, instead of in two more
    chunks."""
    import time as real_time

    from workmatic import _rounds

    passes = [0]
    pass_lead = _rounds._Finishing._pass_lead

    def then_busy(self: Any, rest: Any) -> None:
        passes[0] += 1
        pass_lead(self, rest)
        real_time.sleep(0.05)  # the hub busy elsewhere (a CPU-bound handler, say)

    monkeypatch.setattr(_rounds._Finishing, "_pass_lead", then_busy)
    jobs = GatedBatches(db, batches=4)
    worker = make(db, jobs.handler, concurrency=12, poll_interval=60)
    jobs.start(worker)
    wait_for(lambda: len(jobs.started[2]) == 12)
    first = jobs.started[2][0]
    assert jobs.started[2] == [first] * 4 + [first + 1] * 8
    assert passes[0] == 1
    jobs.finish(worker)


def test_no_round_is_split_at_full_durability(db_path: str) -> None:
    """At durability="full" every commit fsyncs on the hub's thread: rounds stay whole,
    even of slots back from long handlers."""
    with workmatic.create_database(db_path, durability="full") as db:
        jobs = GatedBatches(db, batches=4)
        worker = make(db, jobs.handler, concurrency=12, poll_interval=60)
        jobs.start(worker)
        wait_for(lambda: len(jobs.started[2]) == 12)
        assert len(set(jobs.started[2])) == 1, "one commit: whole"
        jobs.finish(worker)


def test_a_job_claimed_again_while_its_old_lease_is_renewed_keeps_its_new_lease(
    db_path: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Job X fails and is retried at once. Its slot waits in a split round (its claim
    renewed meanwhile) while another connection holds the lock, so the renewal of X's
    old claim queues behind the round's write. That write records the failure and claims
    X again, for a slot; the renewal of the old claim then fails. The renewer must not
    take the new claim, under the same row, for lost: renewed, X's second run (longer
    than the lease) is not reaped, and X never runs twice at once."""
    from workmatic import _rounds
    from workmatic._driver import sqlite

    caplog.set_level(logging.WARNING, logger="workmatic")
    other = sqlite.connect(db_path, isolation_level=None, timeout=0, check_same_thread=False)
    pass_lead = _rounds._Finishing._pass_lead
    locked: list[bool] = []

    def lock_as_the_rest_waits(self: Any, rest: Any) -> None:
        if not locked:
            locked.append(True)
            other.execute("BEGIN IMMEDIATE")  # another writer, for 0.5 s (> lease / 3)
            gevent.spawn_later(0.5, other.execute, "COMMIT")
        pass_lead(self, rest)

    monkeypatch.setattr(_rounds._Finishing, "_pass_lead", lock_as_the_rest_waits)
    live: list[int] = []
    overlapped: list[int] = []
    gates = [gevent.event.Event(), gevent.event.Event()]

    def handler(job: workmatic.Job) -> None:
        b, n = job.payload["b"], job.payload["n"]
        if (b, n) != (1, 7) or job.attempts == 0:
            gates[b].wait()
            if (b, n) == (1, 7):  # X: the last of batch 1 to return
                raise RuntimeError("X fails once; retried at once")
            return
        if live:
            overlapped.append(job.attempts)
        live.append(job.attempts)
        try:
            gevent.sleep(1.5)  # X's second run: longer than the 0.6 s lease
        finally:
            live.remove(job.attempts)

    with workmatic.create_database(db_path) as db:
        client = workmatic.create_client(db, "q")
        ids = [client.add({"b": b, "n": n}) for b in range(2) for n in range(8)]
        worker = make(db, handler, concurrency=8, poll_interval=0.05, lease=0.6)
        worker.backoff = lambda attempts: 0
        worker.start()
        wait_for(lambda: worker.active == 8)
        gevent.sleep(0.05)  # the workload: handlers busy for 50 ms
        gates[0].set()  # the first round: whole
        wait_for(lambda: db.stats("q").done == 8 and worker.active == 8)
        gevent.sleep(0.05)  # handlers that ran long: the next round splits
        gates[1].set()
        wait_for(lambda: db.stats("q").done == 16, timeout=30)
        worker.stop()
        x = job_of(db, ids[-1])
    other.close()
    assert locked and not overlapped
    assert x.attempts == 1, "X failed once, and was never reaped"
    assert not [r for r in caplog.records if "lost the lease" in r.getMessage()]


def test_the_last_slot_of_a_split_round_killed_as_it_is_passed_the_lead_is_recorded(
    db: workmatic.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five slots: the split round's first chunk records four, and the fifth, the only one
    left, is killed as it is handed the lead. With no slot left to lead, its outcome is
    recorded all the same (in a write of its own): no job runs again."""
    from workmatic import _rounds

    killed: list[int] = []
    pass_lead = _rounds._Finishing._pass_lead

    def kill_head(self: Any, rest: list[Any]) -> None:
        if not killed and len(rest) == 1 and not rest[0].gone:
            killed.append(int(rest[0].running.job.payload["n"]))
            rest[0].running.greenlet.kill(block=False)  # lands before it runs
        pass_lead(self, rest)

    monkeypatch.setattr(_rounds._Finishing, "_pass_lead", kill_head)
    jobs = GatedBatches(db, batches=4, size=5)
    worker = make(db, jobs.handler, concurrency=5, poll_interval=0.05)
    jobs.start(worker)
    wait_for(lambda: len(killed) == 1 and db.stats("q").done == 10)
    jobs.finish(worker)  # every job done once: none ran again
    assert len(worker._pool) == 0


def test_a_slot_that_ended_in_a_round_that_fails_whole_has_its_outcome_recorded(
    db_path: str,
) -> None:
    """Four jobs finish together while another process holds the lock, and one of their
    slots is killed as it waits. The round's write then fails as a whole (the database
    refuses job 1's result): each slot records its own job, and the job of the slot that
    ended is recorded too, by a write of its own, not left until its 30 s lease expires."""
    with workmatic.create_database(db_path) as db:
        ids, gate, worker = start_refusing_worker(db, 4, poll_interval=60)
        with LockHolder(db_path):
            gate.set()
            wait_for(lambda: worker._round is not None and len(worker._round.joined) == 3)
            slot = next(r.greenlet for r in worker._running.values() if r.job.payload["n"] == 2)
            assert slot is not None
            slot.kill(block=True)
        wait_for(lambda: job_of(db, ids[2]).status == "done")
        wait_for(lambda: worker.processed == 3)
        assert [job_of(db, job_id).status for job_id in ids] == ["done", "running", "done", "done"]
        assert job_of(db, ids[2]).attempts == 0
        worker.stop(timeout=0.2)


def test_a_pause_during_a_split_round_starts_no_more_jobs_and_leaves_none_waiting(
    db: workmatic.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker is paused once the first chunk of a split round has started its four
    jobs: the later chunks (passed on twice) record their outcomes and claim nothing,
    their slots end; on resume the remaining jobs run, each once."""
    passes = count_lead_passes(monkeypatch)
    jobs = GatedBatches(db, batches=4)
    worker = make(db, jobs.handler, concurrency=12, poll_interval=60)

    def pause_after_a_chunk(batch: int) -> None:
        if batch == 2 and len(jobs.started[2]) == 4:
            worker.pause()

    jobs.on_start = pause_after_a_chunk
    jobs.start(worker)
    wait_for(lambda: db.stats("q").done == 24)
    wait_for(lambda: len(worker._pool) == 4)
    assert worker.active == 4 and len(jobs.started[2]) == 4
    assert db.stats("q").running == 4 and passes[0] == 2
    worker.resume()
    jobs.finish(worker)


def test_an_outcome_refused_in_a_split_round_holds_up_no_other(
    db: workmatic.Database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The database refuses one outcome of a split round's second chunk (a trigger): that
    chunk's round fails, and each of its slots records its own job, while the third chunk
    is passed on and recorded as a round; every other outcome is recorded, and only the
    refused job's slot keeps retrying it."""
    caplog.set_level(logging.WARNING, logger="workmatic")
    passes = count_lead_passes(monkeypatch)
    edit(
        db,
        "CREATE TRIGGER refuse BEFORE UPDATE OF status ON jobs"
        " WHEN NEW.result = '5' AND json_extract(NEW.payload, '$.b') = 1"
        " BEGIN SELECT RAISE(ABORT, 'refused'); END",
    )
    jobs = GatedBatches(db, batches=3)
    worker = make(db, jobs.handler, concurrency=12, poll_interval=0.05)
    jobs.start(worker)  # job 5 of batch 1 is in the split round's second chunk
    wait_for(lambda: len(jobs.started[2]) == 11)
    # that chunk's four outcomes failed together, and each records its own; the third
    # chunk goes on as a round of its own
    assert any("and 3 more together" in r.getMessage() for r in caplog.records)
    assert passes[0] == 2
    jobs.release(2)
    wait_for(lambda: worker.processed == 35, timeout=30)
    refused = jobs.ids[12 + 5]
    assert job_of(db, refused).status == "running"
    worker.stop(timeout=0.2)
    assert worker.active == 0 and len(worker._pool) == 0
    others = [job_id for job_id in jobs.ids if job_id != refused]
    assert all(job_of(db, job_id).status == "done" for job_id in others)


def test_a_transient_database_error_does_not_kill_the_worker(
    db_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The write that records a job's outcome meets another process's lock for longer than
    lock_timeout (DatabaseLockedError): the worker says so, retries, and records the job
    once the lock is free; it keeps running."""
    caplog.set_level(logging.WARNING, logger="workmatic")
    with workmatic.create_database(db_path, lock_timeout=0.2) as db:
        client = workmatic.create_client(db, "q")
        running = gevent.event.Event()
        go = gevent.event.Event()

        def handler(job: workmatic.Job) -> str:
            running.set()
            go.wait()
            return "ok"

        worker = make(db, handler, poll_interval=0.05)
        worker.start()
        job_id = client.add({})
        assert running.wait(10)
        with LockHolder(db_path):
            go.set()  # the job ends: recording it meets the lock
            wait_for(
                lambda: any("cannot record job" in r.getMessage() for r in caplog.records),
                timeout=30,
            )
            assert job_of(db, job_id).status == "running"
        wait_for(lambda: job_of(db, job_id).status == "done", timeout=30)
        assert job_of(db, job_id).result == "ok"
        assert worker.is_running
        running.clear()
        client.add({})
        wait_for(lambda: client.stats().done == 2, timeout=30)
        worker.stop()


def test_stats_and_info(memdb: workmatic.Database) -> None:
    worker = make(memdb, lambda job: None, concurrency=2)
    workmatic.create_client(memdb, "q").add({})
    assert worker.stats().ready == 1
    info = worker.info()
    assert info["queue"] == "q" and info["concurrency"] == 2 and info["is_running"] is False


def test_a_busy_worker_still_rescues_a_crashed_workers_job(memdb: workmatic.Database) -> None:
    """The pump of a busy worker has no free slot to claim for, and its slots claim their
    next jobs directly: the renewer reaps other workers' expired leases meanwhile."""
    client = workmatic.create_client(memdb, "q")
    release = gevent.event.Event()
    worker = make(memdb, lambda job: release.wait(), lease=0.3)
    client.add({"long": True})
    worker.start()
    wait_for(lambda: worker.active == 1)
    orphan = client.add({"orphan": True})
    edit_job(memdb, orphan, "status = 'running', lease_until = 1")
    wait_for(lambda: job_of(memdb, orphan).status == "ready", timeout=5)
    assert job_of(memdb, orphan).attempts == 1
    release.set()
    wait_for(lambda: job_of(memdb, orphan).status == "done")
    worker.stop()
