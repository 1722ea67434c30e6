"""A worker process for the multi-process tests.

``worker_proc.py DB QUEUE RECORD [--concurrency N] [--lease S] [--name NAME]``

Each run appends ``<job id> <name> <attempts> start|end`` lines to RECORD (O_APPEND
writes of one line are atomic). A payload ``{"block": true}`` (or ``{"block_on": NAME}`` in
the worker of that name) blocks forever (until the process is killed); ``{"sleep": s}``
sleeps s seconds. Stops gracefully on SIGTERM.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402

import gevent  # noqa: E402

import workmatic  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("db")
parser.add_argument("queue")
parser.add_argument("record")
parser.add_argument("--concurrency", type=int, default=4)
parser.add_argument("--lease", type=float, default=30)
parser.add_argument("--poll-interval", type=float, default=1.0)
parser.add_argument("--name", default=str(os.getpid()))
args = parser.parse_args()

fd = os.open(args.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def note(job: workmatic.Job, what: str) -> None:
    os.write(fd, f"{job.id} {args.name} {job.attempts} {what}\n".encode())


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
    if payload.get("block") or payload.get("block_on") == args.name:
        gevent.sleep(3600)
    if payload.get("sleep"):
        gevent.sleep(float(payload["sleep"]))
    note(job, "end")
    return {"by": args.name}


stop = gevent.event.Event()
gevent.signal_handler(signal.SIGTERM, stop.set)
worker.start()
print("ready", flush=True)
stop.wait()
worker.stop(timeout=10)
db.close()
