"""The background writer: what it stores, how it flushes, and how it survives bad rows and bad disks."""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
import threading
from pathlib import Path

import pytest

from adaptive_sched.errors import StoreError
from adaptive_sched.features import feature_vector
from adaptive_sched.store import batches, log_file
from adaptive_sched.store.rows import INSERT_DECISION_COLUMNS, keeps_exploit
from adaptive_sched.store.writer import DecisionLog, LogStats
from adaptive_sched.types import Backend, Choice, Decision, Shape, Stage

from .test_store_support import count, make_decision, wait_until


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "log.db"


@contextlib.contextmanager
def stalled(log: DecisionLog):
    """Hold the writer back before it takes rows off the queues (a slow disk, say)."""
    go = threading.Event()
    take = log._take_and_write

    def waiting(n_d: int, n_o: int) -> None:
        go.wait()
        take(n_d, n_o)

    log._take_and_write = waiting  # type: ignore[method-assign]
    try:
        yield
    finally:
        go.set()


def test_decisions_and_outcomes_round_trip(path: Path) -> None:
    with DecisionLog(path) as log:
        run = log.start_run(host="h", config_hash="abc", device_profile="rk3588", package_version="9", config="{}")
        assert log.run_id == run
        d1 = make_decision(run, 1)
        d2 = make_decision(run, 2, explored=True)
        log.decision(d1, {"gpu_temp_c": 61.5})
        log.decision(d2)
        log.outcome(d1.id, 0.0015, time=123.0)
        log.outcome(d2.id, math.nan, ok=False, error="npu timeout")
        assert log.flush() is True
        stats = log.stats
    assert isinstance(stats, LogStats)
    assert (stats.enqueued, stats.written, stats.dropped, stats.errors, stats.queue_depth) == (4, 4, 0, 0, 0)
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    rows = {r["id"]: dict(r) for r in conn.execute("SELECT * FROM decisions")}
    r1 = rows[d1.id]
    assert r1["run"] == run and r1["time"] == d1.time
    assert (r1["stage"], r1["backend"], r1["after"]) == ("qkv", "gpu", None)
    shape = d1.shape
    assert (r1["n"], r1["d"], r1["kv_len"], r1["batch"], r1["heads"], r1["precision"]) == (
        shape.n, shape.d, shape.kv_len, shape.batch, shape.heads, "int8",
    )  # fmt: skip
    assert (r1["propensity"], r1["explored"], r1["policy_version"], r1["sample_rate"]) == (0.95, 0, 7, 1.0)
    assert (r1["pred_cpu"], r1["pred_gpu"], r1["pred_npu"]) == (None, 2e-3, 1e-3)
    features = feature_vector(Stage.QKV, shape)[3:10]
    assert tuple(r1[c] for c in INSERT_DECISION_COLUMNS[-7:]) == features
    assert r1["context"] == '{"gpu_temp_c":61.5}'
    r2 = rows[d2.id]
    assert (r2["stage"], r2["backend"], r2["after"], r2["explored"], r2["context"]) == ("attn", "npu", "gpu", 1, None)
    outcomes = {r["decision_id"]: dict(r) for r in conn.execute("SELECT * FROM outcomes")}
    assert outcomes[d1.id] == {"decision_id": d1.id, "time": 123.0, "latency_s": 0.0015, "ok": 1, "error": None}
    o2 = outcomes[d2.id]
    assert (o2["latency_s"], o2["ok"], o2["error"]) == (None, 0, "npu timeout")
    run_row = dict(conn.execute("SELECT * FROM runs").fetchone())
    assert (run_row["host"], run_row["device_profile"], run_row["package_version"]) == ("h", "rk3588", "9")
    conn.close()


def test_decision_without_time_is_stamped(path: Path) -> None:
    with DecisionLog(path) as log:
        d = Decision.of(7, Stage.ATTN, Shape(n=4, d=128), Backend.CPU, 1.0)
        assert d.time == 0.0
        log.decision(d)
    conn = sqlite3.connect(path)
    (t,) = conn.execute("SELECT time FROM decisions").fetchone()
    assert t > 1.6e9  # a Unix time, not 0


def test_rows_are_committed_by_time_without_flush(path: Path) -> None:
    with DecisionLog(path, flush_rows=10_000, flush_interval_s=0.05) as log:
        run = log.start_run()
        for i in range(1, 11):
            log.decision(make_decision(run, i))
        assert wait_until(lambda: count(path, "decisions") == 10)


def test_rows_are_committed_by_count_without_flush(path: Path) -> None:
    with DecisionLog(path, flush_rows=100, flush_interval_s=3600) as log:
        run = log.start_run()
        for i in range(1, 101):
            log.decision(make_decision(run, i))
        assert wait_until(lambda: count(path, "decisions") == 100)


