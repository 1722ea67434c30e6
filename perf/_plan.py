"""What the suite measures: rows, the measurements behind each cell, and the targets."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# The Node original's table (seed README, "Benchmarks"): jobs/s.
NODE = {
    "seq_add": {"file": 13_000, "memory": 27_000},
    "par_add": {"file": 12_000, "memory": 23_000},
    "c1": {"file": 1_100, "memory": 1_100},
    "c4": {"file": 4_800, "memory": 4_800},
    "c8": {"file": 8_300, "memory": 10_000},
    "c16": {"file": 5_700, "memory": 18_000},
    "mixed": {"file": 3_500, "memory": 7_500},
    "claim_batch": {"file": 11_800, "memory": 23_600},
}

MIXED_CONCURRENCY = 8
MIXED_PRODUCERS = 4
BATCH_CONCURRENCY = 64
IO_CONCURRENCY = 64
IO_SLEEP = 0.01
LARGE_CONCURRENCY = 16


@dataclass(frozen=True)
class Spec:
    """One measurement: run *case* through *impl* on a *mode* database."""

    impl: str  # "workmatic" | "huey" | "floor"
    case: str
    mode: str  # "memory" | "file"
    durability: str  # "normal" | "full"
    jobs: int
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        """Return a stable identifier for this measurement."""
        opts = ",".join(f"{k}={v}" for k, v in self.options)
        return f"{self.impl}:{self.case}:{self.mode}:{self.durability}:{self.jobs}:{opts}"

    def as_json(self) -> str:
        """Return this spec as JSON (the subprocess's argument)."""
        return json.dumps(
            {
                "impl": self.impl,
                "case": self.case,
                "mode": self.mode,
                "durability": self.durability,
                "jobs": self.jobs,
                "options": dict(self.options),
            }
        )


@dataclass
class Row:
    """A table row: a title and the measurement behind each column."""

    key: str
    title: str
    mode: str
    cells: dict[str, Spec] = field(default_factory=dict)
    metric: str = "rate"  # "rate" | "latency" | "io" | "large"

    @property
    def node(self) -> float | None:
        """Return the Node original's figure for this row, if it has one."""
        return NODE.get(self.key, {}).get(self.mode)


@dataclass(frozen=True)
class Sizes:
    """Job counts for one run."""

    jobs: int
    add_many: int
    large: int
    latency: int
    claim: int

    @classmethod
    def for_jobs(cls, jobs: int) -> Sizes:
        """Derive the other counts from the Node-table job count."""
        return cls(
            jobs=jobs,
            add_many=jobs * 10,
            large=jobs * 100,
            latency=min(1000, jobs),
            claim=max(100, jobs // 2),
        )


def _cells(
    case: str, mode: str, jobs: int, *, huey_jobs: int | None = None, **options: Any
) -> dict[str, Spec]:
    opts = tuple(sorted(options.items()))
    hjobs = huey_jobs or jobs
    cells = {
        "ours": Spec("workmatic", case, mode, "normal", jobs, opts),
        "floor": Spec("floor", case, mode, "normal", jobs, opts),
        "huey": Spec("huey", case, mode, "full", hjobs, opts),
    }
    if mode == "file":
        cells["ours_full"] = Spec("workmatic", case, mode, "full", jobs, opts)
        cells["huey_normal"] = Spec("huey", case, mode, "normal", hjobs, opts)
    return cells


def build_rows(sizes: Sizes, modes: tuple[str, ...] = ("file", "memory")) -> list[Row]:
    """Return every row of the report, in display order."""
    rows: list[Row] = []
    n = sizes.jobs
    for mode in modes:
        rows.append(Row("seq_add", "Sequential insert (add)", mode, _cells("seq_add", mode, n)))
        rows.append(
            Row(
                "par_add",
                "Parallel insert (add from 100 greenlets)",
                mode,
                _cells("par_add", mode, n, greenlets=100),
            )
        )
        for c in (1, 4, 8, 16):
            rows.append(
                Row(
                    f"c{c}",
                    f"Process (concurrency={c})",
                    mode,
                    _cells("process", mode, n, concurrency=c),
                )
            )
        rows.append(
            Row(
                "mixed",
                f"Mixed insert+process ({MIXED_PRODUCERS} producers, c={MIXED_CONCURRENCY})",
                mode,
                _cells("mixed", mode, n, concurrency=MIXED_CONCURRENCY, producers=MIXED_PRODUCERS),
            )
        )
        rows.append(
            Row(
                "claim_batch",
                f"Claim + process batch (c={BATCH_CONCURRENCY})",
                mode,
                _cells("process", mode, n, concurrency=BATCH_CONCURRENCY),
            )
        )
        rows.append(
            Row(
                "add_many",
                f"add_many of {sizes.add_many:,} (Huey: task.map of {n:,})",
                mode,
                _cells("add_many", mode, sizes.add_many, huey_jobs=n),
            )
        )
        io = _cells("process", mode, n, concurrency=IO_CONCURRENCY, sleep=IO_SLEEP)
        del io["floor"]
        rows.append(Row("io_bound", f"I/O-bound: sleep(0.01), c={IO_CONCURRENCY}", mode, io, "io"))
    for mode in modes:
        cells = {
            "ours": Spec("workmatic", "latency", mode, "normal", sizes.latency, ()),
        }
        rows.append(Row("latency", "Pickup latency, same process", mode, cells, "latency"))
    if "file" in modes:
        cells = {
            "ours": Spec(
                "workmatic", "latency", "file", "normal", sizes.latency, (("remote", True),)
            )
        }
        rows.append(Row("latency_x", "Pickup latency, producer process", "file", cells, "latency"))
        for label, queued in (("small", sizes.jobs), ("large", sizes.large)):
            cells = {
                "ours": Spec(
                    "workmatic",
                    "claim_large",
                    "file",
                    "normal",
                    sizes.claim,
                    (("concurrency", LARGE_CONCURRENCY), ("queued", queued)),
                )
            }
            rows.append(
                Row(
                    f"claim_{label}",
                    f"Claim {sizes.claim:,} at c={LARGE_CONCURRENCY}, {queued:,} queued "
                    "(half delayed)",
                    "file",
                    cells,
                    "large",
                )
            )
    return rows


# Targets the core must hit (file DB, WAL + NORMAL). ratio_to: the Huey column.
TARGETS: list[tuple[str, str, float | None, float | None]] = [
    # (row key, label, minimum jobs/s, minimum ratio to Huey NORMAL)
    ("seq_add", "sequential add()", 20_000, 1.1),
    ("par_add", "add() from 100 greenlets", 35_000, 3.0),
    ("add_many", "add_many", 150_000, None),
    ("c1", "no-op processing, c=1", 10_000, 1.0),
    ("c16", "no-op processing, c=16", 30_000, 3.0),
]
