"""Offline priors as data: training rows + model spec, hashed, verified, rebuilt at load.

A prior is *not* a pickled model. Per stage it holds its training rows (each a shape
and the median latency of every profiled backend), the model's name and
hyperparameters, the seed, the device profile and the package and river versions.
A SHA-256 of a canonical JSON of that content (its *content hash*) travels with it; the
classifier is trained again when it is first needed (same rows + spec + seed -> same
classifier, same predictions). The data and its hashes are :mod:`.prior_data`; priors
live in the ``priors`` table of the log database (one row per stage) and in JSON files,
read and written by :mod:`adaptive_sched.store.prior_files` (this module does no I/O);
the package ships ``data/priors-<device>.json``.

What the scheduler uses:

>>> from adaptive_sched.store.prior_files import load_prior
>>> prior = load_prior("builtin", device="rk3588")
>>> prior.backends
(<Backend.GPU: 'gpu'>, <Backend.NPU: 'npu'>)
>>> shape = Shape(n=1, d=4096, kv_len=512, precision="int8")
>>> prior.choose("qkv", shape), prior.choose("attn", shape)   # the paper's INT8 d=4096 hybrid
(<Backend.GPU: 'gpu'>, <Backend.NPU: 'npu'>)
>>> est = prior.latency("attn", shape)                 # seconds per backend
>>> est[Backend.NPU] < est[Backend.GPU], prior.extrapolating("attn", shape)
(True, False)

Two models answer two questions:

* :meth:`Prior.choose` is the paper's selector: the stage's classifier (RF for qkv, KNN
  for attn by default), rebuilt from the rows.
* :meth:`Prior.latency` predicts seconds per backend with :class:`PriorLatencyModel`: a
  per-backend, per-precision roofline ``t = c0 + flops/F + bytes/B`` fitted by
  non-negative least squares on relative error, times a correction interpolated (inverse
  distance, in octaves of n, d, kv_len and batch) from the rows' residuals. On a
  training shape it returns the measured median; between shapes it interpolates; outside
  the range the correction fades and the roofline extrapolates along FLOPs and bytes.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..cache import BoundedDict
from ..errors import PriorError
from ..features import pad_fraction, stage_flops, stage_mem_bytes, stage_shape
from ..types import Backend, Precision, Shape, Stage, parse_stage
from .models import build_model, fit, get_spec, model_features
from .prior_data import (
    FORMAT,
    PriorData,
    StagePrior,
    TrainingRow,
    canonical_json,
    content_hash,
    make_prior_data,
    package_version,
    prior_from_dict,
    river_version,
)

logger = logging.getLogger(__name__)


# -- the latency regressor -------------------------------------------------------------------

_RESIDUAL_NEIGHBOURS = 4
#: octaves outside the training box over which the residual correction fades (e^-1 at 1.5)
_FADE_OCTAVES = 1.5
#: a shape farther than this (octaves) from every training shape counts as extrapolating
MAX_GAP_OCTAVES = 2.0


def _range_coords(shape: Shape) -> tuple[float, float, float, float]:
    # The training range is stated in the shape's own sizes, in octaves.
    return (math.log2(shape.n), math.log2(shape.d), math.log2(shape.kv_len + 1), math.log2(shape.batch))


#: octaves of distance per unit of padding fraction: a shape that wastes half of an aligned
#: line (pad 0.5) sits 4 octaves from an aligned one, so alignment quirks (a GPU kernel slow
#: on unaligned rows, NPU padding) are borrowed from shapes with the same alignment
_PAD_WEIGHT = 8.0


def _coords(stage: Stage, shape: Shape) -> tuple[float, ...]:
    """Where a shape sits for the residual interpolation (octaves, weighted).

    qkv: its sizes and padding. attn: mostly the bytes it moves (its cost follows the KV
    cache, ``keys * d``, so shapes with the same cache size behave alike whatever their
    split between ``d`` and ``kv_len``), with ``d`` and ``kv_len`` at a quarter weight to
    keep distinct shapes apart. Weights were chosen on held-out shapes of the simulated
    RK3588 and of a synthetic roofline device (the ``latency-argmin`` row of a training
    report scores them).
    """
    it = shape.precision.itemsize
    n, d, b = math.log2(shape.n), math.log2(shape.d), math.log2(shape.batch)
    pads = (_PAD_WEIGHT * pad_fraction(shape.n, it), _PAD_WEIGHT * pad_fraction(shape.d, it))
    if stage is Stage.QKV:
        return (n, d, b, *pads)
    kv = math.log2(shape.kv_len + 1)
    return (n, 0.25 * d, 0.25 * kv, math.log2(stage_mem_bytes(stage, shape)), b, *pads)


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Non-negative least squares for a handful of columns, by trying every support.

    The optimum is the unconstrained fit on its own support, so the best feasible subset
    fit is exact; with three columns that is seven small solves.
    """
    k = a.shape[1]
    norms = np.linalg.norm(a, axis=0)
    norms[norms == 0] = 1.0
    an = a / norms
    best: tuple[float, list[int], np.ndarray] | None = None
    for mask in range(1, 2**k):
        cols = [j for j in range(k) if mask >> j & 1]
        sol, *_ = np.linalg.lstsq(an[:, cols], b, rcond=None)
        if np.all(sol >= 0):
            res = float(np.sum((an[:, cols] @ sol - b) ** 2))
            if best is None or res < best[0]:
                best = (res, cols, sol)
    coef = np.zeros(k)
    if best is not None:
        coef[best[1]] = best[2]
    return coef / norms


