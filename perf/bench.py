"""Workmatic's benchmark suite: the Node original's table, Huey beside it, the SQL floor.

Usage::

    python perf/bench.py [--file | --memory] [--jobs N] [--repeat K] [--quick]
                         [--json out.json] [--markdown out.md] [--only KEY,...]

Every measurement runs in a fresh subprocess (this script with ``--spec``), so peers
never share a process, a connection or a page cache warmed by another peer. Figures
are medians over ``--repeat`` repetitions; the repetitions are interleaved so that
background noise spreads over every column alike.

The process monkey-patches itself with gevent first: it owns its process, and Huey's
greenlet consumer needs the patch.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Result, machine, median  # noqa: E402
from _plan import Row, Sizes, Spec, build_rows  # noqa: E402
from _report import render  # noqa: E402

RESULT_PREFIX = "RESULT "


def run_spec(spec: dict[str, Any], workdir: str) -> Result:
    """Run one measurement in this (fresh) process and return its result."""
    impl, case, mode = spec["impl"], spec["case"], spec["mode"]
    durability, jobs, options = spec["durability"], spec["jobs"], spec["options"]
    path = ":memory:" if mode == "memory" else os.path.join(workdir, f"{impl}.db")
    if case == "claim_large":
        source = options["source"]
        shutil.copyfile(source, path)
    if impl == "workmatic":
        import _workmatic

        return _workmatic.run(case, path, durability, jobs, options)
    if impl == "huey":
        import _huey

        return _huey.run(case, path, durability, jobs, options)
    if impl == "floor":
        import _floor

        return _floor.run(case, path, durability, jobs, options)
    raise SystemExit(f"unknown impl {impl!r}")


def _subprocess(args: list[str], timeout: float) -> tuple[Result | None, str]:
    try:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result: Result = json.loads(line[len(RESULT_PREFIX) :])
            return result, proc.stderr
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return None, f"exit {proc.returncode}: " + " | ".join(tail)


def measure(spec: Spec, extra: dict[str, Any], timeout: float) -> Result:
    """Run *spec* in a fresh subprocess with its own temporary directory."""
    payload = json.loads(spec.as_json())
    payload["options"].update(extra)
    with tempfile.TemporaryDirectory(prefix="wm-bench-") as workdir:
        result, err = _subprocess(
            ["--spec", json.dumps(payload), "--workdir", workdir], timeout=timeout
        )
    if result is None:
        return {"error": err}
    return result


def build_large_files(sizes: Sizes, workdir: str, timeout: float) -> dict[int, str]:
    """Build the prefilled files (half ready, half delayed) once per run."""
    files: dict[int, str] = {}
    for queued in sorted({sizes.jobs, sizes.large}):
        path = os.path.join(workdir, f"queued-{queued}.db")
        print(f"# building {path} with {queued:,} jobs (add_many) ...", file=sys.stderr)
        result, err = _subprocess(
            ["--build", path, "--jobs", str(queued)], timeout=max(timeout, 1800)
        )
        if result is None:
            print(f"# build failed: {err}", file=sys.stderr)
            continue
        print(
            f"# built in {result['seconds']:.1f} s ({result['rate']:,.0f} jobs/s),"
            f" {result['file_mb']:.0f} MiB",
            file=sys.stderr,
        )
        files[queued] = path
    return files


def aggregate(results: list[Result]) -> Result:
    """Return the median of every numeric field over repetitions (max for stalls)."""
    good = [r for r in results if "error" not in r]
    if not good:
        return {"error": results[0].get("error", "failed") if results else "not run"}
    out: Result = dict(good[-1])
    for name in good[0]:
        values = [r[name] for r in good if isinstance(r.get(name), (int, float))]
        if values and not isinstance(good[0][name], bool):
            out[name] = max(values) if name == "stall_ms" else median(values)
    out["runs"] = [r.get("rate", r.get("p50_ms")) for r in good]
    out["failed_runs"] = len(results) - len(good)
    return out


def rerender(path: Path, markdown: str | None) -> int:
    """Print (and optionally write) the tables of a saved ``--json`` run."""
    saved = json.loads(path.read_text(encoding="utf-8"))
    figures: dict[str, Result] = saved["figures"]
    modes = tuple(m for m in ("file", "memory") if any(f":{m}:" in key for key in figures))
    rows = [
        row
        for row in build_rows(Sizes(**saved["info"]["sizes"]), modes)
        if any(spec.key in figures for spec in row.cells.values())
    ]
    text, _ = render(rows, figures, saved["info"])
    print(text)
    if markdown:
        Path(markdown).write_text(text + "\n", encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the suite (or, with --spec/--build/--produce, one step of it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", action="store_true", help="file databases only")
    parser.add_argument("--memory", action="store_true", help=":memory: databases only")
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per Node-table row")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (median)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition")
    parser.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="write the tables as markdown")
    parser.add_argument("--only", metavar="KEYS", help="comma-separated row keys to run")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per measurement")
    parser.add_argument("--render", metavar="PATH", help="re-print the tables of a --json file")
    # Internal: one measurement / building a prefilled file / a producer process.
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--build", help=argparse.SUPPRESS)
    parser.add_argument("--produce", help=argparse.SUPPRESS)
    parser.add_argument("--interval", type=float, default=0.002, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.spec:
        result = run_spec(json.loads(args.spec), args.workdir or tempfile.gettempdir())
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0
    if args.build:
        import _workmatic

        half = args.jobs // 2
        result = _workmatic.build_large(args.build, args.jobs - half, half)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0
    if args.produce:
        import _workmatic

        _workmatic.produce(args.produce, args.jobs, args.interval)
        return 0

    if args.render:
        return rerender(Path(args.render), args.markdown)
    if args.quick:
        args.jobs = min(args.jobs, 200)
        args.repeat = 1
    sizes = Sizes.for_jobs(args.jobs)
    modes: tuple[str, ...] = ("file", "memory")
    if args.file and not args.memory:
        modes = ("file",)
    elif args.memory and not args.file:
        modes = ("memory",)
    rows: list[Row] = build_rows(sizes, modes)
    if args.only:
        keep = set(args.only.split(","))
        rows = [row for row in rows if row.key in keep]

    started = time.time()
    raw: dict[str, list[Result]] = {}
    specs: dict[str, Spec] = {}
    for row in rows:
        for spec in row.cells.values():
            specs[spec.key] = spec
    with tempfile.TemporaryDirectory(prefix="wm-bench-large-") as largedir:
        large: dict[int, str] = {}
        if any(spec.case == "claim_large" for spec in specs.values()):
            large = build_large_files(sizes, largedir, args.timeout)
        total = len(specs) * args.repeat
        done = 0
        for rep in range(args.repeat):
            for key, spec in specs.items():
                done += 1
                extra: dict[str, Any] = {}
                if spec.case == "claim_large":
                    queued = dict(spec.options)["queued"]
                    if queued not in large:
                        raw.setdefault(key, []).append({"error": "no prefilled file"})
                        continue
                    extra["source"] = large[queued]
                result = measure(spec, extra, args.timeout)
                raw.setdefault(key, []).append(result)
                shown = result.get("error") or (
                    f"{result['rate']:,.0f} jobs/s"
                    if "rate" in result
                    else f"p50 {result.get('p50_ms', 0):.2f} ms"
                )
                print(
                    f"# [{done}/{total}] rep {rep + 1} {key}: {shown}", file=sys.stderr, flush=True
                )
    figures = {key: aggregate(results) for key, results in raw.items()}
    info: dict[str, Any] = {
        "machine": machine(),
        "jobs": sizes.jobs,
        "repeat": args.repeat,
        "sizes": sizes.__dict__,
        "elapsed_s": time.time() - started,
        "command": "python perf/bench.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
    }
    text, verdicts = render(rows, figures, info)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n", encoding="utf-8")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"info": info, "figures": figures, "raw": raw, "targets": verdicts},
                indent=2,
                default=str,
            ),
            encoding="utf-8",
        )
    errors = [key for key, fig in figures.items() if "error" in fig]
    if errors:
        print(f"# {len(errors)} measurement(s) failed: {', '.join(errors)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
