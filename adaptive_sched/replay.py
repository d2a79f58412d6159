"""Offline replay: estimate, from logged decisions, what another policy would have cost.

Every logged decision carries the behaviour policy's propensity, so the mean latency a
candidate policy would have had can be estimated without running it (off-policy
evaluation). Four estimators run side by side, each a small class:

``IPS``    inverse propensity scoring: unbiased, high variance
``SNIPS``  self-normalised IPS: a little bias, much less variance
``DM``     direct method: the candidate's choices scored by a latency model fitted to the log
``DR``     doubly robust: DM plus an IPS correction of the model's residuals

Rows kept by exploit sampling (``store.exploit_sample_rate``) are re-weighted by
``1 / sample_rate``. Each stage is evaluated given the logged previous backend
(``after``): a candidate that would have moved ``qkv`` elsewhere is credited with
``attn``'s cost as logged after the backend that ``qkv`` actually used.

>>> rows = [LoggedRow(Stage.QKV, Shape(n=1, d=64), None, Backend.GPU, 0.5, 2e-3),
...         LoggedRow(Stage.QKV, Shape(n=1, d=64), None, Backend.NPU, 0.5, 1e-3)]
>>> est = evaluate(rows, {"npu": FixedCandidate(Backend.NPU)})
>>> round(est["npu"]["SNIPS"].value * 1e3, 3)
1.0
"""

from __future__ import annotations

import abc
import math
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import StoreError
from .policies import Observation, Policy, bucket_key
from .store.reads import iter_logged
from .store.schema import connect
from .types import Backend, Shape, Stage


@dataclass(frozen=True)
class LoggedRow:
    """One logged decision with its observed latency (the bandit feedback)."""

    stage: Stage
    shape: Shape
    after: Backend | None
    backend: Backend
    propensity: float
    latency_s: float
    sample_rate: float = 1.0
    explored: bool = False
    predicted: Mapping[Backend, float] | None = None
    run: int = 0
    id: int = 0


def read_logged(path: str | Path, *, run: int | None = None) -> Iterator[LoggedRow]:
    """Stream the successful logged decisions of ``path`` (oldest first)."""
    for rec in iter_logged(path, run=run, ok_only=True):
        yield LoggedRow(
            stage=rec.stage,
            shape=rec.shape,
            after=rec.after,
            backend=rec.backend,
            propensity=rec.propensity,
            latency_s=float(rec.latency_s),  # type: ignore[arg-type]  # ok_only: always set
            sample_rate=rec.sample_rate,
            explored=rec.explored,
            predicted=rec.predicted,
            run=rec.run,
            id=rec.id,
        )


# -- candidates ---------------------------------------------------------------------------------
class Candidate(abc.ABC):
    """A policy under evaluation: its probability of each backend for a logged context."""

    name = "candidate"

    @abc.abstractmethod
    def probabilities(self, row: LoggedRow) -> Mapping[Backend, float]:
        """The candidate's probability of each backend in ``row``'s context."""

    def learn(self, row: LoggedRow) -> None:
        """Candidates that learn online see each logged outcome after being asked about it."""
        return None


class FixedCandidate(Candidate):
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.name = f"{backend.value}-only"

    def probabilities(self, row: LoggedRow) -> Mapping[Backend, float]:
        return {self.backend: 1.0}


class LoggedCandidate(Candidate):
    """The behaviour policy itself: its estimate is the observed mean (a sanity check)."""

    name = "logged"

    def probabilities(self, row: LoggedRow) -> Mapping[Backend, float]:
        return {row.backend: row.propensity}


class PolicyCandidate(Candidate):
    """Any :class:`~adaptive_sched.policies.Policy`; learning policies learn from each logged outcome in order."""

    def __init__(self, policy: Policy, name: str, learns: bool = True) -> None:
        self.policy = policy
        self.name = name
        self.learns = learns

    def probabilities(self, row: LoggedRow) -> Mapping[Backend, float]:
        return self.policy.probabilities(row.stage, row.shape, row.after)

    def learn(self, row: LoggedRow) -> None:
        if self.learns:
            self.policy.learn(Observation(row.stage, row.shape, row.after, row.backend, row.latency_s))


# -- estimators ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """Estimated mean latency per decision (seconds) with a 95% interval where one is known."""

    value: float
    low: float = math.nan
    high: float = math.nan
    effective_n: float = math.nan


class Estimator(abc.ABC):
    """Accumulates weighted terms over the log and returns an :class:`Estimate`."""

    name = "estimator"

    def __init__(self) -> None:
        self._n = 0.0  # sum of sampling weights
        self._sum = 0.0
        self._sq = 0.0
        self._w = 0.0
        self._w2 = 0.0

    def add(self, row: LoggedRow, probs: Mapping[Backend, float], model: LatencyModel) -> None:
        s = 1.0 / row.sample_rate
        rho = probs.get(row.backend, 0.0) / row.propensity
        term, weight = self._term(row, probs, rho, model)
        self._n += s
        self._sum += s * term
        self._sq += s * term * term
        self._w += s * weight
        self._w2 += s * weight * weight

    @abc.abstractmethod
    def _term(
        self, row: LoggedRow, probs: Mapping[Backend, float], rho: float, model: LatencyModel
    ) -> tuple[float, float]:
        """(the row's contribution, its importance weight)."""

    def estimate(self) -> Estimate:
        if self._n == 0:
            return Estimate(math.nan)
        mean = self._sum / self._n
        var = max(0.0, self._sq / self._n - mean * mean)
        half = 1.96 * math.sqrt(var / self._n)
        ess = (self._w * self._w / self._w2) if self._w2 else 0.0
        return Estimate(mean, mean - half, mean + half, ess)


