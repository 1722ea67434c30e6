"""A worker's *rounds*: how its slots finish their jobs. When a handler returns, its slot
records the outcome *and* claims the queue's next job in the same transaction, then runs
it. Slots that finish together share that transaction: the first leads a *round*
(:class:`_Round`), the others join it until its transaction starts, and the leader's one
request to the writer records every outcome and claims a job for each slot, handed to
each as the writer delivers it. (A request for each slot, group-committed by the writer,
cost ~2.3 µs more a job at concurrency 16: its request, its leader checks, its wait, its
share of a generic batch.) At concurrency 1 a slot writes alone.

A big round whose slots spent far longer in their handlers than its transaction will
take (handlers that wait on I/O) is *split*: it records the first :data:`SPLIT_CHUNK`
slots' jobs, and as it hands them their next jobs it passes the rest (:class:`_Lead`) to
the first slot still waiting, which leads a round of the next chunk once those have
started (the claims of the slots still waiting are renewed meanwhile). A chunk whose
transaction starts late (another process's lock, a busy hub) records all the slots left
at once, as a whole round would. (Not at ``durability="full"``, nor while other
connections contend for the lock: see :func:`_split`.) Slots that
return together otherwise wait for the whole round (64 slots: ~1.5 ms) before any starts,
and start together again, in lockstep; split, each waits for its own chunk, and their
next returns spread out. (I/O-bound jobs, ``gevent.sleep(0.01)`` at concurrency 64:
~81 % of the ideal rate whole, ~90 % split.) When the slots keep the database busy, as
no-op jobs do, rounds stay whole: more commits would cost throughput.

:class:`_Finishing` holds the :class:`~workmatic.worker.Worker`'s methods that do it (and
that track the claims it holds); ``Worker`` inherits them, so a slot calls them as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent

from . import _sql
from ._rows import claimed_job
from ._slots import _Running, _sleep_shielded, _StopRequested, _wait_shielded
from ._writer import NOT_RUN, Pending, Request
from .exceptions import DatabaseClosedError, DatabaseError, DatabaseLockedError
from .job import now_ms

if TYPE_CHECKING:
    from .database import Database

# The warnings here are a Worker's: they keep the logger they had in worker.py, for
# applications that configure it by name.
log = logging.getLogger("workmatic.worker")


#: What a slot that joined a round is handed when the round's transaction failed as a
#: whole (not for a lock): it records its own job in a write of its own, so that one
#: outcome the database refuses fails no other (as the writer runs each request of a
#: failed batch again alone).
_ALONE: Any = object()

#: How many slots' jobs one round of a split round records (the first led by the slot
#: that opened the round).
SPLIT_CHUNK = 4

#: A round is split when its first slot's handler ran more than this many times as long
#: as the round's statements should take (at the cost a job of this worker's previous
#: round): then slots spend their time in handlers, not waiting for the database. A
#: chunk whose transaction starts later than that after the rest of a split round was
#: passed on records every slot left.
SPLIT_AFTER = 4.0

#: Nor while other connections contend for the write lock: when a transaction of this
#: thread found it taken within this many seconds. (Each chunk takes the lock anew; four
#: worker processes at concurrency 64 ran ~25 % slower split.)
SPLIT_UNCONTENDED = 1.0


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


class _Lead:
    """What a slot waiting in a split round is handed instead of its next job: lead a
    round that records the next chunk of ``rest`` (this slot's job first); ``passed``:
    when (perf_counter)."""

    __slots__ = ("passed", "rest")

    def __init__(self, rest: list[_Turn], passed: float) -> None:
        self.rest = rest
        self.passed = passed


class _Round:
    """The finished jobs of a worker's slots that one transaction records: the leader's
    (the first slot to finish), then those of the slots that joined while it was open
    (until its transaction starts). Split, the joined slots past the first chunk wait in
    ``rest`` for the rounds that follow."""

    __slots__ = (
        "chained", "handed_out", "joined", "open", "opened", "outcome", "queued", "rest",
        "running",
    )  # fmt: skip

    def __init__(self, running: _Running, outcome: _sql.Outcome, opened: float) -> None:
        self.opened = opened  # when its first slot returned, or its lead was passed
        self.chained = False  # it records the rest of a split round
        self.running = running
        self.outcome = outcome
        self.joined: list[_Turn] = []
        self.rest: list[_Turn] = []
        self.open = True
        self.handed_out = False  # the joined slots have their next jobs
        # Its write is queued for the writer (it runs all the same). A flag, not the
        # request: a reference cycle kept every round alive until the cyclic GC ran
        # (-12 % to -20 % at concurrency 64).
        self.queued = False

    def close(self, worker: _Finishing) -> None:
        """No slot joins from now on; a slot that finishes later starts the next round."""
        self.open = False
        if worker._round is self:
            worker._round = None

    def jobs(self) -> list[_Running]:
        """The claims the round records: the leader's first."""
        return [self.running, *(turn.running for turn in self.joined)]

    def outcomes(self) -> list[_sql.Outcome]:
        """Their outcomes, in the same order."""
        return [self.outcome, *(turn.outcome for turn in self.joined)]


class _RoundWrite(Request):
    """A round's request to the writer. As the writer delivers it, the slots that joined
    the round get their next jobs at once, as each would with a request of its own (not
    one hop later, once the leader has run again: slots woken later miss the jobs that
    the next transaction adds and claims in one)."""

    __slots__ = ("round", "worker")

    def __init__(self, worker: _Finishing, round_: _Round) -> None:
        deadline = time.monotonic() + worker.db.lock_timeout
        super().__init__(_record_round, (worker, round_), deadline, False, False)
        self.worker = worker
        self.round = round_

    def set(self, ok: bool, value: Any) -> None:
        self.round.queued = False
        if ok:
            if self.round.handed_out:  # its leader ended first: its slots have gone on
                self.worker._count_outcomes(self.round.jobs(), self.round.outcomes(), value[0])
            else:
                self.worker._hand_out(self.round, value)
        super().set(ok, value)


def _record_round(
    conn: Any, worker: _Finishing, round_: _Round
) -> tuple[list[bool], list[tuple[Any, ...]]]:
    """A round's transaction: record each outcome (fenced by its claim's token; whether it
    was still held, in order) and claim a next job for each slot (the leader's first).
    Closed as it starts, the round keeps its slots if the writer runs it again (alone,
    after a batch it shared failed). A big round of slots back from long handlers records
    its first chunk only (split: see the module's docstring). No job is claimed for a
    slot that ended, nor for any once the leader ended (its slots were woken with none)."""
    round_.close(worker)
    started = time.perf_counter()
    joined = round_.joined
    want = 0
    if not round_.handed_out:
        if round_.chained:  # recorded now, unless left for the next chunk again
            for turn in joined:
                turn.running.finishing = True
        if len(joined) >= SPLIT_CHUNK:
            _split(worker, round_, started)
        want = 1 + [turn.gone for turn in joined].count(False)
    outcomes = round_.outcomes()
    held = _sql.finish_many(conn, outcomes)
    rows: list[tuple[Any, ...]] = []
    if want and not (worker._stopping or worker._paused):
        now = now_ms()
        rows = _sql.claim(conn, worker.queue, want, now, now + worker._lease_ms)
    worker._job_took = (time.perf_counter() - started) / len(outcomes)
    return held, rows


def _split(worker: _Finishing, round_: _Round, started: float) -> None:
    """Keep the first chunk of a round's joined slots, the others waiting in ``rest``
    (their claims renewed meanwhile): see the module's docstring."""
    if worker.db.durability == "full":
        # Every commit fsyncs, on the hub's thread: a split round multiplies them, and
        # its WAL frames with them (the I/O-bound row stalled the hub 93 and 140 ms, once
        # in five repetitions in each of two runs; whole, at most 5.5 ms).
        return
    if started - worker.db._writer().contended < SPLIT_UNCONTENDED:
        return  # other connections write too: one lock for the whole round
    joined = round_.joined
    expected = SPLIT_AFTER * worker._job_took * len(joined)
    if round_.chained:
        if started - round_.opened > expected:
            return  # late (another process's lock, a busy hub): record every slot now
    else:  # (its slots' own work after their handlers, a traceback say, delays it)
        entered = round_.running.entered
        if not entered or round_.opened - entered <= expected:
            return  # no handler ran, or one that returned soon: the slots wait for the db
    round_.rest = joined[SPLIT_CHUNK - 1 :]
    del joined[SPLIT_CHUNK - 1 :]
    for turn in round_.rest:
        turn.running.finishing = False  # the renewer keeps their leases while they wait


class _Finishing:
    """The :class:`~workmatic.worker.Worker`'s methods that finish a slot's job (record its
    outcome, claim and track the slot's next job, alone or in a round) and that track the
    claims the worker holds."""

    if TYPE_CHECKING:  # what these methods use of the Worker (set in Worker.__init__)
        db: Database
        queue: str
        concurrency: int
        id: str
        processed: int
        _lease_ms: int
        _running: dict[int, _Running]
        _round: _Round | None
        _job_took: float
        _stopping: bool
        _paused: bool
        _giving_up: bool

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
        round_ = self._round = _Round(running, outcome, time.perf_counter())
        return self._lead(round_)

    def _lead(self, round_: _Round) -> _Running | None:
        """Record a round (this slot's job first) and hand the slots that joined it their
        next jobs; return this slot's."""
        running = round_.running
        outcome = round_.outcome
        try:
            results = self._record(_record_round, (self, round_), round_)
            if results is NOT_RUN:  # given up (logged): the jobs stay claimed
                for job in round_.jobs():
                    self._untrack(job)
                round_.handed_out = True
                self._release_slots(round_)
                return None
            if results is _ALONE:  # the round failed whole: each slot records its own job
                round_.handed_out = True
                gone = [turn for turn in round_.joined if turn.gone]
                for turn in round_.joined:
                    turn.set(True, _ALONE)
                if gone:  # ended meanwhile: nobody else records theirs
                    gevent.spawn(self._record_gone, gone)
                self._pass_rest(round_)
                return self._finish_alone(running, outcome)
            self._hand_out(round_, results)  # if it ran alone (else _RoundWrite did)
            held, rows = results
            return self._settle(running, outcome[0], held[0], rows[0] if rows else None)
        finally:
            # Ended by an exception (this greenlet killed, say): no slot joins the round
            # from now on and none of it is left waiting. If its write is queued, it runs
            # all the same, records their outcomes and claims no job: they are woken with
            # none (the rest of a split round goes on). If not, they are passed on, with
            # this slot's own outcome, to the first still waiting, which leads them.
            round_.close(self)
            if not round_.handed_out:
                round_.handed_out = True
                if round_.queued:
                    self._release_slots(round_)
                else:
                    mine = _Turn(running, outcome)
                    mine.gone = True
                    self._pass_lead([mine, *round_.joined, *round_.rest])
                    round_.rest = []

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
            elif isinstance(turn.value, _Lead):  # the next to wait leads, recording this one
                self._pass_lead([turn, *turn.value.rest])
            raise
        if following is _ALONE:
            return self._finish_alone(running, outcome)
        if type(following) is _Lead:  # lead the next chunk of a split round
            running.finishing = True
            round_ = _Round(running, outcome, following.passed)
            round_.open = False
            round_.chained = True
            round_.joined = following.rest  # split again as its transaction starts
            return self._lead(round_)
        return following  # type: ignore[no-any-return]

    def _pass_lead(self, rest: list[_Turn]) -> None:
        """Hand the rest of a split round to its first slot still waiting, to lead the next
        chunk (any that ended before it join it: their outcomes are recorded all the same).
        Woken after the slots handed jobs, it leads once they have started."""
        for index, turn in enumerate(rest):
            if not turn.gone:
                turn.set(True, _Lead([*rest[:index], *rest[index + 1 :]], time.perf_counter()))
                return
        if rest:  # every one of them ended: nobody left to lead
            gevent.spawn(self._record_gone, rest)

    def _record_gone(self, turns: list[_Turn]) -> None:
        """Record the outcomes of slots that ended with no slot left to record them (each
        in a write of its own, claiming nothing), in a greenlet of its own: the caller may
        be ending. If the database fails, they run again once their leases expire."""
        for turn in turns:
            try:
                held = self.db._write(_sql.finish_many, [turn.outcome])
            except DatabaseError as exc:
                log.warning(
                    "worker %s: job %s was not recorded (%s); it runs again once its lease"
                    " expires",
                    self.id, turn.running.job.id, exc,
                )  # fmt: skip
                continue
            self._count_outcomes([turn.running], [turn.outcome], held)

    def _pass_rest(self, round_: _Round) -> None:
        """Pass on the rest of a split round, if any (once)."""
        rest = round_.rest
        if rest:
            round_.rest = []
            self._pass_lead(rest)

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
            # _settle() for each slot, inlined (this runs for every job of a round). The
            # rows claimed go to the slots still waiting, in order (none was claimed for a
            # slot that had ended; one claimed for a slot that ended since is left).
            next_row = 1
            for index, turn in enumerate(round_.joined, 1):
                running = turn.running
                if tracked.get(running.rowid) is running:
                    del tracked[running.rowid]
                if not held[index]:
                    self._lost_outcome(running, turn.outcome[0])
                elif turn.outcome[0] == "done":
                    self.processed += 1
                following = None
                if next_row < claimed and not turn.gone:
                    row = rows[next_row]
                    next_row += 1
                    following = tracked[row[0]] = _Running(claimed_job(row), row[0], row[15])
                turn.set(True, following)
            self._pass_rest(round_)
        except Exception:
            log.exception("worker %s: handing out the next jobs of a round failed", self.id)
            self._release_slots(round_)
        except BaseException:  # thrown in (killed while a log handler yielded): wake them
            self._release_slots(round_)
            raise

    def _count_outcomes(
        self, claims: list[_Running], outcomes: list[_sql.Outcome], held: list[bool]
    ) -> None:
        """Count (or report as lost) outcomes recorded for slots that no longer wait: those
        of a round whose slots were woken with no job before its write ran, or of slots
        that ended."""
        for running, outcome, ok in zip(claims, outcomes, held, strict=True):
            if not ok:
                self._lost_outcome(running, outcome[0])
            elif outcome[0] == "done":
                self.processed += 1

    def _release_slots(self, round_: _Round) -> None:
        """Wake the slots that joined a round and were not handed a job yet, with none;
        pass on the rest of a split round (not part of this round's write)."""
        for turn in round_.joined:
            if not turn.done:
                self._untrack(turn.running)
                turn.set(True, None)
        self._pass_rest(round_)

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
                        jobs.queued = True
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
