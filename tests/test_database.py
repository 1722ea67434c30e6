"""The database: pragmas, schema and migrations, adoption, threads, group commit, and a
lock held by another process never freezing the hub."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as dt
import itertools
import os
import pickle
import random
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import gevent
import gevent.pool
import greenlet
import pytest
from helpers import LockHolder, script, wait_for

import workmatic
from workmatic import _checkpoints, _driver, _sql


def raw(path: str) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def test_file_database_uses_wal_and_normal_sync(db: workmatic.Database, db_path: str) -> None:
    conn = db._reader().raw
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert db.durability == "normal"
    assert raw(db_path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_durability_full_sets_synchronous_full(db_path: str) -> None:
    with workmatic.create_database(db_path, durability="full") as db:
        workmatic.create_client(db).add({"x": 1})
        assert db._writer().conn.raw.execute("PRAGMA synchronous").fetchone()[0] == 2


@pytest.mark.parametrize(
    "kwargs",
    [{"durability": "fast"}, {"lock_timeout": -1}, {"lock_timeout": float("nan")}],
    ids=["bad-durability", "negative-lock-timeout", "nan-lock-timeout"],
)
def test_bad_database_options_raise(db_path: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(workmatic.ValidationError):
        workmatic.create_database(db_path, **kwargs)  # type: ignore[arg-type]
    assert not os.path.exists(db_path)


def test_schema_is_versioned_and_reopening_is_idempotent(db_path: str) -> None:
    with workmatic.create_database(db_path) as db:
        job_id = workmatic.create_client(db).add({"n": 1})
    with workmatic.create_database(db_path) as db:
        assert db.get_job(job_id) is not None
    assert raw(db_path).execute("PRAGMA user_version").fetchone()[0] == _sql.SCHEMA_VERSION


def test_version_1_database_is_migrated_keeping_its_jobs(db_path: str) -> None:
    conn = raw(db_path)
    for statement in _sql.MIGRATIONS[1]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO jobs (public_id, queue, payload, status, priority, run_at, attempts,"
        " max_attempts, lease_until, created_at, updated_at, last_error) VALUES"
        " ('old-1', 'emails', '{\"to\": \"a@b.c\"}', 'ready', 0, 0, 0, 3, 0, 1, 1, NULL),"
        " ('old-2', 'emails', '{}', 'dead', 0, 0, 3, 3, 0, 1, 1, 'boom')"
    )
    conn.close()
    with workmatic.create_database(db_path) as db:
        assert db.get_job("old-1").payload == {"to": "a@b.c"}  # type: ignore[union-attr]
        assert db.stats("emails").as_dict() == {
            "ready": 1,
            "running": 0,
            "done": 0,
            "failed": 0,
            "dead": 1,
            "total": 2,
        }
        worker = workmatic.create_worker(db, "emails")
        seen = gevent.event.Event()
        worker.process(lambda job: seen.set())
        worker.start()
        assert seen.wait(5)
        worker.stop()
    assert raw(db_path).execute("PRAGMA user_version").fetchone()[0] == _sql.SCHEMA_VERSION


def test_newer_schema_is_refused(db_path: str) -> None:
    workmatic.create_database(db_path).close()
    raw(db_path).execute(f"PRAGMA user_version = {_sql.SCHEMA_VERSION + 1}")
    with pytest.raises(workmatic.SchemaError, match="newer"):
        workmatic.create_database(db_path)


def test_create_false_never_creates_a_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    with pytest.raises(workmatic.DatabaseNotFoundError):
        workmatic.create_database(path, create=False)
    assert not path.exists()


def test_create_false_refuses_a_non_workmatic_database(tmp_path: Path) -> None:
    path = str(tmp_path / "other.db")
    conn = raw(path)
    conn.execute("CREATE TABLE notes (x)")
    conn.close()
    before = Path(path).read_bytes()
    with pytest.raises(workmatic.SchemaError, match="not a workmatic database"):
        workmatic.create_database(path, create=False)
    assert Path(path).read_bytes() == before


def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(workmatic.DatabaseError, match="not an SQLite database"):
        workmatic.create_database(path)


def test_adopts_an_existing_connection(tmp_path: Path) -> None:
    conn = sqlite3.connect(str(tmp_path / "adopted.db"), check_same_thread=False)
    with workmatic.create_database(connection=conn) as db:
        client = workmatic.create_client(db, "q")
        job_id = client.add({"a": 1})
        assert client.get(job_id).payload == {"a": 1}  # type: ignore[union-attr]
        assert db.path == str(tmp_path / "adopted.db")
    with pytest.raises(workmatic.ValidationError):
        workmatic.create_database(connection="not a connection")


def test_an_adopted_connection_keeps_sqlites_own_checkpoints(tmp_path: Path) -> None:
    """An adopted connection gets no checkpointer (its owner may use it from anywhere):
    SQLite's automatic checkpoint stays its only one, at 10,000 pages, not the 100,000 of a
    connection the checkpointer serves, so its WAL does not grow to 400 MB."""
    path = tmp_path / "adopted.db"
    conn = sqlite3.connect(str(path), check_same_thread=False)
    with workmatic.create_database(connection=conn) as db:
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 10_000
        assert db._writer().checkpointer is None
    with workmatic.create_database(path) as db:
        raw = db._writer().conn.raw
        assert raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 100_000
        assert db._writer().checkpointer is not None


def test_jobs_read_through_a_row_factory_connection_pickle(tmp_path: Path) -> None:
    """An adopted connection may return sqlite3.Row objects: the jobs read through it are
    plain, whole records (they pickle, and hold no row)."""
    conn = sqlite3.connect(str(tmp_path / "rows.db"), check_same_thread=False)
    conn.row_factory = sqlite3.Row
    with workmatic.create_database(connection=conn) as db:
        job_id = workmatic.create_client(db, "q").add({"a": 1}, key="k")
        job = db.get_job(job_id)
        assert job is not None and (job.id, job.key, job.payload) == (job_id, "k", {"a": 1})
        assert pickle.loads(pickle.dumps(job)) == job == db.list_jobs()[0]
        assert set(vars(job)) == {f.name for f in dataclasses.fields(workmatic.Job)}


@dataclasses.dataclass(frozen=True)
class TenantJob(workmatic.Job):
    tenant: str = "none"


def test_a_job_subclass_pickles_with_its_own_fields() -> None:
    when = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    job = TenantJob("i", "q", {}, "ready", 0, 0, 1, when, when, None, None, tenant="acme")
    for copied in (pickle.loads(pickle.dumps(job)), copy.deepcopy(job)):
        assert copied == job and copied.tenant == "acme"


def test_memory_database_works(memdb: workmatic.Database) -> None:
    client = workmatic.create_client(memdb)
    ids = client.add_many([{"n": i} for i in range(10)])
    assert [j.payload["n"] for j in memdb.list_jobs(limit=10)] == list(range(9, -1, -1))
    assert memdb.path is None and len(set(ids)) == 10


def test_concurrent_adds_are_group_committed(db: workmatic.Database) -> None:
    client = workmatic.create_client(db)
    client.add({"warm": True})
    writer = db._writer()
    before = writer.commits
    pool = gevent.pool.Pool(100)
    ids = [pool.spawn(client.add, {"n": i}) for i in range(500)]
    pool.join()
    commits = writer.commits - before
    assert len({g.value for g in ids}) == 500
    assert commits < 100, f"{commits} commits for 500 concurrent adds"
    assert client.stats().ready == 501


def test_a_write_interrupted_while_it_leads_its_batch_blocks_no_one(
    db: workmatic.Database,
) -> None:
    """The first of several concurrent adds runs their transaction; an exception thrown
    into it while it gathers the batch (a timeout, a kill) must neither strand the others
    nor lose its own job, which was already queued."""

    class Interrupted(Exception):
        pass

    client = workmatic.create_client(db)
    client.add({"warm": True})
    leader = gevent.spawn(client.add, {"n": 0})
    followers = [gevent.spawn(client.add, {"n": n}) for n in range(1, 5)]

    def interrupt() -> None:
        assert db._writer().busy, "the leader is gathering its batch"
        greenlet.greenlet.throw(leader, Interrupted())  # lands at once, mid-gather

    interrupter = gevent.spawn(interrupt)
    try:
        assert gevent.joinall(followers, timeout=10) == followers
    finally:
        interrupter.kill()
    assert isinstance(leader.exception, Interrupted)
    assert all(g.successful() for g in followers)
    assert {job.payload.get("n") for job in db.iter_jobs()} == {None, 0, 1, 2, 3, 4}


def test_adds_woken_by_timers_are_group_committed(
    db: workmatic.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Handlers that wake from a sleep (or a socket read) and then add, under steady load:
    those woken in the same turn of the event loop share a commit, as if they had been
    runnable together (a leader that only looked at runnable greenlets, not at the
    watchers the loop's poll made pending, committed nearly all of them alone)."""
    from workmatic import _writer

    client = workmatic.create_client(db)
    client.add({"warm": True})
    sizes: list[int] = []
    take = _writer.Writer._take

    def counting_take(self: _writer.Writer) -> list[_writer.Request]:
        batch = take(self)
        sizes.append(len(batch))
        return batch

    monkeypatch.setattr(_writer.Writer, "_take", counting_take)
    rng = random.Random(7)
    delays = [[rng.uniform(0, 0.002) for _ in range(60)] for _ in range(50)]

    def handler(pauses: list[float]) -> None:
        for pause in pauses:
            gevent.sleep(pause)
            client.add({})

    gevent.joinall([gevent.spawn(handler, pauses) for pauses in delays], raise_error=True)
    assert client.stats().ready == 1 + 50 * 60
    alone = sizes.count(1)
    assert alone <= 0.3 * len(sizes), f"{alone} of {len(sizes)} commits had one add"


