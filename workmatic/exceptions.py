"""Every error Workmatic raises.

The tree::

    WorkmaticError
    ├── ValidationError (also a ValueError)    bad options, payloads, CSV rows, parameters
    ├── PermanentError                          raised by a handler: fail now, never retry
    ├── JobNotFoundError (also a KeyError)      no job with that id
    ├── InvalidStateError                       the job is not in a state that allows this
    └── DatabaseError                           the database could not do what was asked
        ├── DatabaseNotFoundError               the file does not exist (and create=False)
        ├── SchemaError                         not a workmatic database, or a newer schema
        ├── DatabaseLockedError                 another process held the lock too long
        └── DatabaseClosedError                 the Database was closed
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "DatabaseClosedError",
    "DatabaseError",
    "DatabaseLockedError",
    "DatabaseNotFoundError",
    "InvalidStateError",
    "JobNotFoundError",
    "PermanentError",
    "SchemaError",
    "ValidationError",
    "WorkmaticError",
]


class WorkmaticError(Exception):
    """A Workmatic operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        """The error's message."""
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        return self.message


class ValidationError(WorkmaticError, ValueError):
    """Invalid input: nothing was written.

    :param messages: the errors by field, as marshmallow reports them, for example
        ``{"priority": ["Not a valid integer."]}``.
    """

    def __init__(self, messages: Mapping[str, Any] | str, message: str | None = None) -> None:
        if isinstance(messages, str):
            messages = {"_schema": [messages]}
        self.messages: dict[str, Any] = dict(messages)
        super().__init__(message or _format_messages(self.messages))


class PermanentError(WorkmaticError):
    """The job cannot succeed: mark it ``failed`` and never retry it."""


class JobNotFoundError(WorkmaticError, KeyError):
    """No job has this id."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job with id {job_id!r}")


class InvalidStateError(WorkmaticError):
    """The job's status does not allow this operation."""


class DatabaseError(WorkmaticError):
    """The database could not do what was asked."""


class DatabaseNotFoundError(DatabaseError):
    """The database file does not exist."""


class SchemaError(DatabaseError):
    """The file is not a workmatic database, or its schema is newer than this version."""


class DatabaseLockedError(DatabaseError):
    """Another connection held the database's write lock for longer than ``lock_timeout``."""


class DatabaseClosedError(DatabaseError):
    """The database is closed."""


def _format_messages(messages: Mapping[str, Any]) -> str:
    parts = []
    for field, errors in sorted(messages.items(), key=lambda kv: str(kv[0])):
        if isinstance(errors, (list, tuple)):
            text = " ".join(str(e) for e in errors)
        else:
            text = str(errors)
        parts.append(text if field == "_schema" else f"{field}: {text}")
    return "; ".join(parts) or "invalid input"
