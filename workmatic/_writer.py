"""The writer: one greenlet per thread that runs every write in group-committed
transactions, with cooperative retry while another connection holds the lock.

The writer takes every request queued since its last commit and runs them in one
``BEGIN IMMEDIATE`` transaction; requests of one function that has a ``many`` variant
(inserts, finish-and-claim) are handed to it together. If one request of a batch fails,
the batch is rolled back and each request is run again alone, so a bad request never
fails its neighbours. A transaction that asks for it runs whole in a real thread of
gevent's thread pool, so the hub keeps serving other greenlets meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
import gevent.monkey

from . import _driver, _sql
from .exceptions import DatabaseClosedError, DatabaseError, DatabaseLockedError

if TYPE_CHECKING:
    from .database import Database

get_ident: Callable[[], int] = gevent.monkey.get_original("_thread", "get_ident")
_allocate_lock: Callable[[], Any] = gevent.monkey.get_original("_thread", "allocate_lock")
real_sleep: Callable[[float], None] = gevent.monkey.get_original("time", "sleep")

#: Most requests one group commit takes.
MAX_BATCH = 1000


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


class Request:
    __slots__ = ("args", "deadline", "exclusive", "fn", "offload", "result")

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
        self.result: gevent.event.AsyncResult = gevent.event.AsyncResult()


class Writer:
    """The writer greenlet of one hub: runs queued writes in group-committed transactions."""

    def __init__(self, db: Database, conn: Conn) -> None:
        self.db = db
        self.conn = conn
        self.hub = gevent.get_hub()
        self.pending: list[Request] = []
        self.wake = gevent.event.Event()
        self.commits = 0
        self.checkpointer: gevent.Greenlet | None = None
        self.greenlet = gevent.spawn(self._run)
        self.greenlet.name = "workmatic-writer"

    def submit(self, request: Request) -> None:
        self.pending.append(request)
        if not self.wake.is_set():
            self.wake.set()

    def _run(self) -> None:
        while True:
            while not self.pending:
                if self.db._closed:
                    return
                self.wake.clear()
                self.wake.wait()
            if self.db._closed:
                for request in self.pending:
                    request.result.set_exception(DatabaseClosedError())
                self.pending.clear()
                return
            batch = self._take()
            try:
                self._execute(batch)
            except BaseException as exc:  # never die with callers waiting
                for request in batch:
                    if not request.result.ready():
                        request.result.set_exception(
                            exc if isinstance(exc, Exception) else DatabaseError(repr(exc))
                        )
                if not isinstance(exc, Exception):
                    raise

    def _take(self) -> list[Request]:
        pending = self.pending
        if pending[0].exclusive:
            return [pending.pop(0)]
        n = 1
        limit = min(len(pending), MAX_BATCH)
        while n < limit and not pending[n].exclusive:
            n += 1
        batch = pending[:n]
        del pending[:n]
        return batch

    def _execute(self, batch: list[Request]) -> None:
        if batch[0].offload:  # offloaded requests are exclusive: always alone
            outcomes = self.hub.threadpool.spawn(self._transaction, batch, True).get()
        else:
            outcomes = self._transaction(batch, False)
        if outcomes is None:  # the batch failed as a whole: give each request its own try
            for request in batch:
                single = self._transaction([request], False)
                assert single is not None
                self._deliver([request], single)
            return
        self._deliver(batch, outcomes)

    @staticmethod
    def _deliver(batch: list[Request], outcomes: list[tuple[bool, Any]]) -> None:
        for request, (ok, value) in zip(batch, outcomes, strict=True):
            if ok:
                request.result.set(value)
            else:
                request.result.set_exception(value)

    def _transaction(self, batch: list[Request], in_thread: bool) -> list[tuple[bool, Any]] | None:
        """Run ``batch`` in one transaction. Returns per-request outcomes, or None when a
        request of a multi-request batch failed (nothing was committed)."""
        conn = self.conn
        deadline = batch[0].deadline  # the oldest request's (FIFO)
        delay = 0.0005
        while True:
            if self.db._closed:
                return [(False, DatabaseClosedError())] * len(batch)
            conn.acquire(in_thread)
            try:
                try:
                    conn.raw.execute("BEGIN IMMEDIATE")
                except conn.errors as exc:
                    if not _driver.is_busy(exc):
                        error = self.db._translate(exc)
                        return [(False, error)] * len(batch)
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
            _sql.flush_counts(raw)
            self.db._check_file()
            self._commit(deadline)
        except BaseException as exc:
            _sql.discard_counts(raw)
            try:
                raw.execute("ROLLBACK")
            except self.conn.errors:
                pass
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
        together (one ``executemany``, one claim for many slots)."""
        groups: dict[Any, list[int]] = {}
        for index, request in enumerate(batch):
            groups.setdefault(request.fn, []).append(index)
        results: list[Any] = [None] * len(batch)
        for fn, indexes in groups.items():
            many = getattr(fn, "many", None)
            if many is not None and len(indexes) > 1:
                values = many(raw, [batch[i].args for i in indexes])
                for i, value in zip(indexes, values, strict=True):
                    results[i] = value
            else:
                for i in indexes:
                    results[i] = fn(raw, *batch[i].args)
        return [(True, value) for value in results]

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
