"""The dashboard's WSGI application: routes, JSON API handlers and static assets.

The public factories live in :mod:`workmatic.dashboard`; this module holds the app they
build. It reads and changes jobs only through the public API of
:class:`~workmatic.Database` and :class:`~workmatic.Worker`.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import marshmallow
from marshmallow import fields, validate
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import BaseConverter, Map, RequestRedirect, Rule
from werkzeug.wrappers import Request, Response

from workmatic._dashboard_security import (
    SECURITY_HEADERS,
    Auth,
    is_same_origin,
    make_authenticator,
)
from workmatic.exceptions import DatabaseError, JobNotFoundError, ValidationError
from workmatic.job import STATUSES

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from workmatic.database import Database
    from workmatic.job import Job
    from workmatic.worker import Worker

__all__ = ["DashboardApp", "JobListQuerySchema"]

logger = logging.getLogger("workmatic.dashboard")

RETRYABLE = ("dead", "failed")
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_OFFSET = 2**53

# The files the page is made of, and the only files this app serves.
_ASSET_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


class JobListQuerySchema(marshmallow.Schema):
    """The query string of ``GET api/jobs``: ``status``, ``queue``, ``limit``, ``offset``."""

    class Meta:
        unknown = marshmallow.RAISE

    status = fields.String(load_default=None, validate=validate.OneOf(STATUSES))
    queue = fields.String(load_default=None, validate=validate.Length(min=1, max=255))
    limit = fields.Integer(
        load_default=DEFAULT_LIMIT, validate=validate.Range(min=1, max=MAX_LIMIT)
    )
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_OFFSET))


class _QueueConverter(BaseConverter):
    """A queue name in a path: anything, slashes included (the last segment is the action)."""

    regex = ".+"
    part_isolating = False


@dataclass(frozen=True)
class _Asset:
    body: bytes
    etag: str
    mimetype: str


def _asset_directory() -> Any:
    """Find the static files: inside the installed wheel first, then the source checkout."""
    packaged = importlib.resources.files("workmatic") / "_assets"
    if packaged.is_dir():
        return packaged
    source = Path(__file__).resolve().parent.parent / "dashboard"
    if source.is_dir():
        return source
    raise FileNotFoundError(
        "the dashboard's static files are missing: neither workmatic/_assets (installed "
        "package) nor dashboard/ (source checkout) exists"
    )


def _load_assets() -> dict[str, _Asset]:
    directory = _asset_directory()
    assets = {}
    for name, mimetype in _ASSET_TYPES.items():
        body = (directory / name).read_bytes()
        assets[name] = _Asset(body, hashlib.sha256(body).hexdigest()[:32], mimetype)
    return assets


class DashboardApp:
    """The dashboard as a WSGI application (build it with :func:`create_dashboard_app`).

    :param db: the database to show.
    :param workers: the workers of this process that the dashboard shows and can pause.
    :param auth: ``None``, ``(user, password)`` or a callable ``(environ) -> bool``.
    """

    def __init__(self, db: Database, *, workers: Iterable[Worker] = (), auth: Auth = None) -> None:
        self.db = db
        self.workers: list[Worker] = list(workers)
        self._authenticator = make_authenticator(auth)
        self._assets = _load_assets()
        self.url_map = Map(
            [
                Rule("/", endpoint="index", methods=["GET"]),
                Rule("/static/<name>", endpoint="static", methods=["GET"]),
                Rule("/api/stats", endpoint="stats", methods=["GET"]),
                Rule("/api/jobs", endpoint="jobs", methods=["GET"]),
                Rule("/api/jobs/<job_id>", endpoint="job", methods=["GET"]),
                Rule("/api/jobs/<job_id>/retry", endpoint="retry_job", methods=["POST"]),
                Rule("/api/queues/<queue:queue>/pause", endpoint="pause_queue", methods=["POST"]),
                Rule("/api/queues/<queue:queue>/resume", endpoint="resume_queue", methods=["POST"]),
                Rule("/api/queues/<queue:queue>/retry", endpoint="retry_queue", methods=["POST"]),
                Rule(
                    "/api/workers/<queue:queue>/pause", endpoint="pause_workers", methods=["POST"]
                ),
                Rule(
                    "/api/workers/<queue:queue>/resume",
                    endpoint="resume_workers",
                    methods=["POST"],
                ),
            ],
            merge_slashes=False,
            converters={"queue": _QueueConverter},
        )

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Answer one WSGI request.

        :param environ: the WSGI environ.
        :param start_response: the WSGI ``start_response`` callable.
        :returns: the response body.
        """
        request = Request(environ)
        response = self.dispatch_request(request)
        response.headers.update(SECURITY_HEADERS)
        if "Cache-Control" not in response.headers:
            response.headers["Cache-Control"] = "no-store"
        return response(environ, start_response)

    def dispatch_request(self, request: Request) -> Response:
        """Authenticate, route and run the handler for ``request``; errors become JSON.

        :param request: the request.
        :returns: the response (never raises).
        """
        try:
            refused = self._refuse(request)
            if refused is not None:
                return refused
            if request.environ.get("PATH_INFO", "") == "":
                return self._redirect_to_root(request)
            adapter = self.url_map.bind_to_environ(request.environ)
            endpoint, values = adapter.match()
            if request.method == "POST" and not is_same_origin(request.environ):
                return _error(403, "cross-site request refused")
            response: Response = getattr(self, f"on_{endpoint}")(request, **values)
            return response
        except RequestRedirect as redirect:
            return redirect.get_response(request.environ)
        except MethodNotAllowed as error:
            response = _error(405, "method not allowed")
            response.headers["Allow"] = ", ".join(sorted(error.valid_methods or ()))
            return response
        except HTTPException as error:
            return _error(error.code or 500, error.name.lower())
        except JobNotFoundError as error:
            return _error(404, str(error))
        except ValidationError as error:
            return _error(400, str(error), messages=error.messages)
        except DatabaseError as error:  # locked too long, closed, unreadable
            logger.warning(
                "dashboard request failed: %s %s: %s", request.method, request.path, error
            )
            return _error(503, str(error))
        except Exception:
            logger.exception("dashboard request failed: %s %s", request.method, request.path)
            return _error(500, "internal error (see the server's log)")

    def _refuse(self, request: Request) -> Response | None:
        """Return the refusal for an unauthenticated request, or None to let it in."""
        authenticator = self._authenticator
        if authenticator is None or authenticator(request.environ):
            return None
        if authenticator.challenge is None:
            return _error(403, "forbidden")
        response = _error(401, "authentication required")
        response.headers["WWW-Authenticate"] = authenticator.challenge
        return response

    def _redirect_to_root(self, request: Request) -> Response:
        # One leading slash only: "//host/" would be a redirect to another site.
        location = "/" + quote(request.root_path.lstrip("/"), safe="/:@!$&'()*+,;=~")
        if not location.endswith("/"):
            location += "/"
        query = request.query_string.decode("latin-1")
        if query:
            location += "?" + query
        response = Response(status=308, headers={"Location": location})
        return response

    # --- pages and files

    def on_index(self, request: Request) -> Response:
        """Serve the page.

        :param request: the request.
        :returns: the response.
        """
        return self._send_asset(request, "index.html")

    def on_static(self, request: Request, name: str) -> Response:
        """Serve one of the page's static files (a fixed list; nothing else on disk).

        :param request: the request.
        :param name: the file's name.
        :returns: the response.
        """
        if name == "index.html" or name not in self._assets:
            return _error(404, "not found")
        return self._send_asset(request, name)

    def _send_asset(self, request: Request, name: str) -> Response:
        asset = self._assets[name]
        response = Response(asset.body, content_type=asset.mimetype)
        response.set_etag(asset.etag)
        response.headers["Cache-Control"] = "no-cache"
        return response.make_conditional(request)

    # --- JSON API: reads

    def on_stats(self, request: Request) -> Response:
        """``GET api/stats``: totals, every queue with its pause state, the workers.

        :param request: the request.
        :returns: the response.
        """
        queues = [
            {"name": info.name, "is_paused": info.is_paused, "stats": info.stats.as_dict()}
            for info in self.db.queues()
        ]
        listed = {queue["name"] for queue in queues}
        for queue_name in sorted({worker.queue for worker in self.workers} - listed):
            queues.append(
                {
                    "name": queue_name,
                    "is_paused": self.db.is_queue_paused(queue_name),
                    "stats": self.db.stats(queue_name).as_dict(),
                }
            )
        queues.sort(key=lambda queue: str(queue["name"]))
        return _json(
            {
                "totals": self.db.stats().as_dict(),
                "queues": queues,
                "workers": [worker.info() for worker in self.workers],
                "statuses": list(STATUSES),
                "database": {"path": self.db.path, "durability": self.db.durability},
                "now_ms": int(time.time() * 1000),
            }
        )

    def on_jobs(self, request: Request) -> Response:
        """``GET api/jobs?status=&queue=&limit=&offset=``: one page of jobs, newest first.

        :param request: the request.
        :returns: the response.
        """
        query = _load_query(request.args.lists())
        total = self.db.count_jobs(queue=query["queue"], status=query["status"])
        jobs: Sequence[Job] = []
        if query["offset"] < total:
            jobs = self.db.list_jobs(
                queue=query["queue"],
                status=query["status"],
                limit=query["limit"],
                offset=query["offset"],
            )
        return _json(
            {
                "jobs": [_job_dict(job) for job in jobs],
                "total": total,
                "limit": query["limit"],
                "offset": query["offset"],
                "status": query["status"],
                "queue": query["queue"],
            }
        )

    def on_job(self, request: Request, job_id: str) -> Response:
        """``GET api/jobs/<id>``: one job with every field.

        :param request: the request.
        :param job_id: the job's public id (URL-decoded).
        :returns: the response.
        """
        job = self._get_job(job_id)
        if job is None:
            return _error(404, f"no job with id {job_id!r}")
        return _json({"job": _job_dict(job)})

    # --- JSON API: changes (POST only, same-origin only)

    def on_retry_job(self, request: Request, job_id: str) -> Response:
        """``POST api/jobs/<id>/retry``: a dead or failed job runs again (409 otherwise).

        :param request: the request.
        :param job_id: the job's public id (URL-decoded).
        :returns: the response.
        """
        if not self.db.retry_job(job_id):  # JobNotFoundError: 404
            job = self._get_job(job_id)
            status = job.status if job is not None else "gone"
            return _error(409, f"the job is {status}: only dead or failed jobs can be retried")
        job = self._get_job(job_id)
        return _json({"job": _job_dict(job) if job is not None else None})

    def on_pause_queue(self, request: Request, queue: str) -> Response:
        """``POST api/queues/<queue>/pause``: pause the queue in every process.

        :param request: the request.
        :param queue: the queue's name (URL-decoded; may hold slashes).
        :returns: the response.
        """
        return self._set_queue_paused(queue, paused=True)

    def on_resume_queue(self, request: Request, queue: str) -> Response:
        """``POST api/queues/<queue>/resume``: resume the queue in every process.

        :param request: the request.
        :param queue: the queue's name (URL-decoded; may hold slashes).
        :returns: the response.
        """
        return self._set_queue_paused(queue, paused=False)

    def on_retry_queue(self, request: Request, queue: str) -> Response:
        """``POST api/queues/<queue>/retry``: every dead and failed job of the queue again.

        :param request: the request.
        :param queue: the queue's name (URL-decoded; may hold slashes).
        :returns: the response.
        """
        if not self._is_known_queue(queue):
            return _error(404, f"no queue named {queue!r}")
        retried = self.db.retry_jobs(status=RETRYABLE, queue=queue)
        return _json({"queue": queue, "retried": retried})

    def on_pause_workers(self, request: Request, queue: str) -> Response:
        """``POST api/workers/<queue>/pause``: pause this process's workers of the queue.

        :param request: the request.
        :param queue: the queue's name (URL-decoded; may hold slashes).
        :returns: the response.
        """
        return self._set_workers_paused(queue, paused=True)

    def on_resume_workers(self, request: Request, queue: str) -> Response:
        """``POST api/workers/<queue>/resume``: resume this process's workers of the queue.

        :param request: the request.
        :param queue: the queue's name (URL-decoded; may hold slashes).
        :returns: the response.
        """
        return self._set_workers_paused(queue, paused=False)

    def _set_queue_paused(self, queue: str, *, paused: bool) -> Response:
        if not self._is_known_queue(queue):
            return _error(404, f"no queue named {queue!r}")
        if paused:
            self.db.pause_queue(queue)
        else:
            self.db.resume_queue(queue)
        return _json({"queue": queue, "is_paused": self.db.is_queue_paused(queue)})

    def _set_workers_paused(self, queue: str, *, paused: bool) -> Response:
        workers = [worker for worker in self.workers if worker.queue == queue]
        if not workers:
            return _error(404, f"no worker for queue {queue!r} in this dashboard")
        for worker in workers:
            if paused:
                worker.pause()
            else:
                worker.resume()
        return _json({"queue": queue, "workers": [worker.info() for worker in workers]})

    def _is_known_queue(self, queue: str) -> bool:
        if any(worker.queue == queue for worker in self.workers):
            return True
        return any(info.name == queue for info in self.db.queues())

    def _get_job(self, job_id: str) -> Job | None:
        try:
            return self.db.get_job(job_id)
        except ValidationError:  # not even shaped like an id: no such job
            return None


