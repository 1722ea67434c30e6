"""The same work through Huey's ``SqliteHuey`` (greenlet consumer), for comparison.

Huey is driven exactly as its users run it: tasks are enqueued by calling the task
function, and a ``huey.consumer.Consumer`` with ``worker_type="greenlet"`` runs them
(in this process, which is monkey-patched by ``bench.py``). Only two things are
adjusted, both documented in the report:

* ``synchronous``: Huey's default is SQLite's default in WAL mode (FULL); the
  NORMAL variant sets ``PRAGMA synchronous=NORMAL`` on its connection.
* the consumer's idle polling starts at 10 ms instead of 100 ms (in Huey's favour
  for the mixed row, where the queue runs dry now and then).

``:memory:`` works only if the schema is created on the connection that stays open,
so the in-memory storage skips Huey's close-after-DDL.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import gevent
from _common import Countdown, HubMonitor, Result, payloads, rate
from huey import SqliteHuey
from huey.storage import SqliteStorage

CONSUMER_OPTIONS: dict[str, Any] = {
    "worker_type": "greenlet",
    "periodic": False,
    "check_worker_health": False,
    "initial_delay": 0.01,
    "backoff": 1.15,
    "max_delay": 1.0,
}


class _BenchStorage(SqliteStorage):  # type: ignore[misc]
    """SqliteStorage with an optional ``synchronous`` pragma and :memory: support."""

    synchronous: str | None = None

    def _create_connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection = super()._create_connection()
        if self.synchronous is not None:
            conn.execute(f"pragma synchronous={self.synchronous}")
        return conn

    def initialize_schema(self) -> None:
        # Huey closes the connection after the DDL, which would drop a :memory: db.
        with self.db(commit=True) as curs:
            for sql in self.ddl:
                curs.execute(sql)


def make_huey(path: str, durability: str) -> Any:
    """Return a SqliteHuey on *path* with Huey's default (FULL) or NORMAL sync."""
    storage = type(
        "BenchStorage",
        (_BenchStorage,),
        {"synchronous": "NORMAL" if durability == "normal" else None},
    )
    return SqliteHuey("bench", filename=path, storage_class=storage)


def describe(huey: Any) -> dict[str, Any]:
    """Return Huey's effective SQLite settings."""
    conn = huey.storage.conn
    sync = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    return {
        "huey_sqlite_version": sqlite3.sqlite_version,
        "huey_driver": "sqlite3",
        "huey_journal_mode": conn.execute("pragma journal_mode").fetchone()[0],
        "huey_synchronous": sync.get(conn.execute("pragma synchronous").fetchone()[0], "?"),
    }


def run(case: str, path: str, durability: str, jobs: int, options: dict[str, Any]) -> Result:
    """Run one benchmark *case* through Huey and return its measurement."""
    huey = make_huey(path, durability)
    done = Countdown(jobs)
    sleep_for = float(options.get("sleep", 0.0))

    @huey.task()  # type: ignore[untyped-decorator]
    def job(i: int, email: str) -> None:
        if sleep_for:
            gevent.sleep(sleep_for)
        done.hit()

    items = payloads(jobs)
    result: Result = describe(huey)
    concurrency = int(options.get("concurrency", 1))

    def consume() -> Any:
        consumer = huey.create_consumer(workers=concurrency, **CONSUMER_OPTIONS)
        consumer.start()
        return consumer

    with HubMonitor() as monitor:
        if case in ("seq_add", "add_many"):
            monitor.start()
            start = time.perf_counter()
            if case == "seq_add":
                for item in items:
                    job(**item)
            else:  # no bulk insert in Huey: task.map() enqueues one by one
                job.map([((), item) for item in items])
            elapsed = time.perf_counter() - start
        elif case == "par_add":
            per = jobs // 100
            chunks = [items[k * per : (k + 1) * per] for k in range(100)]

            def producer(chunk: list[dict[str, Any]]) -> None:
                for item in chunk:
                    job(**item)

            monitor.start()
            start = time.perf_counter()
            gevent.joinall([gevent.spawn(producer, chunk) for chunk in chunks])
            elapsed = time.perf_counter() - start
        elif case == "process":
            for item in items:
                job(**item)
            monitor.start()
            start = time.perf_counter()
            consumer = consume()
            done.event.wait(600)
            elapsed = time.perf_counter() - start
            consumer.stop(graceful=True)
        elif case == "mixed":
            producers = int(options.get("producers", 4))
            per = jobs // producers

            def add_some(base: int) -> None:
                for item in items[base : base + per]:
                    job(**item)
                    gevent.sleep(0)

            monitor.start()
            start = time.perf_counter()
            consumer = consume()
            gevent.joinall([gevent.spawn(add_some, k * per) for k in range(producers)])
            done.event.wait(600)
            elapsed = time.perf_counter() - start
            consumer.stop(graceful=True)
        else:
            raise SystemExit(f"huey: unknown case {case!r}")
    result.update(
        {
            "jobs": jobs,
            "seconds": elapsed,
            "rate": rate(jobs, elapsed),
            "stall_ms": monitor.max_gap_ms,
        }
    )
    if case in ("process", "mixed") and done.count < jobs:
        result["error"] = f"only {done.count} of {jobs} jobs ran"
    return result
