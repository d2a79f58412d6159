"""Train the dual-stage priors from profiles, and compare models on held-out shapes.

:func:`train_priors` reads the ``profiles`` table of one device, turns it into one
training row per stage and shape (the median latency of every backend; the label is the
fastest), compares classifiers on grouped, stratified, seeded held-out splits, and
stores the prior (the rows + the chosen model per stage) in the ``priors`` table.

The number that matters is the **latency regret** of a model's picks on held-out
shapes: the extra time over always picking the fastest backend, as a percentage of
that optimal total. Accuracy alone hides whether the mistakes cost 1 % or 80 %.

Splits hold out whole *groups* of shapes (for ``attn``, every ``kv_len`` of one
``(n, d, batch, heads, precision)``; for ``qkv``, one shape), so a model is scored on
shapes unlike any it saw, and are stratified by the groups' fastest backend so a
minority backend appears on both sides.

>>> report = train_priors("profiles.db", device="rk3588")        # doctest: +SKIP
>>> print(format_table(report))                                   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PriorError, StoreError
from ..learners.models import MODELS, STAGE_MODELS, build_model, fit, get_spec, model_features
from ..learners.priors import PriorData, PriorLatencyModel, TrainingRow, make_prior_data
from ..store.priors import save_prior
from ..types import Backend, Shape, Stage, parse_backend, parse_stage

logger = logging.getLogger(__name__)

DEFAULT_MODELS: Mapping[str, str] = STAGE_MODELS
#: models compared in the report (the chosen ones are always added)
DEFAULT_COMPARE: tuple[str, ...] = ("rf", "knn", "tree", "logreg")
#: rejected rows listed in a report (all are counted)
MAX_LISTED_REJECTS = 10


# -- rows from profiles --------------------------------------------------------------------


@dataclass
class RowStats:
    """How the profile rows of one stage were used."""

    used: int = 0
    rejected: int = 0
    failed: int = 0
    labels: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"shapes": self.used, "rejected": self.rejected, "failed": self.failed, "labels": dict(self.labels)}


def load_training_rows(
    db_path: str | Path, *, device: str, backends: Sequence[Backend | str] | None = None
) -> tuple[dict[Stage, list[TrainingRow]], dict[Stage, RowStats], list[dict[str, Any]]]:
    """Training rows per stage from the ``profiles`` of ``device``.

    Returns ``(rows, stats, rejected)``. Rows measured with ``ok = 0`` (a failure or an
    unsupported shape) are counted as ``failed``: that backend simply has no latency for
    that shape. Rows marked ok but with a NaN, infinite or non-positive median are
    *rejected*: counted, listed (the first few) and left out.

    Raises PriorError when the device has no profiles (naming the devices that have).
    """
    from ..store.connection import open_database
    from ..store.profiles import iter_profiles, profile_devices

    path = Path(db_path)
    if not path.is_file():
        raise PriorError(f"{path}: no such profile database")
    wanted = None if backends is None else {parse_backend(b) for b in backends}
    try:
        db = open_database(path, readonly=True)
    except StoreError as exc:
        raise PriorError(f"{path}: {exc}") from exc
    per_shape: dict[tuple[Stage, Shape], dict[Backend, float]] = {}
    stats: dict[Stage, RowStats] = {}
    rejected: list[dict[str, Any]] = []
    seen = 0
    try:
        for row in iter_profiles(db, device=device):
            seen += 1
            stage = parse_stage(row.stage)
            backend = parse_backend(row.backend)
            if wanted is not None and backend not in wanted:
                continue
            st = stats.setdefault(stage, RowStats())
            if not row.ok:
                st.failed += 1
                continue
            median = row.median_s
            if median is None or not math.isfinite(median) or median <= 0.0:
                st.rejected += 1
                if len(rejected) < MAX_LISTED_REJECTS:
                    # SQLite stores a NaN as NULL, so a missing median is how NaN comes back.
                    nan = median is None or math.isnan(median)
                    rejected.append(
                        {
                            "stage": stage.value,
                            "backend": backend.value,
                            **row.shape.as_dict(),
                            "median_s": median if median is not None and math.isfinite(median) else None,
                            "problem": "missing or NaN" if nan else "not finite and > 0",
                        }
                    )
                continue
            per_shape.setdefault((stage, row.shape), {})[backend] = float(median)
        devices = profile_devices(db) if seen == 0 else []
    finally:
        db.close()
    if seen == 0:
        have = ", ".join(devices) or "none"
        raise PriorError(
            f"{path}: no profiles for device {device!r} (devices with profiles: {have}); run a sweep first"
        )
    if rejected or any(s.rejected for s in stats.values()):
        total = sum(s.rejected for s in stats.values())
        logger.warning("%s: %d profile rows rejected (NaN or non-positive median latency)", path, total)
    rows: dict[Stage, list[TrainingRow]] = {}
    for (stage, shape), lat in per_shape.items():
        rows.setdefault(stage, []).append(TrainingRow(shape, lat))
    if not rows:
        counts = "; ".join(f"{s.value}: {st.rejected} rejected, {st.failed} failed" for s, st in stats.items())
        raise PriorError(f"{path}: device {device!r} has no usable profile rows ({counts})")
    all_backends = {b for stage_rows in rows.values() for r in stage_rows for b in r.latency_s}
    if len(all_backends) < 2:
        only = ", ".join(sorted(b.value for b in all_backends))
        raise PriorError(
            f"{path}: the profiles of device {device!r} have latencies from one backend only ({only}); "
            "a classifier needs at least two backends to choose between: profile another backend"
        )
    order = tuple(sorted(all_backends))
    for stage, stage_rows in rows.items():
        stats[stage].used = len(stage_rows)
        stats[stage].labels = dict(sorted(Counter(r.best(order).value for r in stage_rows).items()))
    return rows, stats, rejected


# -- splits and scores ---------------------------------------------------------------------


def group_key(stage: Stage, shape: Shape) -> tuple[Any, ...]:
    """Shapes that share a key are held out together (attn: all KV lengths of one layer shape)."""
    if stage is Stage.ATTN:
        return (shape.n, shape.d, shape.batch, shape.heads, shape.precision.value)
    return (shape.n, shape.d, shape.batch, shape.kv_len, shape.heads, shape.precision.value)


def grouped_split(
    stage: Stage, rows: Sequence[TrainingRow], order: Sequence[Backend], *, holdout: float, seed: int
) -> tuple[list[int], list[int]]:
    """Indices ``(train, test)``: whole groups held out, stratified by each group's majority label.

    Each label's groups are shuffled with ``seed`` and ``round(holdout * count)`` of them are
    held out (at least one where a label has two groups or more), so both sides see every
    backend that wins somewhere.
    """
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(group_key(stage, r.shape), []).append(i)
    strata: dict[str, list[tuple[Any, ...]]] = {}
    for key, idx in groups.items():
        labels = Counter(rows[i].best(order).value for i in idx)
        label = max(sorted(labels), key=lambda b: labels[b])
        strata.setdefault(label, []).append(key)
    rng = random.Random(seed)
    test_keys: set[tuple[Any, ...]] = set()
    for label in sorted(strata):
        keys = sorted(strata[label])
        rng.shuffle(keys)
        k = round(holdout * len(keys))
        if k == 0 and len(keys) >= 2 and holdout > 0:
            k = 1
        test_keys.update(keys[: min(k, len(keys) - 1) if len(keys) > 1 else 0])
    train = [i for key, idx in groups.items() if key not in test_keys for i in idx]
    test = [i for key, idx in groups.items() if key in test_keys for i in idx]
    return sorted(train), sorted(test)


@dataclass
class Score:
    """Picks scored against the measured latencies."""

    tested: int = 0
    correct: int = 0
    optimal_s: float = 0.0
    chosen_s: float = 0.0
    max_slowdown: float = 1.0
    unmeasured_picks: int = 0

    def add(self, row: TrainingRow, pick: Backend, order: Sequence[Backend]) -> None:
        best = row.best(order)
        t_best = row.latency_s[best]
        t_pick = row.latency_s.get(pick)
        if t_pick is None:
            # The pick has no measurement here (it failed or is unsupported): charge the slowest.
            self.unmeasured_picks += 1
            t_pick = max(row.latency_s.values())
        self.tested += 1
        self.correct += int(pick == best)
        self.optimal_s += t_best
        self.chosen_s += t_pick
        self.max_slowdown = max(self.max_slowdown, t_pick / t_best)

    def merge(self, other: Score) -> None:
        self.tested += other.tested
        self.correct += other.correct
        self.optimal_s += other.optimal_s
        self.chosen_s += other.chosen_s
        self.max_slowdown = max(self.max_slowdown, other.max_slowdown)
        self.unmeasured_picks += other.unmeasured_picks

    @property
    def accuracy(self) -> float:
        return self.correct / self.tested if self.tested else math.nan

    @property
    def regret_pct(self) -> float:
        """Extra latency over the optimal picks, as a percentage of the optimal total."""
        return 100.0 * (self.chosen_s - self.optimal_s) / self.optimal_s if self.optimal_s else math.nan


def _predict_all(model: Any, stage: Stage, rows: Sequence[TrainingRow], fallback: Backend) -> list[Backend]:
    out = []
    for r in rows:
        label = model.predict_one(model_features(stage, r.shape))
        out.append(Backend(label) if label is not None else fallback)
    return out


def evaluate_models(
    rows: Mapping[Stage, Sequence[TrainingRow]],
    *,
    models: Sequence[str] = DEFAULT_COMPARE,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    holdout: float = 0.25,
    splits: int = 3,
) -> list[dict[str, Any]]:
    """Held-out accuracy and latency regret of each model on each stage (plus baselines).

    Every model sees the same ``splits`` grouped, stratified splits (seeds ``seed``,
    ``seed + 1``, ...). Baselines: ``always-<backend>`` and ``latency-argmin`` (the fastest
    backend by the prior's latency model fitted on the same training rows). Returns one
    plain dict per (stage, model).
    """
    if not 0.0 < holdout < 1.0:
        raise PriorError(f"holdout: must be a fraction in (0, 1), got {holdout!r}")
    if splits < 1:
        raise PriorError(f"splits: must be >= 1, got {splits!r}")
    for m in models:
        get_spec(m)
    params = params or {}
    results: list[dict[str, Any]] = []
    for stage in sorted(rows):
        stage_rows = list(rows[stage])
        order = tuple(sorted({b for r in stage_rows for b in r.latency_s}))
        split_list = [grouped_split(stage, stage_rows, order, holdout=holdout, seed=seed + k) for k in range(splits)]
        split_list = [(tr, te) for tr, te in split_list if tr and te]
        if not split_list:
            logger.warning("stage %s: too few shape groups to hold any out; no held-out scores", stage.value)
        candidates: list[tuple[str, str]] = [(m, "model") for m in models]
        candidates += [("latency-argmin", "baseline")] + [(f"always-{b.value}", "baseline") for b in order]
        for name, kind in candidates:
            total = Score()
            accuracies: list[float] = []
            fit_s = 0.0
            for k, (train_idx, test_idx) in enumerate(split_list):
                train = [stage_rows[i] for i in train_idx]
                test = [stage_rows[i] for i in test_idx]
                start = time.perf_counter()
                picks = _picks(name, stage, train, test, order, params.get(name), seed + k)
                fit_s += time.perf_counter() - start
                score = Score()
                for r, p in zip(test, picks, strict=True):
                    score.add(r, p, order)
                accuracies.append(score.accuracy)
                total.merge(score)
            results.append(
                {
                    "stage": stage.value,
                    "model": name,
                    "kind": kind,
                    "accuracy": _round(total.accuracy, 4),
                    "accuracy_sd": _round(statistics.pstdev(accuracies), 4) if len(accuracies) > 1 else 0.0,
                    "regret_pct": _round(total.regret_pct, 3),
                    "max_slowdown": _round(total.max_slowdown, 3),
                    "mispredicted": total.tested - total.correct,
                    "tested": total.tested,
                    "unmeasured_picks": total.unmeasured_picks,
                    "splits": len(split_list),
                    "fit_s": _round(fit_s, 3),
                }
            )
    return results


def _picks(
    name: str,
    stage: Stage,
    train: Sequence[TrainingRow],
    test: Sequence[TrainingRow],
    order: Sequence[Backend],
    params: Mapping[str, Any] | None,
    seed: int,
) -> list[Backend]:
    if name.startswith("always-"):
        return [Backend(name.removeprefix("always-"))] * len(test)
    if name == "latency-argmin":
        lm = PriorLatencyModel(stage, train)
        out = []
        for r in test:
            est = lm.predict(r.shape)
            out.append(min(order, key=lambda b: est.get(b, math.inf)))
        return out
    spec = get_spec(name)
    p = spec.params(params)
    model = build_model(name, p, seed=seed, n_classes=len(order))
    xs = [model_features(stage, r.shape) for r in train]
    ys = [r.best(order).value for r in train]
    fit(model, xs, ys, passes=int(p.get("passes", 1)), seed=seed)
    majority = Counter(ys).most_common(1)[0][0]
    return _predict_all(model, stage, test, Backend(majority))


def _round(value: float, digits: int) -> float:
    return round(value, digits) if math.isfinite(value) else value


# -- the whole job -------------------------------------------------------------------------


@dataclass
class TrainingReport:
    """What :func:`train_priors` did; :meth:`as_dict` is the ``--output json`` shape."""

    device: str
    db_path: str
    name: str
    models: dict[str, str]
    seed: int
    holdout: float
    splits: int
    rows: dict[str, dict[str, Any]]
    rejected: list[dict[str, Any]]
    comparison: list[dict[str, Any]]
    content_hash: str
    saved: bool
    elapsed_s: float
    prior: PriorData | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """Plain data: no objects, JSON-serialisable."""
        return {
            "device": self.device,
            "db": self.db_path,
            "prior": {"name": self.name, "content_hash": self.content_hash, "saved": self.saved},
            "models": dict(self.models),
            "seed": self.seed,
            "holdout": self.holdout,
            "splits": self.splits,
            "rows": self.rows,
            "rejected_rows": self.rejected,
            "comparison": self.comparison,
            "elapsed_s": round(self.elapsed_s, 3),
        }


def train_priors(
    db_path: str | Path,
    *,
    device: str,
    models: Mapping[str, str] = DEFAULT_MODELS,
    seed: int = 0,
    holdout: float = 0.25,
    splits: int = 3,
    compare: Sequence[str] = DEFAULT_COMPARE,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    backends: Sequence[Backend | str] | None = None,
    name: str | None = None,
    save: bool = True,
) -> TrainingReport:
    """Build one classifier per stage from the profiles of ``device`` and store the prior.

    Parameters
    ----------
    db_path
        Database with a ``profiles`` table (from :func:`adaptive_sched.offline.profiling.profile_grid`);
        the prior is written to its ``priors`` table when ``save``.
    device
        Profiles of this device are used; the prior is bound to it.
    models
        Stage -> model name (see :data:`adaptive_sched.learners.models.MODELS`). The
        default is the paper's: Random Forest for qkv, K-Neighbors for attn.
    seed, holdout, splits
        Seeded grouped/stratified held-out evaluation: ``splits`` splits each holding out
        about ``holdout`` of the shape groups.
    compare
        Models scored in the comparison (the chosen ones are always included).
    params
        Model name -> hyperparameter overrides.
    backends
        Only these backends (default: every profiled backend).
    name
        The prior's name (default: the device name).

    Returns
    -------
    TrainingReport
        Per stage and model: held-out accuracy and latency regret; the prior's hash.
    """
    start = time.perf_counter()
    stage_models = {parse_stage(k): v for k, v in models.items()}
    for m in stage_models.values():
        get_spec(m)
    rows, stats, rejected = load_training_rows(db_path, device=device, backends=backends)
    missing = [s.value for s in stage_models if s not in rows]
    if missing:
        raise PriorError(f"{db_path}: device {device!r} has no usable profiles for stage(s) {', '.join(missing)}")
    rows = {s: rows[s] for s in stage_models}
    compare_models = list(dict.fromkeys([*compare, *stage_models.values()]))
    comparison = evaluate_models(rows, models=compare_models, params=params, seed=seed, holdout=holdout, splits=splits)
    for entry in comparison:
        entry["chosen"] = stage_models.get(parse_stage(entry["stage"])) == entry["model"]
    metrics = {
        stage: {
            k: v
            for e in comparison
            if e["stage"] == stage.value and e["model"] == model
            for k, v in e.items()
            if k not in ("stage", "model", "kind", "chosen", "fit_s")
        }
        for stage, model in stage_models.items()
    }
    for stage in metrics:
        metrics[stage].update({"holdout": holdout, "seed": seed})
    prior_name = name or device
    data = make_prior_data(
        rows,
        name=prior_name,
        device=device,
        models=stage_models,
        params={s: (params or {}).get(m, {}) for s, m in stage_models.items()},
        seed=seed,
        metrics=metrics,
    )
    if save:
        save_prior(db_path, data)
        logger.info("saved prior %r (%s) for %s to %s", prior_name, data.content_hash[:12], device, db_path)
    return TrainingReport(
        device=device,
        db_path=str(db_path),
        name=prior_name,
        models={s.value: m for s, m in stage_models.items()},
        seed=seed,
        holdout=holdout,
        splits=splits,
        rows={s.value: st.as_dict() for s, st in sorted(stats.items())},
        rejected=rejected,
        comparison=comparison,
        content_hash=data.content_hash,
        saved=save,
        elapsed_s=time.perf_counter() - start,
        prior=data,
    )


def format_table(report: TrainingReport | Mapping[str, Any]) -> str:
    """The comparison as a fixed-width text table (models first, then baselines, per stage).

    >>> print(format_table({"comparison": [{"stage": "qkv", "model": "rf", "kind": "model",
    ...     "accuracy": 0.9, "regret_pct": 1.25, "max_slowdown": 1.5, "mispredicted": 2,
    ...     "tested": 20, "fit_s": 0.3, "chosen": True}]}))
    stage  model           accuracy  regret %  worst x  wrong/tested  fit s
    qkv    rf *               0.900     1.250    1.500          2/20  0.300
    """
    data = report.as_dict() if isinstance(report, TrainingReport) else report
    lines = [
        f"{'stage':<6} {'model':<15} {'accuracy':>8} {'regret %':>9} {'worst x':>8} {'wrong/tested':>13} {'fit s':>6}"
    ]
    for e in data["comparison"]:
        label = e["model"] + (" *" if e.get("chosen") else "")
        lines.append(
            f"{e['stage']:<6} {label:<15} {e['accuracy']:>8.3f} {e['regret_pct']:>9.3f} {e['max_slowdown']:>8.3f} "
            f"{str(e['mispredicted']) + '/' + str(e['tested']):>13} {e['fit_s']:>6.3f}"
        )
    return "\n".join(lines)


__all__ = [
    "DEFAULT_COMPARE",
    "DEFAULT_MODELS",
    "MODELS",
    "TrainingReport",
    "evaluate_models",
    "format_table",
    "grouped_split",
    "load_training_rows",
    "train_priors",
]
