"""Offline priors as data: training rows + model spec, hashed, verified, rebuilt at load.

A prior is *not* a pickled model. Per stage it holds its training rows (each a shape
and the median latency of every profiled backend), the model's name and
hyperparameters, the seed, the device profile and the package and river versions.
A SHA-256 of a canonical JSON of that content (its *content hash*) travels with it; the
classifier is trained again when it is first needed (same rows + spec + seed -> same
classifier, same predictions). Priors live in the ``priors`` table of the log database
(one row per stage) and in JSON files; the package ships ``data/priors-<device>.json``.

What the scheduler uses:

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
* :meth:`Prior.latency` predicts seconds per backend with :class:`LatencyModel`: a
  per-backend, per-precision roofline ``t = c0 + flops/F + bytes/B`` fitted by
  non-negative least squares on relative error, times a correction interpolated (inverse
  distance, in octaves of n, d, kv_len and batch) from the rows' residuals. On a
  training shape it returns the measured median; between shapes it interpolates; outside
  the range the correction fades and the roofline extrapolates along FLOPs and bytes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PriorError, StoreError
from ..features import pad_fraction, stage_flops, stage_mem_bytes
from ..types import Backend, Precision, Shape, Stage, parse_backend, parse_stage
from .models import FEATURE_SET, build_model, fit, get_spec, model_features

logger = logging.getLogger(__name__)

#: the version of the prior format (JSON files and ``priors`` rows)
FORMAT = "adaptive-sched-prior/1"
DATA_DIR = Path(__file__).resolve().parent.parent / "data"
BUILTIN = "builtin"
SQLITE_MAGIC = b"SQLite format 3\x00"


def package_version() -> str:
    """The installed adaptive-sched version."""
    from .. import __version__

    return __version__


def river_version() -> str:
    """The installed river version ('' if river is missing), recorded in every prior."""
    try:
        from importlib.metadata import version

        return version("river")
    except Exception:  # metadata missing: only informative
        return ""


def _stage_shape(stage: Stage, shape: Shape) -> Shape:
    from ..offline.profiling import stage_shape

    return stage_shape(stage, shape)


# -- data ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingRow:
    """One training shape and the median latency (seconds) of each backend measured there."""

    shape: Shape
    latency_s: Mapping[Backend, float]

    def best(self, order: Sequence[Backend]) -> Backend:
        """The fastest backend (ties go to the earlier one in ``order``)."""
        rank = {b: i for i, b in enumerate(order)}
        return min(self.latency_s, key=lambda b: (self.latency_s[b], rank.get(b, len(rank))))

    def as_dict(self) -> dict[str, Any]:
        """JSON form: the shape fields and ``latency_s`` by backend name."""
        return {**self.shape.as_dict(), "latency_s": {b.value: self.latency_s[b] for b in sorted(self.latency_s)}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> TrainingRow:
        """Inverse of :meth:`as_dict`; bad fields raise PriorError naming ``where``."""
        if not isinstance(data, Mapping):
            raise PriorError(f"{where}: expected a mapping, got {type(data).__name__}")
        fields = dict(data)
        raw = fields.pop("latency_s", None)
        if not isinstance(raw, Mapping) or not raw:
            raise PriorError(f"{where}: latency_s: expected a non-empty mapping of backend -> seconds")
        try:
            shape = Shape.from_dict(fields)
            latencies = {parse_backend(k): float(v) for k, v in raw.items()}
        except (TypeError, ValueError) as exc:
            raise PriorError(f"{where}: {exc}") from None
        for backend, value in latencies.items():
            if not math.isfinite(value) or value <= 0:
                raise PriorError(f"{where}: latency_s.{backend.value}: must be finite and > 0, got {value!r}")
        return cls(shape, latencies)


def _row_sort_key(row: TrainingRow) -> tuple[Any, ...]:
    s = row.shape
    return (s.precision.value, s.n, s.d, s.kv_len, s.batch, s.heads)


@dataclass(frozen=True)
class StagePrior:
    """The offline data of one stage: rows, model spec, and (not hashed) evaluation metrics."""

    stage: Stage
    model: str
    params: Mapping[str, Any]
    rows: tuple[TrainingRow, ...]
    metrics: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PriorData:
    """Everything a prior is, as plain data. :attr:`content_hash` is computed, not stored.

    The hash covers the device, backends, seed, feature set, versions and, per stage, the
    model, hyperparameters and rows; not the name, the metrics or the creation time
    (labels, which may change without changing what the prior predicts).
    """

    name: str
    device: str
    backends: tuple[Backend, ...]
    stages: Mapping[Stage, StagePrior]
    seed: int = 0
    feature_set: str = FEATURE_SET
    package_version: str = ""
    river_version: str = ""
    created_at: float = 0.0

    def stage_content(self, stage: Stage) -> dict[str, Any]:
        """The hashed content of one stage, as canonical plain data."""
        sp = self.stages[stage]
        return {
            "format": FORMAT,
            "device": self.device,
            "backends": [b.value for b in self.backends],
            "seed": self.seed,
            "feature_set": self.feature_set,
            "package_version": self.package_version,
            "river_version": self.river_version,
            "stage": stage.value,
            "model": sp.model,
            "params": dict(sp.params),
            "rows": [r.as_dict() for r in sp.rows],
        }

    def stage_hash(self, stage: Stage) -> str:
        """SHA-256 of the canonical JSON of :meth:`stage_content`."""
        return content_hash(self.stage_content(stage))

    @property
    def content_hash(self) -> str:
        """SHA-256 over the device and every stage's hash."""
        stages = {s.value: self.stage_hash(s) for s in sorted(self.stages)}
        return content_hash({"format": FORMAT, "device": self.device, "stages": stages})

    def as_dict(self) -> dict[str, Any]:
        """The JSON file form (with the hashes, so a reader can verify it)."""
        return {
            "format": FORMAT,
            "name": self.name,
            "device": self.device,
            "content_hash": self.content_hash,
            "backends": [b.value for b in self.backends],
            "seed": self.seed,
            "feature_set": self.feature_set,
            "package_version": self.package_version,
            "river_version": self.river_version,
            "created_at": self.created_at,
            "stages": {
                s.value: {
                    "model": sp.model,
                    "params": dict(sp.params),
                    "content_hash": self.stage_hash(s),
                    "training_rows": len(sp.rows),
                    "metrics": dict(sp.metrics),
                    "rows": [r.as_dict() for r in sp.rows],
                }
                for s, sp in sorted(self.stages.items())
            },
        }


