"""The SQLite decision log: schema, background writer, retention, reads for replay and training.

>>> from adaptive_sched.store import DecisionLog, RetentionPolicy, iter_logged   # doctest: +SKIP
>>> log = DecisionLog("log.db", retention=RetentionPolicy(max_rows=5_000_000))   # doctest: +SKIP

Importing this package reads nothing and does not import sqlite_utils (only creating
the schema needs it).
"""

from .reads import LoggedDecision, Run, counts, iter_logged, last_run, recent_for_warm_start, runs
from .retention import RetentionPolicy, apply_retention
from .rows import keeps_exploit
from .schema import SCHEMA_VERSION, open_database, run_id_range
from .writer import DecisionLog, LogStats

__all__ = [
    "SCHEMA_VERSION",
    "DecisionLog",
    "LogStats",
    "LoggedDecision",
    "RetentionPolicy",
    "Run",
    "apply_retention",
    "counts",
    "iter_logged",
    "keeps_exploit",
    "last_run",
    "open_database",
    "recent_for_warm_start",
    "run_id_range",
    "runs",
]
