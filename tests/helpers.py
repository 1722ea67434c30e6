"""Helpers shared by the tests (import as ``from helpers import ...``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent

SCRIPTS = Path(__file__).resolve().parent / "scripts"


def wait_for(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.01
) -> None:
    """Poll ``predicate`` cooperatively until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        gevent.sleep(interval)


def script(name: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    """Start ``tests/scripts/<name>.py`` as a real subprocess (it may monkey-patch)."""
    env = dict(os.environ)
    return subprocess.Popen(
        [sys.executable, str(SCRIPTS / f"{name}.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,  # type: ignore[call-overload]
    )


def edit(db: Any, sql: str, *params: object) -> None:
    """Change jobs behind workmatic's back (to set up a scenario), then rebuild the counts."""
    from workmatic import _sql

    def run(conn: Any) -> None:
        conn.execute(sql, params)
        _sql.recount(conn)

    db._write(run)


def edit_job(db: Any, job_id: str, assignments: str) -> None:
    """``UPDATE jobs SET <assignments>`` for one job, behind workmatic's back."""
    from workmatic import _sql

    def run(conn: Any) -> None:
        found = _sql.locate(conn, job_id)
        assert found is not None, job_id
        conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (found[0],))
        _sql.recount(conn)

    db._write(run)
