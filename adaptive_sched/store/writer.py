"""The durable decision log: a cheap hot path and a background SQLite writer.

:meth:`DecisionLog.decision` and :meth:`DecisionLog.outcome` only append a tuple to a
bounded queue (a :class:`collections.deque`: no lock, no event per row). A daemon
thread wakes every ``flush_interval_s``, or as soon as a queue holds ``flush_rows``
rows, builds the rows and commits them in one transaction (WAL, ``synchronous=NORMAL``),
so a crash loses at most the last interval and the batch being written. Several
processes may log to one file: each waits for the others' write lock (SQLite's busy
timeout, then retries with back-off).

The writer shares the GIL with inference threads, so it keeps its Python work small:
rows are tuples inserted by multi-row ``INSERT`` statements of a few dozen rows (SQLite
releases the GIL while it inserts a group), with no ``None`` or ``bool`` values (sqlite3
binds those slowly), and the columns that depend only on the stage and shape are
stored once per shape in a temporary table that SQLite joins in.

Write failures (disk full, I/O errors, a lock held too long) never reach the caller:
the writer counts them, logs a rate-limited message, retries the batch a few times,
then drops it (counted in :attr:`DecisionLog.stats`) and goes on. A row SQLite cannot
store (say, a latency that is a dict) is rejected on its own; the rest of its batch
is kept.

Examples
--------
>>> import os, tempfile
>>> from adaptive_sched.types import Backend, Decision, Shape, Stage
>>> path = os.path.join(tempfile.mkdtemp(), "log.db")
>>> with DecisionLog(path) as log:
...     run = log.start_run(device_profile="rk3588")
...     d = Decision.of(run << 32 | 1, Stage.QKV, Shape(n=1, d=4096), Backend.GPU, propensity=0.97)
...     log.decision(d)
...     log.outcome(d.id, 0.00123)
...     log.flush()
...     log.stats.written
True
2
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain, repeat, starmap
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import StoreError
from ..types import Decision
from .connection import connect
from .files import remove_orphaned_wal
from .retention import VACUUM_FREE_PAGES, RetentionPolicy, RetentionTracker, vacuum_free_pages
from .rows import (
    CREATE_SHAPE_TABLE,
    INSERT_DECISIONS,
    INSERT_OUTCOMES,
    INSERT_SHAPE,
    ROW_WIDTH,
    SHAPE_TABLE,
    RowBuilder,
    describe_rejected,
    multi_row_sql,
)
from .runs import allocate_run, record_run

logger = logging.getLogger(__name__)

_wallclock = time.time
_monotonic = time.monotonic

#: errors caused by a row's values, not by the database: the row is rejected, the batch kept
_DATA_ERRORS = (
    sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError, sqlite3.DataError,
    OverflowError, TypeError, ValueError,
)  # fmt: skip

#: pauses between attempts to write a batch that failed (lock held too long, disk full, I/O error)
RETRY_BACKOFF_S = (0.05, 0.25, 1.0)

#: values bound per multi-row INSERT (32 decision rows, 89 outcome rows). The GIL is held
#: while they are bound; SQLite releases it while it inserts the group. Measured side by
#: side (benchmarks/bench_store.py): 32 rows add ~0.09 ms to a concurrent loop's p99,
#: 64 rows ~0.14 ms and 128 rows ~0.19 ms, for 3% and 5% more throughput.
GROUP_PARAMS = 32 * ROW_WIDTH

#: freed pages (4 KiB each) handed back to the file system per retention step
VACUUM_PAGES_PER_STEP = 2048

#: at most one warning of each kind per this many seconds
WARN_EVERY_S = 10.0

#: the most often the writer tries to start a new file after the log's was deleted or replaced
REOPEN_EVERY_S = 0.5


@dataclass(frozen=True)
class LogStats:
    """Counters of a :class:`DecisionLog` (rows are decisions plus outcomes)."""

    #: rows accepted into the queue
    enqueued: int = 0
    #: rows committed to the database
    written: int = 0
    #: rows refused because the queue was full (``on_full="drop"``) or the log was closed
    dropped: int = 0
    #: exploit rows left out by exploit sampling, on purpose
    sampled_out: int = 0
    #: rows that could not be stored because of their values (each logged)
    rejected: int = 0
    #: rows whose decision id was already logged (the first one is kept)
    duplicates: int = 0
    #: rows lost because their batch still failed after the retries
    failed: int = 0
    #: failed attempts to write a batch (each retried until it succeeds or is dropped)
    errors: int = 0
    #: committed transactions
    batches: int = 0
    #: decisions deleted by retention
    retention_deleted: int = 0
    #: times the log file was found deleted or replaced while logging, and a new one started
    file_replaced: int = 0
    #: rows committed to a log file that was then found deleted or replaced: those written
    #: since the check before, which found it in place (at most one batch per time)
    lost_with_file: int = 0
    #: rows waiting in the queue
    queue_depth: int = 0
    #: the last write error, if any
    last_error: str | None = None


class _OpenFiles:
    """The log files (device, inode) this process's writers have open, and how many each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count: dict[tuple[int, int], int] = {}

    def add(self, identity: tuple[int, int] | None) -> None:
        if identity is not None:
            with self._lock:
                self._count[identity] = self._count.get(identity, 0) + 1

    def remove(self, identity: tuple[int, int] | None) -> None:
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


