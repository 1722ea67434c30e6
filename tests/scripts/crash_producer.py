"""A producer process for the crash suite (it may be killed with SIGKILL mid-add).

``crash_producer.py DB QUEUE ACKS --name NAME [--count N] [--batch LOW:HIGH] [--seed S]``

Adds jobs with ``add()`` (batch 1:1) or ``add_many()`` (batches of a random size from LOW
to HIGH) until COUNT jobs are added, or forever when COUNT is 0. Every payload says which
batch it belongs to and how big that batch is::

    {"p": NAME, "b": <batch number>, "size": <jobs in the batch>, "k": <index in batch>}

so that a checker can tell whether a batch was written whole. After each commit the ids
are appended to ACKS (``O_APPEND``), one a line: what ``add()`` acknowledged. Prints
"ready" before the first add and "done" at the end.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402

import workmatic  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("db")
parser.add_argument("queue")
parser.add_argument("acks")
parser.add_argument("--name", required=True)
parser.add_argument("--count", type=int, default=0)
parser.add_argument("--batch", default="1:1")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--max-attempts", type=int, default=10)
args = parser.parse_args()
low, high = (int(x) for x in args.batch.split(":"))
rng = random.Random(args.seed)
fd = os.open(args.acks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

db = workmatic.create_database(args.db)
client = workmatic.create_client(db, args.queue)
print("ready", flush=True)
added = 0
batch = 0
while args.count == 0 or added < args.count:
    size = rng.randint(low, high)
    if args.count:
        size = min(size, args.count - added)
    payloads = [{"p": args.name, "b": batch, "size": size, "k": k} for k in range(size)]
    if size == 1 and high == 1:
        ids = [client.add(payloads[0], max_attempts=args.max_attempts)]
    else:
        ids = client.add_many(payloads, max_attempts=args.max_attempts)
    os.write(fd, "".join(f"{job_id}\n" for job_id in ids).encode())
    added += size
    batch += 1
db.close()
print("done", flush=True)