def test_a_loop_of_adds_lets_timers_run(db: workmatic.Database) -> None:
    """A lone writer skips the hub when no other greenlet is runnable, but not for long: a
    greenlet waiting on a timer (a lease renewer) still runs during a tight loop of adds,
    and so does one that became runnable meanwhile."""
    client = workmatic.create_client(db)
    client.add({"warm": True})
    ticks = [0]

    def heartbeat() -> None:
        while True:
            gevent.sleep(0.001)
            ticks[0] += 1

    beat = gevent.spawn(heartbeat)
    gevent.sleep(0.01)
    try:
        start, seen = ticks[0], []
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            client.add({"ticks": ticks[0]})
            if len(seen) < 1:
                gevent.spawn(seen.append, "ran")  # runnable at once: must run within one add
                client.add({})
                assert seen == ["ran"]
    finally:
        beat.kill()
    assert ticks[0] - start >= 20  # ~200 heartbeats fit; a writer that never yields: 0


def test_a_hub_turn_runs_every_timer_that_came_due(
    db: workmatic.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While add_many serialises a large batch, it turns the loop every 2 ms; a greenlet
    sleeping 1 ms beside it runs at every turn (it ran at every other one while the
    turn's own timer, which expires at the loop's last iteration, fired first)."""
    from workmatic import _writer
    from workmatic import client as client_module

    ticks = [0]
    seen: list[int] = []

    def counting_turn() -> None:
        _writer.hub_turn()
        seen.append(ticks[0])

    def heartbeat() -> None:
        while True:
            gevent.sleep(0.001)
            ticks[0] += 1

    monkeypatch.setattr(client_module, "hub_turn", counting_turn)
    beat = gevent.spawn(heartbeat)
    gevent.sleep(0.01)
    try:
        workmatic.create_client(db).add_many([{"n": n, "pad": "x" * 40} for n in range(60_000)])
    finally:
        beat.kill()
    assert len(seen) >= 10, seen
    advanced = sum(after > before for before, after in itertools.pairwise(seen))
    assert advanced >= 0.8 * (len(seen) - 1), f"ticked at {advanced} of {len(seen) - 1} turns"


def test_a_large_batchs_ids_are_formatted_in_slices_that_release_the_gil(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A large add_many runs in a real thread: it formats its ids in slices and releases
    the GIL between them, so the hub's thread never waits for a whole batch's worth."""
    releases: list[float] = []
    monkeypatch.setattr(_sql.adding, "_release_gil", releases.append)  # read by _format_ids
    nonces = [random.getrandbits(48) for _ in range(20_000)]
    ids = _sql._format_ids(7, nonces)
    assert ids == [_sql.format_id(7 + i, nonce) for i, nonce in enumerate(nonces)]
    assert len(releases) == -(-20_000 // _sql.FORMAT_SLICE)
    releases.clear()
    assert _sql._format_ids(7, nonces[:100]) == ids[:100] and not releases


def test_a_failing_write_does_not_fail_its_batch_neighbours(db: workmatic.Database) -> None:
    client = workmatic.create_client(db)

    def broken(conn: object) -> None:
        raise RuntimeError("boom")

    good = [gevent.spawn(client.add, {"n": i}) for i in range(5)]
    bad = gevent.spawn(db._write, broken)
    gevent.joinall([*good, bad])
    assert all(g.successful() for g in good)
    assert isinstance(bad.exception, RuntimeError)
    assert client.stats().ready == 5


def test_a_lone_add_commits_at_once_without_a_request_or_switch(
    db: workmatic.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing else runnable, an add runs its transaction in the caller's greenlet at
    once (``Writer.run_alone``): no request for the group commit, no switch to the hub and
    back; but the loop still takes a full turn at least every millisecond (through the
    group-commit path: see the test above)."""
    from workmatic import _writer

    client = workmatic.create_client(db)
    client.add({"warm": True})
    switches = [0]
    requests = [0]
    write = _writer.Writer.write

    def counting_write(self: _writer.Writer, request: _writer.Request) -> object:
        requests[0] += 1
        return write(self, request)

    def count(event: str, args: object) -> None:
        if event in ("switch", "throw"):
            switches[0] += 1

    monkeypatch.setattr(_writer.Writer, "write", counting_write)
    switched = 0
    writer = db._writer()
    previous = greenlet.settrace(count)
    try:
        for n in range(200):
            before = switches[0]
            writer.turned = time.perf_counter()  # the loop's turn not due (however slow)
            client.add({"n": n})
            switched += switches[0] != before
    finally:
        greenlet.settrace(previous)
    assert client.stats().ready == 201
    assert switched == 0, f"{switched} of 200 lone adds switched greenlets"
    assert requests[0] == 0, f"{requests[0]} of 200 lone adds went through a request"


def test_a_lone_write_that_fails_is_rolled_back(
    db: workmatic.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write run alone in its caller's greenlet: an exception from it, or an SQL error,
    rolls back what it did and reaches the caller; the next write runs as usual."""
    from workmatic import _writer

    client = workmatic.create_client(db)
    client.add({"warm": True})
    writer = db._writer()
    row = (1, "default", "{}", 0, 0, 3, 0, 0, None, 1)

    def not_alone(self: _writer.Writer, request: _writer.Request) -> object:
        raise AssertionError("the write went through the group commit")

    def add_then_fail(conn: sqlite3.Connection) -> None:
        _sql.insert_job(conn, row)
        raise RuntimeError("boom")

    def add_then_bad_sql(conn: sqlite3.Connection) -> None:
        _sql.insert_job(conn, row)
        conn.execute("SELECT * FROM no_such_table")

    with monkeypatch.context() as patch:
        patch.setattr(_writer.Writer, "write", not_alone)
        writer.turned = time.perf_counter()  # the loop's turn is not due: run alone
        with pytest.raises(RuntimeError, match="boom"):
            db._write(add_then_fail)
        writer.turned = time.perf_counter()
        with pytest.raises(workmatic.DatabaseError, match="no_such_table"):
            db._write(add_then_bad_sql)
    assert client.stats().total == 1 and db.count_jobs() == 1
    client.add({"after": True})
    assert [j.payload for j in db.iter_jobs()] == [{"warm": True}, {"after": True}]
    assert client.stats().ready == 2


@contextlib.contextmanager
def _statements(db: workmatic.Database) -> Iterator[list[str]]:
    """The kinds (first word; "BEGIN IMMEDIATE") of the statements the writer's connection
    runs inside the block."""
    seen: list[str] = []
    conn = db._writer().conn.raw
    conn.set_trace_callback(seen.append)
    kinds: list[str] = []
    try:
        yield kinds
    finally:
        conn.set_trace_callback(None)
        for text in seen:
            words = text.upper().split()
            kinds.append(" ".join(words[:2]) if words[0] == "BEGIN" else words[0])


def test_a_lone_add_is_one_statement_committed_as_it_ends(
    db: workmatic.Database, db_path: str
) -> None:
    """A lone add without a key is one INSERT that SQLite commits as it ends (no BEGIN, no
    COMMIT); another connection sees the job as soon as add() returns; every
    FOLD_EVERY adds the counts fold in a transaction; the counts stay exact."""
    client = workmatic.create_client(db)
    client.add({"warm": True})
    other = raw(db_path)
    kinds: list[list[str]] = []
    for n in range(2 * _sql.FOLD_EVERY):
        db._writer().turned = time.perf_counter()  # the loop's turn is not due: run alone
        with _statements(db) as ran:
            job_id = client.add({"n": n})
        kinds.append(ran)
        found = other.execute("SELECT count(*) FROM jobs WHERE nonce = ?", (int(job_id[12:], 16),))
        assert found.fetchone() == (1,)
    assert kinds.count(["INSERT"]) >= 2 * _sql.FOLD_EVERY - 4, kinds[:5]
    folds = [k for k in kinds if k != ["INSERT"]]
    assert folds and all(k[0] == "BEGIN IMMEDIATE" and k[-1] == "COMMIT" for k in folds), folds
    other.close()
    assert client.stats().ready == 2 * _sql.FOLD_EVERY + 1
    db.recount()
    assert client.stats().ready == 2 * _sql.FOLD_EVERY + 1


def test_a_lone_add_with_a_key_looks_it_up_in_the_same_transaction(
    db: workmatic.Database,
) -> None:
    client = workmatic.create_client(db)
    first = client.add({"n": 1}, key="k")
    db._writer().turned = time.perf_counter()
    with _statements(db) as kinds:
        again = client.add({"n": 2}, key="k")
    assert again == first
    assert kinds[0] == "BEGIN IMMEDIATE" and kinds[1] == "SELECT" and kinds[-1] == "COMMIT"
    assert client.stats().ready == 1


def test_a_lone_add_while_another_connection_holds_the_lock_waits_and_adds_once(
    db: workmatic.Database, db_path: str
) -> None:
    """The one-statement add finds the lock taken: nothing is written, and the add waits
    (cooperatively) for the lock like any write, then adds the job once."""
    client = workmatic.create_client(db)
    client.add({"warm": True})
    # The same SQLite library as the database's (two copies in one process do not see
    # each other's locks).
    holder = _driver.sqlite.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    committed: list[float] = []

    def commit() -> None:
        holder.execute("COMMIT")
        committed.append(time.monotonic())

    gevent.spawn_later(0.2, commit)
    db._writer().turned = time.perf_counter()
    with _statements(db) as kinds:
        client.add({"during": "lock"})
    added = time.monotonic()
    assert committed and added >= committed[0]  # it waited for the lock
    assert kinds[0] == "INSERT", kinds  # tried as one statement first: busy, rolled back
    holder.close()
    assert [j.payload for j in db.iter_jobs()] == [{"warm": True}, {"during": "lock"}]
    assert client.stats().ready == 2


def test_usable_from_other_os_threads(db: workmatic.Database) -> None:
    client = workmatic.create_client(db, "threads")
    errors: list[BaseException] = []
    ids: list[str] = []

    def run() -> None:
        try:
            for i in range(50):
                ids.append(client.add({"n": i}))
            assert client.get(ids[-1]) is not None
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert client.stats().ready == 200 == len(set(ids))


def test_lock_held_by_another_process_does_not_freeze_the_hub(db_path: str) -> None:
    """An add that waits 2 s for another process's lock waits cooperatively: the hub runs
    other greenlets all along (a busy wait inside SQLite would stop them for the 2 s)."""
    with workmatic.create_database(db_path) as db:
        client = workmatic.create_client(db)
        client.add({"warm": True})
        beats: list[float] = []
        stop = gevent.event.Event()

        def heartbeat() -> None:
            while not stop.is_set():
                gevent.sleep(0.005)
                beats.append(time.monotonic())

        with LockHolder(db_path) as holder:
            release = threading.Timer(2.0, holder.release)  # a real thread, not the hub
            beat = gevent.spawn(heartbeat)
            gevent.sleep(0)
            started = time.monotonic()
            release.start()
            job_id = client.add({"during": "lock"})
            ended = time.monotonic()
            stop.set()
            beat.join()
            release.join()
        assert client.get(job_id) is not None
        assert ended - started > 1.0, "the add should have waited for the other process's lock"
        during = [started, *(b for b in beats if started < b < ended), ended]
        gaps = [b - a for a, b in itertools.pairwise(during)]
        # ~400 beats at 5 ms; a hub frozen in the wait: none, and one gap of the whole wait.
        assert len(during) >= 50 and max(gaps) < 1.0, (len(during), max(gaps))


def test_lock_timeout_gives_a_clear_error_and_writes_nothing(db_path: str) -> None:
    with workmatic.create_database(db_path, lock_timeout=0.3) as db:
        client = workmatic.create_client(db)
        with (
            LockHolder(db_path),
            pytest.raises(workmatic.DatabaseLockedError, match="lock_timeout"),
        ):
            client.add({"n": 1})
        assert client.stats().total == 0
        client.add({"n": 2})
        assert client.stats().total == 1


def test_closed_database_raises(db_path: str) -> None:
    db = workmatic.create_database(db_path)
    client = workmatic.create_client(db)
    client.add({})
    db.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db_path + suffix):
            os.remove(db_path + suffix)
    for _ in range(3):  # nothing is opened (or created) for a write to a closed database
        with pytest.raises(workmatic.DatabaseClosedError):
            client.add({})
        with pytest.raises(workmatic.DatabaseClosedError):
            client.add_many([{}, {}])
    assert db.is_closed
    assert not os.path.exists(db_path)


def test_the_wal_is_checkpointed_off_the_hub(db: workmatic.Database, db_path: str) -> None:
    """SQLite's automatic checkpoint would run (and fsync) inside a commit on the hub; the
    checkpointer copies the WAL into the database file from a thread instead."""
    client = workmatic.create_client(db)
    for i in range(300):
        client.add({"n": i})

    def in_main_file() -> int:
        # immutable=1 reads the database file alone, ignoring the WAL.
        conn = sqlite3.connect(f"file:{db_path}?immutable=1", uri=True)
        try:
            return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])
        except sqlite3.DatabaseError:  # no schema in the file yet, or a page being copied
            return -1  # (immutable=1 does not lock: a read during a checkpoint may be torn)
        finally:
            conn.close()

    assert db._writer().conn.raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0] >= 10_000
    wait_for(lambda: in_main_file() == 300, timeout=10)


