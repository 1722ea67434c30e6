"""The SQLite driver: ``pysqlite3`` (a modern SQLite) where installed, else the standard
library's ``sqlite3``."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

sqlite: ModuleType
try:
    sqlite = importlib.import_module("pysqlite3.dbapi2")
    DRIVER = "pysqlite3"
except ImportError:  # pragma: no cover - depends on the platform
    sqlite = importlib.import_module("sqlite3")
    DRIVER = "sqlite3"

SQLITE_VERSION: str = sqlite.sqlite_version

#: Connection classes we can adopt.
CONNECTION_TYPES: tuple[type, ...] = (sqlite.Connection,)
try:
    import sqlite3 as _stdlib

    if _stdlib.Connection not in CONNECTION_TYPES:
        CONNECTION_TYPES = (*CONNECTION_TYPES, _stdlib.Connection)
except ImportError:  # pragma: no cover
    pass

_BUSY_CODES = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED (and their extended codes' low byte)


def is_busy(exc: BaseException) -> bool:
    """Whether a driver error means "another connection holds the lock: try again"."""
    code: Any = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return (code & 0xFF) in _BUSY_CODES
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text or "busy" in text


def library_of(conn: Any) -> str:
    """Which SQLite library a connection (ours or an adopted one) runs on: a driver name."""
    return "pysqlite3" if type(conn).__module__.startswith("pysqlite3") else "sqlite3"


def error_types(conn: Any) -> tuple[type[BaseException], ...]:
    """The driver's base error classes for a connection (ours or an adopted one)."""
    module = type(conn).__module__
    if module.startswith("pysqlite3"):
        from pysqlite3 import dbapi2

        return (dbapi2.Error,)
    import sqlite3

    return (sqlite3.Error,)
