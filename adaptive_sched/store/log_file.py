"""The decision log's file: its connections, and what happens when it is deleted or replaced.

A :class:`LogFile` holds the log's two connections, a control connection (recording
runs, from any thread) and the writer thread's own, on the file it opened. Before each
batch the writer asks :meth:`LogFile.check` whether ``path`` is still that file (the same
device and inode). If it was deleted or replaced, the check says so in a rate-limited
warning and in the counters (``file_replaced``, ``lost_with_file``), and opens a new log
in its place, which becomes ours; while that is not possible (the directory is gone,
another application's file is there, or the old file's WAL is still held open by another
process), the check fails and the writer counts the batch as lost.

SQLite leaves the WAL and index of a deleted database behind, and a new file created at
the path would take them for its own: they are removed
(:func:`~adaptive_sched.store.files.remove_orphaned_wal`) once no writer of this process
(:data:`OPEN_FILES`) nor of another uses them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import StoreError
from .connection import connect
from .files import remove_orphaned_wal
from .log_stats import Counters, Every
from .rows import CREATE_SHAPE_TABLE
from .runs import record_run

# The writer is one component to whoever configures logging: all its parts log as the writer.
logger = logging.getLogger("adaptive_sched.store.writer")

#: the most often the writer tries to start a new file after the log's was deleted or replaced
REOPEN_EVERY_S = 0.5

#: a file as (device, inode)
Identity = tuple[int, int]


class OpenFiles:
    """The log files (device, inode) this process's writers have open, and how many each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count: dict[Identity, int] = {}

    def add(self, identity: Identity | None) -> None:
        if identity is not None:
            with self._lock:
                self._count[identity] = self._count.get(identity, 0) + 1

    def remove(self, identity: Identity | None) -> None:
        if identity is not None:
            with self._lock:
                left = self._count.get(identity, 0) - 1
                if left > 0:
                    self._count[identity] = left
                else:
                    self._count.pop(identity, None)

    def __contains__(self, identity: object) -> bool:
        with self._lock:
            return identity in self._count


OPEN_FILES = OpenFiles()


def file_identity(path: Path) -> Identity | None:
    """The file at ``path`` as (device, inode), or None if it is missing (``os.stat``: no descriptor opened)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class LogFile:
    """The connections of one decision log, and the file they are open on.

    Parameters
    ----------
    path : Path
        The database file; created (with the schema) if missing.
    timeout_s : float
        How long a statement waits for another process's lock.
    counters, every
        The writer's counters and the rate limit of its messages.
    on_reopen : callable
        Called (in the writer thread) after a new file was opened in place of a deleted
        or replaced one: what was cached about the old file no longer holds.

    Raises
    ------
    StoreError
        As :func:`~adaptive_sched.store.connection.connect`, or the writer's connection
        cannot be prepared. Both connections are opened here, so that a bad file is an
        error when the log is opened, not later in the writer thread.

    Notes
    -----
    :attr:`conn` is used under :attr:`control_lock`; :attr:`wconn`, :meth:`check` and
    :meth:`close_writer` belong to the writer thread.
    """

    def __init__(
        self, path: Path, *, timeout_s: float, counters: Counters, every: Every, on_reopen: Callable[[], None]
    ) -> None:
        self.path = path
        self._timeout_s = timeout_s
        self._counters = counters
        self._every = every
        self._on_reopen = on_reopen
        #: guards :attr:`conn` (recording a run, closing)
        self.control_lock = threading.Lock()
        self.conn = connect(path, timeout_s=timeout_s, isolation_level=None)
        try:
            self.wconn = connect(path, timeout_s=timeout_s, isolation_level=None, migrate=False)
        except BaseException:
            self.conn.close()
            raise
        try:
            _prepare_writer(self.wconn)
        except sqlite3.Error as exc:
            self.wconn.close()
            self.conn.close()
            raise StoreError(f"{path}: cannot prepare the log writer ({exc})") from exc
        #: the ``runs`` row of this process's run, written again into a new file (None before one)
        self.run_fields: dict[str, Any] | None = None
        #: whether the file we opened is still at the path (or a new one was opened since)
        self.ok = True
        self._identity = file_identity(path)
        OPEN_FILES.add(self._identity)
        self._written_since_check = 0
        self._reopen_at = 0.0
        self._gone: Identity | None = None  # the file found deleted or replaced
        self._seen: Identity | None = None  # what was at the path at the last attempt to reopen

    def wrote(self, rows: int) -> None:
        """``rows`` were just committed to the file (lost with it, if it turns out replaced)."""
        self._written_since_check += rows

    def check(self) -> bool:
        """Whether the log can be written: its file is still the one we opened, or a new one is."""
        if self.ok:
            current = file_identity(self.path)
            if current == self._identity:
                self._written_since_check = 0
                return True
            self.ok = False
            self._counters.file_replaced += 1
            self._counters.lost_with_file += self._written_since_check
            lost, self._written_since_check = self._written_since_check, 0
            if self._every("replaced"):
                logger.warning(
                    "%s: the log file was %s while logging (%d rows went to the old file since the check before); "
                    "starting a new log in its place",
                    self.path, "deleted" if current is None else "replaced", lost,
                )  # fmt: skip
            self._close_connections()
            OPEN_FILES.remove(self._identity)
            self._gone = self._identity
        now = time.monotonic()
        seen = file_identity(self.path)
        if now < self._reopen_at and seen == self._seen:
            return False  # tried moments ago, and nothing changed at the path since
        self._reopen_at, self._seen = now + REOPEN_EVERY_S, seen
        # SQLite leaves the WAL and index of a deleted database behind; a new file must not
        # take them for its own. They go once no writer here or elsewhere uses them.
        if self._gone not in OPEN_FILES:
            remove_orphaned_wal(self.path)
        try:
            self._reopen()
        except (StoreError, sqlite3.Error) as exc:
            self._counters.error(exc)
            if self._every("reopen"):
                logger.error("%s: cannot start a new log in place of the deleted one (%s); will retry", self.path, exc)
            return False
        self.ok = True
        logger.warning("%s: logging into a new log file", self.path)
        return True

    def close_writer(self) -> None:
        """Close the writer thread's connection (at the end of the writer thread)."""
        with contextlib.suppress(sqlite3.Error):
            self.wconn.close()

    def close(self) -> None:
        """Close the control connection; the file is no longer this process's (once the writer stopped)."""
        with self.control_lock:
            self.conn.close()
        if self.ok:
            OPEN_FILES.remove(self._identity)

    def _close_connections(self) -> None:
        self.close_writer()
        with self.control_lock, contextlib.suppress(sqlite3.Error):
            self.conn.close()

    def _reopen(self) -> None:
        conn = connect(self.path, timeout_s=self._timeout_s, isolation_level=None)
        try:
            wconn = connect(self.path, timeout_s=self._timeout_s, isolation_level=None, migrate=False)
            try:
                _prepare_writer(wconn)
                if self.run_fields is not None:
                    record_run(conn, self.run_fields)  # the rows that follow belong to it
            except BaseException:
                wconn.close()
                raise
        except BaseException:
            conn.close()
            raise
        with self.control_lock:
            self.conn = conn
        self.wconn = wconn
        self._identity = file_identity(self.path)
        OPEN_FILES.add(self._identity)
        self._on_reopen()


def _prepare_writer(wconn: sqlite3.Connection) -> None:
    # The writer's shape table (rows.SHAPE_TABLE) lives in memory, per connection.
    wconn.execute("PRAGMA temp_store = MEMORY")
    wconn.execute(CREATE_SHAPE_TABLE)
