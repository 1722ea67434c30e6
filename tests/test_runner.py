"""``workmatic-worker``, run as a real (monkey-patched) subprocess on a small module written
to tmp_path: targets, graceful and forced stops, the CLI's pause across processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
from cli_helpers import child_env, make_db, run_cli, wait_for

import workmatic

JOBS_MODULE = '''
"""Test jobs: each handled job id is appended to handled.log (start and done lines)."""
import os
import time

from gevent import monkey

PATCHED_BEFORE_IMPORT = monkey.is_module_patched("socket") and monkey.is_module_patched("time")

import workmatic

LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "handled.log")
DB = os.environ.get("JOBS_DB", "jobs.db")
NUMBER = 42


def _record(event, job):
    with open(LOG, "a") as f:
        f.write(f"{event} {job.id} {job.queue}\\n")


def handle(job):
    _record("start", job)
    seconds = job.payload.get("sleep", 0) if isinstance(job.payload, dict) else 0
    time.sleep(seconds)  # patched: cooperative
    _record("done", job)
    return {"patched": PATCHED_BEFORE_IMPORT}


def make_worker():
    db = workmatic.create_database(DB)
    return workmatic.create_worker(db, "emails", poll_interval=0.05, handler=handle)


def make_orchestrator():
    orchestrator = workmatic.create_orchestrator(workmatic.create_database(DB))
    for queue in ("a", "b"):
        orchestrator.register(queue, poll_interval=0.05).process(handle)
    return orchestrator


def make_list():
    db = workmatic.create_database(DB)
    return [workmatic.create_worker(db, q, poll_interval=0.05, handler=handle) for q in ("a", "b")]
'''

WORKER_MODULE = """
import workmatic
from jobs_mod import DB, handle

