"""Fast in-process tests of the CLI's and the runner's argument handling, the CSV helpers
and CsvRowSchema (no subprocess, and nothing here monkey-patches)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import marshmallow
import pytest
from cli_helpers import make_db, seed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import workmatic
from workmatic import _csv, cli, runner
from workmatic.schemas import CsvRowSchema


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["list", "x.db", "--status=dead", "--limit=10"], {"status": "dead", "limit": 10}),
        (["list", "x.db", "--status", "dead", "--limit", "10"], {"status": "dead", "limit": 10}),
        (["list", "--status", "dead", "x.db"], {"status": "dead", "db": "x.db"}),
        (["export", "x.db", "-s", "failed", "out.csv"], {"status": "failed", "file": "out.csv"}),
        (["export", "x.db", "--safe-formulas"], {"file": None, "safe_formulas": True}),
        (["purge", "x.db", "--status=done,dead"], {"status": ("done", "dead"), "all": False}),
        (["purge", "x.db", "--all", "-Q", "q"], {"status": None, "all": True, "queue": "q"}),
        (["retry", "x.db", "a", "b"], {"job_ids": ["a", "b"], "status": None}),
        (["retry", "x.db", "--status", " dead, failed "], {"status": ("dead", "failed")}),
        (["import", "x.db", "-", "--queue=q", "--skip-invalid"], {"queue": "q", "file": "-"}),
        (["dashboard", "x.db", "--port=0", "--host", "0.0.0.0"], {"port": 0, "host": "0.0.0.0"}),
        (["stats", "x.db", "--lock-timeout", "0.5"], {"lock_timeout": 0.5}),
    ],
)
def test_arguments_parse(argv: list[str], expected: dict[str, object]) -> None:
    args = cli.build_parser().parse_args(argv)
    for name, value in expected.items():
        assert getattr(args, name) == value


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["list", "x.db", "--status=sleeping"], "invalid choice: 'sleeping'"),
        (["list", "x.db", "--limit=-1"], "must be at least 1"),
        (["purge", "x.db", "--status=done,sleeping"], "unknown status 'sleeping'"),
        (["purge", "x.db", "--status=done", "--all"], "not allowed with argument"),
        (["purge", "x.db", "--status=running"], "running jobs are never purged"),
        (["retry", "x.db"], "give job ids or --status"),
        (["retry", "x.db", "a", "--status=dead"], "give job ids, or --status"),
        (["retry", "x.db", "--status=ready"], "ready jobs are already waiting"),
        (["retry", "x.db", "--status=dead,running"], "running jobs cannot be retried"),
        (["dashboard", "x.db", "--port=70000"], "not a TCP port"),
        (["dashboard", "x.db", "--auth", "nopassword"], "--auth must be USER:PASSWORD"),
    ],
)
def test_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = [str(tmp_path / a) if a == "x.db" else a for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "usage:" in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["export", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--safe-formulas" in out and "--status" in out and "--queue" in out


def test_main_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_db(tmp_path / "jobs.db")
    seed(path, [{"payload": "1", "status": "dead"}, {"payload": "2"}])
    assert cli.main(["stats", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"]["dead"] == 1
    assert cli.main(["retry", str(path), "--status=dead"]) == 0
    assert capsys.readouterr().out.strip() == "retried 1 job: back to ready"
    assert cli.main(["stats", str(tmp_path / "missing.db")]) == 1
    assert "no such database file" in capsys.readouterr().err


# --- the runner's settings


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        (
            ["m:f"],
            {},
            {"db": None, "queue": "default", "concurrency": 1, "lease": 30.0, "grace": 30.0},
        ),
        (
            ["m:f"],
            {"WORKMATIC_DB": "a.db", "WORKMATIC_QUEUE": "q", "WORKMATIC_CONCURRENCY": "4"},
            {"db": "a.db", "queue": "q", "concurrency": 4, "explicit": set()},
        ),
        (
            ["m:f", "--queue", "cli", "-c", "2"],
            {"WORKMATIC_QUEUE": "env", "WORKMATIC_CONCURRENCY": "9"},
            {"queue": "cli", "concurrency": 2, "explicit": {"queue", "concurrency"}},
        ),
        (["m:f", "--timeout", "none"], {"WORKMATIC_TIMEOUT": "5"}, {"timeout": None}),
        (["m:f"], {"WORKMATIC_TIMEOUT": "2.5"}, {"timeout": 2.5}),
        (["m:f", "--grace=0"], {}, {"grace": 0.0}),
        (["m:f", "-v", "-v"], {}, {"verbosity": 2}),
        (["m:f", "-q"], {}, {"verbosity": -1}),
        (
            ["m:f", "--dashboard-port", "8080"],
            {"WORKMATIC_DASHBOARD_HOST": "0.0.0.0"},
            {"dashboard_port": 8080, "dashboard_host": "0.0.0.0"},
        ),
    ],
)
def test_runner_settings(
    argv: list[str], environ: dict[str, str], expected: dict[str, object]
) -> None:
    settings = runner.parse_settings(argv, environ)
    for name, value in expected.items():
        assert getattr(settings, name) == value


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["m:f"], {"WORKMATIC_CONCURRENCY": "lots"}, "WORKMATIC_CONCURRENCY='lots'"),
        (["m:f", "--lease", "0"], {}, "must be more than 0"),
        (["m:f", "--grace", "-1"], {}, "must be a finite number >= 0"),
        ([], {}, "the following arguments are required: TARGET"),
    ],
)
def test_runner_usage_errors(
    argv: list[str], environ: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        runner.parse_settings(argv, environ)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_runner_help_names_every_environment_variable() -> None:
    text = runner.build_parser().format_help()
    for variable, _default in runner.ENVIRONMENT.values():
        assert variable in text


# --- CSV helpers


@pytest.mark.parametrize(
    "cell",
    ["=1+1", "+1", "-1", "@x", "\tx", "\rx", "'=x", "''+x", "'plain", "plain", "", "'", "a=b"],
)
def test_formula_escaping_is_exactly_undone(cell: str) -> None:
    row = [cell] * len(_csv.COLUMNS)
    escaped = _csv.escape_formulas(list(row))
    text_cells = [escaped[i] for i, name in enumerate(_csv.COLUMNS) if name in {"payload", "key"}]
    for value in text_cells:
        assert not value or value[0] not in "=+-@\t\r"
        assert _csv.unescape_formulas(value) == cell
    assert escaped[_csv.COLUMNS.index("priority")] == cell  # numbers are left alone


def test_progress_draws_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    progress = _csv.Progress("exported", total=2000, stream=tty, interval=0)
    progress.update(1000)
    progress.update(2000)
    progress.finish()
    assert tty.getvalue().endswith("\rexported 2,000 of 2,000 (100%)\n")

    pipe = io.StringIO()
    quiet = _csv.Progress("exported", stream=pipe, interval=0)
    quiet.update(5)
    quiet.finish()
    assert pipe.getvalue() == ""


def test_csv_row_schema_defaults_and_types() -> None:
    record = CsvRowSchema(default_queue="emails", now_ms=1234).load(
        {"payload": '{"a": 1}', "priority": " -3 ", "lease_until": "0", "status": "", "key": ""}
    )
    assert record == {
        "public_id": None,
        "queue": "emails",
        "payload": '{"a": 1}',
        "status": "ready",
        "priority": -3,
        "run_at": 1234,
        "attempts": 0,
        "max_attempts": 3,
        "lease_until": None,
        "created_at": 1234,
        "updated_at": 1234,
        "last_error": None,
        "result": None,
        "key": None,
    }


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"payload": "{"}, "payload"),
        ({"payload": "Infinity"}, "payload"),
        ({"payload": "1", "status": "asleep"}, "status"),
        ({"payload": "1", "priority": "1e3"}, "priority"),
        ({"payload": "1", "attempts": "²"}, "attempts"),
        ({"payload": "1", "max_attempts": "0"}, "max_attempts"),
        ({"payload": "1", "updated_at": "-1"}, "updated_at"),
        ({"payload": "1", "result": "{"}, "result"),
        ({"payload": "1", "queue": "q" * 256}, "queue"),
        ({"payload": "1", "public_id": "a/b"}, "public_id"),
        ({"payload": "1", "color": "red"}, "color"),
        ({}, "payload"),
    ],
)
@pytest.mark.parametrize("method", ["load", "load_row"])
def test_csv_row_schema_rejects(row: dict[str, str], field: str, method: str) -> None:
    schema = CsvRowSchema()
    for _ in range(2):  # the second time through load_row's memo
        with pytest.raises(marshmallow.ValidationError) as exc:
            getattr(schema, method)(row)
        assert field in exc.value.messages


@pytest.mark.parametrize(
    "row",
    [
        {"payload": "1"},
        {"payload": '{"a": [1, "x"]}', "queue": "q", "status": "dead", "priority": "-7"},
        {"payload": "null", "attempts": "2", "max_attempts": "5", "lease_until": "0"},
        {"payload": '"s"', "run_at": "1", "created_at": "2", "updated_at": "3", "key": "k"},
        {"payload": "[]", "public_id": "job_001", "last_error": "e\nf", "result": "{}"},
        {"payload": "2", "status": "", "priority": "", "lease_until": "17"},
    ],
)
def test_load_row_is_load(row: dict[str, str]) -> None:
    schema = CsvRowSchema(default_queue="d", now_ms=99)
    for _ in range(2):
        fast, slow = schema.load_row(row), schema.load(row)
        assert fast == slow


def test_export_import_helpers_in_process(tmp_path: Path) -> None:
    path = make_db(tmp_path / "jobs.db")
    seed(path, [{"payload": json.dumps({"text": "a\nb"})}, {"payload": "2", "status": "dead"}])
    out = io.StringIO(newline="")
    with workmatic.create_database(str(path)) as db:
        assert _csv.export_csv(db, out, status="dead") == 1
    lines = out.getvalue().split("\r\n")
    assert lines[0] == ",".join(_csv.COLUMNS) and ",2,dead," in lines[1] and lines[2] == ""


_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _TEXT
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same inputs on every run: a failure reproduces
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {
                "payload": _JSON,
                "queue": _TEXT.filter(lambda s: len(s) > 0),
                "last_error": st.none() | _TEXT,
                "result": st.none() | _JSON.filter(lambda v: v is not None),
                "key": st.none() | _TEXT.filter(lambda s: len(s) > 0),
                "status": st.sampled_from(["ready", "done", "failed", "dead"]),
                "priority": st.integers(-1000, 1000),
            }
        ),
        min_size=1,
        max_size=8,
    ),
    safe=st.booleans(),
)
def test_csv_round_trip_property(rows: list[dict[str, object]], safe: bool) -> None:
    """Whatever the text, export -> import gives the same jobs (with or without
    --safe-formulas on both sides)."""
    records = []
    for i, row in enumerate(rows):
        record = dict(row, public_id=f"id{i}", payload=json.dumps(row["payload"]))
        record["result"] = None if row["result"] is None else json.dumps(row["result"])
        record["last_error"] = row["last_error"] or None
        records.append(CsvRowSchema().load({k: v for k, v in record.items() if v is not None}))
    with workmatic.create_database(":memory:") as source:
        source.import_jobs(records)
        out = io.StringIO(newline="")
        _csv.export_csv(source, out, safe_formulas=safe)
        with workmatic.create_database(":memory:") as copy:
            report = _csv.import_csv(copy, io.StringIO(out.getvalue(), newline=""), unescape=safe)
            assert (report.inserted, report.invalid) == (len(rows), 0)
            assert list(copy.iter_jobs()) == list(source.iter_jobs())
