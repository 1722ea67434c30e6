"""The ``workmatic`` CLI's commands: what each sub-command does once its arguments are
parsed (``cli.py`` holds the parser and the entry point)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import workmatic

from ._csv import (
    CsvImportReport,
    InvalidRowsError,
    Progress,
    csv_input,
    csv_output,
    export_csv,
    import_csv,
    read_rows,
)
from .exceptions import (
    DatabaseError,
    DatabaseLockedError,
    DatabaseNotFoundError,
    JobNotFoundError,
)
from .job import STATUSES, BrokenPayload, JobStats, QueueInfo

if TYPE_CHECKING:
    from .database import Database
    from .job import Job


PROG = "workmatic"

SHOWN_ERRORS = 20

DEFAULT_LOCK_TIMEOUT = 10.0

_COUNT_COLUMNS = ("ready", "running", "done", "failed", "dead", "total")


class UsageError(Exception):
    """A command line that parses but makes no sense (exit status 2)."""


class CommandError(Exception):
    """A command failed; the message is printed as one line (exit status 1)."""


def _error(message: str) -> None:
    sys.stderr.write(f"{PROG}: error: {_one_line(message)}\n")
    sys.stderr.flush()


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _os_error_text(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


@contextlib.contextmanager
def _open_db(args: argparse.Namespace, *, create: bool = False) -> Iterator[Database]:
    """Open ``args.db``, turning every failure into a one-line :class:`CommandError`."""
    path: str = args.db
    timeout = args.lock_timeout
    if timeout is None:
        timeout = _env_seconds("WORKMATIC_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT)
    try:
        db = workmatic.create_database(path, create=create, lock_timeout=timeout)
    except DatabaseNotFoundError:
        raise CommandError(f"{path}: no such database file") from None
    except DatabaseLockedError as exc:
        raise CommandError(_with_path(path, f"locked by another process: {exc}")) from None
    except DatabaseError as exc:  # SchemaError included: not a workmatic database
        raise CommandError(_with_path(path, str(exc))) from None
    try:
        yield db
    finally:
        db.close()


def _with_path(path: str, message: str) -> str:
    """Name the file in ``message`` unless the core's message already does."""
    if path in message or os.path.abspath(path) in message:
        return message
    return f"{path}: {message}"


def _env_seconds(variable: str, default: float) -> float:
    text = os.environ.get(variable)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{variable}={text!r} is not a number of seconds") from None
    if not value >= 0:
        raise UsageError(f"{variable}={text!r} must not be negative")
    return value


