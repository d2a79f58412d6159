"""Opening the log: a checked, configured and migrated sqlite3 connection.

:func:`connect` first asks :func:`~adaptive_sched.store.ownership.inspect_file` whether
the file is ours (see "Ours or hands off" there) and writes nothing to a file that is
not. A writing connection then checks again inside the one transaction that creates,
marks and migrates the schema (:data:`~adaptive_sched.store.schema.MIGRATIONS`), so two
processes opening a new file at once create it once, and switches the file to WAL.

Examples
--------
>>> import os, tempfile
>>> from adaptive_sched.store.schema import SCHEMA_VERSION
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
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import StoreError
from .ownership import (
    APPLICATION_ID,
    Inspection,
    classify,
    describe_open_error,
    facts_of,
    file_uri,
    inspect_file,
    nonempty,
)
from .schema import MIGRATIONS, SCHEMA_VERSION

if TYPE_CHECKING:  # sqlite_utils costs ~0.3 s to import: only schema creation needs it
    import sqlite_utils

# Opening a log has always logged as the schema module; handlers configured for it keep working.
logger = logging.getLogger("adaptive_sched.store.schema")

#: the WAL is cut back to this size after a checkpoint, so a months-long log stays bounded
JOURNAL_SIZE_LIMIT = 32 * 1024 * 1024


def _raw_connect(path: Path, *, timeout_s: float, readonly: bool, isolation_level: str | None) -> sqlite3.Connection:
    if readonly:
        target, uri = f"{file_uri(path)}?mode=ro", True
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
    if nonempty(wal):
        logger.warning(
            "%s: on read-only media, read without %s: the rows it holds that were not yet copied into "
            "the database are missing; copy both files to a writable place to read them",
            path, wal,
        )  # fmt: skip
    conn = sqlite3.connect(
        f"{file_uri(path)}?mode=ro&immutable=1",
        uri=True,
        timeout=timeout_s,
        check_same_thread=False,
        isolation_level=isolation_level,  # type: ignore[arg-type]
    )
    return conn


def _switch_to_wal(conn: sqlite3.Connection, timeout_s: float) -> str:
    """Put the file in WAL mode; returns the journal mode it is in.

    Switching needs the file to itself. While another connection holds its write lock (several
    processes opening one new log at the same moment), SQLite reports "database is locked" for
    the switch at once, without its busy wait: the switch is tried again until ``timeout_s``.
    Once one process has switched the file, the others find it in WAL mode already.
    """
    deadline = time.monotonic() + timeout_s
    pause = 0.001
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(2 * pause, 0.05)


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
    :mod:`adaptive_sched.store.ownership`): a file that is not SQLite, another application's database, a
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
            raise StoreError(describe_open_error(path, exc, readonly=True)) from exc
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
        facts = facts_of(conn)
        if not facts.is_blank:
            found = classify(path, facts)
        # A new file is created and marked in one transaction, before it is switched to
        # WAL: it is never seen half-made, nor unmarked.
        establish = facts.is_blank or (migrate and (found.kind == "legacy" or found.version < SCHEMA_VERSION))
        if establish and _establish(path, conn, migrate=migrate) == "new":
            _incremental_vacuum(path, conn)
        mode = _switch_to_wal(conn, timeout_s)
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
        raise StoreError(describe_open_error(path, exc, readonly=False)) from exc
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
        facts = facts_of(conn)
        found = Inspection("new") if facts.is_blank else classify(path, facts)
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
