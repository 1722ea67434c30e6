"""The worker: claims jobs of one queue and runs them in a gevent pool.

How a worker runs (all in the hub of the thread that called :meth:`Worker.start`):

* The *pump* greenlet fills free slots: it peeks (a read, no lock) and, when there is due
  work, claims at most as many jobs as there are free slots. It never claims ahead.
* Each claimed job runs in a greenlet of a ``gevent.pool.Pool`` of ``concurrency``. When
  the handler returns, that greenlet records the outcome *and* claims the queue's next job
  in the same transaction, then runs it. Slots that finish together share that
  transaction: the first leads a *round* (:class:`_Round`), the others join it until its
  transaction starts, and the leader's one request to the writer records every outcome
  and claims a job for each slot, handed to each as the writer delivers it. (A request
  for each slot, group-committed by the writer, cost ~2.3 µs more a job at concurrency
  16: its request, its leader checks, its wait, its share of a generic batch.) At
  concurrency 1 a slot writes alone.
* The *renewer* greenlet extends the leases of running jobs every third of the lease.
* Every outcome is fenced by the claim's token: a worker that lost its lease cannot
  overwrite what the job's current holder wrote.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import gevent
import gevent.event
import gevent.pool
import marshmallow
from marshmallow import Schema

from . import _sql
from ._writer import NOT_RUN, Pending, Request
from .database import Database, claimed_job
from .exceptions import (
    DatabaseClosedError,
    DatabaseError,
    DatabaseLockedError,
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


class _StopRequested(BaseException):
    """Thrown into a handler when ``stop(timeout)`` runs out: release the job."""


class _Running:
    __slots__ = ("finishing", "greenlet", "in_handler", "job", "lost", "rowid", "token")

    def __init__(self, job: Job, rowid: int, token: int) -> None:
        self.job = job
        self.rowid = rowid
        self.token = token
        self.in_handler = False
        self.finishing = False
        self.lost = False
        self.greenlet: gevent.Greenlet | None = None


#: What a slot that joined a round is handed when the round's transaction failed as a
#: whole (not for a lock): it records its own job in a write of its own, so that one
#: outcome the database refuses fails no other (as the writer runs each request of a
#: failed batch again alone).
_ALONE: Any = object()


class _Turn(Pending):
    """A slot that joined a round: its finished job (the claim and its outcome), and its
    wait for its next job, which the round's leader hands over (``set()``; the slot waits
    in ``get()``). One object a job: a Pending of its own cost ~0.2 µs more."""

    __slots__ = ("gone", "outcome", "running")

    def __init__(self, running: _Running, outcome: _sql.Outcome) -> None:
        Pending.__init__(self)
        self.running = running
        self.outcome = outcome
        self.gone = False  # the slot ended while it waited: track no job for it


class _Round:
    """The finished jobs of a worker's slots that one transaction records: the leader's
    (the first slot to finish), then those of the slots that joined while it was open
    (until its transaction starts)."""

    __slots__ = ("handed_out", "joined", "open", "outcome", "running")

    def __init__(self, running: _Running, outcome: _sql.Outcome) -> None:
        self.running = running
        self.outcome = outcome
        self.joined: list[_Turn] = []
        self.open = True
        self.handed_out = False  # the joined slots have their next jobs

    def close(self, worker: Worker) -> None:
        """No slot joins from now on; a slot that finishes later starts the next round."""
        self.open = False
        if worker._round is self:
            worker._round = None

    def jobs(self) -> list[_Running]:
        """The claims the round records: the leader's first."""
        return [self.running, *(turn.running for turn in self.joined)]


class _RoundWrite(Request):
    """A round's request to the writer. As the writer delivers it, the slots that joined
    the round get their next jobs at once, as each would with a request of its own (not
    one hop later, once the leader has run again: slots woken later miss the jobs that
    the next transaction adds and claims in one)."""

    __slots__ = ("round", "worker")

    def __init__(self, worker: Worker, round_: _Round) -> None:
        deadline = time.monotonic() + worker.db.lock_timeout
        super().__init__(_record_round, (worker, round_), deadline, False, False)
        self.worker = worker
        self.round = round_

    def set(self, ok: bool, value: Any) -> None:
        if ok:
            self.worker._hand_out(self.round, value)
        super().set(ok, value)


def _record_round(
    conn: Any, worker: Worker, round_: _Round
) -> tuple[list[bool], list[tuple[Any, ...]]]:
    """A round's transaction: record each outcome (fenced by its claim's token; whether it
    was still held, in order) and claim a next job for each slot (the leader's first).
    Closed as it starts, the round keeps its slots if the writer runs it again (alone,
    after a batch it shared failed)."""
    round_.close(worker)
    outcomes = [round_.outcome, *[turn.outcome for turn in round_.joined]]
    held = _sql.finish_many(conn, outcomes)
    if worker._stopping or worker._paused:
        return held, []
    now = now_ms()
    return held, _sql.claim(conn, worker.queue, len(outcomes), now, now + worker._lease_ms)


