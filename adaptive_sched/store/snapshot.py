"""A policy's published choices saved between processes, so a cold ``decide`` costs a lookup.

A scheduler publishes, per (stage, shape bucket, previous backend), the backend it would
exploit and the probabilities of exploring each other one (see
:class:`adaptive_sched.policies.base.PublishedTable`). Building a scheduler to answer one
question costs hundreds of milliseconds (numpy, the prior, re-learning the log); a
:class:`Snapshot` keeps the entries it published, with what they were computed from, and
``adaptive-sched decide`` answers from it with the standard library only.

Where a snapshot lives:

* with a log (``--db`` or ``store.path``): in the log's ``meta`` table, under
  ``snapshot:<config key>``. It records the log's outcome *watermark* (count and largest
  decision id of ``outcomes``) it was learned from; any outcome added since (an
  ``observe``, a service) makes it stale, and the next ``decide`` learns again.
* without a log: in the user's cache directory (``$XDG_CACHE_HOME/adaptive-sched``, else
  ``~/.cache/adaptive-sched``), one file per config; never inside the package. A cache
  directory that cannot be written just means no snapshot.

A snapshot is used only on the host and boot it was made on (executor availability is
checked once per boot), while the config file's bytes, the package version, and the
files the config draws on (the prior, the device profile) are what they were.

Entries are keyed by the policies' own buckets (:mod:`adaptive_sched.buckets`), which import
nothing of the policies (and numpy).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..buckets import bucket_key
from ..errors import StoreError
from ..types import Shape, Stage

if TYPE_CHECKING:  # sqlite3 and the schema load with the first log opened: a call without one needs neither
    import sqlite3

log = logging.getLogger(__name__)

#: bumped when the layout below or the buckets change; other formats are ignored (rebuilt)
FORMAT = 2
#: entries kept per snapshot (one per stage, shape bucket and previous backend asked)
MAX_ENTRIES = 4096
#: snapshots kept in one log's meta table (one per config used with it)
MAX_SNAPSHOTS = 8

META_PREFIX = "snapshot:"

#: a choice as stored: [backend, propensity, explored, version, predicted seconds, probabilities]
StoredChoice = list[Any]


def config_key(config_path: str | Path, version: str) -> str:
    """The key of a config's snapshots: its absolute path, its bytes and the package version."""
    path = Path(config_path).resolve()
    digest = hashlib.sha256(str(path).encode() + b"\0" + version.encode() + b"\0")
    digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def entry_key(stage: Stage, shape: Shape, after: str | None, lookahead: bool) -> str:
    """The published entry a decision reads, as text: :func:`adaptive_sched.buckets.entry_key` joined.

    >>> entry_key(Stage.ATTN, Shape(n=1, d=2048, kv_len=300), None, True)
    'attn|1|2048|32|1|fp16|256|-'
    """
    n, d, heads, batch, precision, kv = bucket_key(stage, shape, lookahead)
    return f"{stage.value}|{n}|{d}|{heads}|{batch}|{precision.value}|{kv}|{after or '-'}"


