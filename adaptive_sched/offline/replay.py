"""Offline replay: would candidate X have been faster than the policy that wrote the log?

Every logged decision carries the logging (behaviour) policy's propensity, so the mean
latency a candidate policy would have had can be estimated from the log without running
it (off-policy evaluation). Four estimators (:mod:`.estimators`), each a small class with
Open Bandit Pipeline's definitions (``w`` is the importance weight ``pi(a|x) / mu(a|x)``,
``r`` the observed latency, ``q`` a latency model fitted to the log):

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
"""

from __future__ import annotations

import abc
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..policies import Policy
from ..types import Backend, Shape, Stage
from .bootstrap import Resampler, interval
from .estimators import DM, DR, ESTIMATORS, HEADLINE, IPS, SNIPS, Estimator, Feedback
from .logdata import AFTERS, BACKENDS, NO_AFTER, LogData, describe_shape, stage_of
from .replay_results import (
    BucketSupport,
    CandidateEstimate,
    CandidateResult,
    Interval,
    Observed,
    ReplayResult,
    Settings,
    Support,
    View,
)

logger = logging.getLogger(__name__)

QKV, ATTN = 0, 1  # stage codes (see store.bulk_reads.STAGE_CODES)
N_BACKENDS = len(BACKENDS)


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
                try:
                    probs = self.probabilities(stage, shape, after)
                except Exception as exc:  # any policy's failure, named with the context it failed on
                    raise ValueError(
                        f"candidate {self.name}: no probabilities for {stage.value} at {shape} after "
                        f"{after.value if after else 'nothing'} ({type(exc).__name__}: {exc})"
                    ) from exc
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


# -- the latency model --------------------------------------------------------------------------
class LoggedLatencyModel:
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


@dataclass(frozen=True)
class _StageRows:
    """What every candidate's evaluation of one stage's rows shares."""

    rows: np.ndarray
    key_after: np.ndarray  # key * len(AFTERS) + after: the row's slot in a candidate's table
    backend: np.ndarray
    propensity: np.ndarray
    reward: np.ndarray
    weight: np.ndarray
    q_logged: np.ndarray  # the model's latency of the logged backend


@dataclass(frozen=True)
class _PairRows:
    """What every candidate's evaluation of the layers shares."""

    q_slot: np.ndarray  # the qkv row's slot in a candidate's table (key * len(AFTERS) + after)
    q_backend: np.ndarray
    a_slot: np.ndarray
    a_backend: np.ndarray
    #: the layer's (qkv slot, attn key) combination: an index into per-candidate tables of them
    combo: np.ndarray
    propensity: np.ndarray  # the product of the two stages'
    reward: np.ndarray
    weight: np.ndarray
    q_logged: np.ndarray


def _stage_rows(data: LogData, model: LoggedLatencyModel, rows: np.ndarray) -> _StageRows:
    after, backend = data.after[rows], data.backend[rows]
    return _StageRows(
        rows=rows.astype(np.int32),
        key_after=data.key[rows] * len(AFTERS) + after,
        backend=backend,
        propensity=data.propensity[rows],
        reward=data.latency_s[rows],
        weight=data.weight[rows],
        q_logged=model.means[data.cell[rows], after, backend],
    )


