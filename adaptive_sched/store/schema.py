"""The SQLite schema of the decision log, created and migrated with sqlite-utils.

Table names and columns are a public contract: dashboards, replay and other tools
query them directly.

``runs``       one row per scheduler process (start time, host, config hash, device profile, version)
``decisions``  one row per stage decision: shape, features, backend, propensity, explored, predictions,
               and the probability the policy gave each backend (``prob_cpu``, ``prob_gpu``, ``prob_npu``)
``outcomes``   one row per observed decision: latency or error
``profiles``   offline sweep measurements: shape, backend, repetitions, median and spread
``priors``     offline priors: training rows, model spec, content hash, metrics
``logged``     (a view) every decision with its outcome, if any

Decision ids are ``run << 32 | sequence``, so ``decisions.run`` is always ``id >> 32``
and the rows of one run are the primary-key range ``[run << 32, (run + 1) << 32)``:
query a run by that range (:func:`run_id_range`) rather than by ``run = ?``, which
has no index (an index there would cost every insert and duplicate the key).

Times are Unix seconds (``time.time()``).

The schema version is kept in ``PRAGMA user_version`` and mirrored in the ``meta`` table.
Opening never touches a file that is not SQLite, is another application's database,
or was written by a newer schema: those are a :class:`~adaptive_sched.errors.StoreError`
naming the file, and the file's bytes are left as they were.

Examples
--------
>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "log.db")
>>> db = open_database(path)
>>> db.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
True
>>> db.close()
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import StoreError

if TYPE_CHECKING:  # sqlite_utils costs ~0.3 s to import: only schema creation needs it
    import sqlite_utils

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 3

SQLITE_MAGIC = b"SQLite format 3\x00"

#: tables of a log database; a version-0 file holding any other table belongs to someone else
KNOWN_TABLES = frozenset({"meta", "runs", "decisions", "outcomes", "profiles", "priors"})

#: derived features stored with each decision (n, d, P, kv_len, batch are shape columns)
DECISION_FEATURE_COLUMNS = ("f_flops", "f_mem_bytes", "f_intensity", "f_ar", "f_score_size", "f_pad_n", "f_pad_d")

#: decision columns, in table order
DECISION_COLUMNS: tuple[str, ...] = (
    "id", "run", "time", "stage", "n", "d", "kv_len", "batch", "heads", "precision",
    "after", "backend", "propensity", "explored", "policy_version",
    "pred_cpu", "pred_gpu", "pred_npu",
    *DECISION_FEATURE_COLUMNS,
    "sample_rate", "context",
    "prob_cpu", "prob_gpu", "prob_npu",
)  # fmt: skip
OUTCOME_COLUMNS: tuple[str, ...] = ("decision_id", "time", "latency_s", "ok", "error")

RUN_COLUMNS: tuple[str, ...] = (
    "id", "started_at", "host", "pid", "config_hash", "device_profile", "package_version", "config",
)  # fmt: skip

SHAPE_COLUMNS = {"n": int, "d": int, "kv_len": int, "batch": int, "heads": int, "precision": str}

#: bits of a decision id that hold the sequence within its run
RUN_SHIFT = 32
#: largest run id whose decision ids still fit SQLite's signed 64-bit integers
MAX_RUN_ID = (1 << (63 - RUN_SHIFT)) - 1

#: the WAL is cut back to this size after a checkpoint, so a months-long log stays bounded
JOURNAL_SIZE_LIMIT = 32 * 1024 * 1024


def run_id_range(run: int) -> tuple[int, int]:
    """The inclusive range of decision ids of ``run``.

    >>> run_id_range(3)
    (12884901888, 17179869183)
    """
    lo = int(run) << RUN_SHIFT
    return lo, lo | ((1 << RUN_SHIFT) - 1)


def _create_v1(db: sqlite_utils.Database) -> None:
    db.table("meta").create({"key": str, "value": str}, pk="key", if_not_exists=True)
    db.table("runs").create(
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
    db.table("decisions").create(columns, pk="id", if_not_exists=True)
    db.table("decisions").create_index(["run"], if_not_exists=True)
    db.table("decisions").create_index(["time"], if_not_exists=True)
    db.table("outcomes").create(
        {"decision_id": int, "time": float, "latency_s": float, "ok": int, "error": str},
        pk="decision_id",
        if_not_exists=True,
    )
    db.table("outcomes").create_index(["time"], if_not_exists=True)
    db.table("profiles").create(
        {
            "id": int, "device": str, "executor": str, "backend": str, "stage": str, **SHAPE_COLUMNS,
            "warmup": int, "repetitions": int,
            "median_s": float, "p10_s": float, "p90_s": float, "min_s": float, "max_s": float,
            "ok": int, "error": str, "measured_at": float,
        },
        pk="id",
        if_not_exists=True,
    )  # fmt: skip
    db.table("profiles").create_index(
        ["device", "backend", "stage", "n", "d", "kv_len", "batch", "heads", "precision"],
        unique=True,
        if_not_exists=True,
    )
    db.table("priors").create(
        {
            "id": int, "name": str, "stage": str, "device": str, "model": str, "params": str,
            "content_hash": str, "training_rows": int, "rows": str, "metrics": str, "created_at": float,
        },
        pk="id",
        if_not_exists=True,
    )  # fmt: skip
    db.table("priors").create_index(["name", "stage"], unique=True, if_not_exists=True)


def _upgrade_v2(db: sqlite_utils.Database) -> None:
    # Every insert paid for these two indexes (about a third of the writer's SQLite time,
    # measured in benchmarks/bench_store.py). decisions.run is id >> 32, so a run is a
    # primary-key range; retention finds old outcomes through the same ranges.
    db.execute("DROP INDEX IF EXISTS idx_decisions_run")
    db.execute("DROP INDEX IF EXISTS idx_outcomes_time")
    db.execute(
        "CREATE VIEW IF NOT EXISTS logged AS SELECT d.*, o.time AS observed_at, o.latency_s, o.ok, o.error "
        "FROM decisions d LEFT JOIN outcomes o ON o.decision_id = d.id"
    )


def _upgrade_v3(db: sqlite_utils.Database) -> None:
    # The whole probability vector of each decision (NULL for a backend it could not choose),
    # so replay can evaluate any policy on the log, the one that wrote it included. Rows of
    # older versions have NULL here: their logged policy's distribution is unknown.
    for backend in ("cpu", "gpu", "npu"):
        db.execute(f"ALTER TABLE decisions ADD COLUMN prob_{backend} FLOAT")


#: version -> function that brings a database from version - 1 to version
MIGRATIONS: dict[int, Callable[[sqlite_utils.Database], None]] = {1: _create_v1, 2: _upgrade_v2, 3: _upgrade_v3}


def check_sqlite_file(path: Path) -> None:
    """Raise :class:`StoreError` if ``path`` cannot be a database file (a directory).

    Whether an existing file is SQLite is left to SQLite, which refuses any other file
    ("file is not a database") without writing to it. Reading the header here would
    be unsafe: closing any descriptor of a file drops every POSIX lock this process
    holds on it, including those of SQLite connections already open on the log, and
    another process could then checkpoint and delete the WAL under them.
    """
    if path.is_dir():
        raise StoreError(f"{path}: is a directory, not an SQLite database")


def _raw_connect(path: Path, *, timeout_s: float, readonly: bool, isolation_level: str | None) -> sqlite3.Connection:
    if readonly:
        target, uri = f"file:{path}?mode=ro", True
    else:
        target, uri = str(path), False
    conn = sqlite3.connect(
        target,
        uri=uri,
        timeout=timeout_s,
        check_same_thread=False,
        isolation_level=isolation_level,  # type: ignore[arg-type]
    )
    conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    """The schema version recorded in the database (0 for a new, empty file)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _user_tables(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    return [r[0] for r in rows]


def _check_version(path: Path, conn: sqlite3.Connection) -> int:
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: schema version {version} is newer than this adaptive_sched supports "
            f"({SCHEMA_VERSION}); upgrade adaptive-sched to use it"
        )
    if version == 0:
        foreign = sorted(set(_user_tables(conn)) - KNOWN_TABLES)
        if foreign:
            raise StoreError(
                f"{path}: an SQLite database of another application (tables: {', '.join(foreign[:5])}), "
                "not an adaptive_sched log; refusing to touch it"
            )
    return version


