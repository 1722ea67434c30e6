"""CSV export and import through the ``workmatic`` command: exact round trips of nasty
data, validation that imports nothing on a bad row, idempotent re-imports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import make_db, one_line_error, run_cli, run_cli_bytes, seed

import workmatic

HEADER = (
    "public_id,queue,payload,status,priority,run_at,attempts,max_attempts,lease_until,"
    "created_at,updated_at,last_error,result,key"
)
NASTY_PAYLOADS = [
    {"text": "line one\nline two\r\nline three\rend", "quote": 'she said "hi", then left'},
    {"commas": "a,b,,c", "empty": "", "spaces": "  padded  ", "tab": "a\tb"},
    {"unicode": "naïve café — 日本語 — Ελληνικά — עברית", "emoji": "🎉👩‍💻🇫🇷"},
    {"nested": {"json": '{"inner": [1, 2, {"x": "y"}]}', "list": [[], {}, [None, True]]}},
    ["top", "level", "list", 1.5, -0.0, 1e300, 12345678901234567890],
    "just a string with a trailing newline\n",
    '"starts with a quote',
    '=HYPERLINK("http://evil")',
    -42,
    None,
    {"formula": "+1", "at": "@SUM(A1)", "minus": "-1"},
    {"big": "x" * 200_000},
]


def job_fields(job: workmatic.Job) -> dict[str, object]:
    data = job.as_dict()
    return {
        k: data[k]
        for k in (
            "id",
            "queue",
            "payload",
            "status",
            "priority",
            "attempts",
            "max_attempts",
            "last_error",
            "result",
            "key",
        )
    } | {
        "created_at": job.created_at,
        "run_at": job.run_at,
        "updated_at": job.updated_at,
        "lease_until": job.lease_until,
    }


def all_jobs(path: Path) -> list[dict[str, object]]:
    with workmatic.create_database(str(path), create=False) as db:
        return [job_fields(job) for job in db.iter_jobs()]


@pytest.fixture
def nasty_db(tmp_path: Path) -> Path:
    """Jobs with nasty payloads in several queues, plus errors, results and keys."""
    path = make_db(tmp_path / "source.db")
    with workmatic.create_database(str(path)) as db:
        client = workmatic.create_client(db, 'nasty, queue "q" ✓')
        for i, payload in enumerate(NASTY_PAYLOADS):
            client.add(payload, priority=i % 3 - 1, max_attempts=i + 1)
        workmatic.create_client(db).add({"plain": True}, key="key, with\nnewline ✓")
    seed(
        path,
        [
            {
                "payload": '{"x": 1}',
                "status": "dead",
                "attempts": 3,
                "last_error": 'Traceback (most recent call last):\n  File "x.py", line 1\n'
                'ValueError: bad, "really" bad ☠\n',
            },
            {
                "payload": "[]",
                "status": "done",
                "result": json.dumps({"answer": 42, "text": 'a\nb,c"d'}),
            },
        ],
        queue="results",
    )
    return path


def test_round_trip_is_exact(nasty_db: Path, tmp_path: Path) -> None:
    first = tmp_path / "first.csv"
    assert run_cli("export", nasty_db, first).returncode == 0
    target = tmp_path / "copy.db"
    imported = run_cli("import", target, first)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.splitlines()[-1] == f"imported {len(NASTY_PAYLOADS) + 3} jobs"
    assert all_jobs(target) == all_jobs(nasty_db)
    second = tmp_path / "second.csv"
    assert run_cli("export", target, second).returncode == 0
    assert second.read_bytes() == first.read_bytes()


@pytest.mark.parametrize("source", ["-", "/dev/stdin"])
def test_import_from_stdin(nasty_db: Path, tmp_path: Path, source: str) -> None:
    exported = run_cli_bytes("export", nasty_db)
    target = tmp_path / "copy.db"
    result = run_cli_bytes("import", target, source, input=exported.stdout)
    assert result.returncode == 0, result.stderr
    assert all_jobs(target) == all_jobs(nasty_db)


def test_reimport_is_idempotent_and_keeps_queue_order(nasty_db: Path, tmp_path: Path) -> None:
    backup = tmp_path / "backup.csv"
    run_cli("export", nasty_db, backup)
    target = make_db(tmp_path / "target.db")
    seed(target, [{"payload": '"already here"'}])
    assert run_cli("import", target, backup).returncode == 0
    again = run_cli("import", target, backup, "--json")
    assert again.returncode == 0
    report = json.loads(again.stdout)
    assert (report["inserted"], report["skipped"]) == (0, len(NASTY_PAYLOADS) + 3)
    jobs = all_jobs(target)
    assert jobs[0]["payload"] == "already here"
    assert jobs[1:] == all_jobs(nasty_db)


def test_an_existing_public_id_is_never_replaced(tmp_path: Path) -> None:
    path = make_db(tmp_path / "jobs.db")
    seed(path, [{"public_id": "job_001", "payload": '{"original": true}', "status": "done"}])
    csv_file = tmp_path / "in.csv"
    csv_file.write_text('public_id,payload\njob_001,"{""replaced"": true}"\njob_002,2\n')
    result = run_cli("import", path, csv_file)
    assert result.stdout.strip() == "imported 1 job, skipped 1 already present"
    with workmatic.create_database(str(path)) as db:
        job = db.get_job("job_001")
        assert job is not None and (job.payload, job.status) == ({"original": True}, "done")


def test_safe_formulas_round_trip(tmp_path: Path) -> None:
    path = make_db(tmp_path / "jobs.db")
    seed(
        path,
        [
            {"payload": '"=1+1"', "last_error": "=cmd|' /C calc'!A0", "queue": "+q"},
            {"payload": "-5", "last_error": "@SUM(A1)", "key": "'=already quoted"},
            {"payload": '{"a": 1}', "last_error": "\tTabbed", "key": "-k"},
        ],
    )
    plain = run_cli_bytes("export", path).stdout.decode()
    safe = run_cli_bytes("export", path, "--safe-formulas").stdout.decode()
    assert ',+q,"""=1+1""",ready,' in plain and ",-5,ready," in plain
    rows = safe.split("\r\n")[1:4]
    assert ',\'+q,"""=1+1""",ready,' in rows[0]
    assert "'=cmd|' /C calc'!A0" in rows[0]
    assert ",'-5,ready," in rows[1] and ",'@SUM(A1),," in rows[1]
    assert rows[1].endswith(",''=already quoted")
    assert "'\tTabbed" in rows[2] and rows[2].endswith(",'-k")
    # numbers are never touched: only text columns
    assert ",'0," not in safe
    target = tmp_path / "copy.db"
    result = run_cli("import", target, "-", "--safe-formulas", input=safe)
    assert result.returncode == 0, result.stderr
    assert all_jobs(target) == all_jobs(path)


def test_only_payload_is_required_and_defaults_apply(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    data = 'payload\n{"a": 1}\n"""text"""\n'
    result = run_cli("import", path, "-", input=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"created {path}", "imported 2 jobs"]
    with workmatic.create_database(str(path)) as db:
        jobs = list(db.iter_jobs())
    assert [j.payload for j in jobs] == [{"a": 1}, "text"]
    for job in jobs:
        assert (job.queue, job.status, job.priority, job.attempts, job.max_attempts) == (
            "default", "ready", 0, 0, 3,
        )  # fmt: skip
        assert job.lease_until is None and job.last_error is None and job.key is None
        assert abs(job.run_at.timestamp() - job.created_at.timestamp()) < 1
    assert len({j.id for j in jobs}) == 2


def test_queue_option_is_the_default_queue(tmp_path: Path) -> None:
    path = make_db(tmp_path / "jobs.db")
    data = "queue,payload\n,1\nother,2\n"
    assert run_cli("import", path, "-", "--queue", "emails", input=data).returncode == 0
    with workmatic.create_database(str(path)) as db:
        assert [(j.queue, j.payload) for j in db.iter_jobs()] == [("emails", 1), ("other", 2)]


def test_seed_readme_sample_imports(tmp_path: Path) -> None:
    sample = (
        "public_id,queue,payload,status,priority,run_at,attempts,max_attempts,lease_until,"
        "created_at,updated_at,last_error\n"
        'job_001,emails,"{""to"":""user@example.com"",""template"":""welcome""}",ready,0,'
        "1704067200000,0,3,0,1704067200000,1704067200000,\n"
        'job_002,emails,"{""to"":""other@example.com"",""template"":""reminder""}",ready,5,'
        "1704067200000,0,3,0,1704067200000,1704067200000,\n"
    )
    path = make_db(tmp_path / "jobs.db")
    assert run_cli("import", path, "-", input=sample).returncode == 0
    with workmatic.create_database(str(path)) as db:
        job = db.get_job("job_002")
        assert job is not None
        assert (job.queue, job.payload["template"], job.priority) == ("emails", "reminder", 5)
        assert job.created_at.isoformat() == "2024-01-01T00:00:00+00:00"
        assert job.lease_until is None


def test_any_column_order_crlf_and_bom(tmp_path: Path) -> None:
    path = make_db(tmp_path / "jobs.db")
    data = '\ufeffPriority, payload ,queue\r\n7,"{""x"":1}",q\r\n'.encode()
    result = run_cli_bytes("import", path, "-", input=data)
    assert result.returncode == 0, result.stderr
    with workmatic.create_database(str(path)) as db:
        ((queue, priority, payload),) = [(j.queue, j.priority, j.payload) for j in db.iter_jobs()]
    assert (queue, priority, payload) == ("q", 7, {"x": 1})


def test_running_rows_come_in_ready(tmp_path: Path) -> None:
    path = make_db(tmp_path / "jobs.db")
    data = "public_id,payload,status,attempts,lease_until\nr1,1,running,1,9999999999999\n"
    assert run_cli("import", path, "-", input=data).returncode == 0
    with workmatic.create_database(str(path)) as db:
        job = db.get_job("r1")
    assert job is not None and (job.status, job.attempts) == ("ready", 1)


BAD_ROWS = [
    ("payload\n{not json}\n", 2, "payload: Not valid JSON"),
    ("payload\nNaN\n", 2, "payload: Not valid JSON"),
    ("payload,status\n1,sleeping\n", 2, "status: Must be one of: ready, running, done"),
    ("payload,priority\n1,1.5\n", 2, "priority: Not a valid integer."),
    ("payload,priority\n1,high\n", 2, "priority: Not a valid integer."),
    ("payload,max_attempts\n1,0\n", 2, "max_attempts: Must be greater than or equal to 1"),
    ("payload,attempts\n1,-1\n", 2, "attempts: Must be greater than or equal to 0"),
    ("payload,run_at\n1,-5\n", 2, "run_at: Must be greater than or equal to 0"),
    ("payload,created_at\n1,yesterday\n", 2, "created_at: Not a valid integer."),
    ("payload,queue\n1,2\n3\n", 3, "expected 2 fields (as in the header), got 1"),
    ("payload,queue\n1,2,3\n", 2, "expected 2 fields (as in the header), got 3"),
    ('payload,result\n"[\n1]",1\n2,{\n', 4, "result: Not valid JSON"),
    ("payload,public_id\n1,has space\n", 2, "public_id: Must be 1 to 128 letters"),
    ("payload,queue\n,q\n", 2, "payload: Missing data for required field."),
    ("queue,payload\nq,1\nq,\n", 3, "payload: Missing data for required field."),
]


@pytest.mark.parametrize(("data", "line", "message"), BAD_ROWS)
def test_a_bad_row_is_reported_and_nothing_is_imported(
    tmp_path: Path, data: str, line: int, message: str
) -> None:
    path = make_db(tmp_path / "jobs.db")
    good = "payload\n" + "".join(f"{i}\n" for i in range(3))
    assert run_cli("import", path, "-", input=good).returncode == 0
    result = run_cli("import", path, "-", input=data)
    assert result.returncode == 1
    errors = result.stderr.splitlines()
    assert errors[0].startswith(f"line {line}: {message}"), errors
    assert errors[-1].startswith("workmatic: error: 1 invalid row: nothing was imported")
    with workmatic.create_database(str(path)) as db:
        assert db.count_jobs() == 3


def test_a_bad_row_after_many_good_ones_changes_nothing(tmp_path: Path) -> None:
    path = make_db(tmp_path / "jobs.db")
    rows = "".join(f'"{{""n"": {i}}}"\n' for i in range(5000))
    data = "payload\n" + rows + "oops\n" + rows + "{bad\n"
    result = run_cli("import", path, "-", "--json", input=data)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["inserted"] == 0
    assert [e["line"] for e in report["errors"]] == [5002, 10003]
    assert report["rows"] == 10002
    with workmatic.create_database(str(path)) as db:
        assert db.count_jobs() == 0


def test_a_bad_file_does_not_create_the_database(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    result = run_cli("import", path, "-", input="payload\n{\n")
    assert result.returncode == 1
    assert list(tmp_path.iterdir()) == []


def test_import_never_adds_tables_to_a_foreign_database(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "other-app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    result = run_cli("import", path, "-", input="payload\n1\n")
    assert result.returncode == 1
    assert "not a workmatic database" in one_line_error(result.stderr)
    conn = sqlite3.connect(path)
    tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    conn.close()
    assert tables == ["invoices"]


def test_skip_invalid_imports_the_rest(tmp_path: Path) -> None:
    path = make_db(tmp_path / "jobs.db")
    data = "payload,priority\n1,0\n2,x\n3,0\n{,0\n5,0\n"
    result = run_cli("import", path, "-", "--skip-invalid", input=data)
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        "line 3: priority: Not a valid integer.",
        "line 5: payload: Not valid JSON: Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1).",
    ]
    assert result.stdout.strip() == "imported 3 jobs, skipped 2 invalid rows"
    with workmatic.create_database(str(path)) as db:
        assert [j.payload for j in db.iter_jobs()] == [1, 3, 5]


def test_dry_run_validates_and_imports_nothing(tmp_path: Path) -> None:
    path = make_db(tmp_path / "jobs.db")
    ok = run_cli("import", path, "-", "--dry-run", input="payload\n1\n2\n")
    assert ok.returncode == 0
    assert ok.stdout.strip() == "dry run: 2 rows, 2 valid, 0 invalid; nothing imported"
    bad = run_cli("import", path, "-", "--dry-run", "--json", input="payload\n1\n{\n")
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["errors"][0]["line"] == 3
    with workmatic.create_database(str(path)) as db:
        assert db.count_jobs() == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("", "the file is empty: a CSV header line is required"),
        ("queue,priority\nq,1\n", "line 1: the header has no 'payload' column (it is required)"),
        ("payload,prio\n1,2\n", "line 1: unknown column(s) 'prio'; expected some of: "),
        ("payload,payload\n1,2\n", "line 1: column 'payload' appears twice"),
        ('payload\n"unterminated\n', "malformed CSV"),
        ('payload\n"a"b\n', "malformed CSV"),
    ],
    ids=["empty", "no-payload", "unknown-column", "duplicate-column", "eof-in-quote", "quote"],
)
def test_malformed_files_are_one_line_errors(tmp_path: Path, data: str, message: str) -> None:
    path = make_db(tmp_path / "jobs.db")
    result = run_cli("import", path, "-", input=data)
    assert result.returncode == 1
    assert message in one_line_error(result.stderr)


def test_not_utf8_is_a_one_line_error(tmp_path: Path) -> None:
    path = make_db(tmp_path / "jobs.db")
    result = run_cli_bytes("import", path, "-", input=b'payload\n"caf\xe9"\n')
    assert result.returncode == 1
    assert "not UTF-8 text" in one_line_error(result.stderr.decode())


def test_missing_csv_file(tmp_path: Path) -> None:
    path = make_db(tmp_path / "jobs.db")
    result = run_cli("import", path, tmp_path / "nope.csv")
    assert result.returncode == 1
    assert one_line_error(result.stderr).endswith("nope.csv: No such file or directory")


def test_export_filters(nasty_db: Path) -> None:
    dead = run_cli_bytes("export", nasty_db, "--status", "dead").stdout.decode().split("\r\n")
    assert dead[0] == HEADER and len(dead) == 3 and ",results," in dead[1]
    done = run_cli_bytes("export", nasty_db, "--queue=results", "--status=done").stdout.decode()
    assert '"{""answer"":42,""text"":""a\\nb,c\\""d""}"' in done


def test_progress_is_shown_on_a_terminal_only(tmp_path: Path) -> None:
    import os
    import pty
    import subprocess
    import sys

    from cli_helpers import child_env

    path = make_db(tmp_path / "jobs.db")
    with workmatic.create_database(str(path)) as db:
        workmatic.create_client(db).add_many(list(range(10_000)))
    # The counter first draws after its interval (0.25 s: a quick export shows nothing);
    # here at once, however fast the machine.
    env = child_env(WORKMATIC_PROGRESS_INTERVAL="0")
    main_fd, child_fd = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "workmatic.cli", "export", str(path), str(tmp_path / "o.csv")],
            stderr=child_fd, stdout=subprocess.DEVNULL, env=env, timeout=60,
        )  # fmt: skip
        os.close(child_fd)
        child_fd = -1
        shown = b""
        while True:
            try:
                chunk = os.read(main_fd, 65536)
            except OSError:  # EIO: the child side is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(main_fd)
        if child_fd >= 0:
            os.close(child_fd)
    assert proc.returncode == 0
    assert b"\rexported 10,000 of 10,000 (100%)\r\n" in shown
    piped = run_cli("export", path, tmp_path / "p.csv")
    assert piped.stderr == ""


def test_a_stored_payload_that_is_not_json_is_exported_raw(tmp_path: Path) -> None:
    path = make_db(tmp_path / "jobs.db")
    with workmatic.create_database(str(path)) as db:  # written by some other tool
        db.import_jobs([{"public_id": "b1", "payload": "{broken", "queue": "default"}])
    assert "{broken" in run_cli("list", path).stdout
    exported = run_cli_bytes("export", path).stdout.decode()
    assert "\r\nb1,default,{broken,ready," in exported
    result = run_cli("import", tmp_path / "copy.db", "-", input=exported)
    assert result.returncode == 1
    assert result.stderr.startswith("line 2: payload: Not valid JSON")
