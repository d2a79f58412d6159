"""Off-policy estimators, each a small class with Open Bandit Pipeline's definitions.

``w`` is the importance weight ``pi(a|x) / mu(a|x)``, ``r`` the observed latency, ``q`` a
latency model fitted to the log:

``IPS``    mean of ``w r``: unbiased where the log covers the candidate, high variance
``SNIPS``  ``sum(w r) / sum(w)``: a little bias, much less variance
``DM``     mean of ``sum_a pi(a|x) q(x, a)``: as good as the model
``DR``     ``DM`` plus the IPS correction of the model's residual, ``w (r - q(x, a))``

>>> import numpy as np
>>> fb = Feedback(reward=np.array([2.0, 1.0]), iw=np.array([0.0, 2.0]), direct=np.array([1.0, 1.0]),
...               q_logged=np.array([2.0, 1.0]), weight=np.ones(2))
>>> [round(cls().estimate_policy_value(fb), 3) for cls in ESTIMATORS]
[1.0, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np


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
    def terms(self, fb: Feedback) -> tuple[np.ndarray, np.ndarray | None]:
        """(numerator, denominator) of each row; a None denominator is 1 (a plain mean)."""

    def estimate_policy_value(self, fb: Feedback) -> float:
        num, den = self.terms(fb)
        total = float(fb.weight.sum() if den is None else (fb.weight * den).sum())
        return float((fb.weight * num).sum() / total) if total > 0 else math.nan


class IPS(Estimator):
    name = "IPS"

    def terms(self, fb: Feedback) -> tuple[np.ndarray, np.ndarray | None]:
        return fb.iw * fb.reward, None


class SNIPS(Estimator):
    name = "SNIPS"

    def terms(self, fb: Feedback) -> tuple[np.ndarray, np.ndarray | None]:
        return fb.iw * fb.reward, fb.iw


class DM(Estimator):
    name = "DM"

    def terms(self, fb: Feedback) -> tuple[np.ndarray, np.ndarray | None]:
        return fb.direct, None


class DR(Estimator):
    name = "DR"

    def terms(self, fb: Feedback) -> tuple[np.ndarray, np.ndarray | None]:
        return fb.direct + fb.iw * (fb.reward - fb.q_logged), None


ESTIMATORS: tuple[type[Estimator], ...] = (IPS, SNIPS, DM, DR)

#: the estimator the verdict is drawn from
HEADLINE = "DR"


__all__ = ["DM", "DR", "ESTIMATORS", "HEADLINE", "IPS", "SNIPS", "Estimator", "Feedback"]
