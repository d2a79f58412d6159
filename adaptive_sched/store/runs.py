"""Rows of the ``runs`` table: run ids unique among every process sharing a log, never reused.

A run is one process logging under one config; its decisions have ids
``run << 32 | sequence``. :func:`allocate_run` gives a new run its id; :func:`record_run`
writes an existing run again into a new log file (the writer's file was deleted or
replaced while logging), so the rows that follow are not orphans.

>>> import os, tempfile
>>> from adaptive_sched.store.connection import connect
>>> conn = connect(os.path.join(tempfile.mkdtemp(), "log.db"), isolation_level=None)
>>> allocate_run(conn, {"host": "board"}), allocate_run(conn, {"host": "board"})
(1, 2)
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import StoreError
from .schema import MAX_RUN_ID, RUN_COLUMNS, RUN_SHIFT
from .transactions import immediate

_RUN_VALUES = f"({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})"
_SET_LAST_RUN = "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_run_id', ?)"


def run_row(
    *,
    host: str | None = None,
    config_hash: str | None = None,
    device_profile: str | None = None,
    package_version: str | None = None,
    config: str | Mapping[str, Any] | None = None,
    pid: int | None = None,
    started_at: float | None = None,
) -> dict[str, Any]:
    """The ``runs`` row of a run (its id left out); by default, of this process started now.

    ``config`` is stored as given if text, else as JSON; ``package_version`` defaults to
    this package's version.
    """
    if package_version is None:
        from .. import __version__ as package_version
    return {
        "started_at": time.time() if started_at is None else float(started_at),
        "host": socket.gethostname() if host is None else str(host),
        "pid": os.getpid() if pid is None else int(pid),
        "config_hash": config_hash,
        "device_profile": device_profile,
        "package_version": package_version,
        "config": config if config is None or isinstance(config, str) else json.dumps(config, default=str),
    }


def allocate_run(conn: sqlite3.Connection, fields: Mapping[str, Any], *, retry_after_s: Sequence[float] = ()) -> int:
    """Insert a ``runs`` row and return its id, unique among every process sharing the file.

    The id is one more than any run id seen in ``runs``, ``meta`` or the decision ids,
    so ids are never reused even after retention deleted old runs. ``conn`` must not
    be inside a transaction. An :class:`sqlite3.OperationalError` (a lock held too long,
    say) is retried after each pause of ``retry_after_s``, then raised.
    """
    for pause in retry_after_s:
        try:
            return _allocate_run(conn, fields)
        except sqlite3.OperationalError:
            time.sleep(pause)
    return _allocate_run(conn, fields)


def _allocate_run(conn: sqlite3.Connection, fields: Mapping[str, Any]) -> int:
    with immediate(conn):
        top_run = conn.execute("SELECT max(id) FROM runs").fetchone()[0] or 0
        top_id = conn.execute("SELECT max(id) FROM decisions").fetchone()[0] or 0
        row = conn.execute("SELECT value FROM meta WHERE key = 'last_run_id'").fetchone()
        last = int(row[0]) if row else 0
        run_id = max(top_run, top_id >> RUN_SHIFT, last) + 1
        if run_id > MAX_RUN_ID:
            raise StoreError(f"run ids exhausted ({run_id} > {MAX_RUN_ID})")
        values = {**fields, "id": run_id}
        conn.execute(f"INSERT INTO runs {_RUN_VALUES}", [values.get(c) for c in RUN_COLUMNS])
        conn.execute(_SET_LAST_RUN, (str(run_id),))
    return run_id


def record_run(conn: sqlite3.Connection, fields: Mapping[str, Any]) -> None:
    """Record an existing run (same id, ``fields["id"]``) in a new log file, so its rows there are not orphans.

    Ids allocated later in that file stay above it. ``conn`` must not be inside a transaction.
    """
    run_id = int(fields["id"])
    with immediate(conn):
        conn.execute(f"INSERT OR IGNORE INTO runs {_RUN_VALUES}", [fields.get(c) for c in RUN_COLUMNS])
        row = conn.execute("SELECT value FROM meta WHERE key = 'last_run_id'").fetchone()
        if row is None or int(row[0]) < run_id:
            conn.execute(_SET_LAST_RUN, (str(run_id),))
