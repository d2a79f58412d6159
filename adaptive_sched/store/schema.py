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

Ours or hands off
-----------------
A file is an adaptive_sched log, and only then read, written, switched to WAL or
migrated, when one of these holds:

* it carries our mark: ``PRAGMA application_id`` is :data:`APPLICATION_ID` and its
  ``meta`` table holds a ``schema_version`` row. Every log created since the mark was
  introduced has it from its first transaction (the schema, the mark and the version
  are committed together, before the file is switched to WAL);
* it is a log of an earlier version, written before logs were marked (schema 1 to 3,
  :data:`LEGACY_VERSIONS`): ``application_id`` is 0, ``user_version`` is 1, 2 or 3,
  its tables are exactly ours (``meta``, ``runs``, ``decisions``, ``outcomes``,
  ``profiles``, ``priors``: the first version created all six in one transaction), the
  columns of ``meta``, ``runs``, ``decisions`` and ``outcomes`` are exactly those that
  version created, and ``meta`` says ``schema_version`` is that same version. Opening it
  for writing marks it (sets the application id) in the transaction that migrates it;
* it does not exist yet, or is a zero-length file: it is created, and marked.

Anything else is refused with a :class:`~adaptive_sched.errors.StoreError` naming the
file and saying why, and keeps every byte it had: a file that is not SQLite, another
application's database (even one whose tables reuse our names, or whose ``user_version``
is 1), an SQLite file with no tables that we did not create, a log of a newer schema, a
path that is not a regular file (``/dev/null``, a FIFO, a directory: SQLite would put its
journal beside it), or a missing file whose old ``-wal`` is still there (SQLite would
replay the deleted database's pages into the new one).

The check comes before anything that writes. It reads the file through an ``immutable``
connection, which takes no lock and creates no ``-wal`` or ``-shm``; only when that view
may be out of date (an older log whose ``-wal`` holds frames not yet checkpointed) is the
file read again through a read-only connection, which may create the ``-shm`` index that
any WAL reader needs. The file is never read with a plain ``open()``: closing any
descriptor of a file drops every POSIX lock this process holds on it, including those of
SQLite connections already open on the log (SQLite's own connections, ``immutable`` ones
included, defer that close). A writing connection then checks again inside the
transaction that creates or migrates the schema, so two processes opening a new file at
once create it once.

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
import stat
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import StoreError

if TYPE_CHECKING:  # sqlite_utils costs ~0.3 s to import: only schema creation needs it
    import sqlite_utils

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 3

SQLITE_MAGIC = b"SQLite format 3\x00"

#: ``PRAGMA application_id`` of an adaptive_sched log: "ASch" in ASCII
APPLICATION_ID = 0x41536368

#: schema versions of logs written before they carried :data:`APPLICATION_ID`
LEGACY_VERSIONS = (1, 2, 3)

#: the tables of a log database
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
#: decision columns added by schema version 3
PROBABILITY_COLUMNS: tuple[str, ...] = ("prob_cpu", "prob_gpu", "prob_npu")
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


@dataclass(frozen=True)
class _Facts:
    """What a database says about itself, read without writing to it."""

    application_id: int
    user_version: int
    #: table name -> its columns, in order, for our table names (SQLite's own tables left out)
    tables: dict[str, tuple[str, ...]]
    #: the ``schema_version`` row of ``meta`` (None without one, or without ``meta``)
    meta_version: str | None

    @property
    def is_blank(self) -> bool:
        return not self.tables and self.application_id == 0 and self.user_version == 0


@dataclass(frozen=True)
class Inspection:
    """What :func:`inspect_file` found at a path that may be opened.

    ``kind`` is ``"new"`` (missing or a zero-length file: it becomes ours), ``"ours"``
    (marked with :data:`APPLICATION_ID`) or ``"legacy"`` (an unmarked log of schema 1
    to 3). ``version`` is its schema version (0 when new).
    """

    kind: str
    version: int = 0


def _legacy_columns(version: int) -> dict[str, tuple[str, ...]]:
    decisions = DECISION_COLUMNS if version >= 3 else DECISION_COLUMNS[: -len(PROBABILITY_COLUMNS)]
    return {"meta": ("key", "value"), "runs": RUN_COLUMNS, "decisions": decisions, "outcomes": OUTCOME_COLUMNS}


def _facts(conn: sqlite3.Connection) -> _Facts:
    application_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
    user_version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    names = [
        r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    ]
    # Columns of our tables only: another application's file may hold any number of its own.
    tables = {
        name: tuple(r[1] for r in conn.execute(f"PRAGMA table_info({_quote(name)})")) if name in KNOWN_TABLES else ()
        for name in names
    }
    meta_version = None
    if tables.get("meta", ())[:2] == ("key", "value"):
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        meta_version = None if row is None else str(row[0])
    return _Facts(application_id, user_version, tables, meta_version)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _classify(path: Path, facts: _Facts) -> Inspection:
    """Ours, legacy or new; anything else raises :class:`StoreError` (see the module docstring)."""
    version = facts.user_version
    if facts.application_id == APPLICATION_ID:
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{path}: schema version {version} is newer than this adaptive_sched supports "
                f"({SCHEMA_VERSION}); upgrade adaptive-sched to use it"
            )
        if facts.meta_version is None or version < 1:
            raise StoreError(
                f"{path}: carries adaptive_sched's application id but not its schema (user_version {version}, "
                f"tables: {_names(facts)}); a damaged log? refusing to touch it"
            )
        return Inspection("ours", version)
    if facts.application_id != 0:
        raise _foreign(path, f"application_id {facts.application_id:#x}")
    if facts.is_blank:
        raise _foreign(path, "an empty database that adaptive_sched did not create")
    why = _not_legacy(facts)
    if why:
        raise _foreign(path, f"no adaptive_sched mark, and not a log of an earlier version: {why}")
    return Inspection("legacy", version)


