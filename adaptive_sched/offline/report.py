"""What a decision log says: latency percentiles, failures, drops, windows and time series.

:func:`load_report` reads the decisions of a run (or of a time window) once and
builds a :class:`Report`: per (stage, backend) counts and p50/p95/p99 latency,
failures and the decisions whose rows never reached the log (gaps in the run's id
sequence), an optional per-window view, and the per-decision series the plots of
:mod:`.plots` draw (time, latency, the policy's predictions, exploration).

The time axis
-------------
Decisions carry wall-clock times. On real executors that is the axis; on the
simulated device a run of a minute of device time takes a second of wall time, so
when the stage latencies of a run add up to more than its wall-clock span the axis is
the device's busy time instead (the running sum of observed stage latencies), and
:attr:`Series.time_label` says which it is.

What the log does not hold
--------------------------
Drift alarms are the policy's state, not rows of the log. What the log holds of them
is their effect: after an alarm the policy lifts the probability of the alternatives
until each is re-measured, and every decision logs its probability vector. The
series keep, per decision, the probability given to backends other than the one the
policy would exploit (:attr:`Series.explore_prob`). Failures and timeouts
(which quarantine a backend) are outcome rows with ``ok = 0``.

Examples
--------
>>> import os, tempfile
>>> from adaptive_sched.store.writer import DecisionLog
>>> from adaptive_sched.types import Backend, Decision, Shape, Stage
>>> path = os.path.join(tempfile.mkdtemp(), "log.db")
>>> with DecisionLog(path) as log:
...     run = log.start_run(device_profile="rk3588")
...     for i in range(1, 5):
...         d = Decision.of(run << 32 | i, Stage.QKV, Shape(n=1, d=4096), Backend.GPU, propensity=1.0)
...         log.decision(d)
...         log.outcome(d.id, 0.001 * i)
>>> report = load_report(path)
>>> [(s.stage, s.backend, s.decisions, round(s.p50_ms, 2)) for s in report.summaries]
[('qkv', 'gpu', 4, 2.5)]
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError
from ..store.reads import LoggedDecision, Run, iter_logged, runs
from ..types import Backend, Shape, Stage

log = logging.getLogger(__name__)

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in ``"60s"``, ``"5m"``, ``"1h"``, ``"2d"`` or a plain number of seconds.

    >>> parse_duration("90s"), parse_duration("5m"), parse_duration("0.5")
    (90.0, 300.0, 0.5)
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*", str(text))
    if not m:
        raise ValueError(f"expected a duration such as 60s, 5m or 1h, got {text!r}")
    value = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if value <= 0:
        raise ValueError(f"a duration must be > 0, got {text!r}")
    return value


def parse_time(text: str) -> float:
    """Unix seconds from a number or an ISO 8601 date-time (UTC unless it says otherwise).

    >>> parse_time("1700000000"), parse_time("2023-11-14T22:13:20Z")
    (1700000000.0, 1700000000.0)
    """
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"expected Unix seconds or an ISO 8601 date-time, got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def shape_bucket(shape: Shape) -> str:
    """Display bucket of a shape: the prefill length, or the power-of-two range of the KV length.

    >>> shape_bucket(Shape(n=128, d=1536)), shape_bucket(Shape(n=1, d=1536, kv_len=300))
    ('prefill n=128', 'decode kv 256-511')
    """
    if shape.n > 1:
        return f"prefill n={shape.n}"
    lo = 1 << max(0, int(math.log2(max(1, shape.kv_len))))
    return f"decode kv {lo}-{2 * lo - 1}"


def _ms(seconds: float | None) -> float | None:
    """Milliseconds, or None for nothing measured (JSON has no NaN)."""
    return None if seconds is None or not math.isfinite(seconds) else seconds * 1e3


@dataclass(frozen=True)
class LatencySummary:
    """One (stage, backend): how often it was chosen and what it cost (ms; None without outcomes)."""

    stage: str
    backend: str
    decisions: int
    explored: int
    #: outcomes with ``ok = 0`` (an executor that raised or ran past the timeout)
    failed: int
    #: decisions that have no outcome row
    no_outcome: int
    mean_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Window:
    """The summaries of the decisions made in ``[start, start + seconds)`` (Unix seconds)."""

    start: float
    seconds: float
    summaries: tuple[LatencySummary, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"start": self.start, "seconds": self.seconds, "by_stage_backend": [s.as_dict() for s in self.summaries]}


@dataclass
class Series:
    """Per decision of one selection, in order: what the plots draw (numpy arrays)."""

    #: x axis (seconds from the first decision), see the module docstring
    t: np.ndarray
    time_label: str
    stage: np.ndarray  # str
    backend: np.ndarray  # str
    bucket: np.ndarray  # str
    explored: np.ndarray  # bool
    #: observed latency in seconds (nan: no outcome or a failure)
    latency_s: np.ndarray
    ok: np.ndarray  # bool; False for failures and decisions without an outcome
    failed: np.ndarray  # bool; an outcome row with ok = 0
    error: list[str | None]
    #: backend -> the policy's predicted latency of each decision on it (s; nan: not predicted)
    predicted: dict[str, np.ndarray]
    #: the probability of exploring: 1 - the largest probability the policy gave any backend
    explore_prob: np.ndarray
    #: the static prior's backend for each decision ('' when no prior could be loaded)
    static_choice: np.ndarray
    #: device telemetry logged with the decisions: ``{backend}_temp_c`` and ``{backend}_clock``
    #: (the clock it may run at over its maximum) per backend that reported them (nan where a
    #: decision did not)
    telemetry: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.t)


@dataclass
class Report:
    """A summary of the selected decisions, and the series behind the plots."""

    source: str
    runs: list[Run]
    selected_runs: list[int]
    summaries: list[LatencySummary]
    windows: list[Window]
    #: decision rows missing from the log (gaps in each run's id sequence); None when a run
    #: samples its exploit rows (gaps are then expected)
    dropped: int | None
    explore_budget: float | None
    series: Series | None = field(repr=False, default=None)

    def as_dict(self) -> dict[str, Any]:
        started = [r.started_at for r in self.runs if r.started_at is not None]
        return {
            "db": self.source,
            "runs": len(self.runs),
            "first_run": min(started) if started else None,
            "last_run": max(started) if started else None,
            "selected_runs": self.selected_runs,
            "decisions": sum(s.decisions for s in self.summaries),
            "failed": sum(s.failed for s in self.summaries),
            "no_outcome": sum(s.no_outcome for s in self.summaries),
            "dropped": self.dropped,
            "explore_budget": self.explore_budget,
            "by_stage_backend": [s.as_dict() for s in self.summaries],
            "windows": [w.as_dict() for w in self.windows],
        }


def summarize(rows: Iterable[LoggedDecision]) -> list[LatencySummary]:
    """Counts and latency percentiles per (stage, backend), sorted by stage then backend."""
    groups: dict[tuple[str, str], list[LoggedDecision]] = defaultdict(list)
    for r in rows:
        groups[(r.stage.value, r.backend.value)].append(r)
    out = []
    for (stage, backend), group in sorted(groups.items()):
        lat = np.array([r.latency_s for r in group if r.ok and r.latency_s is not None], dtype=float)
        lat = lat[np.isfinite(lat)]
        pct = np.percentile(lat, [50, 95, 99]) if lat.size else [math.nan] * 3
        out.append(
            LatencySummary(
                stage=stage,
                backend=backend,
                decisions=len(group),
                explored=sum(1 for r in group if r.explored),
                failed=sum(1 for r in group if r.ok is False),
                no_outcome=sum(1 for r in group if r.ok is None),
                mean_ms=_ms(float(lat.mean())) if lat.size else None,
                p50_ms=_ms(float(pct[0])),
                p95_ms=_ms(float(pct[1])),
                p99_ms=_ms(float(pct[2])),
            )
        )
    return out


def windowed(rows: Sequence[LoggedDecision], seconds: float) -> list[Window]:
    """:func:`summarize` per window of ``seconds`` of wall-clock time, oldest first (empty ones left out)."""
    if not rows:
        return []
    start = min(r.time for r in rows)
    groups: dict[int, list[LoggedDecision]] = defaultdict(list)
    for r in rows:
        groups[int((r.time - start) // seconds)].append(r)
    return [Window(start + k * seconds, seconds, tuple(summarize(groups[k]))) for k in sorted(groups)]


def _dropped(rows: Sequence[LoggedDecision]) -> int | None:
    by_run: dict[int, list[int]] = defaultdict(list)
    for r in rows:
        if r.sample_rate < 1.0:
            return None
        by_run[r.run].append(r.id & 0xFFFFFFFF)
    # Only gaps between logged ids: a selection by time may cut a run at either end.
    return sum(max(seq) - min(seq) + 1 - len(set(seq)) for seq in by_run.values())


def _run_config(run: Run) -> dict[str, Any] | None:
    try:
        data = json.loads(run.config) if run.config else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _static_chooser(run_configs: Sequence[dict[str, Any]]) -> Callable[[Stage, Shape], str] | None:
    """The core paper's selector (the offline prior of the run's config), or None if it cannot be loaded."""
    for data in run_configs:
        try:
            from ..build import load_prior
            from ..config import load_config

            prior = load_prior(load_config(data))
        except Exception as exc:  # a report still draws everything else
            log.warning("the static prior of the logged config cannot be loaded (%s): no static-prior line", exc)
            return None
        if prior is not None:
            return lambda stage, shape: str(prior.choose(stage, shape).value)
    return None


def build_series(rows: Sequence[LoggedDecision], static: Callable[[Stage, Shape], str] | None = None) -> Series:
    """The per-decision series of ``rows`` (one run, or one time window), in decision order."""
    n = len(rows)
    wall = np.array([r.time for r in rows], dtype=float)
    latency = np.array([r.latency_s if r.ok and r.latency_s is not None else math.nan for r in rows], dtype=float)
    latency[~np.isfinite(latency)] = math.nan
    busy = np.cumsum(np.nan_to_num(latency))
    wall_span = float(wall.max() - wall.min()) if n else 0.0
    if n and busy[-1] > wall_span:
        # A simulated run: its device time runs far ahead of the wall clock.
        t, label = np.concatenate(([0.0], busy[:-1])), "device busy time (s, sum of stage latencies)"
    else:
        t, label = wall - (wall.min() if n else 0.0), "wall-clock time since the first decision (s)"
    backends = sorted({b.value for r in rows for b in r.predicted} | {r.backend.value for r in rows})
    predicted = {b: np.array([r.predicted.get(Backend(b), math.nan) for r in rows], dtype=float) for b in backends}
    explore = np.array([1.0 - max(r.probabilities.values()) if r.probabilities else math.nan for r in rows])
    choices: list[str] = []
    cache: dict[tuple[Stage, Shape], str] = {}
    for r in rows:
        if static is None:
            choices.append("")
            continue
        key = (r.stage, r.shape)
        if key not in cache:
            if len(cache) > 100_000:
                cache.clear()
            cache[key] = static(r.stage, r.shape)
        choices.append(cache[key])
    return Series(
        t=t,
        time_label=label,
        stage=np.array([r.stage.value for r in rows], dtype=object),
        backend=np.array([r.backend.value for r in rows], dtype=object),
        bucket=np.array([shape_bucket(r.shape) for r in rows], dtype=object),
        explored=np.array([r.explored for r in rows], dtype=bool),
        latency_s=latency,
        ok=np.array([bool(r.ok) for r in rows], dtype=bool),
        failed=np.array([r.ok is False for r in rows], dtype=bool),
        error=[r.error for r in rows],
        predicted=predicted,
        explore_prob=explore,
        static_choice=np.array(choices, dtype=object),
        telemetry=_telemetry_series(rows),
    )


def _telemetry_series(rows: Sequence[LoggedDecision]) -> dict[str, np.ndarray]:
    """Temperature, clock ratio and load per backend from the logged contexts (see ``telemetry.Snapshot``)."""
    from ..telemetry import Snapshot

    out: dict[str, list[float]] = {}
    for i, r in enumerate(rows):
        if not r.context:
            continue
        snapshot = Snapshot.from_context(r.context)
        for backend, reading in snapshot.backends.items():
            for key, value in ((f"{backend.value}_temp_c", reading.temp_c),
                               (f"{backend.value}_clock", reading.clock_ratio()),
                               (f"{backend.value}_load", reading.load)):  # fmt: skip
                if value is not None:
                    out.setdefault(key, [math.nan] * len(rows))[i] = value
    return {k: np.array(v, dtype=float) for k, v in sorted(out.items())}


def load_report(
    db: str | Path,
    *,
    run: int | None = None,
    since: float | None = None,
    until: float | None = None,
    window_s: float | None = None,
    series: bool = False,
) -> Report:
    """Read the selected decisions of ``db`` and summarise them.

    Parameters
    ----------
    db : path
        The decision log (opened read-only).
    run : int, optional
        Only this run. With neither ``run`` nor ``since``/``until``, the last run when
        ``series`` is asked for (a time series spans one run), else every decision.
    since, until : float, optional
        Only decisions with ``since <= time < until`` (Unix seconds).
    window_s : float, optional
        Also summarise each window of this many seconds.
    series : bool
        Also build the per-decision :class:`Series` (and find the static prior's choices).

    Raises
    ------
    StoreError
        The file is missing or not a log, or ``run`` is not in it.
    """
    path = Path(db)
    if not path.exists():
        raise StoreError(f"{path}: no such database")
    all_runs = runs(path)
    known = {r.id for r in all_runs}
    if run is not None and run not in known:
        have = ", ".join(str(r) for r in sorted(known)) or "none"
        raise StoreError(f"{path}: no run {run} in the log (runs: {have})")
    if run is None and series and since is None and until is None and all_runs:
        run = all_runs[-1].id
    rows = list(iter_logged(path, run=run, since=since, until=until))
    selected = sorted({r.run for r in rows})
    picked = [r for r in all_runs if r.id in selected]
    configs = [c for c in (_run_config(r) for r in picked) if c is not None]
    budget = None
    for c in configs:
        value = (c.get("policy") or {}).get("explore_budget")
        if isinstance(value, (int, float)):
            budget = float(value)
    return Report(
        source=str(path),
        runs=all_runs,
        selected_runs=selected,
        summaries=summarize(rows),
        windows=windowed(rows, window_s) if window_s else [],
        dropped=_dropped(rows),
        explore_budget=budget,
        series=build_series(rows, _static_chooser(configs)) if series else None,
    )


__all__ = [
    "LatencySummary",
    "Report",
    "Series",
    "Window",
    "build_series",
    "load_report",
    "parse_duration",
    "parse_time",
    "shape_bucket",
    "summarize",
    "windowed",
]
