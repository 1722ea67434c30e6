"""A worker process for the crash suite (it gets killed with SIGKILL).

``crash_worker.py DB QUEUE RECORD --name NAME [--concurrency N] [--lease S]
[--sleep-ms LOW:HIGH]``

Each run appends one line at its start and one at its end to RECORD::

    <job id> <name> <pid> <attempts> start|end <time.monotonic()>

(one ``os.write`` of a short line to an ``O_APPEND`` file: atomic, and CLOCK_MONOTONIC is
shared by every process of the machine, so the lines of all workers can be compared).
Handlers sleep a random LOW..HIGH ms (cooperatively) so that kills hit running jobs. A
payload ``{"suicide": true}`` kills its own process with SIGKILL, every time. Prints
"ready" once the worker runs; stops gracefully on SIGTERM.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

import workmatic  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("db")
parser.add_argument("queue")
parser.add_argument("record")
parser.add_argument("--name", required=True)
parser.add_argument("--concurrency", type=int, default=4)
parser.add_argument("--lease", type=float, default=2.0)
parser.add_argument("--poll-interval", type=float, default=0.2)
parser.add_argument("--sleep-ms", default="0:0")
args = parser.parse_args()
low, high = (float(x) / 1000 for x in args.sleep_ms.split(":"))
pid = os.getpid()
fd = os.open(args.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def note(job: workmatic.Job, what: str) -> None:
    line = f"{job.id} {args.name} {pid} {job.attempts} {what} {time.monotonic():.6f}\n"
    os.write(fd, line.encode())


db = workmatic.create_database(args.db)
worker = workmatic.create_worker(
    db,
    args.queue,
    concurrency=args.concurrency,
    lease=args.lease,
    poll_interval=args.poll_interval,
)


@worker.process
def handle(job: workmatic.Job) -> dict[str, str]:
    note(job, "start")
    payload = job.payload if isinstance(job.payload, dict) else {}
    if payload.get("suicide"):
        os.kill(pid, signal.SIGKILL)
    if high > 0:
        gevent.sleep(random.uniform(low, high))
    note(job, "end")
    return {"by": args.name}


stop = gevent.event.Event()
gevent.signal_handler(signal.SIGTERM, stop.set)
worker.start()
print("ready", flush=True)
stop.wait()
worker.stop(timeout=10)
db.close()
