"""The dashboard examples, each run as a real program (gunicorn included)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from dashboard_helpers import ROOT, http, running, wait_until

import workmatic

EXAMPLES = ROOT / "examples"


def get_json(url: str, **kwargs: Any) -> Any:
    status, _headers, body = http(url, **kwargs)
    assert status < 400, (status, body)
    return json.loads(body)


def test_with_dashboard_runs_jobs_and_stops_on_sigint(tmp_path: Path) -> None:
    db_path = tmp_path / "demo.db"
    args = [
        sys.executable,
        str(EXAMPLES / "with_dashboard.py"),
        "--db",
        str(db_path),
        "--port",
        "0",
        "--interval",
        "0.2",
    ]

    with running(args, stop_signal=signal.SIGINT) as server:
        assert server.url.startswith("http://127.0.0.1:")

        def finished_and_dead() -> Any:
            totals = get_json(server.url + "api/stats")["totals"]
            return totals["done"] and (totals["dead"] or totals["failed"]) and totals

        totals = wait_until(finished_and_dead, timeout=60, step=0.25)
        stats = get_json(server.url + "api/stats")
        assert {q["name"] for q in stats["queues"]} == {"emails", "reports"}
        assert {w["queue"] for w in stats["workers"]} == {"emails", "reports"}
        assert all(w["is_running"] for w in stats["workers"])
        assert totals["total"] >= 4

        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(timeout=30) == 0

    server.join()
    assert "stopped; jobs by status" in server.stdout()
    with workmatic.create_database(str(db_path), create=False) as db:
        assert db.stats().running == 0  # the graceful stop let running jobs finish


def test_with_dashboard_duration_flag(tmp_path: Path) -> None:
    args = [
        sys.executable,
        str(EXAMPLES / "with_dashboard.py"),
        "--db",
        str(tmp_path / "d.db"),
        "--port",
        "0",
        "--duration",
        "1",
    ]
    with running(args) as server:
        assert server.proc.wait(timeout=30) == 0


def test_flask_mount_example(tmp_path: Path) -> None:
    pytest.importorskip("flask")
    args = [
        sys.executable,
        str(EXAMPLES / "flask_mount.py"),
        "--db",
        str(tmp_path / "f.db"),
        "--port",
        "0",
        "--auth",
        "ops:s3cret",
    ]

    with running(args) as server:
        root = server.url
        assert get_json(root)["dashboard"] == "/workmatic/"
        status, _, body = http(root + "signup?email=ann@example.com", method="POST")
        assert status == 202
        job_id = json.loads(body)["job_id"]

        assert http(root + "workmatic/api/stats")[0] == 401
        auth = {"Authorization": "Basic b3BzOnMzY3JldA=="}  # ops:s3cret

        def done() -> Any:
            job = get_json(root + f"workmatic/api/jobs/{job_id}", headers=auth)["job"]
            return job["status"] == "done" and job

        job = wait_until(done, timeout=20)
        assert job["result"] == {"sent_to": "ann@example.com"}
        page_status, headers, _ = http(root + "workmatic/", headers=auth)
        assert page_status == 200
        assert "default-src 'self'" in headers["Content-Security-Policy"]


def _gunicorn() -> str:
    path = shutil.which("gunicorn", path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip("gunicorn is not installed")
    return path


def test_gunicorn_gevent_app_enqueues_and_mounts_the_dashboard(tmp_path: Path) -> None:
    gunicorn = _gunicorn()
    help_text = subprocess.run(
        [gunicorn, "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    extra = ["--no-control-socket"] if "--no-control-socket" in help_text else []
    db_path = tmp_path / "g.db"
    args = [
        gunicorn,
        "-k",
        "gevent",
        "-w",
        "2",
        "-b",
        "127.0.0.1:0",
        "--graceful-timeout",
        "10",
        "--chdir",
        str(EXAMPLES),
        *extra,
        "gunicorn_app:app",
    ]

    with running(args, env={"WORKMATIC_DB": str(db_path)}, url_from_stderr=True) as server:
        base = server.url.rstrip("/") + "/"
        ids = []
        for item in ("book", "lamp", "desk"):
            status, _, body = http(base + f"orders?item={item}", method="POST")
            assert status == 202
            ids.append(json.loads(body)["job_id"])

        def all_done() -> Any:
            page = get_json(base + "workmatic/api/jobs?queue=orders&status=done")
            return page["total"] == 3 and page

        page = wait_until(all_done, timeout=30)
        assert {job["id"] for job in page["jobs"]} == set(ids)
        assert {job["result"]["shipped"] for job in page["jobs"]} == {"book", "lamp", "desk"}

        stats = get_json(base + "workmatic/api/stats")
        assert stats["workers"][0]["queue"] == "orders"
        redirect = http(base + "workmatic", follow_redirects=False)
        assert (redirect[0], redirect[1]["Location"]) == (308, "/workmatic/")
        assert get_json(base)["app"] == "gunicorn example"
        assert http(base + "workmaticfoo")[0] == 404  # the wrapped app's own 404

        pause = http(
            base + "workmatic/api/queues/orders/pause",
            method="POST",
            headers={"Origin": "http://evil.example"},
        )
        assert pause[0] == 403

        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
