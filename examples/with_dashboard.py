"""Workers plus the dashboard on one database file: the quickest way to see Workmatic work.

Run it, open the URL it prints, and watch jobs flow (some fail and end ``dead`` or
``failed``, so there is something to retry)::

    python examples/with_dashboard.py [--db jobs.db] [--port 3000] [--host 127.0.0.1]

It runs until SIGINT (Ctrl-C) or SIGTERM, or for ``--duration`` seconds, then stops
gracefully: no new jobs, running jobs finish, the server closes. Everything here is
gevent-native, so the process needs no monkey-patching.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import sys
from typing import Any

import gevent
import gevent.event

import workmatic

log = logging.getLogger("with_dashboard")


def send_email(job: workmatic.Job) -> dict[str, Any]:
    """A flaky handler: slow sometimes, failing one time in five (retried, maybe dead)."""
    gevent.sleep(random.uniform(0.05, 0.8))
    if random.random() < 0.2:
        raise ConnectionError(f"SMTP server refused {job.payload['to']}: 421 try again later")
    return {"delivered": job.payload["to"]}


def build_report(job: workmatic.Job) -> dict[str, Any]:
    """A handler with a permanent failure for unknown report kinds (``failed``, no retry)."""
    gevent.sleep(random.uniform(0.2, 1.5))
    if job.payload["kind"] == "legacy":
        raise workmatic.PermanentError("the legacy report was removed in v2")
    return {"rows": random.randint(10, 5000)}


def enqueue_demo_jobs(db: workmatic.Database, stop: gevent.event.Event, interval: float) -> None:
    """Add a few jobs every ``interval`` seconds until ``stop`` is set."""
    emails = workmatic.create_client(db, "emails")
    reports = workmatic.create_client(db, "reports")
    n = 0
    while not stop.is_set():
        n += 1
        emails.add_many(
            [{"to": f"user{n}-{i}@example.com", "template": "welcome"} for i in range(3)],
            max_attempts=2,
        )
        kind = random.choice(["daily", "weekly", "legacy"])
        reports.add({"kind": kind, "n": n}, priority=random.randint(0, 3))
        stop.wait(interval)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line (``None``: ``sys.argv``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="jobs.db", help="database file (default: jobs.db)")
    parser.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=3000, help="port; 0 picks one (default 3000)")
    parser.add_argument(
        "--duration", type=float, default=0, help="stop after this many seconds (0: never)"
    )
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between demo batches (default 1)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run workers, the producer and the dashboard until a signal or ``--duration``."""
    options = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGINT, stop.set)
    gevent.signal_handler(signal.SIGTERM, stop.set)

    with workmatic.create_database(options.db) as db:
        # Quick retries so that dead jobs show up within seconds.
        emails = workmatic.create_worker(db, "emails", concurrency=4, backoff=lambda n: 1.0)
        emails.process(send_email)
        reports = workmatic.create_worker(db, "reports", concurrency=2)
        reports.process(build_report)
        workers = [emails, reports]
        for worker in workers:
            worker.start()

        dash = workmatic.create_dashboard(db, host=options.host, port=options.port, workers=workers)
        print(f"Workmatic dashboard: {dash.url}  (database: {options.db})", flush=True)

        producer = gevent.spawn(enqueue_demo_jobs, db, stop, options.interval)
        stop.wait(options.duration or None)
        stop.set()

        log.info("stopping: waiting for running jobs")
        producer.join()
        for worker in workers:
            worker.stop(timeout=10)
        dash.close()
        print(f"stopped; jobs by status: {db.stats().as_dict()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
