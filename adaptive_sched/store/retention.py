"""Retention: keep the decision log within a number of rows and/or an age.

The writer thread enforces a :class:`RetentionPolicy` with a :class:`RetentionTracker`.
Every ``check_every_s`` seconds (and when the log is opened) it counts the decisions and
those beyond the age limit: what it finds over the limits is owed. Between two checks it
adds every decision it commits itself to what is owed once the table is at its row limit,
so a writer logging at its full rate deletes as many rows as it adds and the table never
holds more than ``max_rows`` plus one batch of its own. After each batch it deletes what
is owed, the oldest first, at most ``max(batch_rows, 2 * batch)`` per transaction (twice
what a batch adds: a backlog is caught up too), so logging goes on in between and no
transaction holds the writer long. Rows other processes log to the same file are seen at
the next check (each process enforces the limit on what it sees, so the table may then
hold briefly fewer rows than ``max_rows``); the age limit holds to within one interval.

Deleting is cheap because decision ids are ``run << 32 | sequence``: the oldest ``k``
decisions are found on the ``time`` index, then deleted run by run as primary-key ranges
(filtered by the cut-off, so only those ``k`` go), and their outcomes as the part of each
run's id range below its oldest remaining decision (which also sweeps outcomes whose
decision never reached the file).

Freed pages are reused by later inserts, so the file stops growing once the limits are
reached; the writer hands them back to the file system (``PRAGMA incremental_vacuum``, in
steps) when it is idle, or when more than :data:`VACUUM_FREE_PAGES` are free.

Age is measured from the newest logged decision, or from now if that is earlier, so a
log written on a simulated (virtual) clock is not wiped by a wall-clock cutoff.
``runs`` rows are kept: one small row per process start.

>>> import os, tempfile
>>> from adaptive_sched.store.connection import connect
>>> conn = connect(os.path.join(tempfile.mkdtemp(), "log.db"), isolation_level=None)
>>> conn.executemany("INSERT INTO decisions (id, time) VALUES (?, ?)", [(i, float(i)) for i in range(10)])
... # doctest: +ELLIPSIS
<sqlite3.Cursor ...>
>>> apply_retention(conn, RetentionPolicy(max_rows=4)).deleted_decisions
6
>>> [r[0] for r in conn.execute("SELECT id FROM decisions")]
[6, 7, 8, 9]
"""

from __future__ import annotations

import dataclasses
import math
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .schema import run_id_range
from .transactions import immediate


@dataclass(frozen=True)
class RetentionPolicy:
    """Limits on the decision log.

    Parameters
    ----------
    max_rows : int, optional
        Keep at most this many decisions (the newest).
    max_age_s : float, optional
        Delete decisions older than this many seconds.
    check_every_s : float, default 10
        How often the writer counts the rows against the limits (0: before every batch).
        Its own rows are accounted for as it writes them; the count catches the rows of
        other processes sharing the file, and the age limit holds to within this interval.
        A count costs about 7 ms per million rows (both limits, measured), in the writer thread.
    batch_rows : int, default 5000
        Decisions deleted per transaction, at least (a writer deletes up to twice its
        own batch per transaction when that is more).

    >>> RetentionPolicy(max_rows=0)
    Traceback (most recent call last):
    ...
    ValueError: max_rows must be an integer >= 1, got 0
    """

    max_rows: int | None = None
    max_age_s: float | None = None
    check_every_s: float = 10.0
    batch_rows: int = 5000

    def __post_init__(self) -> None:
        if self.max_rows is not None and (
            isinstance(self.max_rows, bool) or not isinstance(self.max_rows, int) or self.max_rows < 1
        ):
            raise ValueError(f"max_rows must be an integer >= 1, got {self.max_rows!r}")
        if self.max_age_s is not None and not _positive(self.max_age_s):
            raise ValueError(f"max_age_s must be a number > 0, got {self.max_age_s!r}")
        if not _positive(self.check_every_s, allow_zero=True):
            raise ValueError(f"check_every_s must be a number >= 0, got {self.check_every_s!r}")
        if isinstance(self.batch_rows, bool) or not isinstance(self.batch_rows, int) or self.batch_rows < 1:
            raise ValueError(f"batch_rows must be an integer >= 1, got {self.batch_rows!r}")

    @property
    def active(self) -> bool:
        """Whether any limit is set."""
        return self.max_rows is not None or self.max_age_s is not None


