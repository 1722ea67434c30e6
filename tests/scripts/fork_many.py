"""Fork many children while another thread uses the database: ``fork_many.py DB N``.

A thread reads the database in a loop (as a dashboard or a report would, from any OS
thread) while the main thread forks N children that exit at once (as a ``multiprocessing``
pool or a ``subprocess`` with ``preexec_fn`` would), and a last child that adds jobs.
Prints one JSON line: how many children did not exit within 30 s (killed then), and
whether the last child's jobs are all in the file.
"""

import json
import os
import signal
import sys
import threading
import time

import workmatic

path = sys.argv[1]
count = int(sys.argv[2])
db = workmatic.create_database(path)
client = workmatic.create_client(db, "q")
client.add_many([{"n": n} for n in range(200)])
stop = threading.Event()
reads = [0]


def reader() -> None:
    while not stop.is_set():
        db.count_jobs(queue="q")
        db.list_jobs(queue="q", limit=50)
        reads[0] += 1


def reap(pid: int) -> bool:
    """Whether the child exited within 30 s (else it is killed)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return True
        time.sleep(0.001)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return False


thread = threading.Thread(target=reader)
thread.start()
while reads[0] < 3:
    time.sleep(0.001)
hung = 0
for _ in range(count):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    hung += not reap(pid)
pid = os.fork()
if pid == 0:
    ids = [client.add({"child": n}) for n in range(50)]
    db.close()
    with open(path + ".acked", "w") as out:
        out.write("\n".join(ids))
    os._exit(0)
hung += not reap(pid)
stop.set()
thread.join()
with open(path + ".acked") as f:
    acked = f.read().split()
missing = sum(db.get_job(job_id) is None for job_id in acked)
db.close()
print(json.dumps({"forks": count + 1, "hung": hung, "acked": len(acked), "missing": missing}))
