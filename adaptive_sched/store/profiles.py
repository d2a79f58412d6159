"""Read and write the ``profiles`` table: one row per device, backend, stage and shape.

A row holds the latency statistics of one sweep point (median, p10, p90, min, max over
the timed repetitions), or, with ``ok = 0``, the error that point raised. The unique
index on ``(device, backend, stage, n, d, kv_len, batch, heads, precision)`` makes a
sweep resumable: :func:`measured_keys` tells which points are already in the table, and
:func:`write_profile` replaces a row measured again.

>>> import tempfile, os
>>> from adaptive_sched.store.connection import open_database
>>> from adaptive_sched.types import Shape
>>> path = os.path.join(tempfile.mkdtemp(), "p.db")
>>> db = open_database(path)
>>> row = ProfileRow(device="toy", executor="fake", backend="gpu", stage="qkv",
...                  shape=Shape(n=1, d=64), warmup=1, repetitions=3, median_s=2e-3,
...                  p10_s=1e-3, p90_s=3e-3, min_s=1e-3, max_s=3e-3)
>>> write_profile(db, row)
>>> [r.median_s for r in read_profiles(db, device="toy")]
[0.002]
>>> db.close()
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from ..errors import StoreError
from ..types import Backend, Shape, Stage, parse_backend, parse_stage

TABLE = "profiles"

#: the columns of the unique index, in order: a sweep point's identity
KEY_COLUMNS: tuple[str, ...] = ("device", "backend", "stage", "n", "d", "kv_len", "batch", "heads", "precision")

_VALUE_COLUMNS: tuple[str, ...] = (
    "executor", "warmup", "repetitions", "median_s", "p10_s", "p90_s", "min_s", "max_s", "ok", "error",
    "measured_at",
)  # fmt: skip

ProfileKey = tuple[str, str, str, int, int, int, int, int, str]


@dataclass(frozen=True, slots=True)
class ProfileRow:
    """One measured (or failed) sweep point.

    Latencies are in seconds; they are None when ``ok`` is False.
    """

    device: str
    executor: str
    backend: str
    stage: str
    shape: Shape
    warmup: int
    repetitions: int
    median_s: float | None
    p10_s: float | None = None
    p90_s: float | None = None
    min_s: float | None = None
    max_s: float | None = None
    ok: bool = True
    error: str | None = None
    measured_at: float = 0.0

    @property
    def key(self) -> ProfileKey:
        """The row's identity in the unique index."""
        return profile_key(self.device, self.backend, self.stage, self.shape)

    def as_record(self) -> dict[str, Any]:
        """The row as table columns."""
        s = self.shape
        return {
            "device": self.device,
            "executor": self.executor,
            "backend": self.backend,
            "stage": self.stage,
            "n": s.n,
            "d": s.d,
            "kv_len": s.kv_len,
            "batch": s.batch,
            "heads": s.heads,
            "precision": s.precision.value,
            "warmup": self.warmup,
            "repetitions": self.repetitions,
            "median_s": self.median_s,
            "p10_s": self.p10_s,
            "p90_s": self.p90_s,
            "min_s": self.min_s,
            "max_s": self.max_s,
            "ok": int(bool(self.ok)),
            "error": self.error,
            "measured_at": self.measured_at or time.time(),
        }


def profile_key(device: str, backend: Backend | str, stage: Stage | str, shape: Shape) -> ProfileKey:
    """The unique-index key of a sweep point."""
    return (
        device,
        parse_backend(backend).value,
        parse_stage(stage).value,
        shape.n,
        shape.d,
        shape.kv_len,
        shape.batch,
        int(shape.heads or 1),
        shape.precision.value,
    )


def _columns_sql() -> tuple[str, str, str]:
    cols = (*KEY_COLUMNS, *_VALUE_COLUMNS)
    names = ", ".join(cols)
    marks = ", ".join("?" for _ in cols)
    updates = ", ".join(f"{c} = excluded.{c}" for c in _VALUE_COLUMNS)
    return names, marks, updates


