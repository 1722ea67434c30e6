"""The client: add, add_many, get, stats, clear, pause/resume, keys and validation."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import gevent
import pytest
from helpers import edit_job
from marshmallow import Schema, fields

import workmatic


def test_add_commits_and_returns_a_url_safe_id(db: workmatic.Database, db_path: str) -> None:
    client = workmatic.create_client(db, queue="emails")
    job_id = client.add({"to": "a@b.c"})
    assert isinstance(job_id, str) and re.fullmatch(r"[0-9a-z]+", job_id)
    with workmatic.create_database(db_path) as other:  # a second connection sees it
        job = other.get_job(job_id)
    assert job is not None
    assert (job.queue, job.payload, job.status) == ("emails", {"to": "a@b.c"}, "ready")
    assert (job.priority, job.attempts, job.max_attempts) == (0, 0, 3)
    assert job.created_at.tzinfo is not None and job.run_at == job.created_at
    assert job.last_error is None and job.result is None


def test_default_queue_is_default(memdb: workmatic.Database) -> None:
    assert workmatic.create_client(memdb).queue == "default"


def test_options_are_stored(memdb: workmatic.Database) -> None:
    client = workmatic.create_client(memdb)
    job = client.get(client.add([1, 2], priority=-5, delay=timedelta(seconds=90), max_attempts=7))
    assert job is not None
    assert (job.payload, job.priority, job.max_attempts) == ([1, 2], -5, 7)
    assert 89 <= (job.run_at - job.created_at).total_seconds() <= 91


def test_ids_are_unique_and_time_ordered(memdb: workmatic.Database) -> None:
    client = workmatic.create_client(memdb)
    ids = [client.add(i) for i in range(200)] + client.add_many(range(200))
    assert len(set(ids)) == 400
    assert ids == sorted(ids)


def test_get_unknown_is_none(memdb: workmatic.Database) -> None:
    assert workmatic.create_client(memdb).get("nope") is None


def test_stats_count_each_status(memdb: workmatic.Database) -> None:
    client = workmatic.create_client(memdb, "q")
    client.add_many([{}] * 3)
    workmatic.create_client(memdb, "other").add({})
    stats = client.stats()
    assert stats.as_dict() == {
        "ready": 3,
        "running": 0,
        "done": 0,
        "failed": 0,
        "dead": 0,
        "total": 3,
    }
    assert memdb.stats().total == 4


def test_add_many_is_one_transaction_of_any_size(db: workmatic.Database) -> None:
    client = workmatic.create_client(db)
    writer_commits = db._writer().commits
    ids = client.add_many({"n": i} for i in range(100_000))
    assert len(ids) == 100_000 == client.stats().ready
    assert db._writer().commits == writer_commits + 1
    assert db.get_job(ids[-1]).payload == {"n": 99_999}  # type: ignore[union-attr]


def test_add_many_lets_timers_run_while_it_serialises(db: workmatic.Database) -> None:
    """A greenlet waiting on a timer (a lease renewer, a web server's keep-alive) keeps
    running while add_many serialises a large batch; it is not starved until the insert."""
    ticks = [0]

    def heartbeat() -> None:
        while True:
            gevent.sleep(0.001)
            ticks[0] += 1

    def payloads() -> Iterator[dict[str, int]]:
        for n in range(2_000):
            until = time.perf_counter() + 0.00005  # 50 µs of work each: 100 ms in all
            while time.perf_counter() < until:
                pass
            yield {"n": n, "ticks": ticks[0]}

    beat = gevent.spawn(heartbeat)
    gevent.sleep(0.01)
    try:
        ids = workmatic.create_client(db).add_many(payloads())
    finally:
        beat.kill()
    jobs = [db.get_job(ids[0]), db.get_job(ids[-1])]
    first, last = (job.payload["ticks"] for job in jobs if job is not None)
    assert last - first >= 10  # ~50 heartbeats fit in 100 ms; none ran with sleep(0) yields


@pytest.mark.parametrize(
    "queue", ["it's; DROP TABLE jobs; --", "nul\x00inside", "émoji 🙂 ''", "x" * 255]
)
def test_add_many_keeps_any_queue_name_exactly(db: workmatic.Database, queue: str) -> None:
    """add_many writes the queue into its statement as an SQL string (see _sql.insert_batch):
    quotes, a NUL, Unicode and the longest name all come back exactly."""
    client = workmatic.create_client(db, queue)
    ids = client.add_many([{"n": n} for n in range(3)], priority=-2, delay=60, max_attempts=5)
    jobs = [db.get_job(job_id) for job_id in ids]
    assert [(j.queue, j.payload, j.priority, j.max_attempts) for j in jobs if j] == [
        (queue, {"n": n}, -2, 5) for n in range(3)
    ]
    assert client.stats().ready == 3 and db.stats().total == 3


def test_add_many_with_one_bad_payload_writes_nothing(memdb: workmatic.Database) -> None:
    client = workmatic.create_client(memdb)
    with pytest.raises(workmatic.ValidationError) as info:
        client.add_many([{"ok": 1}, {"bad": object()}, {"ok": 2}])
    assert 1 in info.value.messages["payloads"]
    assert client.stats().total == 0


def test_add_many_stores_and_refuses_each_payload_as_add_does(memdb: workmatic.Database) -> None:
    """add_many encodes the common payload inline (see Client.add_many) and leaves the
    rest to the same check as add(): non-ASCII text and nested values are stored exactly,
    and each bad payload is reported at its index with add()'s own message."""
    client = workmatic.create_client(memdb)
    good = [{"n": 1}, {"name": "Zoë ✓"}, ["a", {"b": None}], "text", 3.5, {"e": "😀"}, None]
    ids = client.add_many(good)
    assert [job.payload for job in map(client.get, ids) if job is not None] == good
    bad = [{"ok": 1}, {"x": float("nan")}, {"ok": "é"}, {"x": "\ud800"}, object(), [1, {2, 3}]]
    with pytest.raises(workmatic.ValidationError) as info:
        client.add_many(bad)
    messages = info.value.messages["payloads"]
    assert sorted(messages) == [1, 3, 4, 5]
    for index in messages:
        with pytest.raises(workmatic.ValidationError) as alone:
            client.add(bad[index])
        assert messages[index] == alone.value.messages["payload"]
    assert client.stats().total == len(good)


@pytest.mark.parametrize(
    ("payload", "options", "field"),
    [
        (object(), {}, "payload"),
        ({"x": float("nan")}, {}, "payload"),
        ({"x": "\ud800"}, {}, "payload"),
        ({}, {"delay": -1}, "delay"),
        ({}, {"delay": "soon"}, "delay"),
        ({}, {"delay": float("inf")}, "delay"),
        ({}, {"max_attempts": 0}, "max_attempts"),
        ({}, {"max_attempts": 2.5}, "max_attempts"),
        ({}, {"priority": 1.5}, "priority"),
        ({}, {"priority": "1"}, "priority"),
        ({}, {"priority": True}, "priority"),
        ({}, {"priority": [1]}, "priority"),
        ({}, {"key": ""}, "key"),
        ({}, {"key": 5}, "key"),
        ({}, {"delay_ms": 5}, "delay_ms"),
    ],
    ids=[
        "unserialisable-payload",
        "nan",
        "lone-surrogate",
        "negative-delay",
        "string-delay",
        "infinite-delay",
        "zero-attempts",
        "float-attempts",
        "float-priority",
        "string-priority",
        "bool-priority",
        "list-priority",
        "empty-key",
        "int-key",
        "unknown-option",
    ],
)
def test_bad_input_raises_validation_error_and_writes_nothing(
    memdb: workmatic.Database, payload: Any, options: dict[str, Any], field: str
) -> None:
    client = workmatic.create_client(memdb)
    with pytest.raises(workmatic.ValidationError) as info:
        client.add(payload, **options)
    assert field in info.value.messages
    assert isinstance(info.value, ValueError)
    with pytest.raises(workmatic.ValidationError):
        client.add_many([payload], **options)
    assert client.stats().total == 0


@pytest.mark.parametrize("queue", ["", 5, None, "x" * 256], ids=["empty", "int", "none", "long"])
def test_bad_queue_name_is_refused(memdb: workmatic.Database, queue: Any) -> None:
    with pytest.raises(workmatic.ValidationError):
        workmatic.create_client(memdb, queue)


class Email(Schema):
    to = fields.Email(required=True)
    subject = fields.String(load_default="")


def test_client_schema_validates_payloads(memdb: workmatic.Database) -> None:
    client = workmatic.create_client(memdb, schema=Email())
    client.add({"to": "ann@example.com"})
    with pytest.raises(workmatic.ValidationError) as info:
        client.add({"to": "not-an-email"})
    assert "to" in info.value.messages["payload"]
    with pytest.raises(workmatic.ValidationError):
        client.add(["not", "an", "object"])
    assert client.stats().total == 1


def test_key_makes_add_idempotent_while_active(memdb: workmatic.Database) -> None:
    client = workmatic.create_client(memdb)
    first = client.add({"n": 1}, key="user-42")
    assert client.add({"n": 2}, key="user-42") == first
    assert workmatic.create_client(memdb, "other").add({}, key="user-42") != first
    assert client.stats().total == 1
    edit_job(memdb, first, "status = 'done'")
    assert client.add({"n": 3}, key="user-42") != first


def test_clear_deletes_the_queue_jobs_but_never_running_ones(memdb: workmatic.Database) -> None:
    client = workmatic.create_client(memdb, "q")
    ids = client.add_many([{}] * 4)
    workmatic.create_client(memdb, "keep").add({})
    edit_job(memdb, ids[0], "status = 'running'")
    edit_job(memdb, ids[1], "status = 'dead'")
    assert client.clear(status="dead") == 1
    assert client.clear() == 2
    assert client.stats().as_dict()["running"] == 1
    assert memdb.stats("keep").total == 1
    with pytest.raises(workmatic.ValidationError):
        client.clear(status="running")


def test_pause_is_persisted_for_every_process(db: workmatic.Database, db_path: str) -> None:
    client = workmatic.create_client(db, "q")
    assert not client.is_paused
    client.pause()
    with workmatic.create_database(db_path) as other:
        assert workmatic.create_client(other, "q").is_paused
        assert [q.name for q in other.queues() if q.is_paused] == ["q"]
    client.resume()
    assert not client.is_paused


def test_as_dict_millisecond_fields_are_exact(memdb: workmatic.Database) -> None:
    from workmatic.job import datetime_to_ms, ms_to_datetime

    assert all(
        datetime_to_ms(ms_to_datetime(ms)) == ms
        for ms in range(1_764_790_000_000, 1_764_790_005_000)
    )
    job = workmatic.create_client(memdb).get(workmatic.create_client(memdb).add({}))
    assert job is not None
    data = job.as_dict()
    assert ms_to_datetime(data["created_at_ms"]) == job.created_at
    assert data["lease_until"] is None and data["lease_until_ms"] == 0
