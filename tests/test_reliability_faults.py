"""Faults: disk full, a read-only file, a corrupt file, a lock held for a long time, the
file deleted under a running worker.

Each fault runs in a subprocess (``tests/scripts/crash_fault.py``) with a timeout, so a
hang fails the test instead of blocking the suite. Each must give a clear workmatic error
(a :class:`workmatic.DatabaseError`) or a bounded retry, never a hang, never a lost or
half-written job, and the worker must recover once the fault clears. Each test prints a
``FIGURES`` line (``-s``) with what happened; the README's Reliability section sums them up.
"""

from __future__ import annotations

import json
import logging
import os
import random
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import pytest
from helpers import SCRIPTS, LockHolder, wait_for

import workmatic

try:
    from pysqlite3 import dbapi2 as sqlite
except ImportError:  # pragma: no cover - the fallback driver
    import sqlite3 as sqlite

IS_ROOT = os.geteuid() == 0
DATABASE_ERRORS = {
    cls.__name__
    for cls in (
        workmatic.DatabaseError,
        workmatic.DatabaseLockedError,
        workmatic.DatabaseNotFoundError,
        workmatic.SchemaError,
        workmatic.DatabaseClosedError,
    )
}


class Fault:
    """A ``crash_fault.py`` subprocess: read its JSON phases with a deadline, talk to it."""

    def __init__(self, tmp_path: Path, scenario: str, db_path: str, *extra: str) -> None:
        self.acks = tmp_path / f"acks-{scenario}.txt"
        self.log = tmp_path / f"{scenario}.log"
        with self.log.open("w") as err:
            self.popen = subprocess.Popen(
                [sys.executable, str(SCRIPTS / "crash_fault.py"), scenario, db_path,
                 "--acks", str(self.acks), *extra],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
            )  # fmt: skip

    def expect(self, phase: str, timeout: float = 60.0) -> dict[str, Any]:
        """The next JSON line, which must be ``phase``; fail (never hang) after timeout."""
        assert self.popen.stdout is not None
        readable, _, _ = select.select([self.popen.stdout], [], [], timeout)
        line = self.popen.stdout.readline() if readable else ""
        assert line, f"no {phase!r} report within {timeout} s: {self.stderr()}"
        data: dict[str, Any] = json.loads(line)
        assert data["phase"] == phase, (data, self.stderr())
        return data

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def finish(self, timeout: float = 60.0) -> None:
        """Wait for a clean exit (bounded)."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"hung: {self.stderr()}") from None
        assert self.popen.returncode == 0, self.stderr()

    def acked(self) -> list[str]:
        return self.acks.read_text().split() if self.acks.exists() else []

    def stderr(self) -> str:
        return self.log.read_text()[-3000:]

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def faults() -> Iterator[list[Fault]]:
    started: list[Fault] = []
    yield started
    for fault in started:
        fault.close()


def start(faults: list[Fault], *args: Any) -> Fault:
    fault = Fault(*args)
    faults.append(fault)
    return fault


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs of our own (root only), unmounted after the test."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if not IS_ROOT or run("mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount),
                          check=False).returncode:  # fmt: skip
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    run("umount", "-l", str(mount), check=False)


def integrity(path: str) -> str:
    conn = sqlite.connect(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def check_no_lost_or_partial_job(db_path: str, acked: list[str]) -> dict[str, int]:
    """Every acknowledged job is there and done; nothing else was written; file intact."""
    assert integrity(db_path) == "ok"
    with workmatic.create_database(db_path, create=False) as db:
        stored = {job.id: job for job in db.iter_jobs()}
        stats = db.stats().as_dict()
    assert set(stored) == set(acked), "exactly the acknowledged jobs are stored"
    assert all(isinstance(job.payload, dict) for job in stored.values())
    assert stats["done"] == stats["total"] == len(acked)
    return stats


# --- disk full ------------------------------------------------------------------------


def test_disk_full_on_a_small_tmpfs_fails_clearly_and_recovers(
    tmpfs: Path, tmp_path: Path, faults: list[Fault]
) -> None:
    ballast = tmpfs / "ballast"
    ballast.write_bytes(b"\0" * (3 * 1024 * 1024))  # freed later to clear the fault
    db_path = str(tmpfs / "jobs.db")
    fault = start(faults, tmp_path, "fill", db_path)
    full = fault.expect("full", timeout=90)
    assert {e["type"] for e in full["errors"]} == {"DatabaseError"}
    assert all("full" in e["error"] for e in full["errors"]), full["errors"]
    ballast.unlink()
    free_and_check_recovery(fault, db_path, full, "disk_full_tmpfs")


def free_and_check_recovery(fault: Fault, db_path: str, full: dict[str, Any], label: str) -> None:
    """Tell the fault process space is back; every acknowledged job must then be done,
    none lost or partial."""
    fault.send("free")
    recovered = fault.expect("recovered", timeout=90)
    fault.finish()
    assert recovered["all_done"], recovered
    stats = check_no_lost_or_partial_job(db_path, fault.acked())
    print(f"FIGURES {label}", json.dumps({"acked_before_full": full["acked"],
          "acked_between_failures": full["acked_between"],
          "error": full["errors"][0]["error"], "final": stats}))  # fmt: skip


def test_disk_full_by_rlimit_fsize_fails_clearly_and_recovers(
    tmp_path: Path, faults: list[Fault]
) -> None:
    db_path = str(tmp_path / "jobs.db")
    workmatic.create_database(db_path).close()
    fault = start(faults, tmp_path, "fill", db_path, "--rlimit", str(1024 * 1024))
    full = fault.expect("full", timeout=90)
    assert {e["type"] for e in full["errors"]} == {"DatabaseError"}, full["errors"]
    free_and_check_recovery(fault, db_path, full, "disk_full_rlimit")


# --- read-only ------------------------------------------------------------------------


def make_db(path: str, jobs: int = 20) -> list[str]:
    with workmatic.create_database(path) as db:
        return workmatic.create_client(db, "q").add_many([{"n": k} for k in range(jobs)])


def test_a_read_only_file_system_gives_clear_errors_and_writes_nothing(
    tmpfs: Path, tmp_path: Path, faults: list[Fault]
) -> None:
    db_path = str(tmpfs / "jobs.db")
    ids = make_db(db_path)
    run("mount", "-o", "remount,ro", str(tmpfs))
    try:
        fault = start(faults, tmp_path, "ops", db_path)
        steps = fault.expect("ops", timeout=60)["steps"]
        fault.finish()
    finally:
        run("mount", "-o", "remount,rw", str(tmpfs))
    outcomes = {name: step["type"] for name, step in steps.items()}
    print("FIGURES read_only_fs", json.dumps(steps))
    # Opening fails clearly (SQLite cannot create the WAL index), or it opens and every
    # write fails clearly; either way, nothing is written.
    assert set(outcomes.values()) <= DATABASE_ERRORS | {"ok"}, steps
    if outcomes["open"] == "ok":
        assert outcomes["add"] in DATABASE_ERRORS and outcomes["add_many"] in DATABASE_ERRORS
    assert fault.acked() == []
    # The fault cleared: the same file works again and the worker does every job.
    recovered = start(faults, tmp_path, "ops", db_path)
    steps = recovered.expect("ops", timeout=60)["steps"]
    recovered.finish()
    assert {step["type"] for step in steps.values()} == {"ok"}, steps
    assert steps["worker"]["value"]["drained"]
    check_no_lost_or_partial_job(db_path, ids + recovered.acked())


def test_a_read_only_file_for_an_unprivileged_user(tmp_path: Path, faults: list[Fault]) -> None:
    if IS_ROOT:
        pytest.skip("root ignores permission bits (the read-only tmpfs test covers root)")
    db_path = str(tmp_path / "jobs.db")
    ids = make_db(db_path)
    os.chmod(db_path, 0o444)
    try:
        fault = start(faults, tmp_path, "ops", db_path)
        steps = fault.expect("ops", timeout=60)["steps"]
        fault.finish()
    finally:
        os.chmod(db_path, 0o644)
    assert {step["type"] for step in steps.values()} <= DATABASE_ERRORS | {"ok"}, steps
    assert fault.acked() == []
    with workmatic.create_database(db_path, create=False) as db:
        assert {job.id for job in db.iter_jobs()} == set(ids)


# --- corrupt --------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["middle", "header"])
def test_a_corrupt_file_gives_clear_errors_never_a_hang(
    tmp_path: Path, faults: list[Fault], where: str
) -> None:
    db_path = str(tmp_path / "jobs.db")
    with workmatic.create_database(db_path) as db:
        workmatic.create_client(db, "q").add_many([{"n": k, "pad": "z" * 300} for k in range(3000)])
    size = os.path.getsize(db_path)
    rng = random.Random(where)
    offset = size // 2 if where == "middle" else 0
    with open(db_path, "r+b") as f:
        f.seek(offset)
        f.write(rng.randbytes(16 * 1024 if where == "middle" else 100))
    fault = start(faults, tmp_path, "ops", db_path)
    steps = fault.expect("ops", timeout=60)["steps"]
    fault.finish()
    print(f"FIGURES corrupt_{where}", json.dumps({k: v["type"] for k, v in steps.items()}))
    outcomes = {step["type"] for step in steps.values()}
    assert outcomes <= DATABASE_ERRORS | {"ok"}, steps
    assert outcomes & DATABASE_ERRORS, "the corruption was noticed somewhere"
    if where == "header":
        assert steps["open"]["type"] == "DatabaseError"
        assert "not an SQLite database" in steps["open"]["error"]
    cli = subprocess.run(
        [sys.executable, "-m", "workmatic.cli", "stats", db_path],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cli.returncode in (0, 1) and "Traceback" not in cli.stderr, cli.stderr
    if cli.returncode == 1:
        assert cli.stderr.startswith("workmatic: error:"), cli.stderr


# --- locked ---------------------------------------------------------------------------


def test_a_lock_held_for_long_gives_database_locked_and_the_worker_recovers(
    tmp_path: Path, faults: list[Fault]
) -> None:
    db_path = str(tmp_path / "jobs.db")
    workmatic.create_database(db_path).close()
    fault = start(faults, tmp_path, "locked", db_path)
    fault.expect("added")
    with LockHolder(db_path):
        fault.send("locked")
        fault.expect("tried", timeout=90)  # its add met the lock for all of lock_timeout
    fault.send("released")
    report = fault.expect("locked", timeout=90)
    fault.finish()
    print("FIGURES locked", json.dumps(report))
    assert report["add"]["type"] == "DatabaseLockedError", report
    assert "lock_timeout" in report["add"]["error"]
    assert 0.9 <= report["add_seconds"] <= 10.0  # lock_timeout=1: bounded, not forever
    assert report["max_hub_stall"] < 0.5  # the wait never froze the hub
    assert report["claims_refused"]  # a worker under the lock: refused, and retried
    assert report["all_done"] and report["stats"]["done"] == 50, report
    assert report["stats"]["total"] == 50  # the refused add wrote nothing


EXCLUSIVE_HOLDER = """
import sys, time
try:
    from pysqlite3 import dbapi2 as sqlite
