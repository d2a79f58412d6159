"""``report_command``: the summary of a decision log that ``adaptive-sched report`` prints.

Offline replay (off-policy evaluation) lives in :mod:`adaptive_sched.offline.replay`; this
module keeps only the report until it moves to :mod:`adaptive_sched.offline`.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import StoreError
from .store.schema import connect


def report_command(args: Any, *, render_table: Callable[..., str], emit: Callable[..., None]) -> int:
    path = Path(args.db)
    conn = connect(path, readonly=True)
    try:
        runs = conn.execute("SELECT COUNT(*), MIN(started_at), MAX(started_at) FROM runs").fetchone()
        per = conn.execute(
            "SELECT d.stage, d.backend, COUNT(*), SUM(d.explored), AVG(o.latency_s), "
            "SUM(CASE WHEN o.ok = 0 THEN 1 ELSE 0 END), SUM(CASE WHEN o.decision_id IS NULL THEN 1 ELSE 0 END) "
            "FROM decisions d LEFT JOIN outcomes o ON o.decision_id = d.id "
            "GROUP BY d.stage, d.backend ORDER BY d.stage, d.backend"
        ).fetchall()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: cannot read the decision log ({exc})") from exc
    finally:
        conn.close()
    rows = [{"stage": s, "backend": b, "decisions": n, "explored": int(e or 0),
             "mean_ms": (m or math.nan) * 1e3, "failed": int(f or 0), "no_outcome": int(u or 0)}
            for s, b, n, e, m, f, u in per]  # fmt: skip
    data = {"runs": runs[0], "first_run": runs[1], "last_run": runs[2], "by_stage_backend": rows}

    def table() -> str:
        body = [[r["stage"], r["backend"], r["decisions"], r["explored"], r["mean_ms"], r["failed"], r["no_outcome"]]
                for r in rows]  # fmt: skip
        return f"{runs[0]} run(s) in {path}\n" + render_table(
            ["stage", "backend", "decisions", "explored", "mean ms", "failed", "no outcome"], body
        )

    emit(args, data, table)
    return 0
