"""Reading the log back: joined records, filters, runs, counts and the warm-start feed."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest

from adaptive_sched.errors import StoreError
from adaptive_sched.store import connection
from adaptive_sched.store.connection import open_database
from adaptive_sched.store.reads import LoggedDecision, counts, iter_logged, last_run, recent_for_warm_start, runs
from adaptive_sched.store.schema import SCHEMA_VERSION
from adaptive_sched.store.writer import DecisionLog
from adaptive_sched.types import Backend, Decision, Stage

from .test_store_support import digest, make_decision, read_only


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, int, list[Decision]]:
    """Two runs: run A (device a) at t = 1000..1099, run B (device b) at t = 2000..2049."""
    path = tmp_path_factory.mktemp("reads") / "log.db"
    decisions: list[Decision] = []
    with DecisionLog(path) as log:
        run_a = log.start_run(device_profile="a", config='{"k": 1}')
        for i in range(1, 101):
            d = make_decision(run_a, i, explored=i % 10 == 0, t=1000.0 + i)
            decisions.append(d)
            log.decision(d, {"temp_c": 50.0 + i} if i == 5 else None)
            if i % 4:  # every fourth decision has no outcome
                ok = i % 7 != 0
                log.outcome(d.id, 1e-3 * i if ok else math.nan, ok=ok, error=None if ok else "boom", time=1000.5 + i)
        run_b = log.start_run(device_profile="b")
        for i in range(1, 51):
            d = make_decision(run_b, i, t=2000.0 + i)
            decisions.append(d)
            log.decision(d)
            log.outcome(d.id, 2e-3)
    return path, run_a, run_b, decisions


def test_records_join_decisions_and_outcomes(logged) -> None:
    path, run_a, _, decisions = logged
    records = list(iter_logged(path))
    assert len(records) == 150
    assert [r.time for r in records] == sorted(r.time for r in records)  # oldest first
    by_id = {r.id: r for r in records}
    d5 = decisions[4]
    r5 = by_id[d5.id]
    assert isinstance(r5, LoggedDecision)
    assert (r5.run, r5.stage, r5.shape, r5.backend, r5.after) == (run_a, d5.stage, d5.shape, d5.backend, d5.after)
    assert (r5.propensity, r5.explored, r5.policy_version, r5.sample_rate) == (0.95, False, 7, 1.0)
    assert dict(r5.predicted) == {Backend.GPU: 2e-3, Backend.NPU: 1e-3}
    assert r5.context == {"temp_c": 55.0}
    assert (r5.latency_s, r5.ok, r5.error, r5.observed_at, r5.observed) == (5e-3, True, None, 1005.5, True)
    assert r5.as_decision() == d5
    r4 = by_id[decisions[3].id]
    assert (r4.latency_s, r4.ok, r4.observed) == (None, None, False)
    r7 = by_id[decisions[6].id]
    assert (r7.latency_s, r7.ok, r7.error) == (None, False, "boom")


def test_filters(logged) -> None:
    path, run_a, run_b, _ = logged
    a = list(iter_logged(path, run=run_a))
    assert len(a) == 100 and {r.run for r in a} == {run_a}
    assert [r.id for r in a] == sorted(r.id for r in a)
    assert {r.stage for r in iter_logged(path, stage="attn")} == {Stage.ATTN}
    assert len(list(iter_logged(path, stage=Stage.QKV, run=run_b))) == 25
    assert [r.time for r in iter_logged(path, since=1098.0, until=2002.0)] == [1098.0, 1099.0, 1100.0, 2001.0]
    observed = list(iter_logged(path, observed_only=True))
    assert len(observed) == 75 + 50 and all(r.observed for r in observed)
    ok = list(iter_logged(path, ok_only=True))
    assert all(r.ok for r in ok) and len(ok) == len(observed) - sum(1 for i in range(1, 101) if i % 4 and i % 7 == 0)


def test_runs_last_run_and_counts(logged) -> None:
    path, run_a, run_b, _ = logged
    rs = runs(path)
    assert [r.id for r in rs] == [run_a, run_b]
    assert (rs[0].device_profile, rs[0].config) == ("a", '{"k": 1}')
    assert rs[0].pid is not None and rs[0].host and rs[0].package_version
    assert last_run(path).id == run_b  # type: ignore[union-attr]
    failed = sum(1 for i in range(1, 101) if i % 4 and i % 7 == 0)
    assert counts(path) == {"runs": 2, "decisions": 150, "explored": 10, "outcomes": 125, "failed": failed}
    assert counts(path, run=run_b) == {"runs": 2, "decisions": 50, "explored": 0, "outcomes": 50, "failed": 0}


def test_warm_start_feed_is_the_newest_successes_of_the_device_oldest_first(logged) -> None:
    path, run_a, _, decisions = logged
    feed = list(recent_for_warm_start(path, device="a", limit=5))
    expected = [d for i, d in enumerate(decisions[:100], start=1) if i % 4 and i % 7][-5:]
    assert [d for d, _ in feed] == expected
    assert [lat for _, lat in feed] == [pytest.approx(1e-3 * (d.id - (run_a << 32))) for d in expected]
    assert len(list(recent_for_warm_start(path, device="b", limit=1000))) == 50
    assert list(recent_for_warm_start(path, device="nowhere")) == []
    assert list(recent_for_warm_start(path.parent / "missing.db", device="a")) == []


def test_sources_can_be_paths_connections_or_databases(logged) -> None:
    path, *_ = logged
    conn = sqlite3.connect(path)
    assert counts(conn)["decisions"] == 150
    assert len(list(iter_logged(conn, observed_only=True))) == 125
    conn.execute("SELECT 1")  # still open: not ours to close
    conn.close()
    db = open_database(path, readonly=True)
    assert last_run(db) is not None
    db.close()


def test_reading_never_changes_the_file(logged) -> None:
    path, *_ = logged
    before = digest(path)
    list(iter_logged(path))
    runs(path)
    counts(path)
    assert digest(path) == before


def test_iteration_streams(logged) -> None:
    path, *_ = logged
    it = iter_logged(path)
    first = next(it)
    assert first.time == 1001.0
    it.close()  # releases the connection


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such database"):
        list(iter_logged(tmp_path / "missing.db"))
    future = tmp_path / "future.db"
    open_database(future).close()
    conn = sqlite3.connect(future)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=f"{future}: schema version"):
        runs(future)
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.execute("CREATE TABLE decisions (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=f"{other}: an SQLite database of another application"):
        runs(other)


# -- read-only media -------------------------------------------------------------------------------
def _log_with_rows(path: Path, n: int) -> None:
    with DecisionLog(path) as log:
        run = log.start_run()
        for seq in range(1, n + 1):
            d = make_decision(run, seq)
            log.decision(d)
            log.outcome(d.id, 1e-3)


def test_a_wal_log_on_read_only_media_is_read(tmp_path: Path) -> None:
    directory = tmp_path / "media"
    directory.mkdir()
    path = directory / "log.db"
    _log_with_rows(path, 50)
    before = digest(path)
    with read_only(directory):
        # mode=ro alone fails here ("unable to open database file"): SQLite cannot create the
        # -shm index a WAL reader needs, so the log is opened immutable.
        assert counts(path)["decisions"] == 50
        assert len(list(iter_logged(path))) == 50
        assert runs(path)[0].id == 1
        assert sorted(p.name for p in directory.iterdir()) == ["log.db"]
    assert digest(path) == before


def test_on_read_only_media_a_wal_that_cannot_be_read_is_named_in_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    live, directory = tmp_path / "live.db", tmp_path / "media"
    directory.mkdir()
    _log_with_rows(live, 10)
    conn = sqlite3.connect(live, isolation_level=None)
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("INSERT INTO runs (id) VALUES (99)")  # committed to the WAL only
    path = directory / "log.db"
    shutil.copy(live, path)  # a copy of a live log, WAL and all, on a read-only card
    shutil.copy(f"{live}-wal", f"{path}-wal")
    conn.close()
    with read_only(directory):
        with caplog.at_level("WARNING", logger="adaptive_sched.store.schema"):
            assert counts(path)["decisions"] == 10
        assert f"{path}-wal" in caplog.text and "missing" in caplog.text


def test_the_immutable_fallback_is_taken_only_where_the_file_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback on its own, on any machine: mode=ro failing as it does on read-only media."""
    path = tmp_path / "log.db"
    _log_with_rows(path, 5)
    real = connection._raw_connect

    class NoShm:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def execute(self, *args: object) -> sqlite3.Cursor:
            exc = sqlite3.OperationalError("unable to open database file")
            exc.sqlite_errorname = "SQLITE_CANTOPEN"  # type: ignore[attr-defined]
            raise exc

        def close(self) -> None:
            self.conn.close()

    def connect(path: Path, **kwargs: object) -> object:
        conn = real(path, **kwargs)  # type: ignore[arg-type]
        return NoShm(conn) if kwargs["readonly"] else conn

    monkeypatch.setattr(connection, "_raw_connect", connect)
    with pytest.raises(StoreError, match="unable to open"):
        counts(path)  # writable here: the error is real, not read-only media
    monkeypatch.setattr(connection, "_writable", lambda p: False)
    assert counts(path)["decisions"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.db"]
