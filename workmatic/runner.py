"""``workmatic-worker``: run workers in a process of their own.

::

    workmatic-worker myapp.jobs:worker            # a Worker, an Orchestrator, or a list of workers
    workmatic-worker myapp.jobs:handler --db jobs.db --queue emails --concurrency 16
    workmatic-worker 'myapp.jobs:make_worker()'   # a factory, called with no arguments

:func:`main` monkey-patches the process with gevent first, then puts the current directory
on ``sys.path`` and imports the target. SIGTERM or SIGINT stops gracefully: no new job
is claimed, running jobs get ``--grace`` seconds to finish, the rest are released without
counting an attempt, and the exit status is 0. A second signal stops at once (running
jobs are released) with exit status 128 + the signal number.

Importing this module patches nothing: only :func:`main` does.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event

import workmatic

from ._writer import hub_turn
from .exceptions import WorkmaticError

if TYPE_CHECKING:
    from .database import Database
    from .orchestrator import Orchestrator
    from .worker import Worker

__all__ = ["build_parser", "main"]

PROG = "workmatic-worker"
#: The runner's logger (named explicitly: under ``python -m`` this module is ``__main__``).
log = logging.getLogger("workmatic.runner")

#: name -> (environment variable, default shown in --help)
ENVIRONMENT: dict[str, tuple[str, str | None]] = {
    "db": ("WORKMATIC_DB", None),
    "queue": ("WORKMATIC_QUEUE", "default"),
    "concurrency": ("WORKMATIC_CONCURRENCY", "1"),
    "lease": ("WORKMATIC_LEASE", "30"),
    "poll_interval": ("WORKMATIC_POLL_INTERVAL", "1.0"),
    "timeout": ("WORKMATIC_TIMEOUT", None),
    "grace": ("WORKMATIC_GRACE", "30"),
    "dashboard_host": ("WORKMATIC_DASHBOARD_HOST", "127.0.0.1"),
    "dashboard_port": ("WORKMATIC_DASHBOARD_PORT", None),
}
#: Options that only shape the worker built around a handler function.
HANDLER_OPTIONS = ("db", "queue", "concurrency", "lease", "poll_interval", "timeout")


class TargetError(Exception):
    """TARGET cannot be imported or is not something the runner can run (exit status 2)."""


class StartupError(Exception):
    """The runner could not start (exit status 1)."""


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    """Run ``workmatic-worker``: patch with gevent, import TARGET, run until signalled.

    :param argv: the arguments, without the program name (``sys.argv[1:]`` if ``None``).
    :param prog: the program name shown in messages.
    :returns: 0 after a graceful stop, 1 on error, 2 on a usage error, 128 + signal
        number after a forced stop (a second signal).
    """
    from gevent import monkey

    monkey.patch_all()
    return _run(list(sys.argv[1:] if argv is None else argv), prog)


# --- arguments


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {text}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _optional_seconds(text: str) -> float | None:
    if text.strip().lower() in ("", "none", "0"):
        return None
    return _positive_seconds(text)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value}")
    return value


_TYPES: dict[str, Callable[[str], Any]] = {
    "db": str,
    "queue": str,
    "concurrency": _positive_int,
    "lease": _positive_seconds,
    "poll_interval": _positive_seconds,
    "timeout": _optional_seconds,
    "grace": _seconds,
    "dashboard_host": str,
    "dashboard_port": _port,
}


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """Build the runner's argument parser (environment defaults are applied by :func:`main`)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run Workmatic workers until SIGTERM or SIGINT.",
        argument_default=argparse.SUPPRESS,  # absent options fall back to the environment
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="TARGET is module:attribute. It names a Worker, an Orchestrator, a list of\n"
        "workers, or a handler function fn(job), run by a worker that --db, --queue,\n"
        "--concurrency, --lease, --poll-interval and --timeout describe.\n"
        "'module:factory()' calls a factory with no arguments first. The current\n"
        "directory is on sys.path.\n\n"
        "Each option's environment variable gives its default; the command line wins.\n"
        "SIGTERM/SIGINT: running jobs get --grace seconds, the rest are released without\n"
        "counting an attempt, exit 0. A second signal stops at once.\n\n"
        "examples:\n"
        f"  {prog} myapp.jobs:worker\n"
        f"  {prog} myapp.jobs:send_email --db jobs.db --queue emails --concurrency 16",
    )

    def env_help(name: str, text: str) -> str:
        variable, default = ENVIRONMENT[name]
        shown = f"; default: {default}" if default is not None else ""
        return f"{text} (env: {variable}{shown})"

    parser.add_argument("target", metavar="TARGET", help="module:attribute to run")
    parser.add_argument(
        "--db", metavar="PATH", help=env_help("db", "database file, for a handler TARGET")
    )
    parser.add_argument(
        "--queue", "-Q", metavar="QUEUE", help=env_help("queue", "queue to process")
    )
    parser.add_argument(
        "--concurrency",
        "-c",
        type=_positive_int,
        metavar="N",
        help=env_help("concurrency", "jobs run at once"),
    )
    parser.add_argument(
        "--lease", type=_positive_seconds, metavar="SECONDS", help=env_help("lease", "job lease")
    )
    parser.add_argument(
        "--poll-interval",
        type=_positive_seconds,
        metavar="SECONDS",
        help=env_help("poll_interval", "idle poll interval"),
    )
    parser.add_argument(
        "--timeout",
        type=_optional_seconds,
        metavar="SECONDS",
        help=env_help("timeout", "kill a job after this long ('none': no limit)"),
    )
    parser.add_argument(
        "--grace",
        type=_seconds,
        metavar="SECONDS",
        help=env_help("grace", "on SIGTERM/SIGINT, how long running jobs may take to finish"),
    )
    parser.add_argument(
        "--dashboard-port",
        type=_port,
        metavar="PORT",
        help=env_help("dashboard_port", "also serve the dashboard on this port"),
    )
    parser.add_argument(
        "--dashboard-host",
        metavar="HOST",
        help=env_help("dashboard_host", "the dashboard's bind address"),
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-v: debug)"
    )
    parser.add_argument(
        "-q", "--quiet", action="count", default=0, help="less logging (-q: warnings only)"
    )
    return parser


