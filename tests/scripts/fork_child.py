"""A process that opens a database, then forks a child that adds jobs to it while the
parent closes its own ``Database`` and another process opens and closes the file (as
the CLI or a cron job would): ``fork_child.py DB [--busy]``.

``--busy`` forks while another thread of the parent is in the middle of a long read (a
report, a dashboard): the fork waits for it. Prints one JSON line: the jobs the child
acknowledged, and those of them the file does not hold.
"""

import json
import os
import subprocess
import sys
import threading
import time

import workmatic

TOUCH = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
conn.execute("SELECT count(*) FROM jobs").fetchone()
conn.close()
"""

LONG_READ = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5000000)"
    " SELECT count(*) FROM c"
)

path = sys.argv[1]
busy = "--busy" in sys.argv[2:]
db = workmatic.create_database(path)
client = workmatic.create_client(db, "forked")
client.add({"before": "fork"})
reader = None
if busy:  # another thread reads for a while (about a second) across the fork

    def long_read(raw: object) -> int:
        reading.set()
        return raw.execute(LONG_READ).fetchone()[0]  # type: ignore[attr-defined, no-any-return]

    reading = threading.Event()
    reader = threading.Thread(target=db._read, args=(long_read,))
    reader.start()
    reading.wait()
forking = time.monotonic()
started_r, started_w = os.pipe()
go_r, go_w = os.pipe()
pid = os.fork()
if pid == 0:  # the child: a worker process of a preforking server, say
    os.close(started_r)
    os.close(go_w)
    acked = [client.add({"n": n}) for n in range(20)]
    os.write(started_w, b"x")
    os.read(go_r, 1)  # the parent has closed its database, and another process came and went
    acked += [client.add({"n": n}) for n in range(20, 220)]
    acked += client.add_many([{"n": n} for n in range(220, 320)])
    db.close()
    with open(path + ".acked", "w") as out:
        out.write("\n".join(acked))
    os._exit(0)
fork_seconds = time.monotonic() - forking
os.close(started_w)
os.close(go_r)
os.read(started_r, 1)
if reader is not None:
    reader.join()
db.close()  # the parent is done with the database, and stays alive
# Another process opens the file and closes it: the last to close a WAL database, if it
# thinks itself the only user, checkpoints it and deletes the WAL.
subprocess.run(
    [sys.executable, "-c", TOUCH, path],
    check=True,
)
os.write(go_w, b"x")
_, status = os.waitpid(pid, 0)
with open(path + ".acked") as f:
    acked = f.read().split()
with workmatic.create_database(path) as check:
    missing = [job_id for job_id in acked if check.get_job(job_id) is None]
    stored = check.count_jobs(queue="forked")
print(
    json.dumps(
        {
            "child_status": status,
            "acked": len(acked),
            "missing": len(missing),
            "stored": stored,
            "fork_seconds": round(fork_seconds, 3),
        }
    ),
    flush=True,
)
