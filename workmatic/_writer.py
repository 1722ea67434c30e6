"""The writer of a thread: runs every write in group-committed transactions, with
cooperative retry while another connection holds the lock.

The first caller to find the writer idle leads: it yields (once, or a few times while
more requests keep joining; not at all when no other greenlet is runnable), so that every
greenlet ready to write queues its request behind it, then runs them all in one
``BEGIN IMMEDIATE`` transaction in its own greenlet (a lone caller pays no hand-off to
another greenlet; with no other greenlet runnable it runs at once, without even a
request object: :meth:`Writer.run_alone`). The writer greenlet runs what a leader must
not: writes that wait for another connection's lock, and writes that run alone or in a
thread. Requests of one
function that has a ``many`` variant (inserts, finish-and-claim) are handed to it
together. If one request of a batch fails, the batch is rolled back and each request is
run again alone, so a bad request never fails its neighbours. A transaction that asks
for it runs whole in a real thread of gevent's thread pool, so the hub keeps serving
other greenlets meanwhile.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
import gevent.monkey
from gevent.hub import Waiter

from . import _driver, _sql
from .exceptions import DatabaseClosedError, DatabaseError, DatabaseLockedError

if TYPE_CHECKING:
    from .database import Database

log = logging.getLogger(__name__)

get_ident: Callable[[], int] = gevent.monkey.get_original("_thread", "get_ident")
_allocate_lock: Callable[[], Any] = gevent.monkey.get_original("_thread", "allocate_lock")
real_sleep: Callable[[float], None] = gevent.monkey.get_original("time", "sleep")


def hub_turn() -> None:
    """Let every other greenlet run, those waiting for I/O, a timer or a signal too.

    ``gevent.sleep(0)`` runs only the greenlets already runnable (the hub polls once per
    50 such yields). A timer that is due at once waits for one full turn of the event loop
    (a poll for I/O and signals that does not block, and the timers due; what the poll
    made ready may run a turn later): a few µs when nothing else is ready. (A positive
    ``sleep`` can make the loop block for its minimum wait, 1 ms.) The timer's expiry is
    the time of the loop's last iteration, earlier than that of every timer that came
    due since: it would fire first, and they would wait for the next turn (a greenlet
    sleeping 1 ms beside a loop that turns every 2 ms would run every 4 ms). So after it
    fires, this greenlet queues itself behind what that iteration made runnable."""
    hub = gevent.get_hub()
    with hub.loop.timer(0) as timer:
        hub.wait(timer)
    gevent.sleep(0)


#: Most requests one group commit takes.
MAX_BATCH = 1000
#: How many more times a leader yields while requests keep joining its batch.
GATHER_ROUNDS = 3
#: Most seconds a leader goes without yielding to the hub when no greenlet is runnable
#: (so that greenlets waiting for a timer or I/O get their turn between writes).
TURN_EVERY = 0.001


class Conn:
    """A driver connection and the lock that keeps two threads from using it at once.

    The lock is a real (unpatched) lock; it is only ever held across code that does not
    yield to the hub, and greenlets take it with a non-blocking spin, so it never blocks
    the hub and never deadlocks greenlets.
    """

    __slots__ = ("errors", "lock", "raw")

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.lock = _allocate_lock()
        self.errors = _driver.error_types(raw)

    def acquire(self, blocking: bool) -> None:
        if self.lock.acquire(False):
            return
        if blocking:
            self.lock.acquire()
            return
        delay = 0.0001
        while not self.lock.acquire(False):
            gevent.sleep(delay)
            delay = min(delay * 2, 0.005)


class Pending:
    """An outcome still to come, and the greenlet of this hub waiting for it: ``set()``
    records it and wakes the waiter, ``get()`` waits for it (a write's, or a worker slot's
    next job)."""

    __slots__ = ("done", "hub", "ok", "value", "waiter")

    def __init__(self) -> None:
        self.done = False
        self.ok = False
        self.value: Any = None
        self.waiter: Waiter[Any] | None = None
        self.hub: Any = None

    def set(self, ok: bool, value: Any) -> None:
        """Record the outcome (in the waiter's thread) and wake the waiting greenlet."""
        self.ok = ok
        self.value = value
        self.done = True
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            self.hub.loop.run_callback(waiter.switch, None)

    def get(self) -> Any:
        """Wait for the outcome; return the value or raise the error."""
        if not self.done:
            hub = self.hub = gevent.get_hub()
            waiter: Waiter[Any] = Waiter(hub)
            self.waiter = waiter
            try:
                waiter.get()
            finally:
                if self.waiter is waiter:
                    self.waiter = None
        if self.ok:
            return self.value
        raise self.value


class Request(Pending):
    """One queued write and, once it ran, its outcome (``get()`` waits for it)."""

    __slots__ = ("args", "deadline", "exclusive", "fn", "offload")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        deadline: float,
        exclusive: bool,
        offload: bool,
    ) -> None:
        self.fn = fn
        self.args = args
        self.deadline = deadline
        self.exclusive = exclusive
        self.offload = offload
        self.done = False
        self.ok = False
        self.value = None
        self.waiter = None
        self.hub = None


