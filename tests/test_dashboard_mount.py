"""Mounting the dashboard: the middleware's dispatch, Flask, and the standalone server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from werkzeug.test import Client

import workmatic
from workmatic.dashboard import (
    Dashboard,
    create_dashboard,
    create_dashboard_app,
    create_dashboard_middleware,
)


@pytest.fixture
def dash_db(tmp_path: Path) -> Iterator[workmatic.Database]:
    db = workmatic.create_database(str(tmp_path / "jobs.db"))
    workmatic.create_client(db, "emails").add({"x": 1})
    yield db
    db.close()


def inner_app(environ: Any, start_response: Any) -> list[bytes]:
    """Echo what the wrapped app was given."""
    body = json.dumps(
        {
            "app": "inner",
            "PATH_INFO": environ.get("PATH_INFO"),
            "SCRIPT_NAME": environ.get("SCRIPT_NAME"),
            "QUERY_STRING": environ.get("QUERY_STRING"),
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("X-Inner", "1")])
    return [body]


@pytest.fixture
def client(dash_db: workmatic.Database) -> Client:
    return Client(create_dashboard_middleware(inner_app, dash_db, path="/workmatic"))


# --- the middleware's dispatch


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/workmaticfoo",
        "/workmatic.html",
        "/other/workmatic/",
        "/Workmatic/",
        "/api/stats",
        "//workmatic/",
        "/x/../workmatic/",
    ],
)
def test_other_paths_reach_the_wrapped_app_untouched(client: Client, path: str) -> None:
    response = client.get(
        "/?a=1&b=2",
        environ_overrides={"PATH_INFO": path},
        headers={"Origin": "http://evil.example"},
    )

    assert response.status_code == 200
    assert response.json == {
        "app": "inner",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "a=1&b=2",
    }
    assert response.headers["X-Inner"] == "1"
    # The wrapped app's responses are its own: no dashboard headers added.
    assert "Content-Security-Policy" not in response.headers


def test_wrapped_app_posts_are_not_checked(client: Client) -> None:
    response = client.post("/form", headers={"Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 200
    assert response.json["app"] == "inner"


def test_mount_path_without_slash_redirects(client: Client) -> None:
    plain = client.get("/workmatic")
    with_query = client.get("/workmatic?status=dead")

    assert plain.status_code == 308
    assert plain.headers["Location"] == "/workmatic/"
    assert with_query.headers["Location"] == "/workmatic/?status=dead"


def test_dashboard_under_the_mount(client: Client) -> None:
    page = client.get("/workmatic/")
    stats = client.get("/workmatic/api/stats")
    script = client.get("/workmatic/static/app.js")

    assert page.status_code == 200
    assert page.mimetype == "text/html"
    assert b'src="static/app.js"' in page.data
    assert stats.json["totals"]["total"] == 1
    assert script.mimetype == "text/javascript"


def test_post_under_the_mount(dash_db: workmatic.Database, client: Client) -> None:
    response = client.post(
        "/workmatic/api/queues/emails/pause", headers={"Sec-Fetch-Site": "same-origin"}
    )
    assert response.status_code == 200
    assert dash_db.is_queue_paused("emails")


def test_mount_inside_a_script_name(dash_db: workmatic.Database) -> None:
    seen: dict[str, str] = {}
    dashboard = create_dashboard_app(dash_db)

    def spy(environ: Any, start_response: Any) -> Any:
        seen.update(SCRIPT_NAME=environ["SCRIPT_NAME"], PATH_INFO=environ["PATH_INFO"])
        return dashboard(environ, start_response)

    middleware = create_dashboard_middleware(inner_app, dash_db, path="/workmatic")
    middleware.dashboard = spy  # type: ignore[assignment]
    client = Client(middleware)

    response = client.get("/workmatic/api/stats", environ_overrides={"SCRIPT_NAME": "/app"})
    redirect = client.get("/workmatic", environ_overrides={"SCRIPT_NAME": "/app"})

    assert response.status_code == 200
    assert seen == {"SCRIPT_NAME": "/app/workmatic", "PATH_INFO": ""}
    assert redirect.headers["Location"] == "/app/workmatic/"


def test_non_ascii_mount_path(dash_db: workmatic.Database) -> None:
    client = Client(create_dashboard_middleware(inner_app, dash_db, path="/tâches"))

    response = client.get("/t%C3%A2ches/api/stats")
    redirect = client.get("/t%C3%A2ches")

    assert response.status_code == 200
    assert response.json["totals"]["total"] == 1
    assert redirect.headers["Location"] == "/t%C3%A2ches/"
    assert client.get("/t%C3%A2chesX").json["app"] == "inner"


def test_trailing_slash_in_path_is_ignored(dash_db: workmatic.Database) -> None:
    middleware = create_dashboard_middleware(inner_app, dash_db, path="/ops/jobs/")
    client = Client(middleware)
    assert middleware.path == "/ops/jobs"
    assert client.get("/ops/jobs/api/stats").status_code == 200
    assert client.get("/ops/jobsx").json["app"] == "inner"


@pytest.mark.parametrize("path", ["", "/", "//", "workmatic", "/a?b", "/a#b", "/a//b", 5])
def test_bad_mount_path_is_a_validation_error(dash_db: workmatic.Database, path: Any) -> None:
    with pytest.raises(workmatic.ValidationError) as info:
        create_dashboard_middleware(inner_app, dash_db, path=path)
    assert "path" in info.value.messages


def test_standalone_app_redirects_empty_path(dash_db: workmatic.Database) -> None:
    client = Client(create_dashboard_app(dash_db))
    response = client.get("/", environ_overrides={"PATH_INFO": "", "SCRIPT_NAME": "//evil.example"})
    assert response.status_code == 308
    assert response.headers["Location"] == "/evil.example/"  # never a protocol-relative URL


# --- Flask


def test_flask_mount(dash_db: workmatic.Database) -> None:
    flask = pytest.importorskip("flask")
    app = flask.Flask("mount_test")

    @app.route("/")
    def home() -> str:
        return "flask home"

    @app.route("/workmaticfoo")
    def lookalike() -> str:
        return "flask lookalike"

    app.wsgi_app = create_dashboard_middleware(app.wsgi_app, dash_db)  # type: ignore[method-assign]
    client = app.test_client()

    assert client.get("/").data == b"flask home"
    assert client.get("/workmaticfoo").data == b"flask lookalike"
    assert client.get("/workmatic").status_code == 308
    stats = client.get("/workmatic/api/stats")
    assert stats.status_code == 200
    assert stats.json is not None and stats.json["totals"]["total"] == 1
    assert client.get("/workmatic/").mimetype == "text/html"


# --- the standalone server


def fetch(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> Any:
    """HTTP from an OS thread, so that the gevent hub of this thread keeps serving."""
    from dashboard_helpers import http

    return (
        gevent.get_hub().threadpool.spawn(http, url, method=method, headers=headers).get(timeout=20)
    )


def test_standalone_server_on_a_free_port(dash_db: workmatic.Database) -> None:
    worker = workmatic.create_worker(dash_db, "emails")
    with create_dashboard(dash_db, port=0, workers=[worker]) as dash:
        assert isinstance(dash, Dashboard)
        assert dash.port > 0
        assert dash.url == f"http://127.0.0.1:{dash.port}/"
        assert dash.host == "127.0.0.1"

        status, headers, body = fetch(dash.url + "api/stats")
        page_status, _, page = fetch(dash.url)
        posted, _, _ = fetch(dash.url + "api/workers/emails/pause", method="POST")

    assert status == 200
    assert json.loads(body)["workers"][0]["queue"] == "emails"
    assert headers["X-Frame-Options"] == "DENY"
    assert page_status == 200
    assert b"<title>Workmatic</title>" in page
    assert posted == 200
    assert worker.is_paused


def test_server_binds_loopback_by_default(dash_db: workmatic.Database) -> None:
    with create_dashboard(dash_db, port=0) as dash:
        # Reachable on 127.0.0.1 ...
        assert fetch(dash.url + "api/stats")[0] == 200
        # ... and bound to it alone.
        assert dash._server.address[0] == "127.0.0.1"


def test_close_stops_serving_and_is_idempotent(dash_db: workmatic.Database) -> None:
    dash = create_dashboard(dash_db, port=0)
    port = dash.port
    assert dash.is_serving
    dash.close()
    dash.close()
    assert not dash.is_serving
    with socket.socket() as sock, pytest.raises(OSError):
        sock.settimeout(2)
        sock.connect(("127.0.0.1", port))


def test_serve_forever_returns_on_close(dash_db: workmatic.Database) -> None:
    dash = create_dashboard(dash_db, port=0)
    gevent.spawn_later(0.05, dash.close)
    with gevent.Timeout(5):
        dash.serve_forever()
    assert not dash.is_serving


def test_port_in_use_raises(dash_db: workmatic.Database) -> None:
    with create_dashboard(dash_db, port=0) as dash, pytest.raises(OSError):
        create_dashboard(dash_db, port=dash.port)


@pytest.mark.parametrize("port", [-1, 65536, "3000", 1.5, True])
def test_bad_port_is_a_validation_error(dash_db: workmatic.Database, port: Any) -> None:
    with pytest.raises(workmatic.ValidationError):
        create_dashboard(dash_db, port=port)


def test_lazy_names_and_no_werkzeug_on_import() -> None:
    code = (
        "import sys, workmatic\n"
        "assert 'werkzeug' not in sys.modules, 'import workmatic imported werkzeug'\n"
        "assert 'workmatic.dashboard' not in sys.modules\n"
        "from workmatic import create_dashboard, create_dashboard_app, "
        "create_dashboard_middleware, Dashboard\n"
        "assert 'werkzeug' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
