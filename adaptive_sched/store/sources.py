"""Where the log readers read from: a path, an open connection, or an ``sqlite_utils.Database``.

A path is opened read-only (never created, migrated or changed) for the duration of
one read, and closed after; a connection the caller passed stays open. An SQLite error
while reading becomes a :class:`~adaptive_sched.errors.StoreError` naming the source.

>>> import sqlite3
>>> with reading(sqlite3.connect(":memory:"), "read the decision log") as conn:
...     conn.execute("SELECT count(*) FROM decisions")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
adaptive_sched.errors.StoreError: the log database: cannot read the decision log (no such table: decisions)
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import StoreError
from .connection import connect

Source = Any  # str | Path | sqlite3.Connection | sqlite_utils.Database


@contextlib.contextmanager
def open_source(source: Source) -> Iterator[sqlite3.Connection]:
    """A connection to ``source``: its own if it has one, else a read-only one to the path, closed after."""
    conn = getattr(source, "conn", source)  # an sqlite_utils.Database holds its connection
    if isinstance(conn, sqlite3.Connection):
        yield conn
        return
    path = Path(source)
    conn = connect(path, readonly=True)
    try:
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def reading(source: Source, what: str) -> Iterator[sqlite3.Connection]:
    """:func:`open_source`; an SQLite error while reading raises ``StoreError("<source>: cannot <what> (...)")``."""
    with open_source(source) as conn:
        try:
            yield conn
        except sqlite3.Error as exc:
            raise StoreError(f"{source_name(source)}: cannot {what} ({exc})") from exc


def source_name(source: Source) -> str:
    """How messages name ``source``: its path, or "the log database"."""
    return str(source) if isinstance(source, (str, Path)) else "the log database"


def decision_columns(conn: sqlite3.Connection) -> set[str]:
    """The columns of the ``decisions`` table (a log older than schema 3 has no ``prob_*``)."""
    return {row[1] for row in conn.execute("PRAGMA table_info(decisions)")}


def chunks(cursor: sqlite3.Cursor, rows: int) -> Iterator[list[tuple[Any, ...]]]:
    """The rows of ``cursor``, fetched ``rows`` at a time, as lists."""
    while True:
        chunk = cursor.fetchmany(rows)
        if not chunk:
            return
        yield chunk