worker = workmatic.create_worker(workmatic.create_database(DB), "emails", poll_interval=0.05)
worker.process(handle)
"""


class Runner:
    """A ``workmatic-worker`` subprocess; stderr goes to a file we can poll."""

    def __init__(self, cwd: Path, *args: object, env: dict[str, str] | None = None) -> None:
        self.cwd = cwd
        self.log_path = cwd / f"runner-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workmatic.runner", *map(str, args)],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env=env or child_env(JOBS_DB=str(cwd / "jobs.db")),
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_started(self) -> None:
        wait_for(lambda: "started:" in self.log or self.proc.poll() is not None, what="start")
        assert "started:" in self.log, self.log

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 15) -> int:
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "jobs_mod.py").write_text(JOBS_MODULE)
    (tmp_path / "worker_mod.py").write_text(WORKER_MODULE)
    make_db(tmp_path / "jobs.db")
    return tmp_path


@pytest.fixture
def runners() -> Iterator[list[Runner]]:
    started: list[Runner] = []
    yield started
    for runner in started:
        runner.close()


@pytest.fixture
def db(workdir: Path) -> Iterator[workmatic.Database]:
    database = workmatic.create_database(str(workdir / "jobs.db"))
    yield database
    database.close()


def start(runners: list[Runner], cwd: Path, *args: object, **kwargs: object) -> Runner:
    runner = Runner(cwd, *args, **kwargs)  # type: ignore[arg-type]
    runners.append(runner)
    return runner


def handled(workdir: Path, event: str = "done") -> list[str]:
    path = workdir / "handled.log"
    if not path.exists():
        return []
    return [line.split()[1] for line in path.read_text().splitlines() if line.split()[0] == event]


def status(db: workmatic.Database, job_id: str) -> str:
    job = db.get_job(job_id)
    assert job is not None
    return job.status


# --- importing and running targets


def test_importing_the_runner_patches_nothing() -> None:
    code = (
        "import workmatic.runner, workmatic.cli\n"
        "from gevent import monkey\n"
        "assert not monkey.is_module_patched('socket'), 'patched at import'\n"
        "assert not monkey.is_module_patched('threading'), 'patched at import'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env()
    )
    assert result.returncode == 0, result.stderr


def test_handler_target_runs_jobs_patched_and_stops_on_sigterm(
    workdir: Path, runners: list[Runner], db: workmatic.Database
) -> None:
    client = workmatic.create_client(db, "emails")
    ids = [client.add({"n": i}) for i in range(5)]
    runner = start(
        runners, workdir, "jobs_mod:handle", "--db", "jobs.db", "--queue", "emails",
        "--concurrency", "3", "--poll-interval", "0.05",
    )  # fmt: skip
    wait_for(lambda: len(handled(workdir)) == 5, what="5 jobs handled")
    assert sorted(handled(workdir)) == sorted(ids)
    job = db.get_job(ids[0])
    assert job is not None and job.status == "done"
    assert job.result == {"patched": True}  # user code imported after monkey-patching
    runner.signal(signal.SIGTERM)
    assert runner.wait() == 0
    log = runner.log
    assert "started: pid" in log and "emails (concurrency 3)" in log
    assert "SIGTERM received: stopping" in log
    assert "stopped: processed 5 job(s), 0 failed" in log


@pytest.mark.parametrize(
    ("target", "queues"),
    [
        ("worker_mod:worker", ["emails"]),
        ("jobs_mod:make_worker()", ["emails"]),
        ("jobs_mod:make_orchestrator()", ["a", "b"]),
        ("jobs_mod:make_list()", ["a", "b"]),
    ],
    ids=["worker", "factory", "orchestrator", "list"],
)
def test_worker_orchestrator_and_list_targets(
    workdir: Path, runners: list[Runner], db: workmatic.Database, target: str, queues: list[str]
) -> None:
    ids = [workmatic.create_client(db, q).add({"q": q}) for q in queues]
    runner = start(runners, workdir, target)
    wait_for(lambda: sorted(handled(workdir)) == sorted(ids), what=f"jobs of {queues}")
    runner.signal(signal.SIGINT)
    assert runner.wait() == 0
    assert f"{len(queues)} worker(s)" in runner.log


def test_options_that_a_worker_target_ignores_are_warned_about(
    workdir: Path, runners: list[Runner]
) -> None:
    runner = start(runners, workdir, "worker_mod:worker", "--concurrency", "8")
    runner.wait_started()
    assert "--concurrency: ignored, TARGET is a Worker" in runner.log
    runner.signal()
    assert runner.wait() == 0


def test_environment_variables_give_the_defaults(
    workdir: Path, runners: list[Runner], db: workmatic.Database
) -> None:
    job_id = workmatic.create_client(db, "env-queue").add({})
    env = child_env(
        WORKMATIC_DB=str(workdir / "jobs.db"),
        WORKMATIC_QUEUE="env-queue",
        WORKMATIC_CONCURRENCY="2",
        WORKMATIC_POLL_INTERVAL="0.05",
    )
    runner = start(runners, workdir, "jobs_mod:handle", env=env)
    wait_for(lambda: handled(workdir) == [job_id], what="the env-queue job")
    assert "env-queue (concurrency 2)" in runner.log
    runner.signal()
    assert runner.wait() == 0


def test_help_shows_environment_variables() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "workmatic.runner", "--help"],
        capture_output=True, text=True, env=child_env(),
    )  # fmt: skip
    assert result.returncode == 0
    for variable in ("WORKMATIC_DB", "WORKMATIC_QUEUE", "WORKMATIC_CONCURRENCY", "WORKMATIC_GRACE"):
        assert variable in result.stdout


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["nosuchmodule:handle", "--db", "x.db"], 2, "cannot import 'nosuchmodule': no module"),
        (["jobs_mod:nope", "--db", "x.db"], 2, "module 'jobs_mod' has no attribute 'nope'"),
        (["jobs_mod", "--db", "x.db"], 2, "TARGET must be module:attribute"),
        (["jobs_mod:NUMBER", "--db", "x.db"], 2, "jobs_mod:NUMBER is a int: expected a Worker"),
        (["jobs_mod:handle"], 2, "is a handler function: give --db PATH (or WORKMATIC_DB)"),
        (["jobs_mod:handle", "--concurrency", "0"], 2, "argument --concurrency/-c: must be at"),
        (["jobs_mod:handle", "--db", "missing/dir/x.db"], 1, "unable to open database file"),
    ],
    ids=["no-module", "no-attribute", "no-colon", "not-runnable", "no-db", "bad-option", "bad-db"],
)
def test_a_missing_or_wrong_target_is_a_clear_error(
    workdir: Path, args: list[str], status: int, message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "workmatic.runner", *args],
        capture_output=True, text=True, cwd=workdir, env=child_env(), timeout=60,
    )  # fmt: skip
    assert result.returncode == status, result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("usage:")]
    lines = [line for line in lines if not line.startswith(" ")]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert not (workdir / "x.db").exists()


def test_a_broken_user_module_shows_its_traceback(workdir: Path) -> None:
    (workdir / "broken_mod.py").write_text("raise RuntimeError('boom at import')\n")
    result = subprocess.run(
        [sys.executable, "-m", "workmatic.runner", "broken_mod:x"],
        capture_output=True, text=True, cwd=workdir, env=child_env(),
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "broken_mod.py" in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "workmatic-worker: error: importing broken_mod:x failed: RuntimeError: boom at import"
    )


# --- stopping


def test_a_signal_during_import_means_do_not_start(workdir: Path, db: workmatic.Database) -> None:
    job_id = workmatic.create_client(db, "emails").add({})
    (workdir / "signalled_mod.py").write_text(
        "import os, signal\n"
        "from jobs_mod import make_worker\n"
        "worker = make_worker()\n"
        "os.kill(os.getpid(), signal.SIGTERM)  # as if stopped while the target imports\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "workmatic.runner", "signalled_mod:worker"],
        capture_output=True, text=True, cwd=workdir, timeout=60,
        env=child_env(JOBS_DB=str(workdir / "jobs.db")),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "stopped before starting" in result.stderr
    assert "started:" not in result.stderr
    assert status(db, job_id) == "ready" and handled(workdir, "start") == []


def test_sigterm_lets_a_running_job_finish_within_grace(
    workdir: Path, runners: list[Runner], db: workmatic.Database
) -> None:
    job_id = workmatic.create_client(db).add({"sleep": 1.5})
    runner = start(runners, workdir, "jobs_mod:handle", "--db", "jobs.db", "--grace", "20")
    wait_for(lambda: handled(workdir, "start") == [job_id], what="the job to start")
    runner.signal(signal.SIGTERM)
    assert runner.wait() == 0
    assert handled(workdir) == [job_id]
    assert status(db, job_id) == "done"
    assert "stopping: 1 job(s) running, waiting up to 20s" in runner.log


def test_sigterm_with_a_short_grace_releases_the_job_without_an_attempt(
    workdir: Path, runners: list[Runner], db: workmatic.Database
) -> None:
    job_id = workmatic.create_client(db).add({"sleep": 60})
    runner = start(runners, workdir, "jobs_mod:handle", "--db", "jobs.db", "--grace", "0.3")
    wait_for(lambda: handled(workdir, "start") == [job_id], what="the job to start")
    started = time.monotonic()
    runner.signal(signal.SIGTERM)
    assert runner.wait() == 0
    assert time.monotonic() - started < 10
    job = db.get_job(job_id)
    assert job is not None
    assert (job.status, job.attempts, job.lease_until) == ("ready", 0, None)
    assert handled(workdir) == []


def test_a_second_signal_stops_at_once(
    workdir: Path, runners: list[Runner], db: workmatic.Database
) -> None:
    job_id = workmatic.create_client(db).add({"sleep": 60})
    runner = start(runners, workdir, "jobs_mod:handle", "--db", "jobs.db", "--grace", "60")
    wait_for(lambda: handled(workdir, "start") == [job_id], what="the job to start")
    runner.signal(signal.SIGTERM)
    wait_for(lambda: "stopping:" in runner.log, what="the graceful stop to begin")
    started = time.monotonic()
    runner.signal(signal.SIGINT)
    assert runner.wait() == 128 + signal.SIGINT
    assert time.monotonic() - started < 10
    assert "SIGINT received again: stopping at once" in runner.log
    job = db.get_job(job_id)
    assert job is not None and (job.status, job.attempts) == ("ready", 0)


# --- the CLI's pause and resume, across processes


def test_cli_pause_stops_a_worker_in_another_process_and_resume_restarts_it(
    workdir: Path, runners: list[Runner], db: workmatic.Database
) -> None:
    client = workmatic.create_client(db, "emails")
    first = client.add({"n": 1})
    runner = start(
        runners, workdir, "jobs_mod:handle", "--db", "jobs.db", "--queue", "emails",
        "--poll-interval", "0.05",
    )  # fmt: skip
    wait_for(lambda: handled(workdir) == [first], what="the first job")

    assert run_cli("pause", workdir / "jobs.db", "emails").returncode == 0
    # The contract: a pause is honoured in every process within about a second. Here at
    # once: the claim itself checks the flag, in its write transaction.
    second = client.add({"n": 2})
    gevent.sleep(1.0)  # a window for it to (wrongly) start: no event marks "nothing"
    assert handled(workdir, "start") == [first]
    assert status(db, second) == "ready"

    assert run_cli("resume", workdir / "jobs.db", "emails").returncode == 0
    wait_for(lambda: handled(workdir) == [first, second], timeout=30, what="resume")
    runner.signal()
    assert runner.wait() == 0


# --- the dashboard and the CLI's worker sub-command


def test_dashboard_port_serves_the_workers(
    workdir: Path, runners: list[Runner], db: workmatic.Database
) -> None:
    import urllib.request

    runner = start(
        runners, workdir, "jobs_mod:handle", "--db", "jobs.db", "--queue", "emails",
        "--dashboard-port", "0",
    )  # fmt: skip
    runner.wait_started()
    url = runner.log.split("dashboard at ", 1)[1].split()[0]
    with urllib.request.urlopen(url.rstrip("/") + "/api/stats", timeout=10) as response:
        data = json.loads(response.read())
    assert "emails" in json.dumps(data["workers"])
    runner.signal()
    assert runner.wait() == 0


def test_cli_worker_subcommand_is_the_runner(
    workdir: Path, runners: list[Runner], db: workmatic.Database
) -> None:
    job_id = workmatic.create_client(db).add({})
    proc = subprocess.Popen(
        [sys.executable, "-m", "workmatic.cli", "worker", "jobs_mod:handle", "--db", "jobs.db"],
        cwd=workdir, stderr=subprocess.PIPE, text=True, env=child_env(),
    )  # fmt: skip
    try:
        wait_for(lambda: handled(workdir) == [job_id], what="the job")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0
        assert "stopped: processed 1 job(s)" in err
        job = db.get_job(job_id)
        assert job is not None and job.result == {"patched": True}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    usage = run_cli("worker", "--help")
    assert usage.returncode == 0 and usage.stdout.startswith("usage: workmatic worker")


def test_quiet_logging(workdir: Path, runners: list[Runner], db: workmatic.Database) -> None:
    job_id = workmatic.create_client(db).add({})
    runner = start(runners, workdir, "jobs_mod:handle", "--db", "jobs.db", "-q")
    wait_for(lambda: handled(workdir) == [job_id], what="the job")
    runner.signal()
    assert runner.wait() == 0
    assert " INFO " not in runner.log
