"""The worker: claims jobs of one queue and runs them in a gevent pool.

How a worker runs (all in the hub of the thread that called :meth:`Worker.start`):

* The *pump* greenlet fills free slots: it peeks (a read, no lock) and, when there is due
  work, claims at most as many jobs as there are free slots. It never claims ahead.
* Each claimed job runs in a greenlet of a ``gevent.pool.Pool`` of ``concurrency``. When
  the handler returns, that greenlet records the outcome *and* claims the queue's next job
  in the same transaction, then runs it; slots that finish together share that
  transaction, a *round* (``_rounds.py``, whose methods ``Worker`` inherits).
* The *renewer* greenlet extends the leases of running jobs every third of the lease.
* Every outcome is fenced by the claim's token: a worker that lost its lease cannot
  overwrite what the job's current holder wrote.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import traceback
from collections.abc import Callable
from datetime import timedelta
from time import perf_counter
from typing import Any, TypeVar

import gevent
import gevent.event
import gevent.pool
import marshmallow
from marshmallow import Schema

from . import _sql
from ._rounds import _Finishing, _Round
from ._slots import _Running, _StopRequested
from .database import Database
from .exceptions import (
    DatabaseClosedError,
    DatabaseError,
    PermanentError,
    ValidationError,
    WorkmaticError,
)
from .job import BrokenPayload, Job, JobStats, now_ms
from .schemas import MAX_DELAY_SECONDS, dump_result, validate_worker_options

__all__ = ["Worker", "create_worker"]

log = logging.getLogger(__name__)

Handler = Callable[[Job], Any]
H = TypeVar("H", bound=Handler)

#: Longest ``last_error`` stored (characters).
MAX_ERROR_LENGTH = 8000

_ids = itertools.count(1)


def _error_text(exc: BaseException, with_traceback: bool = True) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if with_traceback and exc.__traceback__ is not None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        text = f"{text}\n\n{tb}"
    if len(text) > MAX_ERROR_LENGTH:
        text = text[: MAX_ERROR_LENGTH - 15] + "\n… (truncated)"
    return text.encode("utf-8", "replace").decode("utf-8")


class Worker(_Finishing):
    """Runs the jobs of one queue with a handler. Create it with :func:`create_worker`."""

    def __init__(
        self,
        db: Database,
        queue: str = "default",
        *,
        concurrency: int = 1,
        lease: float | timedelta = 30,
        poll_interval: float | timedelta = 1.0,
        timeout: float | timedelta | None = None,
        backoff: Callable[[int], float] | None = None,
        schema: Schema | None = None,
        handler: Handler | None = None,
        **unknown: Any,
    ) -> None:
        self._is_running = False
        if not isinstance(db, Database):
            raise ValidationError({"db": ["Must be a workmatic Database."]})
        options = validate_worker_options(
            {
                "queue": queue,
                "concurrency": concurrency,
                "lease": lease,
                "poll_interval": poll_interval,
                "timeout": timeout,
                "backoff": backoff,
                **unknown,
            }
        )
        if schema is not None and not isinstance(schema, Schema):
            raise ValidationError({"schema": ["Must be a marshmallow Schema instance."]})
        if handler is not None and not callable(handler):
            raise ValidationError({"handler": ["Must be callable."]})
        self.db = db
        self.queue: str = options["queue"]
        self.concurrency: int = options["concurrency"]
        self.lease: float = options["lease"]
        self.poll_interval: float = options["poll_interval"]
        self.timeout: float | None = options["timeout"]
        self.backoff: Callable[[int], float] | None = options["backoff"]
        self.schema = schema
        self.id = f"{self.queue}#{next(_ids)}"
        self._handler: Handler | None = handler
        self._lease_ms = max(1, round(self.lease * 1000))
        self._running: dict[int, _Running] = {}
        self._round: _Round | None = None  # the round of finished jobs slots may join
        self._job_took = math.inf  # a job's share of the last round's statements (s)
        self._pool = gevent.pool.Pool(self.concurrency)
        self._wake = gevent.event.Event()
        self._stopped = gevent.event.Event()
        self._stopped.set()
        self._stopping = False
        self._giving_up = False  # stop()'s timeout passed: slots stop retrying their writes
        self._paused = False
        self._pump: gevent.Greenlet | None = None
        self._renewer: gevent.Greenlet | None = None
        self._subscription: int | None = None
        self.processed = 0  # jobs this worker recorded done
        self.failed = 0  # runs that failed: their jobs to be retried, dead, or failed for good

    def __repr__(self) -> str:
        state = "running" if self._is_running else "stopped"
        return f"<workmatic.Worker {self.id} {state} concurrency={self.concurrency}>"

    # --- configuration -------------------------------------------------------------------

    def process(self, fn: H) -> H:
        """Set the handler ``fn(job) -> result``; usable as a decorator.

        The handler runs in a greenlet; its return value (JSON-serialisable) is stored as
        the job's ``result``. Raise :class:`PermanentError` to fail without retrying.
        """
        if not callable(fn):
            raise ValidationError({"handler": ["Must be callable."]})
        self._handler = fn
        return fn

    # --- state -----------------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        """Whether the worker was started and has not stopped."""
        return self._is_running

    @property
    def is_paused(self) -> bool:
        """Whether this worker is paused (see :meth:`pause`; the queue-wide pause is
        :attr:`Client.is_paused`)."""
        return self._paused

    @property
    def active(self) -> int:
        """How many jobs this worker holds right now."""
        return len(self._running)

    def stats(self) -> JobStats:
        """The queue's job counts by status."""
        return self.db.stats(self.queue)

    def info(self) -> dict[str, Any]:
        """This worker's state as a JSON-able dict (for dashboards)."""
        return {
            "id": self.id,
            "queue": self.queue,
            "concurrency": self.concurrency,
            "is_running": self._is_running,
            "is_paused": self._paused,
            "active": len(self._running),
            "processed": self.processed,
            "failed": self.failed,
        }

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start claiming and running jobs; returns at once. A no-op if already running.

        :raises WorkmaticError: no handler was set.
        """
        if self._is_running:
            return
        if self._handler is None:
            raise WorkmaticError("no handler: call worker.process(fn) before start()")
        self._stopping = False
        self._giving_up = False
        self._is_running = True
        self._stopped.clear()
        self._subscription = self.db._subscribe(self.queue, self._wake.set)
        self._pump = gevent.spawn(self._pump_loop)
        self._renewer = gevent.spawn(self._renew_loop)
        log.info("worker %s started (concurrency %d)", self.id, self.concurrency)

    def stop(self, timeout: float | timedelta | None = None) -> None:
        """Stop claiming, let running handlers finish, and return when all are done.

        :param timeout: wait at most this many seconds for running handlers; then they are
            interrupted and their jobs released to ``ready`` without counting an attempt.
            A slot that cannot record its job's outcome (the database keeps failing) stops
            retrying then: the job stays claimed until its lease expires, and runs again.
        """
        if not self._is_running:
            return
        if isinstance(timeout, timedelta):
            timeout = timeout.total_seconds()
        self._stopping = True
        self._wake.set()
        if self._pump is not None:
            self._pump.join()
        if timeout is None:
            self._pool.join()
        elif not self._pool.join(timeout=max(0.0, timeout)):
            self._giving_up = True
            for running in list(self._running.values()):
                if running.in_handler and running.greenlet is not None:
                    running.greenlet.kill(_StopRequested, block=False)
            if not self._pool.join(timeout=max(5.0, self.lease)):
                log.error("worker %s: handlers ignored the stop request", self.id)
        if self._renewer is not None:
            self._renewer.kill()
        if self._subscription is not None:
            self.db._unsubscribe(self._subscription)
            self._subscription = None
        self._is_running = False
        self._stopped.set()
        log.info(
            "worker %s stopped (%d processed, %d failed)", self.id, self.processed, self.failed
        )

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the worker is stopped. Returns False on timeout."""
        return bool(self._stopped.wait(timeout))

    def pause(self) -> None:
        """Pause this worker: no new job starts; running ones finish."""
        self._paused = True

    def resume(self) -> None:
        """Resume this worker."""
        self._paused = False
        self._wake.set()

    # --- the pump --------------------------------------------------------------------------

    def _pump_loop(self) -> None:
        errors = 0
        while not self._stopping:
            self._wake.clear()
            free = self.concurrency - len(self._running)
            if self._paused or free <= 0:
                self._wake.wait()
                continue
            try:
                waited = self._fill(free)
                errors = 0
            except DatabaseClosedError:
                log.error("worker %s: the database was closed; no more jobs start", self.id)
                while not self._stopping:  # idle until stop(): nothing can be claimed
                    self._wake.clear()
                    self._wake.wait()
                return
            except Exception as exc:
                errors += 1
                log.warning("worker %s: claim failed (%s); retrying", self.id, exc)
                self._wake.wait(min(self.poll_interval, 0.05 * 2 ** min(errors, 5)))
                continue
            if waited is not None:
                self._wake.wait(waited)

    def _fill(self, free: int) -> float | None:
        """Claim for free slots. Returns how long to wait for news, or None to go again."""
        now = now_ms()
        paused, has_due, next_delayed, expired = self.db._read(_sql.peek, self.queue, now)
        if paused:
            return self.poll_interval
        if not (has_due or expired or (next_delayed is not None and next_delayed <= now)):
            wait = self.poll_interval
            if next_delayed is not None:
                wait = min(wait, max(0.0, (next_delayed - now) / 1000))
            return wait
        rows = self.db._write(
            _sql.reap_and_claim, self.queue, free, now, now + self._lease_ms, expired
        )
        for row in rows:
            self._launch(row)
        return None if rows else self.poll_interval

    def _launch(self, row: tuple[Any, ...]) -> None:
        running = self._claimed(row)
        running.greenlet = self._pool.spawn(self._slot, running)

    # --- a slot ----------------------------------------------------------------------------

    def _slot(self, running: _Running | None) -> None:
        current = gevent.getcurrent()
        try:
            while running is not None:
                running.greenlet = current
                if self._stopping or self._paused:
                    outcome = self._outcome("release", running)
                else:
                    outcome = self._execute(running)
                running = self._finish(running, outcome)
        finally:
            if running is not None:
                # Ended by an exception (a stray timeout, say): its job is tracked no more,
                # never renewed; unless its outcome was written, it runs again once its
                # lease expires.
                self._untrack(running)
            self._wake.set()

    def _outcome(self, kind: str, running: _Running, *data: Any) -> _sql.Outcome:
        """An outcome for ``_sql.finish``: the kind, the claim (row and fencing token),
        now, the queue, then the kind's own data. (Inlined for ``done`` in
        :meth:`_execute`: keep them in step.)"""
        return (kind, running.rowid, running.token, now_ms(), self.queue, *data)

    def _execute(self, running: _Running) -> _sql.Outcome:
        job = running.job
        try:
            if isinstance(job.payload, BrokenPayload):
                return self._failed(running, "payload is not valid JSON (or nested too deeply)")
            if self.schema is not None:
                try:
                    job = dataclasses.replace(job, payload=self.schema.load(job.payload))
                except marshmallow.ValidationError as exc:
                    return self._failed(running, f"payload failed its schema: {exc.messages}")
            handler = self._handler
            assert handler is not None
            timer = gevent.Timeout(self.timeout) if self.timeout is not None else None
            running.in_handler = True
            running.entered = perf_counter()
            try:
                if timer is not None:
                    timer.start()
                result = handler(job)
            except gevent.Timeout as exc:
                if exc is not timer:
                    return self._failure(running, exc)
                return self._failure(
                    running, None, f"timed out after {self.timeout:g} s (gevent.Timeout)"
                )
            finally:
                running.in_handler = False
                if timer is not None:
                    timer.close()
            text = None
            if result is not None:
                try:
                    text = dump_result(result)
                except ValidationError as exc:
                    return self._failed(
                        running, f"result is not JSON-serialisable: {exc.messages['result'][0]}"
                    )
            # self._outcome("done", running, text), inlined: this runs for every job.
            return ("done", running.rowid, running.token, now_ms(), self.queue, text)
        except _StopRequested:
            return self._outcome("release", running)
        except gevent.GreenletExit:
            return self._outcome("release", running)
        except PermanentError as exc:
            return self._failed(running, _error_text(exc, with_traceback=False))
        except Exception as exc:
            return self._failure(running, exc)

    def _failed(self, running: _Running, error: str) -> _sql.Outcome:
        """A run that fails its job for good (no retry), counted in ``failed``."""
        self.failed += 1
        return self._outcome("failed", running, error)

    def _failure(
        self, running: _Running, exc: BaseException | None, text: str = ""
    ) -> _sql.Outcome:
        self.failed += 1
        job = running.job
        error = text or (_error_text(exc) if exc is not None else "")
        attempts = job.attempts + 1
        if attempts >= job.max_attempts:
            return self._outcome("dead", running, error)
        delay_ms = round(self._retry_delay(attempts) * 1000)
        return self._outcome("retry", running, error, now_ms() + delay_ms, int(delay_ms <= 0))

    def _retry_delay(self, attempts: int) -> float:
        if self.backoff is not None:
            try:
                value = float(self.backoff(attempts))
                if math.isfinite(value) and value >= 0:
                    return min(value, MAX_DELAY_SECONDS)
                log.warning("worker %s: backoff(%d) returned %r", self.id, attempts, value)
            except Exception:
                log.exception("worker %s: backoff(%d) raised; using 2 ** n", self.id, attempts)
        return float(min(2.0**attempts, MAX_DELAY_SECONDS))

    # --- leases ----------------------------------------------------------------------------

    def _renew_loop(self) -> None:
        interval = max(0.01, self.lease / 3)
        while True:
            gevent.sleep(interval)
            claims = {r.rowid: r for r in self._running.values() if not (r.lost or r.finishing)}
            if not claims:
                continue
            leases = [(r.rowid, r.token) for r in claims.values()]
            try:
                now = now_ms()
                lost = self.db._write(_sql.renew_and_reap, self.queue, leases, now, self._lease_ms)
            except DatabaseError as exc:
                log.warning("worker %s: lease renewal failed (%s); retrying", self.id, exc)
                continue
            for rowid in lost:
                running = self._running.get(rowid)
                # Only the claim renewed: while the renewal waited for the lock, its job
                # may have been recorded and claimed again (retried at once), a new claim.
                if running is claims[rowid] and not (running.lost or running.finishing):
                    running.lost = True
                    log.warning("worker %s: lost the lease of job %s", self.id, running.job.id)


