"""Soak test: steady load of producers and a worker on one file, for minutes.

Usage::

    python perf/soak.py --minutes 10          # tox -e soak
    python perf/soak.py --seconds 30          # the CI version

In-process producer greenlets and one producer subprocess add jobs at a steady rate
while a worker (concurrency 8) processes them and a janitor purges ``done`` jobs every
window. Every window (10 s; shorter for short runs) it prints the jobs added and done,
throughput, backlog, RSS, and the database and WAL sizes. At the end it prints a summary
table and exits non-zero if throughput dropped to zero in a window, if the WAL kept
growing (no checkpoint got through), if the backlog never drained, or if the producer
process failed.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import HubMonitor, file_mb, import_workmatic, payload, rss_mb  # noqa: E402

workmatic = import_workmatic()

QUEUE = "soak"
#: The WAL may not end larger than this and twice its size at mid-run.
WAL_LIMIT_MB = 64.0


@dataclass
class Window:
    """One reporting window."""

    t: float
    added: int
    done: int
    rate: float
    backlog: int
    rss_mb: float
    db_mb: float
    wal_mb: float


def produce(path: str, rate: float, until: float) -> int:
    """Producer subprocess: add jobs at *rate* per second until *until* (epoch)."""
    db = workmatic.create_database(path)
    client = workmatic.create_client(db, QUEUE)
    n = 0
    start = time.monotonic()
    while time.time() < until:
        client.add(payload(n))
        n += 1
        ahead = n / rate - (time.monotonic() - start)
        if ahead > 0:
            gevent.sleep(ahead)
    db.close()
    return 0


def soak(path: str, seconds: float, window: float, rate: float, producers: int) -> int:
    """Run the load for *seconds*; return the exit status."""
    db = workmatic.create_database(path)
    client = workmatic.create_client(db, QUEUE)
    wal = path + "-wal"
    stop = gevent.event.Event()
    done = 0

    def handler(job: Any) -> None:
        nonlocal done
        if job.payload["i"] % 50 == 0:
            gevent.sleep(0.005)  # a few jobs wait on "I/O"
        done += 1

    def producer(index: int, share: float) -> None:
        n = index * 10_000_000
        start = time.monotonic()
        k = 0
        while not stop.is_set():
            client.add(payload(n + k))
            k += 1
            ahead = k / share - (time.monotonic() - start)
            if ahead > 0:
                stop.wait(ahead)

    def janitor() -> None:
        while not stop.wait(window):
            db.purge(status="done", queue=QUEUE)

    worker = workmatic.create_worker(db, QUEUE, concurrency=8, poll_interval=0.5)
    worker.process(handler)
    worker.start()
    local_rate = rate / 2
    remote_rate = rate - local_rate
    until = time.time() + seconds
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--produce",
            path,
            "--rate",
            str(remote_rate),
            "--until",
            str(until),
        ]
    )
    greenlets = [gevent.spawn(producer, i, local_rate / producers) for i in range(producers)]
    greenlets.append(gevent.spawn(janitor))
    windows: list[Window] = []
    print(
        f"soak: {seconds:g} s on {path}; {rate:g} jobs/s offered ({producers} producer "
        f"greenlets + 1 producer process), worker concurrency 8; SQLite {db.sqlite_version} "
        f"({db.driver}), durability {db.durability}",
        flush=True,
    )
    print(
        f"{'t s':>6} {'added':>8} {'done':>8} {'done/s':>8} {'backlog':>8} "
        f"{'RSS MiB':>8} {'db MiB':>8} {'WAL MiB':>8}",
        flush=True,
    )
    start = time.monotonic()
    last_done = 0
    with HubMonitor() as monitor:
        monitor.start()
        while True:
            elapsed = time.monotonic() - start
            if elapsed >= seconds:
                break
            gevent.sleep(min(window, seconds - elapsed))
            now = time.monotonic() - start
            span = now - (windows[-1].t if windows else 0.0)
            backlog = db.count_jobs(queue=QUEUE, status="ready")
            w = Window(
                t=now,
                added=done + backlog + worker.active,  # by every producer
                done=done,
                rate=(done - last_done) / span if span > 0 else 0.0,
                backlog=backlog,
                rss_mb=rss_mb(),
                db_mb=file_mb(path),
                wal_mb=file_mb(wal),
            )
            last_done = done
            windows.append(w)
            print(
                f"{w.t:6.1f} {w.added:8d} {w.done:8d} {w.rate:8.0f} {w.backlog:8d} "
                f"{w.rss_mb:8.1f} {w.db_mb:8.1f} {w.wal_mb:8.1f}",
                flush=True,
            )
        stop.set()
        gevent.joinall(greenlets, timeout=10)
        code = proc.wait(timeout=60)
        drained = _drain(db, timeout=max(10.0, window))
        worker.stop(timeout=10)
    final = db.stats(QUEUE)
    db.close()
    problems = _check(windows, code, drained)
    rates = [w.rate for w in windows]
    print()
    print("| soak summary | value |")
    print("|---|---:|")
    rows = [
        ("duration s", f"{seconds:g}"),
        ("jobs done", f"{done:,}"),
        ("mean done/s", f"{done / max(seconds, 1e-9):,.0f}"),
        ("min / max window done/s", f"{min(rates, default=0):,.0f} / {max(rates, default=0):,.0f}"),
        ("final RSS MiB", f"{rss_mb():.1f}"),
        ("final db MiB", f"{file_mb(path):.1f}"),
        (
            "max / final WAL MiB",
            f"{max((w.wal_mb for w in windows), default=0):.1f} / {file_mb(wal):.1f}",
        ),
        ("largest hub stall ms", f"{monitor.max_gap_ms:.1f}"),
        ("left ready / running / dead", f"{final.ready} / {final.running} / {final.dead}"),
        ("result", "FAIL: " + "; ".join(problems) if problems else "PASS"),
    ]
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 1 if problems else 0


def _drain(db: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.count_jobs(queue=QUEUE, status="ready") == 0:
            return True
        gevent.sleep(0.1)
    return False


def _check(windows: list[Window], producer_code: int, drained: bool) -> list[str]:
    problems = []
    if producer_code != 0:
        problems.append(f"the producer process exited {producer_code}")
    if any(w.rate == 0 for w in windows[1:]) or not windows:
        problems.append("throughput dropped to 0 in a window")
    if windows:
        mid = max(w.wal_mb for w in windows[: max(1, len(windows) // 2)])
        end = windows[-1].wal_mb
        if end > WAL_LIMIT_MB and end > 2 * mid:
            problems.append(f"the WAL grew without bound ({mid:.1f} -> {end:.1f} MiB)")
    if not drained:
        problems.append("the backlog did not drain after the producers stopped")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run the soak (or, with --produce, a producer)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help="duration in minutes")
    length.add_argument("--seconds", type=float, help="duration in seconds")
    parser.add_argument("--db", help="database file (default: a temporary file)")
    parser.add_argument("--rate", type=float, default=2000, help="jobs/s offered (total)")
    parser.add_argument("--producers", type=int, default=4, help="producer greenlets")
    parser.add_argument("--window", type=float, help="report interval in seconds (10)")
    parser.add_argument("--produce", help=argparse.SUPPRESS)
    parser.add_argument("--until", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.produce:
        return produce(args.produce, args.rate, args.until)
    seconds = args.seconds if args.seconds is not None else 60 * (args.minutes or 10)
    window = args.window or (10.0 if seconds >= 30 else max(1.0, seconds / 5))
    if args.db:
        return soak(os.path.abspath(args.db), seconds, window, args.rate, args.producers)
    with tempfile.TemporaryDirectory(prefix="wm-soak-") as tmp:
        return soak(os.path.join(tmp, "soak.db"), seconds, window, args.rate, args.producers)


if __name__ == "__main__":
    sys.exit(main())
