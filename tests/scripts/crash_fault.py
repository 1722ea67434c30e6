"""Run workmatic against a faulty database and report what happened, as JSON lines.

``crash_fault.py SCENARIO DB [options]``; every scenario prints one JSON object per phase
(``{"phase": ..., ...}``) on stdout and exits 0 unless something unexpected escaped (a
non-workmatic exception is reported as ``"unexpected"`` and exits 3).

* ``fill``: a worker runs while ``add()`` / ``add_many()`` fill the disk until they fail
  (a small tmpfs, or ``--rlimit BYTES`` for RLIMIT_FSIZE with SIGXFSZ ignored). Reports
  the error, then waits for a line ``free`` on stdin (with ``--rlimit`` it lifts the
  limit itself), adds more jobs and waits until the worker has done every acknowledged
  job.
* ``ops``: open the file, read stats, list and iterate jobs, add one job and a batch, run
  a worker for a moment: reports each step's outcome (``"ok"`` or the exception's class
  name and message).
* ``locked``: with jobs waiting, wait for a line ``locked`` on stdin (another process then
  holds the write lock), time an ``add()`` under ``lock_timeout=1`` and measure the gevent
  hub's longest stall meanwhile; start a worker, whose claims fail, and report ("tried");
  then, after a line ``released``, check that the worker gets every job done.
* ``deleted``: a worker and a producer greenlet run; after a line ``deleted`` on stdin
  (the files were removed), keep adding for a while and report what ``add()`` did.

Acknowledged job ids go to ``--acks FILE`` (``O_APPEND``), one a line, after each commit.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

import workmatic  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("scenario", choices=["fill", "ops", "locked", "deleted"])
parser.add_argument("db")
parser.add_argument("--acks", default=os.devnull)
parser.add_argument("--rlimit", type=int, default=0)
args = parser.parse_args()
acks_fd = os.open(args.acks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def report(phase: str, **data: Any) -> None:
    print(json.dumps({"phase": phase, **data}), flush=True)


def ack(ids: list[str]) -> None:
    os.write(acks_fd, "".join(f"{i}\n" for i in ids).encode())


def outcome(exc: BaseException) -> dict[str, str]:
    if not isinstance(exc, workmatic.WorkmaticError):
        report("unexpected", type=type(exc).__name__, error=str(exc))
        sys.exit(3)
    return {"type": type(exc).__name__, "error": str(exc)}


def attempt(fn: Callable[[], Any]) -> dict[str, Any]:
    try:
        value = fn()
    except Exception as exc:
        return outcome(exc)
    return {"type": "ok", "value": value}


def wait_line(expected: str) -> None:
    line = sys.stdin.readline().strip()
    assert line == expected, line


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except workmatic.DatabaseError:
            pass
        gevent.sleep(0.05)
    return False


def stats(db: workmatic.Database) -> dict[str, int]:
    return db.stats("q").as_dict()


def fill() -> None:
    if args.rlimit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.rlimit, hard))
    db = workmatic.create_database(args.db)
    client = workmatic.create_client(db, "q")
    worker = workmatic.create_worker(db, "q", concurrency=4, lease=5, poll_interval=0.1)
    worker.process(lambda job: None)
    worker.start()
    acked = 0
    acked_between = 0  # jobs added after the first failure
    errors: list[dict[str, str]] = []
    n = 0
    # Keep adding after the first failure, until five have failed. An add may succeed
    # between failures (about one run in ten on the tmpfs, measured) when SQLite finds
    # room again in files it already has (once a checkpoint lets it write the WAL from its
    # start, for one). Such a job is acknowledged like any other: after recovery it must
    # be there and done.
    while len(errors) < 5:
        n += 1
        if n > 100_000:
            report("unexpected", type="ok", error="the disk never filled")
            sys.exit(3)
        try:
            if n % 10 == 0:
                ids = client.add_many([{"n": n, "k": k, "pad": "x" * 500} for k in range(20)])
            else:
                ids = [client.add({"n": n, "pad": "y" * 2000})]
        except Exception as exc:
            errors.append(outcome(exc))
            continue
        ack(ids)
        acked += len(ids)
        if errors:
            acked_between += len(ids)
    report(
        "full", acked=acked, acked_between=acked_between, errors=errors,
        stats=attempt(lambda: stats(db)),
    )  # fmt: skip
    wait_line("free")
    if args.rlimit:
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    more = client.add_many([{"after": k} for k in range(10)])
    ack(more)
    acked += len(more)
    done = wait_until(lambda: db.stats("q").done == acked, timeout=60)
    worker.stop(timeout=10)
    report("recovered", acked=acked, all_done=done, stats=stats(db))
    db.close()


def ops() -> None:
    opened = attempt(lambda: workmatic.create_database(args.db, create=False, lock_timeout=2))
    steps: dict[str, Any] = {"open": {k: v for k, v in opened.items() if k != "value"}}
    if opened["type"] == "ok":
        db: workmatic.Database = opened["value"]
        client = workmatic.create_client(db, "q")
        steps["stats"] = attempt(lambda: stats(db))
        steps["list"] = attempt(lambda: len(db.list_jobs(limit=100)))
        steps["iterate"] = attempt(lambda: sum(1 for _ in db.iter_jobs()))
        steps["add"] = attempt(lambda: ack([client.add({"ops": 1})]))
        steps["add_many"] = attempt(lambda: ack(client.add_many([{"ops": k} for k in range(5)])))
        worker = workmatic.create_worker(db, "q", concurrency=2, lease=2, poll_interval=0.1)
        worker.process(lambda job: None)
        worker.start()
        finished = wait_until(lambda: db.stats("q").ready == 0, timeout=3)
        worker.stop(timeout=5)
        steps["worker"] = {"type": "ok", "value": {"drained": finished}}
        steps["final_stats"] = attempt(lambda: stats(db))
        db.close()
    report("ops", steps=steps)


def locked() -> None:
    db = workmatic.create_database(args.db, lock_timeout=1.0)
    client = workmatic.create_client(db, "q")
    ack(client.add_many([{"n": k} for k in range(50)]))
    report("added")
    wait_line("locked")
    gaps = [0.0]
    beating = True

    def heartbeat() -> None:
        last = time.monotonic()
        while beating:
            gevent.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    beat = gevent.spawn(heartbeat)
    began = time.monotonic()
    result = attempt(lambda: ack([client.add({"while": "locked"})]))
    took = time.monotonic() - began
    stall = max(gaps)  # during the add's wait
    # A worker started under the lock: its claims fail (DatabaseLockedError), and it
    # retries them, until the lock goes.
    refused = gevent.event.Event()

    class Refusals(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "claim failed" in record.getMessage():
                refused.set()

    logging.getLogger("workmatic").addHandler(Refusals(logging.WARNING))
    worker = workmatic.create_worker(db, "q", concurrency=4, lease=5, poll_interval=0.1)
    worker.process(lambda job: None)
    worker.start()
    claims_refused = refused.wait(60)
    report("tried", add=result, claims_refused=claims_refused)
    wait_line("released")  # the test released the lock
    began = time.monotonic()
    done = wait_until(lambda: db.stats("q").done >= 50, timeout=60)
    done_after = time.monotonic() - began
    worker.stop(timeout=10)
    beating = False
    beat.join()
    report(
        "locked",
        add=result,
        add_seconds=round(took, 3),
        max_hub_stall=round(stall, 3),
        claims_refused=claims_refused,
        all_done=done,
        done_after_seconds=round(done_after, 2),
        stats=stats(db),
    )
    db.close()


def deleted() -> None:
    db = workmatic.create_database(args.db)
    client = workmatic.create_client(db, "q")
    worker = workmatic.create_worker(db, "q", concurrency=4, lease=5, poll_interval=0.1)
    worker.process(lambda job: None)
    worker.start()
    ack(client.add_many([{"before": k} for k in range(100)]))
    wait_until(lambda: db.stats("q").done == 100, timeout=30)
    report("running")
    wait_line("deleted")
    results: dict[str, int] = {}
    for k in range(50):
        result = attempt(lambda: ack([client.add({"after": k})]))  # noqa: B023
        results[result["type"]] = results.get(result["type"], 0) + 1
        gevent.sleep(0.01)
    drained = wait_until(lambda: db.stats("q").ready == 0, timeout=10)
    worker.stop(timeout=10)
    report("deleted", adds=results, drained=drained, stats=attempt(lambda: stats(db)))
    db.close()


{"fill": fill, "ops": ops, "locked": locked, "deleted": deleted}[args.scenario]()
