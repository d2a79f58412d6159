"""Offline replay: would candidate X have been faster than the policy that wrote the log?

Every logged decision carries the logging (behaviour) policy's propensity, so the mean
latency a candidate policy would have had can be estimated from the log without running
it (off-policy evaluation). Four estimators, each a small class with Open Bandit
Pipeline's definitions (``w`` is the importance weight ``pi(a|x) / mu(a|x)``, ``r`` the
observed latency, ``q`` a latency model fitted to the log):

``IPS``    mean of ``w r``: unbiased where the log covers the candidate, high variance
``SNIPS``  ``sum(w r) / sum(w)``: a little bias, much less variance
``DM``     mean of ``sum_a pi(a|x) q(x, a)``: as good as the model
``DR``     ``DM`` plus the IPS correction of the model's residual, ``w (r - q(x, a))``

Two views of the same log:

* per stage: each ``qkv`` and ``attn`` decision on its own, given the backend the
  previous stage actually used (the transition cost as logged);
* per layer (the headline): a layer's ``qkv`` and ``attn`` decisions together. The weight
  is the product of the two stages' ratios, and ``attn`` is asked about and modelled
  after the candidate's own ``qkv`` choice, so a candidate is credited with its own
  transitions, never charged for crossings it would not make.

Honesty: per stage and shape bucket, the share of the candidate's probability mass on
backends the log never or rarely tried there (fewer than ``min_rows`` rows in that
bucket after that previous backend), the effective sample size and the largest
importance weight. An estimate resting on such mass, or on too few effective rows, is
*unsupported*: reported, marked, and kept out of the verdict.

The answer to "ship X?": the paired difference of X's estimate and the logged policy's
observed mean on the same rows, with bootstrap 95% intervals (rows resampled, and
contiguous blocks of the log resampled for drift), and a verdict from the DR difference
per layer: ``better`` (the whole interval below zero: X is faster), ``worse``, or
``can't tell``.

Candidates are evaluated as they stand (a configured policy as its config builds it
from its prior; nothing is learned from the log), once per distinct stage, shape bucket
and previous backend, never per row.

>>> import numpy as np
>>> fb = Feedback(reward=np.array([2.0, 1.0]), iw=np.array([0.0, 2.0]), direct=np.array([1.0, 1.0]),
...               q_logged=np.array([2.0, 1.0]), weight=np.ones(2))
>>> [round(cls().estimate_policy_value(fb), 3) for cls in ESTIMATORS]
[1.0, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

import abc
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ..policies import Policy
from ..types import Backend, Shape, Stage
from .logdata import AFTERS, BACKENDS, NO_AFTER, LogData, describe_shape, stage_of

logger = logging.getLogger(__name__)

QKV, ATTN = 0, 1  # stage codes (see store.reads.STAGE_CODES)
N_BACKENDS = len(BACKENDS)


# -- estimators ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Feedback:
    """Per-row inputs of the estimators (arrays of equal length).

    ``reward`` is the observed latency, ``iw`` the importance weight of the logged action,
    ``direct`` the candidate's expected latency under the model (``sum_a pi(a) q(a)``),
    ``q_logged`` the model's latency of the logged action, ``weight`` the sampling weight.
    """

    reward: np.ndarray
    iw: np.ndarray
    direct: np.ndarray
    q_logged: np.ndarray
    weight: np.ndarray


class Estimator(abc.ABC):
    """An off-policy estimator: per-row numerator and denominator terms; the value is their weighted ratio.

    With unit sampling weights the value is Open Bandit Pipeline's ``estimate_policy_value``.
    Ratios of sums are what bootstraps resample, so every estimator is written as one.
    """

    name: ClassVar[str] = "estimator"

    @abc.abstractmethod
    def terms(self, fb: Feedback) -> tuple[np.ndarray, np.ndarray]:
        """(numerator, denominator) of each row."""

    def estimate_policy_value(self, fb: Feedback) -> float:
        num, den = self.terms(fb)
        total = float((fb.weight * den).sum())
        return float((fb.weight * num).sum() / total) if total > 0 else math.nan


class IPS(Estimator):
    name = "IPS"

    def terms(self, fb: Feedback) -> tuple[np.ndarray, np.ndarray]:
        return fb.iw * fb.reward, np.ones_like(fb.iw)


class SNIPS(Estimator):
    name = "SNIPS"

    def terms(self, fb: Feedback) -> tuple[np.ndarray, np.ndarray]:
        return fb.iw * fb.reward, fb.iw


class DM(Estimator):
    name = "DM"

    def terms(self, fb: Feedback) -> tuple[np.ndarray, np.ndarray]:
        return fb.direct, np.ones_like(fb.direct)


class DR(Estimator):
    name = "DR"

    def terms(self, fb: Feedback) -> tuple[np.ndarray, np.ndarray]:
        return fb.direct + fb.iw * (fb.reward - fb.q_logged), np.ones_like(fb.direct)


ESTIMATORS: tuple[type[Estimator], ...] = (IPS, SNIPS, DM, DR)
#: the estimator and view the verdict is drawn from
HEADLINE = "DR"


# -- candidates ---------------------------------------------------------------------------------
class Candidate(abc.ABC):
    """A policy under evaluation: its probability of each backend, per stage, shape bucket and previous backend."""

    def __init__(self, name: str, source: str = "") -> None:
        self.name = name
        #: where it came from (a config file, or empty for a named baseline)
        self.source = source

    @abc.abstractmethod
    def probabilities(self, stage: Stage, shape: Shape, after: Backend | None) -> Mapping[Backend, float]:
        """The candidate's probability of each backend for ``stage`` at ``shape`` after ``after``."""

    def table(self, stages: Sequence[Stage], shapes: Sequence[Shape]) -> np.ndarray:
        """``(len(shapes), 4, 3)``: the probabilities after each of :data:`AFTERS`, columns :data:`BACKENDS`."""
        out = np.zeros((len(shapes), len(AFTERS), N_BACKENDS))
        for k, (stage, shape) in enumerate(zip(stages, shapes, strict=True)):
            for j, after in enumerate(AFTERS):
                probs = self.probabilities(stage, shape, after)
                for b, p in probs.items():
                    out[k, j, BACKENDS.index(b)] = p
                total = out[k, j].sum()
                if not (abs(total - 1.0) < 1e-6 and (out[k, j] >= 0).all()):
                    raise ValueError(
                        f"candidate {self.name}: probabilities for {stage.value} at {shape} after "
                        f"{after.value if after else 'nothing'} are not a distribution ({dict(probs)})"
                    )
        return out


