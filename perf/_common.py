"""Helpers shared by the benchmark cases: payloads, timing, memory, hub stalls."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gevent
import gevent.event

PERF_DIR = Path(__file__).resolve().parent
REPO_ROOT = PERF_DIR.parent

Result = dict[str, Any]


def import_workmatic() -> Any:
    """Import workmatic: the installed one (tox) or, failing that, the checkout's."""
    try:
        import workmatic
    except ImportError:
        sys.path.insert(0, str(REPO_ROOT))
        import workmatic
    return workmatic


def payload(n: int) -> dict[str, Any]:
    """Return the benchmark payload for job *n* (the same shape for every peer)."""
    return {"i": n, "email": f"user{n}@example.com"}


def payloads(count: int, start: int = 0) -> list[dict[str, Any]]:
    """Return *count* benchmark payloads."""
    return [payload(n) for n in range(start, start + count)]


def rate(jobs: int, seconds: float) -> float:
    """Return jobs per second (0 for an empty interval)."""
    return jobs / seconds if seconds > 0 else 0.0


def _status_kb(field: str) -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mb() -> float:
    """Return this process's resident set size in MiB (Linux /proc)."""
    return _status_kb("VmRSS") / 1024


def peak_rss_mb() -> float:
    """Return this process's peak resident set size in MiB (Linux /proc)."""
    return _status_kb("VmHWM") / 1024


def file_mb(path: str | os.PathLike[str]) -> float:
    """Return the size of *path* in MiB, 0 if it does not exist."""
    try:
        return os.path.getsize(path) / (1024 * 1024)
    except OSError:
        return 0.0


def percentile(values: Sequence[float], pct: float) -> float:
    """Return the *pct* percentile of *values* (nearest rank), 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    """Return the median of *values*, 0 when empty."""
    return statistics.median(values) if values else 0.0


class HubMonitor:
    """A heartbeat greenlet that sleeps 1 ms and records the largest gap.

    A gap much larger than 1 ms means something held the gevent hub (a
    blocking call that never yields) for that long.
    """

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.max_gap = 0.0
        self._stop = gevent.event.Event()
        self._greenlet: gevent.Greenlet | None = None

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            gevent.sleep(self.interval)
            now = time.perf_counter()
            gap = now - last - self.interval
            self.max_gap = max(self.max_gap, gap)
            last = now

    def start(self) -> None:
        """Start the heartbeat (call it right before the timed section)."""
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)
            gevent.sleep(0)

    def stop(self) -> None:
        """Stop the heartbeat."""
        self._stop.set()
        if self._greenlet is not None:
            self._greenlet.join(1)

    def __enter__(self) -> HubMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def max_gap_ms(self) -> float:
        """Return the largest stall seen, in milliseconds."""
        return self.max_gap * 1000


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.0005) -> bool:
    """Cooperatively wait until *predicate* is true; return False on timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(step)
    return True


class Countdown:
    """Count handler calls; ``event`` is set when *target* calls were seen."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.event = gevent.event.Event()

    def hit(self) -> None:
        """Count one call."""
        self.count += 1
        if self.count >= self.target:
            self.event.set()


def machine() -> dict[str, Any]:
    """Describe the machine: CPU count, CPU model, Python and OS."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count() or 0,
        "cpu": model,
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else [],
    }