def host_stamp() -> list[str]:
    """This host and boot: availability found on them holds until a reboot."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return [os.uname().nodename, boot]


def file_stamp(path: str | Path) -> list[Any]:
    """``[path, mtime_ns, size]`` (``-1`` for a missing file)."""
    try:
        st = os.stat(path)
        return [str(path), st.st_mtime_ns, st.st_size]
    except OSError:
        return [str(path), -1, -1]


@dataclass(frozen=True)
class Snapshot:
    """What one config's scheduler published, and what it depends on."""

    key: str
    #: host name and boot id it was made on
    host: list[str]
    #: ``[path, mtime_ns, size]`` of each file the entries were computed from
    deps: list[list[Any]]
    #: the log the config names (``store.path``), resolved; None without one
    store_path: str | None
    usable: list[str]
    unavailable: dict[str, str]
    #: whether qkv entries are keyed by the KV length too (the policy plans attn after qkv)
    lookahead: bool
    #: entry key -> ``[exploit, [[threshold, choice], ...]]``
    entries: dict[str, list[Any]] = field(default_factory=dict)
    #: the run the command line logs this config's decisions under (with a log)
    run: int | None = None
    #: ``[count, largest decision id]`` of the log's outcomes the entries were learned from
    watermark: list[int] | None = None

    def current(self) -> bool:
        """Whether it was made on this host and boot, from files that have not changed since."""
        return self.host == host_stamp() and all(file_stamp(d[0]) == d for d in self.deps)

    def with_entry(self, key: str, entry: list[Any]) -> Snapshot:
        entries = dict(self.entries)
        entries.pop(key, None)
        while len(entries) >= MAX_ENTRIES:
            del entries[next(iter(entries))]
        entries[key] = entry
        return replace(self, entries=entries)

    def to_json(self) -> str:
        data = {"format": FORMAT, **{f: getattr(self, f) for f in self.__dataclass_fields__}}
        return json.dumps(data, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Snapshot | None:
        """The snapshot in ``text``, or None if it is of another format or damaged."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.pop("format", None) != FORMAT:
                return None
            snap = cls(**data)
            if not (isinstance(snap.entries, dict) and isinstance(snap.usable, list) and isinstance(snap.deps, list)):
                return None
            return snap
        except (ValueError, TypeError):
            return None


def pick(entry: Sequence[Any], u: float) -> StoredChoice:
    """The choice an entry gives for the uniform draw ``u`` (as :meth:`Entry.pick` does)."""
    exploit, alternatives = entry
    for threshold, choice in alternatives:
        if u < threshold:
            return list(choice)
    return list(exploit)


def choice_fields(choice: StoredChoice) -> dict[str, Any]:
    """The fields ``decide`` prints for a stored choice."""
    backend, propensity, explored, _version, predicted, _probs = choice
    return {
        "backend": backend,
        "propensity": propensity,
        "explored": bool(explored),
        "predicted_ms": {b: v * 1e3 for b, v in predicted.items()},
    }


def store_choice(choice: Any) -> StoredChoice:
    """A :class:`~adaptive_sched.types.Choice` as stored in a snapshot."""
    return [
        choice.backend.value,
        float(choice.propensity),
        bool(choice.explored),
        int(choice.version),
        {b.value: float(v) for b, v in choice.predicted.items()},
        {b.value: float(v) for b, v in choice.probabilities.items()},
    ]


def from_scheduler(
    sched: Any,
    key: str,
    points: Iterable[tuple[Stage, Shape, str | None]],
    *,
    store_path: str | None,
    watermark: list[int] | None,
    run: int | None = None,
    entries: Mapping[str, list[Any]] | None = None,
) -> Snapshot:
    """What the scheduler ``sched`` publishes now at each ``(stage, shape, after)`` of ``points``.

    ``entries`` are kept from an earlier snapshot of the same learned state; a point no
    usable executor supports gets no entry (``decide`` then says why, from the scheduler).
    """
    from ..build import config_dependencies

    table = sched.policy.table
    snap = Snapshot(
        key=key,
        host=host_stamp(),
        deps=[file_stamp(p) for p in config_dependencies(sched.config)],
        store_path=store_path,
        usable=[b.value for b in sched.usable],
        unavailable={b.value: r for b, r in sched.unavailable.items()},
        # without a table a policy may look at every shape field: key by all of them
        lookahead=table.lookahead if table is not None else True,
        run=run,
        watermark=watermark,
    )
    out = dict(entries or {})
    for stage, shape, after in points:
        if sched.unsupported(stage, shape):
            continue
        exploit, alternatives = sched.published(stage, shape, after)
        k = entry_key(stage, shape, after, snap.lookahead)
        out.pop(k, None)
        out[k] = [store_choice(exploit), [[t, store_choice(c)] for t, c in alternatives]]
    while len(out) > MAX_ENTRIES:
        del out[next(iter(out))]
    return replace(snap, entries=out)


def save_for_log(
    sched: Any, key: str, db: str | Path, points: Iterable[tuple[Stage, Shape, str | None]], fields: Mapping[str, Any]
) -> Snapshot:
    """Save in the log ``db`` what ``sched`` publishes at ``points``, learned from every outcome in it now.

    For a scheduler that has logged to ``db`` and flushed (a service stopping): the next
    ``decide --db`` with the same config answers from it. ``fields`` make the command
    line's ``runs`` row if the config has none yet.
    """
    conn = open_log(db)
    try:
        old = read_logged(conn, key)
        run = old.run if old is not None and run_exists(conn, old.run) else new_run(conn, fields)
        snap = from_scheduler(sched, key, points, store_path=None, watermark=outcome_watermark(conn), run=run)
        save_logged(conn, snap)
        return snap
    finally:
        conn.close()


# -- without a log: the user's cache directory ---------------------------------------------
def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "adaptive-sched"


def read_cached(key: str) -> Snapshot | None:
    try:
        return Snapshot.from_json((cache_dir() / f"decide-{key}.json").read_bytes())
    except OSError:
        return None


def write_cached(snap: Snapshot) -> bool:
    """Save ``snap`` in the cache directory; False (and nothing else) where that is not possible."""
    from .files import write_atomic

    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(directory / f"decide-{snap.key}.json", snap.to_json())
        return True
    except OSError as exc:
        log.debug("no decision snapshot cached in %s: %s", directory, exc)
        return False


# -- with a log: its meta table ---------------------------------------------------------------
def open_log(path: str | Path) -> sqlite3.Connection:
    """A connection to the log at ``path`` (created if missing; refused untouched if not ours)."""
    from .connection import connect

    return connect(path, isolation_level=None)


def outcome_watermark(conn: sqlite3.Connection) -> list[int]:
    """``[count, largest decision id]`` of the outcomes: any outcome added changes it."""
    # Two statements: count(*) alone walks the table's pages without decoding rows, and
    # max() alone reads one end of the key; together SQLite scans and decodes every row.
    count = conn.execute("SELECT count(*) FROM outcomes").fetchone()[0]
    top = conn.execute("SELECT max(decision_id) FROM outcomes").fetchone()[0]
    return [int(count), int(top or 0)]


def read_logged(conn: sqlite3.Connection, key: str) -> Snapshot | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (META_PREFIX + key,)).fetchone()
    return None if row is None else Snapshot.from_json(row[0])


def run_exists(conn: sqlite3.Connection, run: int | None) -> bool:
    return run is not None and conn.execute("SELECT 1 FROM runs WHERE id = ?", (run,)).fetchone() is not None


def new_run(conn: sqlite3.Connection, fields: Mapping[str, Any]) -> int:
    """A ``runs`` row for the command line's decisions under one config (once per config, not per call)."""
    from .runs import allocate_run

    return allocate_run(conn, {"started_at": time.time(), "host": os.uname().nodename, "pid": os.getpid(),
                               **fields})  # fmt: skip


def run_fields(config: Any, version: str) -> dict[str, Any]:
    """The ``runs`` row of the command line's decisions under ``config`` (a :class:`~adaptive_sched.config.Config`)."""
    return {"config_hash": config.content_hash(), "device_profile": config.device, "package_version": version,
            "config": json.dumps(config.as_dict(), sort_keys=True)}  # fmt: skip


def save_logged(conn: sqlite3.Connection, snap: Snapshot) -> None:
    """Store ``snap`` in the log's meta table, keeping the newest :data:`MAX_SNAPSHOTS` snapshots."""
    from .transactions import immediate

    with immediate(conn):
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (META_PREFIX + snap.key, snap.to_json()))
        # INSERT OR REPLACE gives the row a new rowid: the newest snapshots have the largest
        conn.execute(
            "DELETE FROM meta WHERE key LIKE 'snapshot:%' AND rowid NOT IN "
            "(SELECT rowid FROM meta WHERE key LIKE 'snapshot:%' ORDER BY rowid DESC LIMIT ?)",
            (MAX_SNAPSHOTS,),
        )