@dataclass
class Settings:
    """The runner's options once the command line and the environment are merged."""

    target: str
    db: str | None
    queue: str
    concurrency: int
    lease: float
    poll_interval: float
    timeout: float | None
    grace: float
    dashboard_host: str
    dashboard_port: int | None
    verbosity: int
    explicit: set[str] = field(default_factory=set)


def parse_settings(
    argv: Sequence[str], environ: dict[str, str] | None = None, prog: str = PROG
) -> Settings:
    """Parse the command line, taking defaults from ``environ`` (``os.environ``).

    :raises SystemExit: on a usage error (status 2) or ``--help`` (status 0).
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    explicit: set[str] = set()
    for name, (variable, default) in ENVIRONMENT.items():
        if hasattr(args, name):
            value = getattr(args, name)
            explicit.add(name)
        else:
            value = None
            text = env.get(variable) or default
            if text is not None:
                try:
                    value = _TYPES[name](text)
                except argparse.ArgumentTypeError as exc:
                    parser.error(f"{variable}={text!r}: {exc}")
        values[name] = value
    return Settings(
        target=args.target, verbosity=args.verbose - args.quiet, explicit=explicit, **values
    )


# --- the target


@dataclass
class Plan:
    """What to run: the workers, how to start and stop them, the database to close."""

    workers: list[Worker]
    db: Database | None
    owns_db: bool
    orchestrator: Orchestrator | None = None
    description: str = ""


def _import_target(target: str) -> Any:
    """Import ``module:attr`` (``attr`` may be dotted, and end in ``()`` to call it)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise TargetError(
            f"TARGET must be module:attribute (for example myapp.jobs:worker), not {target!r}"
        )
    call = attr.endswith("()")
    if call:
        attr = attr[:-2]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise TargetError(
                f"cannot import {module_name!r}: no module named {missing!r} "
                f"(is the current directory, {os.getcwd()}, the right one?)"
            ) from None
        raise
    value: Any = module
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise TargetError(f"module {module_name!r} has no attribute {attr!r}") from None
    if call:
        if not callable(value):
            raise TargetError(f"{target}: {attr!r} is not callable")
        value = value()
    return value


