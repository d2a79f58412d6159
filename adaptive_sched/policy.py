"""Policies: who picks the backend of each stage. The adaptive bandit and its baselines.

A policy answers ``decide(stage, shape, after)`` with a backend and the probability
it gave that backend (the propensity), and learns from observed latencies. Every
policy here runs behind the same scheduler, so benchmarks and offline replay
compare them side by side:

=================  ==========================================================
``adaptive``       the contextual bandit (:class:`AdaptivePolicy`)
``static``         the paper's selector: the offline classifier per stage
``fixed``          one backend for everything (GPU-only, NPU-only)
``epsilon``        epsilon-greedy on observed means, no priors
``oracle``         knows the simulated device's true current latencies
=================  ==========================================================

How the adaptive policy decides
-------------------------------
Each candidate backend's log-latency for a stage is modelled as::

    log(prior latency + prior transition cost) + drift offset[backend] + correction[bucket, backend]

The *prior* is the offline model (or the roofline rule); the *drift offset* is one
number per backend, learned from every observation on it by a Kalman filter, so
throttling or contention seen on one shape moves every shape at once; the
*correction* holds what the prior gets wrong for one shape bucket (and for the
backend the previous stage ran on: moving activations has a cost). For ``qkv`` the
value of a backend looks ahead to the best ``attn`` backend after it, so the pair
chosen is the best pair, not two independent bests.

Exploration: the probability of trying an alternative is the probability that it is
in fact faster, given the uncertainty of both estimates (Thompson sampling's
propensity for two arms), capped, and scaled down when the share of latency spent
exploring exceeds the budget. The uncertainty of a backend grows while it goes
unobserved, so a far-slower backend is left alone until its estimate is stale, and a
drift alarm lifts the budget until every backend has been re-measured a few times.

The hot path is a dict lookup of a published table per (stage, shape, previous
backend) and one random draw; learning republishes table entries off that path.
"""

from __future__ import annotations

import abc
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

from .learners.drift import BackendDrift, BucketCorrection, TransitionEstimate, normal_sf
from .types import Backend, Decision, Shape, Stage, parse_stage

#: what ``Policy.decide`` returns, in the order of the matching :class:`Decision` fields:
#: backend, propensity, explored, predicted latency per backend, after, policy version
Choice = tuple[Backend, float, bool, Mapping[Backend, float], "Backend | None", int]

_EMPTY: Mapping[Backend, float] = MappingProxyType({})

#: default Page-Hinkley tolerance and threshold, in standard deviations of one observation's
#: log-latency noise: tuned on the simulated RK3588 (0.05 and 1.5 at its noise of 0.1)
DRIFT_DELTA_SDS = 0.5
DRIFT_THRESHOLD_SDS = 15.0
#: what exploration probabilities are scaled by while exploration is over its latency budget
BUDGET_FLOOR = 0.02


class Prior(Protocol):
    """What the policies need from an offline prior (see :mod:`adaptive_sched.learners.priors`)."""

    backends: tuple[Backend, ...]

    def latency(self, stage: Stage | str, shape: Shape) -> Mapping[Backend, float]: ...

    def choose(self, stage: Stage | str, shape: Shape) -> Backend: ...


def _octave_bucket(x: int, steps: int = 4) -> int:
    # Quarter-octave buckets: neighbouring kv lengths and sequence lengths share what is
    # learned about them, while shapes that behave differently stay apart.
    return x if x <= 16 else 16 + round(steps * math.log2(x / 16))


def _prior_grid(stage: Stage, shape: Shape) -> tuple[Stage, Shape]:
    """The point of the prior's evaluation grid that stands for ``shape``."""
    kv = 0 if stage is Stage.QKV else shape.kv_len
    if kv > 64:
        kv = round(2.0 ** (round(16 * math.log2(kv)) / 16))
    if kv == shape.kv_len:
        return stage, shape
    return stage, Shape(shape.n, shape.d, kv, shape.batch, shape.heads, shape.precision)


