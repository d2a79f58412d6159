"""The log schema: creation, migration, and files that must be refused without being touched."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from adaptive_sched.errors import StoreError
from adaptive_sched.store import connection, ownership, schema
from adaptive_sched.store.connection import connect, open_database
from adaptive_sched.store.reads import counts, iter_logged
from adaptive_sched.store.runs import allocate_run
from adaptive_sched.store.schema import SCHEMA_VERSION, run_id_range
from adaptive_sched.store.writer import DecisionLog

from .test_store_support import digest, make_decision, read_only

DATA = Path(__file__).parent / "data"


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
    assert conn.execute("PRAGMA application_id").fetchone()[0] == ownership.APPLICATION_ID
    db.close()
    # Opening again changes nothing.
    open_database(path).close()


def _legacy_log(path: Path, version: int) -> Path:
    """A log as version ``version`` of adaptive_sched wrote it (rebuilt from tests/data)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")  # as every version did, before creating the schema
    conn.executescript((DATA / f"legacy-log-v{version}.sql").read_text())
    conn.close()
    return path


@pytest.mark.parametrize("version", ownership.LEGACY_VERSIONS)
def test_a_log_of_an_earlier_version_is_read_as_it_is_then_marked_and_migrated(tmp_path: Path, version: int) -> None:
    path = _legacy_log(tmp_path / f"v{version}.db", version)
    before = digest(path)
    assert ownership.inspect_file(path) == ownership.Inspection("legacy", version)
    # Reading leaves it as it was ...
    logged = list(iter_logged(path))
    assert [(r.stage.value, r.backend.value, r.latency_s) for r in logged] == [
        ("qkv", "gpu", 1.2e-3), ("attn", "npu", 0.7e-3), ("qkv", "npu", 1.5e-3),
    ]  # fmt: skip
    assert digest(path) == before
    # ... and writing marks it, in the transaction that migrates it.
    with DecisionLog(path) as log:
        run = log.start_run()
        log.decision(make_decision(run, 1))
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == ownership.APPLICATION_ID
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [r[1] for r in conn.execute("PRAGMA table_info(decisions)")] == list(schema.DECISION_COLUMNS)
    assert dict(conn.execute("SELECT key, value FROM meta").fetchall())["schema_version"] == str(SCHEMA_VERSION)
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "idx_decisions_run" not in indexes
    assert conn.execute("SELECT count(*) FROM logged").fetchone()[0] == 4
    conn.close()
    assert run == 2  # run ids go on from the old log's
    assert ownership.inspect_file(path) == ownership.Inspection("ours", SCHEMA_VERSION)


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
    """Every way of opening ``path`` refuses it, naming it, and leaves every byte (and no -wal) behind."""
    before = digest(path)
    openers = (
        open_database,
        lambda p: DecisionLog(p),
        lambda p: open_database(p, readonly=True),
        lambda p: counts(p),
        lambda p: list(iter_logged(p)),
    )
    for opener in openers:
        with pytest.raises(StoreError, match=match) as info:
            opener(path)
        assert str(path) in str(info.value)
        assert digest(path) == before
    assert not Path(f"{path}-wal").exists()
    assert not Path(f"{path}-journal").exists()


def _sqlite(path: Path, *statements: str) -> Path:
    conn = sqlite3.connect(path, isolation_level=None)  # a rollback-journal file: WAL would rewrite its header
    for sql in statements:
        conn.execute(sql)
    conn.close()
    return path


def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("my precious notes\n" * 100)
    _refused(path, "not an SQLite database")


def test_a_corrupt_sqlite_file_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    path.write_bytes(schema.SQLITE_MAGIC + bytes(range(256)) * 31 + b"\x00" * 64)
    _refused(path, "not an SQLite database, or a damaged one")


