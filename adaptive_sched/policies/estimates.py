"""Latency estimates: the offline prior, corrected by the online model, plus the cost of a handoff.

:class:`Estimates` answers "how long will ``stage`` take at ``shape`` on ``backend`` after
``after``, and how sure are we" and learns from what a run took. The prior gives the
starting log-latency (evaluated on a grid, so a decode loop whose ``kv_len`` grows
every token does not pay for a prior evaluation per token); the
:class:`~adaptive_sched.learners.latency.LatencyModel` holds what this device has shown
since; a :class:`TransitionCost` per ordered backend pair holds what moving a stage's
input between processors costs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..buckets import bucket_key
from ..cache import BoundedDict
from ..learners.latency import NOTHING_LEARNED, Estimate, LatencyModel, Learned, ModelParams, stage_features
from ..types import Backend, Shape, Stage
from .base import Prior

_QKV = Stage.QKV  # a module constant: looking it up on the enum costs more than the test

#: grid points whose prior, features and bucket are kept (a cache: past the limit the oldest is forgotten)
POINT_CACHE = 8192


class Point:
    """What the estimates need of one (stage, shape), computed once per shape."""

    __slots__ = ("bucket", "cache", "group", "moved_bytes", "phi", "prior_log", "shape", "stage")

    def __init__(
        self, stage: Stage, shape: Shape, prior_log: Mapping[Backend, float], quirks: Mapping[Backend, float]
    ) -> None:
        self.stage = stage
        self.shape = shape
        self.bucket = bucket_key(stage, shape, lookahead=False)
        self.group = stage_features(stage, shape)[0]
        #: backend -> the regression's inputs here (the prior's quirk is the backend's own)
        self.phi = {b: stage_features(stage, shape, quirks.get(b, 0.0))[1] for b in prior_log}
        #: backend -> the model's estimate here, kept until the model's state moves
        self.cache: dict[Backend, Estimate] = {}
        self.prior_log = prior_log
        # bytes the stage takes from the previous stage: X for qkv; Q, K, V for attn
        rows = (3 if stage is Stage.ATTN else 1) * shape.batch * shape.n
        self.moved_bytes = rows * shape.d * shape.precision.itemsize


class TransitionCost:
    """The synchronisation cost (seconds) of handing a stage's input from one backend to another.

    A scalar Kalman filter in seconds: it starts at the prior guess with standard
    deviation ``prior_sd_s`` (a handoff is known only roughly before it is seen), and takes
    its share of a crossing's surprise in proportion to its uncertainty against that of
    the stage's own run. It drifts slowly, by ``drift_sd_s`` per crossing (0.1 ms over ten
    thousand crossings), so a changed driver is followed. Not faster: a crossing cannot
    tell a dearer handoff from a slower stage, and a stage that slows (throttling,
    contention) is the likelier. At 10 us per crossing, the handoff of a stage that always
    crosses took a quarter of each of its surprises: a 0.45 ms attention on the NPU after
    qkv on the GPU, slowed 1.5x, raised no alarm in 100 layers and was learned as a handoff
    0.2 ms dearer.

    It is not robust: while it is unsure, a spike on a crossing moves it by most of what the
    spike took, and it keeps that (the learning benchmark's spikes world, soc seed 2: NPU->GPU
    learned as 2.45 ms, sd 0.12, for a 0.12 ms sync). Measured and not kept, paired over seeds
    0-9 of ``bench_learning.py --policies adaptive --seeds 0-9 --json`` (and ``--workload
    decode``): its share winsorised at 3 standard deviations of the stage's own run, -0.0002
    (se 0.0004) and -0.0000 (se 0.0002), but a handoff truly 1.5 ms dear is then learned too
    slowly to be avoided (``test_a_handoff_learned_to_be_expensive_is_avoided``, seed 2: 0.38
    ms); the split made in log units (the crossing's surprise as a factor, winsorised, so the
    handoff follows the median as the stage model does, not the mean a log-normal noise puts
    above it), +0.0006 (se 0.0003) and -0.0002 (se 0.0002).
    """

    __slots__ = ("_q", "mean", "n", "variance")

    def __init__(self, prior_s: float, prior_sd_s: float = 3e-4, drift_sd_s: float = 1e-6) -> None:
        self.mean = prior_s
        self.variance = prior_sd_s * prior_sd_s
        self._q = drift_sd_s * drift_sd_s
        self.n = 0

    def update(self, innovation_s: float, other_variance: float) -> float:
        """Take this estimate's share of ``innovation_s``; return the share taken (seconds)."""
        self.variance += self._q
        total = self.variance + other_variance
        k = self.variance / total if total > 0 else 0.5
        taken = k * innovation_s
        self.mean = max(0.0, self.mean + taken)
        self.variance *= 1.0 - k
        self.n += 1
        return taken