def _wal_pages(db_path: str) -> int:
    """How many pages the WAL file holds room for (its high-water mark: SQLite reuses it
    from the start after a restart, it does not shrink it)."""
    size = os.path.getsize(db_path + "-wal") if os.path.exists(db_path + "-wal") else 0
    return max(0, size - 32) // (4096 + 24)  # a header, then frames of a header and a page


def _longest_add(client: workmatic.Client, count: int) -> float:
    """Add ``count`` jobs one by one; return the seconds the slowest ``add()`` took."""
    longest = 0.0
    for i in range(count):
        start = time.perf_counter()
        client.add({"n": i})
        longest = max(longest, time.perf_counter() - start)
    return longest


def test_steady_adds_restart_the_wal_before_sqlite_checkpoints_in_a_commit(
    db: workmatic.Database, db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PASSIVE checkpoint never catches up with a steady stream of commits, so the WAL
    used to grow to the automatic checkpoint's threshold (10,000 pages), and SQLite then
    checkpointed (and fsynced) inside a commit, on the hub. The checkpointer restarts it
    first (from 2,000 pages here, for a wide margin on a slow disk)."""
    monkeypatch.setattr(_checkpoints, "RESTART_PAGES", 2_000)  # read by _checkpoint
    client = workmatic.create_client(db)
    for i in range(10_000):  # each add commits 2 pages or more
        client.add({"n": i})
    assert db.stats().ready == 10_000
    assert db._writer().conn.raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0] > 10_000
    assert 0 < _wal_pages(db_path) < 10_000


def test_checkpoints_go_on_while_the_hubs_thread_pool_is_busy(
    db: workmatic.Database, db_path: str
) -> None:
    """The application may keep gevent's thread pool busy (the README suggests it for CPU
    work): checkpoints have a thread of their own, so they neither wait for it nor hold
    writes up while they do."""
    client = workmatic.create_client(db)
    client.add({"warm": True})
    pool = gevent.get_hub().threadpool
    release = threading.Event()  # a real one: this test process is not monkey-patched
    blockers = [pool.spawn(release.wait, 60) for _ in range(pool.maxsize)]
    try:
        longest = _longest_add(client, 10_000)
        assert pool.size == pool.maxsize and not release.is_set()  # it stayed busy
        assert 0 < _wal_pages(db_path) < 10_000  # checkpointed and restarted meanwhile
        assert longest < 1.0  # no add waited for the pool
    finally:
        release.set()
        gevent.joinall(blockers, timeout=10)
    assert db.stats().ready == 10_001


def test_a_reader_that_keeps_the_wal_does_not_hold_up_writes(
    db: workmatic.Database, db_path: str
) -> None:
    """A reader (another process, say) holding an old snapshot keeps the WAL from being
    restarted: after one failed restart the checkpointer stops waiting for the lock and
    for readers, so writes go on; once the reader is gone, a restart succeeds."""
    client = workmatic.create_client(db)
    client.add({"n": -1})
    reader = script("snapshot_holder", db_path, stdin=subprocess.PIPE)
    try:
        assert reader.stdin is not None and reader.stdout is not None
        assert reader.stdout.readline().strip() == "reading 1"
        longest = _longest_add(client, 3 * _checkpoints.RESTART_PAGES)
        wait_for(lambda: db._restart_wait_ms == 0, timeout=10)  # a restart failed
        assert longest < 1.0
        assert _wal_pages(db_path) >= 6_000  # kept: nothing could start it over
        reader.stdin.write("end\n")
        reader.stdin.flush()
        assert reader.stdout.readline().strip() == "done"
        assert reader.wait(timeout=10) == 0
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    added = 0

    def restarted() -> bool:
        nonlocal added
        for _ in range(200):
            client.add({"more": added})
            added += 1
        return db._restart_wait_ms == _checkpoints.RESTART_WAIT_MS

    wait_for(restarted, timeout=30)
    assert db.stats().ready == 3 * _checkpoints.RESTART_PAGES + 1 + added


def test_a_hold_queues_this_process_writes_until_it_is_released(
    db: workmatic.Database,
) -> None:
    client = workmatic.create_client(db)
    writer = db._writer()
    assert writer.hold(1.0)
    add = gevent.spawn(client.add, {"held": True})
    wait_for(lambda: writer.pending)
    assert not add.ready()
    assert db.stats().ready == 0
    writer.release()
    job_id = add.get(timeout=10)
    assert client.get(job_id) is not None
    assert not writer.busy


def test_a_hold_waits_for_the_running_transaction_and_takes_the_writer_over(
    db: workmatic.Database,
) -> None:
    client = workmatic.create_client(db)
    writer = db._writer()
    writer.busy = True  # as while a leader gathers its group, or an offloaded write runs
    assert writer.hold(0.01) is False  # timed out: nothing is left waiting
    assert writer.hold_wanted is None and writer.busy
    holder = gevent.spawn(writer.hold, 10.0)
    wait_for(lambda: writer.hold_wanted is not None)
    assert not holder.ready()
    writer._done_busy()  # that transaction ends: the hold is handed over, not freed
    assert holder.get(timeout=10) is True
    assert writer.busy
    add = gevent.spawn(client.add, {})
    wait_for(lambda: writer.pending)
    assert not add.ready()
    writer.release()
    add.get(timeout=10)
    assert db.stats().ready == 1


def test_a_forked_child_opens_its_own_connections(db: workmatic.Database) -> None:
    """gunicorn --preload forks after the app (and its Database) was created."""
    client = workmatic.create_client(db, "forked")
    client.add({"from": "parent"})
    parent_conns = [writer.conn.raw for writer in db._writers.values()]  # kept alive
    parent_checkpointer = db._writer().checkpointer
    assert parent_checkpointer is not None
    pid = os.fork()
    if pid == 0:  # the child: must not reuse the parent's connections or writer
        code = 1
        try:
            child_id = client.add({"from": "child"})  # its very first write, too
            if any(db._writer().conn.raw is conn for conn in parent_conns):
                code = 4
            elif client.get(child_id) is None:
                code = 3
            else:  # the parent's checkpointer (and its thread) ends in the child
                deadline = time.monotonic() + 10
                while not parent_checkpointer.dead and time.monotonic() < deadline:
                    gevent.sleep(0.01)
                code = 0 if parent_checkpointer.dead else 5
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert client.add({"from": "parent again"})
    assert sorted(j.payload["from"] for j in client.list()) == ["child", "parent", "parent again"]


def test_version_2_database_is_migrated_to_counting_ready_jobs_from_the_mark(
    db_path: str,
) -> None:
    conn = raw(db_path)
    for statement in _sql.MIGRATIONS[1] + _sql.MIGRATIONS[2]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 2")
    statuses = ["ready", "ready", "running", "done", "dead", "ready"]
    for i, status in enumerate(statuses):
        conn.execute(
            "INSERT INTO jobs (nonce, queue, payload, status, run_at, created_at, updated_at)"
            " VALUES (?, ?, '{}', ?, 0, 1, 1)",
            (i, "a" if i % 2 else "b", status),
        )
    # version 2's counts, with a counter of ready jobs (and a wrong one: it is rebuilt)
    conn.execute("INSERT INTO counts VALUES ('a', 'ready', 99), ('b', 'done', 1)")
    conn.close()
    with workmatic.create_database(db_path) as db:
        assert db.stats("a").as_dict() == {
            "ready": 2, "running": 0, "done": 1, "failed": 0, "dead": 0, "total": 3
        }  # fmt: skip
        assert db.stats("b").as_dict() == {
            "ready": 1, "running": 1, "done": 0, "failed": 0, "dead": 1, "total": 3
        }  # fmt: skip
        assert db._read(lambda c: c.execute("SELECT w FROM count_mark").fetchall()) == [(6,)]
        workmatic.create_client(db, "a").add({})
        assert db.stats("a").ready == 3 and db.count_jobs(status="ready") == 4
    assert raw(db_path).execute("PRAGMA user_version").fetchone()[0] == 3


def test_an_add_never_joins_a_transaction_left_open_on_an_adopted_connection(
    tmp_path: Path,
) -> None:
    """A lone add is one self-committing INSERT only outside a transaction: inside one that
    the application left open on the adopted connection, it would commit nothing."""
    conn = _driver.sqlite.connect(str(tmp_path / "mine.db"), isolation_level=None)
    db = workmatic.create_database(connection=conn)
    client = workmatic.create_client(db)
    client.add({"n": 1})
    conn.execute("BEGIN")
    db._writer().turned = time.perf_counter()
    with pytest.raises(workmatic.DatabaseError, match="transaction"):
        client.add({"n": 2})
    conn.execute("ROLLBACK")
    client.add({"n": 3})
    conn.isolation_level = ""  # the application's own: the driver would BEGIN before an INSERT
    db._writer().turned = time.perf_counter()
    client.add({"n": 4})
    assert not conn.in_transaction
    conn.rollback()  # the application's rollback cannot take an acknowledged job with it
    assert [j.payload for j in db.iter_jobs()] == [{"n": 1}, {"n": 3}, {"n": 4}]
    db.close()


def test_an_adopted_connection_of_one_thread_runs_the_large_writes_too(tmp_path: Path) -> None:
    """Regression: the writes that run in a thread of gevent's pool (a large add_many,
    purge, retry_jobs, import_jobs, transfer, recount) failed on an adopted connection
    made with the driver's defaults (check_same_thread=True): "SQLite objects created in
    a thread can only be used in that same thread". They now run in the caller's thread."""
    conn = _driver.sqlite.connect(str(tmp_path / "adopted.db"))  # the driver's defaults
    with workmatic.create_database(connection=conn) as db:
        client = workmatic.create_client(db, "q")
        ids = client.add_many([{"n": n} for n in range(3000)])
        assert len(ids) == 3000 and client.stats().ready == 3000
        db.recount()
        assert db.transfer("q", "other", limit=1000) == 1000
        assert db.stats("other").ready == 1000
        result = db.import_jobs([{"queue": "q", "payload": '{"imported": true}'}])
        assert result.inserted == 1
        assert db.purge(queue="other") == 1000
        assert client.stats().ready == 2001
        assert db.retry_jobs(status="done") == 0
        client.clear()
        assert db.stats().total == 0
        client.add({"after": "clear"})
        assert client.stats().ready == 1
