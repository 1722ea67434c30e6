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


class LockHolder:
    """Another process holding a database's write lock (``BEGIN IMMEDIATE``) until
    :meth:`release` (or the end of its ``with`` block): the test decides how long."""

    def __init__(self, db_path: str) -> None:
        self.proc = script("lock_holder", db_path, stdin=subprocess.PIPE)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        line = self.proc.stdout.readline().strip()
        if line != "locked":  # pragma: no cover - reported
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"the lock holder did not start: {line!r} {err}")

    def release(self) -> None:
        """Release the lock (commit) and wait until the holder has ended."""
        if self.proc.poll() is not None:
            return
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("release\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "released"
        self.proc.communicate(timeout=30)

    def __enter__(self) -> LockHolder:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.release()
        finally:
            if self.proc.poll() is None:  # pragma: no cover - release failed
                self.proc.kill()
                self.proc.communicate()
