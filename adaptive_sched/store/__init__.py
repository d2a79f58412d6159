"""The SQLite decision log: schema, background writer, retention, reads for replay and training.

A file is only ever written if it is ours (see :mod:`adaptive_sched.store.ownership`);
whole files the package writes go through :func:`write_atomic`.

>>> from adaptive_sched.store import DecisionLog, RetentionPolicy, iter_logged   # doctest: +SKIP
>>> log = DecisionLog("log.db", retention=RetentionPolicy(max_rows=5_000_000))   # doctest: +SKIP

Importing this package reads nothing and does not import sqlite_utils (only creating
the schema needs it); its modules load when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .connection import open_database
    from .files import write_atomic
    from .ownership import APPLICATION_ID, Inspection, inspect_file
    from .reads import LoggedDecision, Run, counts, iter_logged, last_run, recent_for_warm_start, runs
    from .retention import RetentionPolicy, RetentionTracker, apply_retention
    from .rows import keeps_exploit
    from .schema import SCHEMA_VERSION, run_id_range
    from .writer import DecisionLog, LogStats

# Loaded on first use: a cold ``decide`` reads one row through .connection and should not pay
# for the writer, retention and reads modules (tens of milliseconds together).
_LAZY = {
    "write_atomic": "files",
    **dict.fromkeys(
        ("LoggedDecision", "Run", "counts", "iter_logged", "last_run", "recent_for_warm_start", "runs"), "reads"
    ),
    **dict.fromkeys(("RetentionPolicy", "RetentionTracker", "apply_retention"), "retention"),
    "keeps_exploit": "rows",
    "open_database": "connection",
    **dict.fromkeys(("APPLICATION_ID", "Inspection", "inspect_file"), "ownership"),
    **dict.fromkeys(("SCHEMA_VERSION", "run_id_range"), "schema"),
    **dict.fromkeys(("DecisionLog", "LogStats"), "writer"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "DecisionLog",
    "Inspection",
    "LogStats",
    "LoggedDecision",
    "RetentionPolicy",
    "RetentionTracker",
    "Run",
    "apply_retention",
    "counts",
    "inspect_file",
    "iter_logged",
    "keeps_exploit",
    "last_run",
    "open_database",
    "recent_for_warm_start",
    "run_id_range",
    "runs",
    "write_atomic",
]
