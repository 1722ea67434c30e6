"""Helpers for the CLI and runner tests: run the programs as real subprocesses, seed
databases through the public API, and wait on conditions with a deadline."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import gevent

import workmatic
from workmatic.schemas import CsvRowSchema

T = TypeVar("T")

#: The directory holding the ``workmatic`` package under test (a checkout or site-packages).
PACKAGE_ROOT = str(Path(workmatic.__file__).resolve().parent.parent)


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: ``workmatic`` importable, no WORKMATIC_* leaks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKMATIC_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(
    *args: object,
    input: str | bytes | None = None,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m workmatic.cli ARGS`` and return the finished process (text output)."""
    data = input.decode("utf-8") if isinstance(input, bytes) else input
    return subprocess.run(
        [sys.executable, "-m", "workmatic.cli", *map(str, args)],
        input=data,
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=cwd,
        env=dict(env) if env is not None else child_env(),
        timeout=timeout,
    )


def run_cli_bytes(
    *args: object, input: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    """Like :func:`run_cli`, with bytes in and out (for exact CSV comparisons)."""
    return subprocess.run(
        [sys.executable, "-m", "workmatic.cli", *map(str, args)],
        input=input,
        capture_output=True,
        env=child_env(),
        timeout=timeout,
    )


def wait_for(
    condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    """Poll ``condition`` every ``interval`` seconds until it returns a truthy value.

    :returns: that value.
    :raises AssertionError: ``timeout`` seconds passed first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        gevent.sleep(interval)  # cooperative: in-process workers keep running


def make_db(path: Path) -> Path:
    """Create an empty workmatic database file."""
    workmatic.create_database(str(path)).close()
    return path


def seed(path: Path, rows: Iterable[Mapping[str, Any]], queue: str = "default") -> None:
    """Insert jobs of any status through the public import API.

    Each row is a CSV-like mapping (``payload`` as JSON text, other columns optional, values
    as text or ints; give ``public_id`` to know a job's id).
    """
    schema = CsvRowSchema(default_queue=queue)
    records = [schema.load(dict(row)) for row in rows]
    with workmatic.create_database(str(path)) as db:
        db.import_jobs(records)


def one_line_error(stderr: str) -> str:
    """Assert that ``stderr`` is exactly one line and no traceback; return it."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]
