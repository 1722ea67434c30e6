"""Hold a database's write lock: ``lock_holder.py DB``. Prints "locked" once held, and
releases it when a line arrives on stdin (or stdin closes), then prints "released"."""

import sys

try:
    from pysqlite3 import dbapi2 as sqlite
except ImportError:
    import sqlite3 as sqlite

conn = sqlite.connect(sys.argv[1], isolation_level=None, timeout=10)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
print("released", flush=True)
