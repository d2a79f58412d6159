"""One write transaction on a connection that leaves transactions to its caller.

Every write of the store that must be all or nothing (a run allocated, old decisions
deleted, a decision or snapshot stored) takes SQLite's write lock up front with
``BEGIN IMMEDIATE``: a deferred transaction that reads first and then writes can fail
with ``SQLITE_BUSY`` when another process wrote in between, however long the busy
timeout.

>>> import sqlite3
>>> conn = sqlite3.connect(":memory:", isolation_level=None)
>>> _ = conn.execute("CREATE TABLE t (x)")
>>> with immediate(conn):
...     _ = conn.execute("INSERT INTO t VALUES (1)")
>>> conn.execute("SELECT x FROM t").fetchall()
[(1,)]
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; on any exception, roll back and re-raise it.

    ``conn`` must have been opened with ``isolation_level=None`` and must not be inside a
    transaction.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
