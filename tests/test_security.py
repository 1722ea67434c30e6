"""Security: the dashboard's auth cannot be bypassed through path tricks under its mount,
cross-site POSTs are refused, every response carries restrictive headers, and the CSV
export can keep cells from being read as spreadsheet formulas.

Path tricks are sent twice: through werkzeug's test client, and as raw HTTP request lines
to a real ``gevent.pywsgi`` server (which decodes the path itself, as production servers
do), so no client-side normalisation hides a bypass.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent.pywsgi
import gevent.socket
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import Client

import workmatic
from workmatic import cli

MOUNT = "/workmatic"
FALLBACK_BODY = b"the host application"
TRICKS = [
    "/workmatic",
    "/workmatic/",
    "/workmatic/api/stats",
    "/workmatic//api/stats",
    "/workmatic///api/stats",
    "/workmatic/%2Fapi/stats",
    "/workmatic%2Fapi%2Fstats",
    "/workmatic%2fapi/stats",
    "/workmatic/./api/stats",
    "/workmatic/api/./stats",
    "/workmatic/../workmatic/api/stats",
    "/x/../workmatic/api/stats",
    "/workmatic/static/../api/stats",
    "/workmatic/static/%2e%2e/api/stats",
    "/workmatic/api/jobs/%2e%2e/stats",
    "/workmatic/api/jobs/..%2Fstats",
    "/workmaticX",
    "/workmaticX/api/stats",
    "/workmatic-admin/api/stats",
    "/workmatic.json",
    "/WORKMATIC/api/stats",
    "/Workmatic/api/stats",
    "/workmatic;x=1/api/stats",
    "/workmatic;/api/stats",
    "/workmatic/api/stats;x=1",
    "/workmatic/api;x/stats",
    "/workmatic/api/stats%00",
    "/workmatic%00/api/stats",
    "/workmatic%20/api/stats",
    "/workmatic\\api\\stats",
    "/workmatic/api/jobs?status=dead",
    "/workmatic/api/jobs/x/retry",
    "/workmatic/api/queues/q/pause",
    "/%77orkmatic/api/stats",
    "//workmatic/api/stats",
    "/workmatic/static/app.js",
    "/workmatic/static/..%2F..%2Fpyproject.toml",
]
STATE_CHANGES = [
    "/workmatic/api/queues/q/pause",
    "/workmatic/api/queues/q/resume",
    "/workmatic/api/queues/q/retry",
    "/workmatic/api/workers/q/pause",
    "/workmatic/api/workers/q/resume",
]


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def token_auth(environ: Any) -> bool:
    return bool(environ.get("HTTP_X_TOKEN") == "letmein")


AUTHS: dict[str, tuple[Any, dict[str, str], int]] = {
    # name: (auth option, good credentials, status of a refusal)
    "basic": (("admin", "secret"), basic("admin", "secret"), 401),
    "callable": (token_auth, {"X-Token": "letmein"}, 403),
}


def fallback(environ: Any, start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [FALLBACK_BODY]


@pytest.fixture
def sec_db(tmp_path: Path) -> Iterator[workmatic.Database]:
    db = workmatic.create_database(str(tmp_path / "jobs.db"))
    client = workmatic.create_client(db, "q")
    client.add({"secret": "payload-of-a-job"})
    yield db
    db.close()


def is_dashboard(headers: Any) -> bool:
    return "Content-Security-Policy" in headers


def check_refused_or_passed_on(status: int, headers: Any, body: bytes, refusal: int) -> None:
    """Without credentials: the dashboard refuses, or the request went to the host app,
    or nothing matched; never dashboard content."""
    assert b"payload-of-a-job" not in body
    assert b'"total"' not in body
    if is_dashboard(headers):
        assert status == refusal, (status, body[:200])
    else:
        assert status in (200, 400, 404) and (status != 200 or body == FALLBACK_BODY), (
            status,
            body[:200],
        )


@pytest.mark.parametrize("auth_name", sorted(AUTHS))
@pytest.mark.parametrize("path", TRICKS)
def test_path_tricks_never_bypass_auth(
    sec_db: workmatic.Database, auth_name: str, path: str
) -> None:
    auth, good, refusal = AUTHS[auth_name]
    app = workmatic.create_dashboard_middleware(fallback, sec_db, path=MOUNT, auth=auth)
    client = Client(app)
    for method in ("GET", "POST", "HEAD"):
        response = client.open(path, method=method, headers={"Sec-Fetch-Site": "same-origin"})
        check_refused_or_passed_on(
            response.status_code, response.headers, response.get_data(), refusal
        )
    wrong = basic("admin", "wrong") if auth_name == "basic" else {"X-Token": "nope"}
    response = client.get(path, headers=wrong)
    check_refused_or_passed_on(response.status_code, response.headers, response.get_data(), refusal)
    assert not sec_db.is_queue_paused("q")
    # With the right credentials the real path works (the refusal above was the auth).
    assert client.get("/workmatic/api/stats", headers=good).status_code == 200


@pytest.fixture
def server(sec_db: workmatic.Database) -> Iterator[tuple[str, int]]:
    app = workmatic.create_dashboard_middleware(
        fallback, sec_db, path=MOUNT, auth=("admin", "secret")
    )
    wsgi = gevent.pywsgi.WSGIServer(("127.0.0.1", 0), app, log=None, error_log=None)
    wsgi.start()
    yield "127.0.0.1", wsgi.server_port
    wsgi.stop(timeout=1)


def raw_request(address: tuple[str, int], target: str, extra: str = "") -> tuple[int, str, bytes]:
    """Send one raw HTTP/1.0 request line (no client-side normalisation at all)."""
    sock = gevent.socket.create_connection(address, timeout=10)
    try:
        sock.sendall(f"GET {target} HTTP/1.0\r\nHost: localhost\r\n{extra}\r\n".encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    return int(lines[0].split()[1]), "\n".join(lines[1:]), body


@pytest.mark.parametrize("path", TRICKS)
def test_path_tricks_over_real_http_never_bypass_auth(server: tuple[str, int], path: str) -> None:
    status, headers, body = raw_request(server, path)
    dashboard = "Content-Security-Policy" in headers
    assert b"payload-of-a-job" not in body and b'"total"' not in body
    if dashboard:
        assert status == 401, (status, body[:200])
    else:
        assert status in (200, 400, 404) and (status != 200 or body == FALLBACK_BODY)
    good = "Authorization: " + basic("admin", "secret")["Authorization"] + "\r\n"
    assert raw_request(server, "/workmatic/api/stats", good)[0] == 200


# --- cross-site requests


CROSS_SITE = [
    {"Origin": "https://evil.example"},
    {"Origin": "http://localhost.evil.example"},
    {"Origin": "null"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Sec-Fetch-Site": "cross-site", "Origin": "http://localhost"},
    {"Sec-Fetch-Site": "none", "Origin": "https://evil.example"},
]


@pytest.mark.parametrize(
    "headers", CROSS_SITE, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items())
)
@pytest.mark.parametrize("path", STATE_CHANGES)
def test_cross_site_posts_are_refused(
    sec_db: workmatic.Database, headers: dict[str, str], path: str
) -> None:
    sec_db.pause_queue("q")  # so that "resume" would show too
    app = workmatic.create_dashboard_middleware(fallback, sec_db, path=MOUNT, auth=("a", "b"))
    response = Client(app).post(path, headers={**headers, **basic("a", "b")})
    assert response.status_code == 403, response.get_data()
    assert "cross-site" in response.get_json()["error"]
    assert sec_db.is_queue_paused("q")  # nothing changed


def test_retry_of_a_job_is_refused_cross_site(sec_db: workmatic.Database) -> None:
    client = workmatic.create_client(sec_db, "q")
    job_id = client.add({"x": 1})
    app = workmatic.create_dashboard_app(sec_db)
    response = Client(app).post(
        f"/api/jobs/{job_id}/retry", headers={"Origin": "https://evil.example"}
    )
    assert response.status_code == 403


def test_same_origin_posts_are_accepted(sec_db: workmatic.Database) -> None:
    app = workmatic.create_dashboard_middleware(fallback, sec_db, path=MOUNT)
    client = Client(app)
    response = client.post(
        "/workmatic/api/queues/q/pause", headers={"Sec-Fetch-Site": "same-origin"}
    )
    assert response.status_code == 200 and sec_db.is_queue_paused("q")
    response = client.post("/workmatic/api/queues/q/resume", headers={"Origin": "http://localhost"})
    assert response.status_code == 200 and not sec_db.is_queue_paused("q")


@pytest.mark.parametrize("path", [p.replace("/workmatic", "") for p in STATE_CHANGES])
def test_state_changes_need_post(sec_db: workmatic.Database, path: str) -> None:
    response = Client(workmatic.create_dashboard_app(sec_db)).get(path)
    assert response.status_code == 405
    assert not sec_db.is_queue_paused("q")


# --- response headers


def check_headers(headers: Any) -> None:
    assert headers["X-Content-Type-Options"] == "nosniff"
    csp = headers["Content-Security-Policy"]
    directives = {part.split()[0]: part.split()[1:] for part in csp.split(";") if part.strip()}
    assert directives["default-src"] == ["'self'"]
    assert directives["object-src"] == ["'none'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives.get("base-uri") in (["'none'"], ["'self'"])
    for sources in directives.values():
        assert "*" not in sources and "'unsafe-inline'" not in sources
        assert "'unsafe-eval'" not in sources and "http:" not in sources


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/workmatic/", {}),
        ("/workmatic", {}),
        ("/workmatic/api/stats", {}),
        ("/workmatic/api/jobs?limit=0", {}),
        ("/workmatic/api/jobs/unknown", {}),
        ("/workmatic/static/app.js", {}),
        ("/workmatic/static/none.css", {}),
        ("/workmatic/api/stats", {"Authorization": "Basic bad"}),
    ],
)
def test_every_response_carries_nosniff_and_a_restrictive_csp(
    sec_db: workmatic.Database, path: str, headers: dict[str, str]
) -> None:
    good = headers or basic("admin", "secret")
    app = workmatic.create_dashboard_middleware(
        fallback, sec_db, path=MOUNT, auth=("admin", "secret")
    )
    response = Client(app).get(path, headers=good)
    check_headers(response.headers)


# --- CSV export and spreadsheet formulas

TEXT_COLUMNS = {"public_id", "queue", "payload", "last_error", "result", "key"}
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def test_export_help_names_the_formula_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["export", "--help"]) == 0
    assert "--safe-formulas" in capsys.readouterr().out


danger = st.tuples(
    st.sampled_from(["=", "+", "-", "@", "\t", "\r", "'=", "''+", "", "a"]),
    st.text(max_size=12),
).map("".join)


def test_safe_formulas_keeps_every_text_cell_from_being_a_formula(tmp_path: Path) -> None:
    counter = iter(range(10**9))

    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        queue=danger.filter(lambda q: 0 < len(q) <= 255),
        key=danger.filter(lambda k: 0 < len(k) <= 255),
        error=danger,
        payload=st.one_of(danger, st.integers(-5, 5), st.lists(danger, max_size=2)),
    )
    def check(queue: str, key: str, error: str, payload: Any) -> None:
        n = next(counter)
        source = tmp_path / f"in{n}.csv"
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["payload", "queue", "key", "last_error", "status"])
        writer.writerow([json.dumps(payload), queue, key, error, "dead"])
        source.write_text(buffer.getvalue(), encoding="utf-8")
        db = tmp_path / f"db{n}.db"
        assert cli.main(["import", str(db), str(source)]) == 0
        safe, plain = tmp_path / f"safe{n}.csv", tmp_path / f"plain{n}.csv"
        assert cli.main(["export", str(db), str(safe), "--safe-formulas"]) == 0
        assert cli.main(["export", str(db), str(plain)]) == 0
        with safe.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                for name in TEXT_COLUMNS:
                    cell = row[name] or ""
                    assert not cell.startswith(FORMULA_STARTS), (name, cell)
        # import --safe-formulas undoes the escaping exactly.
        copy = tmp_path / f"copy{n}.db"
        assert cli.main(["import", str(copy), str(safe), "--safe-formulas"]) == 0
        with workmatic.create_database(str(db)) as a, workmatic.create_database(str(copy)) as b:
            assert [j.as_dict() for j in a.iter_jobs()] == [j.as_dict() for j in b.iter_jobs()]

    check()
