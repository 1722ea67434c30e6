"""The database: connections, pragmas, schema, and the doors to the writer (``_writer.py``).
Its public reads and admin operations (``_operations.py``), change notification
(``_notifications.py``) and WAL checkpoints (``_checkpoints.py``) are methods of a class
in each of those modules, which ``Database`` inherits.

Every write of a thread goes through that thread's writer (``_writer.Writer``), which
runs every request queued at that moment in one ``BEGIN IMMEDIATE`` transaction (group
commit), led by the first caller's own greenlet. Under gevent's monkey-patching a process
has one OS thread, so one writer; a program that also uses real threads gets one writer
per thread, each with its own connection, and SQLite serialises them.

Nothing here waits for a lock on the hub: connections use ``busy_timeout = 0`` and a
busy database is retried with ``gevent.sleep`` backoff until ``lock_timeout``. Large
transactions (``add_many`` of thousands of jobs, imports, purges) and heavy reads (counts
over the whole table) run whole in a real thread of gevent's thread pool, so the hub keeps
serving other greenlets meanwhile.

What the databases of a process share (the fork hooks, the file guards) is in
``_process.py``; jobs are built from rows in ``_rows.py``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import gevent

from . import _checkpoints, _driver, _sql
from ._checkpoints import _Checkpoints
from ._notifications import _Notifications
from ._operations import _Operations
from ._process import _close_held, _file_guards, _forks, _open_databases
from ._writer import NOT_RUN, Conn, Request, Writer, get_ident, real_sleep
from .exceptions import (
    DatabaseClosedError,
    DatabaseError,
    DatabaseLockedError,
    DatabaseNotFoundError,
    SchemaError,
    ValidationError,
)
from .job import ORIGINAL_COLUMNS

__all__ = ["Database", "create_database"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Row count above which a write runs in a real thread instead of on the hub.
OFFLOAD_ROWS = 2000
#: Most seconds between two checks of the database path's identity (see ``_check_file``).
PATH_CHECK_INTERVAL = 0.05
#: WAL pages after which SQLite checkpoints inside a commit: only should the checkpointer
#: be gone (a WAL kept from restarting by a reader grows past any smaller figure, and the
#: first commit after the reader ended would copy it all on the hub) ...
AUTOCHECKPOINT_PAGES = 100_000
#: ... and on an adopted connection (``connection=``), which has no checkpointer: there
#: SQLite checkpoints inside a commit, on the hub, every this many pages.
ADOPTED_AUTOCHECKPOINT_PAGES = 10_000

_DURABILITY = {"normal": "NORMAL", "full": "FULL"}


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class Database(_Operations, _Notifications, _Checkpoints):
    """A workmatic database: one SQLite file (or an in-memory database) holding every queue.

    Create it with :func:`create_database`. It is a context manager; :meth:`close` it when
    done. It may be used from any greenlet and any OS thread.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        connection: Any = None,
        durability: str = "normal",
        create: bool = True,
        lock_timeout: float | timedelta = 30.0,
    ) -> None:
        if durability not in _DURABILITY:
            raise ValidationError({"durability": ["Must be one of: normal, full."]})
        timeout = _seconds(lock_timeout) if not isinstance(lock_timeout, bool) else -1.0
        if not timeout >= 0:  # also rejects NaN
            raise ValidationError({"lock_timeout": ["Must be a non-negative number of seconds."]})
        if (path is None) == (connection is None):
            raise ValidationError({"path": ["Give either a path or connection=, not both."]})
        self.durability = durability
        self.lock_timeout = timeout
        self.driver = _driver.DRIVER
        self.sqlite_version = _driver.SQLITE_VERSION
        self._closed = False
        # 0 while restarts fail; read through the module, where _checkpoint reads it too
        self._restart_wait_ms = _checkpoints.RESTART_WAIT_MS
        self._forks = _forks[0]
        self._writers: dict[int, Writer] = {}
        self._readers: dict[int, Conn] = {}
        self._watchers: dict[int, gevent.Greenlet] = {}
        self._subscribers: dict[int, tuple[Any, str | None, Callable[[], None]]] = {}
        self._next_subscriber = 0
        self._shared: Conn | None = None
        self._adopted = False  # the connection is the application's (connection=)
        self._unsafe_after_fork = False  # see _close_inherited
        self._all_conns: list[Conn] = []
        if connection is not None:
            if not isinstance(connection, _driver.CONNECTION_TYPES):
                raise ValidationError(
                    {"connection": ["Must be a sqlite3 or pysqlite3 Connection."]}
                )
            self.path: str | None = _connection_path(connection)
            self._uri = ""
            self._adopted = True
            connection.isolation_level = None  # type: ignore[attr-defined]
            self._shared = self._configure(connection, adopted=True)
        else:
            text = os.fspath(path)  # type: ignore[arg-type]
            if not isinstance(text, str) or not text:
                raise ValidationError({"path": ["Must be a file path or ':memory:'."]})
            if text == ":memory:":
                self.path = None
                self._shared = self._configure(
                    _driver.sqlite.connect(
                        ":memory:", isolation_level=None, check_same_thread=False, timeout=0
                    )
                )
            else:
                self.path = os.path.abspath(text)
                if not create and not os.path.exists(self.path):
                    raise DatabaseNotFoundError(f"{self.path}: no such database file")
                mode = "rw" if not create else "rwc"
                from urllib.parse import quote

                self._uri = f"file:{quote(self.path)}?mode={mode}"
        self._label = self.path or ":memory:"
        # The database file's identity and an open descriptor of it, for ``_check_file``.
        self._identity: tuple[int, int] | None = None
        self._file_fd: int | None = None
        self._path_checked = 0.0
        try:
            self._setup(create)
            if self.path is not None:  # adopted connections too: see _process._FileGuards
                shared = self._shared
                library = _driver.library_of(shared.raw) if shared is not None else _driver.DRIVER
                self._identity, self._file_fd = _file_guards.hold(self.path, library)
            with _file_guards.lock:  # not while _process._before_fork walks the set
                _open_databases.add(self)
        except OSError as exc:
            self.close()
            raise DatabaseError(f"{self._label}: {exc}") from exc
        except BaseException:
            self.close()
            raise

    # --- connections -------------------------------------------------------------------

    def _configure(self, raw: Any, adopted: bool = False) -> Conn:
        conn = Conn(raw)

        def pragmas(raw: Any) -> None:
            raw.execute("PRAGMA busy_timeout = 0")
            raw.execute(f"PRAGMA synchronous = {_DURABILITY[self.durability]}")
            raw.execute("PRAGMA temp_store = MEMORY")
            if self.path is not None:
                # Checkpoints run in a thread (see _checkpoints); this is only the backstop.
                pages = ADOPTED_AUTOCHECKPOINT_PAGES if adopted else AUTOCHECKPOINT_PAGES
                raw.execute(f"PRAGMA wal_autocheckpoint = {pages}")

        # Another process may hold the lock while we open: wait for it like any write.
        self._with_retry(conn, pragmas, (), False)
        self._all_conns.append(conn)
        return conn

    def _connect(self) -> Conn:
        try:
            raw = _driver.sqlite.connect(
                self._uri, uri=True, isolation_level=None, check_same_thread=False, timeout=0
            )
        except _driver.sqlite.Error as exc:
            raise self._translate(exc) from exc
        return self._configure(raw)

    def _check(self) -> None:
        if self._closed:
            raise DatabaseClosedError(f"{self._label}: the database is closed")
        if _forks[0] != self._forks:  # forked (the fork hook does this first, normally)
            self._close_inherited()
        if self._unsafe_after_fork:
            raise DatabaseError(
                f"{self._label}: another thread was using this database when the process"
                " forked; it cannot be used safely in the child (open databases after forking)"
            )

    def _check_file(self) -> None:
        """Refuse to commit into a database file that was deleted or replaced since it was
        opened: SQLite would go on writing to the unlinked file, and the jobs would vanish
        with the process.

        Every commit checks the link count of an open descriptor of the file (~1 µs; it
        drops to 0 when the file is deleted or renamed over); the path itself (a stat costs
        3-9 µs) is compared with the file's identity at most every PATH_CHECK_INTERVAL, and
        on every commit if the descriptor is no longer the file's (closed by a daemoniser,
        say). A file moved away and replaced is thus refused within that interval, its
        jobs meanwhile safe in the moved file."""
        identity = self._identity
        if identity is None:
            return
        gone = False
        path_due = False
        try:
            st = os.fstat(self._file_fd)  # type: ignore[arg-type]
            if (st.st_dev, st.st_ino) != identity:
                path_due = True
            elif st.st_nlink == 0:
                gone = True
        except (OSError, TypeError):
            path_due = True
        if not gone:
            now = time.monotonic()
            if path_due or now - self._path_checked >= PATH_CHECK_INTERVAL:
                try:
                    st = os.stat(self.path)  # type: ignore[arg-type]
                    gone = (st.st_dev, st.st_ino) != identity
                except OSError:
                    gone = True
                if not gone:
                    self._path_checked = now
        if gone:
            raise DatabaseError(
                f"{self._label}: the database file was deleted or replaced while open;"
                " nothing was written (open the new file, or restore the old one)"
            )

    def _reader(self) -> Conn:
        if self._shared is not None:
            return self._shared
        ident = get_ident()
        conn = self._readers.get(ident)
        if conn is None:
            conn = self._readers[ident] = self._connect()
        return conn

    def _writer(self) -> Writer:
        ident = get_ident()
        writer = self._writers.get(ident)
        if writer is None or writer.hub is not gevent.get_hub() or writer.greenlet.dead:
            conn = self._shared if self._shared is not None else self._connect()
            writer = self._writers[ident] = Writer(self, conn)
            if self.path is not None and self._shared is None:
                writer.checkpointer = gevent.spawn(self._checkpoints, writer)
                writer.checkpointer.name = "workmatic-checkpointer"
        return writer

    def _translate(self, exc: BaseException) -> DatabaseError:
        if isinstance(exc, DatabaseError):
            return exc
        text = str(exc)
        if _driver.is_busy(exc):
            return DatabaseLockedError(f"{self._label}: {text}")
        if "not a database" in text:
            return DatabaseError(f"{self._label}: not an SQLite database (or it is corrupt)")
        return DatabaseError(f"{self._label}: {text}")

    def _with_retry(
        self, conn: Conn, fn: Callable[..., T], args: tuple[Any, ...], blocking: bool
    ) -> T:
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.0005
        while True:
            conn.acquire(blocking)
            try:
                return fn(conn.raw, *args)
            except conn.errors as exc:
                if not _driver.is_busy(exc) or time.monotonic() >= deadline:
                    raise self._translate(exc) from exc
            finally:
                conn.lock.release()
            if blocking:
                real_sleep(delay)
            else:
                gevent.sleep(delay)
            delay = min(delay * 1.6, 0.05)

    def _setup(self, create: bool) -> None:
        conn = self._shared if self._shared is not None else self._connect()
        version = self._with_retry(conn, lambda raw: _sql.schema_version(raw), (), False)
        if version == 0:
            shape = self._with_retry(conn, _legacy_shape, (), False)
            if shape == "foreign":
                raise SchemaError(f"{self._label}: has a 'jobs' table that is not workmatic's")
            if shape == "none" and not create:
                raise SchemaError(f"{self._label}: not a workmatic database")
            if shape == "v1":
                version = 1
        if version > _sql.SCHEMA_VERSION:
            raise SchemaError(
                f"{self._label}: schema version {version} is newer than this workmatic"
                f" supports ({_sql.SCHEMA_VERSION}); upgrade workmatic"
            )
        if self.path is not None:
            mode = self._with_retry(
                conn, lambda raw: raw.execute("PRAGMA journal_mode = WAL").fetchone()[0], (), False
            )
            if str(mode).lower() != "wal":
                log.warning("%s: journal_mode is %s, not WAL", self._label, mode)
        if version < _sql.SCHEMA_VERSION:
            self._call(conn, _migrate_locked)
        if self._shared is None:
            self._readers[get_ident()] = conn

    def _call(self, conn: Conn, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in a transaction of its own on ``conn`` (used before writers exist)."""
        deadline = time.monotonic() + self.lock_timeout

        def txn(raw: Any) -> T:
            raw.execute("BEGIN IMMEDIATE")
            try:
                value = fn(raw, *args)
                _sql.flush_counts(raw)
                raw.execute("COMMIT")
                _sql.take_fresh(raw)  # no worker runs before the writers exist
            except BaseException:
                _sql.discard_counts(raw)
                raw.execute("ROLLBACK")
                raise
            return value

        while True:
            try:
                return self._with_retry(conn, txn, (), False)
            except DatabaseLockedError:
                if time.monotonic() >= deadline:
                    raise
                gevent.sleep(0.01)

    # --- the two doors: reads and writes ------------------------------------------------

    def _read(self, fn: Callable[..., T], *args: Any, offload: bool = False) -> T:
        """Run a read. ``offload=True`` runs it in a real thread (for whole-table scans)."""
        self._check()
        if offload and self._shared is None:
            return gevent.get_hub().threadpool.spawn(self._read_in_thread, fn, args).get()  # type: ignore[no-any-return]
        return self._with_retry(self._reader(), fn, args, False)

    def _read_in_thread(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        return self._with_retry(self._reader(), fn, args, True)

    def _write(
        self, fn: Callable[..., T], *args: Any, exclusive: bool = False, offload: bool = False
    ) -> T:
        """Run a write in this thread's group commit and return its value once committed
        (a write that is neither exclusive nor offloaded runs at once when it would
        commit alone anyway: ``Writer.run_alone``)."""
        self._check()  # first: closed, forked
        writer = self._writer()
        if offload and self._adopted:
            # The application's connection may be usable in its own thread only
            # (check_same_thread): its large writes run in this thread, alone.
            offload, exclusive = False, True
        if not (exclusive or offload):
            value = writer.run_alone(fn, args)
            if value is not NOT_RUN:
                return value  # type: ignore[no-any-return]
        request = self._request(fn, args, exclusive, offload)
        return writer.write(request)  # type: ignore[no-any-return]

    def _request(
        self, fn: Callable[..., Any], args: tuple[Any, ...], exclusive: bool, offload: bool
    ) -> Request:
        """A write request for this thread's writer (the caller has run ``_check``)."""
        return Request(
            fn, args, time.monotonic() + self.lock_timeout, exclusive or offload, offload
        )

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Close every connection. Writes queued but not yet committed fail."""
        if self._closed:
            return
        self._closed = True
        hub = gevent.get_hub()
        for writer in list(self._writers.values()):
            if writer.hub is hub:
                writer.wake.set()
                if not writer.greenlet.dead and writer.greenlet is not gevent.getcurrent():
                    writer.greenlet.join(timeout=self.lock_timeout + 1)
        for watcher in list(self._watchers.values()):
            if getattr(watcher, "parent", None) is hub:
                watcher.kill(block=False)
        for writer in list(self._writers.values()):
            if writer.checkpointer is not None and writer.hub is hub:
                writer.checkpointer.kill()
        for conn in self._all_conns:
            conn.acquire(False)
            _close_held(conn)
        self._writers.clear()
        self._readers.clear()
        with _file_guards.lock:
            _open_databases.discard(self)
        if self._identity is not None:
            _file_guards.let_go(self._identity)
            self._identity = None
            self._file_fd = None

    def _close_inherited(self) -> None:
        """In a forked child: close the parent's connections (see _process._after_fork_in_child).
        An adopted connection is the application's: it is kept (as is an in-memory one,
        the child's own copy). A connection still in use (made by another thread while the
        fork began, so not held over it) cannot be closed safely: it is left open, and
        with it SQLite's stale record of the file's locks, so the database refuses to be
        used in the child."""
        kept = []
        for conn in self._all_conns:
            if conn is self._shared:
                kept.append(conn)
                continue
            if not conn.lock.acquire(False):  # made while the fork began: not held over it
                log.warning(
                    "%s: a connection was in use in another thread when the process forked;"
                    " this database cannot be used in the child (open databases after forking)",
                    self._label,
                )
                self._unsafe_after_fork = True
                continue
            _close_held(conn)
        self._all_conns = kept
        self._writers.clear()
        self._readers.clear()
        self._watchers.clear()
        self._subscribers.clear()
        self._forks = _forks[0]

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<workmatic.Database {self._label!r} durability={self.durability}>"


def _legacy_shape(raw: Any) -> str:
    """For a file with ``user_version = 0``: "none" (no jobs table), "v1" (a jobs table with
    the original columns: the Node original's schema), or "foreign"."""
    if not _sql.has_jobs_table(raw):
        return "none"
    columns = {row[1] for row in raw.execute("PRAGMA table_info(jobs)").fetchall()}
    needed = set(ORIGINAL_COLUMNS)
    return "v1" if needed <= columns else "foreign"


def _migrate_locked(raw: Any) -> int:
    current = _sql.schema_version(raw)
    if current == 0 and _legacy_shape(raw) == "v1":
        current = 1
    if current >= _sql.SCHEMA_VERSION:
        return current
    return _sql.migrate(raw, current)


def _connection_path(conn: Any) -> str | None:
    try:
        for _, name, file in conn.execute("PRAGMA database_list").fetchall():
            if name == "main":
                return str(file) or None
    except Exception:
        return None
    return None


def create_database(
    path: str | os.PathLike[str] | None = None,
    *,
    connection: Any = None,
    durability: str = "normal",
    create: bool = True,
    lock_timeout: float | timedelta = 30.0,
) -> Database:
    """Open (and create or migrate) a workmatic database.

    :param path: a file path (created if missing, unless ``create=False``) or ``":memory:"``.
    :param connection: instead of a path, adopt an existing ``sqlite3``/``pysqlite3``
        connection (it is switched to autocommit mode; create it with
        ``check_same_thread=False`` to use it from several threads).
    :param durability: ``"normal"`` (``synchronous=NORMAL``: survives a process crash; an OS
        crash or power loss may lose the last commits) or ``"full"`` (``synchronous=FULL``:
        every committed job survives power loss, at a fraction of the speed).
    :param create: with False, raise instead of creating a missing file or a schema.
    :param lock_timeout: how long a write waits for another connection's lock before
        :class:`DatabaseLockedError`; the wait never blocks the gevent hub.
    :raises DatabaseNotFoundError: the file is missing and ``create=False``.
    :raises SchemaError: not a workmatic database (with ``create=False``), or a newer schema.
    :raises DatabaseError: the file cannot be opened or is not an SQLite database.

    Example::

        db = workmatic.create_database("jobs.db")
    """
    return Database(
        path,
        connection=connection,
        durability=durability,
        create=create,
        lock_timeout=lock_timeout,
    )
