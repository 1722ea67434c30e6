"""The ``workmatic`` command, run as a real subprocess: every command's effect and output,
exit statuses, and clean one-line errors for bad database files."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import gevent.event
import pytest
from cli_helpers import (
    child_env,
    make_db,
    one_line_error,
    run_cli,
    run_cli_bytes,
    seed,
    wait_for,
)

import workmatic

COMMANDS = ["stats", "queues", "pause", "resume", "list", "show", "export", "import", "purge"]
COMMANDS += ["retry", "dashboard", "worker"]


@pytest.fixture
def jobs_db(tmp_path: Path) -> Path:
    """A database with jobs of every status but running, in two queues."""
    path = make_db(tmp_path / "jobs.db")
    seed(path, [{"payload": '{"n": 1}'}, {"payload": '{"n": 2}', "status": "done"}])
    seed(
        path,
        [
            {"payload": '{"to": "a@b.c"}', "status": "dead", "attempts": 3, "last_error": "boom"},
            {"payload": '{"to": "d@e.f"}', "status": "failed", "last_error": "bad address"},
            {"payload": '{"to": "g@h.i"}'},
        ],
        queue="emails",
    )
    return path


def statuses(path: Path, queue: str | None = None) -> dict[str, int]:
    with workmatic.create_database(str(path), create=False) as db:
        return {k: v for k, v in db.stats(queue).as_dict().items() if v and k != "total"}


# --- help and usage


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: workmatic " + command)


def test_top_level_help_lists_every_command() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert f"    {command}" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="no-command"),
        pytest.param(["frobnicate", "x.db"], id="unknown-command"),
        pytest.param(["list"], id="missing-db"),
        pytest.param(["list", "x.db", "--status=sleeping"], id="unknown-status"),
        pytest.param(["list", "x.db", "--limit", "0"], id="limit-zero"),
        pytest.param(["purge", "x.db"], id="purge-without-status"),
        pytest.param(["purge", "x.db", "--status=running"], id="purge-running"),
        pytest.param(["retry", "x.db"], id="retry-without-status"),
        pytest.param(["retry", "x.db", "--status", "running"], id="retry-running"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result
    assert "usage: workmatic" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.db").exists()


# --- read commands and their output


def test_stats_table_and_json(jobs_db: Path) -> None:
    table = run_cli("stats", jobs_db)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["QUEUE", "READY", "RUNNING", "DONE", "FAILED", "DEAD", "TOTAL"]
    assert lines[1].split() == ["default", "1", "0", "1", "0", "0", "2"]
    assert lines[2].split() == ["emails", "1", "0", "0", "1", "1", "3"]
    assert lines[3].split() == ["TOTAL", "2", "0", "1", "1", "1", "5"]

    data = json.loads(run_cli("stats", jobs_db, "--json").stdout)
    assert data["total"] == {
        "ready": 2,
        "running": 0,
        "done": 1,
        "failed": 1,
        "dead": 1,
        "total": 5,
    }
    assert data["queues"]["emails"]["dead"] == 1
    assert set(data["queues"]) == {"default", "emails"}


@pytest.mark.parametrize("form", [["--queue=emails"], ["--queue", "emails"], ["-Q", "emails"]])
def test_stats_of_one_queue(jobs_db: Path, form: list[str]) -> None:
    data = json.loads(run_cli("stats", jobs_db, *form, "--json").stdout)
    assert data["total"]["total"] == 3
    assert list(data["queues"]) == ["emails"]


def test_queues_shows_pause_state_and_paused_queues_without_jobs(jobs_db: Path) -> None:
    assert run_cli("pause", jobs_db, "later").returncode == 0
    table = run_cli("queues", jobs_db).stdout.splitlines()
    assert table[0].split() == ["QUEUE", "STATE", "READY", "RUNNING", "TOTAL"]
    assert [line.split()[:2] for line in table[1:]] == [
        ["default", "active"],
        ["emails", "active"],
        ["later", "paused"],
    ]
    data = json.loads(run_cli("queues", jobs_db, "--json").stdout)
    assert [(q["name"], q["is_paused"], q["stats"]["total"]) for q in data["queues"]] == [
        ("default", False, 2),
        ("emails", False, 3),
        ("later", True, 0),
    ]


def test_pause_and_resume_persist(jobs_db: Path) -> None:
    paused = run_cli("pause", jobs_db, "emails")
    assert paused.returncode == 0
    assert "paused queue 'emails'" in paused.stdout
    with workmatic.create_database(str(jobs_db)) as db:
        assert db.is_queue_paused("emails")
        assert not db.is_queue_paused("default")
    resumed = run_cli("resume", jobs_db, "emails", "--json")
    assert json.loads(resumed.stdout) == {"queue": "emails", "is_paused": False}
    with workmatic.create_database(str(jobs_db)) as db:
        assert not db.is_queue_paused("emails")


def test_list_newest_first_with_filters(jobs_db: Path) -> None:
    jobs = json.loads(run_cli("list", jobs_db, "--json").stdout)
    assert [job["payload"] for job in jobs] == [
        {"to": "g@h.i"},
        {"to": "d@e.f"},
        {"to": "a@b.c"},
        {"n": 2},
        {"n": 1},
    ]
    assert {"id", "queue", "payload", "status", "attempts", "last_error", "run_at"} <= set(jobs[0])

    dead = json.loads(run_cli("list", jobs_db, "--status=dead", "--json").stdout)
    assert [(j["queue"], j["status"], j["last_error"]) for j in dead] == [
        ("emails", "dead", "boom")
    ]
    assert dead == json.loads(run_cli("list", jobs_db, "--status", "dead", "--json").stdout)

    emails = json.loads(run_cli("list", jobs_db, "--queue", "emails", "--json").stdout)
    assert {j["queue"] for j in emails} == {"emails"} and len(emails) == 3

    page = json.loads(run_cli("list", jobs_db, "--limit=2", "--offset=1", "--json").stdout)
    assert [j["payload"] for j in page] == [{"to": "d@e.f"}, {"to": "a@b.c"}]


def test_list_table_for_people(jobs_db: Path) -> None:
    result = run_cli("list", jobs_db, "--queue=emails", "--limit", "10")
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "QUEUE", "STATUS"]
    assert len(lines) == 4
    dead = next(line for line in lines if " dead " in line)
    assert "3/3" in dead and "boom" in dead and '{"to": "a@b.c"}' in dead
    assert run_cli("list", jobs_db, "--status=running").stdout.strip() == "no jobs"


def test_list_does_not_print_terminal_escapes_from_job_data(tmp_path: Path) -> None:
    path = make_db(tmp_path / "jobs.db")
    seed(path, [{"payload": json.dumps("\x1b[2J\x1b[31mred\rX"), "last_error": "a\nb\x07"}])
    out = run_cli("list", path).stdout
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert "red" in out


def test_show_prints_every_field(jobs_db: Path) -> None:
    (dead,) = json.loads(run_cli("list", jobs_db, "--status=dead", "--json").stdout)
    shown = run_cli("show", jobs_db, dead["id"])
    assert shown.returncode == 0
    assert f"id:          {dead['id']}" in shown.stdout
    assert '"to": "a@b.c"' in shown.stdout and "boom" in shown.stdout
    assert json.loads(run_cli("show", jobs_db, dead["id"], "--json").stdout) == dead
    missing = run_cli("show", jobs_db, "nope")
    assert missing.returncode == 1
    assert one_line_error(missing.stderr) == "workmatic: error: no job with id 'nope'"


# --- write commands


def test_purge_by_status_and_queue(jobs_db: Path) -> None:
    dry = run_cli("purge", jobs_db, "--status=done,dead", "--dry-run")
    assert dry.stdout.strip() == "would delete 2 jobs (dry run)"
    assert statuses(jobs_db)["done"] == 1
    one = run_cli("purge", jobs_db, "--status", "dead", "--queue", "default", "--json")
    assert json.loads(one.stdout) == {"deleted": 0, "matched": 0}
    both = run_cli("purge", jobs_db, "--status=done,dead")
    assert both.stdout.strip() == "deleted 2 jobs"
    assert statuses(jobs_db) == {"ready": 2, "failed": 1}
    everything = run_cli("purge", jobs_db, "--all", "--queue=emails")
    assert everything.stdout.strip() == "deleted 2 jobs"
    assert statuses(jobs_db) == {"ready": 1}


def test_purge_never_deletes_running_jobs(tmp_path: Path) -> None:
    path = make_db(tmp_path / "jobs.db")
    seed(path, [{"payload": "1", "status": "done"}])
    release = gevent.event.Event()
    with workmatic.create_database(str(path)) as db:
        worker = workmatic.create_worker(db, concurrency=1, poll_interval=0.05)
        worker.process(lambda job: release.wait(10))
        workmatic.create_client(db).add({"long": True})
        worker.start()
        try:
            wait_for(lambda: db.stats().running == 1, what="the job to run")
            result = run_cli("purge", path, "--all")
            assert result.stdout.strip() == "deleted 1 job"
            assert db.stats().running == 1
        finally:
            release.set()
            worker.stop(timeout=5)


def test_retry_by_status(jobs_db: Path) -> None:
    result = run_cli("retry", jobs_db, "--status=dead")
    assert result.returncode == 0
    assert result.stdout.strip() == "retried 1 job: back to ready"
    with workmatic.create_database(str(jobs_db)) as db:
        (job,) = [j for j in db.list_jobs(queue="emails") if j.payload == {"to": "a@b.c"}]
        assert (job.status, job.attempts, job.last_error) == ("ready", 0, "boom")
    both = run_cli("retry", jobs_db, "--status", "dead,failed", "--queue", "default", "--json")
    assert json.loads(both.stdout) == {"retried": 0, "matched": 0}
    assert (
        json.loads(run_cli("retry", jobs_db, "-s", "failed,dead", "--json").stdout)["retried"] == 1
    )
    assert statuses(jobs_db) == {"ready": 4, "done": 1}


def test_retry_by_id_refuses_running_and_ready_jobs(tmp_path: Path) -> None:
    path = make_db(tmp_path / "jobs.db")
    seed(
        path,
        [
            {"payload": "1", "status": "dead", "attempts": 3, "public_id": "dead1"},
            {"payload": "2", "public_id": "ready1"},
            {"payload": "3", "public_id": "run1", "priority": -1},
        ],
    )
    release = gevent.event.Event()
    with workmatic.create_database(str(path)) as db:
        worker = workmatic.create_worker(db, concurrency=1, poll_interval=0.05)
        worker.process(lambda job: release.wait(10))
        worker.start()
        try:
            wait_for(lambda: db.stats().running == 1, what="run1 to run")
            result = run_cli("retry", path, "dead1", "run1", "ready1", "nope", "--json")
            assert result.returncode == 1
            data = json.loads(result.stdout)
            assert data["retried"] == ["dead1"]
            assert data["refused"] == {
                "run1": "is running; only dead or failed jobs are retried",
                "ready1": "is ready; only dead or failed jobs are retried",
                "nope": "no such job",
            }
            assert db.get_job("run1").status == "running"  # type: ignore[union-attr]
            assert db.get_job("dead1").status == "ready"  # type: ignore[union-attr]
            human = run_cli("retry", path, "run1")
            assert human.returncode == 1
            assert one_line_error(human.stderr) == (
                "workmatic: error: job 'run1' is running; only dead or failed jobs are retried"
            )
        finally:
            release.set()
            worker.stop(timeout=5)


# --- files that are not workmatic databases


@pytest.mark.parametrize(
    "args",
    [
        ["stats"],
        ["queues"],
        ["list"],
        ["show", "x"],
        ["export"],
        ["pause", "q"],
        ["resume", "q"],
        ["purge", "--status=done"],
        ["retry", "--status=dead"],
        ["dashboard", "--port", "0"],
    ],
    ids=lambda a: a[0],
)
def test_commands_never_create_a_missing_database(tmp_path: Path, args: list[str]) -> None:
    path = tmp_path / "missing.db"
    result = run_cli(args[0], path, *args[1:])
    assert result.returncode == 1
    assert one_line_error(result.stderr) == f"workmatic: error: {path}: no such database file"
    assert list(tmp_path.iterdir()) == []


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not an SQLite file at all\n" * 200)


def _foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()


def _empty_sqlite(path: Path) -> None:
    sqlite3.connect(path).close()
    path.write_bytes(b"")


def _directory(path: Path) -> None:
    path.mkdir()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_garbage, "not an SQLite database"),
        (_foreign, "not a workmatic database"),
        (_empty_sqlite, "not a workmatic database"),
        (_directory, ""),
    ],
    ids=["corrupt", "foreign", "empty", "directory"],
)
@pytest.mark.parametrize("command", [["stats"], ["list"], ["export"], ["pause", "q"]])
def test_bad_files_are_a_one_line_error(
    tmp_path: Path, make: object, expected: str, command: list[str]
) -> None:
    path = tmp_path / "bad.db"
    make(path)  # type: ignore[operator]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli(command[0], path, *command[1:])
    assert result.returncode == 1
    line = one_line_error(result.stderr)
    assert line.startswith("workmatic: error: ") and str(path) in line
    assert expected in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_locked_database_is_a_one_line_error(tmp_path: Path) -> None:
    path = make_db(tmp_path / "jobs.db")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        result = run_cli("pause", path, "emails", "--lock-timeout", "0.2")
        assert result.returncode == 1
        assert "locked" in one_line_error(result.stderr)
        assert run_cli("stats", path).returncode == 0  # readers are not blocked (WAL)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


# --- export to stdout and files


def test_export_to_stdout_and_to_a_file(jobs_db: Path, tmp_path: Path) -> None:
    to_stdout = run_cli_bytes("export", jobs_db, "--status=dead")
    assert to_stdout.returncode == 0
    assert to_stdout.stderr.decode().strip() == "exported 1 job"
    header, row, end = to_stdout.stdout.decode("utf-8").split("\r\n")
    assert end == ""
    assert header == (
        "public_id,queue,payload,status,priority,run_at,attempts,max_attempts,lease_until,"
        "created_at,updated_at,last_error,result,key"
    )
    assert ',emails,"{""to"":""a@b.c""}",dead,0,' in row

    out = tmp_path / "all.csv"
    to_file = run_cli("export", jobs_db, out, "--queue", "emails")
    assert to_file.stdout.strip() == f"exported 3 jobs to {out}"
    assert out.read_bytes().count(b"\r\n") == 4
    dash = run_cli_bytes("export", jobs_db, "-", "--json", "--status", "ready")
    assert dash.stdout.count(b"\r\n") == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".workmatic-export")]


def test_export_to_a_closed_pipe_is_quiet(jobs_db: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "workmatic.cli", "export", str(jobs_db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=30) == 1
    assert err == ""


# --- the dashboard command


def test_dashboard_serves_until_sigterm(jobs_db: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "workmatic.cli", "dashboard", str(jobs_db), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert " at http://127.0.0.1:" in line, line + (proc.stderr.read() if proc.stderr else "")
        url = line.split(" at ", 1)[1].split()[0]
        with urllib.request.urlopen(url.rstrip("/") + "/api/stats", timeout=10) as response:
            data = json.loads(response.read())
        assert "emails" in json.dumps(data)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_dashboard_port_in_use_is_a_one_line_error(jobs_db: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_cli("dashboard", jobs_db, "--port", port)
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in one_line_error(result.stderr)


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"workmatic {workmatic.__version__}"


def test_console_script_if_installed() -> None:
    script = Path(sys.executable).with_name("workmatic")
    if not script.exists():
        pytest.skip("workmatic is not installed as a console script here")
    result = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, env=child_env()
    )
    assert result.returncode == 0 and "workmatic" in result.stdout