def shape_bucket(stage: Stage, shape: Shape) -> tuple[Any, ...]:
    """The bucket that shares learned corrections. ``qkv`` ignores ``kv_len`` (its cost does not see it).

    >>> shape_bucket(Stage.QKV, Shape(n=1, d=2048, kv_len=300)) == shape_bucket(Stage.QKV, Shape(n=1, d=2048))
    True
    """
    n = shape.n if shape.n <= 64 else _octave_bucket(shape.n)
    if stage is Stage.QKV:
        return (n, shape.d, shape.batch, shape.precision)
    return (n, shape.d, shape.heads, shape.batch, shape.precision, _octave_bucket(shape.kv_len))


class Policy(abc.ABC):
    """Base class: chooses a backend per stage and learns from outcomes.

    ``__init__`` only stores parameters; :meth:`bind` gives the policy the backends it
    chooses between and the prior, and builds its state. Randomness comes only from
    ``seed``.
    """

    name = "policy"

    #: Fast path for the scheduler: (stage as given, shape, previous backend) -> an object whose
    #: ``table`` is ``(exploit choice, ((cumulative threshold, explore choice), ...))``; a miss
    #: falls back to :meth:`decide`. Policies without a published table leave it empty.
    hot_index: dict[tuple[Any, Shape, Backend | None], Any] = MappingProxyType({})  # type: ignore[assignment]
    #: the uniform draw used with ``hot_index`` (seeded per policy)
    draw: Callable[[], float] = random.random

    def bind(
        self,
        candidates: Iterable[Backend],
        prior: Prior | None,
        device: Any = None,
        supports: Callable[[Stage, Shape, Backend], bool] | None = None,
    ) -> None:
        """Attach to a scheduler: the candidate backends, the prior, the simulated device if any,
        and a predicate telling whether a backend's executor can run a stage at a shape."""
        self.candidates = tuple(candidates)
        self.prior = prior
        self.device = device
        self.supports = supports
        self._excluded: frozenset[Backend] = frozenset()
        self._lock = threading.RLock()
        self._setup()

    def _setup(self) -> None:
        return None

    @abc.abstractmethod
    def decide(self, stage: Stage | str, shape: Shape, after: Backend | None) -> Choice:
        """Choose a backend for ``stage`` at ``shape``; ``after`` is where the previous stage ran."""

    def probabilities(self, stage: Stage | str, shape: Shape, after: Backend | None) -> dict[Backend, float]:
        """The probability this policy gives each backend now (offline replay asks this).

        Deterministic policies give their choice probability 1; stochastic ones override.
        """
        backend, *_ = self.decide(stage, shape, after)
        return {backend: 1.0}

    def learn(self, decision: Decision, latency_s: float) -> None:
        """Learn from one observed latency (seconds, already validated)."""
        return None

    #: When true, a full refresh of the published table is queued by :meth:`learn` and done
    #: in slices by :meth:`catch_up` (a learner thread sets this so that it can yield the GIL
    #: between slices); when false, :meth:`learn` refreshes before it returns.
    defer_republish = False

    def catch_up(self, deadline: float | None = None) -> None:
        """Do queued table refreshes until ``deadline`` (``time.perf_counter``), or all of them."""
        return None

    def refresh_pending(self) -> bool:
        """Whether :meth:`catch_up` has work queued."""
        return False

    def exclude(self, backends: Iterable[Backend]) -> None:
        """Stop choosing ``backends`` (quarantined after failures) until excluded no more."""
        with self._lock:
            self._excluded = frozenset(backends)
            self._on_exclude()

    def _on_exclude(self) -> None:
        return None

    def available(self) -> tuple[Backend, ...]:
        usable = tuple(b for b in self.candidates if b not in self._excluded)
        return usable or self.candidates

    def state(self) -> dict[str, Any]:
        """A summary of what the policy has learned (for reports)."""
        return {}


class FixedPolicy(Policy):
    """Always the same backend (GPU-only, NPU-only baselines)."""

    name = "fixed"

    def __init__(self, backend: Backend | str) -> None:
        self.backend = Backend(backend)

    def decide(self, stage: Stage | str, shape: Shape, after: Backend | None) -> Choice:
        return self.backend, 1.0, False, _EMPTY, after, 0