_NAMES, _MARKS, _UPDATES = _columns_sql()
_UPSERT = (
    f"INSERT INTO {TABLE} ({_NAMES}) VALUES ({_MARKS}) ON CONFLICT ({', '.join(KEY_COLUMNS)}) DO UPDATE SET {_UPDATES}"
)


def write_profile(db: sqlite_utils.Database, row: ProfileRow) -> None:
    """Insert ``row``, replacing a row with the same key; committed at once (a sweep can stop anytime)."""
    record = row.as_record()
    values = [record[c] for c in (*KEY_COLUMNS, *_VALUE_COLUMNS)]
    try:
        with db.conn:
            db.conn.execute(_UPSERT, values)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot write profile row {row.key}: {exc}") from exc


def measured_keys(db: sqlite_utils.Database, device: str, *, include_failed: bool = True) -> set[ProfileKey]:
    """Keys of the rows already stored for ``device`` (only the successful ones unless ``include_failed``)."""
    where = "device = ?" + ("" if include_failed else " AND ok = 1")
    sql = f"SELECT {', '.join(KEY_COLUMNS)} FROM {TABLE} WHERE {where}"
    try:
        return {tuple(r) for r in db.conn.execute(sql, (device,))}
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the profiles table: {exc}") from exc


def _row_from_record(r: sqlite3.Row | dict[str, Any]) -> ProfileRow:
    shape = Shape(n=r["n"], d=r["d"], kv_len=r["kv_len"], batch=r["batch"], heads=r["heads"], precision=r["precision"])
    return ProfileRow(
        device=r["device"],
        executor=r["executor"] or "",
        backend=r["backend"],
        stage=r["stage"],
        shape=shape,
        warmup=int(r["warmup"] or 0),
        repetitions=int(r["repetitions"] or 0),
        median_s=_float_or_none(r["median_s"]),
        p10_s=_float_or_none(r["p10_s"]),
        p90_s=_float_or_none(r["p90_s"]),
        min_s=_float_or_none(r["min_s"]),
        max_s=_float_or_none(r["max_s"]),
        ok=bool(r["ok"]),
        error=r["error"],
        measured_at=float(r["measured_at"] or 0.0),
    )


def _float_or_none(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def iter_profiles(
    db: sqlite_utils.Database, *, device: str | None = None, ok_only: bool = False
) -> Iterator[ProfileRow]:
    """Stored rows (of ``device`` if given), ordered by stage, shape and backend.

    A row whose shape fields are invalid raises :class:`StoreError` naming its id.
    """
    clauses, args = [], []
    if device is not None:
        clauses.append("device = ?")
        args.append(device)
    if ok_only:
        clauses.append("ok = 1")
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = f"SELECT * FROM {TABLE}{where} ORDER BY device, stage, precision, n, d, kv_len, batch, heads, backend"
    cursor = db.conn.cursor()
    try:
        cursor.execute(sql, args)
        names = [c[0] for c in cursor.description]
        for values in cursor:
            record = dict(zip(names, values, strict=True))
            try:
                yield _row_from_record(record)
            except ValueError as exc:
                raise StoreError(f"profiles row id={record.get('id')}: {exc}") from exc
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the profiles table: {exc}") from exc
    finally:
        cursor.close()


def read_profiles(db: sqlite_utils.Database, *, device: str | None = None, ok_only: bool = False) -> list[ProfileRow]:
    """All of :func:`iter_profiles` as a list."""
    return list(iter_profiles(db, device=device, ok_only=ok_only))


def profile_devices(db: sqlite_utils.Database) -> list[str]:
    """Device names that have rows in the table (sorted)."""
    try:
        return [r[0] for r in db.conn.execute(f"SELECT DISTINCT device FROM {TABLE} ORDER BY device")]
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the profiles table: {exc}") from exc


def write_profiles(db: sqlite_utils.Database, rows: Iterable[ProfileRow]) -> int:
    """Write several rows in one transaction; returns how many."""
    count = 0
    try:
        with db.conn:
            for row in rows:
                record = row.as_record()
                db.conn.execute(_UPSERT, [record[c] for c in (*KEY_COLUMNS, *_VALUE_COLUMNS)])
                count += 1
    except sqlite3.Error as exc:
        raise StoreError(f"cannot write profile rows: {exc}") from exc
    return count
