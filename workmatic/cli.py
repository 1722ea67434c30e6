"""The ``workmatic`` command: inspect and manage a Workmatic database from a shell.

::

    workmatic stats jobs.db                     # counts by status, per queue
    workmatic queues jobs.db                    # queues and their pause state
    workmatic pause jobs.db emails              # every worker stops claiming 'emails'
    workmatic resume jobs.db emails
    workmatic list jobs.db --status=dead --limit=10
    workmatic show jobs.db JOB_ID
    workmatic export jobs.db backup.csv         # or to stdout: workmatic export jobs.db > x.csv
    workmatic import jobs.db backup.csv         # or '-' / /dev/stdin
    workmatic purge jobs.db --status=done
    workmatic retry jobs.db --status=dead
    workmatic dashboard jobs.db --port 3000
    workmatic worker myapp.jobs:worker          # the workmatic-worker runner

Exit status: 0 on success, 1 on error, 2 on a usage error. Read commands never create a
database file. Every command takes ``--help``; most take ``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import workmatic

from ._cli_commands import (
    DEFAULT_LOCK_TIMEOUT,
    PROG,
    CommandError,
    UsageError,
    _error,
    _os_error_text,
)
from ._csv import (
    CsvFormatError,
)
from .exceptions import (
    WorkmaticError,
)
from .job import STATUSES

if TYPE_CHECKING:
    pass

__all__ = ["build_parser", "main"]

#: How many invalid rows an import prints before summarising the rest.
#: Seconds a command waits for another process's write lock (WORKMATIC_LOCK_TIMEOUT).
# --- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``workmatic`` command line.

    :param argv: the arguments, without the program name (``sys.argv[1:]`` if ``None``).
    :returns: the exit status: 0 on success, 1 on error, 2 on a usage error.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["worker"]:
        from .runner import main as runner_main

        return runner_main(args_list[1:], prog=f"{PROG} worker")
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:
        return _exit_status(exc)
    try:
        status: int = args.run(args)
        return status
    except UsageError as exc:
        try:
            args.parser.error(str(exc))
        except SystemExit as usage_exit:
            return _exit_status(usage_exit)
    except (CommandError, WorkmaticError, CsvFormatError) as exc:
        _error(str(exc))
    except BrokenPipeError:
        # The reader went away (``| head``): exit quietly, and silence the final flush.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError as exc:
        _error(_os_error_text(exc))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # never a traceback for the user
        _error(f"unexpected {type(exc).__name__}: {exc}")
    return 1


def _exit_status(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    return exc.code if isinstance(exc.code, int) else 2


# --- parser


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


class _CommandParser(argparse.ArgumentParser):
    """A sub-command parser that takes options between positionals (``export DB -s dead F``)."""

    _nested = False

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._nested:
            return super().parse_known_args(args, namespace)
        self._nested = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._nested = False


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {text}")
    return value


def _port(text: str) -> int:
    value = _non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value}")
    return value


def _status_list(text: str) -> tuple[str, ...]:
    """Parse ``dead`` or ``dead,failed`` into a tuple of known statuses."""
    statuses = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not statuses:
        raise argparse.ArgumentTypeError("give at least one status")
    unknown = [s for s in statuses if s not in STATUSES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown status {unknown[0]!r} (choose from {', '.join(STATUSES)})"
        )
    return statuses


def build_parser() -> argparse.ArgumentParser:
    """Build the ``workmatic`` argument parser (one sub-command per command)."""
    from . import _cli_commands as _commands

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect and manage a Workmatic job database (SQLite file).",
        epilog="Run 'workmatic COMMAND --help' for a command's options. "
        "Exit status: 0 success, 1 error, 2 usage error.",
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {getattr(workmatic, '__version__', '')}"
    )
    commands = parser.add_subparsers(
        title="commands", metavar="COMMAND", required=True, parser_class=_CommandParser
    )

    def command(
        name: str, run: Callable[[argparse.Namespace], int], summary: str, description: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=summary, description=description, formatter_class=_Formatter
        )
        sub.set_defaults(run=run, parser=sub)
        return sub

    def database(sub: argparse.ArgumentParser, note: str = "must exist") -> None:
        sub.add_argument("db", metavar="DB", help=f"the database file ({note})")
        sub.add_argument(
            "--lock-timeout",
            type=_seconds,
            metavar="SECONDS",
            help="wait this long for another process's write lock "
            f"(env: WORKMATIC_LOCK_TIMEOUT; default: {DEFAULT_LOCK_TIMEOUT:g})",
        )

    def queue_filter(sub: argparse.ArgumentParser, what: str = "only this queue") -> None:
        sub.add_argument("--queue", "-Q", metavar="QUEUE", help=what)

    def json_flag(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--json", action="store_true", help="print JSON for scripts")

    sub = command(
        "stats",
        _commands.cmd_stats,
        "show job counts by status and queue",
        "Show job counts by status (ready, running, done, failed, dead), per queue and in "
        "total.\n\n  workmatic stats jobs.db\n  workmatic stats jobs.db --queue emails --json",
    )
    database(sub)
    queue_filter(sub)
    json_flag(sub)

    sub = command(
        "queues",
        _commands.cmd_queues,
        "list all queues with pause status",
        "List every queue that has jobs or a pause setting, with its pause state and "
        "counts.\n\n  workmatic queues jobs.db",
    )
    database(sub)
    json_flag(sub)

    for name, run, summary, detail in (
        (
            "pause",
            _commands.cmd_pause,
            "pause a queue (workers stop claiming)",
            "Pause a queue in every process: workers stop claiming its jobs within about a "
            "second; jobs already running finish. The pause is stored in the database.",
        ),
        (
            "resume",
            _commands.cmd_resume,
            "resume a paused queue",
            "Resume a paused queue: workers in every process start claiming its jobs again.",
        ),
    ):
        sub = command(name, run, summary, f"{detail}\n\n  workmatic {name} jobs.db emails")
        database(sub)
        sub.add_argument("queue", metavar="QUEUE", help="the queue's name")
        json_flag(sub)

    sub = command(
        "list",
        _commands.cmd_list,
        "list jobs with optional filters",
        "List jobs, newest first.\n\n  workmatic list jobs.db --status=dead --limit=10",
    )
    database(sub)
    sub.add_argument("--status", "-s", choices=STATUSES, help="only jobs with this status")
    queue_filter(sub)
    sub.add_argument(
        "--limit", "-n", type=_positive_int, default=100, help="at most N jobs (default: 100)"
    )
    sub.add_argument(
        "--offset", type=_non_negative_int, default=0, help="skip the N newest (default: 0)"
    )
    json_flag(sub)

    sub = command(
        "show",
        _commands.cmd_show,
        "show one job in full",
        "Show every field of one job: payload, last error, result.\n\n"
        "  workmatic show jobs.db 018c2f...",
    )
    database(sub)
    sub.add_argument("job_id", metavar="JOB_ID", help="the job's public id")
    json_flag(sub)

    sub = command(
        "export",
        _commands.cmd_export,
        "export jobs to CSV (stdout if no file)",
        "Export jobs to CSV (RFC 4180, UTF-8), oldest first, in constant memory. Columns: "
        "public_id, queue, payload, status, priority, run_at, attempts, max_attempts, "
        "lease_until, created_at, updated_at, last_error, result, key.\n\n"
        "  workmatic export jobs.db backup.csv\n"
        "  workmatic export jobs.db --status=failed > failed.csv",
    )
    database(sub)
    sub.add_argument("file", metavar="FILE", nargs="?", help="output file ('-' or none: stdout)")
    sub.add_argument("--status", "-s", choices=STATUSES, help="only jobs with this status")
    queue_filter(sub)
    sub.add_argument(
        "--safe-formulas",
        action="store_true",
        help="prefix ' to text cells starting with = + - @ (or tab/CR) so spreadsheets do not "
        "run them as formulas; changes the data (import --safe-formulas undoes it)",
    )
    json_flag(sub)

    sub = command(
        "import",
        _commands.cmd_import,
        "import jobs from CSV",
        "Import jobs from CSV in one transaction. Only 'payload' is required; other "
        "columns default. Every row is validated: one bad row and nothing is imported, "
        "unless --skip-invalid. A public_id already present is skipped (never replaced), "
        "so importing a backup twice imports nothing twice. Running jobs come in as ready.\n\n"
        "  workmatic import jobs.db backup.csv\n"
        "  cat jobs.csv | workmatic import jobs.db -",
    )
    database(sub, "created if missing")
    sub.add_argument("file", metavar="FILE", help="the CSV file ('-' or /dev/stdin: stdin)")
    queue_filter(sub, "the queue of rows without one (default: 'default')")
    sub.add_argument(
        "--skip-invalid",
        action="store_true",
        help="report invalid rows and import the others",
    )
    sub.add_argument("--dry-run", action="store_true", help="validate every row, import nothing")
    sub.add_argument(
        "--safe-formulas",
        action="store_true",
        help="undo export --safe-formulas (drop the ' it added)",
    )
    json_flag(sub)

    sub = command(
        "purge",
        _commands.cmd_purge,
        "delete jobs with specific status",
        "Delete jobs by status. Running jobs are never deleted.\n\n"
        "  workmatic purge jobs.db --status=done\n"
        "  workmatic purge jobs.db --status done,dead --queue emails",
    )
    database(sub)
    which = sub.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--status",
        "-s",
        type=_status_list,
        metavar="STATUS[,STATUS]",
        help="delete jobs with these statuses (done, failed, dead, ready)",
    )
    which.add_argument("--all", action="store_true", help="delete every job that is not running")
    queue_filter(sub)
    sub.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    json_flag(sub)

    sub = command(
        "retry",
        _commands.cmd_retry,
        "reset dead/failed jobs to ready",
        "Reset jobs to ready: attempts back to 0, run now (last_error is kept). Running "
        "jobs are refused.\n\n"
        "  workmatic retry jobs.db --status=dead\n"
        "  workmatic retry jobs.db --status dead,failed --queue emails\n"
        "  workmatic retry jobs.db JOB_ID [JOB_ID ...]",
    )
    database(sub)
    sub.add_argument("job_ids", metavar="JOB_ID", nargs="*", help="retry these jobs")
    sub.add_argument(
        "--status",
        "-s",
        type=_status_list,
        metavar="STATUS[,STATUS]",
        help="retry every job with these statuses (dead, failed, done)",
    )
    queue_filter(sub)
    sub.add_argument("--dry-run", action="store_true", help="count, change nothing")
    json_flag(sub)

    sub = command(
        "dashboard",
        _commands.cmd_dashboard,
        "serve the web dashboard",
        "Serve the web dashboard until Ctrl-C or SIGTERM. Basic auth: --auth USER:PASSWORD "
        "or the WORKMATIC_DASHBOARD_AUTH environment variable.\n\n"
        "  workmatic dashboard jobs.db --port 3000",
    )
    database(sub)
    sub.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    sub.add_argument(
        "--port", "-p", type=_port, default=3000, help="TCP port, 0 for any (default: 3000)"
    )
    sub.add_argument(
        "--auth",
        metavar="USER:PASSWORD",
        default=None,
        help="require HTTP basic auth (env: WORKMATIC_DASHBOARD_AUTH)",
    )

    commands.add_parser(
        "worker",
        help="run workers: the workmatic-worker runner (see 'workmatic worker --help')",
        add_help=False,
    )
    return parser


# --- helpers


if __name__ == "__main__":
    sys.exit(main())
