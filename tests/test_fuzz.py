"""Bad input, fuzzed with hypothesis: ``add()`` options and payloads, CSV import files,
dashboard paths and query strings, and CLI argument lists.

Every property is "a clean answer or a clean refusal, and nothing half-written":

* ``add()`` / ``add_many()`` succeed (and store exactly the JSON of the payload) or raise
  :class:`workmatic.ValidationError` and write no row; nothing else escapes.
* ``workmatic import DB FILE`` exits 0, 1 or 2, never prints a traceback, and writes
  nothing when it does not exit 0.
* The dashboard never answers 5xx, whatever the path, query string or method.
* ``workmatic.cli.main(argv)`` returns 0, 1 or 2 and never prints a traceback.

CI runs a bounded, derandomised number of examples per property (reproducible); set
``WORKMATIC_FUZZ_EXAMPLES`` to run more locally. Each property prints a ``FIGURES`` line
(``-s``) with the inputs tried, for the README's Reliability section.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import decimal
import io
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import workmatic
from workmatic import cli

EXAMPLES = int(os.environ.get("WORKMATIC_FUZZ_EXAMPLES", "250"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

#: Inputs tried and outcomes seen, by property (printed as FIGURES at the end of each).
TALLY: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)


def figures(name: str) -> None:
    print(f"FIGURES fuzz_{name}", json.dumps(dict(TALLY[name])))


# --- strategies ---------------------------------------------------------------------------

#: Any text, including lone surrogates (not valid Unicode: never storable).
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=30)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,
)
non_json = st.one_of(
    st.binary(max_size=10),
    st.sets(st.integers(), max_size=3),
    st.complex_numbers(allow_nan=False),
    st.decimals(allow_nan=False),
    st.datetimes(),
    st.builds(object),
    st.just(math.nan),
    st.builds(lambda: 10**5000),  # beyond Python's int-to-text limit
)
json_ish = st.recursive(
    st.one_of(json_scalars, non_json),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(any_text, children, max_size=4),
        st.dictionaries(st.one_of(st.integers(), st.booleans(), st.none()), children, max_size=2),
    ),
    max_leaves=12,
)
option_values = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    any_text,
    st.timedeltas(),
    st.just(decimal.Decimal("1.5")),
    st.lists(st.integers(), max_size=2),
)
add_options = st.fixed_dictionaries(
    {},
    optional={
        "priority": option_values,
        "delay": option_values,
        "max_attempts": option_values,
        "key": st.one_of(option_values, any_text, st.text(min_size=250, max_size=300)),
        "unknown_option": option_values,
    },
)


def canonical(payload: Any) -> Any:
    """What a stored payload must read back as: its strict-JSON round trip."""
    return json.loads(json.dumps(payload, allow_nan=False))


# --- add() ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[workmatic.Database]:
    database = workmatic.create_database(str(tmp_path_factory.mktemp("fuzz") / "jobs.db"))
    yield database
    database.close()


def test_add_succeeds_or_raises_validation_error_and_writes_nothing(
    fuzz_db: workmatic.Database,
) -> None:
    client = workmatic.create_client(fuzz_db, "fuzz")

    @FUZZ
    @given(payload=json_ish, options=add_options)
    def check(payload: Any, options: dict[str, Any]) -> None:
        before = fuzz_db.count_jobs(queue="fuzz")
        TALLY["add"]["inputs"] += 1
        try:
            job_id = client.add(payload, **options)
        except workmatic.ValidationError as exc:
            TALLY["add"]["validation_errors"] += 1
            assert exc.messages and isinstance(exc.messages, dict)
            assert fuzz_db.count_jobs(queue="fuzz") == before, "a refused add wrote a row"
            return
        TALLY["add"]["accepted"] += 1
        job = fuzz_db.get_job(job_id)
        assert job is not None and job.status == "ready"
        if fuzz_db.count_jobs(queue="fuzz") == before + 1:
            assert job.payload == canonical(payload)
        else:  # an active job already holds this idempotency key: add() returned it
            assert fuzz_db.count_jobs(queue="fuzz") == before
            assert options.get("key") is not None and job.key == options["key"]

    check()
    figures("add")


def test_add_many_is_all_or_nothing(fuzz_db: workmatic.Database) -> None:
    client = workmatic.create_client(fuzz_db, "fuzz-many")

    @FUZZ
    @given(payloads=st.lists(json_ish, max_size=6), options=add_options)
    def check(payloads: list[Any], options: dict[str, Any]) -> None:
        options.pop("key", None)  # add_many takes no key
        before = fuzz_db.count_jobs(queue="fuzz-many")
        TALLY["add_many"]["inputs"] += 1
        try:
            ids = client.add_many(payloads, **options)
        except workmatic.ValidationError:
            TALLY["add_many"]["validation_errors"] += 1
            assert fuzz_db.count_jobs(queue="fuzz-many") == before, "a refused batch wrote rows"
            return
        TALLY["add_many"]["accepted"] += 1
        assert len(ids) == len(payloads) == fuzz_db.count_jobs(queue="fuzz-many") - before
        for job_id, payload in zip(ids, payloads, strict=True):
            job = fuzz_db.get_job(job_id)
            assert job is not None and job.payload == canonical(payload)

    check()
    figures("add_many")


# --- CSV import ---------------------------------------------------------------------------

COLUMNS = [
    "public_id", "queue", "payload", "status", "priority", "run_at", "attempts",
    "max_attempts", "lease_until", "created_at", "updated_at", "last_error", "result", "key",
]  # fmt: skip
good_cells: dict[str, st.SearchStrategy[str]] = {
    "public_id": st.from_regex(r"[A-Za-z0-9_.~-]{1,20}", fullmatch=True),
    "queue": st.sampled_from(["default", "q", "emails"]),
    "payload": st.sampled_from(['{"a":1}', "[1,2]", '"text"', "null", "3"]),
    "status": st.sampled_from(["ready", "running", "done", "failed", "dead"]),
    "priority": st.integers(-10, 10).map(str),
    "run_at": st.integers(0, 2_000_000_000_000).map(str),
    "attempts": st.integers(0, 5).map(str),
    "max_attempts": st.integers(1, 5).map(str),
    "lease_until": st.just("0"),
    "created_at": st.integers(0, 2_000_000_000_000).map(str),
    "updated_at": st.integers(0, 2_000_000_000_000).map(str),
    "last_error": st.text(max_size=20),
    "result": st.sampled_from(["", '{"ok":true}']),
    "key": st.sampled_from(["", "k1", "k2"]),
}
bad_cells = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", "NaN", "1e400", "-1", "9" * 40, "{", "[1,", '"x', "\x00", "=1+1"]),
    st.integers().map(str),
    st.just("x" * 100_000),  # a huge field
)


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    """A CSV file that is usually almost right: a header of some known columns (payload
    sometimes missing), maybe unknown extra columns, rows of good and bad cells, short
    and long rows, in a random encoding -- or plain random bytes."""
    mode = draw(st.sampled_from(["bytes", "valid", "valid", "mixed", "mixed", "mixed"]))
    if mode == "bytes":
        return draw(st.binary(max_size=300))
    header = draw(st.lists(st.sampled_from(COLUMNS), unique=True, min_size=0, max_size=8))
    if (mode == "valid" or draw(st.booleans())) and "payload" not in header:
        header.append("payload")
    if mode == "mixed":
        header += draw(st.lists(st.sampled_from(["extra", "", "PAYLOAD", "payload "]), max_size=2))
    rows = []
    for _ in range(draw(st.integers(0, 5))):
        row = []
        for name in header:
            good = good_cells.get(name)
            usable = good is not None and (mode == "valid" or draw(st.integers(0, 4)) > 0)
            row.append(draw(good) if usable and good is not None else draw(bad_cells))
        if mode == "mixed":
            row += draw(st.lists(st.text(max_size=5), max_size=1 if draw(st.booleans()) else 0))
            if row and draw(st.integers(0, 6)) == 0:
                row.pop()
        rows.append(row)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=draw(st.sampled_from(["\r\n", "\n"])))
    writer.writerow(header)
    writer.writerows(rows)
    text = buffer.getvalue()
    encodings = ["utf-8", "utf-8-sig"] if mode == "valid" else ["utf-8", "utf-16", "latin-1"]
    encoding = draw(st.sampled_from(encodings))
    return text.encode(encoding, errors="replace")


def snapshot(path: Path) -> list[tuple[str, str, str]]:
    with workmatic.create_database(str(path), create=False) as db:
        return [(j.id, j.status, json.dumps(j.payload)) for j in db.iter_jobs()]


@pytest.fixture(scope="module")
def csv_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("csv") / "jobs.db"
    with workmatic.create_database(str(path)) as db:
        workmatic.create_client(db, "q").add_many([{"n": k} for k in range(3)])
    return path


def call_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def test_csv_import_exits_cleanly_and_writes_nothing_on_error(csv_db: Path, tmp_path: Path) -> None:
    source = tmp_path / "jobs.csv"
    flags = ["--skip-invalid", "--dry-run", "--safe-formulas", "--json"]

    @FUZZ
    @given(data=csv_files(), options=st.lists(st.sampled_from(flags), unique=True, max_size=2))
    def check(data: bytes, options: list[str]) -> None:
        source.write_bytes(data)
        before = snapshot(csv_db)
        TALLY["csv_import"]["inputs"] += 1
        code, _, err = call_cli(["import", str(csv_db), str(source), *options])
        TALLY["csv_import"][f"exit_{code}"] += 1
        assert code in (0, 1, 2), err
        assert "Traceback" not in err, err
        after = snapshot(csv_db)
        if code != 0 or "--dry-run" in options:
            assert after == before, "nothing may be written when the import fails"
            TALLY["csv_import"]["refused_and_unchanged"] += 1
        else:
            assert set(before) <= set(after), "an import never changes existing jobs"

    check()
    figures("csv_import")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(bytes(range(256)) * 4, id="random-bytes"),
        pytest.param('payload,queue\n"{""a"": 1}",q\n'.encode("utf-16"), id="utf-16"),
        pytest.param(b'payload\n"' + b"x" * 300_000 + b'"\n', id="huge-field"),
        pytest.param(b"queue,status\nq,ready\n", id="no-payload-column"),
        pytest.param(b'payload,extra,more\n"{}",1,2\n', id="extra-columns"),
        pytest.param(b'payload\n"{}"\n"{"\n', id="bad-json-second-row"),
        pytest.param(b'payload\n"{\xff}"\n', id="not-utf-8"),
    ],
)
def test_csv_import_subprocess_never_tracebacks(tmp_path: Path, data: bytes) -> None:
    db = tmp_path / "jobs.db"
    with workmatic.create_database(str(db)) as database:
        workmatic.create_client(database, "q").add({"keep": True})
    before = snapshot(db)
    source = tmp_path / "in.csv"
    source.write_bytes(data)
    proc = subprocess.run(
        [sys.executable, "-m", "workmatic.cli", "import", str(db), str(source)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode in (0, 1, 2) and "Traceback" not in proc.stderr, proc.stderr
    if proc.returncode != 0:
        assert "workmatic: error:" in proc.stderr, proc.stderr
        assert snapshot(db) == before


# --- dashboard ------------------------------------------------------------------------------

KNOWN_ID = "fuzz-known-id"  # a dead job: retry and detail routes find it
segments = st.one_of(
    st.sampled_from(
        [
            "",
            "api",
            "stats",
            "jobs",
            "queues",
            "workers",
            "static",
            "pause",
            "resume",
            "retry",
            "index.html",
            "app.js",
            "style.css",
            "..",
            ".",
            "%2F",
            "%2e%2e",
            "%00",
            "%ff",
            "%",
            "q",
            "default",
            "a%20b",
            "x" * 300,
            ";x=1",
            "%3F",
            "%23",
        ]
    ),
    st.text(st.characters(codec="utf-8", exclude_characters="/?#"), max_size=8),
)
query_values = st.one_of(
    st.sampled_from(["", "ready", "dead", "running", "-1", "0", "1", "100", "101", "1e3",
                     "9" * 30, "nan", "q", "%00", "%ff", "null"]),
    st.text(max_size=10),
)  # fmt: skip
query_names = st.sampled_from(["status", "queue", "limit", "offset", "x", "", "status[]"])


ROUTES = [
    "/", "/api/stats", "/api/jobs", "/api/jobs/{}", "/api/jobs/{}/retry", "/api/queues/{}/pause",
    "/api/queues/{}/resume", "/api/queues/{}/retry", "/api/workers/{}/pause",
    "/api/workers/{}/resume", "/static/{}",
]  # fmt: skip


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, str, dict[str, str]]:
    if draw(st.booleans()):  # a real route with a fuzzed parameter
        path = draw(st.sampled_from(ROUTES)).replace("{}", draw(segments) or "q")
    else:
        path = "/" + "/".join(draw(st.lists(segments, max_size=5)))
    if draw(st.booleans()):
        path = path.replace("/", "//", 1)
    params = draw(st.lists(st.tuples(query_names, query_values), max_size=4))
    query = "&".join(f"{k}={v}" for k, v in params)
    method = draw(st.sampled_from(["GET", "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS"]))
    headers = draw(
        st.sampled_from(
            [
                {},
                {"Sec-Fetch-Site": "same-origin"},
                {"Origin": "http://localhost"},
                {"Origin": "null"},
            ]
        )
    )
    return method, path, query, headers


@pytest.fixture(scope="module")
def dash_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[workmatic.Database]:
    database = workmatic.create_database(str(tmp_path_factory.mktemp("dash") / "jobs.db"))
    client = workmatic.create_client(database, "q")
    client.add_many([{"n": k, "html": "<script>x</script>"} for k in range(30)])
    database.import_jobs([{"public_id": KNOWN_ID, "payload": '{"a": 1}', "status": "dead"}])
    database.pause_queue("paused")
    yield database
    database.close()


def test_dashboard_never_answers_5xx(dash_db: workmatic.Database) -> None:
    from werkzeug.test import Client

    def fallback(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"app"]

    plain = Client(workmatic.create_dashboard_app(dash_db))
    mounted = Client(workmatic.create_dashboard_middleware(fallback, dash_db, path="/workmatic"))

    @FUZZ
    @given(request=requests(), under_mount=st.booleans())
    def check(request: tuple[str, str, str, dict[str, str]], under_mount: bool) -> None:
        method, path, query, headers = request
        client = mounted if under_mount else plain
        if under_mount:
            path = "/workmatic" + path
        TALLY["dashboard"]["inputs"] += 1
        response = client.open(path, method=method, query_string=query, headers=headers)
        TALLY["dashboard"][f"status_{response.status_code // 100}xx"] += 1
        assert response.status_code < 500, (method, path, query, response.get_data()[:300])

    check()
    figures("dashboard")


# --- CLI arguments ----------------------------------------------------------------------------

COMMANDS = ["stats", "queues", "pause", "resume", "list", "show", "export", "import",
            "purge", "retry"]  # fmt: skip
OPTIONS = ["--status", "--status=dead", "--status=done,dead", "-s", "--queue", "-Q", "--json",
           "--limit", "--offset", "--all", "--skip-invalid", "--dry-run", "--safe-formulas",
           "--lock-timeout", "--lock-timeout=0.1", "--help", "-h", "--version", "--",
           "--port", "--unknown", "-x"]  # fmt: skip
VALUES = ["dead", "ready", "running", "done,failed", "q", "default", "0", "1", "-1", "10",
          "1e9", "nan", "inf", "", " ", "x" * 300, "\x7f", "é", "a,b"]  # fmt: skip
PLAUSIBLE = ["--json", "--status=dead", "--status=done", "-Q", "q", "--queue=q", "--limit=5",
             "--all", "--dry-run", "--skip-invalid", "--safe-formulas", "--offset=1"]  # fmt: skip
FORBIDDEN = {"dashboard", "worker", "-", "/dev/stdin"}  # would serve forever or read stdin


@st.composite
def argvs(draw: st.DrawFn, paths: list[str]) -> list[str]:
    tokens = st.one_of(
        st.sampled_from(OPTIONS),
        st.sampled_from(VALUES),
        st.sampled_from(paths),
        st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=10),
    )
    mode = draw(st.integers(0, 9))
    if mode < 4:  # a plausible command line: a command, the database, valid options
        command = draw(st.sampled_from(COMMANDS))
        argv = [command, paths[0], *draw(st.lists(st.sampled_from(PLAUSIBLE), max_size=3))]
        if command in ("import", "export", "show"):
            argv.insert(2, draw(st.sampled_from(paths[3:])))
        return [a for a in argv if a not in FORBIDDEN]
    argv = draw(st.lists(tokens, max_size=6))
    if mode < 9:
        argv = [draw(st.sampled_from(COMMANDS)), draw(st.sampled_from(paths)), *argv]
    return [a for a in argv if a not in FORBIDDEN]


@pytest.fixture(scope="module")
def cli_paths(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("cli")
    db = root / "jobs.db"
    with workmatic.create_database(str(db)) as database:
        client = workmatic.create_client(database, "q")
        client.add_many([{"n": k} for k in range(5)])
    (root / "not-a-db.db").write_bytes(b"hello, this is not sqlite" * 10)
    (root / "in.csv").write_text('payload,queue\n"{}",q\n')
    (root / "dir").mkdir()
    return [str(db), str(root / "missing.db"), str(root / "not-a-db.db"), str(root / "in.csv"),
            str(root / "dir"), str(root / "out.csv")]  # fmt: skip


def test_cli_fuzz(cli_paths: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # relative names the fuzzer invents land here

    @FUZZ
    @given(argv=argvs(cli_paths))
    def check(argv: list[str]) -> None:
        TALLY["cli"]["inputs"] += 1
        code, _, err = call_cli(argv)
        TALLY["cli"][f"exit_{code}"] += 1
        assert code in (0, 1, 2), (argv, err)
        assert "Traceback" not in err, (argv, err)

    check()
    figures("cli")


def test_cli_never_exits_through_system_exit(cli_paths: list[str]) -> None:
    """``main()`` returns its status (usage errors included); it never raises."""
    for argv in (["--help"], ["--version"], [], ["list"], ["nope"], ["list", cli_paths[0]]):
        code, _, err = call_cli(argv)
        assert code in (0, 1, 2) and "Traceback" not in err
