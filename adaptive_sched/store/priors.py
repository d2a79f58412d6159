"""Read and write the ``priors`` table: one row per prior name and stage.

The columns hold JSON text (``params``, ``rows``, ``metrics``); what they mean, and the
hash that guards them, is :mod:`adaptive_sched.learners.priors`' business. This module
only moves records in and out, replacing every stage of a name in one transaction so a
reader never sees half of an updated prior.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

import sqlite_utils

from ..errors import StoreError

TABLE = "priors"
COLUMNS: tuple[str, ...] = (
    "name", "stage", "device", "model", "params", "content_hash", "training_rows", "rows", "metrics",
    "created_at",
)  # fmt: skip


def write_prior_records(db: sqlite_utils.Database, name: str, records: Sequence[Mapping[str, Any]]) -> None:
    """Replace every row of prior ``name`` by ``records`` (one per stage), atomically."""
    for rec in records:
        if rec.get("name") != name:
            raise StoreError(f"prior record for stage {rec.get('stage')!r} is named {rec.get('name')!r}, not {name!r}")
    sql = f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"
    try:
        with db.conn:
            db.conn.execute(f"DELETE FROM {TABLE} WHERE name = ?", (name,))
            db.conn.executemany(sql, [[rec.get(c) for c in COLUMNS] for rec in records])
    except sqlite3.Error as exc:
        raise StoreError(f"cannot write prior {name!r}: {exc}") from exc


def read_prior_records(db: sqlite_utils.Database, name: str) -> list[dict[str, Any]]:
    """The rows of prior ``name`` (one per stage), ordered by stage."""
    return _query(db, f"SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE name = ? ORDER BY stage", (name,))


def list_priors(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """One summary per stored prior: name, device, stages, models, newest ``created_at``."""
    rows = _query(
        db,
        f"SELECT name, device, group_concat(stage || ':' || model, ' ') AS models, "
        f"max(created_at) AS created_at, sum(training_rows) AS training_rows "
        f"FROM {TABLE} GROUP BY name, device ORDER BY name",
        (),
    )
    for row in rows:
        row["created_at"] = float(row["created_at"] or 0.0)
    return rows


def delete_prior(db: sqlite_utils.Database, name: str) -> int:
    """Remove prior ``name``; returns how many stage rows were deleted."""
    try:
        with db.conn:
            cur = db.conn.execute(f"DELETE FROM {TABLE} WHERE name = ?", (name,))
            return int(cur.rowcount)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot delete prior {name!r}: {exc}") from exc


def _query(db: sqlite_utils.Database, sql: str, args: Sequence[Any]) -> list[dict[str, Any]]:
    try:
        cur = db.conn.execute(sql, args)
        names = [c[0] for c in cur.description]
        return [dict(zip(names, values, strict=True)) for values in cur.fetchall()]
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the priors table: {exc}") from exc