def _positive(value: object, allow_zero: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return value >= 0 if allow_zero else value > 0


@dataclass(frozen=True)
class RetentionResult:
    """What a retention pass deleted."""

    deleted_decisions: int = 0
    deleted_outcomes: int = 0
    #: the limits are still exceeded: another step is needed
    more: bool = False
    freed_pages: int = 0
    #: the runs whose decisions were deleted
    runs: tuple[int, ...] = ()


def count_excess(conn: sqlite3.Connection, policy: RetentionPolicy, *, now: float | None = None) -> tuple[int, int]:
    """``(decisions, beyond)``: the decisions in the log, and how many of the oldest are beyond the limits.

    Both limits select a prefix of the decisions in time order, so ``beyond`` is the
    longer of the two prefixes. Read outside any write transaction: counting millions of
    rows must not hold the write lock that every logging process waits for.
    """
    total = int(conn.execute("SELECT count(*) FROM decisions").fetchone()[0])
    beyond = 0
    if policy.max_rows is not None:
        beyond = max(0, total - policy.max_rows)
    if policy.max_age_s is not None:
        now = time.time() if now is None else now
        newest = conn.execute("SELECT max(time) FROM decisions").fetchone()[0]
        if newest is not None:
            cutoff = min(now, float(newest)) - policy.max_age_s
            old = conn.execute("SELECT count(*) FROM decisions WHERE time < ?", (cutoff,)).fetchone()[0]
            beyond = max(beyond, int(old))
    return total, beyond


def delete_oldest(conn: sqlite3.Connection, k: int) -> RetentionResult:
    """Delete the ``k`` oldest decisions (by time, then id) and their outcomes, in one transaction.

    ``conn`` must not be inside a transaction.
    """
    if k <= 0:
        return RetentionResult()
    with immediate(conn):
        last = conn.execute("SELECT time, id FROM decisions ORDER BY time, id LIMIT 1 OFFSET ?", (k - 1,)).fetchone()
        if last is None:  # fewer than k rows: all of them
            last = conn.execute("SELECT time, id FROM decisions ORDER BY time DESC, id DESC LIMIT 1").fetchone()
        deleted = outcomes = 0
        runs: tuple[int, ...] = ()
        if last is not None:
            t, i = last
            # the oldest k, as id ranges per run (ids grow with time within a run)
            spans = conn.execute(
                "SELECT id >> 32, min(id), max(id) FROM "
                "(SELECT id FROM decisions ORDER BY time, id LIMIT ?) GROUP BY 1",
                (k,),
            ).fetchall()
            for _, lo, hi in spans:
                cur = conn.execute(
                    "DELETE FROM decisions WHERE id BETWEEN ? AND ? AND (time < ? OR (time = ? AND id <= ?))",
                    (lo, hi, t, t, i),
                )
                deleted += max(0, cur.rowcount)
            runs = tuple(sorted({run for run, _, _ in spans}))
            outcomes = _sweep_outcomes(conn, runs)
    return RetentionResult(deleted_decisions=deleted, deleted_outcomes=outcomes, runs=runs)


def retention_step(conn: sqlite3.Connection, policy: RetentionPolicy, *, now: float | None = None) -> RetentionResult:
    """Delete at most ``policy.batch_rows`` of the oldest decisions beyond the limits, in one transaction.

    ``conn`` must not be inside a transaction.
    """
    if not policy.active:
        return RetentionResult()
    _, beyond = count_excess(conn, policy, now=now)
    k = min(policy.batch_rows, beyond)
    if k == 0:
        return RetentionResult()
    result = delete_oldest(conn, k)
    return dataclasses.replace(result, more=beyond > k and result.deleted_decisions > 0)


def sweep_outcomes(conn: sqlite3.Connection, runs: Iterable[int]) -> int:
    """Delete the outcomes of ``runs`` whose decision is gone (one transaction); how many.

    An outcome logged after retention deleted its decision (a late observation, or a
    writer that had the outcome queued) is swept this way.
    """
    with immediate(conn):
        return _sweep_outcomes(conn, runs)


def _sweep_outcomes(conn: sqlite3.Connection, runs: Iterable[int]) -> int:
    # Within a run, ids grow with time: an outcome below the run's oldest surviving
    # decision has no decision (deleted, or never written because its row was dropped).
    swept = 0
    for run in runs:
        lo, hi = run_id_range(run)
        oldest = conn.execute("SELECT min(id) FROM decisions WHERE id BETWEEN ? AND ?", (lo, hi)).fetchone()[0]
        upper = hi if oldest is None else oldest - 1
        if upper >= lo:
            cur = conn.execute("DELETE FROM outcomes WHERE decision_id BETWEEN ? AND ?", (lo, upper))
            swept += max(0, cur.rowcount)
    return swept


class RetentionTracker:
    """What the log writer owes its :class:`RetentionPolicy`, and when to count again.

    Owned by one thread. :meth:`check` counts (when :meth:`due`), :meth:`wrote` adds the
    decisions just committed, :meth:`step` deletes what is owed, in bounded transactions.

    >>> import os, tempfile
    >>> from adaptive_sched.store.connection import connect
    >>> conn = connect(os.path.join(tempfile.mkdtemp(), "log.db"), isolation_level=None)
    >>> tracker = RetentionTracker(RetentionPolicy(max_rows=3, check_every_s=3600))
    >>> tracker.check(conn)
    >>> conn.executemany("INSERT INTO decisions (id, time) VALUES (?, ?)", [(i, float(i)) for i in range(5)])
    ... # doctest: +ELLIPSIS
    <sqlite3.Cursor ...>
    >>> tracker.wrote(5)
    >>> tracker.owed, tracker.step(conn, limit=100).deleted_decisions, tracker.owed
    (2, 2, 0)
    """

    def __init__(self, policy: RetentionPolicy, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._next_check = 0.0
        self._rows: int | None = None  # decisions in the table, as of the last count plus our own since
        self._age_owed = 0
        # runs whose oldest decisions were deleted: outcomes logged later for those may be orphans
        self._cut: dict[int, None] = {}

    def due(self) -> bool:
        """Whether it is time to count the rows again."""
        return self._clock() >= self._next_check

    def check(self, conn: sqlite3.Connection, *, now: float | None = None) -> None:
        """Count the rows against the limits (outside a write transaction)."""
        self._next_check = self._clock() + self.policy.check_every_s
        total, beyond = count_excess(conn, self.policy, now=now)
        self._rows = total
        row_owed = total - self.policy.max_rows if self.policy.max_rows is not None else 0
        self._age_owed = beyond if beyond > row_owed else 0

    def wrote(self, decisions: int) -> None:
        """``decisions`` rows were just committed by this writer."""
        if self._rows is not None:
            self._rows += decisions

    @property
    def owed(self) -> int:
        """How many of the oldest decisions are due for deletion."""
        if self._rows is None:
            return 0
        over = self._rows - self.policy.max_rows if self.policy.max_rows is not None else 0
        return max(0, over, self._age_owed)

    def step(self, conn: sqlite3.Connection, *, limit: int) -> RetentionResult:
        """Delete up to ``limit`` of what is owed, in one transaction."""
        k = min(self.owed, limit)
        if k <= 0:
            return RetentionResult()
        result = delete_oldest(conn, k)
        gone = result.deleted_decisions
        for run in result.runs:
            self._cut.pop(run, None)
            self._cut[run] = None
        while len(self._cut) > _CUT_RUNS:
            del self._cut[next(iter(self._cut))]
        if self._rows is not None:
            self._rows -= gone
        self._age_owed = max(0, self._age_owed - gone)
        if gone < k:
            # Fewer rows than counted (another process deleted some): count again next time.
            self._rows = None
            self._age_owed = 0
            self._next_check = 0.0
        return dataclasses.replace(result, more=self.owed > 0)

    def sweep(self, conn: sqlite3.Connection) -> int:
        """Delete outcomes whose decision retention deleted (call after writing outcomes)."""
        return sweep_outcomes(conn, self._cut) if self._cut else 0

    def forget(self) -> None:
        """The counts no longer hold (the file was replaced): count again before deleting."""
        self._rows = None
        self._age_owed = 0
        self._next_check = 0.0
        self._cut.clear()


#: runs a tracker remembers having cut (the newest); an older run's late outcomes are swept
#: when retention next deletes in that run
_CUT_RUNS = 64


#: free pages (4 KiB each) beyond which the writer hands pages back while busy; below it,
#: they wait for the next inserts to reuse them (or for an idle moment)
VACUUM_FREE_PAGES = 1024


def vacuum_free_pages(conn: sqlite3.Connection, max_pages: int | None = None) -> tuple[int, int]:
    """Return free pages to the file system (``PRAGMA incremental_vacuum``).

    At most ``max_pages`` pages per call (all if None), so that a large backlog is
    returned in short transactions. Returns ``(freed, still_free)``. A no-op on a file
    created without incremental auto-vacuum (its free pages are reused by later inserts).
    """
    before = conn.execute("PRAGMA freelist_count").fetchone()[0]
    if before and conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
        arg = "" if max_pages is None else f"({int(max_pages)})"
        # executescript runs the pragma to completion; execute() frees a single page.
        conn.executescript(f"PRAGMA incremental_vacuum{arg}")
    after = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return int(before - after), int(after)


def apply_retention(conn: sqlite3.Connection, policy: RetentionPolicy, *, now: float | None = None) -> RetentionResult:
    """Apply ``policy`` fully: delete in batches until within the limits, then vacuum."""
    decisions = outcomes = 0
    while True:
        step = retention_step(conn, policy, now=now)
        decisions += step.deleted_decisions
        outcomes += step.deleted_outcomes
        if not step.more:
            break
    freed = vacuum_free_pages(conn)[0] if decisions else 0
    return RetentionResult(deleted_decisions=decisions, deleted_outcomes=outcomes, freed_pages=freed)
