"""Model specs: a short name -> a river classifier with its hyperparameters, and how to train it.

A prior stores a model by name and hyperparameters (plain JSON), never as a pickled
object; :func:`build_model` makes the estimator again and :func:`fit` trains it the same
way every time, so the same rows, spec and seed give the same classifier.

=======  =========================================================  ==============
name     estimator                                                  scaled inputs
=======  =========================================================  ==============
rf       ``river.forest.ARFClassifier`` (the paper's qkv model)      no
knn      ``river.neighbors.KNNClassifier`` over an exact window      yes
         (``LazySearch``; the paper's attn model)
tree     ``river.tree.HoeffdingTreeClassifier``                      no
logreg   ``river.linear_model.LogisticRegression``, one-vs-rest     yes
         (labels are backend names, not booleans)
=======  =========================================================  ==============

Inputs are :func:`model_features`: the Table 1 features of
:mod:`adaptive_sched.features`, with the heavy-tailed ones (sizes, FLOPs, bytes,
intensity, ratios) in log2, so that a distance or a split threshold means "a factor
of two" anywhere in the range.

Offline sets are small (a few hundred shapes), so incremental learners see them over
several shuffled passes (``passes``); a scaler first sees every row once, so the
scaled values a KNN stores are on one scale. river is imported only when a model is built.

>>> spec = get_spec("rf")
>>> spec.params({"n_models": 3})["n_models"]
3
>>> get_spec("svm")
Traceback (most recent call last):
...
adaptive_sched.errors.PriorError: unknown model 'svm' (known: knn, logreg, rf, tree)
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..errors import PriorError
from ..features import FEATURE_NAMES, feature_vector, stage_shape
from ..types import Shape, Stage, parse_stage

#: identifies the feature transform; stored in every prior so a change is detected
FEATURE_SET = "table1-log2-v1"

_LOG_FEATURES = frozenset({"n", "d", "flops", "mem_bytes", "intensity", "ar", "score_size", "batch"})


@lru_cache(maxsize=65536)
def _model_features(stage: Stage, shape: Shape) -> tuple[tuple[str, float], ...]:
    values = feature_vector(stage, stage_shape(stage, shape))
    out = []
    for name, value in zip(FEATURE_NAMES, values, strict=True):
        if name in _LOG_FEATURES:
            out.append((f"log2_{name}", math.log2(value)))
        elif name == "kv_len":
            out.append(("log2_kv_len_1", math.log2(value + 1.0)))
        else:
            out.append((name, float(value)))
    return tuple(out)


def model_features(stage: Stage | str, shape: Shape) -> dict[str, float]:
    """The classifier's input for ``stage`` at ``shape`` (a fresh dict; cached underneath).

    >>> f = model_features("qkv", Shape(n=1, d=1024, kv_len=77))
    >>> f["log2_d"], f["log2_kv_len_1"], f["P"]   # qkv ignores the KV cache
    (10.0, 0.0, 0.0)
    """
    return dict(_model_features(parse_stage(stage), shape))


# -- specs ---------------------------------------------------------------------------------


#: inclusive bounds of the numeric hyperparameters; they keep a prior read from a file from
#: asking for hours of training (passes, trees, window) or for a meaningless model
LIMITS: Mapping[str, tuple[float, float]] = {
    "passes": (1, 200),
    "n_models": (1, 100),
    "lambda_value": (1, 100),
    "grace_period": (1, 100_000),
    "delta": (1e-12, 1.0),
    "n_neighbors": (1, 1000),
    "window_size": (1, 100_000),
    "learning_rate": (1e-9, 10.0),
    "l2": (0.0, 1e6),
}
#: the values a string hyperparameter may take (river's own choices)
CHOICES: Mapping[str, frozenset[str]] = {
    "max_features": frozenset({"sqrt", "log2"}),
    "leaf_prediction": frozenset({"mc", "nb", "nba"}),
}


def _checked_param(model: str, key: str, default: Any, value: Any) -> Any:
    where = f"model {model!r}: hyperparameter {key!r}"
    if isinstance(default, bool) or isinstance(value, bool):
        if not (isinstance(default, bool) and isinstance(value, bool)):
            raise PriorError(f"{where} must be like {default!r}, got {value!r}")
        return value
    if isinstance(default, str):
        allowed = CHOICES.get(key)
        if not isinstance(value, str) or (allowed is not None and value not in allowed):
            choices = ", ".join(sorted(allowed)) if allowed else "a string"
            raise PriorError(f"{where} must be one of {choices}, got {value!r}")
        return value
    wanted = int if isinstance(default, int) else (int, float)
    if not isinstance(value, wanted) or not math.isfinite(value):
        raise PriorError(f"{where} must be like {default!r}, got {value!r}")
    low, high = LIMITS.get(key, (-math.inf, math.inf))
    if not low <= value <= high:
        raise PriorError(f"{where} must be in [{low:g}, {high:g}], got {value!r}")
    return value


@dataclass(frozen=True)
class ModelSpec:
    """A named model: its hyperparameter defaults and a factory of the river estimator.

    ``defaults`` include two training settings that are not river arguments:
    ``passes`` (shuffled passes over the offline rows) and, for scaled models, nothing
    else: the scaler is part of the estimator (a river pipeline).
    """

    name: str
    summary: str
    defaults: Mapping[str, Any]
    factory: Callable[[Mapping[str, Any], int, int], Any]

    def params(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The defaults with ``overrides`` applied.

        An unknown key, a value of the wrong type, or a value outside :data:`LIMITS` /
        :data:`CHOICES` is a PriorError naming the key: a prior is data read from a file,
        and ``passes: 10000000`` would otherwise hang the first decision that trains it.

        >>> get_spec("rf").params({"passes": 10**7})
        Traceback (most recent call last):
        ...
        adaptive_sched.errors.PriorError: model 'rf': hyperparameter 'passes' must be in [1, 200], got 10000000
        """
        out = dict(self.defaults)
        for key, value in (overrides or {}).items():
            if key not in self.defaults:
                known = ", ".join(sorted(self.defaults))
                raise PriorError(f"model {self.name!r}: unknown hyperparameter {key!r} (known: {known})")
            out[key] = _checked_param(self.name, key, self.defaults[key], value)
        return out

    def build(self, params: Mapping[str, Any] | None = None, *, seed: int = 0, n_classes: int = 2) -> Any:
        """A new, untrained river estimator."""
        return self.factory(self.params(params), seed, n_classes)


