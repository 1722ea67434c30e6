"""The core examples run, as a user would run them, and do what they say."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import workmatic

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, db_path: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--db", db_path],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_basic_example(db_path: str) -> None:
    out = run_example("basic.py", db_path)
    assert out.count("job created:") == 3
    with workmatic.create_database(db_path, create=False) as db:
        assert db.stats("emails").done == 3
        assert {j.result["status"] for j in db.list_jobs(queue="emails")} == {"sent"}


def test_advanced_example(db_path: str) -> None:
    out = run_example("advanced.py", db_path)
    assert "refused:" in out and "rows" in out
    order_line = next(line for line in out.splitlines() if line.startswith("run order:"))
    order = json.loads(order_line.split(":", 1)[1].strip().replace("'", '"'))
    assert order[0] == "urgent" and order.index("later") > order.index("low")
    with workmatic.create_database(db_path, create=False) as db:
        jobs = {j.payload["name"]: j for j in db.list_jobs(queue="reports")}
    assert jobs["flaky"].status == "done" and jobs["flaky"].attempts == 1
    assert jobs["doomed"].status == "dead" and jobs["doomed"].attempts == 2
    assert jobs["urgent"].result == {"report": "urgent", "rows": 5}


def test_orchestrator_example(db_path: str) -> None:
    out = run_example("orchestrator.py", db_path)
    assert "moved 1 job(s)" in out
    with workmatic.create_database(db_path, create=False) as db:
        assert db.stats("emails").done == 21
        assert db.stats("thumbnails").done == 1
        assert db.stats("retry-later").total == 0