_OPEN_FILES = _OpenFiles()


class _Every:
    """Rate limiting for log messages: ``every("key")`` is true at most once per interval."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._next: dict[str, float] = {}

    def __call__(self, key: str) -> bool:
        now = _monotonic()
        if now < self._next.get(key, 0.0):
            return False
        self._next[key] = now + self.interval_s
        return True


class DecisionLog:
    """Logs decisions and outcomes to SQLite from a background thread; never blocks by default.

    Parameters
    ----------
    path : str or Path
        The database file; created (with the schema) if missing. Its directory must exist.
    queue_size : int, default 100_000
        Rows that may wait per queue (decisions, outcomes) before ``on_full`` applies.
    flush_rows : int, default 2000
        The writer wakes as soon as a queue holds this many rows; also the most
        decisions (and outcomes) per transaction (at least 256).
    flush_interval_s : float, default 0.25
        The writer commits what is queued at least this often: the most a crash loses.
    on_full : {"drop", "block"}, default "drop"
        With a full queue, drop the new row and count it (services: inference never
        waits for the disk), or wait for room (tests, replay, batch jobs).
    retention : RetentionPolicy, optional
        Row and age limits the writer enforces.
    exploit_sample_rate : float, default 1.0
        Fraction of exploit decisions kept, in (0, 1]. Explored decisions are always
        kept; each kept row records its ``sample_rate`` so replay re-weights by its
        inverse. Whether a decision is kept depends only on its id
        (:func:`adaptive_sched.store.rows.keeps_exploit`), so outcomes follow it.
    timeout_s : float, default 5.0
        How long a write waits for another process's lock before it is retried.

    Before each batch the writer checks that ``path`` is still the file it opened. If
    the file was deleted or replaced (another inode at the path), it says so in a
    rate-limited warning and in :attr:`stats` (``file_replaced``, ``lost_with_file``),
    and logs on into a new file in its place, which becomes ours; while that is not
    possible (the directory is gone, another application's file is there, or the old
    file's WAL is still held open by another process), batches fail and are counted.

    Raises
    ------
    StoreError
        ``path`` is not an SQLite database, belongs to another application, has a newer
        schema, or cannot be created or written (missing directory, read-only location).
        The file is left untouched.
    ValueError
        A parameter is out of range (the message names it).

    Notes
    -----
    Thread-safe. The hot-path methods do not validate their arguments (the scheduler
    has); a row SQLite cannot store is rejected later, counted and logged. The
    ``context`` mapping is read in the writer thread: pass one you will not mutate.
    The log is closed (and flushed) at interpreter exit; a process killed by a signal
    loses at most the last ``flush_interval_s`` of rows. After ``os.fork()`` the child
    must open its own log.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        queue_size: int = 100_000,
        flush_rows: int = 2000,
        flush_interval_s: float = 0.25,
        on_full: str = "drop",
        retention: RetentionPolicy | None = None,
        exploit_sample_rate: float = 1.0,
        timeout_s: float = 5.0,
    ) -> None:
        _check_int("queue_size", queue_size)
        _check_int("flush_rows", flush_rows)
        if not _is_number(flush_interval_s) or not flush_interval_s > 0:
            raise ValueError(f"flush_interval_s must be a number > 0, got {flush_interval_s!r}")
        if on_full not in ("drop", "block"):
            raise ValueError(f"on_full must be 'drop' or 'block', got {on_full!r}")
        if retention is not None and not isinstance(retention, RetentionPolicy):
            raise ValueError(f"retention must be a RetentionPolicy or None, got {type(retention).__name__}")
        if not _is_number(exploit_sample_rate) or not 0.0 < exploit_sample_rate <= 1.0:
            raise ValueError(f"exploit_sample_rate must be a number in (0, 1], got {exploit_sample_rate!r}")
        if not _is_number(timeout_s) or not timeout_s > 0:
            raise ValueError(f"timeout_s must be a number > 0, got {timeout_s!r}")
        self.path = Path(path)
        self._timeout_s = float(timeout_s)
        self.queue_size = int(queue_size)
        self.flush_rows = int(flush_rows)
        self.flush_interval_s = float(flush_interval_s)
        self.on_full = on_full
        self.retention = retention if retention is not None and retention.active else None
        self.exploit_sample_rate = float(exploit_sample_rate)
        #: the id of the run recorded by :meth:`start_run` (None before)
        self.run_id: int | None = None

        # The control connection (start_run) and the writer's own connection; both are
        # opened here so that a bad file is an error now, not in a background thread.
        self._conn = connect(self.path, timeout_s=timeout_s, isolation_level=None)
        try:
            self._wconn = connect(self.path, timeout_s=timeout_s, isolation_level=None, migrate=False)
        except BaseException:
            self._conn.close()
            raise
        self._control_lock = threading.Lock()

        # -- shared with the hot path ------------------------------------------------
        self._decisions: deque[tuple[Any, Any]] = deque()
        self._outcomes: deque[tuple[Any, ...]] = deque()
        # A hot-path call takes the slow path (wake the writer, or the queue is full) when
        # the queue already holds this many rows: the call that brings it to flush_rows
        # rows wakes the writer. -1 once closed, so every call is counted as dropped.
        self._kick_at = min(self.flush_rows, self.queue_size) - 1
        self._kicked = False
        self._wake = threading.Event()
        self._closed = False
        self._stopping = False
        self._close_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._dropped = 0

        # -- progress, for flush() and on_full="block" --------------------------------
        self._drain_lock = threading.Lock()
        self._progress = threading.Condition()
        self._taken_d = self._taken_o = 0  # rows the writer took off each queue
        self._done_d = self._done_o = 0  # ... and finished with (written, rejected or failed)

        # -- owned by the writer thread -------------------------------------------------
        self._builder = RowBuilder(self.exploit_sample_rate)
        self._chunk = max(self.flush_rows, 256)
        # values per multi-row INSERT, within this SQLite's limit on bound variables
        self._group_params = min(GROUP_PARAMS, self._wconn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
        self._multi_sql: dict[str, tuple[int, str]] = {}
        try:
            self._wconn.execute("PRAGMA temp_store = MEMORY")
            self._wconn.execute(CREATE_SHAPE_TABLE)
        except sqlite3.Error as exc:
            self._wconn.close()
            self._conn.close()
            raise StoreError(f"{self.path}: cannot prepare the log writer ({exc})") from exc
        self._shapes_kept_from = 0
        self._written = self._sampled_out = self._rejected = self._duplicates = 0
        self._failed = self._errors = self._batches = self._retention_deleted = 0
        self._last_error: str | None = None
        self._dropped_reported = 0
        self._failing = False
        self._every = _Every(WARN_EVERY_S)
        self._tracker = RetentionTracker(self.retention) if self.retention is not None else None
        # Twice what a batch adds: retention keeps up with a writer at its full rate, and catches up.
        self._retention_limit = max(self.retention.batch_rows, 2 * self._chunk) if self.retention else 0
        self._retention_more = False  # owed rows or free pages left: do not wait before the next pass
        self._retention_paused_until = 0.0  # after a retention error
        self._vacuum_pending = False  # deleted since the free pages were last handed back
        self._outcomes_unswept = 0  # outcomes written since retention last swept orphans
        # -- the file itself --------------------------------------------------------------
        self._identity = _identity(self.path)
        _OPEN_FILES.add(self._identity)
        self._written_since_check = 0
        self._file_replaced = self._lost_with_file = 0
        self._reopen_at = 0.0
        self._file_ok = True
        self._gone: tuple[int, int] | None = None  # the file found deleted or replaced
        self._seen: tuple[int, int] | None = None  # what was at the path at the last attempt to reopen
        self._run_fields: dict[str, Any] | None = None

        self._thread = threading.Thread(target=self._run, name="adaptive-sched-log-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # -- the hot path ----------------------------------------------------------------------
    def decision(self, decision: Decision, context: Mapping[str, Any] | None = None) -> None:
        """Queue ``decision`` (with optional device-state ``context``) for logging; never raises."""
        q = self._decisions
        if len(q) < self._kick_at:
            q.append((decision, context))
        else:
            self._overflow(q, (decision, context))

    def outcome(
        self,
        decision_id: int,
        latency_s: float,
        ok: bool = True,
        error: str | None = None,
        time: float | None = None,
    ) -> None:
        """Queue the observed outcome of decision ``decision_id``; never raises.

        ``latency_s`` may be NaN for a failed run (stored as NULL); ``time`` defaults to now.
        """
        q = self._outcomes
        # 0/1 and '' rather than a bool and None: sqlite3 binds those several times faster.
        item = (decision_id, _wallclock() if time is None else time, latency_s, 1 if ok else 0, error or "")
        if len(q) < self._kick_at:
            q.append(item)
        else:
            self._overflow(q, item)

    def fast_path(self) -> tuple[deque[tuple[Any, Any]], int]:
        """The decision queue and the length below which appending to it is all :meth:`decision` does.

        For a caller that inlines :meth:`decision` on its hottest path (the scheduler's
        ``decide``): ``if len(q) < kick_at: q.append((decision, context))``, else call
        :meth:`decision`. The caller must stop appending directly before :meth:`close`.
        """
        return self._decisions, self._kick_at

    def _overflow(self, q: deque[Any], item: Any) -> None:
        if self._closed:
            self._count_dropped()
            return
        if len(q) < self.queue_size:
            if not self._kicked:
                self._kicked = True
                self._wake.set()
            q.append(item)
            return
        if self.on_full == "block" and self._wait_for_room(q):
            q.append(item)
            return
        self._count_dropped()

    def _count_dropped(self) -> None:
        # Rare (overload or shutdown); the writer thread logs it, rate-limited, so a
        # logging handler's I/O never lands on an inference thread.
        with self._count_lock:
            self._dropped += 1

    def _wait_for_room(self, q: deque[Any]) -> bool:
        self._kicked = True
        self._wake.set()
        with self._progress:
            while len(q) >= self.queue_size:
                if self._closed or not self._thread.is_alive():
                    return False
                self._progress.wait(0.05)
        return True

    # -- control ------------------------------------------------------------------------------
    def start_run(
        self,
        *,
        host: str | None = None,
        config_hash: str | None = None,
        device_profile: str | None = None,
        package_version: str | None = None,
        config: str | Mapping[str, Any] | None = None,
        pid: int | None = None,
        started_at: float | None = None,
    ) -> int:
        """Record this process's run in ``runs`` (synchronously) and return its id.

        The id is unique among every process sharing the file, and never reused; the
        scheduler composes decision ids as ``run_id << 32 | sequence``.

        Raises
        ------
        StoreError
            The run could not be recorded (the message names the file).
        """
        if package_version is None:
            from .. import __version__ as package_version
        fields = {
            "started_at": _wallclock() if started_at is None else float(started_at),
            "host": socket.gethostname() if host is None else str(host),
            "pid": os.getpid() if pid is None else int(pid),
            "config_hash": config_hash,
            "device_profile": device_profile,
            "package_version": package_version,
            "config": config if config is None or isinstance(config, str) else json.dumps(config, default=str),
        }
        with self._control_lock:
            if self._closed:
                raise StoreError(f"{self.path}: the decision log is closed")
            for attempt in range(len(RETRY_BACKOFF_S) + 1):
                try:
                    run_id = allocate_run(self._conn, fields)
                    break
                except sqlite3.OperationalError as exc:
                    if attempt == len(RETRY_BACKOFF_S):
                        raise StoreError(f"{self.path}: cannot record the run ({exc})") from exc
                    time.sleep(RETRY_BACKOFF_S[attempt])
                except sqlite3.Error as exc:
                    raise StoreError(f"{self.path}: cannot record the run ({exc})") from exc
        self.run_id = run_id
        self._run_fields = {**fields, "id": run_id}
        logger.info("%s: run %d started (device %s)", self.path, run_id, device_profile)
        return run_id

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every row queued before this call is committed.

        Returns False if ``timeout_s`` ran out first, or if some of those rows could not
        be written (see :attr:`stats`); True otherwise.
        """
        with self._drain_lock:
            target_d = self._taken_d + len(self._decisions)
            target_o = self._taken_o + len(self._outcomes)
        failed_before = self._failed
        self._wake.set()
        deadline = None if timeout_s is None else _monotonic() + timeout_s
        with self._progress:
            while self._done_d < target_d or self._done_o < target_o:
                if not self._thread.is_alive():
                    return False
                wait = 0.1 if deadline is None else min(0.1, deadline - _monotonic())
                if wait <= 0:
                    return False
                self._progress.wait(wait)
        return self._failed == failed_before

    def close(self, timeout_s: float | None = None) -> None:
        """Write everything queued, stop the writer and close the database. Idempotent.

        Rows logged after ``close()`` are counted as dropped.
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._kick_at = -1  # every later hot-path call goes to _overflow, which drops
        self._stopping = True
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        atexit.unregister(self.close)
        if self._thread.is_alive():
            logger.error(
                "%s: the log writer did not finish within %s s; %d rows still queued",
                self.path, timeout_s, len(self._decisions) + len(self._outcomes),
            )  # fmt: skip
            return
        with self._control_lock:
            self._conn.close()
        if self._file_ok:
            _OPEN_FILES.remove(self._identity)
        self._report_drops(force=True)

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stats(self) -> LogStats:
        """A snapshot of the counters (see :class:`LogStats`)."""
        with self._drain_lock:
            taken = self._taken_d + self._taken_o
            depth = len(self._decisions) + len(self._outcomes)
        return LogStats(
            enqueued=taken + depth,
            written=self._written,
            dropped=self._dropped,
            sampled_out=self._sampled_out,
            rejected=self._rejected,
            duplicates=self._duplicates,
            failed=self._failed,
            errors=self._errors,
            batches=self._batches,
            retention_deleted=self._retention_deleted,
            file_replaced=self._file_replaced,
            lost_with_file=self._lost_with_file,
            queue_depth=depth,
            last_error=self._last_error,
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"DecisionLog({str(self.path)!r}, {state}, run={self.run_id})"

    # -- the writer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        dq, oq, wake = self._decisions, self._outcomes, self._wake
        try:
            while True:
                idle = not self._stopping and not self._retention_more
                if idle and len(dq) < self.flush_rows and len(oq) < self.flush_rows:
                    wake.wait(self.flush_interval_s)
                wake.clear()
                self._kicked = False
                stopping = self._stopping
                try:
                    wrote = self._write_pending()
                    if not wrote:
                        self._check_file()  # also when idle: a deleted log is noticed, and replaced
                    if not stopping:
                        self._retention_tick(busy=wrote)
                except Exception as exc:  # the writer must outlive any surprise
                    self._errors += 1
                    self._last_error = f"{type(exc).__name__}: {exc}"
                    if self._every("unexpected"):
                        logger.exception("%s: unexpected error in the log writer", self.path)
                    time.sleep(0.05)
                self._report_drops()
                if stopping and not dq and not oq:
                    break
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._wconn.close()
            with self._progress:
                self._progress.notify_all()

    def _write_pending(self) -> bool:
        """Write every queued row, in batches; whether there was any."""
        # Outcomes are counted first: every outcome taken in this pass then has its
        # decision in this pass or an earlier one, and decisions are written first,
        # so exploit sampling always sees a decision before its outcome.
        n_o = len(self._outcomes)
        n_d = len(self._decisions)
        if not n_o and not n_d:
            return False
        chunk = self._chunk
        while n_d > chunk:
            self._take_and_write(chunk, 0)
            n_d -= chunk
        self._take_and_write(n_d, min(n_o, chunk))
        n_o -= min(n_o, chunk)
        while n_o > 0:
            k = min(n_o, chunk)
            self._take_and_write(0, k)
            n_o -= k
        return True

    def _take_and_write(self, n_d: int, n_o: int) -> None:
        if not n_d and not n_o:
            return
        with self._drain_lock:
            items = list(starmap(self._decisions.popleft, repeat((), n_d)))
            outs = list(starmap(self._outcomes.popleft, repeat((), n_o)))
            self._taken_d += n_d
            self._taken_o += n_o
        with self._progress:
            self._progress.notify_all()  # room for producers waiting with on_full="block"
        try:
            if self._check_file():
                self._write_batch(items, outs)
            else:
                self._fail_unwritable(items, outs)
            # also while closing: the rows drained then are kept within the limits too
            self._retention_tick(busy=True)
        finally:
            with self._progress:
                self._done_d += n_d
                self._done_o += n_o
                self._progress.notify_all()

    def _write_batch(self, items: list[tuple[Any, Any]], outs: list[tuple[Any, ...]]) -> None:
        builder = self._builder
        if builder.obsolete_below > self._shapes_kept_from:
            # The rows of earlier batches are written: their old shape keys can go.
            with contextlib.suppress(sqlite3.Error):
                self._wconn.execute(f"DELETE FROM {SHAPE_TABLE} WHERE k < ?", (builder.obsolete_below,))
                self._shapes_kept_from = builder.obsolete_below
        batch = _Batch(builder, items, outs, _wallclock())
        try:
            # All rows are built before the transaction: interleaving building with the
            # inserts made more, shorter GIL hand-overs, and a concurrent loop's p99 worse.
            batch.build_all()
            new_shapes = builder.take_new_shapes()
            if new_shapes:
                try:  # outside the transaction, so that a rollback cannot take them back
                    self._wconn.executemany(INSERT_SHAPE, new_shapes)
                except sqlite3.Error:
                    builder.new_shapes[:0] = new_shapes  # try again with the next batch
                    raise
            self._commit(batch)
        finally:
            batch.build_all()  # rows never built still count as sampled out or rejected
            self._sampled_out += batch.sampled_out
            for item, reason in batch.rejected:
                self._reject(item, reason)

    def _commit(self, batch: _Batch) -> None:
        # Once a batch has been lost, try the next ones only once until a write succeeds,
        # so a dead disk cannot make close() wait for every queued batch's back-off.
        attempts = 1 if self._failing else len(RETRY_BACKOFF_S) + 1
        for attempt in range(attempts):
            try:
                try:
                    inserted_d, inserted, bad = self._transaction(batch, careful=False)
                except _DATA_ERRORS:
                    inserted_d, inserted, bad = self._transaction(batch, careful=True)
            except Exception as exc:  # not only sqlite3.Error: whatever lost a batch, its rows are counted
                self._errors += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
                if attempt + 1 < attempts:
                    if self._every("retry"):
                        logger.warning("%s: writing log rows failed (%s); retrying", self.path, exc)
                    time.sleep(RETRY_BACKOFF_S[attempt])
                    continue
                batch.build_all()
                lost = len(batch.rows_d) + len(batch.outcome_rows())
                self._failed += lost
                self._failing = True
                if self._every("failed"):
                    logger.error(
                        "%s: could not write %d log rows (%s); dropped them (%d rows lost so far), still logging",
                        self.path, lost, exc, self._failed,
                    )  # fmt: skip
                return
            self._failing = False
            self._written += inserted
            self._written_since_check += inserted
            self._batches += 1
            if self._tracker is not None:
                self._tracker.wrote(inserted_d)
                self._outcomes_unswept += inserted - inserted_d
            self._duplicates += len(batch.rows_d) + len(batch.outcome_rows()) - inserted - len(bad)
            for row, reason in bad:
                self._reject(row, reason)
            return

    def _transaction(self, batch: _Batch, *, careful: bool) -> tuple[int, int, list[tuple[Any, str]]]:
        """Insert the batch in one transaction: ``(decisions inserted, rows inserted, rejected rows)``."""
        conn = self._wconn
        bad: list[tuple[Any, str]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            if careful:
                counts = [0, 0]
                batch.build_all()
                for i, (sql, rows) in enumerate(
                    ((INSERT_DECISIONS, batch.rows_d), (INSERT_OUTCOMES, batch.outcome_rows()))
                ):
                    for row in rows:  # one bad row must not cost its batch
                        try:
                            counts[i] += conn.execute(sql, row).rowcount
                        except _DATA_ERRORS as exc:
                            bad.append((row, f"{type(exc).__name__}: {exc}"))
                inserted_d, inserted = counts[0], counts[0] + counts[1]
            else:
                inserted_d = self._insert_many(INSERT_DECISIONS, batch.rows_d)
                # Decisions first: exploit sampling must see a decision before its outcome.
                inserted = inserted_d + self._insert_many(INSERT_OUTCOMES, batch.outcome_rows())
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        return inserted_d, inserted, bad

    def _group(self, sql: str) -> tuple[int, str]:
        group = self._multi_sql.get(sql)
        if group is None:
            k = max(1, self._group_params // sql.count("?"))
            group = self._multi_sql[sql] = (k, multi_row_sql(sql, k))
        return group

    def _insert_many(self, sql: str, rows: list[tuple[Any, ...]]) -> int:
        # Groups of rows go in one multi-row INSERT: SQLite then runs a whole group in one
        # step with the GIL released (executemany releases and retakes it for every row,
        # and pays its per-row overhead). The remainder goes through executemany.
        conn = self._wconn
        k, multi = self._group(sql)
        inserted = 0
        full = len(rows) - len(rows) % k if k > 1 else 0
        for j in range(0, full, k):
            inserted += conn.execute(multi, tuple(chain.from_iterable(rows[j : j + k]))).rowcount
        if full < len(rows):
            inserted += conn.executemany(sql, rows[full:]).rowcount
        return inserted

    def _reject(self, item: Any, reason: str) -> None:
        self._rejected += 1
        if self._every("rejected"):
            what = describe_rejected(item)
            logger.error("%s: rejected %s: %s (%d rows rejected so far)", self.path, what, reason, self._rejected)

    def _retention_tick(self, *, busy: bool) -> None:
        """Count when due, delete what is owed (one bounded transaction), hand free pages back."""
        tracker = self._tracker
        if tracker is None or not self._file_ok:
            return
        now = _monotonic()
        if now < self._retention_paused_until:
            return
        conn = self._wconn
        try:
            if tracker.due():
                tracker.check(conn)
            if tracker.owed:
                step = tracker.step(conn, limit=self._retention_limit)
                self._retention_deleted += step.deleted_decisions
                self._vacuum_pending = self._vacuum_pending or step.deleted_decisions > 0
            if self._outcomes_unswept:
                # Outcomes of decisions already deleted (they were still queued) go too.
                self._outcomes_unswept = 0
                tracker.sweep(conn)
            more = tracker.owed > 0
            if self._vacuum_pending and not more:
                # While busy, freed pages are left for the next inserts unless there are many.
                if not busy or conn.execute("PRAGMA freelist_count").fetchone()[0] > VACUUM_FREE_PAGES:
                    _, still_free = vacuum_free_pages(conn, VACUUM_PAGES_PER_STEP)
                    self._vacuum_pending = still_free > 0
                more = self._vacuum_pending and not busy
            self._retention_more = more
        except sqlite3.Error as exc:
            tracker.forget()
            self._retention_more = False
            self._retention_paused_until = now + 1.0
            self._errors += 1
            self._last_error = f"retention: {type(exc).__name__}: {exc}"
            if self._every("retention"):
                logger.warning("%s: retention failed (%s); will retry", self.path, exc)

    # -- the file ----------------------------------------------------------------------------
    def _check_file(self) -> bool:
        """Whether the log can be written: its file is still the one we opened, or a new one is."""
        if self._file_ok:
            current = _identity(self.path)
            if current == self._identity:
                self._written_since_check = 0
                return True
            self._file_ok = False
            self._file_replaced += 1
            self._lost_with_file += self._written_since_check
            lost, self._written_since_check = self._written_since_check, 0
            if self._every("replaced"):
                logger.warning(
                    "%s: the log file was %s while logging (%d rows went to the old file since the check before); "
                    "starting a new log in its place",
                    self.path, "deleted" if current is None else "replaced", lost,
                )  # fmt: skip
            self._close_connections()
            _OPEN_FILES.remove(self._identity)
            self._gone = self._identity
        now = _monotonic()
        seen = _identity(self.path)
        if now < self._reopen_at and seen == self._seen:
            return False  # tried moments ago, and nothing changed at the path since
        self._reopen_at, self._seen = now + REOPEN_EVERY_S, seen
        # SQLite leaves the WAL and index of a deleted database behind; a new file must not
        # take them for its own. They go once no writer here or elsewhere uses them.
        if self._gone not in _OPEN_FILES:
            remove_orphaned_wal(self.path)
        try:
            self._reopen()
        except (StoreError, sqlite3.Error) as exc:
            self._errors += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            if self._every("reopen"):
                logger.error("%s: cannot start a new log in place of the deleted one (%s); will retry", self.path, exc)
            return False
        self._file_ok = True
        logger.warning("%s: logging into a new log file", self.path)
        return True

    def _close_connections(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._wconn.close()
        with self._control_lock, contextlib.suppress(sqlite3.Error):
            self._conn.close()

    def _reopen(self) -> None:
        conn = connect(self.path, timeout_s=self._timeout_s, isolation_level=None)
        try:
            wconn = connect(self.path, timeout_s=self._timeout_s, isolation_level=None, migrate=False)
            try:
                wconn.execute("PRAGMA temp_store = MEMORY")
                wconn.execute(CREATE_SHAPE_TABLE)
                if self._run_fields is not None:
                    record_run(conn, self._run_fields)  # the rows that follow belong to it
            except BaseException:
                wconn.close()
                raise
        except BaseException:
            conn.close()
            raise
        with self._control_lock:
            self._conn = conn
        self._wconn = wconn
        self._identity = _identity(self.path)
        _OPEN_FILES.add(self._identity)
        self._builder.forget_shapes()  # the new connection's shape table is empty
        self._shapes_kept_from = self._builder.obsolete_below
        if self._tracker is not None:
            self._tracker.forget()

    def _fail_unwritable(self, items: list[tuple[Any, Any]], outs: list[tuple[Any, ...]]) -> None:
        lost = len(items) + len(outs)
        self._failed += lost
        if self._every("failed"):
            logger.error(
                "%s: could not write %d log rows (no usable log file); dropped them (%d rows lost so far)",
                self.path, lost, self._failed,
            )  # fmt: skip

    def _report_drops(self, force: bool = False) -> None:
        dropped = self._dropped
        if dropped > self._dropped_reported and (force or self._every("dropped")):
            logger.warning(
                "%s: decision log queue full or closed: dropped %d rows (%d in all); "
                "the writer cannot keep up, or the disk is slow",
                self.path, dropped - self._dropped_reported, dropped,
            )  # fmt: skip
            self._dropped_reported = dropped


class _Batch:
    """The rows of one transaction, built from the queued items once, kept across retries."""

    def __init__(
        self, builder: RowBuilder, items: list[tuple[Any, Any]], outs: list[tuple[Any, ...]], now: float
    ) -> None:
        self.builder = builder
        self.items = items
        self.outs = outs
        self.now = now
        self.next = 0  # items[:next] are built into rows_d
        self.rows_d: list[tuple[Any, ...]] = []
        self.sampled_out = 0
        self.rejected: list[tuple[Any, str]] = []
        self._rows_o: list[tuple[Any, ...]] | None = None

    def build_more(self, k: int) -> bool:
        """Build the rows of up to ``k`` more items; False when every item is built."""
        if self.next >= len(self.items):
            return False
        part = self.items[self.next : self.next + k]
        self.next += len(part)
        rows, sampled, rejected = self.builder.decisions(part, self.now)
        self.rows_d += rows
        self.sampled_out += sampled
        self.rejected += rejected
        return True

    def build_all(self) -> None:
        while self.build_more(4096):
            pass

    def outcome_rows(self) -> list[tuple[Any, ...]]:
        """The outcome rows to store; every decision is built first (exploit sampling needs them)."""
        if self._rows_o is None:
            self.build_all()
            self._rows_o = self.builder.outcomes(self.outs) if self.outs else []
            self.sampled_out += len(self.outs) - len(self._rows_o)
        return self._rows_o


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _identity(path: Path) -> tuple[int, int] | None:
    """The file at ``path`` as (device, inode), or None if it is missing (``os.stat``: no descriptor opened)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
