"""Orchestrator: several queues with their own workers, steered together; moving jobs.

Run: ``python examples/orchestrator.py [--db jobs.db]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import gevent

import workmatic


def main(db_path: str) -> dict[str, dict[str, int]]:
    with workmatic.create_database(db_path) as db:
        orch = workmatic.create_orchestrator(db)
        orch.register("emails", concurrency=4)
        orch.register("thumbnails", concurrency=2, timeout=30)
        orch.register("retry-later", backoff=lambda n: 0.01)

        orch.process("emails", lambda job: f"sent to {job.payload['to']}")
        orch.process("thumbnails", lambda job: {"size": job.payload["size"]})

        def picky(job: workmatic.Job) -> None:
            raise workmatic.PermanentError("needs a human")

        orch.process("retry-later", picky)

        orch.client("emails").add_many([{"to": f"user{i}@example.com"} for i in range(20)])
        orch.client("thumbnails").add({"size": 128})
        stuck = orch.client("retry-later").add({"to": "someone@example.com"})

        orch.start_all()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stats = orch.stats()
            if stats["emails"].done == 20 and stats["retry-later"].failed == 1:
                break
            gevent.sleep(0.02)
        # The failed job goes to the emails queue, as a fresh job.
        moved = orch.transfer("retry-later", "emails", status="failed", reset=True)
        print(f"moved {moved} job(s); job {stuck} is now in", db.get_job(stuck).queue)  # type: ignore[union-attr]
        while orch.stats()["emails"].done < 21 and time.monotonic() < deadline:
            gevent.sleep(0.02)
        orch.stop_all()
        result = {queue: s.as_dict() for queue, s in orch.stats().items()}
        for queue, counts in result.items():
            print(f"{queue:>12}: {counts}")
        return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", default=str(Path(tempfile.mkdtemp()) / "orchestrator.db"))
    main(parser.parse_args().db)
