"""The crash suite: real processes on a real file, killed with SIGKILL.

* Three worker processes and two producer processes share one database and 20,000 jobs
  while a driver kills a random worker every few hundred ms (at least 30 kills) and
  restarts it. Afterwards every job is done, none is lost, a job ran more than once only
  if a kill interrupted its earlier runs, and no two runs of one job ever overlapped.
* A job that kills its own process every time ends ``dead`` after ``max_attempts``.
* Producers killed mid-``add()`` / mid-``add_many()`` leave no partial or corrupt job.

Each test prints a ``FIGURES`` line (run with ``-s`` to see it): the numbers quoted in
the README's Reliability section.
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import SCRIPTS, wait_for

import workmatic

try:
    from pysqlite3 import dbapi2 as sqlite
except ImportError:  # pragma: no cover - the fallback driver
    import sqlite3 as sqlite

QUEUE = "crash"
#: Jobs in the big run, split between the two producers.
TOTAL = int(os.environ.get("WORKMATIC_CRASH_JOBS", "20000"))
#: Kills the driver must land while jobs are still waiting.
MIN_KILLS = int(os.environ.get("WORKMATIC_CRASH_KILLS", "30"))
LEASE = 4.0  # renewed every 1.33 s: a stall of a loaded machine does not lose it


@dataclass
class Proc:
    """One incarnation of a worker or producer process."""

    name: str
    popen: subprocess.Popen[str]
    log: Path
    killed_at: float | None = None  # time.monotonic() once SIGKILLed and reaped


@dataclass
class Run:
    """One run of a job as the worker recorded it."""

    job_id: str
    name: str
    attempts: int
    start: float
    end: float | None = None


@dataclass
class Figures:
    """What the crash run measured."""

    jobs: int = 0
    kills: int = 0
    kills_during_work: int = 0
    jobs_done_at_the_last_kill: int = 0
    kills_hitting_running_jobs: int = 0
    interrupted_runs: int = 0
    jobs_run_more_than_once: int = 0
    duplicate_runs_explained_by_a_kill: int = 0
    duplicate_runs_unexplained: int = 0
    overlapping_runs: int = 0
    claims_killed_before_the_handler_started: int = 0
    jobs_lost: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


def spawn(name: str, script: str, *args: str, logs: Path) -> Proc:
    """Start ``tests/scripts/<script>.py``; its stderr goes to a log file."""
    log = logs / f"{name}.log"
    with log.open("w") as err:
        popen = subprocess.Popen(
            [sys.executable, str(SCRIPTS / f"{script}.py"), *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    return Proc(name, popen, log)


def wait_ready(proc: Proc, timeout: float = 60.0) -> None:
    """Wait (bounded) for the process's "ready" line."""
    assert proc.popen.stdout is not None
    readable, _, _ = select.select([proc.popen.stdout], [], [], timeout)
    line = proc.popen.stdout.readline().strip() if readable else ""
    assert line == "ready", f"{proc.name} did not start: {proc.log.read_text()[-3000:]}"


def is_ready(proc: Proc) -> bool:
    """Whether the process printed its "ready" line (without waiting)."""
    assert proc.popen.stdout is not None
    readable, _, _ = select.select([proc.popen.stdout], [], [], 0)
    return bool(readable) and proc.popen.stdout.readline().strip() == "ready"


def count_done(db: workmatic.Database) -> int:
    """How many jobs of the crash queue are done."""
    return db.count_jobs(queue=QUEUE, status="done")


def kill(proc: Proc) -> None:
    """SIGKILL the process and reap it; note when it was surely dead."""
    proc.popen.send_signal(signal.SIGKILL)
    proc.popen.wait(30)
    proc.killed_at = time.monotonic()


def terminate(procs: list[Proc], timeout: float = 30.0) -> None:
    """Stop processes gracefully (SIGTERM), then kill what is left."""
    for proc in procs:
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:  # pragma: no cover - reported by the caller
            proc.popen.kill()
            proc.popen.wait()
        if proc.popen.stdout is not None:
            proc.popen.stdout.close()