def canonical_json(data: Any) -> str:
    """Sorted keys, no spaces, ASCII, no NaN: one text per value (floats round-trip exactly)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def content_hash(data: Any) -> str:
    """``sha256`` hex digest of :func:`canonical_json` of ``data``.

    >>> content_hash({"b": 1, "a": [1.5]}) == content_hash({"a": [1.5], "b": 1})
    True
    """
    return hashlib.sha256(canonical_json(data).encode("ascii")).hexdigest()


def make_prior_data(
    rows: Mapping[Any, Iterable[TrainingRow]],
    *,
    name: str,
    device: str,
    models: Mapping[Any, str],
    params: Mapping[Any, Mapping[str, Any]] | None = None,
    seed: int = 0,
    metrics: Mapping[Any, Mapping[str, Any]] | None = None,
) -> PriorData:
    """Assemble (and validate) a :class:`PriorData` from training rows and model names.

    ``rows``, ``models``, ``params`` and ``metrics`` are keyed by stage (``Stage`` or name).

    Rows are sorted canonically, so the hash does not depend on the order they came in.
    A stage with fewer than two backends in its rows is a PriorError: a classifier has
    nothing to choose between.
    """
    params = {parse_stage(k): v for k, v in (params or {}).items()}
    metrics = {parse_stage(k): v for k, v in (metrics or {}).items()}
    model_names = {parse_stage(k): v for k, v in models.items()}
    stages: dict[Stage, StagePrior] = {}
    backends: set[Backend] = set()
    for key, stage_rows in rows.items():
        stage = parse_stage(key)
        if stage not in model_names:
            raise PriorError(f"prior {name!r}: no model named for stage {stage.value!r}")
        ordered = tuple(sorted(stage_rows, key=_row_sort_key))
        if not ordered:
            raise PriorError(f"prior {name!r}: stage {stage.value!r} has no training rows")
        stage_backends = {b for r in ordered for b in r.latency_s}
        if len(stage_backends) < 2:
            only = ", ".join(sorted(b.value for b in stage_backends))
            raise PriorError(
                f"prior {name!r}: stage {stage.value!r} has latencies for one backend only ({only}); "
                "a classifier needs at least two backends to choose between"
            )
        backends |= stage_backends
        spec = get_spec(model_names[stage])
        stages[stage] = StagePrior(
            stage=stage,
            model=spec.name,
            params=spec.params(params.get(stage)),
            rows=ordered,
            metrics=dict(metrics.get(stage, {})),
        )
    if not stages:
        raise PriorError(f"prior {name!r}: no stages")
    return PriorData(
        name=name,
        device=device,
        backends=tuple(sorted(backends)),
        stages=stages,
        seed=int(seed),
        package_version=package_version(),
        river_version=river_version(),
        created_at=time.time(),
    )


def prior_from_dict(data: Any, where: str) -> PriorData:
    """Parse the JSON form (:meth:`PriorData.as_dict`) and verify its hashes.

    Raises PriorError naming ``where`` on a missing or malformed field, an unknown model,
    or a hash that does not match the content.
    """
    if not isinstance(data, Mapping):
        raise PriorError(f"{where}: a prior must be a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise PriorError(f"{where}: unknown prior format {data.get('format')!r} (expected {FORMAT!r})")
    name = _required(data, "name", str, where)
    stages_raw = _required(data, "stages", Mapping, where)
    stored_stage_hashes: dict[Stage, str] = {}
    stages: dict[Stage, StagePrior] = {}
    for key, raw in stages_raw.items():
        try:
            stage = parse_stage(key)
        except ValueError as exc:
            raise PriorError(f"{where}: stages: {exc}") from None
        swhere = f"{where}: stages.{stage.value}"
        if not isinstance(raw, Mapping):
            raise PriorError(f"{swhere}: expected a mapping")
        rows_raw = _required(raw, "rows", list, swhere)
        rows = tuple(TrainingRow.from_dict(r, f"{swhere}.rows[{i}]") for i, r in enumerate(rows_raw))
        stages[stage] = StagePrior(
            stage=stage,
            model=_required(raw, "model", str, swhere),
            params=dict(_required(raw, "params", Mapping, swhere)),
            rows=rows,
            metrics=dict(raw.get("metrics") or {}),
        )
        stored_stage_hashes[stage] = str(raw.get("content_hash", ""))
    try:
        backends = tuple(parse_backend(b) for b in _required(data, "backends", list, where))
    except ValueError as exc:
        raise PriorError(f"{where}: backends: {exc}") from None
    prior = PriorData(
        name=name,
        device=_required(data, "device", str, where),
        backends=backends,
        stages=stages,
        seed=int(_required(data, "seed", int, where)),
        feature_set=_required(data, "feature_set", str, where),
        package_version=str(data.get("package_version", "")),
        river_version=str(data.get("river_version", "")),
        created_at=float(data.get("created_at") or 0.0),
    )
    for stage, stored in stored_stage_hashes.items():
        _check_hash(prior.stage_hash(stage), stored, f"prior {name!r} ({where}), stage {stage.value}")
    _check_hash(prior.content_hash, str(data.get("content_hash", "")), f"prior {name!r} ({where})")
    _check_usable(prior, where)
    return prior


def _required(data: Mapping[str, Any], key: str, kind: Any, where: str) -> Any:
    if key not in data:
        raise PriorError(f"{where}: missing field {key!r}")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise PriorError(f"{where}: field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _check_hash(computed: str, stored: str, what: str) -> None:
    if computed != stored:
        raise PriorError(
            f"{what}: content hash mismatch (stored {stored[:16] or 'none'}..., computed {computed[:16]}...): "
            "the prior was modified or corrupted; rebuild it with `adaptive-sched train`"
        )


def _check_usable(prior: PriorData, where: str) -> None:
    if prior.feature_set != FEATURE_SET:
        raise PriorError(
            f"prior {prior.name!r} ({where}): built with features {prior.feature_set!r}, "
            f"this version uses {FEATURE_SET!r}; rebuild it"
        )
    for stage, sp in prior.stages.items():
        spec = get_spec(sp.model)
        spec.params(sp.params)  # unknown hyperparameters are an error naming them
        if not sp.rows:
            raise PriorError(f"prior {prior.name!r} ({where}): stage {stage.value!r} has no rows")
    if prior.river_version and prior.river_version != river_version():
        logger.warning(
            "prior %r was built with river %s, this is river %s: its classifiers may differ slightly",
            prior.name, prior.river_version, river_version(),
        )  # fmt: skip


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

    def predict(self, shape: Shape) -> float:
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
        return trend * math.exp(correction)


class LatencyModel:
    """Predicted seconds per backend for one stage, from the stage's training rows.

    >>> rows = [TrainingRow(Shape(n=1, d=d), {Backend.GPU: 1e-5 * d, Backend.NPU: 2e-3})
    ...         for d in (256, 512, 1024)]
    >>> m = LatencyModel(Stage.QKV, rows)
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

    def predict(self, shape: Shape) -> dict[Backend, float]:
        """Seconds per backend at ``shape`` (qkv shapes are reduced with ``stage_shape``)."""
        shape = _stage_shape(self.stage, shape)
        out = {}
        for backend in self.backends:
            fit_ = self._fits.get((backend, shape.precision)) or self._fits[(backend, None)]
            out[backend] = fit_.predict(shape)
        return out

    def extrapolation_reason(self, shape: Shape) -> str | None:
        """None inside the training range, else why not (outside the box or far from every row)."""
        shape = _stage_shape(self.stage, shape)
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

