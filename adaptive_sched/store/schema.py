"""The SQLite schema of the decision log, created and migrated with sqlite-utils.

Table names and columns are a public contract: dashboards, replay and other tools
query them directly.

``runs``       one row per scheduler process (start time, host, config hash, device profile, version)
``decisions``  one row per stage decision: shape, features, backend, propensity, explored, predictions
``outcomes``   one row per observed decision: latency or error
``profiles``   offline sweep measurements: shape, backend, repetitions, median and spread
``priors``     offline priors: training rows, model spec, content hash, metrics

The schema version is kept in ``PRAGMA user_version`` and mirrored in the ``meta`` table.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlite_utils

from ..errors import StoreError

SCHEMA_VERSION = 1

SQLITE_MAGIC = b"SQLite format 3\x00"

#: derived features stored with each decision (n, d, P, kv_len, batch are shape columns)
DECISION_FEATURE_COLUMNS = ("f_flops", "f_mem_bytes", "f_intensity", "f_ar", "f_score_size", "f_pad_n", "f_pad_d")

#: decision columns in the order the writer inserts them
DECISION_COLUMNS: tuple[str, ...] = (
    "id", "run", "time", "stage", "n", "d", "kv_len", "batch", "heads", "precision",
    "after", "backend", "propensity", "explored", "policy_version",
    "pred_cpu", "pred_gpu", "pred_npu",
    *DECISION_FEATURE_COLUMNS,
    "sample_rate", "context",
)  # fmt: skip

OUTCOME_COLUMNS: tuple[str, ...] = ("decision_id", "time", "latency_s", "ok", "error")

SHAPE_COLUMNS = {"n": int, "d": int, "kv_len": int, "batch": int, "heads": int, "precision": str}


def _create_v1(db: sqlite_utils.Database) -> None:
    db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
    db["runs"].create(
        {
            "id": int,
            "started_at": float,
            "host": str,
            "pid": int,
            "config_hash": str,
            "device_profile": str,
            "package_version": str,
            "config": str,
        },
        pk="id",
        if_not_exists=True,
    )
    columns: dict[str, Any] = {
        "id": int, "run": int, "time": float, "stage": str, **SHAPE_COLUMNS,
        "after": str, "backend": str, "propensity": float, "explored": int, "policy_version": int,
        "pred_cpu": float, "pred_gpu": float, "pred_npu": float,
        **{c: float for c in DECISION_FEATURE_COLUMNS},
        "sample_rate": float, "context": str,
    }  # fmt: skip
    db["decisions"].create(columns, pk="id", if_not_exists=True)
    db["decisions"].create_index(["run"], if_not_exists=True)
    db["decisions"].create_index(["time"], if_not_exists=True)
    db["outcomes"].create(
        {"decision_id": int, "time": float, "latency_s": float, "ok": int, "error": str},
        pk="decision_id",
        if_not_exists=True,
    )
    db["outcomes"].create_index(["time"], if_not_exists=True)
    db["profiles"].create(
        {
            "id": int, "device": str, "executor": str, "backend": str, "stage": str, **SHAPE_COLUMNS,
            "warmup": int, "repetitions": int,
            "median_s": float, "p10_s": float, "p90_s": float, "min_s": float, "max_s": float,
            "ok": int, "error": str, "measured_at": float,
        },
        pk="id",
        if_not_exists=True,
    )  # fmt: skip
    db["profiles"].create_index(
        ["device", "backend", "stage", "n", "d", "kv_len", "batch", "heads", "precision"],
        unique=True,
        if_not_exists=True,
    )
    db["priors"].create(
        {
            "id": int, "name": str, "stage": str, "device": str, "model": str, "params": str,
            "content_hash": str, "training_rows": int, "rows": str, "metrics": str, "created_at": float,
        },
        pk="id",
        if_not_exists=True,
    )  # fmt: skip
    db["priors"].create_index(["name", "stage"], unique=True, if_not_exists=True)


#: version -> function that brings a database from version - 1 to version
MIGRATIONS: dict[int, Callable[[sqlite_utils.Database], None]] = {1: _create_v1}


def check_sqlite_file(path: Path) -> None:
    """Raise :class:`StoreError` if ``path`` exists, is non-empty and is not an SQLite database."""
    if path.is_dir():
        raise StoreError(f"{path}: is a directory, not an SQLite database")
    try:
        with path.open("rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"{path}: cannot read ({exc.strerror})") from exc
    if head and head != SQLITE_MAGIC:
        raise StoreError(f"{path}: not an SQLite database (refusing to touch it)")


def connect(path: str | Path, *, timeout_s: float = 5.0, readonly: bool = False) -> sqlite3.Connection:
    """A raw sqlite3 connection with the pragmas every connection to the log uses.

    WAL lets readers and several writing processes share the file; ``synchronous=NORMAL``
    in WAL keeps the database consistent after a crash, losing at most the last commits.
    """
    path = Path(path)
    check_sqlite_file(path)
    try:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout_s, check_same_thread=False)
        else:
            conn = sqlite3.connect(path, timeout=timeout_s, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        if not readonly:
            # Takes effect only on a new, empty file (it must precede the first table);
            # INCREMENTAL lets retention hand freed pages back to the file system in steps.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: cannot open the log database ({exc})") from exc
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    """The schema version recorded in the database (0 for a new, empty file)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def open_database(path: str | Path, *, readonly: bool = False, timeout_s: float = 5.0) -> sqlite_utils.Database:
    """Open (and create or migrate, unless ``readonly``) the log database at ``path``.

    Raises :class:`StoreError`, naming the file, if it is not SQLite, was written by a
    newer version of adaptive_sched, or cannot be created. An existing file is never
    truncated or overwritten.
    """
    path = Path(path)
    if readonly and not path.exists():
        raise StoreError(f"{path}: no such database")
    if not readonly and not path.parent.exists():
        raise StoreError(f"{path}: directory {path.parent} does not exist")
    conn = connect(path, timeout_s=timeout_s, readonly=readonly)
    try:
        version = schema_version(conn)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{path}: schema version {version} is newer than this adaptive_sched supports "
                f"({SCHEMA_VERSION}); upgrade adaptive-sched to read it"
            )
        if version < SCHEMA_VERSION and not readonly:
            _migrate(conn, version)
    except BaseException:
        conn.close()
        raise
    return sqlite_utils.Database(conn)


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    db = sqlite_utils.Database(conn)
    try:
        conn.execute("BEGIN IMMEDIATE")
        # Another process may have migrated while we waited for the lock.
        current = schema_version(conn)
        for target in range(current + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[target](db)
            conn.execute(f"PRAGMA user_version = {target}")
        db["meta"].upsert({"key": "schema_version", "value": str(SCHEMA_VERSION)}, pk="key")
        conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise StoreError(f"cannot create the log schema: {exc}") from exc
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def database_path(db: sqlite_utils.Database) -> str:
    """The file behind ``db`` ('' for in-memory)."""
    row = db.conn.execute("PRAGMA database_list").fetchone()
    return str(row[2]) if row else ""


def ensure_parent(path: str | Path) -> None:
    """Create the directory of ``path`` if missing (the CLI does this; the library does not)."""
    os.makedirs(Path(path).parent, exist_ok=True)