#: One line of a worker's record (see crash_worker.py), at the end of a line of the file.
RECORD_LINE = re.compile(r"([0-9a-f]{24}) (\S+) (\d+) (\d+) (start|end) ([0-9.]+)$")


def read_records(record: Path) -> list[tuple[str, ...]]:
    """The whole lines of a record file, as fields.

    Workers append while this reads: a last line without its newline is still being
    written, and left out. A worker killed while appending can leave its line cut short
    (the kernel ends a file write at a page boundary once SIGKILL is pending), and the
    next line written is then appended to it: such a line ends with a whole record, which
    is kept, and the cut part, which cannot be read, is not (its run looks like one whose
    worker died before recording it)."""
    found = []
    for line in record.read_text().split("\n")[:-1]:
        match = RECORD_LINE.search(line)
        if match is not None:
            found.append(match.groups())
    return found


def read_runs(record: Path) -> dict[str, list[Run]]:
    """The runs in a record file, by job id, in start order."""
    runs: dict[tuple[str, str, int], Run] = {}
    for job_id, name, _pid, attempts, what, stamp in read_records(record):
        line = " ".join((job_id, name, _pid, attempts, what, stamp))
        key = (job_id, name, int(attempts))
        if what == "start":
            assert key not in runs, f"a run started twice: {line}"
            runs[key] = Run(job_id, name, int(attempts), float(stamp))
        else:
            assert key in runs and runs[key].end is None, f"an end without its start: {line}"
            runs[key].end = float(stamp)
    by_job: dict[str, list[Run]] = collections.defaultdict(list)
    for run in runs.values():
        by_job[run.job_id].append(run)
    for job_runs in by_job.values():
        job_runs.sort(key=lambda r: r.start)
    return by_job


def read_acks(*paths: Path) -> list[str]:
    """The ids the producers' ``add()`` calls returned (committed): every whole line.

    A producer killed while it appends its acks can leave its last line cut short (the
    kernel ends a write to a file at a page boundary once SIGKILL is pending): that part
    of an id is not one; :func:`cut_acks` returns it."""
    ids: list[str] = []
    for path in paths:
        if path.exists():
            ids.extend(path.read_text().split("\n")[:-1])
    return ids


def cut_acks(*paths: Path) -> list[str]:
    """The last lines of the ack files that a kill cut short (the start of an id)."""
    cut: list[str] = []
    for path in paths:
        if path.exists():
            last = path.read_text().split("\n")[-1]
            if last:
                cut.append(last)
    return cut


def integrity_check(path: str) -> str:
    """``PRAGMA integrity_check`` on a file, through a plain read connection."""
    conn = sqlite.connect(path, timeout=30)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Every process a test starts; whatever is still alive is killed at the end."""
    started: list[Proc] = []
    yield started
    for proc in started:
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait()
        if proc.popen.stdout is not None:
            proc.popen.stdout.close()


def analyse(
    db: workmatic.Database, by_job: dict[str, list[Run]], incarnations: dict[str, Proc]
) -> Figures:
    """Check every job's runs against the kill log; return the figures."""
    figures = Figures()
    for job in db.iter_jobs(queue=QUEUE):
        figures.jobs += 1
        runs = by_job.get(job.id, [])
        if job.status != "done" or not isinstance(job.result, dict):
            figures.problems.append(f"{job.id} is {job.status}")
            continue
        winner = job.result["by"]
        committed = [r for r in runs if r.name == winner and r.end is not None]
        if len(committed) != 1:
            figures.problems.append(f"{job.id}: no single committed run by {winner}: {runs}")
            continue
        others = [r for r in runs if r is not committed[0]]
        if others:
            figures.jobs_run_more_than_once += 1
        for run in others:
            killed_at = incarnations[run.name].killed_at
            if killed_at is not None and killed_at > run.start:
                figures.duplicate_runs_explained_by_a_kill += 1
            else:
                figures.duplicate_runs_unexplained += 1
                figures.problems.append(f"{job.id}: run {run} not explained by a kill")
        # A run ends at its end line or, if its worker was killed first, at the kill.
        spans = []
        for run in runs:
            killed_at = incarnations[run.name].killed_at
            stop = run.end if run.end is not None else killed_at
            if stop is None:
                figures.problems.append(f"{job.id}: run {run} never ended and was not killed")
                continue
            spans.append((run.start, stop, run.name))
        spans.sort()
        for (_, first_end, first), (second_start, _, second) in itertools.pairwise(spans):
            if second_start < first_end:
                figures.overlapping_runs += 1
                figures.problems.append(f"{job.id}: runs by {first} and {second} overlap")
        if job.attempts < len(runs) - 1:
            figures.problems.append(f"{job.id}: {len(runs)} runs but attempts={job.attempts}")
        # Each expired lease counts an attempt; one with no run recorded was a claim whose
        # worker died before the handler started.
        figures.claims_killed_before_the_handler_started += job.attempts - (len(runs) - 1)
        if job.attempts and "lease expired" not in (job.last_error or ""):
            figures.problems.append(f"{job.id}: attempts={job.attempts}, {job.last_error!r}")
    return figures


