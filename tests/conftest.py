"""Shared fixtures: a fresh database per test, and a guard that fails any test leaving a
worker running or a greenlet alive."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

import workmatic


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    """A path for a fresh database file."""
    return str(tmp_path / "jobs.db")


@pytest.fixture
def db(db_path: str) -> Iterator[workmatic.Database]:
    """A fresh file database (WAL, NORMAL), closed after the test."""
    database = workmatic.create_database(db_path)
    yield database
    database.close()


@pytest.fixture
def memdb() -> Iterator[workmatic.Database]:
    """A fresh in-memory database."""
    database = workmatic.create_database(":memory:")
    yield database
    database.close()


def _live_workers() -> list[workmatic.Worker]:
    return [o for o in gc.get_objects() if isinstance(o, workmatic.Worker) and o.is_running]


@pytest.fixture(autouse=True)
def _no_leftover_workers() -> Iterator[None]:
    """Fail a test that leaves a worker running (and stop it, so others are unaffected)."""
    yield
    left = _live_workers()
    for worker in left:
        worker.stop(timeout=1)
    assert not left, f"test left workers running: {left}"
