"""The SQLite schema of the decision log: its tables, columns and migrations (sqlite-utils).

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
:data:`MIGRATIONS` brings a log from one version to the next; they are run, with the
log's mark, in the one transaction :mod:`adaptive_sched.store.connection` opens after
:mod:`adaptive_sched.store.ownership` found the file to be ours.

>>> run_id_range(1)
(4294967296, 8589934591)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # sqlite_utils costs ~0.3 s to import: only schema creation needs it
    import sqlite_utils

SCHEMA_VERSION = 3

SQLITE_MAGIC = b"SQLite format 3\x00"

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


def schema_version(conn: sqlite3.Connection) -> int:
    """The schema version recorded in the database (0 for a new, empty file)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])
