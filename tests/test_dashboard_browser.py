"""The dashboard in a real browser: Debian's Chromium driven by Playwright.

The server under test runs in a subprocess (``tests/dashboard_helpers.py``), so that gevent's
server and Playwright's own event loop never share a process. Jobs are added from this
process through the public client, on the same database file.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dashboard_helpers import HELPER, http, running, wait_until

import workmatic

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
INJECTIONS = {
    "queue": '<img src=x onerror="window.__pwned=1">q',
    "error": "<script>window.__pwned=2</script><img src=x onerror=window.__pwned=3>",
    "payload": {"html": "<svg onload=window.__pwned=4></svg>", "t": "</pre><b>bold</b>"},
    "key": "<iframe src=javascript:window.__pwned=5>",
}

if not CHROMIUM.exists():
    if os.environ.get("WORKMATIC_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"WORKMATIC_REQUIRE_BROWSER=1 but {CHROMIUM} is missing")
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console",
        lambda message: (
            errors.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    yield page
    context.close()
    assert errors == [], f"JavaScript errors or CSP violations on the page: {errors}"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture
def db(db_path: Path) -> Iterator[workmatic.Database]:
    database = workmatic.create_database(str(db_path))
    yield database
    database.close()


def serve(db_path: Path, *extra: str) -> Any:
    return running([sys.executable, str(HELPER), "--db", str(db_path), *extra])


def add_dead(db: workmatic.Database, queue: str, **fields: Any) -> None:
    record = {
        "payload": json.dumps({"n": 1}),
        "queue": queue,
        "status": "dead",
        "attempts": 3,
        "last_error": "ValueError: boom",
        **fields,
    }
    db.import_jobs([record])


def open_page(page: Page, url: str) -> None:
    page.goto(url)
    expect(page.locator("body")).to_have_attribute("data-loaded", "true", timeout=10_000)


#: When (ms, the page's clock) each of its requests for the counts started, in order.
STATS_POLLS = """() => performance.getEntriesByType("resource")
    .filter((entry) => new URL(entry.name).pathname.endsWith("/api/stats"))
    .map((entry) => entry.startTime)"""


def card(page: Page, status: str) -> Any:
    return page.locator(f'.card[data-status="{status}"] .card-value')


def queue_row(page: Page, name: str) -> Any:
    return page.locator("#queues tr").filter(has=page.get_by_text(name, exact=True))


# --- the page standalone and mounted


def test_standalone_page_shows_counts_and_updates_live(
    page: Page, db: workmatic.Database, db_path: Path
) -> None:
    workmatic.create_client(db, "emails").add_many([{"i": i} for i in range(3)])
    add_dead(db, "reports")

    with serve(db_path) as (_proc, url):
        open_page(page, url)
        expect(card(page, "total")).to_have_text("4")
        expect(card(page, "ready")).to_have_text("3")
        expect(card(page, "dead")).to_have_text("1")
        expect(queue_row(page, "emails")).to_contain_text("3")
        expect(queue_row(page, "reports")).to_contain_text("active")
        expect(page.locator("#jobs tr.job-row")).to_have_count(4)

        workmatic.create_client(db, "emails").add_many([{"i": i} for i in range(5)])

        # Shown by a refresh of its own (no reload); generous bounds for a loaded machine.
        expect(card(page, "total")).to_have_text("9", timeout=15_000)
        expect(page.locator("#jobs tr.job-row")).to_have_count(9, timeout=15_000)
        # It refreshes every 2 seconds (the README's promise): the interval between polls,
        # by the browser's own clock, over several of them, is about that (the next poll is
        # set when one has ended, so a slow response lengthens one interval).
        polls: list[float] = []
        for _ in range(150):
            polls = page.evaluate(STATS_POLLS)
            if len(polls) >= 6:
                break
            page.wait_for_timeout(200)
        gaps = sorted(b - a for a, b in itertools.pairwise(polls))
        assert len(gaps) >= 5 and 1_500 <= gaps[len(gaps) // 2] <= 3_500, gaps


def test_page_under_a_flask_mount(page: Page, db: workmatic.Database, db_path: Path) -> None:
    workmatic.create_client(db, "emails").add_many([{"i": i} for i in range(2)])
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))

    with serve(db_path, "--flask") as (_proc, url):
        assert url.endswith("/workmatic/")
        open_page(page, url)
        expect(card(page, "total")).to_have_text("2")
        expect(queue_row(page, "emails")).to_be_visible()

        workmatic.create_client(db, "emails").add({"i": 99})
        expect(card(page, "total")).to_have_text("3", timeout=15_000)

        # Every request the page made stayed under the mount path.
        root = url[: -len("workmatic/")]
        assert requested
        assert all(r.startswith(url) for r in requested), requested
        page.goto(root)
        expect(page.locator("body")).to_have_text("flask home")
        page.goto(url.rstrip("/"))  # /workmatic redirects to /workmatic/
        assert page.url == url
        expect(page.locator("body")).to_have_attribute("data-loaded", "true")


def test_page_behind_basic_auth(browser: Browser, db: workmatic.Database, db_path: Path) -> None:
    workmatic.create_client(db, "emails").add({"x": 1})

    with serve(db_path, "--flask", "--auth", "ops:s3cret") as (_proc, url):
        assert http(url)[0] == 401
        assert http(url + "static/app.js")[0] == 401

        context = browser.new_context(http_credentials={"username": "ops", "password": "s3cret"})
        page = context.new_page()
        open_page(page, url)
        expect(card(page, "total")).to_have_text("1")
        queue_row(page, "emails").get_by_role("button", name="Pause").click()
        wait_until(lambda: db.is_queue_paused("emails"), timeout=5)
        context.close()


# --- controls


def test_pause_button_pauses_the_queue_in_the_database(
    page: Page, db: workmatic.Database, db_path: Path
) -> None:
    workmatic.create_client(db, "emails").add({"x": 1})
    workmatic.create_client(db, "other").add({"x": 1})

    with serve(db_path) as (_proc, url):
        open_page(page, url)
        queue_row(page, "emails").get_by_role("button", name="Pause").click()

        wait_until(lambda: db.is_queue_paused("emails"), timeout=5)
        expect(queue_row(page, "emails")).to_contain_text("paused")
        assert not db.is_queue_paused("other")

        queue_row(page, "emails").get_by_role("button", name="Resume").click()
        wait_until(lambda: not db.is_queue_paused("emails"), timeout=5)
        expect(queue_row(page, "emails")).to_contain_text("active")


def test_queue_paused_elsewhere_shows_on_a_refresh(
    page: Page, db: workmatic.Database, db_path: Path
) -> None:
    client = workmatic.create_client(db, "emails")
    client.add({"x": 1})

    with serve(db_path) as (_proc, url):
        open_page(page, url)
        expect(queue_row(page, "emails")).to_contain_text("active")
        client.pause()
        expect(queue_row(page, "emails")).to_contain_text("paused", timeout=15_000)


def test_worker_pause_button(page: Page, db: workmatic.Database, db_path: Path) -> None:
    with serve(db_path, "--worker", "emails") as (_proc, url):
        open_page(page, url)
        row = page.locator("#workers tr").filter(has_text="emails")
        expect(row).to_contain_text("stopped")
        row.get_by_role("button", name="Pause").click()
        expect(row.get_by_role("button", name="Resume")).to_be_visible(timeout=15_000)
        expect(row).to_contain_text("stopped")  # not started: pausing does not start it
        row.get_by_role("button", name="Resume").click()
        expect(row.get_by_role("button", name="Pause")).to_be_visible(timeout=15_000)


def test_job_detail_and_retry(page: Page, db: workmatic.Database, db_path: Path) -> None:
    add_dead(db, "emails", last_error="Traceback (most recent call last):\n  ValueError: boom")
    job = db.list_jobs(limit=1)[0]

    with serve(db_path) as (_proc, url):
        open_page(page, url)
        page.locator(f'#jobs tr[data-job="{job.id}"]').click()
        drawer = page.locator("#detail")
        expect(drawer).to_be_visible()
        expect(drawer).to_contain_text(job.id)
        expect(drawer.locator("pre").nth(0)).to_have_text(json.dumps({"n": 1}, indent=2))
        expect(drawer.locator("pre.code-error")).to_have_text(
            "Traceback (most recent call last):\n  ValueError: boom"
        )
        expect(drawer).to_contain_text("3 of 3 allowed runs")

        drawer.get_by_role("button", name="Retry now").click()

        wait_until(lambda: (j := db.get_job(job.id)) is not None and j.status == "ready", timeout=5)
        expect(drawer.locator(".badge")).to_have_text("ready", timeout=15_000)
        page.keyboard.press("Escape")
        expect(drawer).to_be_hidden()


def test_filters_and_pagination(page: Page, db: workmatic.Database, db_path: Path) -> None:
    workmatic.create_client(db, "emails").add_many([{"i": i} for i in range(25)])
    workmatic.create_client(db, "reports").add({"r": 1})
    add_dead(db, "emails")

    with serve(db_path) as (_proc, url):
        open_page(page, url)
        expect(page.locator("#page-info")).to_have_text("1\u201320 of 27 jobs")
        page.locator("#next-page").click()
        expect(page.locator("#page-info")).to_have_text("21\u201327 of 27 jobs")
        expect(page.locator("#jobs tr.job-row")).to_have_count(7)

        page.locator('#status-tabs [data-status="dead"]').click()
        expect(page.locator("#jobs tr.job-row")).to_have_count(1)
        expect(page.locator("#jobs .badge")).to_have_text("dead")

        page.locator('#status-tabs [data-status="all"]').click()
        page.locator("#queue-filter").select_option("reports")
        expect(page.locator("#jobs tr.job-row")).to_have_count(1)
        expect(page.locator("#page-info")).to_have_text("1\u20131 of 1 jobs")
        assert "queue=reports" in page.url

        page.reload()  # the filter lives in the URL
        expect(page.locator("#jobs tr.job-row")).to_have_count(1)


# --- untrusted job data


def test_injected_markup_never_executes_and_shows_as_text(
    page: Page, db: workmatic.Database, db_path: Path
) -> None:
    queue = str(INJECTIONS["queue"])
    db.import_jobs(
        [
            {
                "queue": queue,
                "payload": json.dumps(INJECTIONS["payload"]),
                "status": "dead",
                "last_error": INJECTIONS["error"],
                "key": INJECTIONS["key"],
            }
        ]
    )
    job = db.list_jobs(limit=1)[0]

    with serve(db_path) as (_proc, url):
        open_page(page, url)
        expect(queue_row(page, queue)).to_be_visible()
        page.locator(f'#jobs tr[data-job="{job.id}"]').click()
        drawer = page.locator("#detail")
        expect(drawer.locator("pre.code-error")).to_have_text(str(INJECTIONS["error"]))
        expect(drawer).to_contain_text(str(INJECTIONS["key"]))
        expect(drawer.locator("pre").nth(0)).to_have_text(
            json.dumps(INJECTIONS["payload"], indent=2)
        )
        page.locator("#queue-filter").select_option(queue)
        expect(page.locator("#jobs tr.job-row")).to_have_count(1)

        assert page.evaluate("typeof window.__pwned") == "undefined"
        # The markup stayed text: no element of it exists anywhere in the page.
        assert page.locator("body img").count() == 1  # the logo
        assert page.locator("body img[src='x'], body svg, body iframe, body b").count() == 0
        assert page.locator("body script").count() == 0


# --- how it looks


def test_screenshot(browser: Browser, db: workmatic.Database, db_path: Path) -> None:
    """Save tests/artifacts/dashboard*.png: the page with realistic data, wide and narrow."""
    emails = workmatic.create_client(db, "emails")
    emails.add_many([{"to": f"user{i}@example.com", "template": "welcome"} for i in range(40)])
    workmatic.create_client(db, "reports").add_many([{"kind": "daily", "day": d} for d in range(8)])
    workmatic.create_client(db, "webhooks").add({"url": "https://example.com/hook"})
    db.pause_queue("webhooks")
    for i in range(3):
        add_dead(db, "emails", last_error=f"ConnectionError: SMTP 421 try again later (#{i})")
    add_dead(db, "reports", status="failed", last_error="PermanentError: unknown report kind")
    db.import_jobs(
        [
            {
                "queue": "reports",
                "payload": json.dumps({"kind": "weekly"}),
                "status": "done",
                "result": json.dumps({"rows": 4242}),
            }
            for _ in range(12)
        ]
    )
    ARTIFACTS.mkdir(exist_ok=True)

    with serve(db_path, "--worker", "emails", "--worker", "reports") as (_proc, url):
        for name, width in (("dashboard.png", 1280), ("dashboard-mobile.png", 420)):
            context = browser.new_context(viewport={"width": width, "height": 900})
            page = context.new_page()
            open_page(page, url)
            expect(card(page, "total")).to_have_text("65")
            page.screenshot(path=str(ARTIFACTS / name), full_page=True)
            if width == 1280:
                page.locator("#jobs tr.job-row").filter(has_text="dead").first.click()
                expect(page.locator("#detail pre.code-error")).to_be_visible()
                page.screenshot(path=str(ARTIFACTS / "dashboard-detail.png"))
            context.close()

    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
