"""Helpers for the dashboard tests, and a small dashboard server to run as a subprocess.

Run as a script, it serves the dashboard of a database file and prints its URL on the
first line of stdout, then serves until SIGTERM/SIGINT or until stdin closes::

    python tests/dashboard_helpers.py --db jobs.db [--flask] [--worker emails]

``--flask`` mounts the dashboard at ``/workmatic`` inside a Flask app (the shape of a real
deployment); without it the standalone server serves it at ``/``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HELPER = Path(__file__).resolve()


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, step: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(step)


class Running:
    """A program under test: ``proc``, the ``url`` it printed, and its output so far.

    Unpacks as ``(proc, url)``. Its stdout and stderr are drained by threads from the start
    (so a chatty program never blocks on a full pipe, and no line is lost in a reader's
    buffer) into :meth:`stdout` and :meth:`stderr`; :meth:`wait_url` finds the URL there.
    """

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.url = ""
        self._out: list[str] = []
        self._err: list[str] = []
        self._changed = threading.Condition()
        self._open = 2  # streams not yet at their end
        self._threads = [
            threading.Thread(target=self._drain, args=(stream, sink), daemon=True)
            for stream, sink in ((proc.stdout, self._out), (proc.stderr, self._err))
        ]
        for thread in self._threads:
            thread.start()

    def _drain(self, stream: Any, sink: list[str]) -> None:
        try:
            for line in iter(stream.readline, ""):
                with self._changed:
                    sink.append(line)
                    self._changed.notify_all()
        finally:
            with self._changed:
                self._open -= 1
                self._changed.notify_all()

    def wait_url(self, timeout: float = 20.0, *, from_stderr: bool = False) -> str:
        """Wait for the first URL the program prints on stdout (or stderr); fail, with its
        output, if none comes within ``timeout`` seconds or the program closes its output."""
        sink = self._err if from_stderr else self._out
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in sink[seen:]:
                    for word in line.split():
                        if word.startswith("http://"):
                            self.url = word.rstrip(".,;)")
                            return self.url
                seen = len(sink)
                left = deadline - time.monotonic()
                if left <= 0 or self._open == 0:
                    break
                self._changed.wait(left)
        self.proc.kill()
        self.proc.wait(timeout=5)
        self.join()
        raise AssertionError(
            f"no URL printed by {self.proc.args!r}\nstdout: {self.stdout()}\n"
            f"stderr: {self.stderr()}"
        )

    def __iter__(self) -> Iterator[Any]:
        return iter((self.proc, self.url))

    def join(self) -> None:
        """Wait for the output threads (after the process exited)."""
        for thread in self._threads:
            thread.join(timeout=10)

    def stdout(self) -> str:
        return "".join(self._out)

    def stderr(self) -> str:
        return "".join(self._err)


@contextlib.contextmanager
def running(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stop_signal: int = signal.SIGTERM,
    url_from_stderr: bool = False,
) -> Iterator[Running]:
    """Start a program that prints its URL, yield it as :class:`Running`, then stop it."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(
        list(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=str(cwd or ROOT),
    )
    server = None
    try:
        server = Running(proc)
        server.wait_url(from_stderr=url_from_stderr)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(stop_signal)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if server is not None:
            server.join()
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            if stream is not None:
                stream.close()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def http(
    url: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    follow_redirects: bool = True,
) -> tuple[int, dict[str, str], bytes]:
    """Make a blocking HTTP request; return (status, headers, body) even for 3xx-5xx."""
    request = urllib.request.Request(url, method=method, headers=dict(headers or {}))
    handlers = [] if follow_redirects else [_NoRedirect()]
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def free_port() -> int:
    """Return a TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", required=True)
    parser.add_argument("--flask", action="store_true", help="mount at /workmatic in Flask")
    parser.add_argument("--worker", action="append", default=[], help="a (stopped) worker")
    parser.add_argument("--auth", help="user:password for HTTP basic auth")
    options = parser.parse_args(argv)
    auth: tuple[str, str] | None = None
    if options.auth:
        user, _, password = options.auth.partition(":")
        auth = (user, password)

    import gevent
    import gevent.event
    import gevent.pywsgi

    import workmatic

    db = workmatic.create_database(options.db)
    workers = [workmatic.create_worker(db, queue) for queue in options.worker]
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)

    if options.flask:
        import flask

        app = flask.Flask("dashboard_test_app")

        @app.route("/")
        def home() -> str:
            return "flask home"

        app.wsgi_app = workmatic.create_dashboard_middleware(  # type: ignore[method-assign]
            app.wsgi_app, db, path="/workmatic", workers=workers, auth=auth
        )
        server = gevent.pywsgi.WSGIServer(("127.0.0.1", 0), app, log=None)
        server.start()
        print(f"http://127.0.0.1:{server.server_port}/workmatic/", flush=True)
        close: Callable[[], None] = server.stop
    else:
        dash = workmatic.create_dashboard(db, port=0, workers=workers, auth=auth)
        print(dash.url, flush=True)
        close = dash.close

    def watch_stdin() -> None:
        # The test closes our stdin when it goes away: never outlive it.
        gevent.get_hub().threadpool.apply(sys.stdin.read)
        stop.set()

    gevent.spawn(watch_stdin)
    stop.wait()
    close()
    db.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(_serve())