def test_a_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    open_database(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.execute("ALTER TABLE decisions ADD COLUMN hologram BLOB")
    conn.commit()
    conn.close()
    _refused(path, f"schema version {SCHEMA_VERSION + 1} is newer")


_V1 = (DATA / "legacy-log-v1.sql").read_text()

#: other applications' databases, each refused untouched: (id, statements, what the message says)
FOREIGN = [
    ("own-tables", ["CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)",
                    "INSERT INTO customers VALUES (1, 'ada')"], "tables customers"),
    ("a-decisions-table", ["CREATE TABLE decisions (id INTEGER PRIMARY KEY, verdict TEXT)",
                           "INSERT INTO decisions VALUES (1, 'guilty')"], "user_version 0"),
    ("a-meta-table", ["CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
                      "INSERT INTO meta VALUES ('schema_version', '1')", "PRAGMA user_version = 1"], "no table"),
    ("a-runs-table", ["CREATE TABLE runs (id INTEGER PRIMARY KEY, km REAL)", "INSERT INTO runs VALUES (1, 5.0)"],
     "user_version 0"),
    ("user-version-1", ["CREATE TABLE notes (body TEXT)", "PRAGMA user_version = 1"], "tables notes"),
    ("our-six-tables-but-its-own-columns", [
        *(f"CREATE TABLE {t} (key TEXT PRIMARY KEY, value TEXT)" for t in sorted(schema.KNOWN_TABLES)),
        "INSERT INTO meta VALUES ('schema_version', '1')", "PRAGMA user_version = 1"], "has columns key, value"),
    ("a-v1-log-whose-meta-says-otherwise", [
        "UPDATE meta SET value = '2' WHERE key = 'schema_version'"], "meta holds schema_version '2'"),
    ("another-application-id", ["PRAGMA application_id = 1179602503", "CREATE TABLE meta (key, value)",
                                "INSERT INTO meta VALUES ('schema_version', '3')", "PRAGMA user_version = 3"],
     "application_id 0x464f4e47"),
    ("an-empty-database", ["PRAGMA page_size = 4096", "VACUUM"], "an empty database"),
]  # fmt: skip


@pytest.mark.parametrize(("statements", "match"), [f[1:] for f in FOREIGN], ids=[f[0] for f in FOREIGN])
def test_another_applications_database_is_refused_untouched(tmp_path: Path, statements: list[str], match: str) -> None:
    path = tmp_path / "app.db"
    if statements[0].startswith("UPDATE"):  # a faithful version-1 log, then changed
        conn = sqlite3.connect(path, isolation_level=None)
        conn.executescript(_V1)
        conn.close()
    _sqlite(path, *statements)
    assert path.stat().st_size > 0
    _refused(path, match)
    with pytest.raises(StoreError, match="another application"):
        ownership.inspect_file(path)


def test_another_applications_wal_database_keeps_its_bytes_and_its_wal(tmp_path: Path) -> None:
    # Its last transactions are still in its WAL: a writing connection, once closed,
    # would have copied them into the database file (a checkpoint) and deleted the WAL.
    live = tmp_path / "live.db"
    conn = sqlite3.connect(live, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("CREATE TABLE decisions (id INTEGER PRIMARY KEY, verdict TEXT)")
    conn.execute("INSERT INTO decisions VALUES (1, 'guilty')")
    path = tmp_path / "app.db"
    shutil.copy(live, path)  # as a crash would leave it
    shutil.copy(f"{live}-wal", f"{path}-wal")
    conn.close()
    wal = Path(f"{path}-wal")
    before, wal_before = digest(path), digest(wal)
    for opener in (open_database, lambda p: DecisionLog(p), counts):
        with pytest.raises(StoreError, match="another application"):
            opener(path)
    assert (digest(path), digest(wal)) == (before, wal_before)


def test_an_empty_file_is_not_read_as_a_log_but_becomes_one(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    path.touch()
    for reader in (counts, lambda p: open_database(p, readonly=True)):
        with pytest.raises(StoreError, match="an empty file, not a log yet") as info:
            reader(path)
        assert str(path) in str(info.value)
    assert path.stat().st_size == 0
    with DecisionLog(path) as log:
        log.decision(make_decision(log.start_run(), 1))
    assert ownership.inspect_file(path).kind == "ours"
    assert counts(path)["decisions"] == 1


@pytest.mark.parametrize("where", ["/dev/null", "fifo"])
def test_a_path_that_is_not_a_regular_file_is_refused_and_leaves_no_journal(tmp_path: Path, where: str) -> None:
    if where == "fifo":
        path = tmp_path / "log.db"
        os.mkfifo(path)
    else:
        path = Path(where)
    journals = [Path(f"{path}{suffix}") for suffix in ("-journal", "-wal", "-shm")]
    existed = [j.exists() for j in journals]
    for opener in (open_database, lambda p: DecisionLog(p), counts):
        with pytest.raises(StoreError, match="not a regular file") as info:
            opener(path)
        assert str(path) in str(info.value)
    assert [j.exists() for j in journals] == existed


def test_a_symbolic_link_to_nothing_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "log.db"
    target.parent.mkdir()
    link = tmp_path / "log.db"
    link.symlink_to(target)
    with pytest.raises(StoreError, match="symbolic link to a missing file"):
        DecisionLog(link)
    assert list(target.parent.iterdir()) == []


def test_the_wal_of_a_deleted_log_is_not_applied_to_a_new_one(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    with DecisionLog(path) as log:
        log.decision(make_decision(log.start_run(), 1))
    # A crash leaves the WAL behind; then someone deletes the database only.
    Path(f"{path}-wal").write_bytes(b"\x37\x7f\x06\x82" + bytes(4092))
    path.unlink()
    with pytest.raises(StoreError, match="-wal of an earlier database") as info:
        DecisionLog(path)
    assert str(path) in str(info.value)
    assert not path.exists()


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "log.db"
    with pytest.raises(StoreError, match="does not exist") as info:
        DecisionLog(path)
    assert str(path) in str(info.value)
    assert not path.parent.exists()


def test_a_directory_is_not_a_database(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is a directory"):
        DecisionLog(tmp_path)


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "existing-log"])
def test_a_read_only_location_is_an_error_naming_the_file(tmp_path: Path, existing: bool) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    path = directory / "log.db"
    if existing:
        open_database(path).close()  # a closed WAL log leaves no -wal/-shm behind
        assert not Path(f"{path}-shm").exists()
        before = digest(path)
    with read_only(directory):
        with pytest.raises(StoreError) as info:
            DecisionLog(path)
        message = str(info.value)
        assert str(path) in message
        assert "read-only" in message or "not writable" in message
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
    real = connection._raw_connect

    def tiny_disk(*args, **kwargs):
        conn = real(*args, **kwargs)
        conn.execute("PRAGMA max_page_count = 2")  # room for the header and little else
        return conn

    monkeypatch.setattr(connection, "_raw_connect", tiny_disk)
    path = tmp_path / "log.db"
    with pytest.raises(StoreError, match="full") as info:
        DecisionLog(path)
    assert str(path) in str(info.value)
    monkeypatch.undo()
    # Nothing half-made was left behind: the next open creates the whole schema.
    with DecisionLog(path) as log:
        log.start_run()