def _not_legacy(facts: _Facts) -> str:
    """Why an unmarked database is not a log of schema 1 to 3 ('' if it is one)."""
    version = facts.user_version
    foreign = sorted(set(facts.tables) - KNOWN_TABLES)
    if foreign:
        return f"tables {', '.join(foreign[:5])}"
    if version not in LEGACY_VERSIONS:
        return f"user_version {version}"
    missing = sorted(KNOWN_TABLES - set(facts.tables))
    if missing:
        return f"no table {', '.join(missing)}"
    if facts.meta_version != str(version):
        return f"meta holds schema_version {facts.meta_version!r}, user_version is {version}"
    for table, columns in _legacy_columns(version).items():
        if facts.tables[table] != columns:
            return f"table {table} has columns {', '.join(facts.tables[table])}"
    return ""


def _names(facts: _Facts) -> str:
    return ", ".join(sorted(facts.tables)[:8]) or "none"


def _foreign(path: Path, why: str) -> StoreError:
    return StoreError(
        f"{path}: an SQLite database of another application, not an adaptive_sched log ({why}); refusing to touch it"
    )


def _stat(path: Path) -> os.stat_result | None:
    """The file at ``path`` (None if missing); StoreError for anything that cannot hold a log."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise StoreError(
                f"{path}: a symbolic link to a missing file; give the log's real path "
                "(a new log is created in the directory given, with its journals beside it)"
            ) from None
        return None
    except OSError as exc:
        raise StoreError(f"{path}: cannot look at the file ({exc.strerror})") from exc
    if stat.S_ISDIR(st.st_mode):
        raise StoreError(f"{path}: is a directory, not an SQLite database")
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(
            f"{path}: not a regular file (a device, FIFO or socket); the log must be a regular file, "
            "since SQLite keeps its journal and WAL beside it"
        )
    return st


def _nonempty(path: Path) -> bool:
    try:
        return os.stat(path).st_size > 0
    except OSError:
        return False


def _read_facts(path: Path, uri_options: str, timeout_s: float) -> _Facts:
    conn = sqlite3.connect(f"{_file_uri(path)}?{uri_options}", uri=True, timeout=timeout_s, check_same_thread=False)
    try:
        return _facts(conn)
    finally:
        conn.close()


def _file_uri(path: Path) -> str:
    return "file:" + urllib.parse.quote(str(path.absolute()))


def inspect_file(path: str | Path, *, timeout_s: float = 5.0) -> Inspection:
    """Whether ``path`` may be opened as a log, found without writing to it or beside it.

    Raises :class:`StoreError` naming the file for anything that is not ours (see the
    module docstring); the file keeps every byte it had.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "notes.db")
    >>> inspect_file(path).kind
    'new'
    >>> with open(path, "w") as f:
    ...     _ = f.write("my notes")
    >>> inspect_file(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    adaptive_sched.errors.StoreError: ...notes.db: not an SQLite database, or a damaged one (...); refusing to touch it
    """
    path = Path(path)
    st = _stat(path)
    if st is None or st.st_size == 0:
        return Inspection("new")
    try:
        facts = _read_facts(path, "mode=ro&immutable=1", timeout_s)
    except sqlite3.Error:
        # Possibly a page read while another process wrote it (immutable takes no lock):
        # read again with locks before refusing.
        facts = _read_ro(path, timeout_s)
    # An unmarked file's main file may be behind its WAL (an older log whose schema was
    # created in WAL): unless it is plainly someone else's, read it with its WAL.
    unmarked = facts.application_id == 0 and not set(facts.tables) - KNOWN_TABLES
    if unmarked and _nonempty(Path(f"{path}-wal")):
        facts = _read_ro(path, timeout_s)
    return _classify(path, facts)


def _read_ro(path: Path, timeout_s: float) -> _Facts:
    try:
        return _read_facts(path, "mode=ro", timeout_s)
    except sqlite3.Error as exc:
        raise StoreError(_describe(path, exc, readonly=True)) from exc


def _raw_connect(path: Path, *, timeout_s: float, readonly: bool, isolation_level: str | None) -> sqlite3.Connection:
    if readonly:
        target, uri = f"{_file_uri(path)}?mode=ro", True
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


def _describe(path: Path, exc: BaseException, readonly: bool) -> str:
    text = str(exc)
    if "readonly_rollback" in getattr(exc, "sqlite_errorname", "").lower():
        return (
            f"{path}: holds an interrupted transaction ({path}-journal) that only a writer may roll back; "
            "refusing to touch it"
        )
    if not readonly and ("readonly" in text or "unable to open" in text):
        return f"{path}: cannot write the log ({text}); is the file or its directory read-only?"
    if "not a database" in text or "malformed" in text:
        return f"{path}: not an SQLite database, or a damaged one ({text}); refusing to touch it"
    return f"{path}: cannot open the log database ({text})"


#: errors of a read-only open that mean the ``-shm`` index could not be made (read-only media)
_READ_ONLY_MEDIA_ERRORS = ("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_IOERR")


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)


def _connect_readonly(path: Path, timeout_s: float, isolation_level: str | None) -> sqlite3.Connection:
    """A ``mode=ro`` connection; on read-only media, where that fails, an ``immutable`` one."""
    conn = _raw_connect(path, timeout_s=timeout_s, readonly=True, isolation_level=isolation_level)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # a WAL log opens its -shm here
        return conn
    except sqlite3.Error as exc:
        conn.close()
        code = str(getattr(exc, "sqlite_errorname", ""))
        if _writable(path) or not code.startswith(_READ_ONLY_MEDIA_ERRORS):
            raise
    # The file or its directory is read-only and SQLite could not make the -shm index a
    # WAL reader needs: read the file as it is, without locks (nobody can be writing it).
    wal = Path(f"{path}-wal")
    if _nonempty(wal):
        logger.warning(
            "%s: on read-only media, read without %s: the rows it holds that were not yet copied into "
            "the database are missing; copy both files to a writable place to read them",
            path, wal,
        )  # fmt: skip
    conn = sqlite3.connect(
        f"{_file_uri(path)}?mode=ro&immutable=1",
        uri=True,
        timeout=timeout_s,
        check_same_thread=False,
        isolation_level=isolation_level,  # type: ignore[arg-type]
    )
    return conn


def connect(
    path: str | Path,
    *,
    timeout_s: float = 5.0,
    readonly: bool = False,
    isolation_level: str | None = "",
    migrate: bool = True,
) -> sqlite3.Connection:
    """A raw sqlite3 connection to the log at ``path``, checked, configured and migrated.

    The file is checked before anything is written to it (see "Ours or hands off" in
    the module docstring): a file that is not SQLite, another application's database, a
    newer schema, a path that is not a regular file, a missing directory or a read-only
    location each raise :class:`StoreError` naming the file, and leave it untouched.

    WAL lets readers and several writing processes share the file; ``synchronous=NORMAL``
    in WAL keeps the database consistent after a crash, losing at most the last commits.

    Parameters
    ----------
    path : str or Path
    timeout_s : float
        How long a statement waits for another process's lock (SQLite's busy timeout).
    readonly : bool
        Open with ``mode=ro``: never create, migrate or change the file. Where the file
        or its directory is read-only and a WAL log cannot be opened that way (SQLite
        cannot create its ``-shm`` index), it is opened ``immutable``.
    isolation_level : str or None
        As for :func:`sqlite3.connect`; ``None`` leaves transactions to the caller.
    migrate : bool
        Bring an older schema up to date (ignored when ``readonly``).
    """
    path = Path(path)
    found = inspect_file(path, timeout_s=timeout_s)
    if readonly:
        if found.kind == "new":
            what = "no such database" if not path.exists() else "an empty file, not a log yet"
            raise StoreError(f"{path}: {what}")
        try:
            return _connect_readonly(path, timeout_s, isolation_level)
        except sqlite3.Error as exc:
            raise StoreError(_describe(path, exc, readonly=True)) from exc
    if found.kind == "new":
        if not path.parent.is_dir():
            raise StoreError(f"{path}: directory {path.parent} does not exist")
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise StoreError(f"{path}: cannot create the log: directory {path.parent} is not writable")
        wal = Path(f"{path}-wal")
        if wal.exists():
            # Another process may have just created the file and switched it to WAL.
            found = inspect_file(path, timeout_s=timeout_s)
            if found.kind == "new":
                raise StoreError(
                    f"{path}: {'missing' if not path.exists() else 'empty'}, but {wal} of an earlier database is "
                    f"still there (SQLite would apply it to the new file); move it and {path}-shm away, or put "
                    "the database back"
                )
    conn: sqlite3.Connection | None = None
    try:
        conn = _raw_connect(path, timeout_s=timeout_s, readonly=False, isolation_level=isolation_level)
        # Checked again on this connection: the file may have changed since it was inspected.
        facts = _facts(conn)
        if not facts.is_blank:
            found = _classify(path, facts)
        # A new file is created and marked in one transaction, before it is switched to
        # WAL: it is never seen half-made, nor unmarked.
        establish = facts.is_blank or (migrate and (found.kind == "legacy" or found.version < SCHEMA_VERSION))
        if establish and _establish(path, conn, migrate=migrate) == "new":
            _incremental_vacuum(path, conn)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            logger.warning("%s: journal mode is %s, not WAL; concurrent writers will wait longer", path, mode)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
    except StoreError:
        if conn is not None:
            conn.close()
        raise
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        raise StoreError(_describe(path, exc, readonly=False)) from exc
    return conn


def open_database(path: str | Path, *, readonly: bool = False, timeout_s: float = 5.0) -> sqlite_utils.Database:
    """Open (and create or migrate, unless ``readonly``) the log database at ``path``.

    Raises :class:`StoreError`, naming the file, if it is not SQLite, belongs to another
    application, was written by a newer version of adaptive_sched, or cannot be created.
    An existing file is never truncated or overwritten.
    """
    import sqlite_utils

    return sqlite_utils.Database(connect(path, readonly=readonly, timeout_s=timeout_s))


def _incremental_vacuum(path: Path, conn: sqlite3.Connection) -> None:
    # Set on the new file after its first transaction: a failed first transaction then
    # leaves a zero-length file (a new one, next time), where with auto_vacuum already
    # set it left a one-page database that no one could tell from another's.
    # INCREMENTAL lets retention hand freed pages back to the file system in steps.
    try:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")
    except sqlite3.Error as exc:
        logger.warning("%s: cannot enable incremental vacuum (%s); freed pages are reused, not returned", path, exc)


def _establish(path: Path, conn: sqlite3.Connection, *, migrate: bool) -> str:
    """Create, mark and migrate the schema as needed, in one transaction, after checking again.

    Returns what the file was: ``"new"``, ``"legacy"`` or ``"ours"``.
    """
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    try:
        conn.execute("BEGIN IMMEDIATE")
        # Another process may have created, marked or migrated it while we waited for the lock.
        facts = _facts(conn)
        found = Inspection("new") if facts.is_blank else _classify(path, facts)
        if found.kind == "new":
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        elif found.kind == "legacy":
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            logger.info("%s: marked as an adaptive_sched log (schema version %d)", path, found.version)
        if found.kind == "new" or migrate:
            for target in range(found.version + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[target](db)
                conn.execute(f"PRAGMA user_version = {target}")
            if found.version < SCHEMA_VERSION:
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
        conn.execute("COMMIT")
        return found.kind
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