class StaticPriorPolicy(Policy):
    """The core paper's selector: the offline classifier of each stage, never updated."""

    name = "static"

    def _setup(self) -> None:
        if self.prior is None:
            raise ValueError("the static policy needs an offline prior (config key 'priors')")
        self._cache: dict[tuple[Any, Shape], Backend] = {}

    def decide(self, stage: Stage | str, shape: Shape, after: Backend | None) -> Choice:
        key = (stage, shape)
        backend = self._cache.get(key)
        if backend is None:
            assert self.prior is not None
            backend = self._cache[key] = Backend(self.prior.choose(stage, shape))
        if backend in self._excluded:
            backend = self.available()[0]
        return backend, 1.0, False, _EMPTY, after, 0


class EpsilonGreedyPolicy(Policy):
    """Epsilon-greedy on observed mean latency per (stage, shape bucket, previous backend); no priors.

    Untried backends are tried first; then the best observed mean is taken with
    probability ``1 - epsilon`` and a uniformly chosen backend otherwise.
    """

    name = "epsilon"

    def __init__(self, epsilon: float = 0.05, seed: int = 0) -> None:
        self.epsilon = epsilon
        self.seed = seed

    def _setup(self) -> None:
        self._rng = random.Random(self.seed)
        self._means: dict[tuple[Any, ...], list[float]] = {}  # key + backend -> [mean, count]

    def decide(self, stage: Stage | str, shape: Shape, after: Backend | None) -> Choice:
        stage = parse_stage(stage)
        bucket = shape_bucket(stage, shape)
        usable = self.available()
        stats = [self._means.get((stage, bucket, after, b)) for b in usable]
        for backend, s in zip(usable, stats, strict=True):
            if s is None:
                return backend, 1.0, True, _EMPTY, after, 0
        k = len(usable)
        best = min(range(k), key=lambda i: stats[i][0])  # type: ignore[index]
        pick = self._rng.randrange(k) if self._rng.random() < self.epsilon else best
        p = self.epsilon / k + (1.0 - self.epsilon if pick == best else 0.0)
        return usable[pick], p, pick != best, _EMPTY, after, 0

    def probabilities(self, stage: Stage | str, shape: Shape, after: Backend | None) -> dict[Backend, float]:
        stage = parse_stage(stage)
        bucket = shape_bucket(stage, shape)
        usable = self.available()
        stats = [self._means.get((stage, bucket, after, b)) for b in usable]
        for backend, s in zip(usable, stats, strict=True):
            if s is None:
                return {backend: 1.0}
        k = len(usable)
        best = min(range(k), key=lambda i: stats[i][0])  # type: ignore[index]
        return {b: self.epsilon / k + (1.0 - self.epsilon if i == best else 0.0) for i, b in enumerate(usable)}

    def learn(self, decision: Decision, latency_s: float) -> None:
        key = (decision.stage, shape_bucket(decision.stage, decision.shape), decision.after, decision.backend)
        s = self._means.setdefault(key, [0.0, 0.0])
        s[1] += 1
        s[0] += (latency_s - s[0]) / s[1]


class OraclePolicy(Policy):
    """Knows the simulated device's true current (noise-free) latencies; plans the best pair."""

    name = "oracle"

    def __init__(self, lookahead: bool = True) -> None:
        self.lookahead = lookahead

    def _setup(self) -> None:
        if self.device is None or not hasattr(self.device, "expected_latency"):
            raise ValueError("the oracle policy needs a simulated device")

    def decide(self, stage: Stage | str, shape: Shape, after: Backend | None) -> Choice:
        stage = parse_stage(stage)
        usable = self.available()
        expected = self.device.expected_latency
        values = {}
        for b in usable:
            v = expected(stage, shape, b, after)
            if stage is Stage.QKV and self.lookahead:
                v += min(expected(Stage.ATTN, shape, a, b) for a in usable)
            values[b] = v
        best = min(values, key=values.__getitem__)
        return best, 1.0, False, MappingProxyType(values), after, 0