def _remove_database_files(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")


def _clean(text: str, width: int | None = None) -> str:
    """Make untrusted text safe for a terminal (no control characters) and short."""
    if not text.isprintable():
        text = "".join(
            ch
            if ch.isprintable() or unicodedata.category(ch) == "Zs"
            else ch.encode("unicode_escape").decode("ascii")
            for ch in text
        )
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in (headers, *rows):
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _counts(stats: JobStats) -> list[str]:
    data = stats.as_dict()
    return [str(data[name]) for name in _COUNT_COLUMNS]


def _payload_text(value: Any) -> str:
    if isinstance(value, BrokenPayload):  # the stored JSON is broken: show the raw text
        return value
    return json.dumps(value, ensure_ascii=False)


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


# --- commands


def cmd_stats(args: argparse.Namespace) -> int:
    with _open_db(args) as db:
        if args.queue is not None:
            queues = [QueueInfo(args.queue, db.is_queue_paused(args.queue), db.stats(args.queue))]
            total = queues[0].stats
        else:
            queues = db.queues()
            total = db.stats()
    if args.json:
        _print_json(
            {
                "total": total.as_dict(),
                "queues": {info.name: info.stats.as_dict() for info in queues},
            }
        )
        return 0
    rows = [
        [_clean(info.name, 40) + (" (paused)" if info.is_paused else ""), *_counts(info.stats)]
        for info in queues
    ]
    if args.queue is None:
        rows.append(["TOTAL", *_counts(total)])
    headers = ["QUEUE", *(name.upper() for name in _COUNT_COLUMNS)]
    print(_table(headers, rows, right=set(range(1, len(headers)))))
    return 0


def cmd_queues(args: argparse.Namespace) -> int:
    with _open_db(args) as db:
        queues = db.queues()
    if args.json:
        _print_json({"queues": [info.as_dict() for info in queues]})
        return 0
    if not queues:
        print("no queues")
        return 0
    rows = [
        [
            _clean(info.name, 40),
            "paused" if info.is_paused else "active",
            str(info.stats.ready),
            str(info.stats.running),
            str(info.stats.total),
        ]
        for info in queues
    ]
    print(_table(["QUEUE", "STATE", "READY", "RUNNING", "TOTAL"], rows, right={2, 3, 4}))
    return 0


def _set_pause(args: argparse.Namespace, paused: bool) -> int:
    with _open_db(args) as db:
        if paused:
            db.pause_queue(args.queue)
        else:
            db.resume_queue(args.queue)
    if args.json:
        _print_json({"queue": args.queue, "is_paused": paused})
    elif paused:
        print(f"paused queue {_clean(args.queue)!r}: workers stop claiming its jobs")
    else:
        print(f"resumed queue {_clean(args.queue)!r}")
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    return _set_pause(args, True)


def cmd_resume(args: argparse.Namespace) -> int:
    return _set_pause(args, False)


def cmd_list(args: argparse.Namespace) -> int:
    with _open_db(args) as db:
        jobs = db.list_jobs(
            queue=args.queue, status=args.status, limit=args.limit, offset=args.offset
        )
    if args.json:
        _print_json([job.as_dict() for job in jobs])
        return 0
    if not jobs:
        print("no jobs")
        return 0
    rows = [
        [
            job.id,
            _clean(job.queue, 20),
            job.status,
            str(job.priority),
            f"{job.attempts}/{job.max_attempts}",
            _when(job.run_at),
            _clean(_payload_text(job.payload), 40),
            _clean(job.last_error or "", 40),
        ]
        for job in jobs
    ]
    headers = ["ID", "QUEUE", "STATUS", "PRI", "TRIES", "RUN AT (UTC)", "PAYLOAD", "LAST ERROR"]
    print(_table(headers, rows, right={3, 4}))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _open_db(args) as db:
        job = db.get_job(args.job_id)
    if job is None:
        raise CommandError(f"no job with id {args.job_id!r}")
    if args.json:
        _print_json(job.as_dict())
        return 0
    _print_job(job)
    return 0


def _print_job(job: Job) -> None:
    fields = [
        ("id", job.id),
        ("queue", _clean(job.queue)),
        ("status", job.status),
        ("priority", str(job.priority)),
        ("attempts", f"{job.attempts} of {job.max_attempts}"),
        ("key", _clean(job.key) if job.key is not None else "-"),
        ("created_at", _when(job.created_at)),
        ("updated_at", _when(job.updated_at)),
        ("run_at", _when(job.run_at)),
        ("lease_until", _when(job.lease_until)),
    ]
    for name, value in fields:
        print(f"{name + ':':<13}{value}")

    def block(name: str, text: str) -> None:
        print(f"{name}:")
        for line in text.splitlines() or [""]:
            print(f"  {_clean(line)}")

    block("payload", json.dumps(job.payload, ensure_ascii=False, indent=2))
    if job.last_error is not None:
        block("last_error", job.last_error)
    if job.result is not None:
        block("result", json.dumps(job.result, ensure_ascii=False, indent=2))


def cmd_export(args: argparse.Namespace) -> int:
    to_stdout = args.file is None or args.file == "-"
    with _open_db(args) as db:
        progress = None
        if sys.stderr.isatty():
            total = db.count_jobs(queue=args.queue, status=args.status)
            progress = Progress("exported", total=total)
        with csv_output(args.file) as out:
            count = export_csv(
                db,
                out,
                queue=args.queue,
                status=args.status,
                safe_formulas=args.safe_formulas,
                progress=progress,
            )
    if args.json and not to_stdout:
        _print_json({"exported": count, "file": args.file})
    else:
        summary = f"exported {_plural(count, 'job')}" + ("" if to_stdout else f" to {args.file}")
        print(summary, file=sys.stderr if to_stdout else sys.stdout)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    default_queue = args.queue if args.queue is not None else "default"
    if args.dry_run:
        return _import_dry_run(args, default_queue)
    existed = os.path.exists(args.db)
    progress = Progress("rows read:") if sys.stderr.isatty() else None
    report: CsvImportReport | None = None
    try:
        with csv_input(args.file) as (source, fraction), _open_db(args, create=not existed) as db:
            try:
                report = import_csv(
                    db,
                    source,
                    default_queue=default_queue,
                    skip_invalid=args.skip_invalid,
                    unescape=args.safe_formulas,
                    progress=progress,
                    position=fraction,
                )
            except InvalidRowsError as exc:
                _report_import(args, exc.report, ok=False)
    finally:
        if report is None and not existed:
            # A bad file changes nothing, not even by creating the database.
            _remove_database_files(args.db)
    if report is None:
        return 1
    if not existed and not args.json:
        print(f"created {args.db}")
    _report_import(args, report, ok=True)
    return 0


def _import_dry_run(args: argparse.Namespace, default_queue: str) -> int:
    report = CsvImportReport()
    with csv_input(args.file) as (source, _fraction):
        for line, _record, error in read_rows(
            source, default_queue=default_queue, unescape=args.safe_formulas
        ):
            report.rows += 1
            if error is not None:
                report.add_error(line, error)
    ok = not report.invalid or args.skip_invalid
    if args.json:
        _print_json({"ok": ok, "dry_run": True, **report.as_dict()})
    else:
        _print_row_errors(report)
        valid = report.rows - report.invalid
        print(
            f"dry run: {_plural(report.rows, 'row')}, {valid:,} valid, "
            f"{report.invalid:,} invalid; nothing imported"
        )
    return 0 if ok else 1


def _print_row_errors(report: CsvImportReport) -> None:
    for error in report.errors[:SHOWN_ERRORS]:
        sys.stderr.write(f"line {error.line}: {_clean(error.message, 300)}\n")
    hidden = report.invalid - min(len(report.errors), SHOWN_ERRORS)
    if hidden > 0:
        sys.stderr.write(f"... and {_plural(hidden, 'more invalid row')}\n")


def _report_import(args: argparse.Namespace, report: CsvImportReport, *, ok: bool) -> None:
    if args.json:
        _print_json({"ok": ok, "dry_run": False, **report.as_dict()})
        if not ok:
            _error(f"{_plural(report.invalid, 'invalid row')}: nothing was imported")
        return
    _print_row_errors(report)
    if not ok:
        _error(
            f"{_plural(report.invalid, 'invalid row')}: nothing was imported "
            "(fix them, or use --skip-invalid to import the valid rows)"
        )
        return
    parts = [f"imported {_plural(report.inserted, 'job')}"]
    if report.skipped:
        parts.append(f"skipped {report.skipped:,} already present")
    if report.invalid:
        parts.append(f"skipped {_plural(report.invalid, 'invalid row')}")
    print(", ".join(parts))


def cmd_purge(args: argparse.Namespace) -> int:
    statuses: tuple[str, ...] = (
        args.status if args.status else tuple(s for s in STATUSES if s != "running")
    )
    if "running" in statuses:
        raise UsageError("running jobs are never purged (stop their workers first)")
    with _open_db(args) as db:
        if args.dry_run:
            count = db.count_jobs(queue=args.queue, status=statuses)
        else:
            count = db.purge(status=None if args.all else statuses, queue=args.queue)
    _report_bulk(args, count, "delete", "deleted")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    if args.job_ids and (args.status or args.queue is not None):
        raise UsageError("give job ids, or --status (and --queue), not both")
    if not args.job_ids and not args.status:
        raise UsageError("give job ids or --status (e.g. --status=dead)")
    if args.job_ids:
        return _retry_ids(args)
    statuses: tuple[str, ...] = args.status
    if "running" in statuses:
        raise UsageError("running jobs cannot be retried: they are being processed")
    if "ready" in statuses:
        raise UsageError("ready jobs are already waiting to run")
    with _open_db(args) as db:
        if args.dry_run:
            count = db.count_jobs(queue=args.queue, status=statuses)
        else:
            status: str | tuple[str, ...] = statuses[0] if len(statuses) == 1 else statuses
            count = db.retry_jobs(status=status, queue=args.queue)
    _report_bulk(args, count, "retry", "retried", ": back to ready")
    return 0


def _report_bulk(
    args: argparse.Namespace, count: int, verb: str, past: str, tail: str = ""
) -> None:
    """Print what a bulk purge or retry did (or, with --dry-run, would do) to ``count`` jobs."""
    if args.json:
        _print_json({past: 0 if args.dry_run else count, "matched": count})
    elif args.dry_run:
        print(f"would {verb} {_plural(count, 'job')} (dry run)")
    else:
        print(f"{past} {_plural(count, 'job')}{tail}")


def _retry_ids(args: argparse.Namespace) -> int:
    retried: list[str] = []
    refused: dict[str, str] = {}
    with _open_db(args) as db:
        for job_id in dict.fromkeys(args.job_ids):
            job = db.get_job(job_id)
            if job is None:
                refused[job_id] = "no such job"
            elif job.status not in ("dead", "failed"):
                refused[job_id] = f"is {job.status}; only dead or failed jobs are retried"
            elif args.dry_run:
                retried.append(job_id)
            else:
                try:
                    is_retried = db.retry_job(job_id)
                except JobNotFoundError:
                    refused[job_id] = "no such job"
                    continue
                if is_retried:
                    retried.append(job_id)
                else:  # it changed status since we looked
                    refused[job_id] = "is no longer dead or failed"
    if args.json:
        _print_json({"retried": [] if args.dry_run else retried, "refused": refused})
    else:
        verb = "would retry" if args.dry_run else "retried"
        if retried:
            print(f"{verb} {_plural(len(retried), 'job')}: {', '.join(retried)}")
        for job_id, reason in refused.items():
            _error(f"job {_clean(job_id)!r} {reason}")
    return 1 if refused else 0


def _parse_auth(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise UsageError("--auth must be USER:PASSWORD")
    return user, password


def cmd_dashboard(args: argparse.Namespace) -> int:
    auth = _parse_auth(
        args.auth if args.auth is not None else os.environ.get("WORKMATIC_DASHBOARD_AUTH")
    )
    import gevent
    import gevent.event

    with _open_db(args) as db:
        try:
            dashboard = workmatic.create_dashboard(db, host=args.host, port=args.port, auth=auth)
        except OSError as exc:
            raise CommandError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
        stop = gevent.event.Event()
        handlers = [gevent.signal_handler(sig, stop.set) for sig in _STOP_SIGNALS]
        try:
            print(f"Workmatic dashboard for {args.db} at {dashboard.url} (Ctrl-C to stop)")
            sys.stdout.flush()
            with contextlib.suppress(KeyboardInterrupt):
                stop.wait()
        finally:
            for handler in handlers:
                handler.cancel()
            dashboard.close()
    print("dashboard stopped")
    return 0


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
