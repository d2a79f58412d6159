"""Retention: row and age limits, orphaned outcomes, and a file that stops growing."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from adaptive_sched.store.connection import connect
from adaptive_sched.store.reads import counts
from adaptive_sched.store.retention import (
    VACUUM_FREE_PAGES,
    RetentionPolicy,
    RetentionTracker,
    apply_retention,
    delete_oldest,
    retention_step,
)
from adaptive_sched.store.schema import run_id_range
from adaptive_sched.store.writer import DecisionLog

from .test_store_support import count, make_decision, wait_until


def _log(conn: sqlite3.Connection, run: int, times: list[float], outcomes: bool = True) -> list[int]:
    lo = run_id_range(run)[0]
    ids = [lo + i + 1 for i in range(len(times))]
    rows = [(i, run, t) for i, t in zip(ids, times, strict=True)]
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO decisions (id, run, time) VALUES (?, ?, ?)", rows)
    if outcomes:
        sql = "INSERT INTO outcomes (decision_id, time, latency_s, ok) VALUES (?, 0, 1e-3, 1)"
        conn.executemany(sql, [(i,) for i in ids])
    conn.execute("COMMIT")
    return ids


@pytest.fixture
def conn(tmp_path: Path):
    c = connect(tmp_path / "log.db", isolation_level=None)
    yield c
    c.close()


def test_policy_validation_names_the_field() -> None:
    for kwargs, name in (
        ({"max_rows": 0}, "max_rows"),
        ({"max_rows": 2.5}, "max_rows"),
        ({"max_age_s": -1}, "max_age_s"),
        ({"max_age_s": float("nan")}, "max_age_s"),
        ({"check_every_s": -1}, "check_every_s"),
        ({"batch_rows": 0}, "batch_rows"),
    ):
        with pytest.raises(ValueError, match=name):
            RetentionPolicy(**kwargs)
    assert not RetentionPolicy().active
    assert RetentionPolicy(max_rows=5).active


def test_row_limit_deletes_the_oldest_by_time_across_runs(conn: sqlite3.Connection) -> None:
    # Two processes logged at once: run 1's rows are not all older than run 2's.
    a = _log(conn, 1, [float(t) for t in range(0, 100, 2)])
    b = _log(conn, 2, [float(t) for t in range(1, 101, 2)])
    result = apply_retention(conn, RetentionPolicy(max_rows=30, batch_rows=7))
    assert result.deleted_decisions == 70
    kept = dict(conn.execute("SELECT id, time FROM decisions").fetchall())
    assert sorted(kept.values()) == [float(t) for t in range(70, 100)]
    assert set(kept) <= set(a) | set(b)
    outcomes = {r[0] for r in conn.execute("SELECT decision_id FROM outcomes")}
    assert outcomes == set(kept)
    assert result.deleted_outcomes == 70


def test_age_limit_counts_from_the_newest_row_on_a_virtual_clock(conn: sqlite3.Connection) -> None:
    _log(conn, 1, [1000.0 + t for t in range(1000)])  # simulated seconds, far from wall time
    apply_retention(conn, RetentionPolicy(max_age_s=250))
    times = [r[0] for r in conn.execute("SELECT time FROM decisions ORDER BY time")]
    assert times[0] == 1749.0 and times[-1] == 1999.0


def test_age_limit_on_wall_clock_time(conn: sqlite3.Connection) -> None:
    now = 1.7e9
    _log(conn, 1, [now - 3 * 86400, now - 2 * 86400, now - 60, now])
    apply_retention(conn, RetentionPolicy(max_age_s=86400), now=now)
    assert [r[0] for r in conn.execute("SELECT time FROM decisions ORDER BY time")] == [now - 60, now]


def test_outcomes_whose_decision_never_made_it_are_swept(conn: sqlite3.Connection) -> None:
    ids = _log(conn, 3, [float(t) for t in range(10)])
    # Outcomes of decisions dropped before they reached the file (queue full, disk full).
    conn.executemany("INSERT INTO outcomes (decision_id, time) VALUES (?, 0)", [(i + 1000,) for i in ids[:3]])
    conn.execute("DELETE FROM decisions WHERE id IN (?, ?)", (ids[0] + 1000, ids[1] + 1000))
    orphan_low = run_id_range(3)[0]  # seq 0: below every decision of the run
    conn.execute("INSERT INTO outcomes (decision_id, time) VALUES (?, 0)", (orphan_low,))
    retention_step(conn, RetentionPolicy(max_rows=5))
    remaining = {r[0] for r in conn.execute("SELECT decision_id FROM outcomes")}
    assert orphan_low not in remaining
    assert set(ids[5:]) <= remaining


def test_freed_pages_go_back_to_the_file_system(conn: sqlite3.Connection) -> None:
    _log(conn, 1, [float(t) for t in range(20_000)])
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    result = apply_retention(conn, RetentionPolicy(max_rows=1000))
    assert result.freed_pages > 0
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
    assert conn.execute("PRAGMA page_count").fetchone()[0] < pages // 4


def test_nothing_to_do_is_cheap_and_harmless(conn: sqlite3.Connection) -> None:
    _log(conn, 1, [1.0, 2.0])
    result = apply_retention(conn, RetentionPolicy(max_rows=10, max_age_s=1e9))
    assert result.deleted_decisions == 0
    assert counts(conn)["decisions"] == 2


def _pages(path: Path) -> tuple[int, int]:
    """Pages and free pages as of the last commit (the file itself catches up at checkpoints)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA page_count").fetchone()[0], conn.execute("PRAGMA freelist_count").fetchone()[0]
    finally:
        conn.close()