# --- helpers


def _load_query(items: Iterable[tuple[str, list[str]]]) -> dict[str, Any]:
    """Validate a query string; an empty value means "not given" (the page's "all")."""
    data: dict[str, str] = {}
    for key, values in items:
        if len(values) > 1:
            raise ValidationError({key: ["Give this parameter once."]})
        if values[0] != "":
            data[key] = values[0]
    try:
        loaded: dict[str, Any] = JobListQuerySchema().load(data)
    except marshmallow.ValidationError as error:
        messages = error.messages if isinstance(error.messages, dict) else {"_schema": []}
        raise ValidationError(messages) from error
    return loaded


def _job_dict(job: Job) -> dict[str, Any]:
    """``job.as_dict()``, or a stub naming the problem if this one job cannot be shown."""
    try:
        return job.as_dict()
    except Exception as error:
        logger.warning("cannot show job %r: %s", getattr(job, "id", None), error)
        return {
            "id": str(getattr(job, "id", "")),
            "queue": str(getattr(job, "queue", "")),
            "status": str(getattr(job, "status", "")),
            "broken": f"this job's stored data cannot be read: {error}",
        }


def _json(data: Mapping[str, Any], status: int = 200) -> Response:
    return Response(_dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str, **extra: Any) -> Response:
    return _json({"error": message, **extra}, status=status)


def _dumps(data: Any) -> str:
    """Encode strict JSON (no NaN), with ``<``, ``>`` and ``&`` escaped as ``\\u00XX``."""
    try:
        text = json.dumps(data, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        text = json.dumps(
            _sanitize(data), allow_nan=False, ensure_ascii=False, separators=(",", ":")
        )
    # These characters only ever occur inside JSON strings, where the escapes mean the same.
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _sanitize(value: Any) -> Any:
    """Make any value strict-JSON encodable: odd floats and unknown objects become text."""
    if isinstance(value, dict):
        return {str(key): _sanitize(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitize(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