class _BackendFit:
    """Roofline + residual correction for one backend, one stage, one precision."""

    def __init__(self, stage: Stage, rows: Sequence[tuple[Shape, float]]) -> None:
        self.stage = stage
        design = np.array([self._terms(s) for s, _ in rows], dtype=float)
        t = np.array([lat for _, lat in rows], dtype=float)
        # Relative error: divide each row by its latency and fit to 1.
        self.coef = _nnls(design / t[:, None], np.ones(len(t)))
        trend = np.maximum(design @ self.coef, 1e-12)
        self.residual = np.log(t) - np.log(trend)
        self.z = np.array([_coords(stage, s) for s, _ in rows], dtype=float)
        self.box = np.array([_range_coords(s) for s, _ in rows], dtype=float)
        self.lo = self.box.min(axis=0)
        self.hi = self.box.max(axis=0)

    def _terms(self, shape: Shape) -> tuple[float, float, float]:
        return (1.0, float(stage_flops(self.stage, shape)), float(stage_mem_bytes(self.stage, shape)))

    def parts(self, shape: Shape) -> tuple[float, float]:
        """The smooth trend at ``shape`` (seconds) and the log correction the nearest rows add to it."""
        trend = max(float(np.dot(self._terms(shape), self.coef)), 1e-12)
        z = np.array(_coords(self.stage, shape))
        dist = np.sqrt(np.sum((self.z - z) ** 2, axis=1))
        k = min(_RESIDUAL_NEIGHBOURS, len(dist))
        nearest = np.argpartition(dist, k - 1)[:k]
        d = dist[nearest]
        if d.min() <= 1e-9:
            correction = float(np.mean(self.residual[nearest][d <= 1e-9]))
        else:
            w = 1.0 / d**2
            correction = float(np.dot(w, self.residual[nearest]) / w.sum())
            box = np.array(_range_coords(shape))
            outside = float(np.linalg.norm(np.maximum(self.lo - box, 0) + np.maximum(box - self.hi, 0)))
            correction *= math.exp(-((outside / _FADE_OCTAVES) ** 2))
        return trend, correction