class _Slot:
    """A published decision for one (stage, shape bucket, previous backend), shared by its shapes."""

    __slots__ = ("after", "bucket", "shape", "stage", "table")

    def __init__(self, stage: Stage, bucket: tuple[Any, ...], after: Backend | None, shape: Shape) -> None:
        self.stage = stage
        self.bucket = bucket
        self.after = after
        self.shape = shape  # the first shape seen: the bucket's representative
        # (the exploit choice, ((cumulative probability threshold, explore choice), ...)): replaced
        # whole on each publish, so a reader on another thread sees the old table or the new one.
        self.table: tuple[Choice, tuple[tuple[float, Choice], ...]]


class AdaptivePolicy(Policy):
    """The contextual bandit over the offline priors (see the module docstring).

    Parameters
    ----------
    seed : int
        Seeds the exploration draws.
    explore_budget : float
        Largest share of total latency spent on exploration (outside drift alarms).
    explore_cap : float
        Largest probability of exploring one alternative in one decision.
    staleness_per_decision : float
        Log-latency variance an unobserved backend's offset gains per observation made.
    obs_variance : float
        Log-latency noise variance of one observation.
    prior_variance : float
        Uncertainty of the prior for a bucket never observed (log units squared).
    drift_delta, drift_threshold : float, optional
        Page-Hinkley parameters for drift alarms (log units). By default 0.5 and 15
        standard deviations of one observation's noise (``obs_variance``), so the
        detector tolerates what the device's noise alone does.
    lookahead : bool
        Plan ``qkv`` over where ``attn`` will run next.
    transition_sync_s, transition_bytes_per_s : float
        Prior cost of consuming activations produced on another backend.
    alarm_variance : float
        Variance a backend's drift offset is reset to after a drift alarm or failure.
    alarm_decisions, alarm_probes : int
        A drift alarm lifts the exploration budget for at most ``alarm_decisions``
        observations, and only until every usable backend has been observed
        ``alarm_probes`` times since: re-measured, the choice needs no more probes, and
        on a noisy host, where alarms are frequent, the budget keeps binding.
    republish_every : int
        Refresh every published entry at least this often (observations), so
        exploration follows the growing staleness of unobserved backends.
    """

    name = "adaptive"

    def __init__(
        self,
        seed: int = 0,
        explore_budget: float = 0.01,
        explore_cap: float = 0.2,
        staleness_per_decision: float = 2e-5,
        obs_variance: float = 0.01,
        prior_variance: float = 0.04,
        drift_delta: float | None = None,
        drift_threshold: float | None = None,
        lookahead: bool = True,
        transition_sync_s: float = 1e-4,
        transition_bytes_per_s: float = 1e10,
        alarm_variance: float = 0.25,
        republish_every: int = 256,
        offset_republish: float = 0.03,
        alarm_decisions: int = 400,
        alarm_probes: int = 8,
    ) -> None:
        self.seed = seed
        self.explore_budget = explore_budget
        self.explore_cap = explore_cap
        self.staleness_per_decision = staleness_per_decision
        self.obs_variance = obs_variance
        self.prior_variance = prior_variance
        noise_sd = math.sqrt(obs_variance)
        self.drift_delta = DRIFT_DELTA_SDS * noise_sd if drift_delta is None else drift_delta
        self.drift_threshold = DRIFT_THRESHOLD_SDS * noise_sd if drift_threshold is None else drift_threshold
        self.lookahead = lookahead
        self.transition_sync_s = transition_sync_s
        self.transition_bytes_per_s = transition_bytes_per_s
        self.alarm_variance = alarm_variance
        self.republish_every = republish_every
        self.offset_republish = offset_republish
        self.alarm_decisions = alarm_decisions
        self.alarm_probes = alarm_probes

    # -- state ------------------------------------------------------------------
    def _setup(self) -> None:
        if self.prior is None:
            from .learners.rule import RooflineRule

            self.prior = RooflineRule(self.candidates)
        self._rng = random.Random(self.seed)
        self.draw = self._rng.random
        self._drift = {
            b: BackendDrift(
                obs_variance=self.obs_variance,
                staleness_per_decision=self.staleness_per_decision,
                initial_variance=self.prior_variance,
                alarm_variance=self.alarm_variance,
                delta=self.drift_delta,
                threshold=self.drift_threshold,
            )
            for b in self.candidates
        }
        self._corrections: dict[tuple[Any, ...], BucketCorrection] = {}
        self._transitions: dict[tuple[Backend, Backend], TransitionEstimate] = {}
        self._unsupported: set[tuple[Any, ...]] = set()
        self._support_checked: set[tuple[Any, ...]] = set()
        self.hot_index = {}  # (stage as given, shape, after) -> _Slot
        self._bucket_slots: dict[tuple[Any, ...], _Slot] = {}
        self._prior_cache: dict[tuple[Stage, Shape], Mapping[Backend, float]] = {}
        self._prior_log_cache: dict[tuple[Any, ...], float] = {}
        self._bucket_cache: dict[tuple[Stage, Shape], tuple[Any, ...]] = {}
        self._clock = 0  # observations learned: the clock of staleness
        self._version = 0
        self._since_republish = 0
        self._published_offsets = dict.fromkeys(self.candidates, 0.0)
        self._pending: deque[_Slot] = deque()  # slots a deferred full refresh has still to publish
        self._alarm_until = dict.fromkeys(self.candidates, -1)
        # alarmed backend -> observations of each backend since its alarm
        self._alarm_seen: dict[Backend, dict[Backend, int]] = {}
        # Exploration spend, in seconds, decayed so the budget follows recent work.
        self._spent = 0.0
        self._total = 0.0

    # -- hot path ---------------------------------------------------------------
    def decide(self, stage: Stage | str, shape: Shape, after: Backend | None) -> Choice:
        slot = self.hot_index.get((stage, shape, after))
        if slot is None:
            slot = self._new_slot(stage, shape, after)
        best, alternatives = slot.table
        if alternatives:
            u = self.draw()
            for threshold, choice in alternatives:
                if u < threshold:
                    return choice
        return best

    def best(self, stage: Stage | str, shape: Shape, after: Backend | None) -> Backend:
        """The backend the policy currently holds fastest (its exploit choice)."""
        slot = self.hot_index.get((stage, shape, after)) or self._new_slot(stage, shape, after)
        return slot.table[0][0]

    def probabilities(self, stage: Stage | str, shape: Shape, after: Backend | None) -> dict[Backend, float]:
        slot = self.hot_index.get((stage, shape, after)) or self._new_slot(stage, shape, after)
        best, alternatives = slot.table
        probs = {best[0]: best[1]}
        for _, choice in alternatives:
            probs[choice[0]] = choice[1]
        return probs

    def _new_slot(self, stage: Stage | str, shape: Shape, after: Backend | None) -> _Slot:
        stage_ = parse_stage(stage)
        with self._lock:
            if len(self.hot_index) > 200_000:
                # Unbounded distinct shapes (long services): the index is only a cache of buckets.
                # Cleared in place: the scheduler holds a reference to this dict.
                self.hot_index.clear()
            key = (stage_, shape_bucket(stage_, shape), after)
            slot = self._bucket_slots.get(key)
            if slot is None:
                slot = _Slot(stage_, key[1], after, shape)
                self._publish(slot)
                self._bucket_slots[key] = slot
            self.hot_index[(stage, shape, after)] = slot
            return slot

    # -- estimates --------------------------------------------------------------
    def _prior_latency(self, stage: Stage, shape: Shape) -> Mapping[Backend, float]:
        key = (stage, shape)
        cached = self._prior_cache.get(key)
        if cached is None:
            # A decode step makes a new shape every token (kv_len grows), and a prior's
            # estimate costs ~0.1 ms: evaluate it on a grid and share it among the shapes
            # of one grid point (qkv does not see kv_len; attn's grid is 1/16 octave, ~4%).
            grid = _prior_grid(stage, shape)
            cached = self._prior_cache.get(grid)
            if cached is None:
                assert self.prior is not None
                est = self.prior.latency(stage, grid[1])
                cached = {b: float(est[b]) for b in self.candidates if b in est}
                self._prior_cache[grid] = cached
            if len(self._prior_cache) > 100_000:
                self._prior_cache.clear()
            self._prior_cache[key] = cached
        return cached

    def moved_bytes(self, stage: Stage, shape: Shape) -> int:
        """Bytes of input a stage takes from the previous stage (Q, K, V for attn; X for qkv)."""
        s = shape.precision.itemsize
        return (3 if stage is Stage.ATTN else 1) * shape.batch * shape.n * shape.d * s

    def transition(self, stage: Stage, shape: Shape, after: Backend | None, backend: Backend) -> tuple[float, float]:
        """(seconds, variance in seconds squared) to bring this stage's input from ``after`` to ``backend``.

        The synchronisation part is learned per ordered backend pair from every stage that
        crossed between them, so one crossing teaches all shapes; the copy part scales with bytes.
        """
        if after is None or after == backend:
            return 0.0, 0.0
        t = self._transitions.get((after, backend))
        copy = self.moved_bytes(stage, shape) / self.transition_bytes_per_s
        if t is None:
            return self.transition_sync_s + copy, self.transition_sync_s**2
        return t.mean + copy, t.variance

    def _prior_log(self, stage: Stage, shape: Shape, backend: Backend) -> float:
        key = (stage, shape, backend)
        cached = self._prior_log_cache.get(key)
        if cached is not None:
            return cached
        base = self._prior_latency(stage, shape).get(backend)
        # A backend the prior knows nothing about is never chosen on purpose.
        value = math.log(base) if base is not None and base > 0 else math.inf
        if len(self._prior_log_cache) > 200_000:
            self._prior_log_cache.clear()
        self._prior_log_cache[key] = value
        return value

    def _bucket(self, stage: Stage, shape: Shape) -> tuple[Any, ...]:
        key = (stage, shape)
        bucket = self._bucket_cache.get(key)
        if bucket is None:
            if len(self._bucket_cache) > 200_000:
                self._bucket_cache.clear()
            bucket = self._bucket_cache[key] = shape_bucket(stage, shape)
        return bucket

    def _compute(self, stage: Stage, shape: Shape, backend: Backend) -> tuple[float, float]:
        """(mean, variance) of the log of the stage's own run time on ``backend`` (no transition)."""
        drift = self._drift[backend]
        bucket = self._bucket(stage, shape)
        if self._unsupported and (stage, bucket, backend) in self._unsupported:
            return math.inf, 0.0
        corr = self._corrections.get((stage, bucket, backend))
        mean = self._prior_log(stage, shape, backend) + drift.offset
        variance = drift.variance_at(self._clock)
        if corr is None:
            variance += self.prior_variance
        else:
            mean += corr.mean
            variance += corr.variance(self.obs_variance, self.prior_variance)
        return mean, variance

    def estimate(self, stage: Stage, shape: Shape, after: Backend | None, backend: Backend) -> tuple[float, float]:
        """(mean, variance) of the log-latency of ``stage`` at ``shape`` on ``backend`` after ``after``."""
        mean, variance = self._compute(stage, shape, backend)
        if after is None or after == backend or not math.isfinite(mean):
            return mean, variance
        compute = math.exp(mean)
        t, t_var = self.transition(stage, shape, after, backend)
        total = compute + t
        # delta method: the log of a sum, with the compute part's variance given in log units
        return math.log(total), (compute * compute * variance + t_var) / (total * total)

    def _check_support(self, stage: Stage, shape: Shape) -> None:
        if self.supports is None:
            return
        bucket = self._bucket(stage, shape)
        for backend in self.candidates:
            if (stage, bucket, backend) not in self._support_checked:
                self._support_checked.add((stage, bucket, backend))
                if not self.supports(stage, shape, backend):
                    self._unsupported.add((stage, bucket, backend))

    def _publish(self, slot: _Slot) -> None:
        stage, shape, after = slot.stage, slot.shape, slot.after
        self._check_support(stage, shape)
        if stage is Stage.QKV and self.lookahead:
            self._check_support(Stage.ATTN, shape)
        usable = self.available()
        est = {b: self.estimate(stage, shape, after, b) for b in usable}
        predicted = {b: math.exp(m) for b, (m, _) in est.items() if math.isfinite(m)}
        if not predicted:  # nothing known about any backend: take the first
            slot.table = ((usable[0], 1.0, False, _EMPTY, after, self._version), ())
            return
        values = dict(predicted)
        if stage is Stage.QKV and self.lookahead:
            for q in values:
                follow = [self.estimate(Stage.ATTN, shape, q, a)[0] for a in usable]
                values[q] += (
                    min(math.exp(m) for m in follow if math.isfinite(m))
                    if any(math.isfinite(m) for m in follow)
                    else 0.0
                )
        best = min(values, key=values.__getitem__)
        scale = self._budget_scale()
        alternatives = []
        total_p = 0.0
        for b, v in values.items():
            if b == best:
                continue
            gap = math.log(v / values[best])
            spread = math.sqrt(est[b][1] + est[best][1])
            p = min(self.explore_cap, normal_sf(gap / spread))
            if self._clock > max(self._alarm_until[b], self._alarm_until[best]):
                p *= scale
            if p >= 1e-4:  # below that, a probe would almost never happen: publish none
                total_p += p
                alternatives.append((b, p))
        if total_p > 0.5:  # keep exploitation the majority choice
            alternatives = [(b, p * 0.5 / total_p) for b, p in alternatives]
            total_p = 0.5
        shown = MappingProxyType(predicted)
        cumulative = 0.0
        table_alts = []
        for b, p in alternatives:
            cumulative += p
            table_alts.append((cumulative, (b, p, True, shown, after, self._version)))
        slot.table = ((best, 1.0 - total_p, False, shown, after, self._version), tuple(table_alts))

    def _budget_scale(self) -> float:
        # Over the budget, exploration drops to a trickle (stale estimates are still probed now
        # and then) until the spend decays back under it. A scale of allowed / spent settled
        # where the spend is the geometric mean of the budget and the unscaled spend: above the
        # budget whenever the budget binds (2 to 3x a 0.05% or 0.1% budget on a steady device).
        if self._spent <= 0.0 or self.explore_budget <= 0.0:
            return 1.0 if self.explore_budget > 0 else 0.0
        return 1.0 if self._spent <= self.explore_budget * self._total else BUDGET_FLOOR

    def _republish_all(self, now: bool = False) -> None:
        self._version += 1
        self._since_republish = 0
        self._published_offsets = {b: d.offset for b, d in self._drift.items()}
        self._pending = deque(self._bucket_slots.values())
        if now or not self.defer_republish:
            self.catch_up()

    def refresh_pending(self) -> bool:
        return bool(self._pending)

    def catch_up(self, deadline: float | None = None) -> None:
        """Publish the slots a full refresh queued, until ``deadline`` if given (at least one).

        A refresh costs tens of microseconds per bucket; a learner thread does it in
        slices so that it never holds the GIL long enough to show in inference latency.
        """
        pending = self._pending
        if not pending:
            return
        clock = time.perf_counter
        with self._lock:
            while pending:
                self._publish(pending.popleft())
                if deadline is not None and clock() >= deadline:
                    break

    def mark_unsupported(self, stage: Stage, shape: Shape, backend: Backend) -> None:
        """``backend`` cannot run ``stage`` at ``shape``'s bucket: never choose it there."""
        with self._lock:
            self._unsupported.add((stage, self._bucket(stage, shape), backend))
            self._republish_all(now=True)

    def _on_exclude(self) -> None:
        for backend in self._excluded:
            if backend in self._drift:
                self._drift[backend].forget()
        self._republish_all(now=True)

    # -- learning ---------------------------------------------------------------
    def learn(self, decision: Decision, latency_s: float) -> None:
        backend = decision.backend
        drift = self._drift.get(backend)
        if drift is None:
            return  # a fallback backend outside the candidates
        stage, shape, after = decision.stage, decision.shape, decision.after
        with self._lock:
            self._clock += 1
            mean, variance = self._compute(stage, shape, backend)
            if not math.isfinite(mean):
                return
            compute_s: float | None = latency_s
            if after is not None and after != backend:
                compute_s = self._learn_transition(stage, shape, after, backend, latency_s, mean, variance)
            if compute_s is None:
                return
            bucket = self._bucket(stage, shape)
            key = (stage, bucket, backend)
            corr = self._corrections.get(key)
            if corr is None:
                corr = self._corrections[key] = BucketCorrection()
            residual = math.log(compute_s) - self._prior_log(stage, shape, backend)
            alarm = drift.update(residual - corr.mean, self._clock)
            corr.update(residual - drift.offset)
            self._account(decision, latency_s)
            if alarm:
                self._alarm_until[backend] = self._clock + self.alarm_decisions
                self._alarm_seen[backend] = dict.fromkeys(self.available(), 0)
            remeasured = bool(self._alarm_seen) and self._count_remeasured(backend)
            self._since_republish += 1
            moved = abs(drift.offset - self._published_offsets.get(backend, 0.0))
            if alarm or remeasured or moved > self.offset_republish or self._since_republish >= self.republish_every:
                self._republish_all()
            else:
                slot = self._bucket_slots.get((stage, bucket, after))
                if slot is not None:
                    self._publish(slot)

    def _count_remeasured(self, observed: Backend) -> bool:
        """Count an observation against open alarm windows; True if one closed."""
        closed = False
        for alarmed, seen in list(self._alarm_seen.items()):
            if self._clock > self._alarm_until[alarmed]:
                del self._alarm_seen[alarmed]  # ran its full length
                continue
            if observed in seen:
                seen[observed] += 1
            if min(seen.values()) >= self.alarm_probes:
                self._alarm_until[alarmed] = self._clock - 1  # every backend re-measured: the budget binds again
                del self._alarm_seen[alarmed]
                closed = True
        return closed

    def _learn_transition(
        self,
        stage: Stage,
        shape: Shape,
        after: Backend,
        backend: Backend,
        latency_s: float,
        mean: float,
        variance: float,
    ) -> float | None:
        """Split what a crossing stage cost between its own run and the crossing, in proportion
        to how uncertain each part is (a joint Kalman update). Returns the run's part."""
        compute = math.exp(mean)
        t_est, _ = self.transition(stage, shape, after, backend)
        pair = self._transitions.get((after, backend))
        if pair is None:
            pair = self._transitions[(after, backend)] = TransitionEstimate(self.transition_sync_s)
        # the stage's own run: its estimate's uncertainty plus this observation's noise
        compute_var = compute * compute * (variance + self.obs_variance)
        innovation = latency_s - (compute + t_est)
        taken = pair.update(innovation, compute_var)
        compute_part = compute + innovation - taken
        return compute_part if compute_part > 0 else None

    def _account(self, decision: Decision, latency_s: float) -> None:
        decay = 0.9995  # about the last few thousand observations count
        self._total = self._total * decay + latency_s
        self._spent *= decay
        if decision.explored and decision.predicted:
            fastest = min(decision.predicted, key=decision.predicted.__getitem__)
            alarm = max(self._alarm_until[decision.backend], self._alarm_until.get(fastest, -1))
            if self._clock <= alarm:
                return  # a probe a drift alarm asked for: the budget is lifted then, so not charged
            best = decision.predicted[fastest]
            self._spent += max(0.0, decision.predicted.get(decision.backend, best) - best)

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "observations": self._clock,
                "version": self._version,
                "offsets": {b.value: round(math.exp(d.offset), 4) for b, d in self._drift.items()},
                "drift_alarms": {b.value: d.alarms for b, d in self._drift.items()},
                "explore_share": (self._spent / self._total) if self._total else 0.0,
                "buckets": len(self._bucket_slots),
                "transitions_ms": {
                    f"{a.value}->{b.value}": round(t.mean * 1e3, 4) for (a, b), t in self._transitions.items()
                },
            }


POLICIES: dict[str, type[Policy]] = {
    "adaptive": AdaptivePolicy,
    "static": StaticPriorPolicy,
    "fixed": FixedPolicy,
    "epsilon": EpsilonGreedyPolicy,
    "oracle": OraclePolicy,
}


def make_policy(kind: str, **params: Any) -> Policy:
    """Create a policy by kind name with its parameters."""
    try:
        cls = POLICIES[kind]
    except KeyError:
        raise ValueError(f"unknown policy {kind!r} (known: {', '.join(POLICIES)})") from None
    return cls(**params)
