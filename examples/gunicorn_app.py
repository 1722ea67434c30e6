"""A plain WSGI app under ``gunicorn -k gevent``, enqueueing from a request handler, with the
dashboard mounted at /workmatic::

    WORKMATIC_DB=jobs.db gunicorn -k gevent -w 2 -b 127.0.0.1:8000 \\
        --chdir examples gunicorn_app:app
    curl -X POST 'http://127.0.0.1:8000/orders?item=book'
    open http://127.0.0.1:8000/workmatic/

gunicorn's gevent worker monkey-patches each worker process, then imports this module (do
not use ``--preload``: the database and the worker belong in each worker process, after the
fork). Every gunicorn worker process runs a Workmatic worker too; they share the queue
through the database file, and the dashboard in each process lists its own worker.
"""

from __future__ import annotations

import atexit
import json
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import gevent

import workmatic

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

db = workmatic.create_database(os.environ.get("WORKMATIC_DB", "jobs.db"))
orders = workmatic.create_client(db, "orders")
worker = workmatic.create_worker(db, "orders", concurrency=8)


@worker.process
def ship(job: workmatic.Job) -> dict[str, Any]:
    """Stands for real work: a cooperative sleep (the process is monkey-patched)."""
    gevent.sleep(0.1)
    return {"shipped": job.payload["item"], "by_pid": os.getpid()}


worker.start()
# gunicorn's worker process exits through sys.exit on SIGTERM/SIGINT: finish running jobs.
atexit.register(worker.stop, 10)


def _json(start_response: StartResponse, status: str, data: object) -> list[bytes]:
    body = json.dumps(data).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def application(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The app itself: ``POST /orders?item=...`` enqueues a job; ``GET /`` says hello."""
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD", "GET")
    if path == "/orders" and method == "POST":
        item = parse_qs(environ.get("QUERY_STRING", "")).get("item", ["something"])[0]
        job_id = orders.add({"item": item})
        return _json(start_response, "202 Accepted", {"job_id": job_id})
    if path == "/":
        return _json(start_response, "200 OK", {"app": "gunicorn example", "pid": os.getpid()})
    return _json(start_response, "404 Not Found", {"error": "not found"})


app = workmatic.create_dashboard_middleware(application, db, path="/workmatic", workers=[worker])
