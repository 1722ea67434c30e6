"""What the databases of one process share: the fork hooks, which close the connections
a forked child inherits before it makes any (see :func:`_after_fork_in_child`), and the
one descriptor per database file that guards SQLite's locks on it (:class:`_FileGuards`).
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import TYPE_CHECKING

from . import _sql
from ._writer import Conn, _allocate_lock

if TYPE_CHECKING:
    from .database import Database

# The warnings here are about a Database's file: they keep the logger they had in
# database.py, for applications that configure it by name.
log = logging.getLogger("workmatic.database")

#: Bumped in a child process after fork(): cheaper to compare than calling os.getpid().
_forks = [0]
#: The databases of this process that are open (see _after_fork_in_child).
_open_databases: weakref.WeakSet[Database] = weakref.WeakSet()


def _before_fork() -> None:
    """Wait until no thread is inside SQLite on a connection of an open database, and keep
    it so over the fork: each connection's lock is held (they are held only across SQL
    that does not yield, and never two at once, so this waits at most for the statements
    running in other threads). A child then closes them safely (below); a thread caught
    inside SQLite could have left SQLite's own mutexes held in the child, for ever."""
    _file_guards.lock.acquire()
    for db in list(_open_databases):
        for conn in list(db._all_conns):
            if conn is not db._shared:
                conn.lock.acquire()
                _held_over_fork.append(conn)


def _after_fork_in_parent() -> None:
    while _held_over_fork:
        _held_over_fork.pop().lock.release()
    _file_guards.lock.release()


def _after_fork_in_child() -> None:
    """In a forked child, close the connections inherited from the parent, of every open
    database, before any new one is made.

    SQLite keeps, per process, what it believes are this process's locks on each file;
    a child inherits that belief but not the locks (POSIX locks are not inherited). While
    an inherited connection stays open, the child's new connections to the file take
    their locks from that stale record instead of from the system, so other processes
    cannot see them: the last of those to close would think the database unused, and
    delete its WAL while the child still commits into it (every job the child added from
    then on lost). Closing the inherited connections first lets SQLite forget the record.
    """
    _forks[0] += 1
    _after_fork_in_parent()  # the locks _before_fork took, in the child's copy
    for db in list(_open_databases):
        db._close_inherited()


#: The connections whose locks _before_fork holds over a fork.
_held_over_fork: list[Conn] = []
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


class _FileGuards:
    """One open descriptor per database file, shared by this process's ``Database`` objects
    for ``_check_file``, and closed only when the last of them closes.

    Closing any descriptor of a file releases every POSIX lock the process holds on it:
    SQLite's too (it guards its own descriptors against this, not ours). Had each database
    its own, closing one would release the locks of another still open on the same file,
    and another process, seeing the file unused, could delete its WAL under it."""

    def __init__(self) -> None:
        self.lock = _allocate_lock()  # also held over a fork (see _before_fork)
        self._held: dict[tuple[int, int], list[int]] = {}  # identity: [fd, users]
        self._libraries: dict[tuple[int, int], set[str]] = {}  # the SQLite copies using it

    def hold(self, path: str, library: str) -> tuple[tuple[int, int], int]:
        """The identity (device, inode) of the file at ``path`` and a descriptor of it, for
        a database whose connections use the SQLite of ``library`` (a driver's name)."""
        with self.lock:
            st = os.stat(path)
            identity = (st.st_dev, st.st_ino)
            entry = self._held.get(identity)
            if entry is None:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                st = os.fstat(fd)
                identity = (st.st_dev, st.st_ino)  # replaced in between: the new one's
                entry = self._held.get(identity)
                if entry is None:
                    entry = self._held[identity] = [fd, 0]
                # else (a race with a replacement): this fd must stay open (see above)
            entry[1] += 1
            libraries = self._libraries.setdefault(identity, set())
            if libraries and library not in libraries:
                log.warning(
                    "%s: open in this process through two SQLite libraries (%s and %s): when"
                    " the connections of one close, SQLite releases the locks of the other"
                    " (POSIX locks are per process), and another process may then delete the"
                    " WAL in use; use one driver for the file (Database.driver)",
                    path, sorted(libraries)[0], library,
                )  # fmt: skip
            libraries.add(library)
            return identity, entry[0]

    def let_go(self, identity: tuple[int, int]) -> None:
        """One user fewer; close the descriptor after the last (whose connections are
        closed by then)."""
        with self.lock:
            entry = self._held.get(identity)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                del self._held[identity]
                self._libraries.pop(identity, None)
                os.close(entry[0])


_file_guards = _FileGuards()


def _close_held(conn: Conn) -> None:
    """Close a connection whose lock the caller holds (best effort), and release it."""
    try:
        _sql.forget(conn.raw)
        conn.raw.close()
    except Exception:  # pragma: no cover - closing is best effort
        pass
    finally:
        conn.lock.release()