except ImportError:
    import sqlite3 as sqlite
conn = sqlite.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA locking_mode = EXCLUSIVE")
conn.execute("BEGIN IMMEDIATE")
conn.execute("CREATE TABLE IF NOT EXISTS held (x)")
conn.execute("COMMIT")
print("held", flush=True)
sys.stdin.readline()
conn.close()
"""


def test_open_waits_for_a_lock_held_elsewhere(tmp_path: Path) -> None:
    """Regression: opening used to raise DatabaseLockedError at once (its PRAGMAs were not
    retried) while another process held an exclusive lock or recovered a killed
    process's WAL."""
    db_path = str(tmp_path / "jobs.db")
    make_db(db_path, jobs=3)
    holder = subprocess.Popen(
        [sys.executable, "-c", EXCLUSIVE_HOLDER, db_path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        # Released in 1.5 s, from a real thread (the hub may be busy opening).
        release = threading.Timer(1.5, holder.communicate, ("release\n",))
        began = time.monotonic()
        release.start()
        # lock_timeout=30: opening must wait (cooperatively) for the lock, not fail.
        with workmatic.create_database(db_path, lock_timeout=30) as db:
            waited = time.monotonic() - began
            assert db.stats().total == 3
        release.join()
        assert waited >= 1.0  # it did wait for the lock
    finally:
        holder.kill()
        holder.wait()


def test_many_processes_creating_one_new_file_at_once(tmp_path: Path) -> None:
    """Eight processes open a file that does not exist yet, at the same moment: one creates
    the schema, the others wait for it (the WAL switch and the migration take the lock),
    and every process's jobs are there."""
    db_path = str(tmp_path / "new.db")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(SCRIPTS / "crash_producer.py"),
                db_path,
                "q",
                str(tmp_path / f"acks{i}.txt"),
                "--name",
                f"p{i}",
                "--count",
                "5",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0 and out.split() == ["ready", "done"], err[-3000:]
    acked = [i for n in range(8) for i in (tmp_path / f"acks{n}.txt").read_text().split()]
    assert integrity(db_path) == "ok"
    with workmatic.create_database(db_path, create=False) as db:
        assert sorted(job.id for job in db.iter_jobs()) == sorted(acked)
        assert db.stats().ready == 40


# --- deleted --------------------------------------------------------------------------


def delete_files(db_path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(db_path + suffix)
        except FileNotFoundError:
            pass


def test_the_file_deleted_under_a_running_worker_is_a_clear_error_never_a_lost_job(
    tmp_path: Path, faults: list[Fault]
) -> None:
    """Regression: SQLite goes on writing to an unlinked file, so add() used to acknowledge
    jobs that vanished with the process. Now every commit into a deleted (or replaced)
    file is refused with a DatabaseError, and nothing hangs."""
    db_path = str(tmp_path / "jobs.db")
    fault = start(faults, tmp_path, "deleted", db_path)
    fault.expect("running")
    before = fault.acked()
    delete_files(db_path)
    fault.send("deleted")
    report = fault.expect("deleted", timeout=60)
    fault.finish()
    print("FIGURES deleted", json.dumps(report))
    assert report["adds"] == {"DatabaseError": 50}, report
    assert fault.acked() == before, "no add() was acknowledged after the deletion"
    # A process that opens the path now gets a new, empty database, never a broken one.
    with workmatic.create_database(db_path) as db:
        assert db.stats().total == 0


def test_a_file_replaced_by_rename_is_refused_and_the_old_jobs_stay_put(tmp_path: Path) -> None:
    """``mv other.db jobs.db`` under an open database: commits into the replaced file are
    refused (they would vanish with the process), and none of them turns up in the new one."""
    db_path = str(tmp_path / "jobs.db")
    other = str(tmp_path / "other.db")
    with workmatic.create_database(other) as fresh:
        workmatic.create_client(fresh, "q").add({"other": True})
    db = workmatic.create_database(db_path)
    try:
        client = workmatic.create_client(db, "q")
        client.add({"n": 1})
        os.replace(other, db_path)
        with pytest.raises(workmatic.DatabaseError, match="deleted or replaced"):
            client.add({"n": 2})
        with pytest.raises(workmatic.DatabaseError, match="deleted or replaced"):
            client.add_many([{"n": 3}, {"n": 4}])
    finally:
        db.close()
    with workmatic.create_database(db_path) as now:
        payloads = [job.payload for job in now.iter_jobs()]
    assert not [p for p in payloads if p.get("n") in (2, 3, 4)], payloads


def test_a_file_moved_away_and_replaced_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mv jobs.db* old/; cp fresh.db jobs.db``: the open file is still linked (as
    old.db), so its descriptor cannot tell; the path's identity, checked at most every
    PATH_CHECK_INTERVAL (0 here), refuses the commit."""
    monkeypatch.setattr(workmatic.database, "PATH_CHECK_INTERVAL", 0.0)
    db_path = str(tmp_path / "jobs.db")
    db = workmatic.create_database(db_path)
    try:
        client = workmatic.create_client(db, "q")
        client.add({"n": 1})
        for suffix in ("", "-wal", "-shm"):  # moved whole, as a WAL database must be
            os.rename(db_path + suffix, str(tmp_path / "old.db") + suffix)
        with workmatic.create_database(db_path) as fresh:  # a new file at the path
            fresh.stats()
        with pytest.raises(workmatic.DatabaseError, match="deleted or replaced"):
            client.add({"n": 2})
    finally:
        db.close()


# --- lease bookkeeping ------------------------------------------------------------------


def test_no_false_lost_lease_warnings(
    db: workmatic.Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: the renewer used to log "lost the lease" for jobs its own worker had
    just finished (the finish committed before the renewal of the same job)."""
    caplog.set_level(logging.WARNING, logger="workmatic.worker")
    client = workmatic.create_client(db, "q")
    client.add_many([{"n": k} for k in range(10_000)])
    runs: dict[str, int] = {}
    rng = random.Random(3)

    def handler(job: workmatic.Job) -> None:
        runs[job.id] = runs.get(job.id, 0) + 1
        gevent.sleep(rng.uniform(0, 0.004))

    # A short lease, renewed every 1/3 s: many renewals race the finishes (but a lease
    # long enough that a stalled machine does not let the worker's own jobs expire).
    worker = workmatic.create_worker(db, "q", concurrency=16, lease=1.0, handler=handler)
    worker.start()
    try:
        wait_for(lambda: db.stats("q").done == 10_000, timeout=120)
    finally:
        worker.stop()
    assert max(runs.values()) == 1  # no job was really lost: each ran once
    lost = [r.getMessage() for r in caplog.records if "lost the lease" in r.getMessage()]
    assert lost == [], lost[:3]


def test_closing_the_database_under_a_running_worker_is_handled(
    db_path: str, capfd: pytest.CaptureFixture[str]
) -> None:
    db = workmatic.create_database(db_path)
    job_id = workmatic.create_client(db, "q").add({"x": 1})
    running = gevent.event.Event()
    go = gevent.event.Event()

    def handler(job: workmatic.Job) -> None:
        running.set()
        go.wait()

    worker = workmatic.create_worker(db, "q", lease=2, handler=handler, poll_interval=0.1)
    worker.start()
    assert running.wait(10)
    db.close()  # under the running job
    go.set()
    stopper = gevent.spawn(worker.stop, 5)
    stopper.join(timeout=15)
    assert stopper.dead, "stop() hung"
    assert worker.active == 0
    assert "Traceback" not in capfd.readouterr().err
    with workmatic.create_database(db_path) as again:  # the job waits for its lease
        job = again.get_job(job_id)
        assert job is not None and job.status in ("running", "ready")