class FixedCandidate(Candidate):
    """Every stage on one backend (the GPU-only, NPU-only baselines)."""

    def __init__(self, backend: Backend) -> None:
        super().__init__(f"{backend.value}-only")
        self.backend = backend

    def probabilities(self, stage: Stage, shape: Shape, after: Backend | None) -> Mapping[Backend, float]:
        return {self.backend: 1.0}


class PolicyCandidate(Candidate):
    """A bound :class:`~adaptive_sched.policies.Policy`, evaluated as it stands (it learns nothing from the log)."""

    def __init__(self, policy: Policy, name: str, source: str = "") -> None:
        super().__init__(name, source)
        self.policy = policy

    def probabilities(self, stage: Stage, shape: Shape, after: Backend | None) -> Mapping[Backend, float]:
        return self.policy.probabilities(stage, shape, after)


# -- results ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """A bootstrap 95% percentile interval (seconds)."""

    low: float = math.nan
    high: float = math.nan

    def union(self, other: Interval) -> Interval:
        return Interval(min(self.low, other.low), max(self.high, other.high))


@dataclass(frozen=True)
class Estimate:
    """One estimator's estimate of a candidate's mean latency in one view, and its difference to the logged policy.

    ``value`` is seconds per decision (stage views) or per layer (the pair view); ``diff``
    is ``value`` minus the logged policy's observed mean on the same rows (negative: the
    candidate is faster). ``row`` and ``block`` are the row-level and block bootstrap intervals.
    """

    estimator: str
    value: float
    row: Interval
    block: Interval
    diff: float
    diff_row: Interval
    diff_block: Interval
    #: why there is no estimate ("" when there is one)
    unavailable: str = ""


