"""The dashboard's JSON API, through werkzeug's test client: every route and status code."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

import workmatic
from workmatic.dashboard import create_dashboard_app

SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin"}


@pytest.fixture
def dash_db(tmp_path: Path) -> Iterator[workmatic.Database]:
    db = workmatic.create_database(str(tmp_path / "jobs.db"))
    yield db
    db.close()


@pytest.fixture
def client(dash_db: workmatic.Database) -> Client:
    return Client(create_dashboard_app(dash_db))


def dead_job(db: workmatic.Database, queue: str = "default", **fields: Any) -> str:
    """Insert a dead job through the public import API; return its id."""
    record = {
        "payload": json.dumps({"n": 1}),
        "queue": queue,
        "status": "dead",
        "attempts": 3,
        "last_error": "boom",
        **fields,
    }
    db.import_jobs([record])
    jobs = db.list_jobs(queue=queue, limit=1)
    return jobs[0].id


def strict_json(body: bytes) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    return json.loads(body, parse_constant=refuse)


# --- GET api/stats


def test_stats_totals_queues_and_pause_state(dash_db: workmatic.Database, client: Client) -> None:
    workmatic.create_client(dash_db, "emails").add_many([{"i": i} for i in range(3)])
    workmatic.create_client(dash_db, "reports").add({"r": 1})
    dash_db.pause_queue("reports")
    dead_job(dash_db, "emails")

    response = client.get("/api/stats")

    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = response.json
    assert body["totals"] == {
        "ready": 4,
        "running": 0,
        "done": 0,
        "failed": 0,
        "dead": 1,
        "total": 5,
    }
    assert [q["name"] for q in body["queues"]] == ["emails", "reports"]
    emails, reports = body["queues"]
    assert emails["is_paused"] is False
    assert emails["stats"]["ready"] == 3
    assert emails["stats"]["dead"] == 1
    assert reports["is_paused"] is True
    assert reports["stats"]["total"] == 1
    assert body["workers"] == []


def test_stats_lists_the_workers_passed_in(dash_db: workmatic.Database) -> None:
    worker = workmatic.create_worker(dash_db, "emails", concurrency=4)
    client = Client(create_dashboard_app(dash_db, workers=[worker]))

    body = client.get("/api/stats").json

    assert body["workers"] == [worker.info()]
    assert body["workers"][0]["queue"] == "emails"
    assert body["workers"][0]["concurrency"] == 4
    # A worker's queue shows even before it has jobs.
    assert [q["name"] for q in body["queues"]] == ["emails"]


def test_stats_of_an_empty_database(client: Client) -> None:
    body = client.get("/api/stats").json
    assert body["totals"]["total"] == 0
    assert body["queues"] == []


# --- GET api/jobs


def test_jobs_newest_first_with_default_page(dash_db: workmatic.Database, client: Client) -> None:
    ids = workmatic.create_client(dash_db).add_many([{"i": i} for i in range(25)])

    body = client.get("/api/jobs").json

    assert body["total"] == 25
    assert body["limit"] == 20
    assert body["offset"] == 0
    assert [job["id"] for job in body["jobs"]] == ids[::-1][:20]
    assert body["jobs"][0]["payload"] == {"i": 24}


def test_jobs_pagination(dash_db: workmatic.Database, client: Client) -> None:
    ids = workmatic.create_client(dash_db).add_many([{"i": i} for i in range(25)])

    body = client.get("/api/jobs?limit=10&offset=20").json

    assert [job["id"] for job in body["jobs"]] == ids[::-1][20:]
    assert (body["total"], body["limit"], body["offset"]) == (25, 10, 20)
    past_the_end = client.get("/api/jobs?offset=500").json
    assert past_the_end["jobs"] == []
    assert past_the_end["total"] == 25


def test_jobs_filtered_by_status_and_queue(dash_db: workmatic.Database, client: Client) -> None:
    workmatic.create_client(dash_db, "emails").add_many([{"i": i} for i in range(3)])
    workmatic.create_client(dash_db, "reports").add({"r": 1})
    dead_id = dead_job(dash_db, "emails")

    dead = client.get("/api/jobs?status=dead").json
    emails = client.get("/api/jobs?queue=emails").json
    ready_emails = client.get("/api/jobs?queue=emails&status=ready").json
    everything = client.get("/api/jobs?status=&queue=").json  # the page's "all"

    assert [job["id"] for job in dead["jobs"]] == [dead_id]
    assert dead["total"] == 1
    assert emails["total"] == 4
    assert {job["queue"] for job in emails["jobs"]} == {"emails"}
    assert ready_emails["total"] == 3
    assert {job["status"] for job in ready_emails["jobs"]} == {"ready"}
    assert everything["total"] == 5


def test_jobs_of_an_unknown_queue_is_an_empty_page(client: Client) -> None:
    response = client.get("/api/jobs?queue=nobody")
    assert response.status_code == 200
    assert response.json["jobs"] == []
    assert response.json["total"] == 0


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=abc", "limit"),
        ("limit=1.5", "limit"),
        ("limit=-1", "limit"),
        ("offset=-1", "offset"),
        ("offset=x", "offset"),
        ("offset=99999999999999999999999999", "offset"),
        ("status=bogus", "status"),
        ("status=READY", "status"),
        ("queue=" + "q" * 300, "queue"),
        ("colour=red", "colour"),
        ("limit=5&limit=6", "limit"),
    ],
    ids=[
        "limit-zero",
        "limit-too-big",
        "limit-text",
        "limit-float",
        "limit-negative",
        "offset-negative",
        "offset-text",
        "offset-huge",
        "status-unknown",
        "status-case",
        "queue-too-long",
        "unknown-parameter",
        "repeated-parameter",
    ],
)
def test_jobs_bad_query_is_400_with_a_message(client: Client, query: str, field: str) -> None:
    response = client.get("/api/jobs?" + query)

    assert response.status_code == 400
    assert response.mimetype == "application/json"
    assert response.json["error"]
    assert field in response.json["messages"]


def test_jobs_limit_bounds_accepted(dash_db: workmatic.Database, client: Client) -> None:
    workmatic.create_client(dash_db).add_many([{"i": i} for i in range(120)])
    assert len(client.get("/api/jobs?limit=1").json["jobs"]) == 1
    assert len(client.get("/api/jobs?limit=100").json["jobs"]) == 100


def test_a_broken_row_does_not_break_the_list(dash_db: workmatic.Database, client: Client) -> None:
    workmatic.create_client(dash_db).add({"fine": True})
    dash_db.import_jobs(
        [{"payload": "{not json", "result": "also [not json", "status": "done", "queue": "default"}]
    )

    listing = client.get("/api/jobs")
    broken_id = listing.json["jobs"][0]["id"]
    detail = client.get(f"/api/jobs/{broken_id}")

    assert listing.status_code == 200
    assert listing.json["total"] == 2
    assert detail.status_code == 200
    assert detail.json["job"]["payload"] == "{not json"


def test_non_finite_numbers_come_out_as_strict_json(
    dash_db: workmatic.Database, client: Client
) -> None:
    dash_db.import_jobs([{"payload": '{"x": NaN, "y": Infinity}', "queue": "default"}])

    response = client.get("/api/jobs")

    assert response.status_code == 200
    payload = strict_json(response.data)["jobs"][0]["payload"]  # parses without NaN
    assert isinstance(payload, (dict, str))


# --- GET api/jobs/<id>


def test_job_detail_has_every_field(dash_db: workmatic.Database, client: Client) -> None:
    job_id = dead_job(dash_db, "emails", last_error="Traceback: boom", priority=3)

    response = client.get(f"/api/jobs/{job_id}")

    assert response.status_code == 200
    job = response.json["job"]
    assert job["id"] == job_id
    assert job["queue"] == "emails"
    assert job["status"] == "dead"
    assert job["payload"] == {"n": 1}
    assert job["last_error"] == "Traceback: boom"
    assert job["attempts"] == 3
    assert job["priority"] == 3
    for stamp in ("created_at", "updated_at", "run_at"):
        assert isinstance(job[stamp], str)
        assert isinstance(job[stamp + "_ms"], int)
    assert "result" in job


@pytest.mark.parametrize(
    "job_id",
    ["nope", "0" * 28, "%00", "a%20b", "%E2%9C%93"],
    ids=["word", "zeros", "nul", "space", "unicode"],
)
def test_unknown_job_is_404(client: Client, job_id: str) -> None:
    response = client.get(f"/api/jobs/{job_id}")
    assert response.status_code == 404
    assert "error" in response.json


# --- POST api/jobs/<id>/retry


@pytest.mark.parametrize("status", ["dead", "failed"])
def test_retry_dead_or_failed_job(dash_db: workmatic.Database, client: Client, status: str) -> None:
    job_id = dead_job(dash_db, status=status)

    response = client.post(f"/api/jobs/{job_id}/retry", headers=SAME_ORIGIN)

    assert response.status_code == 200
    assert response.json["job"]["status"] == "ready"
    job = dash_db.get_job(job_id)
    assert job is not None
    assert job.status == "ready"
    assert job.attempts == 0


@pytest.mark.parametrize("status", ["ready", "done"])
def test_retry_of_other_statuses_is_409(
    dash_db: workmatic.Database, client: Client, status: str
) -> None:
    job_id = dead_job(dash_db, status=status)

    response = client.post(f"/api/jobs/{job_id}/retry", headers=SAME_ORIGIN)

    assert response.status_code == 409
    assert status in response.json["error"]
    job = dash_db.get_job(job_id)
    assert job is not None
    assert job.status == status


def test_retry_unknown_job_is_404(client: Client) -> None:
    response = client.post("/api/jobs/nope/retry", headers=SAME_ORIGIN)
    assert response.status_code == 404
    assert "error" in response.json


def test_retry_every_dead_and_failed_job_of_a_queue(
    dash_db: workmatic.Database, client: Client
) -> None:
    dead_job(dash_db, "emails")
    dead_job(dash_db, "emails", status="failed")
    other = dead_job(dash_db, "reports")

    response = client.post("/api/queues/emails/retry", headers=SAME_ORIGIN)

    assert response.status_code == 200
    assert response.json == {"queue": "emails", "retried": 2}
    assert dash_db.stats("emails").ready == 2
    job = dash_db.get_job(other)
    assert job is not None
    assert job.status == "dead"


# --- POST api/queues/<queue>/pause|resume


@pytest.mark.parametrize(
    ("queue", "path"),
    [
        ("emails", "emails"),
        ("with space", "with%20space"),
        ("a/b", "a%2Fb"),
        ("/leading", "%2Fleading"),
        ("trailing/", "trailing%2F"),
        ("tâches ✓ 任务", "t%C3%A2ches%20%E2%9C%93%20%E4%BB%BB%E5%8A%A1"),
        ("pause", "pause"),
        ("x/pause", "x%2Fpause"),
        ("50%", "50%25"),
        ("a?b#c", "a%3Fb%23c"),
    ],
    ids=[
        "plain",
        "space",
        "slash",
        "leading-slash",
        "trailing-slash",
        "unicode",
        "pause",
        "ends-with-action",
        "percent",
        "query-chars",
    ],
)
def test_pause_and_resume_queue_persist(
    dash_db: workmatic.Database, client: Client, queue: str, path: str
) -> None:
    workmatic.create_client(dash_db, queue).add({"x": 1})
    workmatic.create_client(dash_db, "bystander").add({"x": 1})

    paused = client.post(f"/api/queues/{path}/pause", headers=SAME_ORIGIN)

    assert paused.status_code == 200
    assert paused.json == {"queue": queue, "is_paused": True}
    assert dash_db.is_queue_paused(queue)
    assert not dash_db.is_queue_paused("bystander")

    resumed = client.post(f"/api/queues/{path}/resume", headers=SAME_ORIGIN)

    assert resumed.status_code == 200
    assert resumed.json == {"queue": queue, "is_paused": False}
    assert not dash_db.is_queue_paused(queue)


@pytest.mark.parametrize("action", ["pause", "resume", "retry"])
def test_unknown_queue_is_404(dash_db: workmatic.Database, client: Client, action: str) -> None:
    workmatic.create_client(dash_db, "emails").add({"x": 1})

    response = client.post(f"/api/queues/nobody/{action}", headers=SAME_ORIGIN)

    assert response.status_code == 404
    assert "nobody" in response.json["error"]
    assert not dash_db.is_queue_paused("nobody")


# --- POST api/workers/<queue>/pause|resume


def test_pause_and_resume_workers_of_a_queue(dash_db: workmatic.Database) -> None:
    emails = [workmatic.create_worker(dash_db, "emails") for _ in range(2)]
    reports = workmatic.create_worker(dash_db, "reports")
    client = Client(create_dashboard_app(dash_db, workers=[*emails, reports]))

    paused = client.post("/api/workers/emails/pause", headers=SAME_ORIGIN)

    assert paused.status_code == 200
    assert paused.json["queue"] == "emails"
    assert [w["is_paused"] for w in paused.json["workers"]] == [True, True]
    assert all(w.is_paused for w in emails)
    assert not reports.is_paused
    assert not dash_db.is_queue_paused("emails")  # the workers only, not the queue

    resumed = client.post("/api/workers/emails/resume", headers=SAME_ORIGIN)

    assert resumed.status_code == 200
    assert not any(w.is_paused for w in emails)


@pytest.mark.parametrize("action", ["pause", "resume"])
def test_workers_of_an_unknown_queue_is_404(dash_db: workmatic.Database, action: str) -> None:
    client = Client(create_dashboard_app(dash_db, workers=[workmatic.create_worker(dash_db, "a")]))
    response = client.post(f"/api/workers/nobody/{action}", headers=SAME_ORIGIN)
    assert response.status_code == 404
    assert "error" in response.json


# --- methods and unknown routes


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "/api/stats", "GET, HEAD"),
        ("DELETE", "/api/jobs", "GET, HEAD"),
        ("PUT", "/api/jobs/abc", "GET, HEAD"),
        ("GET", "/api/jobs/abc/retry", "POST"),
        ("GET", "/api/queues/emails/pause", "POST"),
        ("GET", "/api/queues/emails/resume", "POST"),
        ("GET", "/api/workers/emails/pause", "POST"),
        ("OPTIONS", "/api/queues/emails/pause", "POST"),
        ("POST", "/", "GET, HEAD"),
    ],
)
def test_wrong_method_is_405(client: Client, method: str, path: str, allowed: str) -> None:
    response = client.open(path, method=method, headers=SAME_ORIGIN)
    assert response.status_code == 405
    assert response.headers["Allow"] == allowed
    assert response.json["error"]


@pytest.mark.parametrize("path", ["/api", "/api/nothing", "/nothing", "/api/jobs/a/b"])
def test_unknown_route_is_404_json(client: Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.mimetype == "application/json"
    assert response.json["error"]


def test_head_requests_work(client: Client) -> None:
    assert client.head("/api/stats").status_code == 200
    assert client.head("/").status_code == 200


def test_api_responses_are_not_cached(client: Client) -> None:
    assert client.get("/api/stats").headers["Cache-Control"] == "no-store"


def test_closed_database_is_503(tmp_path: Path) -> None:
    db = workmatic.create_database(str(tmp_path / "closed.db"))
    client = Client(create_dashboard_app(db))
    db.close()

    response = client.get("/api/stats")

    assert response.status_code == 503
    assert response.json["error"]


class _BrokenWorker:
    queue = "emails"

    def info(self) -> dict[str, Any]:
        raise RuntimeError("secret internals /etc/passwd")


def test_unexpected_errors_are_a_generic_500(
    dash_db: workmatic.Database, caplog: pytest.LogCaptureFixture
) -> None:
    client = Client(create_dashboard_app(dash_db, workers=[_BrokenWorker()]))  # type: ignore[list-item]

    response = client.get("/api/stats")

    assert response.status_code == 500
    assert response.json == {"error": "internal error (see the server's log)"}
    assert "secret internals" in caplog.text  # logged for the operator, not sent out
