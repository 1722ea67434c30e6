"""Advanced: priorities, delays, retries with backoff, results and a payload schema.

Run: ``python examples/advanced.py [--db jobs.db]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from marshmallow import Schema, fields

import workmatic


class Report(Schema):
    """Payloads of the reports queue: loaded (and validated) before the handler runs."""

    name = fields.String(required=True)
    rows = fields.Integer(required=True)
    flaky = fields.Boolean(load_default=False)


def main(db_path: str) -> list[dict[str, Any]]:
    with workmatic.create_database(db_path) as db:
        client = workmatic.create_client(db, queue="reports", schema=Report())
        ids = [
            client.add({"name": "low", "rows": 10}, priority=10),
            client.add({"name": "urgent", "rows": 5}, priority=-10),
            client.add({"name": "later", "rows": 1}, delay=2),
            client.add({"name": "flaky", "rows": 3, "flaky": True}, max_attempts=3),
            client.add({"name": "doomed", "rows": 1, "flaky": True}, max_attempts=2),
        ]
        try:
            client.add({"name": "no rows"})
        except workmatic.ValidationError as exc:
            print("refused:", exc.messages)

        order: list[str] = []
        worker = workmatic.create_worker(
            db, queue="reports", schema=Report(), backoff=lambda n: 0.05 * n, timeout=5
        )

        @worker.process
        def build(job: workmatic.Job) -> dict[str, Any]:
            order.append(job.payload["name"])
            if job.payload["flaky"] and (job.payload["name"] == "doomed" or job.attempts < 1):
                raise RuntimeError(f"{job.payload['name']}: transient failure")
            return {"report": job.payload["name"], "rows": job.payload["rows"]}

        worker.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stats = client.stats()
            if stats.done + stats.dead == len(ids):
                break
            gevent_sleep(0.02)
        worker.stop()
        print("run order:", order)
        jobs = [client.get(i) for i in ids]
        for job in jobs:
            assert job is not None
            print(
                f"{job.payload['name']:>7}: {job.status:5} attempts={job.attempts}"
                f" result={job.result} error={(job.last_error or '').splitlines()[:1]}"
            )
        return [j.as_dict() for j in jobs if j is not None]


def gevent_sleep(seconds: float) -> None:
    import gevent

    gevent.sleep(seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", default=str(Path(tempfile.mkdtemp()) / "advanced.db"))
    main(parser.parse_args().db)
