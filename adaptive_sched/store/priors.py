"""Read and write priors in the ``priors`` table: one row per prior name and stage.

The columns hold JSON text (``params``, ``rows``, ``metrics``); what the data means, and
the hash that guards it, is :mod:`adaptive_sched.learners.prior_data`'s business. This
module turns a :class:`~adaptive_sched.learners.prior_data.PriorData` into records and
back (verifying the hashes on the way in), and replaces every stage of a name in one
transaction so a reader never sees half of an updated prior.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlite_utils

from ..errors import PriorError, StoreError
from ..learners.prior_data import FORMAT, PriorData, canonical_json, prior_from_dict
from .connection import open_database

#: the longest JSON text a column of a prior record may hold (as for a prior file)
MAX_COLUMN_CHARS = 16 * 2**20
#: nesting deeper than this is not a prior (a real one is 5 levels deep)
MAX_JSON_DEPTH = 32

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


def _query(db: sqlite_utils.Database, sql: str, args: Sequence[Any]) -> list[dict[str, Any]]:
    try:
        cur = db.conn.execute(sql, args)
        names = [c[0] for c in cur.description]
        return [dict(zip(names, values, strict=True)) for values in cur.fetchall()]
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the priors table: {exc}") from exc


# -- priors <-> records --------------------------------------------------------------------


def save_prior(db_path: str | Path, data: PriorData) -> None:
    """Store ``data`` in the ``priors`` table of ``db_path`` (replacing a prior of the same name)."""
    records = []
    for stage, sp in sorted(data.stages.items()):
        records.append(
            {
                "name": data.name,
                "stage": stage.value,
                "device": data.device,
                "model": sp.model,
                "params": canonical_json(
                    {
                        "format": FORMAT,
                        "hyperparameters": dict(sp.params),
                        "seed": data.seed,
                        "feature_set": data.feature_set,
                        "backends": [b.value for b in data.backends],
                        "package_version": data.package_version,
                        "river_version": data.river_version,
                        "prior_hash": data.content_hash,
                    }
                ),
                "content_hash": data.stage_hash(stage),
                "training_rows": len(sp.rows),
                "rows": canonical_json([r.as_dict() for r in sp.rows]),
                "metrics": canonical_json(dict(sp.metrics)),
                "created_at": data.created_at or time.time(),
            }
        )
    db = open_database(db_path)
    try:
        write_prior_records(db, data.name, records)
    finally:
        db.close()


def read_prior_db(db_path: str | Path, *, name: str | None = None, device: str | None = None) -> PriorData:
    """Read and verify a prior from the ``priors`` table.

    Without ``name``, the most recent prior of ``device`` is taken.
    """
    where = str(db_path)
    db = open_database(db_path, readonly=True)
    try:
        if name is None:
            available = list_priors(db)
            mine = [p for p in available if device is None or p["device"] == device]
            if not mine:
                if available:
                    others = ", ".join(sorted({f"{p['name']} ({p['device']})" for p in available}))
                    raise PriorError(f"{where}: no prior for device {device!r}; it has: {others}")
                raise PriorError(f"{where}: no priors stored (train some with `adaptive-sched train`)")
            name = max(mine, key=lambda p: p["created_at"])["name"]
        records = read_prior_records(db, name)
    finally:
        db.close()
    if not records:
        raise PriorError(f"{where}: no prior named {name!r}")
    return _prior_from_records(records, f"{where} (priors table)")


def _prior_from_records(records: Sequence[Mapping[str, Any]], where: str) -> PriorData:
    first_params = _json_field(records[0], "params", where)
    stages: dict[str, Any] = {}
    for rec in records:
        rwhere = f"{where}, stage {rec.get('stage')!r}"
        params = _json_field(rec, "params", rwhere)
        if not isinstance(params, Mapping) or params.get("prior_hash") != first_params.get("prior_hash"):
            raise PriorError(f"{rwhere}: belongs to another version of prior {rec.get('name')!r}")
        if rec.get("device") != records[0].get("device"):
            raise PriorError(f"{rwhere}: device {rec.get('device')!r} differs from the other stages")
        stages[str(rec["stage"])] = {
            "model": rec.get("model"),
            "params": params.get("hyperparameters"),
            "content_hash": rec.get("content_hash"),
            "metrics": _json_field(rec, "metrics", rwhere) or {},
            "rows": _json_field(rec, "rows", rwhere),
        }
    data = {
        "format": first_params.get("format"),
        "name": records[0].get("name"),
        "device": records[0].get("device"),
        "content_hash": first_params.get("prior_hash"),
        "backends": first_params.get("backends"),
        "seed": first_params.get("seed"),
        "feature_set": first_params.get("feature_set"),
        "package_version": first_params.get("package_version", ""),
        "river_version": first_params.get("river_version", ""),
        "created_at": records[0].get("created_at") or 0.0,
        "stages": stages,
    }
    return prior_from_dict(data, where)


def _json_field(rec: Mapping[str, Any], key: str, where: str) -> Any:
    text = rec.get(key)
    if text is None:
        return None
    if isinstance(text, str) and len(text) > MAX_COLUMN_CHARS:
        raise PriorError(f"{where}: column {key!r} is over {MAX_COLUMN_CHARS} characters; not a prior")
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        raise PriorError(f"{where}: column {key!r} is not valid JSON") from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise PriorError(f"{where}: column {key!r} is nested over {MAX_JSON_DEPTH} levels deep; not a prior")
    return value


def json_depth(value: Any) -> int:
    """How deeply lists and objects nest in parsed JSON (a scalar is 0), without recursion.

    >>> json_depth({"a": [1, {"b": []}]})
    4
    """
    if not isinstance(value, (dict, list)):
        return 0
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item
        # only containers are pushed: a prior is mostly numbers, and they cannot nest
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest
