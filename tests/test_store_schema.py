"""The log schema: creation, migration, and files that must be refused without being touched."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from adaptive_sched.errors import StoreError
from adaptive_sched.store import schema
from adaptive_sched.store.schema import SCHEMA_VERSION, allocate_run, connect, open_database, run_id_range
from adaptive_sched.store.writer import DecisionLog

from .test_store_support import digest


def test_new_file_gets_the_current_schema(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    db = open_database(path)
    conn = db.conn
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"meta", "runs", "decisions", "outcomes", "profiles", "priors"} <= tables
    assert [r[1] for r in conn.execute("PRAGMA table_info(decisions)")] == list(schema.DECISION_COLUMNS)
    assert [r[1] for r in conn.execute("PRAGMA table_info(outcomes)")] == list(schema.OUTCOME_COLUMNS)
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "idx_decisions_time" in indexes
    assert "idx_decisions_run" not in indexes and "idx_outcomes_time" not in indexes
    assert dict(conn.execute("SELECT key, value FROM meta").fetchall())["schema_version"] == str(SCHEMA_VERSION)
    db.close()
    # Opening again changes nothing.
    open_database(path).close()


def test_version_1_file_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    import sqlite_utils

    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    db = sqlite_utils.Database(conn)
    schema.MIGRATIONS[1](db)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO decisions (id, run, time, stage) VALUES (?, 1, 5.0, 'qkv')", (1 << 32 | 1,))
    conn.commit()
    conn.close()
    db2 = open_database(path)
    assert db2.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db2.conn.execute("SELECT id, stage FROM decisions").fetchall() == [(1 << 32 | 1, "qkv")]
    indexes = {r[0] for r in db2.conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "idx_decisions_run" not in indexes
    assert db2.conn.execute("SELECT count(*) FROM logged").fetchone()[0] == 1
    db2.close()


def test_run_ids_are_never_reused(tmp_path: Path) -> None:
    conn = connect(tmp_path / "log.db", isolation_level=None)
    first = allocate_run(conn, {"host": "a"})
    second = allocate_run(conn, {"host": "b"})
    assert second == first + 1
    # Decisions of a run whose row was deleted still reserve its id.
    conn.execute("INSERT INTO decisions (id, time) VALUES (?, 1.0)", (run_id_range(second + 5)[0] + 3,))
    conn.execute("DELETE FROM runs")
    conn.execute("DELETE FROM meta WHERE key = 'last_run_id'")
    assert allocate_run(conn, {}) == second + 6
    conn.execute("DELETE FROM decisions")
    conn.execute("DELETE FROM runs")
    # ... and so does the meta table once every trace of the run is gone.
    assert allocate_run(conn, {}) == second + 7
    conn.close()


def test_run_id_range() -> None:
    lo, hi = run_id_range(5)
    assert lo == 5 << 32 and hi == (6 << 32) - 1


# -- files that must be refused, untouched ---------------------------------------------------------
def _refused(path: Path, match: str) -> None:
    before = digest(path)
    for opener in (open_database, lambda p: DecisionLog(p)):
        with pytest.raises(StoreError, match=match) as info:
            opener(path)
        assert str(path) in str(info.value)
    assert digest(path) == before
    assert not Path(f"{path}-wal").exists()


def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("my precious notes\n" * 100)
    _refused(path, "not an SQLite database")


def test_a_corrupt_sqlite_file_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    path.write_bytes(schema.SQLITE_MAGIC + os.urandom(8000))
    _refused(path, "not an SQLite database, or a damaged one")


def test_a_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)  # a rollback-journal file: setting WAL would rewrite its header
    conn.execute("CREATE TABLE decisions (id INTEGER PRIMARY KEY, hologram BLOB)")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    _refused(path, f"schema version {SCHEMA_VERSION + 1} is newer")


def test_another_applications_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers VALUES (1, 'ada')")
    conn.commit()
    conn.close()
    _refused(path, "another application")


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "log.db"
    with pytest.raises(StoreError, match="does not exist") as info:
        DecisionLog(path)
    assert str(path) in str(info.value)
    assert not path.parent.exists()


def test_a_directory_is_not_a_database(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is a directory"):
        DecisionLog(tmp_path)


def _make_read_only(directory: Path) -> str:
    """Make ``directory`` unwritable, even for root; returns how (or '' if impossible here)."""
    directory.chmod(0o555)
    probe = directory / ".probe"
    try:
        probe.touch()
    except PermissionError:
        return "chmod"
    probe.unlink()
    # root ignores permission bits; the immutable attribute stops it.
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode == 0:
        return "chattr"
    directory.chmod(0o755)
    return ""


def _undo_read_only(directory: Path, how: str) -> None:
    if how == "chattr":
        subprocess.run(["chattr", "-i", str(directory)], check=True)
    directory.chmod(0o755)


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "existing-log"])
def test_a_read_only_location_is_an_error_naming_the_file(tmp_path: Path, existing: bool) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    path = directory / "log.db"
    if existing:
        open_database(path).close()  # a closed WAL log leaves no -wal/-shm behind
        assert not Path(f"{path}-shm").exists()
        before = digest(path)
    how = _make_read_only(directory)
    if not how:
        pytest.skip("cannot make a directory read-only here (root without chattr)")
    try:
        with pytest.raises(StoreError) as info:
            DecisionLog(path)
        message = str(info.value)
        assert str(path) in message
        assert "read-only" in message or "not writable" in message
    finally:
        _undo_read_only(directory, how)
    if existing:
        assert digest(path) == before
    else:
        assert not path.exists()


def test_readonly_open_never_creates(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such database"):
        open_database(tmp_path / "missing.db", readonly=True)
    assert not (tmp_path / "missing.db").exists()


def test_a_full_disk_while_creating_the_schema_is_an_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = schema._raw_connect

    def tiny_disk(*args, **kwargs):
        conn = real(*args, **kwargs)
        conn.execute("PRAGMA max_page_count = 2")  # room for the header and little else
        return conn

    monkeypatch.setattr(schema, "_raw_connect", tiny_disk)
    path = tmp_path / "log.db"
    with pytest.raises(StoreError, match="full") as info:
        DecisionLog(path)
    assert str(path) in str(info.value)
    monkeypatch.undo()
    # Nothing half-made was left behind: the next open creates the whole schema.
    with DecisionLog(path) as log:
        log.start_run()
