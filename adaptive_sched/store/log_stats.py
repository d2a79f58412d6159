"""What the decision log's writer counts, and how often it may say so.

The writer thread updates one :class:`Counters` object, shared by the parts of the
writer (batches, the file, retention); :attr:`DecisionLog.stats
<adaptive_sched.store.writer.DecisionLog.stats>` copies it into a frozen
:class:`LogStats`. Messages about failures go through :class:`Every`, so a dead disk
logs a warning now and then, not one per batch. :class:`Drops` counts the rows the hot
path refused, on the refusing thread, for the writer thread to report.

>>> every = Every(10.0)
>>> every("retry"), every("retry"), every("failed")
(True, False, True)
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# The writer is one component to whoever configures logging: all its parts log as the writer.
logger = logging.getLogger("adaptive_sched.store.writer")

#: at most one warning of each kind per this many seconds
WARN_EVERY_S = 10.0


@dataclass(frozen=True)
class LogStats:
    """Counters of a :class:`~adaptive_sched.store.writer.DecisionLog` (rows are decisions plus outcomes)."""

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


class Counters:
    """The writer thread's running counts (the fields of :class:`LogStats` it owns).

    Written by the writer thread only; other threads read them (plain ints: a read sees
    one value or the next, never a torn one).
    """

    def __init__(self) -> None:
        self.written = self.sampled_out = self.rejected = self.duplicates = 0
        self.failed = self.errors = self.batches = self.retention_deleted = 0
        self.file_replaced = self.lost_with_file = 0
        self.last_error: str | None = None

    def error(self, exc: BaseException, what: str = "") -> None:
        """Count a failed attempt and remember it as the last error (``what`` prefixes it)."""
        self.errors += 1
        self.last_error = f"{what}{type(exc).__name__}: {exc}"


class Every:
    """Rate limiting for log messages: ``every("key")`` is true at most once per interval."""

    def __init__(self, interval_s: float = WARN_EVERY_S) -> None:
        self.interval_s = interval_s
        self._next: dict[str, float] = {}

    def __call__(self, key: str) -> bool:
        now = time.monotonic()
        if now < self._next.get(key, 0.0):
            return False
        self._next[key] = now + self.interval_s
        return True


class Drops:
    """Rows the hot path refused (queue full, or the log closed): counted where refused, reported by the writer.

    Drops are rare (overload or shutdown); :meth:`add` only counts, and the writer thread
    logs them, rate-limited, so a logging handler's I/O never lands on an inference thread.
    """

    def __init__(self, path: Path, every: Every) -> None:
        self._path = path
        self._every = every
        self._lock = threading.Lock()
        #: rows refused so far
        self.count = 0
        self._reported = 0

    def add(self) -> None:
        """Count one refused row (any thread)."""
        with self._lock:
            self.count += 1

    def report(self, *, force: bool = False) -> None:
        """Warn of the rows refused since the last report (at most once per interval unless ``force``)."""
        dropped = self.count
        if dropped > self._reported and (force or self._every("dropped")):
            logger.warning(
                "%s: decision log queue full or closed: dropped %d rows (%d in all); "
                "the writer cannot keep up, or the disk is slow",
                self._path, dropped - self._reported, dropped,
            )  # fmt: skip
            self._reported = dropped
