"""The baselines every benchmark and replay compares the adaptive policy with.

=============  ==========================================================================
``fixed``      one backend for everything (GPU-only, NPU-only)
``static``     the core paper's selector: the offline classifier of each stage, never updated
``epsilon``    epsilon-greedy on observed mean latency per shape bucket, no priors
``oracle``     knows the true current (noise-free) latencies; plans the best pair
=============  ==========================================================================

Each honours the exclusions of a quarantine: an excluded backend is never chosen while
another is usable.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from ..buckets import bucket_key
from ..cache import BoundedDict
from ..types import Backend, Choice, Shape, Stage, parse_backend, parse_stage
from .base import Observation, Policy, certain, choice

#: how many (stage, shape) choices the static policy remembers (a cache)
STATIC_CACHE = 65_536


@dataclasses.dataclass(frozen=True)
class FixedParams:
    #: the backend every stage runs on
    backend: str = "gpu"

    def __post_init__(self) -> None:
        parse_backend(self.backend)


class FixedPolicy(Policy):
    """Always the same backend (GPU-only, NPU-only baselines); another only while it is excluded."""

    name: ClassVar[str] = "fixed"
    Params = FixedParams  # type: ignore[assignment]
    params: FixedParams

    def __init__(self, params: Any = None, **overrides: Any) -> None:
        if isinstance(params, (str, Backend)):  # FixedPolicy("npu") reads as what it means
            params, overrides = None, {"backend": str(params), **overrides}
        super().__init__(params, **overrides)
        self.backend = parse_backend(self.params.backend)

    def _setup(self) -> None:
        self._choices = {b: certain(b) for b in self.candidates}
        self._choices.setdefault(self.backend, certain(self.backend))

    def choose(self, stage: Stage, shape: Shape, after: Backend | None) -> Choice:
        if self.backend in self._excluded:
            usable = self.usable()
            if usable[0] is not self.backend:
                return self._choices[usable[0]]
        return self._choices[self.backend]


class StaticPriorPolicy(Policy):
    """The core paper's selector: the offline classifier of each stage, never updated."""

    name: ClassVar[str] = "static"

    def _setup(self) -> None:
        if self.prior is None:
            raise ValueError("the static policy needs an offline prior (config key 'priors')")
        self._cache: BoundedDict[tuple[Stage, Shape], Backend] = BoundedDict(STATIC_CACHE)
        self._choices: dict[Backend, Choice] = {}

    def choose(self, stage: Stage, shape: Shape, after: Backend | None) -> Choice:
        key = (stage, shape)
        backend = self._cache.get(key)
        if backend is None:
            assert self.prior is not None
            backend = self._cache[key] = parse_backend(self.prior.choose(stage, shape))
        if backend in self._excluded or backend not in self.candidates:
            backend = self.usable()[0]
        c = self._choices.get(backend)
        if c is None:
            c = self._choices[backend] = certain(backend)
        return c


@dataclasses.dataclass(frozen=True)
class EpsilonParams:
    #: probability of a uniformly chosen backend instead of the best observed mean
    epsilon: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon!r}")


class EpsilonGreedyPolicy(Policy):
    """Epsilon-greedy on observed mean latency per (stage, shape bucket, previous backend); no priors.

    Untried backends are tried first; then the best observed mean is taken with
    probability ``1 - epsilon`` and a uniformly chosen backend otherwise.
    """

    name: ClassVar[str] = "epsilon"
    Params = EpsilonParams  # type: ignore[assignment]
    params: EpsilonParams

    def _setup(self) -> None:
        self._rng = random.Random(self.params.seed)
        # key + backend -> [mean, count], for at most STATIC_CACHE buckets
        self._means: BoundedDict[tuple[Any, ...], list[float]] = BoundedDict(STATIC_CACHE)

    def probabilities(self, stage: Stage | str, shape: Shape, after: Backend | None) -> Mapping[Backend, float]:
        stage = parse_stage(stage)
        bucket = bucket_key(stage, shape, lookahead=False)
        usable = self.usable()
        stats = [self._means.get((stage, bucket, after, b)) for b in usable]
        for backend, s in zip(usable, stats, strict=True):
            if s is None:
                return MappingProxyType({backend: 1.0})
        eps, k = self.params.epsilon, len(usable)
        best = min(range(k), key=lambda i: stats[i][0])  # type: ignore[index]
        return MappingProxyType({b: eps / k + (1.0 - eps if i == best else 0.0) for i, b in enumerate(usable)})

    def choose(self, stage: Stage, shape: Shape, after: Backend | None) -> Choice:
        probs = self.probabilities(stage, shape, after)
        exploit = max(probs, key=probs.__getitem__)
        u = self._rng.random()
        cumulative = 0.0
        picked = exploit
        for b, p in probs.items():
            cumulative += p
            if u < cumulative:
                picked = b
                break
        return choice(picked, probs, exploit=exploit)

    def learn(self, observation: Observation) -> None:
        stage, shape, after, backend, latency_s, _ = observation
        key = (stage, bucket_key(stage, shape, lookahead=False), after, backend)
        s = self._means.setdefault(key, [0.0, 0.0])
        s[1] += 1
        s[0] += (latency_s - s[0]) / s[1]


#: (stage, shape, backend, after) -> the true current latency in seconds
ExpectedLatency = Callable[[Stage, Shape, Backend, "Backend | None"], float]


@dataclasses.dataclass(frozen=True)
class OracleParams:
    #: plan ``qkv`` over where ``attn`` will run next
    lookahead: bool = True


class OraclePolicy(Policy):
    """Knows the true current latencies (a simulated device's, or a benchmark world's); plans the best pair.

    Parameters
    ----------
    expected_latency : callable
        ``(stage, shape, backend, after) -> seconds``, noise-free and current.
    """

    name: ClassVar[str] = "oracle"
    Params = OracleParams  # type: ignore[assignment]
    params: OracleParams

    def __init__(self, params: Any = None, *, expected_latency: ExpectedLatency | None = None, **overrides: Any):
        super().__init__(params, **overrides)
        if expected_latency is None:
            raise ValueError("the oracle policy needs the true latencies (a simulated device or a benchmark world)")
        self.expected_latency = expected_latency

    def clone(self) -> Policy:
        return OraclePolicy(self.params, expected_latency=self.expected_latency)

    def choose(self, stage: Stage, shape: Shape, after: Backend | None) -> Choice:
        usable = self.usable()
        expected = self.expected_latency
        values: dict[Backend, float] = {}
        for b in usable:
            v = expected(stage, shape, b, after)
            if stage is Stage.QKV and self.params.lookahead:
                v += min(expected(Stage.ATTN, shape, a, b) for a in usable)
            values[b] = v
        best = min(values, key=values.__getitem__)
        return certain(best, MappingProxyType(values))


__all__ = ["EpsilonGreedyPolicy", "FixedPolicy", "OraclePolicy", "StaticPriorPolicy"]
