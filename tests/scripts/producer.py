"""Add jobs from another process: ``producer.py DB QUEUE N [--batch B] [--payload JSON]``.

Prints the ids it added, one a line, then "done".
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402

import workmatic  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("db")
parser.add_argument("queue")
parser.add_argument("n", type=int)
parser.add_argument("--batch", type=int, default=1)
parser.add_argument("--payload", default=None)
parser.add_argument("--pause", action="store_true", help="pause the queue instead")
parser.add_argument("--resume", action="store_true", help="resume the queue instead")
args = parser.parse_args()

db = workmatic.create_database(args.db)
client = workmatic.create_client(db, args.queue)
if args.pause:
    client.pause()
elif args.resume:
    client.resume()
else:
    base = json.loads(args.payload) if args.payload else {}
    i = 0
    while i < args.n:
        size = min(args.batch, args.n - i)
        if size == 1:
            ids = [client.add({**base, "n": i})]
        else:
            ids = client.add_many([{**base, "n": i + k} for k in range(size)])
        for job_id in ids:
            print(job_id, flush=True)
        i += size
db.close()
print("done", flush=True)