def _describe(path: Path, exc: BaseException, readonly: bool) -> str:
    text = str(exc)
    if not readonly and ("readonly" in text or "unable to open" in text):
        return f"{path}: cannot write the log ({text}); is the file or its directory read-only?"
    if "not a database" in text or "malformed" in text:
        return f"{path}: not an SQLite database, or a damaged one ({text}); refusing to touch it"
    return f"{path}: cannot open the log database ({text})"


def connect(
    path: str | Path,
    *,
    timeout_s: float = 5.0,
    readonly: bool = False,
    isolation_level: str | None = "",
    migrate: bool = True,
) -> sqlite3.Connection:
    """A raw sqlite3 connection to the log at ``path``, checked, configured and migrated.

    The file is checked before anything is written to it: not SQLite, another
    application's database, a newer schema, a missing directory or a read-only
    location each raise :class:`StoreError` naming the file, and leave it untouched.

    WAL lets readers and several writing processes share the file; ``synchronous=NORMAL``
    in WAL keeps the database consistent after a crash, losing at most the last commits.

    Parameters
    ----------
    path : str or Path
    timeout_s : float
        How long a statement waits for another process's lock (SQLite's busy timeout).
    readonly : bool
        Open with ``mode=ro``: never create, migrate or change the file.
    isolation_level : str or None
        As for :func:`sqlite3.connect`; ``None`` leaves transactions to the caller.
    migrate : bool
        Bring an older schema up to date (ignored when ``readonly``).
    """
    path = Path(path)
    check_sqlite_file(path)
    if readonly and not path.exists():
        raise StoreError(f"{path}: no such database")
    if not readonly and not path.parent.is_dir():
        raise StoreError(f"{path}: directory {path.parent} does not exist")
    if not readonly and not path.exists() and not os.access(path.parent, os.W_OK | os.X_OK):
        raise StoreError(f"{path}: cannot create the log: directory {path.parent} is not writable")
    conn: sqlite3.Connection | None = None
    try:
        conn = _raw_connect(path, timeout_s=timeout_s, readonly=readonly, isolation_level=isolation_level)
        # Read-only checks come first: a file we refuse must keep every byte it had.
        version = _check_version(path, conn)
        if not readonly:
            if version == 0 and not _user_tables(conn):
                # Only effective before the first table exists; INCREMENTAL lets
                # retention hand freed pages back to the file system in steps.
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                logger.warning("%s: journal mode is %s, not WAL; concurrent writers will wait longer", path, mode)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
            if version < SCHEMA_VERSION and migrate:
                _migrate(path, conn)
    except StoreError:
        if conn is not None:
            conn.close()
        raise
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        raise StoreError(_describe(path, exc, readonly)) from exc
    return conn