def log_decision(
    conn: sqlite3.Connection, run: int, stage: Stage, shape: Shape, after: str | None, choice: StoredChoice
) -> int:
    """Write one decision row under ``run`` and return its id (the next of the run, taken atomically)."""
    from .rows import static_part
    from .schema import DECISION_COLUMNS, DECISION_FEATURE_COLUMNS, run_id_range
    from .transactions import immediate

    insert = f"INSERT INTO decisions ({', '.join(DECISION_COLUMNS)}) VALUES ({', '.join('?' * len(DECISION_COLUMNS))})"
    backend, propensity, explored, version, predicted, probs = choice
    lo, hi = run_id_range(run)
    with immediate(conn):
        top = conn.execute("SELECT max(id) FROM decisions WHERE id BETWEEN ? AND ?", (lo, hi)).fetchone()[0]
        decision_id = (top or lo) + 1
        if decision_id > hi:
            raise StoreError(f"run {run} has no decision ids left")
        stage_, n, d, kv_len, batch, heads, precision, *features = static_part(stage, shape)
        row = {
            "id": decision_id, "run": run, "time": time.time(), "stage": stage_, "n": n, "d": d,
            "kv_len": kv_len, "batch": batch, "heads": heads, "precision": precision, "after": after,
            "backend": backend, "propensity": propensity, "explored": 1 if explored else 0,
            "policy_version": version, "sample_rate": 1.0, "context": None,
            **{f"pred_{b}": predicted.get(b) for b in ("cpu", "gpu", "npu")},
            **{f"prob_{b}": probs.get(b) for b in ("cpu", "gpu", "npu")},
            **dict(zip(DECISION_FEATURE_COLUMNS, features, strict=True)),
        }  # fmt: skip
        conn.execute(insert, [row[c] for c in DECISION_COLUMNS])
    return decision_id


__all__ = [
    "Snapshot",
    "cache_dir",
    "choice_fields",
    "config_key",
    "entry_key",
    "file_stamp",
    "from_scheduler",
    "host_stamp",
    "log_decision",
    "new_run",
    "open_log",
    "outcome_watermark",
    "pick",
    "read_cached",
    "read_logged",
    "run_exists",
    "run_fields",
    "save_for_log",
    "save_logged",
    "store_choice",
    "write_cached",
]
