"""Writing one batch of queued rows in one SQLite transaction, with retries.

The writer thread takes decisions and outcomes off its queues and hands them to a
:class:`BatchWriter`, which builds their rows (:class:`~adaptive_sched.store.rows.RowBuilder`)
and commits them in one transaction. It keeps its Python work small, since it shares
the GIL with inference threads: rows are tuples inserted by multi-row ``INSERT``
statements of a few dozen rows (SQLite releases the GIL while it inserts a group), and
the columns that depend only on the stage and shape are stored once per shape in a
temporary table that SQLite joins in.

Write failures (disk full, I/O errors, a lock held too long) never reach the caller:
the batch is retried after each pause of :data:`RETRY_BACKOFF_S`, then dropped and
counted (``failed``). A row SQLite cannot store (say, a latency that is a dict) is
rejected on its own; the rest of its batch is kept.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from itertools import chain
from typing import TYPE_CHECKING, Any

from .log_stats import Counters, Every
from .rows import (
    INSERT_DECISIONS,
    INSERT_OUTCOMES,
    INSERT_SHAPE,
    ROW_WIDTH,
    SHAPE_TABLE,
    RowBuilder,
    describe_rejected,
    multi_row_sql,
)

if TYPE_CHECKING:
    from .log_file import LogFile
    from .writer_retention import WriterRetention

# The writer is one component to whoever configures logging: all its parts log as the writer.
logger = logging.getLogger("adaptive_sched.store.writer")

#: errors caused by a row's values, not by the database: the row is rejected, the batch kept
DATA_ERRORS = (
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


class Batch:
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


class BatchWriter:
    """Builds and commits the writer thread's batches on the writer connection of ``file``.

    Owned by the writer thread. Every row handed to :meth:`write` ends up counted in
    ``counters``: written, a duplicate, sampled out, rejected or failed. ``retention``,
    if any, is told what each commit added.
    """

    def __init__(
        self,
        file: LogFile,
        builder: RowBuilder,
        counters: Counters,
        every: Every,
        retention: WriterRetention | None,
    ) -> None:
        self._file = file
        self.builder = builder
        self._counters = counters
        self._every = every
        self._retention = retention
        # values per multi-row INSERT, within this SQLite's limit on bound variables
        self._group_params = min(GROUP_PARAMS, file.wconn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
        self._multi_sql: dict[str, tuple[int, str]] = {}
        self._shapes_kept_from = 0
        self._failing = False

    def forget_shapes(self) -> None:
        """The writer connection is new: its shape table is empty."""
        self.builder.forget_shapes()
        self._shapes_kept_from = self.builder.obsolete_below

    def write(self, items: list[tuple[Any, Any]], outs: list[tuple[Any, ...]]) -> None:
        """Build the rows of ``items`` (decisions) and ``outs`` (outcomes) and commit them; never raises for a write."""
        builder = self.builder
        wconn = self._file.wconn
        if builder.obsolete_below > self._shapes_kept_from:
            # The rows of earlier batches are written: their old shape keys can go.
            with contextlib.suppress(sqlite3.Error):
                wconn.execute(f"DELETE FROM {SHAPE_TABLE} WHERE k < ?", (builder.obsolete_below,))
                self._shapes_kept_from = builder.obsolete_below
        batch = Batch(builder, items, outs, time.time())
        try:
            # All rows are built before the transaction: interleaving building with the
            # inserts made more, shorter GIL hand-overs, and a concurrent loop's p99 worse.
            batch.build_all()
            new_shapes = builder.take_new_shapes()
            if new_shapes:
                try:  # outside the transaction, so that a rollback cannot take them back
                    wconn.executemany(INSERT_SHAPE, new_shapes)
                except sqlite3.Error:
                    builder.new_shapes[:0] = new_shapes  # try again with the next batch
                    raise
            self._commit(batch)
        finally:
            batch.build_all()  # rows never built still count as sampled out or rejected
            self._counters.sampled_out += batch.sampled_out
            for item, reason in batch.rejected:
                self._reject(item, reason)

    def fail_unwritable(self, items: list[tuple[Any, Any]], outs: list[tuple[Any, ...]]) -> None:
        """Count ``items`` and ``outs`` as lost: there is no file to write them to."""
        lost = len(items) + len(outs)
        self._counters.failed += lost
        if self._every("failed"):
            logger.error(
                "%s: could not write %d log rows (no usable log file); dropped them (%d rows lost so far)",
                self._file.path, lost, self._counters.failed,
            )  # fmt: skip

    def _commit(self, batch: Batch) -> None:
        counters = self._counters
        # Once a batch has been lost, try the next ones only once until a write succeeds,
        # so a dead disk cannot make close() wait for every queued batch's back-off.
        attempts = 1 if self._failing else len(RETRY_BACKOFF_S) + 1
        for attempt in range(attempts):
            try:
                try:
                    inserted_d, inserted, bad = self._transaction(batch, careful=False)
                except DATA_ERRORS:
                    inserted_d, inserted, bad = self._transaction(batch, careful=True)
            except Exception as exc:  # not only sqlite3.Error: whatever lost a batch, its rows are counted
                counters.error(exc)
                if attempt + 1 < attempts:
                    if self._every("retry"):
                        logger.warning("%s: writing log rows failed (%s); retrying", self._file.path, exc)
                    time.sleep(RETRY_BACKOFF_S[attempt])
                    continue
                batch.build_all()
                lost = len(batch.rows_d) + len(batch.outcome_rows())
                counters.failed += lost
                self._failing = True
                if self._every("failed"):
                    logger.error(
                        "%s: could not write %d log rows (%s); dropped them (%d rows lost so far), still logging",
                        self._file.path, lost, exc, counters.failed,
                    )  # fmt: skip
                return
            self._failing = False
            counters.written += inserted
            self._file.wrote(inserted)
            counters.batches += 1
            if self._retention is not None:
                self._retention.wrote(inserted_d, inserted - inserted_d)
            counters.duplicates += len(batch.rows_d) + len(batch.outcome_rows()) - inserted - len(bad)
            for row, reason in bad:
                self._reject(row, reason)
            return

    def _transaction(self, batch: Batch, *, careful: bool) -> tuple[int, int, list[tuple[Any, str]]]:
        """Insert the batch in one transaction: ``(decisions inserted, rows inserted, rejected rows)``."""
        conn = self._file.wconn
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
                        except DATA_ERRORS as exc:
                            bad.append((row, f"{type(exc).__name__}: {exc}"))
                inserted_d, inserted = counts[0], counts[0] + counts[1]
            else:
                inserted_d = self._insert_many(conn, INSERT_DECISIONS, batch.rows_d)
                # Decisions first: exploit sampling must see a decision before its outcome.
                inserted = inserted_d + self._insert_many(conn, INSERT_OUTCOMES, batch.outcome_rows())
            conn.execute("COMMIT")
        except BaseException:
            # A failed ROLLBACK must not hide the error that lost the batch (it decides
            # whether the batch is retried row by row).
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

    def _insert_many(self, conn: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> int:
        # Groups of rows go in one multi-row INSERT: SQLite then runs a whole group in one
        # step with the GIL released (executemany releases and retakes it for every row,
        # and pays its per-row overhead). The remainder goes through executemany.
        k, multi = self._group(sql)
        inserted = 0
        full = len(rows) - len(rows) % k if k > 1 else 0
        for j in range(0, full, k):
            inserted += conn.execute(multi, tuple(chain.from_iterable(rows[j : j + k]))).rowcount
        if full < len(rows):
            inserted += conn.executemany(sql, rows[full:]).rowcount
        return inserted

    def _reject(self, item: Any, reason: str) -> None:
        counters = self._counters
        counters.rejected += 1
        if self._every("rejected"):
            what = describe_rejected(item)
            logger.error(
                "%s: rejected %s: %s (%d rows rejected so far)", self._file.path, what, reason, counters.rejected
            )