def _error_text(exc: BaseException, with_traceback: bool = True) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if with_traceback and exc.__traceback__ is not None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        text = f"{text}\n\n{tb}"
    if len(text) > MAX_ERROR_LENGTH:
        text = text[: MAX_ERROR_LENGTH - 15] + "\n… (truncated)"
    return text.encode("utf-8", "replace").decode("utf-8")


class Worker:
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

    def _claimed(self, row: tuple[Any, ...]) -> _Running:
        """Track a job this worker just claimed (``row``: ``_sql.JOB_COLUMNS``)."""
        running = _Running(claimed_job(row), row[0], row[15])
        self._running[running.rowid] = running
        return running

    def _untrack(self, running: _Running) -> None:
        """Stop tracking a claim, and only that claim: its job may have been claimed again
        already (a retry without delay, or a release, in the same round), for another
        slot, under the same rowid."""
        if self._running.get(running.rowid) is running:
            del self._running[running.rowid]

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

    def _finish(self, running: _Running, outcome: _sql.Outcome) -> _Running | None:
        """Record the outcome and claim this slot's next job (None: no job for it).

        At concurrency 1, in a transaction of its own. Otherwise in one with the outcomes
        of the other slots that finish meanwhile: the first slot to finish leads a round,
        the others join it until its transaction starts, and it hands each of them its
        next job (one request to the writer a round, not one a job)."""
        running.finishing = True  # the renewer leaves it alone from now on
        if self.concurrency == 1:
            return self._finish_alone(running, outcome)
        round_ = self._round
        if round_ is not None and round_.open:
            return self._join(round_, running, outcome)
        round_ = self._round = _Round(running, outcome)
        try:
            results = self._record(_record_round, (self, round_), round_)
            if results is NOT_RUN:  # given up (logged): the jobs stay claimed
                for job in round_.jobs():
                    self._untrack(job)
                return None
            if results is _ALONE:  # the round failed whole: each slot records its own job
                round_.handed_out = True
                for turn in round_.joined:
                    turn.set(True, _ALONE)
                return self._finish_alone(running, outcome)
            self._hand_out(round_, results)  # if it ran alone (else _RoundWrite did)
            held, rows = results
            return self._settle(running, outcome[0], held[0], rows[0] if rows else None)
        finally:
            # Whatever happened (this greenlet killed, say), no slot joins the round from
            # now on and none of it is left waiting: those not handed a job yet get none.
            # Should the write still commit (it was queued), the jobs it claims are left
            # untracked, never renewed: they run again once their leases expire.
            round_.close(self)
            if not round_.handed_out:
                round_.handed_out = True
                self._release_slots(round_)

    def _join(self, round_: _Round, running: _Running, outcome: _sql.Outcome) -> _Running | None:
        """Join an open round and wait for the leader to hand over this slot's next job."""
        turn = _Turn(running, outcome)
        round_.joined.append(turn)
        try:
            while True:  # _wait_shielded(turn), inlined: this runs for most jobs
                try:
                    following = turn.get()
                    break
                except _StopRequested:
                    continue
        except BaseException:
            # This slot ends (killed while waiting): a job claimed for it is not tracked,
            # so it is never renewed, and runs again once its lease expires.
            turn.gone = True
            if isinstance(turn.value, _Running):
                self._untrack(turn.value)
            raise
        if following is _ALONE:
            return self._finish_alone(running, outcome)
        return following  # type: ignore[no-any-return]

    def _finish_alone(self, running: _Running, outcome: _sql.Outcome) -> _Running | None:
        """Record one outcome and claim this slot's next job in a write of its own."""
        now = now_ms()  # not the outcome's: after a round failed, that may be long past
        want = 0 if (self._stopping or self._paused) else 1
        args = (outcome, self.queue, want, now, now + self._lease_ms)
        value = self._record(_sql.finish_and_claim, args, running)
        if value is NOT_RUN:  # given up (logged): the job stays claimed
            self._untrack(running)
            return None
        held, rows = value
        return self._settle(running, outcome[0], held, rows[0] if rows else None)

    def _hand_out(self, round_: _Round, results: tuple[list[bool], list[tuple[Any, ...]]]) -> None:
        """Settle the jobs of the slots that joined a recorded round and wake each slot
        with its next job (once: not after the leader gave up on them). On a bug it logs
        and the slots not handed a job yet get none; so they do too when this greenlet is
        killed meanwhile (a log handler may yield), and the kill goes on. No slot is left
        waiting."""
        if round_.handed_out:
            return
        round_.handed_out = True
        held, rows = results
        claimed = len(rows)
        tracked = self._running
        try:
            # _settle() for each slot, inlined (this runs for every job of a round).
            for index, turn in enumerate(round_.joined, 1):
                running = turn.running
                if tracked.get(running.rowid) is running:
                    del tracked[running.rowid]
                if not held[index]:
                    self._lost_outcome(running, turn.outcome[0])
                elif turn.outcome[0] == "done":
                    self.processed += 1
                following = None
                if index < claimed and not turn.gone:
                    row = rows[index]
                    following = tracked[row[0]] = _Running(claimed_job(row), row[0], row[15])
                turn.set(True, following)
        except Exception:
            log.exception("worker %s: handing out the next jobs of a round failed", self.id)
            self._release_slots(round_)
        except BaseException:  # thrown in (killed while a log handler yielded): wake them
            self._release_slots(round_)
            raise

    def _release_slots(self, round_: _Round) -> None:
        """Wake the slots that joined a round and were not handed a job yet, with none."""
        for turn in round_.joined:
            if not turn.done:
                self._untrack(turn.running)
                turn.set(True, None)

    def _record(self, fn: Callable[..., Any], args: tuple[Any, ...], jobs: Any) -> Any:
        """Run a write that records outcomes, retrying while the database fails; return
        its value, or NOT_RUN once it gave up (the database closed, or stop()'s timeout
        passed): then the jobs (``jobs``: a claim, or a round) stay claimed until their
        leases expire, and run again (counting an attempt) wherever a worker runs. A round
        of several jobs is retried whole only while another connection holds the lock;
        on any other error it returns _ALONE (each slot then records its own job)."""
        delay = 0.05
        gather = isinstance(jobs, _Round)
        while True:
            try:
                self.db._check()
                writer = self.db._writer()
                if gather and writer._others_runnable():
                    # The slots ready to finish join the round first, and greenlets ready
                    # to write (producers adding jobs) reach the writer before it starts:
                    # the writer itself cannot see slots joining a round.
                    _sleep_shielded(0)
                gather = False
                value = writer.run_alone(fn, args)  # never yields
                if value is NOT_RUN:
                    if isinstance(jobs, _Round):
                        request: Request = _RoundWrite(self, jobs)
                    else:
                        request = self.db._request(fn, args, False, False)
                    try:
                        value = writer.write(request)
                    except _StopRequested:  # the write is queued: it commits all the same
                        value = _wait_shielded(request)
                return value
            except DatabaseError as exc:
                closed = isinstance(exc, DatabaseClosedError)
                claims = jobs.jobs() if isinstance(jobs, _Round) else [jobs]
                if closed or self._giving_up:  # closed, or stop()'s timeout has passed
                    if isinstance(jobs, _Round):
                        jobs.close(self)
                    why = "the database was closed" if closed else f"stopping ({exc})"
                    for job in claims:
                        log.error(
                            "worker %s: job %s was not recorded: %s; it runs again once its"
                            " lease expires",
                            self.id, job.job.id, why,
                        )  # fmt: skip
                    return NOT_RUN
                if len(claims) > 1 and not isinstance(exc, DatabaseLockedError):
                    # Not a lock to wait out: perhaps one outcome the database refuses (a
                    # trigger, a result too big). It must not hold up the others.
                    jobs.close(self)
                    log.warning(
                        "worker %s: cannot record job %s and %d more together (%s); recording"
                        " each on its own",
                        self.id, claims[0].job.id, len(claims) - 1, exc,
                    )  # fmt: skip
                    return _ALONE
                more = f" and {len(claims) - 1} more" if len(claims) > 1 else ""
                log.warning(
                    "worker %s: cannot record job %s%s (%s); retrying",
                    self.id, claims[0].job.id, more, exc,
                )  # fmt: skip
                _sleep_shielded(delay)
                delay = min(delay * 2, 2.0)
                if not isinstance(jobs, _Round):  # a round takes its time as it runs
                    now = now_ms()
                    want = 0 if (self._stopping or self._paused) else 1
                    args = (*args[:2], want, now, now + self._lease_ms)

    def _settle(
        self, running: _Running, kind: str, held: bool, row: tuple[Any, ...] | None
    ) -> _Running | None:
        """After a job's outcome was written: stop tracking it, and track the next job
        claimed for its slot (``row``; returned, None if none was). (Inlined in
        :meth:`_hand_out`, with :meth:`_untrack` and :meth:`_claimed`: keep them in step.)"""
        self._untrack(running)
        if not held:
            self._lost_outcome(running, kind)
        elif kind == "done":
            self.processed += 1
        return None if row is None else self._claimed(row)

    def _lost_outcome(self, running: _Running, kind: str) -> None:
        log.warning(
            "worker %s: job %s was no longer held by this worker (lease lost); its %s outcome"
            " was not recorded",
            self.id, running.job.id, kind,
        )  # fmt: skip

    # --- leases ----------------------------------------------------------------------------

    def _renew_loop(self) -> None:
        interval = max(0.01, self.lease / 3)
        while True:
            gevent.sleep(interval)
            leases = [
                (r.rowid, r.token) for r in self._running.values() if not (r.lost or r.finishing)
            ]
            if not leases:
                continue
            try:
                now = now_ms()
                lost = self.db._write(_sql.renew_and_reap, self.queue, leases, now, self._lease_ms)
            except DatabaseError as exc:
                log.warning("worker %s: lease renewal failed (%s); retrying", self.id, exc)
                continue
            for rowid in lost:
                running = self._running.get(rowid)
                if running is not None and not (running.lost or running.finishing):
                    running.lost = True
                    log.warning("worker %s: lost the lease of job %s", self.id, running.job.id)


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