def _pair_rows(data: LogData, model: LoggedLatencyModel, qr: np.ndarray, ar: np.ndarray) -> _PairRows:
    q_slot = data.key[qr] * len(AFTERS) + data.after[qr]
    q_b, a_b, a_after = data.backend[qr], data.backend[ar], data.after[ar]
    w = data.weight
    return _PairRows(
        q_slot=q_slot,
        q_backend=q_b,
        a_slot=data.key[ar] * len(AFTERS) + a_after,
        a_backend=a_b,
        combo=q_slot.astype(np.int64) * len(data.key_shapes) + data.key[ar],
        propensity=data.propensity[qr] * data.propensity[ar],
        reward=data.latency_s[qr] + data.latency_s[ar],
        # exploit sampling keeps each row on its own (a hash of its id): a layer survives with both rates
        weight=w[qr] * w[ar],
        q_logged=model.means[data.cell[qr], data.after[qr], q_b] + model.means[data.cell[ar], a_after, a_b],
    )


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
    model = LoggedLatencyModel(data)
    q_rows, a_rows = find_pairs(data)
    stage_rows = {
        name: _stage_rows(data, model, rows)
        for name, rows in (("qkv", np.flatnonzero(data.stage == QKV)), ("attn", np.flatnonzero(data.stage == ATTN)))
        if len(rows)
    }
    pairs = _pair_rows(data, model, q_rows, a_rows) if len(q_rows) else None
    notes: list[str] = []
    unpaired = len(data) - 2 * len(q_rows)
    if pairs is not None:
        headline = "pair"
    else:
        headline = max(stage_rows, key=lambda v: len(stage_rows[v].rows))
        notes.append(f"no layer's qkv and attn decisions could be paired: the verdict uses the {headline} stage")
    if unpaired and pairs is not None:
        notes.append(f"{unpaired} decision(s) could not be paired with the other stage of their layer; "
                     "the per-layer view leaves them out")  # fmt: skip
    if not data.has_probabilities:
        notes.append(
            f"the log (schema {data.schema}) does not record the logging policy's probability vector: "
            "DM and DR of the logged policy are unavailable (its observed mean is exact)"
        )
    # Everything a candidate's probabilities enter is computed per key (stage, bucket) and previous
    # backend, then gathered per row.
    key_cell = np.zeros(len(data.key_shapes), dtype=np.int64)
    key_cell[data.key] = data.cell
    means_k = model.means[key_cell]  # key x after x backend
    thin_k = {k: u[key_cell] for k, u in _thin(model, settings).items()}
    stage_enums = [stage_of(int(s)) for s in data.key_stage]
    boot = Resampler(settings)
    reference = _observed(data, model, stage_rows, pairs, boot)
    results = []
    for cand in candidates:
        table = cand.table(stage_enums, data.key_shapes)
        direct_k = _expect(table, means_k)  # key x after
        shares_k = {k: (table * u).sum(axis=-1) for k, u in thin_k.items()}
        cviews: dict[str, View] = {}
        if pairs is not None:
            fb, shares = _pair_feedback(pairs, table, direct_k, thin_k, shares_k)
            cviews["pair"] = _view("pair", fb, shares, None, data, settings, boot)
        for name, sr in stage_rows.items():
            fb = Feedback(
                sr.reward,
                table.reshape(-1, N_BACKENDS)[sr.key_after, sr.backend] / sr.propensity,
                direct_k.reshape(-1)[sr.key_after],
                sr.q_logged,
                sr.weight,
            )
            shares = {k: v.reshape(-1)[sr.key_after] for k, v in shares_k.items()}
            cviews[name] = _view(name, fb, shares, sr.rows, data, settings, boot)
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


def _verdict(est: CandidateEstimate, support: Support) -> str:
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


def _thin(model: LoggedLatencyModel, settings: Settings) -> dict[str, np.ndarray]:
    """(cell, after, backend) -> 1 where the log tried the backend fewer than ``min_rows`` times ("rare") or never."""
    return {
        "rare": (model.counts < settings.min_rows).astype(np.float64),
        "never": (model.counts == 0).astype(np.float64),
    }


def _pair_feedback(
    pairs: _PairRows,
    table: np.ndarray,
    direct_k: np.ndarray,
    thin_k: Mapping[str, np.ndarray],
    shares_k: Mapping[str, np.ndarray],
) -> tuple[Feedback, dict[str, np.ndarray]]:
    """Feedback of each layer; attn is asked, and modelled, after the candidate's own qkv choice.

    Also each layer's share of the candidate's mass on (qkv, attn) choices either of which
    is thinly logged. Everything is computed per (qkv slot, attn key) combination, of which
    a log has few, then gathered per layer.
    """
    flat = table.reshape(-1, N_BACKENDS)  # slot x backend
    iw = flat[pairs.q_slot, pairs.q_backend] * flat[pairs.a_slot, pairs.a_backend] / pairs.propensity
    # attn after each backend qkv may choose: key x qkv's backend
    attn_direct = direct_k[:, :N_BACKENDS]
    # per combination: qkv's modelled latency plus attn's after the candidate's qkv choice
    combo_direct = direct_k.reshape(-1)[:, None] + _expect(flat[:, None, :], attn_direct[None, :, :])
    direct = combo_direct.reshape(-1)[pairs.combo]
    shares = {}
    for kind, u in thin_k.items():
        u_flat = u.reshape(-1, N_BACKENDS)
        attn_share = shares_k[kind][:, :N_BACKENDS]
        combo = shares_k[kind].reshape(-1)[:, None] + (
            (flat * (1.0 - u_flat))[:, None, :] * attn_share[None, :, :]
        ).sum(axis=-1)
        shares[kind] = combo.reshape(-1)[pairs.combo]
    return Feedback(pairs.reward, iw, direct, pairs.q_logged, pairs.weight), shares