_CACHE_LIMIT = 100_000


class Prior:
    """A verified prior, ready to answer the scheduler (see the module docstring).

    Built from :class:`PriorData` by :func:`load_prior` or :meth:`from_data`; classifiers
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
        self._latency = {s: LatencyModel(s, sp.rows) for s, sp in data.stages.items()}
        self._classifiers: dict[Stage, Any] = {}
        self._lock = threading.Lock()
        self._latency_cache: dict[tuple[Stage, Shape], dict[Backend, float]] = {}
        self._choice_cache: dict[tuple[Stage, Shape], Backend] = {}
        self._extrapolating_cache: dict[tuple[Stage, Shape], bool] = {}
        self._warned: set[Stage] = set()

    @classmethod
    def from_data(cls, data: PriorData, source: str = "") -> Prior:
        """A Prior over ``data`` (no hash check: the data is in memory, not read)."""
        return cls(data, source)

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
        s = self._stage(stage)
        key = (s, shape)
        cached = self._latency_cache.get(key)
        if cached is None:
            if self.extrapolating(s, shape):
                pass  # warned once inside extrapolating()
            cached = self._latency[s].predict(shape)
            if len(self._latency_cache) >= _CACHE_LIMIT:
                self._latency_cache.clear()
            self._latency_cache[key] = cached
        return dict(cached)

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
            if len(self._extrapolating_cache) >= _CACHE_LIMIT:
                self._extrapolating_cache.clear()
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
            if len(self._choice_cache) >= _CACHE_LIMIT:
                self._choice_cache.clear()
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

    def save_json(self, path: str | Path) -> Path:
        """Write the prior as a JSON file (see :func:`export_prior`)."""
        return write_prior_json(self.data, path)


def train_classifier(stage: Stage, sp: StagePrior, backends: Sequence[Backend], *, seed: int = 0) -> Any:
    """Train the stage's classifier from its rows: deterministic for the same rows, spec and seed."""
    xs = [model_features(stage, r.shape) for r in sp.rows]
    ys = [r.best(backends).value for r in sp.rows]
    spec = get_spec(sp.model)
    params = spec.params(sp.params)
    model = build_model(sp.model, params, seed=seed, n_classes=len(backends))
    return fit(model, xs, ys, passes=int(params.get("passes", 1)), seed=seed)