class Estimates:
    """Prior + online model + handoff costs, for the candidates of one policy.

    Parameters
    ----------
    prior : Prior
        The offline prior (an object with ``latency(stage, shape)``).
    candidates : tuple of Backend
    params : ModelParams
        The online model's parameters.
    transition_sync_s, transition_bytes_per_s : float
        Prior cost of a handoff: a synchronisation, plus the bytes moved at this rate.
    transition_sd_s : float
        How far (seconds) a handoff may be from that before it has been seen.
    """

    def __init__(
        self,
        prior: Prior,
        candidates: tuple[Backend, ...],
        params: ModelParams,
        *,
        transition_sync_s: float,
        transition_bytes_per_s: float,
        transition_sd_s: float = 1e-3,
    ) -> None:
        if transition_bytes_per_s <= 0:
            raise ValueError(f"transition_bytes_per_s must be > 0, got {transition_bytes_per_s!r}")
        self.prior = prior
        self.candidates = candidates
        self.model = LatencyModel(params)
        self.transition_sync_s = transition_sync_s
        self.transition_bytes_per_s = transition_bytes_per_s
        self.transition_sd_s = transition_sd_s
        self._transitions: dict[tuple[Backend, Backend], TransitionCost] = {}
        self._points: BoundedDict[tuple[Any, ...], Point] = BoundedDict(POINT_CACHE)
        # the last shape asked per stage and its point (a shape object is immutable)
        self._last_qkv: tuple[Any, Any] = (None, None)
        self._last_attn: tuple[Any, Any] = (None, None)

    # -- the prior, on a grid -------------------------------------------------------------
    def point(self, stage: Stage, shape: Shape) -> Point:
        """The cached :class:`Point` of ``stage`` at the grid point of ``shape``.

        Points live on a grid of 1/16 octave of kv_len (about 4%, rounded to the nearest: a
        grid that always rounded down would bias attention's prior low; qkv does not see the
        KV cache at all): a decode loop whose kv_len grows every token shares one point over
        dozens of tokens, so it pays neither for a prior evaluation (~0.1 ms) per token nor
        for a new point per token, whose churn would make the garbage collector's full
        passes frequent and long.
        """
        last = self._last_qkv if stage is _QKV else self._last_attn
        if last[0] is shape:  # every layer of a token asks for the same shape
            return last[1]
        kv = 0 if stage is _QKV else shape.kv_len
        if kv > 64:
            kv = round(2.0 ** (round(16 * math.log2(kv)) / 16))
        key = (stage, shape.n, shape.d, shape.batch, shape.heads, shape.precision, kv)
        pt = self._points.get(key)
        if pt is None:
            grid_shape = shape if kv == shape.kv_len else Shape(shape.n, shape.d, kv, shape.batch, shape.heads,
                                                                 shape.precision)  # fmt: skip
            pt = self._points[key] = Point(stage, grid_shape, self._prior_log(stage, grid_shape),
                                           self._quirks(stage, grid_shape))  # fmt: skip
        if stage is _QKV:
            self._last_qkv = (shape, pt)
        else:
            self._last_attn = (shape, pt)
        return pt

    def _prior_log(self, stage: Stage, shape: Shape) -> Mapping[Backend, float]:
        est = self.prior.latency(stage, shape)
        # A backend the prior knows nothing about (or calls free) is never chosen on purpose.
        return {
            b: math.log(est[b]) if b in est and est[b] > 0 and math.isfinite(est[b]) else math.inf
            for b in self.candidates
        }

    def _quirks(self, stage: Stage, shape: Shape) -> Mapping[Backend, float]:
        # A prior that does not say where it departs from its trend (a table, a custom prior)
        # leaves the regression's quirk feature at 0: it then learns nothing and moves nothing.
        quirks = getattr(self.prior, "quirks", None)
        if quirks is None:
            return {}
        return {b: q for b, q in quirks(stage, shape).items() if math.isfinite(q)}

    # -- estimates ------------------------------------------------------------------------
    def compute(self, point: Point, backend: Backend, clock: int) -> tuple[float, float]:
        """(mean, variance) of the log of the stage's own run time on ``backend``."""
        base = point.prior_log.get(backend, math.inf)
        if not math.isfinite(base):
            return math.inf, 0.0
        model = self.model
        est = point.cache.get(backend)
        if est is None or est.versions != model.versions(point.stage, backend, point.group):
            est = point.cache[backend] = model.estimate(point.stage, backend, point.group, point.phi[backend],
                                                        point.bucket)  # fmt: skip
        return base + est.mean, est.a + est.b * clock

    def moved_to(self, to: Point, point: Point, backend: Backend, log_at_point: float, clock: int) -> float:
        """The estimate at ``to`` (log seconds), given ``log_at_point`` at ``point``, another point of
        the same shape bucket: every term but the prior and the regression's slopes is shared
        there, so only they are added (a shape bucket that straddles two model buckets is computed)."""
        if to.bucket != point.bucket or to.group != point.group:
            return self.compute(to, backend, clock)[0]
        gap = to.prior_log.get(backend, math.inf) - point.prior_log.get(backend, math.inf)
        if not math.isfinite(gap):
            return self.compute(to, backend, clock)[0]
        return log_at_point + gap + self.model.slope_gap(to.stage, backend, to.group, to.phi[backend],
                                                         point.phi[backend])  # fmt: skip

    def transition(self, point: Point, after: Backend | None, backend: Backend) -> tuple[float, float]:
        """(seconds, variance in seconds squared) to bring the stage's input from ``after`` to ``backend``."""
        if after is None or after is backend:
            return 0.0, 0.0
        copy = point.moved_bytes / self.transition_bytes_per_s
        t = self._transitions.get((after, backend))
        if t is None:
            return self.transition_sync_s + copy, self.transition_sd_s**2
        return t.mean + copy, t.variance

    def total(self, point: Point, after: Backend | None, backend: Backend, clock: int) -> tuple[float, float]:
        """(seconds, variance in seconds squared) of the stage on ``backend`` after ``after``, handoff included."""
        mean, var = self.compute(point, backend, clock)
        if not math.isfinite(mean):
            return math.inf, 0.0
        seconds = math.exp(mean)
        t, t_var = self.transition(point, after, backend)
        # delta method: the compute part's variance is given in log units
        return seconds + t, seconds * seconds * var + t_var

    # -- learning -------------------------------------------------------------------------
    def observe(self, point: Point, after: Backend | None, backend: Backend, latency_s: float, clock: int) -> Learned:
        """Learn from one run; says what moved (see :class:`~adaptive_sched.learners.latency.Learned`)."""
        base = point.prior_log.get(backend, math.inf)
        if not math.isfinite(base):
            return NOTHING_LEARNED
        log_t = math.log(latency_s)
        if after is not None and after is not backend:
            log_t = self._split_transition(point, after, backend, latency_s, clock)
        return self.model.observe(point.stage, backend, point.group, point.phi[backend], point.bucket, base, log_t,
                                  clock)  # fmt: skip

    def _split_transition(self, point: Point, after: Backend, backend: Backend, latency_s: float, clock: int) -> float:
        """Split what a crossing stage cost between its own run and the crossing, in proportion to how
        uncertain each part is (a joint Kalman step); returns the log of the run's own part."""
        mean, var = self.compute(point, backend, clock)
        compute = math.exp(mean)
        t_est, _ = self.transition(point, after, backend)
        pair = self._transitions.get((after, backend))
        if pair is None:
            pair = self._transitions[(after, backend)] = TransitionCost(self.transition_sync_s, self.transition_sd_s)
        noise = self.model.noise_var(point.stage, backend, point.group)
        innovation = latency_s - (compute + t_est)
        taken = pair.update(innovation, compute * compute * (var + noise))
        part = compute + innovation - taken
        if part > 0.0:
            return math.log(part)
        # The crossing took less than its handoff was believed to take alone: both parts are
        # smaller than believed. Split in proportion to the two beliefs, the run is learned as
        # fast (dropped, it would teach nothing: a run believed slow by a spike would stay so).
        return math.log(latency_s * compute / (compute + t_est))

    def state(self) -> dict[str, Any]:
        return {
            **self.model.summary(),
            "transitions_ms": {
                f"{a.value}->{b.value}": round(t.mean * 1e3, 4) for (a, b), t in self._transitions.items()
            },
        }