SLOW = pytest.mark.skipif(
    os.environ.get("WORKMATIC_SLOW") != "1", reason="long run: set WORKMATIC_SLOW=1"
)


@pytest.mark.parametrize(
    ("total", "min_kills"),
    [
        pytest.param(TOTAL, MIN_KILLS, id="ci"),
        pytest.param(100_000, 150, id="long", marks=[pytest.mark.slow, SLOW]),
    ],
)
def test_workers_killed_every_few_hundred_ms_lose_no_job(
    db: workmatic.Database,
    db_path: str,
    tmp_path: Path,
    logs: Path,
    procs: list[Proc],
    total: int,
    min_kills: int,
) -> None:
    record = tmp_path / "record.txt"
    acks = [tmp_path / "acks-p1.txt", tmp_path / "acks-p2.txt"]
    rng = random.Random(20_000)
    incarnations: dict[str, Proc] = {}
    generation = collections.Counter[int]()

    def start_worker(slot: int) -> Proc:
        generation[slot] += 1
        name = f"w{slot}.{generation[slot]}"
        proc = spawn(name, "crash_worker", db_path, QUEUE, str(record), "--name", name,
                     "--concurrency", "8", "--lease", str(LEASE), "--sleep-ms", "10:40",
                     logs=logs)  # fmt: skip
        procs.append(proc)
        incarnations[name] = proc
        return proc

    began = time.monotonic()
    workers = {slot: start_worker(slot) for slot in range(3)}
    for proc in workers.values():
        wait_ready(proc)
    ready = set(workers)
    half = total // 2
    producers = [
        spawn(
            "p1",
            "crash_producer",
            db_path,
            QUEUE,
            str(acks[0]),
            "--name",
            "p1",
            "--count",
            str(half),
            logs=logs,
        ),
        spawn(
            "p2",
            "crash_producer",
            db_path,
            QUEUE,
            str(acks[1]),
            "--name",
            "p2",
            "--count",
            str(total - half),
            "--batch",
            "1:200",
            "--seed",
            "2",
            logs=logs,
        ),
    ]
    procs.extend(producers)

    # The driver: every 150-450 ms, SIGKILL a random worker that is up, and start its
    # replacement at once (without waiting for it: kills keep their cadence).
    kills: list[Proc] = []
    kills_during_work = 0
    done_at_last_kill = 0
    hit_running = 0
    # At least min_kills kills; beyond that, go on while 90% of the jobs are not done yet,
    # for at most kill_seconds (each kill slows the run down: keep CI bounded).
    kill_seconds = 25.0 * total / TOTAL

    def go_on() -> bool:
        if len(kills) < min_kills:
            return True
        return done_at_last_kill < 0.9 * total and time.monotonic() - began < kill_seconds

    while go_on():
        assert time.monotonic() - began < 180 + total / 200, f"{len(kills)} kills, too slow"
        time.sleep(rng.uniform(0.15, 0.45))  # the kill cadence itself, not a wait for state
        for slot, proc in workers.items():
            if slot not in ready and is_ready(proc):
                ready.add(slot)
        if not ready:
            continue
        slot = rng.choice(sorted(ready))
        victim = workers[slot]
        kill(victim)
        kills.append(victim)
        done_at_last_kill = count_done(db)
        kills_during_work += done_at_last_kill < total
        mine = [r[4] for r in read_records(record) if r[1] == victim.name]
        hit_running += mine.count("start") > mine.count("end")
        ready.discard(slot)
        workers[slot] = start_worker(slot)

    for slot, proc in workers.items():
        if slot not in ready and not is_ready(proc):
            wait_ready(proc)
    for producer in producers:
        out, _ = producer.popen.communicate(timeout=120)
        assert producer.popen.returncode == 0, producer.log.read_text()[-3000:]
        assert out.strip().endswith("done")
    wait_for(lambda: db.stats(QUEUE).done == total, timeout=120, interval=0.1)
    terminate(list(workers.values()))
    for proc in workers.values():
        assert proc.popen.returncode == 0, proc.log.read_text()[-3000:]
    elapsed = time.monotonic() - began

    acked = read_acks(*acks)
    assert len(acked) == total and len(set(acked)) == total
    figures = analyse(db, read_runs(record), incarnations)
    figures.kills = len(kills)
    figures.kills_hitting_running_jobs = hit_running
    figures.interrupted_runs = sum(
        1
        for runs in read_runs(record).values()
        for run in runs
        if run.end is None and incarnations[run.name].killed_at is not None
    )
    figures.seconds = round(elapsed, 1)
    figures.kills_during_work = kills_during_work
    figures.jobs_done_at_the_last_kill = done_at_last_kill
    stored = {job.id for job in db.iter_jobs(queue=QUEUE)}
    figures.jobs_lost = len(set(acked) - stored)
    report = {k: v for k, v in vars(figures).items() if k != "problems"}
    print("FIGURES crash", json.dumps(report))

    assert not figures.problems, figures.problems[:20]
    assert figures.jobs_lost == 0
    assert figures.jobs == total
    assert db.stats(QUEUE).as_dict() == {
        "ready": 0,
        "running": 0,
        "done": total,
        "failed": 0,
        "dead": 0,
        "total": total,
    }
    assert figures.kills >= min_kills
    assert kills_during_work >= min_kills, "the jobs ran out before the kills: slow them"
    # The kills must have hit work in progress, or this test proves nothing.
    assert hit_running >= min_kills // 2, figures
    assert figures.duplicate_runs_unexplained == 0 and figures.overlapping_runs == 0
    assert integrity_check(db_path) == "ok"


