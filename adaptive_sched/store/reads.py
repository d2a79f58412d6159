"""Reading the decision log back: for offline replay, warm restarts, reports and tests.

Records, one per decision (:func:`iter_logged`), runs and counts; numeric rows in bulk
for replay and export are in :mod:`~adaptive_sched.store.bulk_reads`.

Everything here streams with plain :mod:`sqlite3` (no sqlite_utils import, so a CLI
call stays fast) and works while other processes are logging to the same file (WAL).
A source is a path (opened read-only: never created, migrated or changed), an open
:class:`sqlite3.Connection`, or an ``sqlite_utils.Database``.

Examples
--------
>>> import os, tempfile
>>> from adaptive_sched.store.writer import DecisionLog
>>> from adaptive_sched.types import Backend, Decision, Shape, Stage
>>> path = os.path.join(tempfile.mkdtemp(), "log.db")
>>> with DecisionLog(path) as log:
...     run = log.start_run(device_profile="rk3588")
...     d = Decision.of(run << 32 | 1, Stage.QKV, Shape(n=1, d=4096), Backend.GPU, propensity=0.9)
...     log.decision(d)
...     log.outcome(d.id, 0.002)
>>> [(r.stage.value, r.backend.value, r.propensity, r.latency_s) for r in iter_logged(path)]
[('qkv', 'gpu', 0.9, 0.002)]
>>> last_run(path).device_profile, counts(path)["decisions"]
('rk3588', 1)
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from ..types import Backend, Choice, Decision, Shape, Stage
from .schema import RUN_COLUMNS, run_id_range
from .sources import Source, decision_columns, reading, source_name

logger = logging.getLogger(__name__)

_STAGES = {s.value: s for s in Stage}
_BACKENDS = {b.value: b for b in Backend}

_DECISION_SELECT = (
    "d.id, d.run, d.time, d.stage, d.n, d.d, d.kv_len, d.batch, d.heads, d.precision, d.after, d.backend, "
    "d.propensity, d.explored, d.policy_version, d.pred_cpu, d.pred_gpu, d.pred_npu, d.sample_rate, d.context, "
    "d.prob_cpu, d.prob_gpu, d.prob_npu"
)
#: the same for a log older than schema 3, opened read-only (no probability vector was logged)
_DECISION_SELECT_V2 = _DECISION_SELECT.replace("d.prob_cpu, d.prob_gpu, d.prob_npu", "NULL, NULL, NULL")


def _decision_select(conn: sqlite3.Connection) -> str:
    return _DECISION_SELECT if "prob_gpu" in decision_columns(conn) else _DECISION_SELECT_V2


@dataclass(frozen=True, slots=True)
class Run:
    """One row of ``runs``: a scheduler process that logged to the file."""

    id: int
    started_at: float | None
    host: str | None
    pid: int | None
    config_hash: str | None
    device_profile: str | None
    package_version: str | None
    #: the configuration, as JSON text
    config: str | None


class LoggedDecision(NamedTuple):
    """A logged decision joined with its outcome (``latency_s``/``ok`` are None without one).

    ``sample_rate`` is the probability exploit sampling kept the row (1 for explored rows
    and unsampled logs): weight the row by ``1 / sample_rate`` to undo the sampling.

    A named tuple rather than a frozen dataclass, like
    :class:`~adaptive_sched.types.Decision`: replay reads millions of them, and a tuple is
    built several times faster.
    """

    id: int
    run: int
    time: float
    stage: Stage
    shape: Shape
    backend: Backend
    after: Backend | None
    propensity: float
    explored: bool
    predicted: Mapping[Backend, float]
    #: the probability the logging policy gave each backend (empty for logs older than schema 3)
    probabilities: Mapping[Backend, float]
    policy_version: int
    sample_rate: float
    context: Mapping[str, Any] | None
    latency_s: float | None
    ok: bool | None
    error: str | None
    #: when the outcome was logged
    observed_at: float | None

    @property
    def observed(self) -> bool:
        """Whether an outcome was logged for this decision."""
        return self.ok is not None

    def as_decision(self) -> Decision:
        """The :class:`~adaptive_sched.types.Decision` as the scheduler made it."""
        probs = self.probabilities or MappingProxyType({self.backend: self.propensity})
        choice = Choice(self.backend, self.propensity, self.explored, self.predicted, probs, self.policy_version)
        return Decision(self.id, self.stage, self.shape, choice, self.after, self.time)


class _Decoder:
    """Rows to records, with a cache of the few distinct shapes a log holds."""

    def __init__(self) -> None:
        self.shapes: dict[tuple[Any, ...], Shape] = {}
        self.predictions: dict[tuple[Any, ...], Mapping[Backend, float]] = {}

    def shape(self, n: int, d: int, kv_len: int, batch: int, heads: int, precision: str) -> Shape:
        key = (n, d, kv_len, batch, heads, precision)
        shape = self.shapes.get(key)
        if shape is None:
            shape = self.shapes[key] = Shape(n=n, d=d, kv_len=kv_len, batch=batch, heads=heads, precision=precision)
        return shape

    def predicted(self, p_cpu: float | None, p_gpu: float | None, p_npu: float | None) -> Mapping[Backend, float]:
        # A log holds few distinct predictions (one per policy-table slot and version).
        key = (p_cpu, p_gpu, p_npu)
        found = self.predictions.get(key)
        if found is None:
            if len(self.predictions) > 100_000:
                self.predictions.clear()
            pairs = ((Backend.CPU, p_cpu), (Backend.GPU, p_gpu), (Backend.NPU, p_npu))
            found = self.predictions[key] = MappingProxyType({b: v for b, v in pairs if v is not None})
        return found

    def record(self, row: tuple[Any, ...]) -> LoggedDecision:
        (id_, run, t, stage, n, d, kv, batch, heads, prec, after, backend, prop, explored, pv,
         p_cpu, p_gpu, p_npu, rate, context, q_cpu, q_gpu, q_npu, observed_at, latency, ok, error) = row  # fmt: skip
        shape = self.shapes.get((n, d, kv, batch, heads, prec))
        if shape is None:
            shape = self.shape(n, d, kv, batch, heads, prec)
        return _new_record(
            (
                id_,
                id_ >> 32 if run is None else run,
                t,
                _STAGES.get(stage) or Stage(stage),
                shape,
                _BACKENDS.get(backend) or Backend(backend),
                None if after is None else _BACKENDS.get(after) or Backend(after),
                prop,
                explored == 1,
                self.predicted(p_cpu, p_gpu, p_npu),
                self.predicted(q_cpu, q_gpu, q_npu),
                pv or 0,
                1.0 if rate is None else rate,
                json.loads(context) if context else None,
                latency,
                None if ok is None else ok == 1,
                error,
                observed_at,
            )
        )


def _new_record(values: tuple[Any, ...]) -> LoggedDecision:
    return tuple.__new__(LoggedDecision, values)


def iter_logged(
    source: Source,
    *,
    run: int | None = None,
    stage: Stage | str | None = None,
    since: float | None = None,
    until: float | None = None,
    observed_only: bool = False,
    ok_only: bool = False,
) -> Iterator[LoggedDecision]:
    """Stream logged decisions joined with their outcomes, oldest first.

    Rows are streamed from SQLite (a few million rows need no more memory than a few).
    With ``run``, rows come in the run's sequence order (a primary-key range scan);
    otherwise in time order (the ``time`` index).

    Parameters
    ----------
    source : path, sqlite3.Connection or sqlite_utils.Database
    run : int, optional
        Only this run's decisions.
    stage : {"qkv", "attn"}, optional
    since, until : float, optional
        Only decisions with ``since <= time < until`` (Unix seconds).
    observed_only : bool
        Skip decisions without an outcome.
    ok_only : bool
        Only decisions whose run succeeded (implies ``observed_only``).

    Raises
    ------
    StoreError
        The file is missing, not a log, or cannot be read (the message names it).
    """
    where: list[str] = []
    params: list[Any] = []
    if run is not None:
        lo, hi = run_id_range(run)
        where.append("d.id BETWEEN ? AND ?")
        params += [lo, hi]
    if stage is not None:
        where.append("d.stage = ?")
        params.append(Stage(str(stage).lower()).value if not isinstance(stage, Stage) else stage.value)
    if since is not None:
        where.append("d.time >= ?")
        params.append(float(since))
    if until is not None:
        where.append("d.time < ?")
        params.append(float(until))
    if ok_only:
        where.append("o.ok = 1")
    elif observed_only:
        where.append("o.decision_id IS NOT NULL")
    join = "JOIN" if ok_only or observed_only else "LEFT JOIN"
    sql = "SELECT {select}, o.time, o.latency_s, o.ok, o.error FROM decisions d " + join
    sql += " outcomes o ON o.decision_id = d.id"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY d.id" if run is not None else " ORDER BY d.time, d.id"
    decoder = _Decoder()
    with reading(source, "read the decision log") as conn:
        cursor = conn.execute(sql.format(select=_decision_select(conn)), params)
        for row in cursor:
            yield decoder.record(row)


def runs(source: Source) -> list[Run]:
    """Every run recorded in the log, oldest first."""
    with reading(source, "read runs") as conn:
        rows = conn.execute(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs ORDER BY id").fetchall()
    return [Run(*row) for row in rows]


def last_run(source: Source) -> Run | None:
    """The most recently started run (the highest id), or None in an empty log."""
    with reading(source, "read runs") as conn:
        row = conn.execute(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    return None if row is None else Run(*row)


def counts(source: Source, *, run: int | None = None) -> dict[str, int]:
    """Rows in the log: runs, decisions, explored decisions, outcomes and failed outcomes.

    With ``run``, decisions and outcomes of that run only.
    """
    params: tuple[int, ...]
    if run is not None:
        lo, hi = run_id_range(run)
        d_where, o_where, params = " WHERE id BETWEEN ? AND ?", " WHERE decision_id BETWEEN ? AND ?", (lo, hi)
    else:
        d_where, o_where, params = "", "", ()
    with reading(source, "count rows") as conn:
        decisions, explored = conn.execute(
            f"SELECT count(*), coalesce(sum(explored), 0) FROM decisions{d_where}", params
        ).fetchone()
        outcomes, failed = conn.execute(
            f"SELECT count(*), coalesce(sum(ok = 0), 0) FROM outcomes{o_where}", params
        ).fetchone()
        n_runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
    return {
        "runs": int(n_runs),
        "decisions": int(decisions),
        "explored": int(explored),
        "outcomes": int(outcomes),
        "failed": int(failed),
    }


def recent_for_warm_start(
    source: Source, *, device: str | None = None, limit: int = 20_000
) -> Iterator[tuple[Decision, float]]:
    """The newest ``limit`` successful outcomes of runs on ``device``, oldest first.

    For a scheduler resuming from its log: it re-learns from these ``(decision,
    latency_s)`` pairs. A missing file yields nothing (a first start); rows that do not
    make a valid decision are skipped and counted in a warning.
    """
    if limit <= 0:
        return
    if isinstance(source, (str, Path)) and not Path(source).exists():
        return
    # Cold runs (first call of a program or model) are logged with error "cold"; the live
    # scheduler does not learn from them, so neither does a restart.
    where = "o.ok = 1 AND o.error IS NULL AND o.latency_s > 0"
    params: list[Any] = []
    if device is not None:
        where += " AND d.run IN (SELECT id FROM runs WHERE device_profile = ?)"
        params.append(device)
    sql = (
        "SELECT {select}, o.time, o.latency_s, o.ok, o.error "
        f"FROM decisions d JOIN outcomes o ON o.decision_id = d.id WHERE {where} "
        "ORDER BY d.time DESC, d.id DESC LIMIT ?"
    )
    params.append(int(limit))
    decoder = _Decoder()
    with reading(source, "read the decision log") as conn:
        rows = conn.execute(sql.format(select=_decision_select(conn)), params).fetchall()
    skipped = 0
    out: list[tuple[Decision, float]] = []
    for row in reversed(rows):
        try:
            rec = decoder.record(row)
            latency = float(rec.latency_s)  # type: ignore[arg-type]
            if not math.isfinite(latency):
                raise ValueError(f"latency_s is {latency}")
            out.append((rec.as_decision(), latency))
        except (ValueError, TypeError) as exc:
            skipped += 1
            if skipped == 1:
                logger.warning("%s: skipping a logged decision that is not valid: %s", source_name(source), exc)
    if skipped > 1:
        logger.warning("%s: skipped %d logged decisions that are not valid", source_name(source), skipped)
    yield from out
