"""The orchestrator: many queues, each with its client and worker, steered together."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .client import Client
from .database import Database
from .exceptions import ValidationError, WorkmaticError
from .job import Job, JobStats
from .schemas import validate_queue
from .worker import Worker

__all__ = ["Orchestrator", "create_orchestrator"]


class Orchestrator:
    """Registers one worker per queue on a database, and starts, stops, pauses and
    reports on them together. Create it with :func:`create_orchestrator`."""

    def __init__(self, db: Database) -> None:
        if not isinstance(db, Database):
            raise ValidationError({"db": ["Must be a workmatic Database."]})
        self.db = db
        self._workers: dict[str, Worker] = {}
        self._clients: dict[str, Client] = {}

    def __repr__(self) -> str:
        return f"<workmatic.Orchestrator queues={sorted(self._workers)}>"

    def register(self, queue: str, **worker_options: Any) -> Worker:
        """Create and register the worker of ``queue``; takes :func:`create_worker`'s options.

        :raises WorkmaticError: the queue is registered already.
        """
        name = validate_queue(queue)
        if name in self._workers:
            raise WorkmaticError(f"queue {name!r} is registered already")
        worker = Worker(self.db, name, **worker_options)
        self._workers[name] = worker
        return worker

    def client(self, queue: str) -> Client:
        """The client of ``queue`` (any queue, registered or not)."""
        name = validate_queue(queue)
        client = self._clients.get(name)
        if client is None:
            client = self._clients[name] = Client(self.db, name)
        return client

    def worker(self, queue: str) -> Worker:
        """The registered worker of ``queue``.

        :raises KeyError: the queue is not registered.
        """
        try:
            return self._workers[queue]
        except KeyError:
            raise KeyError(f"queue {queue!r} is not registered") from None

    @property
    def workers(self) -> list[Worker]:
        """Every registered worker, in registration order."""
        return list(self._workers.values())

    @property
    def queues(self) -> list[str]:
        """The registered queues, in registration order."""
        return list(self._workers)

    def process(self, queue: str, fn: Callable[[Job], Any]) -> Callable[[Job], Any]:
        """Set the handler of a registered queue's worker."""
        return self.worker(queue).process(fn)

    def start_all(self) -> None:
        """Start every registered worker."""
        for worker in self._workers.values():
            worker.start()

    def stop_all(self, timeout: float | None = None) -> None:
        """Stop every worker; they stop claiming at once and finish their jobs together.

        :param timeout: as in :meth:`Worker.stop`, for the whole group.
        """
        for worker in self._workers.values():
            worker._stopping = True
            worker._wake.set()
        for worker in self._workers.values():
            worker.stop(timeout)

    def pause(self, queue: str) -> None:
        """Pause the registered worker of ``queue`` (this process; the persisted, queue-wide
        pause is ``orchestrator.client(queue).pause()``)."""
        self.worker(queue).pause()

    def resume(self, queue: str) -> None:
        """Resume the registered worker of ``queue``."""
        self.worker(queue).resume()

    def stats(self) -> dict[str, JobStats]:
        """Job counts by status of each registered queue."""
        every = self.db.queue_stats()
        return {q: every.get(q, JobStats()) for q in self._workers}

    def transfer(
        self,
        source: str,
        target: str,
        *,
        status: str | Sequence[str] = ("ready", "dead"),
        limit: int = 10_000,
        reset: bool = False,
    ) -> int:
        """Atomically move jobs between queues. See :meth:`Database.transfer`."""
        return self.db.transfer(source, target, status=status, limit=limit, reset=reset)

    def move_job(self, job_id: str, target: str) -> bool:
        """Move one job to another queue. See :meth:`Database.move_job`."""
        return self.db.move_job(job_id, target)


def create_orchestrator(db: Database) -> Orchestrator:
    """Create an orchestrator on ``db``.

    Example::

        orch = workmatic.create_orchestrator(db)
        orch.register("emails", concurrency=4)
        orch.process("emails", send_email)
        orch.start_all()
    """
    return Orchestrator(db)
