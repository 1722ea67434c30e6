"""WAL checkpoints: a :class:`~workmatic.database.Database` writer's checkpointer copies
the WAL back into the database file in a real thread of its own, and starts the WAL over
before SQLite would checkpoint inside a commit, on the hub (see
:meth:`_Checkpoints._checkpoints`). ``Database`` inherits these methods from
:class:`_Checkpoints`; ``Database._writer`` starts the checkpointer.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import gevent
import gevent.threadpool

from . import _sql
from ._writer import Conn, Writer, get_ident

# The messages here are a Database's: they keep the logger they had in database.py, for
# applications that configure it by name.
log = logging.getLogger("workmatic.database")

#: Most seconds between two checkpoints (copying the WAL back into the database, in a
#: thread of their own) while commits are being made ...
CHECKPOINT_INTERVAL = 0.25
#: ... or after this many commits, whichever comes first, checked every CHECKPOINT_POLL s.
CHECKPOINT_COMMITS = 1_000
CHECKPOINT_POLL = 0.02
#: WAL pages from which a checkpoint also starts the WAL over (``_sql.restart_wal``) ...
RESTART_PAGES = 4_000
#: ... waiting at most this long (ms, in the thread) for the write lock and for readers
#: (0 after a restart that could not be done, until one is), after at most HOLD_WAIT s
#: for this writer's running transaction (else: at the next checkpoint).
RESTART_WAIT_MS = 5
HOLD_WAIT = 1.0


class _Checkpoints:
    """The :class:`~workmatic.database.Database`'s methods that checkpoint the WAL."""

    if TYPE_CHECKING:  # what these methods use of the Database (set in Database.__init__)
        _closed: bool
        _label: str
        _restart_wait_ms: int
        _writers: dict[int, Writer]

        def _reader(self) -> Conn: ...

    def _checkpoints(self, writer: Writer) -> None:
        """Copy the WAL back into the database CHECKPOINT_INTERVAL after the last checkpoint
        while commits are made, or sooner under load (every CHECKPOINT_COMMITS commits), in
        a real thread of the writer's own (not the hub's pool, which the application may
        keep busy), so that the fsyncs of a checkpoint never run on the hub.

        A PASSIVE checkpoint lets commits go on, so under steady load it never copies the
        last of them, and SQLite starts the WAL over only after one that did: the WAL would
        grow until SQLite's automatic checkpoint fsynced inside a commit, on the hub
        (measured, with its threshold at 10,000 pages: 20-30 ms stalls every ~0.3 s of
        sequential adds). So once the WAL holds RESTART_PAGES, this writer's commits are
        held (they queue, as behind a transaction) while a RESTART checkpoint copies what
        the PASSIVE one left and starts the WAL over (1-4 ms). When it cannot (a reader
        still uses the WAL, or another connection holds the write lock), the next ones do
        not wait for the lock or for readers until one succeeds, so a reader that keeps the
        WAL for long costs each checkpoint well under a millisecond of held writes."""
        done = 0  # writer.commits at the last checkpoint
        before = -1  # writer.commits before the last sleep (at first: poll soon)
        last = time.monotonic()
        pool = gevent.threadpool.ThreadPool(1, hub=writer.hub)  # its own thread
        ident = get_ident()
        try:
            # Until closed, or until this writer is dropped (replaced, or left behind by a
            # fork: a child never writes through its parent's connections).
            while not self._closed and self._writers.get(ident) is writer:
                active = writer.commits != before  # commits made during the last sleep
                before = writer.commits
                gevent.sleep(CHECKPOINT_POLL if active else CHECKPOINT_INTERVAL)
                commits = writer.commits
                if commits == done or self._closed:
                    continue
                if (
                    commits - done < CHECKPOINT_COMMITS
                    and time.monotonic() - last < CHECKPOINT_INTERVAL
                ):
                    continue
                done, last = commits, time.monotonic()
                try:
                    self._checkpoint(writer, pool)
                except Exception:  # a bug: log it, and keep checkpointing
                    log.exception("%s: checkpoint failed", self._label)
        finally:
            pool.kill()

    def _checkpoint(self, writer: Writer, pool: Any) -> None:
        frames = pool.spawn(self._checkpoint_in_thread, False).get()
        if frames < RESTART_PAGES or not writer.hold(HOLD_WAIT):
            return
        try:
            frames = pool.spawn(self._checkpoint_in_thread, True).get()
        finally:
            writer.release()
        if frames == 0:
            self._restart_wait_ms = RESTART_WAIT_MS
        elif frames > 0:  # it could not restart: do not wait for the lock until one does
            self._restart_wait_ms = 0

    def _checkpoint_in_thread(self, restart: bool) -> int:
        """Run a PASSIVE checkpoint (or a RESTART one) and return the WAL's size in pages:
        0 after a restart, at least 1 if it could not restart, -1 if none could run."""
        conn = self._reader()
        conn.acquire(True)
        try:
            if self._closed:
                return -1
            if restart:
                busy, frames, _ = _sql.restart_wal(conn.raw, self._restart_wait_ms)
                return max(frames, 1) if busy else 0
            return _sql.checkpoint(conn.raw)[1]
        except conn.errors as exc:  # busy (another checkpoint), or the file went away
            log.debug("%s: checkpoint skipped: %s", self._label, exc)
            return -1
        finally:
            conn.lock.release()
