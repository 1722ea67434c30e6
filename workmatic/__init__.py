"""Workmatic: a persistent job queue on SQLite for gevent applications.

``import workmatic`` patches nothing, configures no logging, reads no environment
variables and starts nothing. The dashboard (which needs werkzeug) loads on first use of
its names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .client import Client, create_client
from .database import Database, create_database
from .exceptions import (
    DatabaseClosedError,
    DatabaseError,
    DatabaseLockedError,
    DatabaseNotFoundError,
    InvalidStateError,
    JobNotFoundError,
    PermanentError,
    SchemaError,
    ValidationError,
    WorkmaticError,
)
from .job import STATUSES, ImportResult, Job, JobStats, QueueInfo
from .orchestrator import Orchestrator, create_orchestrator
from .worker import Worker, create_worker

if TYPE_CHECKING:
    from .dashboard import (
        Dashboard,
        create_dashboard,
        create_dashboard_app,
        create_dashboard_middleware,
    )

__version__ = "0.1.0"

__all__ = [
    "STATUSES",
    "Client",
    "Dashboard",
    "Database",
    "DatabaseClosedError",
    "DatabaseError",
    "DatabaseLockedError",
    "DatabaseNotFoundError",
    "ImportResult",
    "InvalidStateError",
    "Job",
    "JobNotFoundError",
    "JobStats",
    "Orchestrator",
    "PermanentError",
    "QueueInfo",
    "SchemaError",
    "ValidationError",
    "Worker",
    "WorkmaticError",
    "__version__",
    "create_client",
    "create_dashboard",
    "create_dashboard_app",
    "create_dashboard_middleware",
    "create_database",
    "create_orchestrator",
    "create_worker",
]

_LAZY = {"Dashboard", "create_dashboard", "create_dashboard_app", "create_dashboard_middleware"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import dashboard

        return getattr(dashboard, name)
    raise AttributeError(f"module 'workmatic' has no attribute {name!r}")
