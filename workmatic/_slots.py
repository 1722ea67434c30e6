"""What a worker's slots share: the claim a slot runs (:class:`_Running`), what
``stop(timeout)`` throws into a handler that outlasts it (:class:`_StopRequested`), and
the waits that this does not cut short (a slot whose write is queued waits for it: the
write commits all the same)."""

from __future__ import annotations

from typing import Any

import gevent

from .job import Job


class _StopRequested(BaseException):
    """Thrown into a handler when ``stop(timeout)`` runs out: release the job."""


class _Running:
    __slots__ = (
        "entered", "finishing", "greenlet", "in_handler", "job", "lost", "rowid", "token"
    )  # fmt: skip

    def __init__(self, job: Job, rowid: int, token: int) -> None:
        self.job = job
        self.rowid = rowid
        self.token = token
        self.in_handler = False
        self.entered = 0.0  # when its handler was called (perf_counter)
        self.finishing = False
        self.lost = False
        self.greenlet: gevent.Greenlet | None = None


def _wait_shielded(request: Any) -> Any:
    """Wait for a write, even through a stop request thrown at this greenlet."""
    while True:
        try:
            return request.get()
        except _StopRequested:
            continue


def _sleep_shielded(seconds: float) -> None:
    try:
        gevent.sleep(seconds)
    except _StopRequested:
        pass
