"""Whether a file is an adaptive_sched log: ours, an unmarked log of an earlier version, or hands off.

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

Examples
--------
>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "log.db")
>>> inspect_file(path)
Inspection(kind='new', version=0)
"""

from __future__ import annotations

import os
import sqlite3
import stat
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from ..errors import StoreError
from .schema import DECISION_COLUMNS, KNOWN_TABLES, OUTCOME_COLUMNS, PROBABILITY_COLUMNS, RUN_COLUMNS, SCHEMA_VERSION

#: ``PRAGMA application_id`` of an adaptive_sched log: "ASch" in ASCII
APPLICATION_ID = 0x41536368

#: schema versions of logs written before they carried :data:`APPLICATION_ID`
LEGACY_VERSIONS = (1, 2, 3)


@dataclass(frozen=True)
class Facts:
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


def facts_of(conn: sqlite3.Connection) -> Facts:
    """What the database behind ``conn`` says about itself (read only; nothing is written)."""
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
    return Facts(application_id, user_version, tables, meta_version)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def classify(path: Path, facts: Facts) -> Inspection:
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


def _not_legacy(facts: Facts) -> str:
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


def _names(facts: Facts) -> str:
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


def nonempty(path: Path) -> bool:
    """Whether a file is at ``path`` and holds at least one byte (``os.stat``: no descriptor opened)."""
    try:
        return os.stat(path).st_size > 0
    except OSError:
        return False


def _facts_at(path: Path, uri_options: str, timeout_s: float) -> Facts:
    conn = sqlite3.connect(f"{file_uri(path)}?{uri_options}", uri=True, timeout=timeout_s, check_same_thread=False)
    try:
        return facts_of(conn)
    finally:
        conn.close()


def file_uri(path: Path) -> str:
    """The ``file:`` URI of ``path``, for connections opened with URI options (``mode=ro``, ``immutable``)."""
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
        facts = _facts_at(path, "mode=ro&immutable=1", timeout_s)
    except sqlite3.Error:
        # Possibly a page read while another process wrote it (immutable takes no lock):
        # read again with locks before refusing.
        facts = _read_ro(path, timeout_s)
    # An unmarked file's main file may be behind its WAL (an older log whose schema was
    # created in WAL): unless it is plainly someone else's, read it with its WAL.
    unmarked = facts.application_id == 0 and not set(facts.tables) - KNOWN_TABLES
    if unmarked and nonempty(Path(f"{path}-wal")):
        facts = _read_ro(path, timeout_s)
    return classify(path, facts)


def _read_ro(path: Path, timeout_s: float) -> Facts:
    try:
        return _facts_at(path, "mode=ro", timeout_s)
    except sqlite3.Error as exc:
        raise StoreError(describe_open_error(path, exc, readonly=True)) from exc


def describe_open_error(path: Path, exc: BaseException, readonly: bool) -> str:
    """The message of the :class:`StoreError` for ``exc``, raised while opening ``path``, naming the file."""
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