def test_close_flushes_and_is_idempotent(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = DecisionLog(path, flush_interval_s=3600)
    run = log.start_run()
    for i in range(1, 501):
        d = make_decision(run, i)
        log.decision(d)
        log.outcome(d.id, 1e-3)
    log.close()
    log.close()
    assert log.closed
    assert count(path, "decisions") == 500 and count(path, "outcomes") == 500
    # Logging after close never raises: the rows are counted as dropped (and reported).
    with caplog.at_level(logging.WARNING, logger="adaptive_sched.store.writer"):
        log.decision(make_decision(run, 501))
        log.outcome(1, 1e-3)
    assert log.stats.dropped == 2
    assert log.flush(timeout_s=1) is True
    with pytest.raises(StoreError, match="closed"):
        log.start_run()


def test_bad_parameters_name_themselves(path: Path) -> None:
    cases = {
        "queue_size": {"queue_size": 0},
        "flush_rows": {"flush_rows": 1.5},
        "flush_interval_s": {"flush_interval_s": 0},
        "on_full": {"on_full": "wait"},
        "exploit_sample_rate": {"exploit_sample_rate": 0.0},
        "retention": {"retention": {"max_rows": 5}},
    }
    for name, kwargs in cases.items():
        with pytest.raises(ValueError, match=name):
            DecisionLog(path, **kwargs)
    with pytest.raises(ValueError, match="exploit_sample_rate"):
        DecisionLog(path, exploit_sample_rate=1.5)


def test_full_queue_drops_new_rows_and_counts_them(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="adaptive_sched.store.writer")
    with DecisionLog(path, queue_size=10, flush_rows=5) as log:
        run = log.start_run()
        with stalled(log):
            for i in range(1, 51):
                log.decision(make_decision(run, i))
            assert log.stats.dropped == 40
        assert log.flush() is True
        assert log.stats.written == 10
    ids = {r[0] & 0xFFFFFFFF for r in sqlite3.connect(path).execute("SELECT id FROM decisions")}
    assert ids == set(range(1, 11))  # the oldest rows are kept, the new ones dropped
    assert any("dropped 40 rows" in r.getMessage() for r in caplog.records)


def test_full_queue_blocks_with_on_full_block(path: Path) -> None:
    with DecisionLog(path, queue_size=10, flush_rows=5, on_full="block") as log:
        run = log.start_run()

        def produce() -> None:
            for i in range(1, 101):
                d = make_decision(run, i)
                log.decision(d)
                log.outcome(d.id, 1e-3)

        producer = threading.Thread(target=produce)
        with stalled(log):
            producer.start()
            producer.join(0.3)
            assert producer.is_alive()  # waiting for room, not dropping
        producer.join(60)
        assert not producer.is_alive()
        assert log.flush() is True
        stats = log.stats
    assert (stats.written, stats.dropped) == (200, 0)


def test_bad_rows_are_rejected_alone(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="adaptive_sched.store.writer")
    with DecisionLog(path) as log:
        run = log.start_run()
        good = [make_decision(run, i) for i in range(1, 6)]
        log.decision(good[0])
        log.decision("not a decision")  # type: ignore[arg-type]
        log.decision(good[1])
        # hand-built, skipping validation
        log.decision(good[2]._replace(choice=good[2].choice._replace(propensity=7.0)))
        for d in good[3:]:
            log.decision(d)
        log.outcome(good[0].id, 1e-3)
        log.outcome("abc", 1e-3)  # type: ignore[arg-type]
        log.outcome(good[1].id, {"latency": 1})  # type: ignore[arg-type]
        log.outcome(good[3].id, 2e-3)
        assert log.flush() is True
        stats = log.stats
    assert stats.rejected == 4
    assert stats.written == 4 + 2
    assert count(path, "decisions") == 4 and count(path, "outcomes") == 2
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "rejected" in messages


def test_duplicate_ids_keep_the_first_row(path: Path) -> None:
    with DecisionLog(path) as log:
        run = log.start_run()
        d = make_decision(run, 1)
        log.decision(d)
        log.decision(d._replace(choice=d.choice._replace(backend=Backend.NPU)))
        log.outcome(d.id, 1e-3)
        log.outcome(d.id, 5e-3)
        log.flush()
        assert (log.stats.written, log.stats.duplicates) == (2, 2)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT backend FROM decisions").fetchall() == [("gpu",)]
    assert conn.execute("SELECT latency_s FROM outcomes").fetchall() == [(1e-3,)]


def test_a_full_disk_never_raises_and_logging_resumes(
    path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(batches, "RETRY_BACKOFF_S", (0.001, 0.001))
    writer_connections: list[sqlite3.Connection] = []
    real_connect = log_file.connect

    def connect(p, **kwargs):
        conn = real_connect(p, **kwargs)
        if kwargs.get("migrate") is False:  # the writer's own connection
            writer_connections.append(conn)
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {pages + 8}")  # the disk fills after ~8 pages
        return conn

    monkeypatch.setattr(log_file, "connect", connect)
    caplog.set_level(logging.WARNING, logger="adaptive_sched.store.writer")
    with DecisionLog(path, flush_rows=200) as log:
        run = log.start_run()
        for i in range(1, 3001):
            d = make_decision(run, i)
            log.decision(d)  # never raises
            log.outcome(d.id, 1e-3)
        assert log.flush() is False  # some rows could not be written
        stats = log.stats
        assert stats.failed > 0 and stats.errors > 0
        assert "full" in (stats.last_error or "")
        assert log._thread.is_alive()
        # Space comes back: the writer carries on.
        writer_connections[0].execute("PRAGMA max_page_count = 1000000")
        for i in range(3001, 3101):
            log.decision(make_decision(run, i))
        assert log.flush() is True
        after = log.stats
    assert after.written == stats.written + 100
    assert any("could not write" in r.getMessage() for r in caplog.records)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT count(*) FROM decisions").fetchone()[0] + count(path, "outcomes") == after.written


def test_exploit_sampling_keeps_explored_rows_and_outcomes_follow_decisions(path: Path) -> None:
    rate = 0.3
    with DecisionLog(path, exploit_sample_rate=rate, flush_rows=97) as log:
        run = log.start_run()
        decisions = [make_decision(run, i, explored=i % 10 == 0) for i in range(1, 3001)]
        for d in decisions:
            log.decision(d)
            log.outcome(d.id, 1e-3)
        log.flush()
        stats = log.stats
    conn = sqlite3.connect(path)
    kept = dict(conn.execute("SELECT id, sample_rate FROM decisions").fetchall())
    expected = {d.id for d in decisions if d.explored or keeps_exploit(d.id, rate)}
    assert set(kept) == expected
    assert all(kept[d.id] == 1.0 for d in decisions if d.explored)
    assert all(kept[d.id] == rate for d in decisions if not d.explored and d.id in kept)
    # Every kept decision has its outcome; no outcome lost its decision.
    assert {r[0] for r in conn.execute("SELECT decision_id FROM outcomes")} == expected
    exploit = [d for d in decisions if not d.explored]
    assert 0.2 < sum(d.id in kept for d in exploit) / len(exploit) < 0.4
    assert stats.sampled_out == 2 * (len(decisions) - len(expected))
    assert stats.written == 2 * len(expected)


def test_explored_rows_the_hash_would_drop_keep_their_outcome_across_batches(path: Path) -> None:
    with DecisionLog(path, exploit_sample_rate=0.01) as log:
        run = log.start_run()
        explored = [make_decision(run, i, explored=True) for i in range(1, 200)]
        assert any(not keeps_exploit(d.id, 0.01) for d in explored)
        for d in explored:
            log.decision(d)
        log.flush()  # the outcomes arrive in a later batch
        for d in explored:
            log.outcome(d.id, 1e-3)
        log.flush()
    assert count(path, "decisions") == count(path, "outcomes") == len(explored)


def test_logs_from_many_threads(path: Path) -> None:
    with DecisionLog(path, on_full="block", queue_size=1000, flush_rows=100) as log:
        run = log.start_run()

        def produce(k: int) -> None:
            for i in range(1, 2001):
                d = make_decision(run, k * 10_000 + i)
                log.decision(d)
                log.outcome(d.id, 1e-3)

        threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert log.flush() is True
        assert log.stats.written == 16_000
    assert count(path, "decisions") == 8000 and count(path, "outcomes") == 8000


def test_flush_times_out_rather_than_hang(path: Path) -> None:
    with DecisionLog(path) as log:
        run = log.start_run()
        with stalled(log):
            log.decision(make_decision(run, 1))
            assert log.flush(timeout_s=0.05) is False
        assert log.flush() is True


def test_shape_columns_survive_the_shape_cache_starting_over(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from adaptive_sched.store import rows as rows_module

    monkeypatch.setattr(rows_module, "_CACHE_LIMIT", 3)  # start over every few shapes
    shapes = [Shape(n=1 + i % 5, d=64 * (1 + i % 7), kv_len=i % 11) for i in range(300)]
    with DecisionLog(path, flush_rows=40) as log:
        run = log.start_run()
        decisions = [
            Decision.of(run << 32 | i, Stage.QKV if i % 3 else Stage.ATTN, shape, Backend.GPU, 1.0)
            for i, shape in enumerate(shapes, start=1)
        ]
        for d in decisions:
            log.decision(d)
        assert log.flush() is True
        assert log.stats.written == len(decisions)
        shape_rows = log._file.wconn.execute("SELECT count(*) FROM temp.adaptive_sched_shapes").fetchone()[0]
        assert shape_rows < 300  # old keys are deleted once no pending row needs them
    conn = sqlite3.connect(path)
    stored = {r[0]: r[1:] for r in conn.execute("SELECT id, stage, n, d, kv_len, f_flops, f_pad_d FROM decisions")}
    for d in decisions:
        f = feature_vector(d.stage, d.shape)
        assert stored[d.id] == (d.stage.value, d.shape.n, d.shape.d, d.shape.kv_len, f[3], f[9])


def test_the_writer_knows_the_decision_layout() -> None:
    # The writer unpacks decisions positionally (fast): a new field must be added there too.
    assert Decision._fields == ("id", "stage", "shape", "choice", "after", "time", "usable")
    assert Choice._fields == ("backend", "propensity", "explored", "predicted", "probabilities", "version", "entry")
