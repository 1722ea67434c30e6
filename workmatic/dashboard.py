"""The web dashboard: a WSGI app, a middleware that mounts it, and a standalone server.

Three ways to serve it, one app underneath::

    app = workmatic.create_dashboard_app(db, workers=[worker])           # any WSGI server
    flask_app.wsgi_app = workmatic.create_dashboard_middleware(
        flask_app.wsgi_app, db, path="/workmatic", workers=[worker])      # inside your app
    dash = workmatic.create_dashboard(db, port=3000, workers=[worker])    # gevent.pywsgi

The page and its JSON API (``api/stats``, ``api/jobs``, ``api/jobs/<id>``, ``.../retry``,
``api/queues/<queue>/pause|resume|retry``, ``api/workers/<queue>/pause|resume``) use
relative URLs, so the dashboard works under any mount path. Job data is untrusted: the page
renders it as text only, state changes are POST-only and refused for cross-site requests,
and every response carries a strict Content-Security-Policy. See the README's Dashboard
section.

This is the only public module that imports werkzeug; ``import workmatic`` does not.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING

from gevent.event import Event
from gevent.pywsgi import LoggingLogAdapter, WSGIServer

from workmatic._dashboard_app import DashboardApp, JobListQuerySchema
from workmatic._dashboard_security import Auth
from workmatic.exceptions import ValidationError

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from workmatic.database import Database
    from workmatic.worker import Worker

__all__ = [
    "Dashboard",
    "DashboardApp",
    "DashboardMiddleware",
    "JobListQuerySchema",
    "create_dashboard",
    "create_dashboard_app",
    "create_dashboard_middleware",
]

logger = logging.getLogger(__name__)


def create_dashboard_app(
    db: Database, *, workers: Iterable[Worker] = (), auth: Auth = None
) -> DashboardApp:
    """Build the dashboard as a WSGI application.

    Mount it wherever a WSGI app goes; it finds its own URLs relative to ``SCRIPT_NAME``::

        app = workmatic.create_dashboard_app(db, workers=[worker], auth=("ops", "s3cret"))

    :param db: the database to show and control.
    :param workers: workers of this process to show, and to pause and resume.
    :param auth: ``(user, password)`` for HTTP basic auth, or a callable
        ``(environ) -> bool``; None (the default) lets every request in.
    :returns: the WSGI application.
    :raises workmatic.ValidationError: if ``auth`` is neither.
    """
    return DashboardApp(db, workers=workers, auth=auth)


class DashboardMiddleware:
    """Serve the dashboard under ``path``; pass every other request to ``app`` untouched.

    The prefix is moved from ``PATH_INFO`` to ``SCRIPT_NAME`` (as werkzeug's
    ``DispatcherMiddleware`` does). ``/workmatic`` and ``/workmatic/...`` are the
    dashboard's; ``/workmaticfoo`` is not. ``/workmatic`` redirects to ``/workmatic/``.

    :param app: the application to wrap.
    :param dashboard: the dashboard application.
    :param path: the mount path, e.g. ``/workmatic``.
    """

    def __init__(self, app: WSGIApplication, dashboard: DashboardApp, path: str) -> None:
        self.app = app
        self.dashboard = dashboard
        self.path = _check_mount_path(path)
        # PATH_INFO holds the URL's UTF-8 bytes decoded as latin-1 (PEP 3333).
        self._wsgi_path = self.path.encode("utf-8").decode("latin-1")

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Dispatch one request.

        :param environ: the WSGI environ.
        :param start_response: the WSGI ``start_response`` callable.
        :returns: the response body, from the dashboard or from the wrapped app.
        """
        path_info: str = environ.get("PATH_INFO", "") or ""
        prefix = self._wsgi_path
        if path_info != prefix and not path_info.startswith(prefix + "/"):
            return self.app(environ, start_response)
        inner = dict(environ)
        inner["SCRIPT_NAME"] = (environ.get("SCRIPT_NAME", "") or "").rstrip("/") + prefix
        inner["PATH_INFO"] = path_info[len(prefix) :]
        return self.dashboard(inner, start_response)


