"""Basic: add jobs to a queue and process them with a worker.

Run: ``python examples/basic.py [--db jobs.db]``
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import gevent.event

import workmatic


def main(db_path: str) -> dict[str, int]:
    with workmatic.create_database(db_path) as db:
        client = workmatic.create_client(db, queue="emails")
        for name in ("ann", "bob", "cy"):
            job_id = client.add({"to": f"{name}@example.com", "subject": "Hello!"})
            print(f"job created: {job_id}")

        worker = workmatic.create_worker(db, queue="emails", concurrency=4)
        all_done = gevent.event.Event()

        @worker.process
        def send_email(job: workmatic.Job) -> dict[str, str]:
            print(f"sending email to {job.payload['to']} (attempt {job.attempts + 1})")
            gevent.sleep(0.01)  # stands for network I/O: other jobs run meanwhile
            if client.stats().ready == 0:
                all_done.set()
            return {"status": "sent"}

        worker.start()
        all_done.wait(timeout=10)
        worker.stop()  # waits for running jobs
        stats = client.stats().as_dict()
        print("stats:", stats)
        return stats


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", default=str(Path(tempfile.mkdtemp()) / "basic.db"))
    main(parser.parse_args().db)
