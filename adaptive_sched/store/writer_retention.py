"""The log writer's side of retention: when to count, delete and hand pages back.

Between batches the writer thread calls :meth:`WriterRetention.tick`: it counts the
decisions when due, deletes what its :class:`~adaptive_sched.store.retention.RetentionTracker`
says is owed (one bounded transaction per tick), sweeps the outcomes of decisions
already deleted, and hands freed pages back to the file system in steps, when idle or
when many are free. A retention error pauses retention for a second; logging goes on.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import TYPE_CHECKING

from .log_stats import Counters, Every
from .retention import VACUUM_FREE_PAGES, RetentionPolicy, RetentionTracker, vacuum_free_pages

if TYPE_CHECKING:
    from .log_file import LogFile

# The writer is one component to whoever configures logging: all its parts log as the writer.
logger = logging.getLogger("adaptive_sched.store.writer")

#: freed pages (4 KiB each) handed back to the file system per retention step
VACUUM_PAGES_PER_STEP = 2048

#: how long retention waits after an error before it tries again
PAUSE_AFTER_ERROR_S = 1.0


class WriterRetention:
    """Enforces ``policy`` on ``file`` from the writer thread, a bounded step at a time.

    ``batch_rows`` is the most rows the writer commits per transaction: retention
    deletes up to twice that per step, so it keeps up with a writer at its full rate
    and catches up a backlog. Owned by the writer thread.
    """

    def __init__(
        self, policy: RetentionPolicy, file: LogFile, counters: Counters, every: Every, *, batch_rows: int
    ) -> None:
        self._tracker = RetentionTracker(policy)
        self._file = file
        self._counters = counters
        self._every = every
        self._limit = max(policy.batch_rows, 2 * batch_rows)
        #: owed rows or free pages left: the writer should not wait before the next tick
        self.more = False
        self._paused_until = 0.0  # after a retention error
        self._vacuum_pending = False  # deleted since the free pages were last handed back
        self._outcomes_unswept = 0  # outcomes written since retention last swept orphans

    def wrote(self, decisions: int, outcomes: int) -> None:
        """The writer just committed ``decisions`` and ``outcomes`` rows."""
        self._tracker.wrote(decisions)
        self._outcomes_unswept += outcomes

    def forget(self) -> None:
        """The file was replaced: count again before deleting."""
        self._tracker.forget()

    def tick(self, *, busy: bool) -> None:
        """Count when due, delete what is owed (one bounded transaction), hand free pages back."""
        tracker = self._tracker
        if not self._file.ok:
            return
        now = time.monotonic()
        if now < self._paused_until:
            return
        conn = self._file.wconn
        try:
            if tracker.due():
                tracker.check(conn)
            if tracker.owed:
                step = tracker.step(conn, limit=self._limit)
                self._counters.retention_deleted += step.deleted_decisions
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
            self.more = more
        except sqlite3.Error as exc:
            tracker.forget()
            self.more = False
            self._paused_until = now + PAUSE_AFTER_ERROR_S
            self._counters.error(exc, "retention: ")
            if self._every("retention"):
                logger.warning("%s: retention failed (%s); will retry", self._file.path, exc)
