"""The orchestrator: many queues together, atomic transfer, move_job."""

from __future__ import annotations

import gevent
import pytest
from helpers import edit_job, wait_for

import workmatic


def test_register_process_start_stop_and_stats(memdb: workmatic.Database) -> None:
    orch = workmatic.create_orchestrator(memdb)
    seen: dict[str, list[int]] = {"emails": [], "reports": []}
    orch.register("emails", concurrency=2)
    orch.register("reports")
    orch.process("emails", lambda job: seen["emails"].append(job.payload))
    orch.process("reports", lambda job: seen["reports"].append(job.payload))
    orch.client("emails").add_many([1, 2, 3])
    orch.client("reports").add(9)
    orch.start_all()
    assert all(w.is_running for w in orch.workers)
    wait_for(lambda: len(seen["emails"]) == 3 and seen["reports"] == [9])
    orch.stop_all()
    assert not any(w.is_running for w in orch.workers)
    stats = orch.stats()
    assert set(stats) == {"emails", "reports"}
    assert stats["emails"].done == 3 and stats["reports"].done == 1
    assert orch.worker("emails").concurrency == 2
    assert orch.client("emails") is orch.client("emails")
    with pytest.raises(KeyError):
        orch.worker("nope")
    with pytest.raises(workmatic.WorkmaticError):
        orch.register("emails")


def test_pause_and_resume_a_queue_worker(memdb: workmatic.Database) -> None:
    orch = workmatic.create_orchestrator(memdb)
    done: list[int] = []
    orch.register("q", handler=lambda job: done.append(job.payload))
    orch.start_all()
    orch.pause("q")
    assert orch.worker("q").is_paused
    orch.client("q").add(1)  # wakes the worker's pump at once; paused, it claims nothing
    gevent.sleep(0.3)  # a window for it to (wrongly) start the job: no event marks "nothing"
    assert done == [] and orch.worker("q").active == 0
    assert orch.client("q").stats().ready == 1
    orch.resume("q")
    wait_for(lambda: done == [1])
    orch.stop_all()


def test_transfer_moves_jobs_atomically(memdb: workmatic.Database) -> None:
    orch = workmatic.create_orchestrator(memdb)
    src = orch.client("src")
    ids = src.add_many(list(range(5)))
    edit_job(memdb, ids[0], "status = 'dead', attempts = 3, last_error = 'x'")
    edit_job(memdb, ids[1], "status = 'running'")
    assert orch.transfer("src", "dst", limit=2) == 2  # oldest first: ids[0] (dead), ids[2]
    assert memdb.get_job(ids[0]).queue == "dst"  # type: ignore[union-attr]
    assert memdb.get_job(ids[0]).status == "dead"  # type: ignore[union-attr]
    assert memdb.get_job(ids[2]).queue == "dst"  # type: ignore[union-attr]
    assert orch.transfer("src", "dst2", reset=True) == 2  # ids[3], ids[4]; never running
    assert memdb.get_job(ids[1]).queue == "src"  # type: ignore[union-attr]
    assert orch.transfer("dst", "src", status="dead", reset=True) == 1
    job = memdb.get_job(ids[0])
    assert job is not None and (job.queue, job.status, job.attempts) == ("src", "ready", 0)
    with pytest.raises(workmatic.ValidationError):
        orch.transfer("src", "dst", status="running")
    with pytest.raises(workmatic.ValidationError):
        orch.transfer("src", "dst", limit=0)


def test_transfer_is_all_or_nothing(memdb: workmatic.Database) -> None:
    orch = workmatic.create_orchestrator(memdb)
    orch.client("src").add_many(list(range(10)))
    before = memdb.stats("src")
    with pytest.raises(workmatic.ValidationError):
        orch.transfer("src", "", limit=5)
    assert memdb.stats("src") == before
    assert orch.transfer("src", "dst", limit=5) == 5
    assert (memdb.stats("src").ready, memdb.stats("dst").ready) == (5, 5)


def test_move_job(memdb: workmatic.Database) -> None:
    orch = workmatic.create_orchestrator(memdb)
    job_id = orch.client("a").add({})
    assert orch.move_job(job_id, "b") is True
    assert memdb.get_job(job_id).queue == "b"  # type: ignore[union-attr]
    with pytest.raises(workmatic.JobNotFoundError):
        orch.move_job("missing", "b")
    edit_job(memdb, job_id, "status = 'running'")
    with pytest.raises(workmatic.InvalidStateError):
        orch.move_job(job_id, "c")