def _rf(p: Mapping[str, Any], seed: int, n_classes: int) -> Any:
    from river import forest

    return forest.ARFClassifier(
        n_models=p["n_models"],
        max_features=p["max_features"],
        lambda_value=p["lambda_value"],
        grace_period=p["grace_period"],
        delta=p["delta"],
        leaf_prediction=p["leaf_prediction"],
        seed=seed,
    )


def _knn(p: Mapping[str, Any], seed: int, n_classes: int) -> Any:
    from river import neighbors, preprocessing

    # LazySearch is exact and deterministic; the default SWINN graph is approximate and
    # needs hundreds of points before it is built, more than an offline prior has.
    engine = neighbors.LazySearch(window_size=p["window_size"])
    knn = neighbors.KNNClassifier(n_neighbors=p["n_neighbors"], engine=engine, weighted=p["weighted"])
    return preprocessing.StandardScaler() | knn


def _tree(p: Mapping[str, Any], seed: int, n_classes: int) -> Any:
    from river import tree

    return tree.HoeffdingTreeClassifier(
        grace_period=p["grace_period"], delta=p["delta"], leaf_prediction=p["leaf_prediction"]
    )


def _logreg(p: Mapping[str, Any], seed: int, n_classes: int) -> Any:
    from river import linear_model, multiclass, optim, preprocessing

    # Labels are backend names, and river's binary LogisticRegression only takes booleans:
    # one-vs-rest turns it into a classifier over named classes, for two backends or more.
    model = linear_model.LogisticRegression(optimizer=optim.SGD(p["learning_rate"]), l2=p["l2"])
    return preprocessing.StandardScaler() | multiclass.OneVsRestClassifier(model)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "rf",
            "Adaptive Random Forest (river.forest.ARFClassifier), seeded",
            {
                "n_models": 10,
                "max_features": "sqrt",
                "lambda_value": 6,
                "grace_period": 10,
                "delta": 0.01,
                "leaf_prediction": "mc",
                "passes": 8,
            },
            _rf,
        ),
        ModelSpec(
            "knn",
            "K-Neighbors (river.neighbors.KNNClassifier, exact window), standardised inputs",
            {"n_neighbors": 5, "weighted": True, "window_size": 2000, "passes": 1},
            _knn,
        ),
        ModelSpec(
            "tree",
            "Hoeffding tree (river.tree.HoeffdingTreeClassifier)",
            {"grace_period": 10, "delta": 0.01, "leaf_prediction": "mc", "passes": 20},
            _tree,
        ),
        ModelSpec(
            "logreg",
            "Logistic regression (river.linear_model), one-vs-rest over backend names, standardised",
            {"learning_rate": 0.05, "l2": 0.0, "passes": 20},
            _logreg,
        ),
    )
}


#: the paper's choice per stage: Random Forest for qkv, K-Neighbors for attn
STAGE_MODELS: Mapping[str, str] = {"qkv": "rf", "attn": "knn"}


def get_spec(name: str) -> ModelSpec:
    """The spec registered under ``name``; an unknown name is a PriorError listing the known ones."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise PriorError(f"unknown model {name!r} (known: {', '.join(sorted(MODELS))})") from None


def build_model(name: str, params: Mapping[str, Any] | None = None, *, seed: int = 0, n_classes: int = 2) -> Any:
    """``get_spec(name).build(params, seed=seed, n_classes=n_classes)``."""
    return get_spec(name).build(params, seed=seed, n_classes=n_classes)


def fit(model: Any, xs: Sequence[Mapping[str, float]], ys: Sequence[Any], *, passes: int = 1, seed: int = 0) -> Any:
    """Train a river classifier (or pipeline) on ``xs, ys`` deterministically and return it.

    Unsupervised steps of a pipeline (the scaler) see every row once, first; the final
    classifier then sees ``passes`` passes, each in a seeded shuffled order. The model can
    go on learning online afterwards with its usual ``learn_one``.
    """
    if len(xs) != len(ys):
        raise ValueError(f"xs and ys differ in length ({len(xs)} != {len(ys)})")
    from river import compose

    rows = [dict(x) for x in xs]
    final = model
    if isinstance(model, compose.Pipeline):
        steps = list(model.steps.values())
        for step in steps[:-1]:
            for x in rows:
                step.learn_one(x)
            rows = [step.transform_one(x) for x in rows]
        final = steps[-1]
    rng = random.Random(seed)
    order = list(range(len(rows)))
    for _ in range(passes):
        rng.shuffle(order)
        for i in order:
            final.learn_one(rows[i], ys[i])
    return model