def create_dashboard_middleware(
    app: WSGIApplication,
    db: Database,
    *,
    path: str = "/workmatic",
    workers: Iterable[Worker] = (),
    auth: Auth = None,
) -> DashboardMiddleware:
    """Wrap a WSGI application so that the dashboard answers under ``path``.

    Flask::

        app.wsgi_app = workmatic.create_dashboard_middleware(app.wsgi_app, db)

    Django (``wsgi.py``)::

        application = workmatic.create_dashboard_middleware(get_wsgi_application(), db)

    :param app: the WSGI application that gets every request outside ``path``.
    :param db: the database to show and control.
    :param path: the mount path: starts with ``/``, no trailing ``/`` (default
        ``/workmatic``).
    :param workers: workers of this process to show, and to pause and resume.
    :param auth: ``(user, password)`` for HTTP basic auth, or a callable
        ``(environ) -> bool``; it guards every URL under ``path``.
    :returns: the wrapping WSGI application.
    :raises workmatic.ValidationError: if ``path`` or ``auth`` is invalid.
    """
    dashboard = create_dashboard_app(db, workers=workers, auth=auth)
    return DashboardMiddleware(app, dashboard, path)


class Dashboard:
    """The dashboard served by :class:`gevent.pywsgi.WSGIServer` (see :func:`create_dashboard`).

    Serving happens in greenlets of the calling thread's gevent hub: a program with nothing
    else to do keeps the hub running with :meth:`serve_forever` (or ``gevent.wait()``).

    :param app: the WSGI application to serve.
    :param host: the address to bind.
    :param port: the port to bind; 0 picks a free one.
    """

    def __init__(self, app: WSGIApplication, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self._server = WSGIServer(
            (host, port),
            app,
            log=LoggingLogAdapter(logger, logging.DEBUG),
            error_log=LoggingLogAdapter(logger, logging.ERROR),
        )
        try:
            self._server.start()
        except BaseException:
            self._server.close()
            raise
        self._closed = False
        self._stopped = Event()
        logger.info("dashboard listening on %s", self.url)

    @property
    def port(self) -> int:
        """The port the server listens on (the one picked when created with ``port=0``)."""
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        """The dashboard's URL, e.g. ``http://127.0.0.1:3000/``."""
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    @property
    def is_serving(self) -> bool:
        """True until :meth:`close`."""
        return not self._closed

    def serve_forever(self) -> None:
        """Block the calling greenlet until :meth:`close` is called (from another greenlet)."""
        self._stopped.wait()

    def close(self, timeout: float = 1.0) -> None:
        """Stop listening and end open requests within ``timeout`` seconds (idempotent).

        :param timeout: seconds to let requests in progress finish.
        """
        if self._closed:
            return
        self._closed = True
        self._server.stop(timeout=timeout)
        self._stopped.set()
        logger.info("dashboard on port %s closed", self._server.server_port)

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "serving"
        return f"<Dashboard {self.url} {state}>"


def create_dashboard(
    db: Database,
    *,
    host: str = "127.0.0.1",
    port: int = 3000,
    workers: Iterable[Worker] = (),
    auth: Auth = None,
) -> Dashboard:
    """Serve the dashboard on its own port with gevent's WSGI server, in greenlets.

    Returns once the port is bound; the server runs while the gevent hub runs::

        with workmatic.create_dashboard(db, port=0, workers=[worker]) as dash:
            print("dashboard at", dash.url)
            dash.serve_forever()

    :param db: the database to show and control.
    :param host: the address to bind; ``127.0.0.1`` (this machine only) by default.
        Bind ``0.0.0.0`` only behind ``auth=`` or a trusted network.
    :param port: the port (default 3000); 0 picks a free port (see ``.port``).
    :param workers: workers of this process to show, and to pause and resume.
    :param auth: ``(user, password)`` for HTTP basic auth, or a callable
        ``(environ) -> bool``.
    :returns: the running server: ``.url``, ``.port``, ``.close()``; a context manager.
    :raises workmatic.ValidationError: if ``port`` or ``auth`` is invalid.
    :raises OSError: if the address cannot be bound.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValidationError({"port": ["Must be an integer from 0 to 65535."]})
    app = create_dashboard_app(db, workers=workers, auth=auth)
    return Dashboard(app, host, port)


def _check_mount_path(path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/") or path.rstrip("/") == "":
        raise ValidationError({"path": ["Must start with '/' and name a path, e.g. /workmatic."]})
    if "?" in path or "#" in path or "//" in path:
        raise ValidationError({"path": ["Must be a plain path without '?', '#' or '//'."]})
    return path.rstrip("/")
