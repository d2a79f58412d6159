"""Per-backend drift tracking: a scalar Kalman filter on the log-latency offset, with a Page-Hinkley alarm.

Throttling and contention slow every shape on a backend by a similar factor, so a
backend's drift is one number: the offset between its observed log-latencies and
what the priors predict. Each observation on a backend updates that offset for
all shapes at once, so a backend the policy rarely uses needs only occasional
probes to stay current.

The offset follows a random walk: its variance grows with every decision taken
while the backend goes unobserved (staleness), so a stale backend both trusts its
next observation more (a larger Kalman gain) and looks more worth exploring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class PageHinkley:
    """Two-sided Page-Hinkley test on a stream of residuals.

    Raises an alarm when the cumulative deviation from the running mean, less a
    tolerance ``delta`` per step, exceeds ``threshold`` in either direction.

    >>> ph = PageHinkley(delta=0.05, threshold=1.0)
    >>> [ph.update(0.0) for _ in range(20)][-1]
    False
    >>> any(ph.update(0.7) for _ in range(5))
    True
    """

    delta: float = 0.05
    threshold: float = 1.5
    min_samples: int = 5
    _n: int = 0
    _mean: float = 0.0
    _up: float = 0.0
    _up_min: float = 0.0
    _down: float = 0.0
    _down_max: float = 0.0

    def update(self, x: float) -> bool:
        """Add ``x``; return True (and reset) on a change in either direction."""
        self._n += 1
        self._mean += (x - self._mean) / self._n
        self._up += x - self._mean - self.delta
        self._up_min = min(self._up_min, self._up)
        self._down += x - self._mean + self.delta
        self._down_max = max(self._down_max, self._down)
        if self._n < self.min_samples:
            return False
        if self._up - self._up_min > self.threshold or self._down_max - self._down > self.threshold:
            self.reset()
            return True
        return False

    def reset(self) -> None:
        self._n = 0
        self._mean = self._up = self._up_min = self._down = self._down_max = 0.0


class BackendDrift:
    """The log-latency offset of one backend against its prior, with its variance.

    Parameters
    ----------
    obs_variance : float
        Variance of one observation's log-latency around its expectation (noise).
    staleness_per_decision : float
        Variance the offset gains per decision taken without observing this backend.
    initial_variance : float
        Variance before any observation: how far the device may be from the prior.
    alarm_variance : float
        Variance after a drift alarm or :meth:`forget`, so new observations move the offset fast.
    delta, threshold : float
        Page-Hinkley parameters on the innovations (log units).
    volatility_horizon : float
        After a change of size ``j`` (log units), the offset's variance grows by an extra
        ``j**2 / volatility_horizon`` per decision while the backend goes unobserved: a
        backend that just jumped (contention that comes and goes) is re-probed within
        about that many decisions. The extra growth fades as the backend is observed.

    Examples
    --------
    >>> drift = BackendDrift(obs_variance=0.01, staleness_per_decision=1e-4)
    >>> for clock in range(50):
    ...     _ = drift.update(math.log(2.0), clock)   # the backend became 2x slower
    >>> round(math.exp(drift.offset), 2)
    2.0
    """

    __slots__ = ("_alarm", "_boost", "_horizon", "_last_clock", "_ph", "_q", "_r", "alarms", "n", "offset", "variance")

    def __init__(
        self,
        obs_variance: float = 0.01,
        staleness_per_decision: float = 2e-5,
        initial_variance: float = 0.04,
        alarm_variance: float = 0.25,
        delta: float = 0.05,
        threshold: float = 1.5,
        volatility_horizon: float = 300.0,
    ) -> None:
        self._r = obs_variance
        self._horizon = volatility_horizon
        self._boost = 0.0
        self._q = staleness_per_decision
        self._alarm = alarm_variance
        self._ph = PageHinkley(delta=delta, threshold=threshold)
        self._last_clock = 0
        self.offset = 0.0
        self.variance = initial_variance
        self.n = 0
        self.alarms = 0

    def variance_at(self, clock: int) -> float:
        """The offset's variance at decision ``clock``, grown by staleness since the last update."""
        return self.variance + (self._q + self._boost) * max(0, clock - self._last_clock)

    def update(self, residual: float, clock: int) -> bool:
        """Learn from one observation whose log-latency exceeds the prior by ``residual``.

        Returns True if the Page-Hinkley test flagged a change; the variance is then
        reset so the next observations move the offset quickly.
        """
        prior_var = self.variance_at(clock)
        innovation = residual - self.offset
        gain = prior_var / (prior_var + self._r)
        # One wild observation (a page fault, a preempted thread) must not move every shape
        # of the backend: the step is bounded at 5 standard deviations of the innovation. A
        # real change repeats, raises the Page-Hinkley alarm and widens the bound.
        bound = 5.0 * math.sqrt(prior_var + self._r)
        self.offset += gain * max(-bound, min(bound, innovation))
        self.variance = (1.0 - gain) * prior_var
        self._last_clock = clock
        self.n += 1
        self._boost *= 0.995  # fades over a few hundred observations of this backend
        if self._ph.update(innovation):
            self.alarms += 1
            self.variance = max(self.variance, self._alarm)
            self._boost = min(0.01, innovation * innovation / self._horizon)
            return True
        return False

    def forget(self) -> None:
        """Distrust the current offset (after a failure or a long outage)."""
        self.variance = max(self.variance, self._alarm)
        self._ph.reset()