def _expect(pi: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``sum_b pi[..., b] q[..., b]``, where a zero probability ignores a missing (NaN) model value."""
    return np.where(pi > 0, pi * q, 0.0).sum(axis=-1)


def _view(
    name: str,
    fb: Feedback,
    shares: Mapping[str, np.ndarray],
    rows: np.ndarray | None,
    data: LogData,
    settings: Settings,
    boot: Resampler,
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
    return View(name, _bootstrap_estimates(fb, boot), support)


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


def _bootstrap_estimates(fb: Feedback, boot: Resampler) -> dict[str, CandidateEstimate]:
    """Every estimator's value and paired difference to the observed mean, with row and block intervals."""
    # columns: the sampling weight (every plain mean's denominator), the observed latency (the
    # logged policy's mean: the reference), then each estimator's numerator and, if it has
    # one, its own denominator
    pairs: list[tuple[int, int]] = []
    terms = [cls().terms(fb) for cls in ESTIMATORS]
    col = 2
    for _, den in terms:
        pairs.append((col, 0 if den is None else col + 1))
        col += 1 if den is None else 2
    pairs.append((1, 0))

    def columns() -> Iterator[np.ndarray]:
        yield fb.weight
        yield fb.weight * fb.reward
        for num, den in terms:
            yield fb.weight * num
            if den is not None:
                yield fb.weight * den

    full, row, block = boot.replicates(columns(), len(fb.reward), pairs)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.array([full[a] / full[b] for a, b in pairs])
    out = {}
    for j, cls in enumerate(ESTIMATORS):
        value, ref = float(values[j]), float(values[-1])
        unavailable = "" if math.isfinite(value) else "the latency model has no value for a backend it chooses"
        out[cls.name] = CandidateEstimate(
            estimator=cls.name,
            value=value,
            row=interval(row[:, j]),
            block=interval(block[:, j]),
            diff=value - ref,
            diff_row=interval(row[:, j] - row[:, -1]),
            diff_block=interval(block[:, j] - block[:, -1]),
            unavailable=unavailable,
        )
    return out


def _observed(
    data: LogData,
    model: LoggedLatencyModel,
    stage_rows: Mapping[str, _StageRows],
    pairs: _PairRows | None,
    boot: Resampler,
) -> dict[str, Observed]:
    """The logged policy's observed mean in each view, and its own estimates from its logged probability vectors."""
    out: dict[str, Observed] = {}
    if pairs is not None:
        out["pair"] = _observed_view(pairs.reward, pairs.weight, boot)
    for name, sr in stage_rows.items():
        obs = _observed_view(sr.reward, sr.weight, boot)
        if data.has_probabilities:
            pi = data.probs[sr.rows]
            q = model.means[data.cell[sr.rows], data.after[sr.rows]]
            iw = pi[np.arange(len(sr.rows)), sr.backend] / sr.propensity
            fb = Feedback(sr.reward, iw, _expect(pi, q), sr.q_logged, sr.weight)
            obs = Observed(obs.value, obs.row, obs.block, obs.rows, _bootstrap_estimates(fb, boot))
        out[name] = obs
    return out


def _observed_view(reward: np.ndarray, weight: np.ndarray, boot: Resampler) -> Observed:
    total, row, block = boot.replicates(iter((weight * reward, weight)), len(reward), [(0, 1)])
    return Observed(float(total[0] / total[1]), interval(row[:, 0]), interval(block[:, 0]), len(reward))


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
    "CandidateEstimate",
    "CandidateResult",
    "Estimator",
    "Feedback",
    "FixedCandidate",
    "Interval",
    "LoggedLatencyModel",
    "Observed",
    "PolicyCandidate",
    "ReplayResult",
    "Settings",
    "Support",
    "View",
    "evaluate",
    "find_pairs",
]