@dataclass(frozen=True)
class BucketSupport:
    """How much of the candidate's probability, in one stage and shape bucket, falls where the log has little."""

    stage: str
    bucket: str
    rows: int
    #: mean share of the candidate's mass on backends tried fewer than ``min_rows`` times there
    unsupported_share: float


@dataclass(frozen=True)
class Support:
    """How well the log covers a candidate in one view."""

    rows: int
    ess: float
    max_weight: float
    #: share of the candidate's probability on backends tried fewer than ``min_rows`` times (in bucket, after)
    unsupported_share: float
    #: share of it on backends never tried there
    untried_share: float
    supported: bool
    reasons: tuple[str, ...] = ()
    buckets: tuple[BucketSupport, ...] = ()


@dataclass(frozen=True)
class View:
    """A candidate's estimates in one view (``pair``, ``qkv`` or ``attn``)."""

    name: str
    estimates: Mapping[str, Estimate]
    support: Support


@dataclass(frozen=True)
class CandidateResult:
    name: str
    source: str
    views: Mapping[str, View]
    #: the view and estimator the verdict comes from
    headline_view: str
    verdict: str

    @property
    def headline(self) -> Estimate:
        return self.views[self.headline_view].estimates[HEADLINE]

    @property
    def supported(self) -> bool:
        return self.views[self.headline_view].support.supported