def open_database(path: str | Path, *, readonly: bool = False, timeout_s: float = 5.0) -> sqlite_utils.Database:
    """Open (and create or migrate, unless ``readonly``) the log database at ``path``.

    Raises :class:`StoreError`, naming the file, if it is not SQLite, belongs to another
    application, was written by a newer version of adaptive_sched, or cannot be created.
    An existing file is never truncated or overwritten.
    """
    import sqlite_utils

    return sqlite_utils.Database(connect(path, readonly=readonly, timeout_s=timeout_s))


def _migrate(path: Path, conn: sqlite3.Connection) -> None:
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    try:
        conn.execute("BEGIN IMMEDIATE")
        # Another process may have migrated while we waited for the lock.
        current = _check_version(path, conn)
        for target in range(current + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[target](db)
            conn.execute(f"PRAGMA user_version = {target}")
        if current < SCHEMA_VERSION:
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise StoreError(f"{path}: cannot create the log schema ({exc})") from exc
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def allocate_run(conn: sqlite3.Connection, fields: dict[str, Any]) -> int:
    """Insert a ``runs`` row and return its id, unique among every process sharing the file.

    The id is one more than any run id seen in ``runs``, ``meta`` or the decision ids,
    so ids are never reused even after retention deleted old runs. ``conn`` must not
    be inside a transaction.
    """
    cur = conn.cursor()
    cur.execute("BEGIN IMMEDIATE")
    try:
        top_run = cur.execute("SELECT max(id) FROM runs").fetchone()[0] or 0
        top_id = cur.execute("SELECT max(id) FROM decisions").fetchone()[0] or 0
        row = cur.execute("SELECT value FROM meta WHERE key = 'last_run_id'").fetchone()
        last = int(row[0]) if row else 0
        run_id = max(top_run, top_id >> RUN_SHIFT, last) + 1
        if run_id > MAX_RUN_ID:
            raise StoreError(f"run ids exhausted ({run_id} > {MAX_RUN_ID})")
        values = {**fields, "id": run_id}
        cur.execute(
            f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})",
            [values.get(c) for c in RUN_COLUMNS],
        )
        cur.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_run_id', ?)", (str(run_id),))
        cur.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return run_id


def database_path(db: Any) -> str:
    """The file behind ``db`` (an sqlite_utils Database or sqlite3 connection; '' for in-memory)."""
    conn = getattr(db, "conn", db)
    row = conn.execute("PRAGMA database_list").fetchone()
    return str(row[2]) if row else ""


def ensure_parent(path: str | Path) -> None:
    """Create the directory of ``path`` if missing (the CLI does this; the library does not)."""
    os.makedirs(Path(path).parent, exist_ok=True)
