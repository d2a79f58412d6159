"""Per-stage online classifiers (river) that keep learning which backend is fastest now.

The offline prior's classifier (Random Forest for ``qkv``, K-Neighbors for ``attn``)
is the starting point; as the bandit's latency estimates move with throttling and
contention, the classifier of each stage is taught the backend the bandit now holds
fastest for the shapes it sees. The result is a selector in the paper's form that
tracks the device: it is what ``Scheduler.online_choice`` answers and what an
exported prior would carry forward.

river models cost 0.05 to 0.4 ms per call, so they are never consulted per decision
and are taught only every ``every``-th observation of a stage, on the learner's side.
river is imported on the first update, never at import time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from ..types import Backend, Shape, Stage

log = logging.getLogger(__name__)

#: the paper's model per stage when no prior supplies one
DEFAULT_MODELS = {Stage.QKV: "rf", Stage.ATTN: "knn"}


class OnlineClassifiers:
    """One river classifier per stage, taught the bandit's current best backend.

    Parameters
    ----------
    prior : optional
        An offline prior with ``classifier(stage)``; its classifiers are continued.
    every : int
        Teach a stage's classifier on every ``every``-th observation of that stage.
    seed : int
        Seeds classifiers built from scratch.
    """

    def __init__(self, prior: Any = None, every: int = 16, seed: int = 0) -> None:
        self.prior = prior
        self.every = every
        self.seed = seed
        self._models: dict[Stage, Any] = {}
        self._counts: dict[Stage, int] = dict.fromkeys(Stage, 0)
        self._failed: set[Stage] = set()
        self.updates = 0

    def _model(self, stage: Stage) -> Any:
        model = self._models.get(stage)
        if model is None and stage not in self._failed:
            try:
                if self.prior is not None and hasattr(self.prior, "classifier"):
                    model = self.prior.classifier(stage)
                else:
                    from .models import build_model

                    model = build_model(DEFAULT_MODELS[stage], seed=self.seed)
            except Exception as exc:  # an online extra must never stop the scheduler
                log.warning("no online classifier for %s: %s", stage.value, exc)
                self._failed.add(stage)
                return None
            self._models[stage] = model
        return model

    def prepare(self) -> None:
        """Build every stage's classifier now (imports river and trains the prior's models)."""
        for stage in Stage:
            self._model(stage)

    def observe(self, stage: Stage, shape: Shape, best: Callable[[], Backend | None]) -> None:
        """Count an observation of ``stage``; on every ``every``-th, teach ``best()`` at ``shape``."""
        self._counts[stage] += 1
        if self._counts[stage] % self.every:
            return
        label = best()
        model = self._model(stage)
        if label is None or model is None:
            return
        from .models import model_features

        model.learn_one(model_features(stage, shape), label.value)
        self.updates += 1

    def predict(self, stage: Stage, shape: Shape) -> Backend | None:
        """The classifier's backend for ``shape`` (None before it has learned anything)."""
        model = self._model(stage)
        if model is None:
            return None
        from .models import model_features

        label = model.predict_one(model_features(stage, shape))
        return Backend(label) if label else None

    def state(self) -> Mapping[str, Any]:
        return {"updates": self.updates, "stages": sorted(s.value for s in self._models)}