# -- files and the database ----------------------------------------------------------------


def builtin_path(device: str) -> Path:
    """Where the shipped prior of ``device`` lives (it may not exist)."""
    return DATA_DIR / f"priors-{device}.json"


def write_prior_json(data: PriorData, path: str | Path) -> Path:
    """Write ``data`` as a JSON file (sorted keys, indented), atomically; returns the path."""
    path = Path(path)
    text = json.dumps(data.as_dict(), sort_keys=True, indent=1, allow_nan=False) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise PriorError(f"{path}: cannot write the prior ({exc.strerror})") from exc
    return path


def read_prior_json(path: str | Path) -> PriorData:
    """Read and verify a JSON prior file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PriorError(f"{path}: cannot read the prior ({exc.strerror})") from exc
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise PriorError(f"{path}: not valid JSON ({exc})") from None
    return prior_from_dict(raw, str(path))


def save_prior(db_path: str | Path, data: PriorData) -> None:
    """Store ``data`` in the ``priors`` table of ``db_path`` (replacing a prior of the same name)."""
    from ..store.priors import write_prior_records
    from ..store.schema import open_database

    records = []
    for stage, sp in sorted(data.stages.items()):
        records.append(
            {
                "name": data.name,
                "stage": stage.value,
                "device": data.device,
                "model": sp.model,
                "params": canonical_json(
                    {
                        "format": FORMAT,
                        "hyperparameters": dict(sp.params),
                        "seed": data.seed,
                        "feature_set": data.feature_set,
                        "backends": [b.value for b in data.backends],
                        "package_version": data.package_version,
                        "river_version": data.river_version,
                        "prior_hash": data.content_hash,
                    }
                ),
                "content_hash": data.stage_hash(stage),
                "training_rows": len(sp.rows),
                "rows": canonical_json([r.as_dict() for r in sp.rows]),
                "metrics": canonical_json(dict(sp.metrics)),
                "created_at": data.created_at or time.time(),
            }
        )
    db = open_database(db_path)
    try:
        write_prior_records(db, data.name, records)
    finally:
        db.close()


def read_prior_db(db_path: str | Path, *, name: str | None = None, device: str | None = None) -> PriorData:
    """Read and verify a prior from the ``priors`` table.

    Without ``name``, the most recent prior of ``device`` is taken.
    """
    from ..store.priors import list_priors, read_prior_records
    from ..store.schema import open_database

    where = str(db_path)
    db = open_database(db_path, readonly=True)
    try:
        if name is None:
            available = list_priors(db)
            mine = [p for p in available if device is None or p["device"] == device]
            if not mine:
                if available:
                    others = ", ".join(sorted({f"{p['name']} ({p['device']})" for p in available}))
                    raise PriorError(f"{where}: no prior for device {device!r}; it has: {others}")
                raise PriorError(f"{where}: no priors stored (train some with `adaptive-sched train`)")
            name = max(mine, key=lambda p: p["created_at"])["name"]
        records = read_prior_records(db, name)
    finally:
        db.close()
    if not records:
        raise PriorError(f"{where}: no prior named {name!r}")
    return _prior_from_records(records, f"{where} (priors table)")


def _prior_from_records(records: Sequence[Mapping[str, Any]], where: str) -> PriorData:
    first_params = _json_field(records[0], "params", where)
    stages: dict[str, Any] = {}
    for rec in records:
        rwhere = f"{where}, stage {rec.get('stage')!r}"
        params = _json_field(rec, "params", rwhere)
        if not isinstance(params, Mapping) or params.get("prior_hash") != first_params.get("prior_hash"):
            raise PriorError(f"{rwhere}: belongs to another version of prior {rec.get('name')!r}")
        if rec.get("device") != records[0].get("device"):
            raise PriorError(f"{rwhere}: device {rec.get('device')!r} differs from the other stages")
        stages[str(rec["stage"])] = {
            "model": rec.get("model"),
            "params": params.get("hyperparameters"),
            "content_hash": rec.get("content_hash"),
            "metrics": _json_field(rec, "metrics", rwhere) or {},
            "rows": _json_field(rec, "rows", rwhere),
        }
    data = {
        "format": first_params.get("format"),
        "name": records[0].get("name"),
        "device": records[0].get("device"),
        "content_hash": first_params.get("prior_hash"),
        "backends": first_params.get("backends"),
        "seed": first_params.get("seed"),
        "feature_set": first_params.get("feature_set"),
        "package_version": first_params.get("package_version", ""),
        "river_version": first_params.get("river_version", ""),
        "created_at": records[0].get("created_at") or 0.0,
        "stages": stages,
    }
    return prior_from_dict(data, where)


def _json_field(rec: Mapping[str, Any], key: str, where: str) -> Any:
    text = rec.get(key)
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        raise PriorError(f"{where}: column {key!r} is not valid JSON") from None


def _source_kind(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        raise PriorError(f"{path}: no such prior file or database") from None
    except IsADirectoryError:
        raise PriorError(f"{path}: is a directory, not a prior") from None
    except OSError as exc:
        raise PriorError(f"{path}: cannot read ({exc.strerror})") from exc
    return "sqlite" if head == SQLITE_MAGIC else "json"


def read_prior_data(source: str | Path, *, device: str | None = None, name: str | None = None) -> PriorData:
    """The verified :class:`PriorData` at ``source`` ("builtin", a JSON file or a database)."""
    if str(source) == BUILTIN:
        if device is None:
            raise PriorError("the builtin prior needs a device name")
        path = builtin_path(device)
        if not path.is_file():
            shipped = sorted(p.stem.removeprefix("priors-") for p in DATA_DIR.glob("priors-*.json"))
            raise PriorError(f"no builtin prior for device {device!r} (shipped: {', '.join(shipped) or 'none'})")
        return read_prior_json(path)
    path = Path(source).expanduser()
    if _source_kind(path) == "sqlite":
        try:
            return read_prior_db(path, name=name, device=device)
        except StoreError as exc:
            raise PriorError(f"{path}: {exc}") from exc
    data = read_prior_json(path)
    if name is not None and data.name != name:
        raise PriorError(f"{path}: holds prior {data.name!r}, not {name!r}")
    return data


def load_prior(source: str | Path, *, device: str = "rk3588", name: str | None = None) -> Prior:
    """Load, verify and prepare a prior for ``device``.

    Parameters
    ----------
    source
        ``"builtin"`` (the prior shipped for ``device``), a JSON prior file, or an SQLite
        database holding priors (then ``name``, or the newest prior of ``device``).
    device
        The device profile the caller runs on. A prior trained for another device is
        refused.

    Raises
    ------
    PriorError
        Missing source, bad JSON, a content hash that does not match (tampered or
        corrupted), another device, an unknown model or feature set.
    """
    data = read_prior_data(source, device=device, name=name)
    if data.device != device:
        raise PriorError(
            f"prior {data.name!r} ({source}) was trained for device {data.device!r}, not {device!r}; "
            "profile this device and train a prior for it"
        )
    return Prior(data, source=str(source))


def export_prior(source: str | Path, path: str | Path, *, device: str | None = None, name: str | None = None) -> Path:
    """Copy a verified prior from ``source`` (a database, a JSON file, "builtin") to a JSON file."""
    return write_prior_json(read_prior_data(source, device=device, name=name), path)


def import_prior(path: str | Path, db_path: str | Path, *, rename: str | None = None) -> PriorData:
    """Verify the JSON prior at ``path`` and store it in the ``priors`` table of ``db_path``."""
    data = read_prior_json(path)
    if rename:
        data = replace(data, name=rename)
    save_prior(db_path, data)
    return data