def _is_worker(value: Any) -> bool:
    return all(hasattr(value, name) for name in ("start", "stop", "process", "queue"))


def _is_orchestrator(value: Any) -> bool:
    return all(hasattr(value, name) for name in ("start_all", "stop_all", "workers"))


def make_plan(value: Any, settings: Settings) -> Plan:
    """Turn the imported TARGET into a :class:`Plan`.

    :raises TargetError: the value is not a Worker, Orchestrator, list of workers or function.
    """
    ignored = sorted(settings.explicit & set(HANDLER_OPTIONS))
    if _is_orchestrator(value):
        workers = list(value.workers)
        if not workers:
            raise TargetError(f"{settings.target}: the orchestrator has no registered worker")
        _warn_ignored(ignored, "an Orchestrator")
        return Plan(workers, getattr(value, "db", None), False, value, "orchestrator")
    if _is_worker(value):
        _warn_ignored(ignored, "a Worker")
        return Plan([value], getattr(value, "db", None), False, description="worker")
    if isinstance(value, (list, tuple)) and value and all(_is_worker(w) for w in value):
        _warn_ignored(ignored, "a list of workers")
        dbs = [getattr(w, "db", None) for w in value]
        return Plan(list(value), dbs[0], False, description="workers")
    if callable(value) and not isinstance(value, type):
        if settings.db is None:
            raise TargetError(
                f"{settings.target} is a handler function: give --db PATH (or WORKMATIC_DB)"
            )
        db = workmatic.create_database(settings.db)
        try:
            worker = workmatic.create_worker(
                db,
                settings.queue,
                concurrency=settings.concurrency,
                lease=settings.lease,
                poll_interval=settings.poll_interval,
                timeout=settings.timeout,
                handler=value,
            )
        except BaseException:
            db.close()
            raise
        return Plan([worker], db, True, description="handler")
    kind = type(value).__name__
    raise TargetError(
        f"{settings.target} is a {kind}: expected a Worker, an Orchestrator, a list of "
        "workers, or a handler function"
    )


def _warn_ignored(options: list[str], kind: str) -> None:
    if options:
        flags = ", ".join("--" + name.replace("_", "-") for name in options)
        log.warning("%s: ignored, TARGET is %s (configure it in code)", flags, kind)


# --- running


def _configure_logging(verbosity: int) -> None:
    level = {-2: logging.ERROR, -1: logging.WARNING, 0: logging.INFO}.get(
        max(verbosity, -2), logging.DEBUG
    )
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )


def _describe(workers: Sequence[Worker]) -> str:
    return ", ".join(f"{w.queue} (concurrency {w.concurrency})" for w in workers)


def _run(argv: list[str], prog: str) -> int:
    try:
        settings = parse_settings(argv, prog=prog)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    _configure_logging(settings.verbosity)
    # Catch stop signals from now on: one that arrives while the target is imported
    # means "do not start".
    stopper = _Stopper()
    handlers = [
        gevent.signal_handler(signum, stopper, signum) for signum in (signal.SIGTERM, signal.SIGINT)
    ]
    try:
        return _load_and_serve(settings, prog, stopper)
    finally:
        for handler in handlers:
            handler.cancel()


def _load_and_serve(settings: Settings, prog: str, stopper: _Stopper) -> int:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        value = _import_target(settings.target)
    except TargetError as exc:
        _error(prog, str(exc))
        return 2
    except Exception as exc:
        # The user's module itself failed: its traceback is what they need.
        sys.stderr.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        _error(prog, f"importing {settings.target} failed: {type(exc).__name__}: {exc}")
        return 1
    try:
        plan = make_plan(value, settings)
    except TargetError as exc:
        _error(prog, str(exc))
        return 2
    except WorkmaticError as exc:  # e.g. the --db file cannot be opened
        _error(prog, str(exc))
        return 1
    try:
        return _serve(plan, settings, stopper)
    except (StartupError, WorkmaticError) as exc:
        _error(prog, str(exc))
        return 1


