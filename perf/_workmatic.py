"""The benchmark cases run through Workmatic's public API only."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import gevent
from _common import (
    PERF_DIR,
    Countdown,
    HubMonitor,
    Result,
    file_mb,
    import_workmatic,
    payloads,
    peak_rss_mb,
    percentile,
    rate,
    rss_mb,
    wait_until,
)

workmatic = import_workmatic()

QUEUE = "bench"


def describe(db: Any) -> dict[str, Any]:
    """Return the database's SQLite version, driver and durability."""
    return {
        "sqlite_version": db.sqlite_version,
        "driver": db.driver,
        "durability": db.durability,
    }


class Stuck(Exception):
    """The worker stopped making progress (a core bug): report it instead of hanging."""


def _wait_processed(worker: Any, jobs: int, done: Countdown, stall: float = 60) -> None:
    """Wait until *jobs* handlers ran and their completions are committed.

    :raises Stuck: no progress for *stall* seconds.
    """
    last = (-1, -1)
    while True:
        if done.event.wait(stall) and wait_until(lambda: worker.processed >= jobs, stall):
            return
        now = (done.count, worker.processed)
        if now == last or done.event.is_set():
            raise Stuck(
                f"no progress for {stall:g} s: {done.count} handler calls, "
                f"{worker.processed} processed, {worker.active} held, of {jobs}"
            )
        last = now


def _worker(db: Any, concurrency: int, handler: Any, **options: Any) -> Any:
    worker = workmatic.create_worker(db, QUEUE, concurrency=concurrency, **options)
    worker.process(handler)
    return worker


def run(case: str, path: str, durability: str, jobs: int, options: dict[str, Any]) -> Result:
    """Run one benchmark *case* through Workmatic and return its measurement."""
    if case == "claim_large":
        return _run_large(path, durability, jobs, options)
    if case == "latency":
        return _run_latency(path, durability, jobs, options)
    db = workmatic.create_database(path, durability=durability)
    client = workmatic.create_client(db, QUEUE)
    items = payloads(jobs)
    done = Countdown(jobs)
    sleep_for = float(options.get("sleep", 0.0))

    def handler(job: Any) -> None:
        if sleep_for:
            gevent.sleep(sleep_for)
        done.hit()

    result: Result = describe(db)
    try:
        elapsed, stall_ms = _run_case(case, db, client, items, handler, done, options)
    except Stuck as exc:
        result["error"] = f"{exc}; stats {db.stats().as_dict()}"
        return result
    result.update(
        {"jobs": jobs, "seconds": elapsed, "rate": rate(jobs, elapsed), "stall_ms": stall_ms}
    )
    stats = db.stats()
    expected = "done" if case in ("process", "mixed") else "ready"
    if getattr(stats, expected) != jobs:
        result["warning"] = f"expected {jobs} {expected} jobs, found {stats.as_dict()}"
    db.close()
    return result


def _run_case(
    case: str,
    db: Any,
    client: Any,
    items: list[dict[str, Any]],
    handler: Any,
    done: Countdown,
    options: dict[str, Any],
) -> tuple[float, float]:
    """Run the timed part of *case*; return (seconds, largest hub stall in ms)."""
    jobs = len(items)
    concurrency = int(options.get("concurrency", 1))
    with HubMonitor() as monitor:
        if case == "seq_add":
            monitor.start()
            start = time.perf_counter()
            for item in items:
                client.add(item)
            elapsed = time.perf_counter() - start
        elif case == "add_many":
            monitor.start()
            start = time.perf_counter()
            client.add_many(items)
            elapsed = time.perf_counter() - start
        elif case == "par_add":
            greenlets = int(options.get("greenlets", 100))
            per = jobs // greenlets

            def producer(chunk: list[dict[str, Any]]) -> None:
                for item in chunk:
                    client.add(item)

            chunks = [items[k * per : (k + 1) * per] for k in range(greenlets)]
            monitor.start()
            start = time.perf_counter()
            gevent.joinall([gevent.spawn(producer, chunk) for chunk in chunks], raise_error=True)
            elapsed = time.perf_counter() - start
        elif case == "process":
            client.add_many(items)
            worker = _worker(db, concurrency, handler)
            monitor.start()
            start = time.perf_counter()
            worker.start()
            _wait_processed(worker, jobs, done)
            elapsed = time.perf_counter() - start
            worker.stop()
        elif case == "mixed":
            producers = int(options.get("producers", 4))
            per = jobs // producers

            def add_some(base: int) -> None:
                for item in items[base : base + per]:
                    client.add(item)
                    gevent.sleep(0)

            worker = _worker(db, concurrency, handler)
            monitor.start()
            start = time.perf_counter()
            worker.start()
            gevent.joinall(
                [gevent.spawn(add_some, k * per) for k in range(producers)], raise_error=True
            )
            _wait_processed(worker, jobs, done)
            elapsed = time.perf_counter() - start
            worker.stop()
        else:
            raise SystemExit(f"workmatic: unknown case {case!r}")
    return elapsed, monitor.max_gap_ms


