"""Hold a read snapshot of a database: ``snapshot_holder.py DB``. Prints "reading N" (its
job count) once the snapshot is held, and ends it when a line arrives on stdin."""

import sys

try:
    from pysqlite3 import dbapi2 as sqlite
except ImportError:
    import sqlite3 as sqlite

conn = sqlite.connect(sys.argv[1], isolation_level=None, timeout=10)
conn.execute("BEGIN")
count = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
print(f"reading {count}", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
conn.close()
print("done", flush=True)