def _error(prog: str, message: str) -> None:
    sys.stderr.write(f"{prog}: error: {' '.join(message.split())}\n")
    sys.stderr.flush()


class _Stopper:
    """Counts stop signals: the first asks for a graceful stop, the second forces it."""

    def __init__(self) -> None:
        self.requested = gevent.event.Event()
        self.forced = gevent.event.Event()
        self.signum = 0

    def __call__(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if not self.requested.is_set():
            self.signum = signum
            log.info("%s received: stopping (a second signal stops at once)", name)
            self.requested.set()
        elif not self.forced.is_set():
            self.signum = signum
            log.warning("%s received again: stopping at once", name)
            self.forced.set()


def _serve(plan: Plan, settings: Settings, stopper: _Stopper) -> int:
    dashboard = None
    try:
        hub_turn()  # let a signal that came during start-up be seen
        if stopper.requested.is_set():
            log.info("stopped before starting")
            return 0
        if settings.dashboard_port is not None:
            dashboard = _start_dashboard(plan, settings)
        try:
            if plan.orchestrator is not None:
                plan.orchestrator.start_all()
            else:
                for worker in plan.workers:
                    worker.start()
        except Exception as exc:
            _stop_all(plan, 0.0)
            raise StartupError(f"cannot start: {exc}") from exc
        log.info(
            "started: pid %d, %s %s, %d worker(s): %s%s",
            os.getpid(),
            plan.description,
            settings.target,
            len(plan.workers),
            _describe(plan.workers),
            f", dashboard at {dashboard.url}" if dashboard is not None else "",
        )
        stopper.requested.wait()
        active = sum(w.active for w in plan.workers)
        log.info(
            "stopping: %d job(s) running, waiting up to %gs for them to finish",
            active,
            settings.grace,
        )
        forced = _stop(plan, settings.grace, stopper)
        log.info(
            "stopped: processed %d job(s), %d failed%s",
            sum(w.processed for w in plan.workers),
            sum(w.failed for w in plan.workers),
            " (forced: running jobs released)" if forced else "",
        )
        return 128 + stopper.signum if forced else 0
    finally:
        if dashboard is not None:
            dashboard.close()
        if plan.owns_db and plan.db is not None:
            plan.db.close()


def _stop_all(plan: Plan, timeout: float) -> None:
    if plan.orchestrator is not None:
        plan.orchestrator.stop_all(timeout=timeout)
        return
    gevent.joinall([gevent.spawn(w.stop, timeout=timeout) for w in plan.workers])


def _stop(plan: Plan, grace: float, stopper: _Stopper) -> bool:
    """Stop every worker within ``grace``; a second signal cuts the grace short.

    :returns: True if the stop was forced by a second signal.
    """
    graceful = gevent.spawn(_stop_all, plan, grace)
    waiter = gevent.spawn(stopper.forced.wait)
    gevent.wait([graceful, waiter], count=1)
    if graceful.ready():
        waiter.kill()
        graceful.get()
        return False
    # Forced: stop again with no grace (running handlers are killed and their jobs
    # released), then let the graceful stop return.
    _stop_all(plan, 0.0)
    graceful.join(timeout=5.0)
    if not graceful.ready():
        graceful.kill(block=False)
    return True


def _start_dashboard(plan: Plan, settings: Settings) -> Any:
    db = plan.db
    assert settings.dashboard_port is not None
    if db is None:
        raise StartupError(
            "--dashboard-port: the target's workers expose no database (.db); "
            "give a handler TARGET with --db, or serve the dashboard in code"
        )
    try:
        dashboard = workmatic.create_dashboard(
            db, host=settings.dashboard_host, port=settings.dashboard_port, workers=plan.workers
        )
    except OSError as exc:
        raise StartupError(
            f"cannot serve the dashboard on {settings.dashboard_host}:{settings.dashboard_port}:"
            f" {exc}"
        ) from None
    return dashboard


if __name__ == "__main__":
    sys.exit(main())
