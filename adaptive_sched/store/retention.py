"""Retention: keep the decision log within a number of rows and/or an age.

The writer thread applies a :class:`RetentionPolicy` every ``check_every_s`` seconds:
it deletes the oldest decisions (by ``time``) and their outcomes in batches of
``batch_rows``, one short transaction each so logging goes on in between, then hands
the freed pages back with ``PRAGMA incremental_vacuum``. Freed pages are reused even
in a file created without incremental auto-vacuum, so the file stops growing once the
limits are reached.

Age is measured from the newest logged decision, or from now if that is earlier, so a
log written on a simulated (virtual) clock is not wiped by a wall-clock cutoff.
``runs`` rows are kept: one small row per process start.

>>> import os, tempfile
>>> from adaptive_sched.store.schema import connect
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

import math
import sqlite3
import time
from dataclasses import dataclass

from .schema import run_id_range


@dataclass(frozen=True)
class RetentionPolicy:
    """Limits on the decision log.

    Parameters
    ----------
    max_rows : int, optional
        Keep at most this many decisions (the newest).
    max_age_s : float, optional
        Delete decisions older than this many seconds.
    check_every_s : float, default 60
        How often the writer checks the limits (0: after every batch).
    batch_rows : int, default 5000
        Decisions deleted per transaction.

    >>> RetentionPolicy(max_rows=0)
    Traceback (most recent call last):
    ...
    ValueError: max_rows must be an integer >= 1, got 0
    """

    max_rows: int | None = None
    max_age_s: float | None = None
    check_every_s: float = 60.0
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


def retention_step(conn: sqlite3.Connection, policy: RetentionPolicy, *, now: float | None = None) -> RetentionResult:
    """Delete at most ``policy.batch_rows`` of the oldest decisions beyond the limits, in one transaction.

    ``conn`` must not be inside a transaction.
    """
    if not policy.active:
        return RetentionResult()
    now = time.time() if now is None else now
    batch = policy.batch_rows
    # How much to delete is read outside the write transaction: counting millions of
    # rows must not hold the write lock that every logging process waits for.
    k = 0
    if policy.max_rows is not None:
        total = conn.execute("SELECT count(*) FROM decisions").fetchone()[0]
        k = min(batch, max(0, total - policy.max_rows))
    if policy.max_age_s is not None and k < batch:
        newest = conn.execute("SELECT max(time) FROM decisions").fetchone()[0]
        if newest is not None:
            cutoff = min(now, float(newest)) - policy.max_age_s
            old = conn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM decisions WHERE time < ? LIMIT ?)", (cutoff, batch)
            ).fetchone()[0]
            k = max(k, old)
    if k == 0:
        return RetentionResult()
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Both limits select a prefix of the decisions in time order: delete the longer one.
        ids = [r[0] for r in conn.execute("SELECT id FROM decisions ORDER BY time LIMIT ?", (k,))]
        params = [(i,) for i in ids]
        conn.executemany("DELETE FROM decisions WHERE id = ?", params)
        outcomes = conn.executemany("DELETE FROM outcomes WHERE decision_id = ?", params).rowcount
        outcomes += _sweep_outcomes(conn, {i >> 32 for i in ids if isinstance(i, int) and i >= 0})
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return RetentionResult(deleted_decisions=len(ids), deleted_outcomes=max(0, outcomes), more=k == batch)


def _sweep_outcomes(conn: sqlite3.Connection, runs: set[int]) -> int:
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