class IPS(Estimator):
    name = "IPS"

    def _term(
        self, row: LoggedRow, probs: Mapping[Backend, float], rho: float, model: LatencyModel
    ) -> tuple[float, float]:
        return rho * row.latency_s, rho


class SNIPS(IPS):
    name = "SNIPS"

    def estimate(self) -> Estimate:
        if self._w == 0:
            return Estimate(math.nan)
        ess = (self._w * self._w / self._w2) if self._w2 else 0.0
        return Estimate(self._sum / self._w, effective_n=ess)


class DM(Estimator):
    name = "DM"

    def _term(
        self, row: LoggedRow, probs: Mapping[Backend, float], rho: float, model: LatencyModel
    ) -> tuple[float, float]:
        return sum(p * model.predict(row, b) for b, p in probs.items()), 1.0


class DR(Estimator):
    name = "DR"

    def _term(
        self, row: LoggedRow, probs: Mapping[Backend, float], rho: float, model: LatencyModel
    ) -> tuple[float, float]:
        direct = sum(p * model.predict(row, b) for b, p in probs.items())
        return direct + rho * (row.latency_s - model.predict(row, row.backend)), rho


ESTIMATORS: tuple[type[Estimator], ...] = (IPS, SNIPS, DM, DR)


class LatencyModel:
    """Mean logged latency per (stage, shape bucket, previous backend, backend), for DM and DR.

    Falls back to the latency the behaviour policy predicted at decision time where a
    backend was never observed in a bucket.
    """

    def __init__(self, rows: Iterable[LoggedRow]) -> None:
        sums: dict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0.0, 0.0])
        for r in rows:
            s = sums[(r.stage, bucket_key(r.stage, r.shape, lookahead=False), r.after, r.backend)]
            s[0] += r.latency_s / r.sample_rate
            s[1] += 1.0 / r.sample_rate
        self._means = {k: v[0] / v[1] for k, v in sums.items()}

    def predict(self, row: LoggedRow, backend: Backend) -> float:
        mean = self._means.get((row.stage, bucket_key(row.stage, row.shape, lookahead=False), row.after, backend))
        if mean is not None:
            return mean
        if row.predicted and backend in row.predicted:
            return row.predicted[backend]
        return row.latency_s  # nothing known: assume it costs what was observed


def evaluate(
    rows: Sequence[LoggedRow],
    candidates: Mapping[str, Candidate],
    estimators: Sequence[type[Estimator]] = ESTIMATORS,
) -> dict[str, dict[str, Estimate]]:
    """Every estimator's estimate of every candidate's mean latency per decision."""
    model = LatencyModel(rows)
    results: dict[str, dict[str, Estimate]] = {}
    for name, cand in candidates.items():
        ests = [cls() for cls in estimators]
        for row in rows:
            probs = cand.probabilities(row)
            for e in ests:
                e.add(row, probs, model)
            cand.learn(row)
        results[name] = {e.name: e.estimate() for e in ests}
    return results


# -- commands -------------------------------------------------------------------------------
def _candidates(names: Sequence[str], config_source: str) -> dict[str, Candidate]:
    from .build import build_policy, load_prior
    from .config import load_config
    from .policies import AdaptivePolicy, StaticPriorPolicy

    out: dict[str, Candidate] = {}
    config = None
    for name in names:
        if name == "logged":
            out[name] = LoggedCandidate()
        elif name in ("cpu", "gpu", "npu"):
            out[f"{name}-only"] = FixedCandidate(Backend(name))
        elif name in ("static", "adaptive"):
            config = config or load_config(config_source)
            prior = load_prior(config)
            policy: Policy = StaticPriorPolicy() if name == "static" else build_policy(config)
            if name == "adaptive" and not isinstance(policy, AdaptivePolicy):
                policy = AdaptivePolicy()
            policy.bind(config.candidates, prior)
            out[name] = PolicyCandidate(policy, name, learns=name == "adaptive")
        else:
            raise ValueError(f"--policies: unknown policy {name!r} (use logged, static, adaptive, cpu, gpu, npu)")
    return out


def replay_command(args: Any, *, render_table: Callable[..., str], emit: Callable[..., None]) -> int:
    rows = list(read_logged(args.db, run=args.run))
    if not rows:
        raise StoreError(f"{args.db}: no logged decisions with outcomes to replay")
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    results = evaluate(rows, _candidates(names, args.config))
    data = {
        name: {k: {"mean_ms": e.value * 1e3, "low_ms": e.low * 1e3, "high_ms": e.high * 1e3,
                   "effective_n": e.effective_n} for k, e in ests.items()}
        for name, ests in results.items()
    }  # fmt: skip
    logged_mean = sum(r.latency_s / r.sample_rate for r in rows) / sum(1 / r.sample_rate for r in rows)

    def table() -> str:
        body = [[name, *(ests[e.name].value * 1e3 for e in ESTIMATORS), ests["SNIPS"].effective_n]
                for name, ests in results.items()]  # fmt: skip
        head = f"{len(rows)} logged decisions; observed mean {logged_mean * 1e3:.4f} ms per stage\n"
        return head + render_table(["policy", *(f"{e.name} ms" for e in ESTIMATORS), "ESS"], body)

    emit(args, {"rows": len(rows), "observed_mean_ms": logged_mean * 1e3, "policies": data}, table)
    return 0


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