def create_worker(
    db: Database,
    queue: str = "default",
    *,
    concurrency: int = 1,
    lease: float | timedelta = 30,
    poll_interval: float | timedelta = 1.0,
    timeout: float | timedelta | None = None,
    backoff: Callable[[int], float] | None = None,
    schema: Schema | None = None,
    handler: Handler | None = None,
    **unknown: Any,
) -> Worker:
    """Create a worker for ``queue``.

    :param concurrency: at most this many handlers at once (greenlets of a gevent Pool).
    :param lease: seconds a claim holds a job; renewed while the handler runs.
    :param poll_interval: seconds between looks at an idle queue (new jobs wake it sooner).
    :param timeout: seconds a handler may run before ``gevent.Timeout`` interrupts it
        (None: no limit). Code that never yields to gevent cannot be interrupted.
    :param backoff: ``backoff(n) -> seconds`` before retrying after the n-th failure
        (default ``2 ** n``).
    :param schema: a marshmallow ``Schema`` that loads each payload before the handler sees
        it; a payload that fails it marks the job ``failed``.
    :param handler: the handler (or set it later with :meth:`Worker.process`).
    :raises ValidationError: an option is invalid or unknown.

    Example::

        worker = workmatic.create_worker(db, queue="emails", concurrency=4)

        @worker.process
        def send(job):
            deliver(job.payload["to"])

        worker.start()
    """
    return Worker(
        db,
        queue,
        concurrency=concurrency,
        lease=lease,
        poll_interval=poll_interval,
        timeout=timeout,
        backoff=backoff,
        schema=schema,
        handler=handler,
        **unknown,
    )
