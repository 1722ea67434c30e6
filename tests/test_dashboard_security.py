"""The dashboard's safety rules: headers, cross-site refusal, auth, static files, escaping."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

import workmatic
from workmatic._dashboard_app import _asset_directory
from workmatic.dashboard import create_dashboard_app, create_dashboard_middleware

ROOT = Path(__file__).resolve().parent.parent
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin"}


@pytest.fixture
def dash_db(tmp_path: Path) -> Iterator[workmatic.Database]:
    db = workmatic.create_database(str(tmp_path / "jobs.db"))
    workmatic.create_client(db, "emails").add({"x": 1})
    yield db
    db.close()


@pytest.fixture
def client(dash_db: workmatic.Database) -> Client:
    return Client(create_dashboard_app(dash_db))


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


# --- response headers


def check_security_headers(headers: Any) -> None:
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "same-origin"
    assert "Access-Control-Allow-Origin" not in headers


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 200),
        ("GET", "/static/app.js", 200),
        ("GET", "/static/style.css", 200),
        ("GET", "/static/nothing.js", 404),
        ("GET", "/api/stats", 200),
        ("GET", "/api/jobs?limit=0", 400),
        ("GET", "/api/jobs/nope", 404),
        ("POST", "/api/stats", 405),
        ("POST", "/api/queues/emails/pause", 403),
    ],
)
def test_every_response_has_the_security_headers(
    client: Client, method: str, path: str, status: int
) -> None:
    headers = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
    response = client.open(path, method=method, headers=headers)
    assert response.status_code == status
    check_security_headers(response.headers)


def test_redirect_unauthorized_and_not_modified_have_the_headers(
    dash_db: workmatic.Database,
) -> None:
    app = create_dashboard_middleware(lambda e, s: [], dash_db, auth=("ops", "pw"))
    redirect = Client(app).get("/workmatic", headers=basic("ops", "pw"))
    unauthorized = Client(app).get("/workmatic/")
    first = Client(app).get("/workmatic/static/app.js", headers=basic("ops", "pw"))
    cached = Client(app).get(
        "/workmatic/static/app.js",
        headers={**basic("ops", "pw"), "If-None-Match": first.headers["ETag"]},
    )
    assert (redirect.status_code, unauthorized.status_code, cached.status_code) == (308, 401, 304)
    for response in (redirect, unauthorized, cached):
        check_security_headers(response.headers)


def test_no_cors_even_when_asked(client: Client) -> None:
    preflight = client.options(
        "/api/queues/emails/pause",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    read = client.get("/api/stats", headers={"Origin": "http://evil.example"})
    assert preflight.status_code == 405
    for response in (preflight, read):
        assert not any(h.lower().startswith("access-control-") for h, _ in response.headers.items())


# --- cross-site request refusal


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Sec-Fetch-Site": "same-origin"}, 200),
        ({"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"}, 200),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Sec-Fetch-Site": "same-site"}, 403),
        ({"Sec-Fetch-Site": "none"}, 403),
        ({"Sec-Fetch-Site": "cross-site", "Origin": "http://localhost"}, 403),
        ({"Origin": "http://localhost"}, 200),
        ({"Origin": "https://localhost"}, 200),
        ({"Origin": "http://localhost:80"}, 200),
        ({"Origin": "http://localhost:8080"}, 403),
        ({"Origin": "http://evil.example"}, 403),
        ({"Origin": "http://localhost.evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Origin": "file://"}, 403),
        ({"Origin": "http://[::1"}, 403),
        ({}, 200),
    ],
    ids=[
        "fetch-same-origin",
        "fetch-same-origin-with-origin",
        "fetch-cross-site",
        "fetch-same-site",
        "fetch-none",
        "fetch-wins-over-origin",
        "origin-own-host",
        "origin-own-host-https",
        "origin-default-port",
        "origin-other-port",
        "origin-other-host",
        "origin-suffix-trick",
        "origin-null",
        "origin-file",
        "origin-malformed",
        "no-header-curl",
    ],
)
def test_state_changes_refused_for_cross_site_requests(
    dash_db: workmatic.Database, client: Client, headers: dict[str, str], status: int
) -> None:
    response = client.post("/api/queues/emails/pause", headers=headers)

    assert response.status_code == status
    assert dash_db.is_queue_paused("emails") is (status == 200)
    if status == 403:
        assert "cross-site" in response.json["error"]


def test_origin_check_uses_the_request_host(dash_db: workmatic.Database, client: Client) -> None:
    own = client.post(
        "/api/queues/emails/pause",
        base_url="http://dash.example:8080",
        headers={"Origin": "http://dash.example:8080"},
    )
    other = client.post(
        "/api/queues/emails/resume",
        base_url="http://dash.example:8080",
        headers={"Origin": "http://dash.example"},
    )
    assert own.status_code == 200
    assert other.status_code == 403
    assert dash_db.is_queue_paused("emails")


@pytest.mark.parametrize(
    "path",
    ["/api/jobs/x/retry", "/api/queues/emails/retry", "/api/workers/emails/pause"],
)
def test_every_post_route_checks_the_origin(client: Client, path: str) -> None:
    response = client.post(path, headers={"Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 403


def test_reads_need_no_origin_check(client: Client) -> None:
    assert client.get("/api/stats", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200


# --- authentication


AUTH_PATHS = [
    "/",
    "/static/app.js",
    "/static/style.css",
    "/api/stats",
    "/api/jobs",
    "/api/jobs/abc",
    "//api/stats",
    "/static/../api/stats",
    "/./api/stats",
    "/api/../api/stats",
    "/%2e%2e/api/stats",
    "/api%2Fstats",
    "/nothing",
]


@pytest.mark.parametrize("path", AUTH_PATHS)
def test_basic_auth_guards_every_path(dash_db: workmatic.Database, path: str) -> None:
    client = Client(create_dashboard_app(dash_db, auth=("ops", "s3cret")))

    anonymous = client.get(path)
    wrong = client.get(path, headers=basic("ops", "wrong"))

    for response in (anonymous, wrong):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic ")
        assert b"totals" not in response.data
        assert b"<script" not in response.data


@pytest.mark.parametrize(
    "path",
    [
        "/workmatic",
        "/workmatic/",
        "/workmatic/api/stats",
        "/workmatic//api/stats",
        "/workmatic/./api/stats",
        "/workmatic/static/../api/stats",
        "/workmatic/%2e%2e/workmatic/api/stats",
        "/workmatic%2Fapi/stats",
        "/workmatic/api%2Fstats",
    ],
)
def test_basic_auth_guards_every_path_under_the_mount(
    dash_db: workmatic.Database, path: str
) -> None:
    def inner(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"inner app"]

    client = Client(create_dashboard_middleware(inner, dash_db, auth=("ops", "s3cret")))

    response = client.get(path)

    assert response.status_code == 401, response.data
    assert b"totals" not in response.data


def test_basic_auth_with_the_right_credentials(dash_db: workmatic.Database) -> None:
    client = Client(create_dashboard_app(dash_db, auth=("ops", "s3cret")))
    assert client.get("/api/stats", headers=basic("ops", "s3cret")).status_code == 200
    assert client.get("/", headers=basic("ops", "s3cret")).status_code == 200


def test_basic_auth_with_unicode_and_colon_in_password(dash_db: workmatic.Database) -> None:
    client = Client(create_dashboard_app(dash_db, auth=("opé", "pa:ss✓")))
    assert client.get("/api/stats", headers=basic("opé", "pa:ss✓")).status_code == 200
    assert client.get("/api/stats", headers=basic("opé", "pa:ss")).status_code == 401


@pytest.mark.parametrize(
    "header",
    [
        "Basic",
        "Basic !!!notbase64",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Bearer " + base64.b64encode(b"ops:s3cret").decode(),
        "Basic " + base64.b64encode(b"ops:s3cret").decode() + "x",
        "Basic " + base64.b64encode(b"ops:s3cret\x00").decode(),
        "Basic " + base64.b64encode(b"OPS:s3cret").decode(),
    ],
)
def test_basic_auth_malformed_headers_are_401(dash_db: workmatic.Database, header: str) -> None:
    client = Client(create_dashboard_app(dash_db, auth=("ops", "s3cret")))
    assert client.get("/api/stats", headers={"Authorization": header}).status_code == 401


def test_callable_auth(dash_db: workmatic.Database) -> None:
    seen: list[str] = []

    def allow(environ: Any) -> bool:
        seen.append(environ["PATH_INFO"])
        return bool(environ.get("HTTP_X_TOKEN") == "ok")

    client = Client(create_dashboard_app(dash_db, auth=allow))

    denied = client.get("/api/stats")
    allowed = client.get("/api/stats", headers={"X-Token": "ok"})

    assert denied.status_code == 403
    assert "WWW-Authenticate" not in denied.headers
    assert allowed.status_code == 200
    assert seen == ["/api/stats", "/api/stats"]


def test_callable_auth_that_raises_denies(dash_db: workmatic.Database) -> None:
    def broken(environ: Any) -> bool:
        raise RuntimeError("auth backend down")

    client = Client(create_dashboard_app(dash_db, auth=broken))
    assert client.get("/api/stats").status_code == 403


@pytest.mark.parametrize(
    "auth",
    [("ops",), ("ops", "pw", "x"), ("", "pw"), ("a:b", "pw"), ("ops", ""), (1, 2), "ops:pw", 42],
    ids=["one", "three", "empty-user", "colon-user", "empty-password", "ints", "string", "int"],
)
def test_bad_auth_option_is_a_validation_error(dash_db: workmatic.Database, auth: Any) -> None:
    with pytest.raises(workmatic.ValidationError) as info:
        create_dashboard_app(dash_db, auth=auth)
    assert "auth" in info.value.messages


# --- static files


@pytest.mark.parametrize(
    "path",
    [
        "/static/../pyproject.toml",
        "/static/..%2F..%2Fpyproject.toml",
        "/static/%2e%2e/pyproject.toml",
        "/static/index.html",
        "/static/",
        "/static/.",
        "/static/app.js/",
        "/static/APP.JS",
        "/static//etc/passwd",
        "/static/%2Fetc%2Fpasswd",
        "/app.js",
        "/index.html",
    ],
)
def test_static_serves_only_the_dashboard_files(client: Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code in (404, 308)
    assert b"[project]" not in response.data
    assert b"root:" not in response.data


@pytest.mark.parametrize(
    ("path", "mimetype"),
    [
        ("/", "text/html"),
        ("/static/app.js", "text/javascript"),
        ("/static/style.css", "text/css"),
        ("/static/favicon.svg", "image/svg+xml"),
    ],
)
def test_static_files_with_etag_and_conditional_get(
    client: Client, path: str, mimetype: str
) -> None:
    first = client.get(path)
    etag = first.headers["ETag"]
    again = client.get(path, headers={"If-None-Match": etag})
    changed = client.get(path, headers={"If-None-Match": '"something-else"'})

    assert first.status_code == 200
    assert first.mimetype == mimetype
    assert first.headers["Cache-Control"] == "no-cache"
    assert again.status_code == 304
    assert again.data == b""
    assert changed.status_code == 200
    assert changed.data == first.data


def test_assets_are_found_in_the_package_or_the_checkout() -> None:
    directory = _asset_directory()
    assert (directory / "index.html").is_file()
    assert (directory / "app.js").is_file()


# --- the page itself: no inline script, nothing from the internet, text-only rendering


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data.strip()


def test_page_has_no_inline_script_and_only_relative_urls(client: Client) -> None:
    parser = _Tags()
    parser.feed(client.get("/").get_data(as_text=True))

    scripts = [attrs for tag, attrs in parser.tags if tag == "script"]
    assert scripts and all(attrs.get("src") for attrs in scripts)
    assert parser.script_text == ""
    for _tag, attrs in parser.tags:
        assert not any(name.startswith("on") for name in attrs), attrs
        assert "style" not in attrs
        for name in ("src", "href"):
            url = attrs.get(name)
            if url is not None:
                assert not re.match(r"^([a-z]+:)?//|^/", url), f"not relative: {url}"


def test_assets_load_nothing_from_the_internet(client: Client) -> None:
    for path in ("/", "/static/app.js", "/static/style.css"):
        text = client.get(path).get_data(as_text=True)
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), path
        assert "@import" not in text
        assert "@font-face" not in text


def test_script_never_renders_html() -> None:
    source = (ROOT / "dashboard" / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in source, sink
    assert "new Function" not in source


def test_json_escapes_markup(dash_db: workmatic.Database, client: Client) -> None:
    payload = {"html": "</script><script>x()</script> & more"}
    workmatic.create_client(dash_db, "<b>queue</b>").add(payload)

    stats = client.get("/api/stats")
    jobs = client.get("/api/jobs?queue=%3Cb%3Equeue%3C/b%3E")

    for response in (stats, jobs):
        assert b"<" not in response.data
        assert b">" not in response.data
    assert "<b>queue</b>" in [queue["name"] for queue in stats.json["queues"]]
    assert jobs.json["jobs"][0]["payload"] == payload