def test_a_job_that_kills_its_worker_every_time_ends_dead(
    db: workmatic.Database, db_path: str, tmp_path: Path, logs: Path, procs: list[Proc]
) -> None:
    record = tmp_path / "record.txt"
    client = workmatic.create_client(db, QUEUE)
    suicide = client.add({"suicide": True}, max_attempts=3)
    others = client.add_many([{"n": i} for i in range(20)], max_attempts=10)
    deaths = 0
    began = time.monotonic()
    generation = 0

    def settled(proc: Proc) -> bool:
        if proc.popen.poll() is not None:
            return True
        job = db.get_job(suicide)
        return job is not None and job.status == "dead" and db.stats(QUEUE).done == len(others)

    while True:
        job = db.get_job(suicide)
        assert job is not None
        if job.status == "dead" and all(db.get_job(i).status == "done" for i in others):  # type: ignore[union-attr]
            break
        assert time.monotonic() - began < 90, f"still {job.status} after {deaths} deaths"
        generation += 1
        proc = spawn(f"s{generation}", "crash_worker", db_path, QUEUE, str(record),
                     "--name", f"s{generation}", "--concurrency", "2", "--lease", "0.5",
                     "--poll-interval", "0.1", logs=logs)  # fmt: skip
        procs.append(proc)
        wait_ready(proc)
        # The worker either dies by its own hand or finishes everything; wait for either.
        wait_for(functools.partial(settled, proc), timeout=60, interval=0.05)
        if proc.popen.poll() is not None:
            assert proc.popen.returncode == -signal.SIGKILL
            deaths += 1
        else:
            terminate([proc])
    job = db.get_job(suicide)
    assert job is not None
    print(
        "FIGURES suicide",
        json.dumps(
            {"deaths": deaths, "attempts": job.attempts, "seconds": time.monotonic() - began}
        ),
    )
    assert job.status == "dead" and job.attempts == 3 and deaths == 3
    assert "lease expired" in (job.last_error or "")
    starts = [r for r in read_records(record) if r[0] == suicide and r[4] == "start"]
    assert len(starts) == 3, starts  # max_attempts=3: three runs, no more
    assert db.stats(QUEUE).done == len(others)