class PriorLatencyModel:
    """Predicted seconds per backend for one stage, from the stage's training rows.

    >>> rows = [TrainingRow(Shape(n=1, d=d), {Backend.GPU: 1e-5 * d, Backend.NPU: 2e-3})
    ...         for d in (256, 512, 1024)]
    >>> m = PriorLatencyModel(Stage.QKV, rows)
    >>> round(m.predict(Shape(n=1, d=512))[Backend.GPU], 6)   # a training shape: its median
    0.00512
    """

    def __init__(self, stage: Stage, rows: Sequence[TrainingRow]) -> None:
        self.stage = stage
        self._fits: dict[tuple[Backend, Precision | None], _BackendFit] = {}
        per: dict[tuple[Backend, Precision | None], list[tuple[Shape, float]]] = {}
        for row in rows:
            for backend, lat in row.latency_s.items():
                per.setdefault((backend, row.shape.precision), []).append((row.shape, lat))
                # Pooled over precisions: used only for a precision the rows never saw.
                per.setdefault((backend, None), []).append((row.shape, lat))
        for key, pts in per.items():
            self._fits[key] = _BackendFit(stage, pts)
        self.backends = tuple(sorted({b for b, _ in per}))

    def predict_with_quirks(self, shape: Shape) -> tuple[dict[Backend, float], dict[Backend, float]]:
        """Seconds per backend at ``shape`` (qkv shapes are reduced with ``stage_shape``), and per
        backend how far (log) that is from the smooth trend: what the rows near it showed of this
        shape's own behaviour, beyond launches, compute and bytes."""
        shape = stage_shape(self.stage, shape)
        seconds, quirks = {}, {}
        for backend in self.backends:
            fit_ = self._fits.get((backend, shape.precision)) or self._fits[(backend, None)]
            trend, quirks[backend] = fit_.parts(shape)
            seconds[backend] = trend * math.exp(quirks[backend])
        return seconds, quirks

    def predict(self, shape: Shape) -> dict[Backend, float]:
        """Seconds per backend at ``shape`` (qkv shapes are reduced with ``stage_shape``)."""
        return self.predict_with_quirks(shape)[0]

    def extrapolation_reason(self, shape: Shape) -> str | None:
        """None inside the training range, else why not (outside the box or far from every row)."""
        shape = stage_shape(self.stage, shape)
        reasons = []
        for backend in self.backends:
            fit_ = self._fits.get((backend, shape.precision))
            if fit_ is None:
                return f"no {shape.precision.value} rows for {backend.value}"
            z = np.array(_range_coords(shape))
            names = ("n", "d", "kv_len", "batch")
            for i, name in enumerate(names):
                if z[i] < fit_.lo[i] - 1e-9 or z[i] > fit_.hi[i] + 1e-9:
                    lo, hi = (round(2 ** fit_.lo[i] - (i == 2)), round(2 ** fit_.hi[i] - (i == 2)))
                    reasons.append(f"{name} outside [{lo}, {hi}]")
            if reasons:
                return ", ".join(dict.fromkeys(reasons))
            gap = float(np.min(np.sqrt(np.sum((fit_.box - z) ** 2, axis=1))))
            if gap > MAX_GAP_OCTAVES:
                return f"{gap:.1f} octaves from the nearest training shape"
        return None


# -- the loaded prior ------------------------------------------------------------------------

#: answers kept per cache, each forgotten oldest first (the adaptive policy keeps its own per
#: grid point: these serve repeated questions, and a large cache is scanned by every full pass
#: of the garbage collector)
_CACHE_LIMIT = 16_384


