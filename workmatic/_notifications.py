"""Change notification: a :class:`~workmatic.database.Database` calls back the workers
of this process (their ``_subscribe``) when a queue may have new work: at once for this
process's adds (the writer calls ``_notify`` after a commit), within ``WATCH_INTERVAL``
for other processes' (a watcher greenlet polls ``PRAGMA data_version``). ``Database``
inherits these methods from :class:`_Notifications`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import gevent

from . import _sql
from ._writer import get_ident
from .exceptions import DatabaseError

# The messages here are a Database's: they keep the logger they had in database.py, for
# applications that configure it by name.
log = logging.getLogger("workmatic.database")

T = TypeVar("T")

#: How often (seconds) the watcher polls ``PRAGMA data_version`` for other processes' commits.
WATCH_INTERVAL = 0.005


class _Notifications:
    """The :class:`~workmatic.database.Database`'s methods of change notification."""

    if TYPE_CHECKING:  # what these methods use of the Database (set in Database.__init__)
        _closed: bool
        _label: str
        _subscribers: dict[int, tuple[Any, str | None, Callable[[], None]]]
        _next_subscriber: int
        _watchers: dict[int, gevent.Greenlet]

        def _check(self) -> None: ...

        def _read(self, fn: Callable[..., T], *args: Any, offload: bool = False) -> T: ...

    def _subscribe(self, queue: str | None, callback: Callable[[], None]) -> int:
        """Call ``callback`` (in this hub) when ``queue`` (or anything, for None) may have
        new work: at once for this process's adds, within ~5 ms for other processes'."""
        self._check()
        self._next_subscriber += 1
        token = self._next_subscriber
        hub = gevent.get_hub()
        self._subscribers[token] = (hub, queue, callback)
        ident = get_ident()
        watcher = self._watchers.get(ident)
        if watcher is None or watcher.dead:
            self._watchers[ident] = gevent.spawn(self._watch, hub)
        return token

    def _unsubscribe(self, token: int) -> None:
        self._subscribers.pop(token, None)

    def _notify(self, queue: str | None) -> None:
        if not self._subscribers:
            return
        hub = gevent.get_hub()
        for sub_hub, sub_queue, callback in list(self._subscribers.values()):
            if sub_hub is hub and (sub_queue is None or queue is None or sub_queue == queue):
                callback()

    def _watch(self, hub: Any) -> None:
        last = None
        while not self._closed and any(s[0] is hub for s in self._subscribers.values()):
            try:
                version = self._read(_sql.data_version)
            except DatabaseError as exc:
                log.warning("%s: cannot poll for changes: %s", self._label, exc)
                gevent.sleep(0.5)
                continue
            if last is not None and version != last:
                self._notify(None)
            last = version
            gevent.sleep(WATCH_INTERVAL)