def build_large(path: str, ready: int, delayed: int) -> Result:
    """Create a file with *ready* runnable and *delayed* future jobs (add_many)."""
    db = workmatic.create_database(path, durability="normal")
    client = workmatic.create_client(db, QUEUE)
    start = time.perf_counter()
    step = 100_000
    for base in range(0, ready, step):
        client.add_many(payloads(min(step, ready - base), base))
    for base in range(0, delayed, step):
        client.add_many(payloads(min(step, delayed - base), ready + base), delay=7 * 86400)
    elapsed = time.perf_counter() - start
    db.close()
    return {
        "jobs": ready + delayed,
        "seconds": elapsed,
        "rate": rate(ready + delayed, elapsed),
        "file_mb": file_mb(path),
    }


def _run_large(path: str, durability: str, jobs: int, options: dict[str, Any]) -> Result:
    """Process *jobs* no-op jobs at concurrency 16 from a prebuilt (copied) file."""
    base_rss = rss_mb()
    db = workmatic.create_database(path, durability=durability, create=False)
    done = Countdown(jobs)
    worker = _worker(db, int(options.get("concurrency", 16)), lambda job: done.hit())
    result = describe(db)
    with HubMonitor() as monitor:
        monitor.start()
        start = time.perf_counter()
        worker.start()
        try:
            _wait_processed(worker, jobs, done)
        except Stuck as exc:
            result["error"] = str(exc)
            return result
        elapsed = time.perf_counter() - start
    worker.stop()
    result.update(
        {
            "jobs": jobs,
            "seconds": elapsed,
            "rate": rate(jobs, elapsed),
            "stall_ms": monitor.max_gap_ms,
            "rss_mb": rss_mb(),
            "peak_rss_mb": peak_rss_mb(),
            "rss_growth_mb": rss_mb() - base_rss,
            "queued": db.count_jobs(queue=QUEUE, status="ready"),
        }
    )
    db.close()
    return result


def produce(path: str, count: int, interval: float) -> None:
    """Producer subprocess: add *count* jobs stamped with ``time.time()``."""
    db = workmatic.create_database(path)
    client = workmatic.create_client(db, QUEUE)
    for n in range(count):
        client.add({"i": n, "email": f"user{n}@example.com", "stamp": time.time()})
        gevent.sleep(interval)
    db.close()


def _run_latency(path: str, durability: str, jobs: int, options: dict[str, Any]) -> Result:
    """Pickup latency: ``add()`` (stamp) to handler start, same or other process."""
    db = workmatic.create_database(path, durability=durability)
    client = workmatic.create_client(db, QUEUE)
    interval = float(options.get("interval", 0.002))
    samples: list[float] = []
    done = Countdown(jobs)

    def handler(job: Any) -> None:
        samples.append(time.time() - job.payload["stamp"])
        done.hit()

    worker = _worker(db, int(options.get("concurrency", 4)), handler)
    worker.start()
    gevent.sleep(0.05)
    proc: subprocess.Popen[bytes] | None = None
    with HubMonitor() as monitor:
        monitor.start()
        if options.get("remote"):
            proc = subprocess.Popen(
                [
                    sys.executable,
                    str(PERF_DIR / "bench.py"),
                    "--produce",
                    path,
                    "--jobs",
                    str(jobs),
                    "--interval",
                    str(interval),
                ],
                env=dict(os.environ),
            )
        else:

            def producer() -> None:
                for n in range(jobs):
                    client.add({"i": n, "email": f"user{n}@example.com", "stamp": time.time()})
                    gevent.sleep(interval)

            gevent.spawn(producer)
        done.event.wait(120)
    if proc is not None:
        while proc.poll() is None:
            gevent.sleep(0.01)
    worker.stop()
    result = describe(db)
    result.update(
        {
            "jobs": len(samples),
            "p50_ms": percentile(samples, 50) * 1000,
            "p99_ms": percentile(samples, 99) * 1000,
            "max_ms": max(samples, default=0.0) * 1000,
            "stall_ms": monitor.max_gap_ms,
        }
    )
    if len(samples) < jobs:
        result["error"] = f"only {len(samples)} of {jobs} jobs were picked up"
    db.close()
    return result