@dataclass(frozen=True)
class Observed:
    """The logged policy's observed mean in one view, with its intervals (seconds)."""

    value: float
    row: Interval
    block: Interval
    rows: int
    #: the logging policy's own estimates (stage views, from its logged probability vectors)
    estimates: Mapping[str, Estimate] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    """What a replay was asked to do (defaults suit logs of a few thousand rows and more)."""

    #: a backend tried fewer times than this in a bucket (after a previous backend) counts as unsupported there
    min_rows: int = 5
    #: largest share of the candidate's mass on backends the log tried fewer than ``min_rows`` times
    max_unsupported: float = 0.05
    #: largest share of the candidate's mass on backends the log never tried (in that bucket, after that backend)
    max_untried: float = 0.01
    #: smallest effective sample size of a supported estimate
    min_ess: float = 30.0
    #: bootstrap replicates
    bootstrap: int = 200
    #: contiguous blocks of the log for the block bootstrap
    blocks: int = 100
    #: above this many rows the row bootstrap resamples this many random groups of rows
    max_groups: int = 20_000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("min_rows", "bootstrap", "blocks", "max_groups"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("max_unsupported", "max_untried"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not self.min_ess >= 0:
            raise ValueError(f"min_ess must be >= 0, got {self.min_ess!r}")


@dataclass(frozen=True)
class ReplayResult:
    sources: tuple[str, ...]
    device: str | None
    rows: int
    pairs: int
    #: rows of a stage that could not be matched with the other stage of their layer
    unpaired: int
    has_probabilities: bool
    logged: Mapping[str, Observed]
    candidates: tuple[CandidateResult, ...]
    notes: tuple[str, ...]
    settings: Settings


# -- the latency model --------------------------------------------------------------------------
class LatencyModel:
    """Mean logged latency per (shape bucket, previous backend, backend), for DM and DR.

    Where a backend was never observed in a bucket after that previous backend, the mean
    in the bucket after any previous backend stands in, then the stage's mean on that
    backend; estimates leaning on those are off support and marked so.
    """

    def __init__(self, data: LogData) -> None:
        n_cells = len(data.cell_shapes)
        idx = _cell_index(data.cell, data.after, data.backend)
        size = n_cells * len(AFTERS) * N_BACKENDS
        w = data.weight
        sums = np.bincount(idx, weights=w * data.latency_s, minlength=size)
        weights = np.bincount(idx, weights=w, minlength=size)
        #: unweighted rows per (cell, after, backend): what support is judged on
        self.counts = np.bincount(idx, minlength=size).reshape(n_cells, len(AFTERS), N_BACKENDS)
        with np.errstate(invalid="ignore", divide="ignore"):
            exact = (sums / weights).reshape(n_cells, len(AFTERS), N_BACKENDS)
            s2, w2 = sums.reshape(exact.shape).sum(axis=1), weights.reshape(exact.shape).sum(axis=1)
            any_after = s2 / w2
            stage_mean = np.full((2, N_BACKENDS), np.nan)
            for st in (QKV, ATTN):
                m = data.cell_stage == st
                stage_mean[st] = s2[m].sum(axis=0) / w2[m].sum(axis=0)
        means = np.where(np.isnan(exact), any_after[:, None, :], exact)
        means = np.where(np.isnan(means), stage_mean[data.cell_stage][:, None, :], means)
        #: (cell, after, backend) -> mean latency (NaN where the stage never ran on the backend)
        self.means = means


def _cell_index(cell: np.ndarray, after: np.ndarray, backend: np.ndarray) -> np.ndarray:
    return (cell.astype(np.int64) * len(AFTERS) + after) * N_BACKENDS + backend


# -- evaluation ---------------------------------------------------------------------------------
def find_pairs(data: LogData) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of each layer's ``qkv`` and ``attn`` decisions.

    An ``attn`` decision pairs with the decision logged just before it in the same run when
    that one is a ``qkv`` decision at the same shape whose backend is the ``attn``
    decision's previous backend.
    """
    if len(data) < 2:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    plain: dict[Shape, int] = {}
    plain_id = np.array([plain.setdefault(s, len(plain)) for s in data.shapes], dtype=np.int64)
    shape = plain_id[data.shape_id]
    a = np.arange(1, len(data))
    q = a - 1
    ok = (
        (data.stage[a] == ATTN)
        & (data.stage[q] == QKV)
        & (data.source[a] == data.source[q])
        & (data.run[a] == data.run[q])
        & (data.seq[a] == data.seq[q] + 1)
        & (data.after[a] == data.backend[q])
        & (shape[a] == shape[q])
    )
    return q[ok], a[ok]


def evaluate(data: LogData, candidates: Sequence[Candidate], settings: Settings | None = None) -> ReplayResult:
    """Every estimator's estimate of every candidate in every view, with support and verdicts.

    Parameters
    ----------
    data : LogData
        The log (see :func:`~adaptive_sched.offline.logdata.read_logs`).
    candidates : sequence of Candidate
        The policies to evaluate; the logged policy is always the reference.
    settings : Settings, optional
    """
    settings = settings or Settings()
    if len(data) == 0:
        raise ValueError("the log holds no rows to replay")
    names = [c.name for c in candidates]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"candidates: the name {dupes[0]!r} is given twice")
    model = LatencyModel(data)
    q_rows, a_rows = find_pairs(data)
    views = {"qkv": np.flatnonzero(data.stage == QKV), "attn": np.flatnonzero(data.stage == ATTN)}
    notes: list[str] = []
    unpaired = len(data) - 2 * len(q_rows)
    if len(q_rows):
        headline = "pair"
    else:
        headline = max(views, key=lambda v: len(views[v]))
        notes.append(f"no layer's qkv and attn decisions could be paired: the verdict uses the {headline} stage")
    if unpaired and len(q_rows):
        notes.append(f"{unpaired} decision(s) could not be paired with the other stage of their layer; "
                     "the per-layer view leaves them out")  # fmt: skip
    if not data.has_probabilities:
        notes.append(
            f"the log (schema {data.schema}) does not record the logging policy's probability vector: "
            "DM and DR of the logged policy are unavailable (its observed mean is exact)"
        )
    thin = _thin(model, settings)
    stage_enums = [stage_of(int(s)) for s in data.key_stage]
    reference = _observed(data, model, views, q_rows, a_rows, settings)
    results = []
    for cand in candidates:
        table = cand.table(stage_enums, data.key_shapes)
        cviews: dict[str, View] = {}
        if len(q_rows):
            fb = _pair_feedback(data, model, table, q_rows, a_rows)
            shares = _pair_shares(data, thin, table, q_rows, a_rows)
            cviews["pair"] = _view("pair", fb, shares, None, data, settings)
        for name, rows in views.items():
            if len(rows) == 0:
                continue
            pi = table[data.key[rows], data.after[rows]]
            fb = _stage_feedback(data, model, pi, rows)
            cviews[name] = _view(name, fb, _stage_shares(data, thin, pi, rows), rows, data, settings)
        hv = headline if headline in cviews else next(iter(cviews))
        view = cviews[hv]
        verdict = _verdict(view.estimates[HEADLINE], view.support)
        if not view.support.supported:
            logger.info(
                "candidate %s: its %s estimate is unsupported by the log (%s): left out of the verdict",
                cand.name, hv, "; ".join(view.support.reasons),
            )  # fmt: skip
        results.append(CandidateResult(cand.name, cand.source, cviews, hv, verdict))
    return ReplayResult(
        sources=data.sources,
        device=data.device,
        rows=len(data),
        pairs=len(q_rows),
        unpaired=unpaired,
        has_probabilities=data.has_probabilities,
        logged=reference,
        candidates=tuple(results),
        notes=tuple(notes),
        settings=settings,
    )


def _verdict(est: Estimate, support: Support) -> str:
    if not support.supported:
        return "unsupported"
    if est.unavailable or math.isnan(est.diff):
        return "unavailable"
    interval = est.diff_row.union(est.diff_block)
    if interval.high < 0:
        return "better"
    if interval.low > 0:
        return "worse"
    return "can't tell"


def _stage_feedback(data: LogData, model: LatencyModel, pi: np.ndarray, rows: np.ndarray) -> Feedback:
    """Feedback of one stage's rows under the probabilities ``pi`` (rows x backends)."""
    cell, after, backend = data.cell[rows], data.after[rows], data.backend[rows]
    q = model.means[cell, after]  # rows x backends
    direct = _expect(pi, q)
    iw = pi[np.arange(len(rows)), backend] / data.propensity[rows]
    return Feedback(data.latency_s[rows], iw, direct, q[np.arange(len(rows)), backend], data.weight[rows])


def _thin(model: LatencyModel, settings: Settings) -> dict[str, np.ndarray]:
    """(cell, after, backend) -> 1 where the log tried the backend fewer than ``min_rows`` times ("rare") or never."""
    return {
        "rare": (model.counts < settings.min_rows).astype(np.float64),
        "never": (model.counts == 0).astype(np.float64),
    }


def _stage_shares(
    data: LogData, thin: Mapping[str, np.ndarray], pi: np.ndarray, rows: np.ndarray
) -> dict[str, np.ndarray]:
    """Each row's share of the candidate's mass on thinly logged backends."""
    cell, after = data.cell[rows], data.after[rows]
    return {k: (pi * u[cell, after]).sum(axis=1) for k, u in thin.items()}


def _pair_shares(
    data: LogData, thin: Mapping[str, np.ndarray], table: np.ndarray, qr: np.ndarray, ar: np.ndarray
) -> dict[str, np.ndarray]:
    """Each layer's share of the candidate's mass on (qkv, attn) choices either of which is thinly logged."""
    pi_q = table[data.key[qr], data.after[qr]]
    pi_a = table[data.key[ar]][:, :N_BACKENDS, :]
    out = {}
    for k, u in thin.items():
        u_q = u[data.cell[qr], data.after[qr]]
        u_a = u[data.cell[ar]][:, :N_BACKENDS, :]
        out[k] = (pi_q * (u_q + (1.0 - u_q) * (pi_a * u_a).sum(axis=2))).sum(axis=1)
    return out


def _pair_feedback(data: LogData, model: LatencyModel, table: np.ndarray, qr: np.ndarray, ar: np.ndarray) -> Feedback:
    """Feedback of each layer (a qkv row and its attn row); attn is asked after the candidate's own qkv choice."""
    n = len(qr)
    idx = np.arange(n)
    bq, ba = data.backend[qr], data.backend[ar]
    pi_q = table[data.key[qr], data.after[qr]]  # n x 3
    pi_a = table[data.key[ar]][:, :N_BACKENDS, :]  # n x (after = each backend) x 3
    q_q = model.means[data.cell[qr], data.after[qr]]  # n x 3
    q_a = model.means[data.cell[ar]][:, :N_BACKENDS, :]  # n x after x 3
    attn_direct = _expect(pi_a, q_a)  # n x after
    direct = _expect(pi_q, q_q + attn_direct)
    iw = pi_q[idx, bq] / data.propensity[qr] * pi_a[idx, bq, ba] / data.propensity[ar]
    q_logged = q_q[idx, bq] + q_a[idx, bq, ba]
    reward = data.latency_s[qr] + data.latency_s[ar]
    # exploit sampling keeps each row on its own (a hash of its id): a layer survives with both rates
    weight = data.weight[qr] * data.weight[ar]
    return Feedback(reward, iw, direct, q_logged, weight)


def _expect(pi: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``sum_b pi[..., b] q[..., b]``, where a zero probability ignores a missing (NaN) model value."""
    return np.where(pi > 0, pi * np.nan_to_num(q, nan=0.0), 0.0).sum(axis=-1) + np.where(
        (pi > 0) & np.isnan(q), np.nan, 0.0
    ).sum(axis=-1)


def _view(
    name: str,
    fb: Feedback,
    shares: Mapping[str, np.ndarray],
    rows: np.ndarray | None,
    data: LogData,
    settings: Settings,
) -> View:
    s, iw = fb.weight, fb.iw
    sw, sw2 = float((s * iw).sum()), float((s * iw * iw).sum())
    ess = sw * sw / sw2 if sw2 > 0 else 0.0
    total = float(s.sum())
    unsupported_share = float((s * shares["rare"]).sum() / total)
    untried_share = float((s * shares["never"]).sum() / total)
    reasons = []
    if untried_share > settings.max_untried:
        reasons.append(f"{untried_share:.1%} of its probability falls on backends the log never tried there")
    if unsupported_share > settings.max_unsupported:
        reasons.append(
            f"{unsupported_share:.1%} of its probability falls on backends the log tried fewer than "
            f"{settings.min_rows} times there"
        )
    if ess < settings.min_ess:
        reasons.append(f"effective sample size {ess:.1f} < {settings.min_ess:g}")
    buckets: tuple[BucketSupport, ...] = ()
    if rows is not None:
        buckets = _bucket_support(data, rows, shares["rare"], s)
    support = Support(
        rows=len(fb.reward),
        ess=ess,
        max_weight=float(iw.max()) if len(iw) else math.nan,
        unsupported_share=unsupported_share,
        untried_share=untried_share,
        supported=not reasons,
        reasons=tuple(reasons),
        buckets=buckets,
    )
    estimates = _bootstrap_estimates(fb, settings)
    return View(name, estimates, support)


def _bucket_support(data: LogData, rows: np.ndarray, share: np.ndarray, s: np.ndarray) -> tuple[BucketSupport, ...]:
    cells = data.cell[rows]
    n = len(data.cell_shapes)
    mass = np.bincount(cells, weights=s * share, minlength=n)
    weight = np.bincount(cells, weights=s, minlength=n)
    count = np.bincount(cells, minlength=n)
    out = []
    for c in np.flatnonzero(count):
        out.append(
            BucketSupport(
                stage=stage_of(int(data.cell_stage[c])).value,
                bucket=describe_shape(data.cell_shapes[c]),
                rows=int(count[c]),
                unsupported_share=float(mass[c] / weight[c]),
            )
        )
    return tuple(sorted(out, key=lambda b: (-b.unsupported_share, -b.rows)))


def _bootstrap_estimates(fb: Feedback, settings: Settings) -> dict[str, Estimate]:
    """Every estimator's value and paired difference to the observed mean, with row and block intervals."""
    cols = []
    for cls in ESTIMATORS:
        num, den = cls().terms(fb)
        cols += [fb.weight * num, fb.weight * den]
    cols += [fb.weight * fb.reward, fb.weight]  # the logged policy's observed mean: the reference
    m = np.stack(cols, axis=1)
    full = m.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = full[0::2] / full[1::2]
    row = _replicates(m, settings, blocks=False)
    block = _replicates(m, settings, blocks=True)
    out = {}
    for j, cls in enumerate(ESTIMATORS):
        value, ref = float(values[j]), float(values[-1])
        unavailable = "" if math.isfinite(value) else "the latency model has no value for a backend it chooses"
        out[cls.name] = Estimate(
            estimator=cls.name,
            value=value,
            row=_interval(row[:, j]),
            block=_interval(block[:, j]),
            diff=value - ref,
            diff_row=_interval(row[:, j] - row[:, -1]),
            diff_block=_interval(block[:, j] - block[:, -1]),
            unavailable=unavailable,
        )
    return out


def _replicates(m: np.ndarray, settings: Settings, *, blocks: bool) -> np.ndarray:
    """Bootstrap replicates (B x ratios) of the column-pair ratios of ``m``'s column sums.

    Rows are resampled, or (``blocks``) contiguous blocks of rows in log order, which keeps
    drift and the correlation of neighbouring decisions inside each replicate. Past
    ``max_groups`` rows, rows are first summed into that many groups of randomly assigned
    rows and the groups resampled: sums of random groups have the variance of sums of rows,
    at a fraction of the cost.
    """
    # the same seed for every candidate: their replicates resample the same rows
    rng = np.random.default_rng([settings.seed, int(blocks)])
    n = m.shape[0]
    if blocks:
        g = min(settings.blocks, n)
        group = (np.arange(n) * g) // n
    elif n > settings.max_groups:
        g = settings.max_groups
        group = rng.integers(0, g, size=n)
    else:
        g, group = n, None
    if group is None:
        sums = m
    else:
        sums = np.stack([np.bincount(group, weights=m[:, k], minlength=g) for k in range(m.shape[1])], axis=1)
    counts = rng.multinomial(g, np.full(g, 1.0 / g), size=settings.bootstrap).astype(np.float64)
    totals = counts @ np.nan_to_num(sums, nan=0.0)
    nan_cols = np.isnan(sums).any(axis=0)
    totals[:, nan_cols] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(totals[:, 0::2] / totals[:, 1::2])


def _interval(samples: np.ndarray) -> Interval:
    finite = samples[np.isfinite(samples)]
    if len(finite) < len(samples) or len(finite) == 0:
        return Interval()
    low, high = np.percentile(finite, [2.5, 97.5])
    return Interval(float(low), float(high))


def _observed(
    data: LogData,
    model: LatencyModel,
    views: Mapping[str, np.ndarray],
    q_rows: np.ndarray,
    a_rows: np.ndarray,
    settings: Settings,
) -> dict[str, Observed]:
    """The logged policy's observed mean in each view, and its own estimates from its logged probability vectors."""
    out: dict[str, Observed] = {}
    if len(q_rows):
        reward = data.latency_s[q_rows] + data.latency_s[a_rows]
        weight = data.weight[q_rows] * data.weight[a_rows]
        out["pair"] = _observed_view(reward, weight, settings)
    for name, rows in views.items():
        if len(rows) == 0:
            continue
        obs = _observed_view(data.latency_s[rows], data.weight[rows], settings)
        if data.has_probabilities:
            fb = _stage_feedback(data, model, data.probs[rows], rows)
            obs = Observed(obs.value, obs.row, obs.block, obs.rows, _bootstrap_estimates(fb, settings))
        out[name] = obs
    return out


def _observed_view(reward: np.ndarray, weight: np.ndarray, settings: Settings) -> Observed:
    m = np.stack([weight * reward, weight], axis=1)
    total = m.sum(axis=0)
    row = _replicates(m, settings, blocks=False)[:, 0]
    block = _replicates(m, settings, blocks=True)[:, 0]
    return Observed(float(total[0] / total[1]), _interval(row), _interval(block), len(reward))


__all__ = [
    "AFTERS",
    "DM",
    "DR",
    "ESTIMATORS",
    "IPS",
    "NO_AFTER",
    "SNIPS",
    "BucketSupport",
    "Candidate",
    "CandidateResult",
    "Estimate",
    "Estimator",
    "Feedback",
    "FixedCandidate",
    "Interval",
    "LatencyModel",
    "Observed",
    "PolicyCandidate",
    "ReplayResult",
    "Settings",
    "Support",
    "View",
    "evaluate",
    "find_pairs",
]