def test_the_file_stops_growing_under_a_row_limit(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    policy = RetentionPolicy(max_rows=2000, check_every_s=0, batch_rows=5000)
    sizes = []
    with DecisionLog(path, flush_rows=500, retention=policy) as log:
        run = log.start_run()
        seq = 0
        for _ in range(16):
            for _ in range(3000):
                seq += 1
                d = make_decision(run, seq)
                log.decision(d, {"temp_c": 60.0})
                log.outcome(d.id, 1e-3)
            assert log.flush()
            # the writer deletes the oldest rows, then hands the freed pages back
            assert wait_until(lambda: counts(path)["decisions"] <= 2000 and _pages(path)[1] == 0)
            sizes.append(_pages(path)[0])
    assert log.stats.retention_deleted == 16 * 3000 - 2000
    c = counts(path)
    assert c["decisions"] == 2000 and c["outcomes"] <= 2000
    # Once the limit is reached the database stops growing (the page count wobbles with B-tree splits).
    assert max(sizes[4:]) <= 1.25 * max(sizes[:4]), sizes
    assert os.path.getsize(path) <= max(sizes) * 4096


def _bytes(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def test_at_full_rate_the_log_stays_within_its_row_limit_and_its_size(tmp_path: Path) -> None:
    """A writer at its sustained maximum rate: bounds on rows and bytes, whatever the speed."""
    max_rows, n, flush_rows = 5000, 100_000, 2000

    def fill(path: Path, rows: int, retention: RetentionPolicy | None, sample_every: int = 0) -> list[tuple[int, ...]]:
        samples = []
        # A short queue and on_full="block": the producer outruns the writer, which runs flat
        # out, and the samples see what the writer has done, not what waits in the queue.
        log = DecisionLog(path, flush_rows=flush_rows, queue_size=2 * flush_rows, on_full="block", retention=retention)
        with log:
            run = log.start_run()
            for seq in range(1, rows + 1):
                d = make_decision(run, seq)
                log.decision(d)
                log.outcome(d.id, 1e-3)
                if sample_every and seq % sample_every == 0:
                    samples.append((count(path, "decisions"), _bytes(path), _bytes(Path(f"{path}-wal"))))
            assert log.flush()
            if retention is not None:
                assert wait_until(lambda: count(path, "decisions") <= max_rows)
            stats = log.stats
        assert (stats.written, stats.dropped, stats.failed, stats.rejected) == (2 * rows, 0, 0, 0)
        if retention is not None:
            assert stats.retention_deleted == rows - max_rows
        return samples

    # The most rows retention lets in at any moment is the limit plus one batch of ours:
    # a log holding that many, written without retention, is the yardstick for the size.
    most = max_rows + flush_rows
    reference = tmp_path / "reference.db"
    fill(reference, most, None)
    reference_bytes = _bytes(reference)

    path = tmp_path / "log.db"
    # No count after the first: the writer's own accounting must keep up on its own.
    samples = fill(path, n, RetentionPolicy(max_rows=max_rows, check_every_s=1e9), sample_every=2500)
    assert len(samples) == n // 2500
    assert max(s[0] for s in samples) <= most, samples
    free_pages_bytes = (VACUUM_FREE_PAGES + 1) * 4096  # left for reuse while busy
    assert max(s[1] for s in samples) <= 1.25 * reference_bytes + free_pages_bytes, (reference_bytes, samples)
    # The WAL is checkpointed as it goes (SQLite's 1000 pages, plus a transaction or two).
    assert max(s[2] for s in samples) <= 1000 * 4096 + 2 * reference_bytes, samples
    c = counts(path)
    assert c["decisions"] == max_rows and c["outcomes"] <= max_rows
    kept = [r[0] for r in sqlite3.connect(path).execute("SELECT id FROM decisions ORDER BY id")]
    assert kept == list(range(kept[0], kept[0] + max_rows))  # the newest, none missing
    unbounded = n / most * reference_bytes
    assert _bytes(path) <= reference_bytes * 1.25 < unbounded / 10


def test_the_age_limit_holds_under_load(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    policy = RetentionPolicy(max_age_s=1.0, check_every_s=0)  # a virtual millisecond per decision
    with DecisionLog(path, flush_rows=500, on_full="block", retention=policy) as log:
        run = log.start_run()
        for seq in range(1, 20_001):
            d = make_decision(run, seq, t=1000.0 + seq / 1000)
            log.decision(d)
            log.outcome(d.id, 1e-3)
        assert log.flush()
        assert wait_until(lambda: counts(path)["decisions"] <= 1001)
    times = [r[0] for r in sqlite3.connect(path).execute("SELECT time FROM decisions ORDER BY time")]
    assert times[-1] == 1020.0 and times[0] >= 1019.0


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_the_tracker_counts_every_check_every_s_and_its_own_rows_in_between(conn: sqlite3.Connection) -> None:
    clock = _Clock()
    tracker = RetentionTracker(RetentionPolicy(max_rows=100, check_every_s=30), clock=clock)
    assert tracker.due() and tracker.owed == 0  # nothing counted yet: nothing owed
    _log(conn, 1, [float(t) for t in range(90)])
    tracker.check(conn)
    assert not tracker.due() and tracker.owed == 0
    # Our own rows count as they are written ...
    _log(conn, 2, [100.0 + t for t in range(20)])
    tracker.wrote(20)
    assert tracker.owed == 10
    result = tracker.step(conn, limit=4)
    assert (result.deleted_decisions, result.more, tracker.owed) == (4, True, 6)
    tracker.step(conn, limit=1000)
    assert tracker.owed == 0 and counts(conn)["decisions"] == 100
    # ... another process's only at the next count, check_every_s later.
    _log(conn, 3, [200.0 + t for t in range(15)])
    clock.t = 29.0
    assert not tracker.due() and tracker.owed == 0
    clock.t = 30.0
    assert tracker.due()
    tracker.check(conn)
    assert tracker.owed == 15
    tracker.step(conn, limit=1000)
    oldest = conn.execute("SELECT min(time) FROM decisions").fetchone()[0]
    assert counts(conn)["decisions"] == 100 and oldest == 25.0  # the oldest 25 of run 1 went, in two steps


def test_deleting_the_oldest_keeps_a_newer_row_inside_an_old_runs_id_range(conn: sqlite3.Connection) -> None:
    # Ids grow with time within a run, except where a caller gave times of its own:
    # deleting by id range must still take exactly the oldest by time.
    lo = run_id_range(1)[0]
    conn.executemany(
        "INSERT INTO decisions (id, time) VALUES (?, ?)", [(lo + 1, 1.0), (lo + 2, 50.0), (lo + 3, 2.0), (lo + 4, 3.0)]
    )
    result = delete_oldest(conn, 2)
    assert result.deleted_decisions == 2
    assert [r[0] for r in conn.execute("SELECT time FROM decisions ORDER BY time")] == [3.0, 50.0]


def test_rows_drained_at_close_are_kept_within_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    policy = RetentionPolicy(max_rows=300)
    # The writer sleeps until close: every row is written by the closing drain.
    log = DecisionLog(path, flush_rows=100_000, queue_size=100_000, flush_interval_s=3600, retention=policy)
    run = log.start_run()
    for seq in range(1, 3001):
        d = make_decision(run, seq)
        log.decision(d)
        log.outcome(d.id, 1e-3)
    log.close()
    assert log.stats.written == 6000
    assert counts(path)["decisions"] == 300


def test_the_config_sets_the_check_interval_and_a_scheduler_keeps_its_log_to_the_limit(tmp_path: Path) -> None:
    from adaptive_sched import Scheduler, Shape
    from adaptive_sched.config import load_config
    from adaptive_sched.errors import ConfigError

    from .conftest import TablePrior, base_config

    store = {"retention": {"max_rows": 300, "check_every_s": 2.5}, "flush_rows": 256, "on_full": "block"}
    assert load_config(base_config(store=store)).store.retention.check_every_s == 2.5
    assert load_config(base_config()).store.retention.check_every_s == RetentionPolicy().check_every_s
    with pytest.raises(ConfigError, match=r"store\.retention\.check_every_s"):
        load_config(base_config(store={"retention": {"check_every_s": "often"}}))
    path = tmp_path / "log.db"
    prior = TablePrior({("qkv", "gpu"): 1e-3, ("qkv", "npu"): 2e-3, ("attn", "gpu"): 1e-3, ("attn", "npu"): 2e-3})
    shape = Shape(n=1, d=128, kv_len=6, heads=2)
    with Scheduler.from_config(base_config(store=store), db=str(path), prior=prior) as sched:
        for _ in range(3000):
            d = sched.decide("qkv", shape)
            sched.observe(d, latency_s=1e-3)
    assert counts(path)["decisions"] <= 300 + 256