#: What :meth:`Writer.run_alone` returns when it did not run the write (and what a
#: leader's transaction returns when it found the lock taken: hand the batch over).
NOT_RUN: Any = object()


class Writer:
    """The writes of one hub, run in group-committed transactions.

    A caller that finds the writer idle *leads*: it yields (so every greenlet ready to
    write queues its request behind it; not when none is runnable), then runs the whole
    queue in one transaction in its own greenlet and wakes the others. Callers that find
    a transaction running queue their request and wait. The writer greenlet takes what a
    leader cannot: writes that must run alone or in a thread, and transactions that must
    wait for another connection's lock (a leader never sleeps while holding other
    callers' requests).
    """

    def __init__(self, db: Database, conn: Conn) -> None:
        self.db = db
        self.conn = conn
        self.hub = gevent.get_hub()
        self.pending: list[Request] = []
        self.busy = False  # a transaction (a leader's or the writer greenlet's) is running
        self.wake = gevent.event.Event()
        self.commits = 0
        self.fresh: list[str] = []  # queues to notify after the commit being delivered
        self.checkpointer: gevent.Greenlet | None = None
        self.hold_wanted: gevent.event.Event | None = None  # see hold()
        # What can run next without a poll: gevent's queue of callbacks (private) and, on
        # libev, the watchers the last poll made pending (greenlets woken by a timer or
        # I/O). Elsewhere (libuv: its pending watchers cannot be seen), always yield.
        loop = self.hub.loop
        libev = type(loop).__module__.startswith("gevent.libev")
        self.runnable: Any = getattr(loop, "_callbacks", None) if libev else None
        self.turned = 0.0  # when a leader last let the event loop take a full turn
        # When a transaction of this writer last found the lock taken by another
        # connection (perf_counter): a worker splits no round while others contend.
        self.contended = -math.inf
        self.greenlet = gevent.spawn(self._run)
        self.greenlet.name = "workmatic-writer"

    def submit(self, request: Request) -> None:
        """Queue ``request`` for the writer greenlet (or the running leader)."""
        self.pending.append(request)
        if not self.busy and not self.wake.is_set():
            self.wake.set()

    def hold(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until no transaction of this writer (this thread's
        greenlets) runs, then keep them from starting one until :meth:`release` (their
        writes queue, as behind a running one); False if the wait timed out. For a
        checkpoint that needs the write lock free of this writer's commits."""
        if not self.busy:
            self.busy = True
            return True
        granted = self.hold_wanted = gevent.event.Event()
        try:
            granted.wait(timeout)  # a transaction hands the hold over as it ends
        except BaseException:
            if granted.is_set():
                self.release()
            raise
        finally:
            if self.hold_wanted is granted:
                self.hold_wanted = None
        return bool(granted.is_set())

    def release(self) -> None:
        """End a :meth:`hold`: the writer greenlet runs what queued meanwhile."""
        self.busy = False
        if self.pending and not self.wake.is_set():
            self.wake.set()

    def _done_busy(self) -> None:
        """A transaction that may have yielded ends: hand the writer to a :meth:`hold`
        waiting for it, or mark it idle."""
        wanted = self.hold_wanted
        if wanted is not None:
            self.hold_wanted = None
            wanted.set()  # busy stays True: the holder has it now
            return
        self.release()

    def _others_runnable(self) -> bool:
        """Whether another greenlet may run before the next poll of the event loop (and so
        could join a group commit): a callback queued, or a watcher the last poll made
        pending. Without a way to see them (libuv), assume so."""
        return self.runnable is None or bool(self.runnable) or bool(self.hub.loop.pendingcnt)

    def run_alone(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """Run ``fn(conn, *args)`` at once in a transaction of its own, in this greenlet,
        when that is what :meth:`write` would do with it: the writer idle, no greenlet
        runnable that could join a group commit (so a leader would not yield), the event
        loop's turn not due, and the lock free. Otherwise return :data:`NOT_RUN` (nothing
        ran: build a :class:`Request` for :meth:`write`). It never yields, so nothing can
        queue behind it; it skips the request and its hand-off (~3 µs of a lone write).
        A function with an ``alone`` form (``alone(conn, *args)``: one statement that
        SQLite commits as it ends, or None when it does not apply) runs as that, without
        ``BEGIN`` and ``COMMIT``."""
        runnable = self.runnable  # _others_runnable(), inlined: this runs for every lone write
        if (
            self.busy
            or self.pending
            or runnable is None
            or runnable
            or self.hub.loop.pendingcnt
            or time.perf_counter() - self.turned >= TURN_EVERY
            or gevent.getcurrent() is self.hub
        ):
            return NOT_RUN
        conn = self.conn
        if not conn.lock.acquire(False):
            return NOT_RUN
        raw = conn.raw
        self.busy = True
        try:
            alone = getattr(fn, "alone", None)  # its form as one self-committing statement
            value = None
            # Only where a statement commits as it ends: not in a transaction left open, and
            # not if the driver would open one itself (an adopted connection whose
            # isolation_level the application set again). There BEGIN fails, as it should.
            if alone is not None and raw.isolation_level is None and not raw.in_transaction:
                self.db._check_file()
                try:
                    value = alone(raw, *args)
                except conn.errors as exc:  # SQLite rolled the statement back
                    _sql.discard_counts(raw)
                    if _driver.is_busy(exc):
                        self.contended = time.perf_counter()
                        return NOT_RUN
                    raise self.db._translate(exc) from exc
                if value is not None:
                    self._take_fresh()
            if value is None:
                try:
                    raw.execute("BEGIN IMMEDIATE")
                except conn.errors as exc:
                    if _driver.is_busy(exc):
                        self.contended = time.perf_counter()
                        return NOT_RUN
                    raise self.db._translate(exc) from exc
                try:
                    value = fn(raw, *args)
                    self._commit_open(time.monotonic() + self.db.lock_timeout)
                except BaseException as exc:
                    self._roll_back()
                    if isinstance(exc, conn.errors):
                        raise self.db._translate(exc) from exc
                    raise
        finally:
            conn.lock.release()
            self.busy = False
        self.commits += 1
        if self.fresh:
            self._notify_fresh()
        return value

    def write(self, request: Request) -> Any:
        """Run ``request`` and return its value: lead a group commit when the writer is idle."""
        if self.busy or self.pending or request.exclusive or gevent.getcurrent() is self.hub:
            self.submit(request)
            return request.get()
        self.busy = True
        self.pending.append(request)
        try:
            # Let every greenlet that is ready to write queue behind this one; while more
            # keep coming (they were one hop behind), wait a little longer. When none is
            # runnable none can join, and a yield would only cost a turn of the event loop
            # (~8 µs): a lone writer skips it (and so does a leader whose batch is
            # complete), but takes a full turn (timers, I/O) at least every TURN_EVERY, as
            # does a busy one.
            queued = len(self.pending)
            now = time.perf_counter()
            if now - self.turned >= TURN_EVERY:
                self.turned = now
                hub_turn()
            elif self._others_runnable():
                gevent.sleep(0)
            for _ in range(GATHER_ROUNDS):
                if len(self.pending) == queued or not self._others_runnable():
                    break
                queued = len(self.pending)
                gevent.sleep(0)
            self._drain(lead=True)
        finally:
            self._done_busy()  # wakes the writer if interrupted, or for a write left to it
        return request.get()

    def _run(self) -> None:
        while True:
            while self.busy or not self.pending:
                if self.db._closed:
                    self._fail_pending()
                    return
                self.wake.clear()
                self.wake.wait()
            self.busy = True
            try:
                self._drain(lead=False)
            finally:
                self._done_busy()

    def _fail_pending(self) -> None:
        for request in self.pending:
            request.set(False, DatabaseClosedError())
        self.pending.clear()

    def _drain(self, lead: bool) -> None:
        """Run queued requests until none is left (or, leading, until one needs the writer
        greenlet)."""
        pending = self.pending
        while pending:
            if self.db._closed:
                self._fail_pending()
                return
            if lead and pending[0].exclusive:
                return
            batch = self._take()
            try:
                leftover = self._execute(batch, lead)
            except BaseException as exc:  # never leave callers waiting
                for request in batch:
                    if not request.done:
                        request.set(
                            False, exc if isinstance(exc, Exception) else DatabaseError(repr(exc))
                        )
                if not isinstance(exc, Exception):
                    raise
                continue
            if leftover:
                pending[:0] = leftover  # nothing of these ran: the writer greenlet retries
                return

    def _take(self) -> list[Request]:
        pending = self.pending
        if len(pending) == 1:  # a lone caller: the common case when nothing is contended
            batch = pending[:]
            pending.clear()
            return batch
        if pending[0].exclusive:
            return [pending.pop(0)]
        n = 1
        limit = min(len(pending), MAX_BATCH)
        while n < limit and not pending[n].exclusive:
            n += 1
        batch = pending[:n]
        del pending[:n]
        return batch

    def _execute(self, batch: list[Request], lead: bool) -> list[Request]:
        """Run ``batch``; return the requests that did not run (the lock was taken)."""
        if batch[0].offload:  # offloaded requests are exclusive: always alone
            outcomes = self.hub.threadpool.spawn(self._transaction, batch, True).get()
        else:
            outcomes = self._transaction(batch, False, lead)
        if outcomes is NOT_RUN:
            return batch
        if outcomes is None:  # the batch failed as a whole: give each request its own try
            for index, request in enumerate(batch):
                single = self._transaction([request], False, lead)
                if single is NOT_RUN:
                    return batch[index:]
                assert single is not None
                self._deliver([request], single)
            return []
        self._deliver(batch, outcomes)
        return []

    def _deliver(self, batch: list[Request], outcomes: list[tuple[bool, Any]]) -> None:
        for request, (ok, value) in zip(batch, outcomes, strict=True):
            request.set(ok, value)
        if self.fresh:
            self._notify_fresh()

    def _notify_fresh(self) -> None:
        """Wake this process's workers of the queues the last commits left new jobs in."""
        queues, self.fresh = self.fresh, []
        if not self.db._subscribers:  # no worker listens in this process
            return
        for queue in queues if len(queues) == 1 else dict.fromkeys(queues):
            try:
                self.db._notify(queue)
            except Exception:  # pragma: no cover - a subscriber's bug: never the writer's
                log.exception("%s: waking the workers of %r failed", self.db._label, queue)

    def _transaction(self, batch: list[Request], in_thread: bool, lead: bool = False) -> Any:
        """Run ``batch`` in one transaction. Returns per-request outcomes, or None when a
        request of a multi-request batch failed (nothing was committed). A leader never
        waits: when the lock is taken it gets ``NOT_RUN`` (nothing ran)."""
        conn = self.conn
        deadline = batch[0].deadline  # the oldest request's (FIFO)
        delay = 0.0005
        while True:
            if self.db._closed:
                return [(False, DatabaseClosedError())] * len(batch)
            if lead:
                if not conn.lock.acquire(False):
                    return NOT_RUN
            else:
                conn.acquire(in_thread)
            try:
                try:
                    conn.raw.execute("BEGIN IMMEDIATE")
                except conn.errors as exc:
                    if not _driver.is_busy(exc):
                        error = self.db._translate(exc)
                        return [(False, error)] * len(batch)
                    self.contended = time.perf_counter()
                    if lead:
                        return NOT_RUN
                else:
                    return self._run_in_transaction(batch, deadline)
            finally:
                conn.lock.release()
            if time.monotonic() >= deadline:
                error = DatabaseLockedError(
                    f"{self.db._label}: the database stayed locked by another connection"
                    f" for longer than lock_timeout ({self.db.lock_timeout:g} s)"
                )
                return [(False, error)] * len(batch)
            if in_thread:
                real_sleep(delay)
            else:
                gevent.sleep(delay)
            delay = min(delay * 1.6, 0.05)

    def _run_in_transaction(
        self, batch: list[Request], deadline: float
    ) -> list[tuple[bool, Any]] | None:
        raw = self.conn.raw
        outcomes: list[tuple[bool, Any]] = []
        try:
            if len(batch) == 1:
                outcomes.append((True, batch[0].fn(raw, *batch[0].args)))
            else:
                outcomes = self._run_grouped(raw, batch)
            self._commit_open(deadline)
        except BaseException as exc:
            self._roll_back()
            if len(batch) > 1 and isinstance(exc, Exception):
                return None
            error = self.db._translate(exc) if isinstance(exc, self.conn.errors) else exc
            if not isinstance(exc, Exception):
                raise
            return [(False, error)]
        self.commits += 1
        return outcomes

    @staticmethod
    def _run_grouped(raw: Any, batch: list[Request]) -> list[tuple[bool, Any]]:
        """Run a batch, handing requests of one function that has a ``many`` variant to it
        together (one ``executemany``, one claim for many slots).

        The requests of a batch are concurrent, so any order is theirs; functions marked
        ``runs_first`` (the inserts) go first, so that the claims of the same transaction
        already see the jobs it adds: a slot finishing a job then takes a job added
        alongside, instead of idling until the pump claims it in another transaction."""
        groups: dict[Any, list[int]] = {}
        for index, request in enumerate(batch):
            groups.setdefault(request.fn, []).append(index)
        results: list[Any] = [None] * len(batch)
        order = sorted(groups.items(), key=lambda item: not getattr(item[0], "runs_first", False))
        for fn, indexes in order:
            many = getattr(fn, "many", None)
            if many is not None and len(indexes) > 1:
                values = many(raw, [batch[i].args for i in indexes])
                for i, value in zip(indexes, values, strict=True):
                    results[i] = value
            else:
                for i in indexes:
                    results[i] = fn(raw, *batch[i].args)
        return [(True, value) for value in results]

    def _commit_open(self, deadline: float) -> None:
        """Commit the open transaction: its count changes first, the file checked."""
        raw = self.conn.raw
        _sql.flush_counts(raw)
        self.db._check_file()
        self._commit(deadline)
        self._take_fresh()

    def _take_fresh(self) -> None:
        """After a commit: note the queues it left new jobs in, for :meth:`_notify_fresh`."""
        fresh = _sql.take_fresh(self.conn.raw)
        if fresh:
            self.fresh.extend(fresh)

    def _roll_back(self) -> None:
        raw = self.conn.raw
        _sql.discard_counts(raw)
        try:
            raw.execute("ROLLBACK")
        except self.conn.errors:
            pass

    def _commit(self, deadline: float) -> None:
        delay = 0.0005
        while True:
            try:
                self.conn.raw.execute("COMMIT")
                return
            except self.conn.errors as exc:
                if not _driver.is_busy(exc) or time.monotonic() >= deadline:
                    raise
            real_sleep(delay)  # rare (WAL commits do not wait): keep the lock, stay short
            delay = min(delay * 2, 0.01)