class BucketCorrection:
    """What the priors get wrong for one (stage, shape bucket, previous backend, backend).

    A shrunk running mean of the residual left after the backend's drift offset. The
    shrinkage (``shrink`` pseudo-observations of zero) leaves device-wide changes to the
    drift offset, which moves every bucket, and keeps here only what persists in this
    bucket; the rate settles at ``1 / (window + shrink)`` so it keeps adapting.
    """

    __slots__ = ("mean", "n", "shrink", "window")

    def __init__(self, window: int = 128, shrink: int = 8) -> None:
        self.mean = 0.0
        self.n = 0
        self.window = window
        self.shrink = shrink

    def update(self, residual: float) -> None:
        self.n += 1
        step = max(-1.0, min(1.0, residual - self.mean))  # bounded: one outlier moves it little
        self.mean += step / (min(self.n, self.window) + self.shrink)

    def variance(self, obs_variance: float, prior_variance: float) -> float:
        """Uncertainty of :attr:`mean`: the prior's before any data, shrinking as observations come."""
        if self.n == 0:
            return prior_variance
        return obs_variance / min(self.n, self.window) + prior_variance / (1 + self.n)


class TransitionEstimate:
    """The synchronisation cost (seconds) of handing a stage's input from one backend to another.

    A scalar Kalman filter in seconds: it starts at the prior guess with standard
    deviation ``prior_sd_s`` (a handoff's cost is known only roughly before it is
    seen), drifts slowly (``drift_sd_s`` per crossing) so a changed driver or load is
    followed, and weighs each crossing against the uncertainty of the stage's own run.
    """

    __slots__ = ("_q", "mean", "n", "variance")

    def __init__(self, prior_s: float, prior_sd_s: float = 3e-4, drift_sd_s: float = 1e-5) -> None:
        self.mean = prior_s
        self.variance = prior_sd_s * prior_sd_s
        self._q = drift_sd_s * drift_sd_s
        self.n = 0

    def gain(self, other_variance: float) -> float:
        """Share of an innovation this estimate takes when the rest of the latency has ``other_variance``."""
        p = self.variance + self._q
        return p / (p + other_variance) if p + other_variance > 0 else 0.5

    def update(self, innovation_s: float, other_variance: float) -> float:
        """Take this estimate's share of ``innovation_s``; return the share taken (seconds)."""
        self.variance += self._q
        k = self.variance / (self.variance + other_variance) if self.variance + other_variance > 0 else 0.5
        taken = k * innovation_s
        self.mean = max(0.0, self.mean + taken)
        self.variance *= 1.0 - k
        self.n += 1
        return taken


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))