def test_producers_killed_mid_add_leave_no_partial_or_corrupt_job(
    db_path: str, tmp_path: Path, logs: Path, procs: list[Proc]
) -> None:
    rng = random.Random(7)
    workmatic.create_database(db_path).close()
    acks: list[Path] = []
    kills = 0
    # add() one by one, add_many() small batches, and add_many() batches big enough to be
    # written from gevent's thread pool (more than 2,000 rows).
    styles = [("1:1", "single"), ("1:300", "small"), ("1500:6000", "large")]
    for round_no in range(4):
        running = []
        for batch, label in styles:
            name = f"{label}{round_no}"
            ack = tmp_path / f"acks-{name}.txt"
            acks.append(ack)
            proc = spawn(name, "crash_producer", db_path, QUEUE, str(ack), "--name", name,
                         "--batch", batch, "--seed", str(round_no), logs=logs)  # fmt: skip
            procs.append(proc)
            running.append(proc)
        for proc in running:
            wait_ready(proc)
        time.sleep(rng.uniform(0.3, 1.2))  # let them add for a while, then pull the plug
        for proc in running:
            assert proc.popen.poll() is None, proc.log.read_text()[-3000:]
            kill(proc)
            kills += 1
        # The next round's three producers open the file at once, right after these
        # kills: one recovers the WAL while the others wait for it (lock_timeout).

    assert integrity_check(db_path) == "ok"
    with workmatic.create_database(db_path, create=False) as db:
        batches: dict[tuple[str, int], list[int]] = collections.defaultdict(list)
        sizes: dict[tuple[str, int], int] = {}
        rows = 0
        bad = []
        for job in db.iter_jobs():
            rows += 1
            if job.status not in workmatic.STATUSES or not isinstance(job.payload, dict):
                bad.append(job)
                continue
            key = (job.payload["p"], job.payload["b"])
            batches[key].append(job.payload["k"])
            sizes[key] = job.payload["size"]
        partial = [k for k, ks in batches.items() if sorted(ks) != list(range(sizes[k]))]
        stored = {job.id for job in db.iter_jobs()}
        acked = read_acks(*acks)
        lost = set(acked) - stored
        # An ack line a kill cut short still names a committed job: one whose id it starts.
        lost.update(cut for cut in cut_acks(*acks) if not any(i.startswith(cut) for i in stored))
        stats = db.stats()
        print(
            "FIGURES producers",
            json.dumps(
                {
                    "producer_kills": kills,
                    "rows": rows,
                    "batches": len(batches),
                    "partial_batches": len(partial),
                    "corrupt_rows": len(bad),
                    "acked_but_lost": len(lost),
                }
            ),
        )
        assert not bad and not partial and not lost
        assert stats.total == stats.ready == rows  # the counts table agrees with the rows
        assert rows >= len(acked) > 0
