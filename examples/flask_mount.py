"""The dashboard inside a Flask app, at /workmatic, next to the app's own routes.

The app enqueues a job per sign-up; a worker in the same process sends the welcome
e-mails; the dashboard shows both. Served by gevent's WSGI server::

    python examples/flask_mount.py [--db jobs.db] [--port 5000] [--auth ops:s3cret]
    curl -X POST 'http://127.0.0.1:5000/signup?email=ann@example.com'
    open http://127.0.0.1:5000/workmatic/

The one line that mounts the dashboard::

    app.wsgi_app = workmatic.create_dashboard_middleware(app.wsgi_app, db, path="/workmatic")
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

import gevent
import gevent.event
import gevent.pywsgi
from flask import Flask, jsonify, request

import workmatic


def create_app(db: workmatic.Database, *, auth: tuple[str, str] | None = None) -> Flask:
    """Build the Flask app: a sign-up route that enqueues, and the dashboard mount."""
    app = Flask(__name__)
    emails = workmatic.create_client(db, "emails")
    worker = workmatic.create_worker(db, "emails", concurrency=4)

    @worker.process
    def send_welcome(job: workmatic.Job) -> dict[str, Any]:
        gevent.sleep(0.2)  # stands for the SMTP round trip
        return {"sent_to": job.payload["email"]}

    @app.get("/")
    def home() -> Any:
        return jsonify(
            app="flask_mount example", dashboard="/workmatic/", jobs=emails.stats().as_dict()
        )

    @app.post("/signup")
    def signup() -> Any:
        email = request.args.get("email", "")
        if "@" not in email:
            return jsonify(error="give ?email=someone@example.com"), 400
        job_id = emails.add({"email": email}, key=email)  # one pending welcome per address
        return jsonify(job_id=job_id), 202

    app.wsgi_app = workmatic.create_dashboard_middleware(  # type: ignore[method-assign]
        app.wsgi_app, db, path="/workmatic", workers=[worker], auth=auth
    )
    app.extensions["workmatic_worker"] = worker
    return app


def main(argv: list[str] | None = None) -> int:
    """Serve the Flask app (and its dashboard) with gevent until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="jobs.db")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000, help="0 picks a free port")
    parser.add_argument("--auth", help="user:password for HTTP basic auth on the dashboard")
    parser.add_argument("--duration", type=float, default=0, help="stop after N s (0: never)")
    options = parser.parse_args(argv)
    auth: tuple[str, str] | None = None
    if options.auth:
        user, _, password = options.auth.partition(":")
        auth = (user, password)

    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGINT, stop.set)
    gevent.signal_handler(signal.SIGTERM, stop.set)
    with workmatic.create_database(options.db) as db:
        app = create_app(db, auth=auth)
        worker: workmatic.Worker = app.extensions["workmatic_worker"]
        worker.start()
        server = gevent.pywsgi.WSGIServer((options.host, options.port), app)
        server.start()
        print(f"Flask app on http://{options.host}:{server.server_port}/", flush=True)
        print(f"dashboard: http://{options.host}:{server.server_port}/workmatic/", flush=True)
        stop.wait(options.duration or None)
        server.stop(timeout=5)
        worker.stop(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
