"""The durable decision log: a cheap hot path and a background SQLite writer.

:meth:`DecisionLog.decision` and :meth:`DecisionLog.outcome` only append a tuple to a
bounded queue (a :class:`collections.deque`: no lock, no event per row). A daemon
thread wakes every ``flush_interval_s``, or as soon as a queue holds ``flush_rows``
rows, takes the queued rows off in batches and hands each to its parts:

* :mod:`~adaptive_sched.store.batches` builds the rows (:mod:`~adaptive_sched.store.rows`)
  and commits them in one transaction (WAL, ``synchronous=NORMAL``), retrying a failed
  batch a few times before it drops and counts it;
* :mod:`~adaptive_sched.store.log_file` holds the connections and notices a log file
  deleted or replaced while logging, and starts a new one in its place;
* :mod:`~adaptive_sched.store.writer_retention` keeps the log within its
  :class:`~adaptive_sched.store.retention.RetentionPolicy` between batches;
* :mod:`~adaptive_sched.store.log_stats` holds the counters :attr:`DecisionLog.stats`
  reports.

A crash loses at most the last interval and the batch being written. Several processes
may log to one file: each waits for the others' write lock (SQLite's busy timeout, then
retries with back-off). Write failures (disk full, I/O errors, a lock held too long)
never reach the caller: they are counted in :attr:`DecisionLog.stats` and logged,
rate-limited, and the writer goes on.

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
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Mapping
from itertools import repeat, starmap
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import StoreError
from ..types import Decision
from .batches import RETRY_BACKOFF_S, BatchWriter
from .log_file import LogFile
from .log_stats import Counters, Drops, Every, LogStats
from .retention import RetentionPolicy
from .rows import RowBuilder
from .runs import allocate_run, run_row
from .writer_retention import WriterRetention

logger = logging.getLogger(__name__)

_wallclock = time.time
_monotonic = time.monotonic


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

        self._counters = Counters()
        self._every = Every()
        # Opened here, so that a bad file is an error now, not in the writer thread.
        self._file = LogFile(
            self.path, timeout_s=self._timeout_s, counters=self._counters, every=self._every, on_reopen=self._new_file
        )

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
        self._drops = Drops(self.path, self._every)

        # -- progress, for flush() and on_full="block" --------------------------------
        self._drain_lock = threading.Lock()
        self._progress = threading.Condition()
        self._taken_d = self._taken_o = 0  # rows the writer took off each queue
        self._done_d = self._done_o = 0  # ... and finished with (written, rejected or failed)

        # -- owned by the writer thread -------------------------------------------------
        self._chunk = max(self.flush_rows, 256)
        self._retention: WriterRetention | None = None
        if self.retention is not None:
            self._retention = WriterRetention(
                self.retention, self._file, self._counters, self._every, batch_rows=self._chunk
            )
        self._batch_writer = BatchWriter(
            self._file, RowBuilder(self.exploit_sample_rate), self._counters, self._every, self._retention
        )

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
            self._drops.add()
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
        self._drops.add()

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
        fields = run_row(
            host=host, config_hash=config_hash, device_profile=device_profile, package_version=package_version,
            config=config, pid=pid, started_at=started_at,
        )  # fmt: skip
        with self._file.control_lock:
            if self._closed:
                raise StoreError(f"{self.path}: the decision log is closed")
            try:
                run_id = allocate_run(self._file.conn, fields, retry_after_s=RETRY_BACKOFF_S)
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot record the run ({exc})") from exc
        self.run_id = run_id
        self._file.run_fields = {**fields, "id": run_id}
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
        failed_before = self._counters.failed
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
        return self._counters.failed == failed_before

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
        self._file.close()
        self._drops.report(force=True)

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
        c = self._counters
        return LogStats(
            enqueued=taken + depth,
            written=c.written,
            dropped=self._drops.count,
            sampled_out=c.sampled_out,
            rejected=c.rejected,
            duplicates=c.duplicates,
            failed=c.failed,
            errors=c.errors,
            batches=c.batches,
            retention_deleted=c.retention_deleted,
            file_replaced=c.file_replaced,
            lost_with_file=c.lost_with_file,
            queue_depth=depth,
            last_error=c.last_error,
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"DecisionLog({str(self.path)!r}, {state}, run={self.run_id})"

    # -- the writer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        dq, oq, wake = self._decisions, self._outcomes, self._wake
        retention, file = self._retention, self._file
        try:
            while True:
                idle = not self._stopping and not (retention is not None and retention.more)
                if idle and len(dq) < self.flush_rows and len(oq) < self.flush_rows:
                    wake.wait(self.flush_interval_s)
                wake.clear()
                self._kicked = False
                stopping = self._stopping
                try:
                    wrote = self._write_pending()
                    if not wrote:
                        file.check()  # also when idle: a deleted log is noticed, and replaced
                    if not stopping and retention is not None:
                        retention.tick(busy=wrote)
                except Exception as exc:  # the writer must outlive any surprise
                    self._counters.error(exc)
                    if self._every("unexpected"):
                        logger.exception("%s: unexpected error in the log writer", self.path)
                    time.sleep(0.05)
                self._drops.report()
                if stopping and not dq and not oq:
                    break
        finally:
            file.close_writer()
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
            if self._file.check():
                self._batch_writer.write(items, outs)
            else:
                self._batch_writer.fail_unwritable(items, outs)
            if self._retention is not None:
                # also while closing: the rows drained then are kept within the limits too
                self._retention.tick(busy=True)
        finally:
            with self._progress:
                self._done_d += n_d
                self._done_o += n_o
                self._progress.notify_all()

    def _new_file(self) -> None:
        # The log file was replaced and a new one opened: what was known of the old one goes.
        self._batch_writer.forget_shapes()
        if self._retention is not None:
            self._retention.forget()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
