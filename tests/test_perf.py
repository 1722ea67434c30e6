"""The benchmark and soak scripts run on a tiny size and print their tables.

No timed assertions: figures from a shared CI machine mean nothing. Each script runs
as a subprocess (both monkey-patch their own process with gevent).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PERF = ROOT / "perf"

pytestmark = pytest.mark.slow


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    # The scripts import the installed workmatic (tox: the wheel), else the checkout's.
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_bench_quick_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = _run([str(PERF / "bench.py"), "--quick", "--json", str(out)], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    for needle in (
        "File DB (jobs/s)",
        ":memory: (jobs/s)",
        "Sequential insert",
        "Parallel insert",
        "Process (concurrency=16)",
        "Mixed insert+process",
        "Claim + process batch",
        "add_many",
        "I/O-bound",
        "Huey",
        "floor",
        "Pickup latency",
        "Large queue",
        "SQLite",
        "Target (",
    ):
        assert needle in text, needle
    assert out.exists()


def test_soak_runs_briefly_and_reports() -> None:
    proc = _run([str(PERF / "soak.py"), "--seconds", "5", "--rate", "500"], timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "soak summary" in proc.stdout
    assert "WAL MiB" in proc.stdout
    assert "PASS" in proc.stdout
