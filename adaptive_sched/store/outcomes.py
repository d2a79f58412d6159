"""Recording one outcome of a logged decision, from another process than the one that decided.

A firmware script decides with ``adaptive-sched decide --db LOG``, runs the stage itself,
and reports what it cost with ``adaptive-sched observe --db LOG --id N --latency-ms X``:
the outcome row lands in the same ``outcomes`` table the scheduler's writer fills, so
the next scheduler (or ``decide``) that opens the log learns from it.

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "log.db")
>>> record_outcome(path, 1, 0.002)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
adaptive_sched.errors.StoreError: ...log.db: no such log
"""

from __future__ import annotations

import math
import sqlite3
import time
from pathlib import Path

from ..errors import StoreError
from ..types import check_latency
from .connection import connect
from .ownership import inspect_file
from .rows import INSERT_OUTCOMES
from .transactions import immediate


class UnknownDecision(StoreError, LookupError):
    """No decision with this id is in the log (never made, sampled out, or deleted by retention)."""


class AlreadyObserved(StoreError):
    """The decision already has an outcome; a second one would be learned from twice."""


def record_outcome(
    path: str | Path,
    decision_id: int,
    latency_s: float | None,
    *,
    ok: bool = True,
    error: str | None = None,
    timeout_s: float = 5.0,
) -> None:
    """Write the outcome of decision ``decision_id`` into the log at ``path``, synchronously.

    Parameters
    ----------
    path : str or Path
        An existing adaptive_sched log (a file that is not one is refused untouched).
    decision_id : int
    latency_s : float or None
        Seconds, finite and > 0 when ``ok``; for a failure it may be None (stored as NULL).
    ok : bool
        False for a run that failed (it is logged, and never learned from as a latency).
    error : str, optional
        What went wrong (failures only).

    Raises
    ------
    ValueError
        ``latency_s`` is not finite and > 0 although ``ok``.
    UnknownDecision
        The log holds no decision ``decision_id``.
    AlreadyObserved
        The decision already has an outcome.
    StoreError
        The file is missing, is not ours, or cannot be written.
    """
    if ok:
        latency: float | None = check_latency(latency_s)
    else:
        latency = None if latency_s is None or not math.isfinite(float(latency_s)) else float(latency_s)
        error = error or "failed"
    path = Path(path)
    if inspect_file(path, timeout_s=timeout_s).kind == "new":
        raise StoreError(f"{path}: no such log" if not path.exists() else f"{path}: an empty file, not a log")
    conn = connect(path, timeout_s=timeout_s, isolation_level=None)
    try:
        # One write transaction: two observers of the same id cannot both find it unobserved.
        with immediate(conn):
            if conn.execute("SELECT 1 FROM decisions WHERE id = ?", (int(decision_id),)).fetchone() is None:
                raise UnknownDecision(f"{path}: no decision with id {decision_id} in the log")
            if conn.execute("SELECT 1 FROM outcomes WHERE decision_id = ?", (int(decision_id),)).fetchone():
                raise AlreadyObserved(f"{path}: decision {decision_id} was already observed")
            conn.execute(INSERT_OUTCOMES, (int(decision_id), time.time(), latency, 1 if ok else 0, error or ""))
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot record the outcome of decision {decision_id} ({exc})") from exc
    finally:
        conn.close()