class Prior:
    """A verified prior, ready to answer the scheduler (see the module docstring).

    Built from :class:`PriorData` (:func:`adaptive_sched.store.prior_files.load_prior`
    reads and verifies one); classifiers
    are trained from the rows on first use, latency models at once (they are cheap).
    """

    def __init__(self, data: PriorData, source: str = "") -> None:
        self.data = data
        self.source = source
        self.name = data.name
        self.device = data.device
        self.backends: tuple[Backend, ...] = data.backends
        self.stages: tuple[Stage, ...] = tuple(sorted(data.stages))
        self.content_hash = data.content_hash
        self._latency = {s: PriorLatencyModel(s, sp.rows) for s, sp in data.stages.items()}
        self._classifiers: dict[Stage, Any] = {}
        self._lock = threading.Lock()
        # per shape: seconds per backend and the quirks (one evaluation answers both)
        self._latency_cache: BoundedDict[tuple[Stage, Shape], tuple[dict[Backend, float], dict[Backend, float]]] = (
            BoundedDict(_CACHE_LIMIT)
        )
        self._choice_cache: BoundedDict[tuple[Stage, Shape], Backend] = BoundedDict(_CACHE_LIMIT)
        self._extrapolating_cache: BoundedDict[tuple[Stage, Shape], bool] = BoundedDict(_CACHE_LIMIT)
        self._warned: set[Stage] = set()

    def __repr__(self) -> str:
        return f"Prior(name={self.name!r}, device={self.device!r}, hash={self.content_hash[:12]})"

    def _stage(self, stage: Stage | str) -> Stage:
        try:
            s = parse_stage(stage)
        except ValueError as exc:
            raise PriorError(f"prior {self.name!r}: {exc}") from None
        if s not in self.data.stages:
            have = ", ".join(x.value for x in self.stages)
            raise PriorError(f"prior {self.name!r} has no stage {s.value!r} (it has: {have})")
        return s

    # -- latency ---------------------------------------------------------------------------
    def latency(self, stage: Stage | str, shape: Shape) -> dict[Backend, float]:
        """Predicted seconds per backend for ``stage`` at ``shape`` (cached per shape)."""
        return dict(self._predicted(stage, shape)[0])

    def _predicted(self, stage: Stage | str, shape: Shape) -> tuple[dict[Backend, float], dict[Backend, float]]:
        s = self._stage(stage)
        key = (s, shape)
        cached = self._latency_cache.get(key)
        if cached is None:
            if self.extrapolating(s, shape):
                pass  # warned once inside extrapolating()
            cached = self._latency_cache[key] = self._latency[s].predict_with_quirks(shape)
        return cached

    def quirks(self, stage: Stage | str, shape: Shape) -> dict[Backend, float]:
        """Per backend, the log of how far :meth:`latency` at ``shape`` is from the smooth trend
        (launches, compute, bytes) the prior fitted: what its device does at this shape alone,
        which another device may not (cached per shape).

        The online model learns how much of it this device shares (see
        :func:`~adaptive_sched.learners.latency.stage_features`).
        """
        return dict(self._predicted(stage, shape)[1])

    def extrapolating(self, stage: Stage | str, shape: Shape) -> bool:
        """True if ``shape`` lies outside the training range of ``stage`` (warns once per stage)."""
        s = self._stage(stage)
        key = (s, shape)
        cached = self._extrapolating_cache.get(key)
        if cached is None:
            reason = self._latency[s].extrapolation_reason(shape)
            cached = reason is not None
            if cached and s not in self._warned:
                self._warned.add(s)
                logger.warning(
                    "prior %r, stage %s: %s is outside the training range (%s); its estimates extrapolate "
                    "(further shapes outside the range are not reported)",
                    self.name, s.value, shape, reason,
                )  # fmt: skip
            self._extrapolating_cache[key] = cached
        return cached

    # -- classifier ------------------------------------------------------------------------
    def _trained(self, stage: Stage) -> Any:
        model = self._classifiers.get(stage)
        if model is None:
            with self._lock:
                model = self._classifiers.get(stage)
                if model is None:
                    model = self._classifiers[stage] = train_classifier(
                        stage, self.data.stages[stage], self.backends, seed=self.data.seed
                    )
        return model

    def choose(self, stage: Stage | str, shape: Shape) -> Backend:
        """The stage classifier's backend for ``shape`` (the paper's selector; cached)."""
        s = self._stage(stage)
        key = (s, shape)
        choice = self._choice_cache.get(key)
        if choice is None:
            label = self._trained(s).predict_one(model_features(s, shape))
            if label is None:
                est = self.latency(s, shape)
                choice = min(est, key=est.__getitem__)
            else:
                choice = Backend(label)
            self._choice_cache[key] = choice
        return choice

    def classifier(self, stage: Stage | str) -> Any:
        """A copy of the stage's trained river classifier, for the online layer to keep learning.

        Each call returns a new copy, so learning online never changes :meth:`choose`.
        Inputs are :func:`~adaptive_sched.learners.models.model_features`; labels are
        backend names (``"gpu"``).
        """
        return copy.deepcopy(self._trained(self._stage(stage)))

    def metrics(self, stage: Stage | str) -> dict[str, Any]:
        """The evaluation recorded at training time (held-out accuracy, regret)."""
        return dict(self.data.stages[self._stage(stage)].metrics)

    def describe(self) -> dict[str, Any]:
        """A summary as plain data (no rows)."""
        return {
            "name": self.name,
            "device": self.device,
            "content_hash": self.content_hash,
            "source": self.source,
            "backends": [b.value for b in self.backends],
            "package_version": self.data.package_version,
            "river_version": self.data.river_version,
            "stages": {
                s.value: {
                    "model": sp.model,
                    "params": dict(sp.params),
                    "training_rows": len(sp.rows),
                    "metrics": dict(sp.metrics),
                }
                for s, sp in sorted(self.data.stages.items())
            },
        }


def train_classifier(stage: Stage, sp: StagePrior, backends: Sequence[Backend], *, seed: int = 0) -> Any:
    """Train the stage's classifier from its rows: deterministic for the same rows, spec and seed."""
    xs = [model_features(stage, r.shape) for r in sp.rows]
    ys = [r.best(backends).value for r in sp.rows]
    spec = get_spec(sp.model)
    params = spec.params(sp.params)
    model = build_model(sp.model, params, seed=seed, n_classes=len(backends))
    return fit(model, xs, ys, passes=int(params.get("passes", 1)), seed=seed)


__all__ = [
    "FORMAT",
    "Prior",
    "PriorData",
    "PriorLatencyModel",
    "StagePrior",
    "TrainingRow",
    "canonical_json",
    "content_hash",
    "make_prior_data",
    "package_version",
    "prior_from_dict",
    "river_version",
    "train_classifier",
]
